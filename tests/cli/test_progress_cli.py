"""Progress output of a real command whose output is not a terminal (CliRunner, as in CI
or a log file): plain lines with the count, the time, the ETA and the loss; at the rate
``MECHTUNE_PROGRESS_INTERVAL`` sets; no ANSI escapes."""

from __future__ import annotations

import json
import re

import pytest
from typer.testing import CliRunner

from mechtune.cli._progress import INTERVAL_ENV
from mechtune.cli.main import app
from tests.tiny_models import tiny_clip

runner = CliRunner()
STEPS = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mechtune.sim.world import WorldConfig, make_world, save_world

    root = tmp_path_factory.mktemp("progress_cli")
    save_world(make_world(WorldConfig.seeded(60, 0)), root / "world")
    recipe = root / "recipe.yaml"
    # a flush (and a loss) every 2 steps
    recipe.write_text(
        f"loop: {{steps: {STEPS}, caption_batch: 4, claim_batch: 4, checkpoint_every: 2}}\n"
    )
    return root, f"hf:{tiny_clip(root / 'clip')}", recipe


def train(setup, out, monkeypatch, interval: str) -> list[str]:
    root, model, recipe = setup
    monkeypatch.setenv(INTERVAL_ENV, interval)
    args = ["negation", "train", "--method", "uniform-lora", "--model", model]
    args += ["--data", str(root / "world"), "--recipe", str(recipe), "--no-cache"]
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "\x1b[" not in result.output  # no ANSI escapes off a terminal
    return result.output.splitlines()


def test_training_prints_plain_progress_lines_with_eta_and_loss(setup, tmp_path, monkeypatch):
    lines = train(setup, tmp_path / "every", monkeypatch, "0")
    name = "train uniform-lora (seed 0)"
    shown = [line for line in lines if line.startswith(f"{name}: ")]
    # interval 0: the first line, one per step but the last, the final line
    assert len(shown) == 1 + STEPS - 1 + 1
    assert shown[0] == f"{name}: 0/{STEPS} (0%) 0.0 s elapsed"
    pattern = re.compile(
        rf"{re.escape(name)}: 3/{STEPS} \(50%\) \d+\.\d s elapsed, ETA [\dms. ]+, loss ([\d.e-]+)$"
    )
    middle = pattern.match(shown[3])
    assert middle, shown[3]
    history = json.loads((tmp_path / "every" / "train.json").read_text())["history"]
    # the loss shown is the mean loss of the last flushed interval (steps 1-2 at step 3)
    assert float(middle.group(1)) == pytest.approx(
        (history[0]["loss"] + history[1]["loss"]) / 2, rel=1e-3
    )
    final = shown[-1]
    assert final.startswith(f"{name}: {STEPS}/{STEPS} (100%) done in ")
    last = float(final.rsplit("loss ", 1)[1])
    assert last == pytest.approx((history[4]["loss"] + history[5]["loss"]) / 2, rel=1e-3)
    # the image embedding is a stage of its own
    assert any(line.startswith("embed images: 60/60 (100%) done in ") for line in lines)


def test_a_long_interval_prints_the_first_and_final_lines_only(setup, tmp_path, monkeypatch):
    lines = train(setup, tmp_path / "long", monkeypatch, "3600")
    shown = [line for line in lines if line.startswith("train uniform-lora (seed 0): ")]
    assert len(shown) == 2
    assert shown[0].endswith(" 0/6 (0%) 0.0 s elapsed") and "loss" in shown[-1]


def test_a_bad_interval_is_refused_by_name(setup, tmp_path, monkeypatch):
    root, model, recipe = setup
    monkeypatch.setenv(INTERVAL_ENV, "often")
    args = ["negation", "train", "--method", "uniform-lora", "--model", model]
    args += ["--data", str(root / "world"), "--recipe", str(recipe), "--no-cache"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "bad")])
    assert result.exit_code == 2
    assert f"{INTERVAL_ENV}='often'" in result.output
