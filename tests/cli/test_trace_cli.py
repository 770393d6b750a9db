"""`mechtune trace`: every option changes what the command writes."""

import json

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app
from mechtune.sim.world import WorldConfig, make_world, save_world
from tests.tiny_models import tiny_clip

runner = CliRunner()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("trace_cli")
    clip_dir = tiny_clip(root / "clip")
    world_dir = root / "world"
    save_world(make_world(WorldConfig(n_studies=30, seed=7)), world_dir)
    return root, f"hf:{clip_dir}", world_dir


def run(out, *args):
    result = runner.invoke(app, ["trace", "--out", str(out), *args])
    assert result.exit_code == 0, result.output
    return json.loads((out / "trace.json").read_text()), result.output


def texts(meta):
    return [(p["correct"], p["foil"], p["image"]) for p in meta["pairs"]]


def test_every_trace_option_changes_the_output(setup, tmp_path):
    root, clip, world_dir = setup
    base_args = ["--model", clip, "--n", "30", "--per-study", "1", "--seed", "0"]
    base, printed = run(tmp_path / "base", *base_args)
    assert (tmp_path / "base" / "trace.safetensors").is_file()  # --out
    assert (tmp_path / "base" / "cte_heatmap.png").is_file()
    assert "top-5% share" in printed and "median" in printed and "pooling: eos" in printed
    assert base["aggregation"]["pooling"] == "eos" and len(base["per_layer"]["alpha"]) == 3

    def differs(name, *changed):
        args = list(base_args)
        for flag, value in zip(changed[::2], changed[1::2], strict=True):
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        meta, _ = run(tmp_path / name, *args)
        return meta

    phantom = differs("model", "--model", "phantom:default")
    assert phantom["aggregation"]["pooling"] == "mean" and len(phantom["per_layer"]["alpha"]) == 7

    more = differs("n", "--n", "100")
    assert more["counts"]["candidates"] > base["counts"]["candidates"]

    per_study = differs("per_study", "--per-study", "2")
    assert per_study["counts"]["candidates"] > base["counts"]["candidates"]

    train = differs("split", "--split", "train")
    assert train["counts"]["split"] == "train" and texts(train) != texts(base)

    seeded = differs("seed", "--seed", "1")
    assert texts(seeded) != texts(base)

    saved = differs("world", "--world", str(world_dir))
    assert texts(saved) != texts(base)

    lax = differs("gap0", "--min-gap-share", "0")
    strict = differs("gap1", "--min-gap-share", "1")
    assert lax["config"]["min_gap_share"] == 0 and strict["config"]["min_gap_share"] == 1
    assert strict["counts"]["excluded_small_gap"] > lax["counts"]["excluded_small_gap"] == 0
    assert strict["aggregation"]["gap_floor"] > lax["aggregation"]["gap_floor"] == 0

    pairs_file = root / "pairs.jsonl"
    pairs_file.write_text(
        json.dumps({"correct": "there is no edema .", "foil": "there is mild edema .", "image": 0})
        + "\n"
        + json.dumps({"correct": "no pneumothorax .", "foil": "large pneumothorax .", "image": 1})
        + "\n"
    )
    user = differs("pairs", "--pairs", str(pairs_file))
    assert texts(user) == [
        ("there is no edema .", "there is mild edema .", 0),
        ("no pneumothorax .", "large pneumothorax .", 1),
    ]


def test_min_gap_share_out_of_range_is_refused(tmp_path):
    result = runner.invoke(app, ["trace", "--out", str(tmp_path), "--min-gap-share", "2"])
    assert result.exit_code == 2 and "min-gap-share" in result.output


OPTION_TESTS = {
    "mechtune trace": {
        option: "test_every_trace_option_changes_the_output"
        for option in (
            "--model",
            "--pairs",
            "--out",
            "--world",
            "--n",
            "--split",
            "--seed",
            "--min-gap-share",
            "--per-study",
        )
    }
}
