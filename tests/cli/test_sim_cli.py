"""Every option of `mechtune sim render|build|train-clip|train-vqa` changes what is written.

Each case runs a command twice through typer's CliRunner, once with small base options and
once with one option changed, and compares what the two runs wrote: PNG bytes, the world's
images and studies, the trained weights, or (``--compare``) what was printed. Every run
reads its output back from where ``--out`` said, and nothing may be written elsewhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app

runner = CliRunner()

# command -> (base options, {option: the options that change it}); None: --out (below).
SIM_OPTIONS: dict[str, tuple[list[str], dict[str, list[str] | None]]] = {
    "render": (
        ["--n", "4", "--columns", "4"],
        {
            "--out": None,
            "--n": ["--n", "6"],
            "--seed": ["--seed", "1"],
            "--size": ["--size", "64"],
            "--columns": ["--columns", "2"],
        },
    ),
    "build": (
        ["--n", "24"],
        {
            "--out": None,
            "--n": ["--n", "30"],
            "--seed": ["--seed", "1"],
            "--size": ["--size", "64"],
            "--negative-rate": ["--negative-rate", "1.0"],
        },
    ),
    "train-clip": (
        ["--n", "40", "--steps", "2", "--no-compare"],
        {
            "--out": None,
            "--seed": ["--seed", "1"],
            "--steps": ["--steps", "3"],
            "--n": ["--n", "48"],
            "--negative-rate": ["--negative-rate", "1.0"],
            "--compare": ["--compare"],
        },
    ),
    "train-vqa": (
        ["--n", "60", "--steps", "2", "--no-compare"],
        {
            "--out": None,
            "--seed": ["--seed", "1"],
            "--steps": ["--steps", "3"],
            "--n": ["--n", "70"],
            "--compare": ["--compare"],
        },
    ),
}


@pytest.fixture(scope="module", autouse=True)
def fast_training():
    """Speed only: load MiniLM once (the tower is frozen), and train on one torch thread,
    which busy CI machines run several times faster than two. Runs are compared only
    with each other; that ``threads`` reaches torch is tested in tests/sim."""
    from mechtune.models.minilm import MiniLMTower
    from mechtune.sim.train_clip import torch_threads

    tower = MiniLMTower().eval()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("mechtune.sim.clip.MiniLMTower", lambda: tower)
        mp.setattr("mechtune.sim.vqa.MiniLMTower", lambda: tower)
        for module in ("train_clip", "train_vqa"):
            mp.setattr(f"mechtune.sim.{module}.torch_threads", lambda n: torch_threads(1))
        yield


def _written(command: str, out: Path) -> dict[str, bytes]:
    if command == "render":
        return {"png": out.read_bytes()}
    if command == "build":
        return {n: (out / n).read_bytes() for n in ("images.npy", "studies.jsonl")}
    return {"weights": (out / "model.safetensors").read_bytes()}


def _run(command: str, args: list[str], out: Path) -> tuple[dict[str, bytes], bool]:
    """What the run wrote, and whether it compared with the shipped checkpoint."""
    result = runner.invoke(app, ["sim", command, *args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return _written(command, out), "from the shipped checkpoint" in result.output


def _out(tmp: Path, command: str, name: str) -> Path:
    return tmp / name / ("sheet.png" if command == "render" else "out")


@pytest.fixture(scope="module")
def base_runs(tmp_path_factory):
    """Each command's base run, written to a nested folder of its own."""
    runs = {}
    for command, (base, _) in SIM_OPTIONS.items():
        root = tmp_path_factory.mktemp(command)
        out = _out(root, command, "chosen/here")
        runs[command] = (_run(command, base, out), root, out)
    return runs


@pytest.mark.parametrize(
    ("command", "option"),
    [(c, o) for c, (_, options) in SIM_OPTIONS.items() for o in options],
)
def test_every_sim_option_changes_the_output(tmp_path, base_runs, command, option):
    base, changes = SIM_OPTIONS[command]
    before, root, out = base_runs[command]
    if changes[option] is None:  # --out: the output is there, and nothing was written elsewhere
        written = {p for p in root.rglob("*") if p.is_file()}
        assert written and all(out in (p, *p.parents) for p in written)
        return
    after = _run(command, [*base, *changes[option]], _out(tmp_path, command, "changed"))
    assert after != before
    if option == "--compare":
        assert after[0] == before[0] and after[1] and not before[1]


def test_sim_build_records_its_options_in_the_manifest(tmp_path):
    out = tmp_path / "w"
    args = ["sim", "build", "--n", "24", "--seed", "2", "--size", "64", "--negative-rate", "0.5"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert (config["n_studies"], config["seed"]) == (24, 2)
    assert (config["render"]["size"], config["render"]["seed"]) == (64, 2)
    assert (config["report"]["negative_rate"], config["report"]["seed"]) == (0.5, 2)


OPTION_TESTS = {
    f"mechtune sim {command}": {
        option: "test_every_sim_option_changes_the_output" for option in options
    }
    for command, (_, options) in SIM_OPTIONS.items()
}
