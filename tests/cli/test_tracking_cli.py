"""--report-to, --tracking-dir and --eval-every on every train and study command, on a
small phantom world exported as MIMIC-CXR-JPG with its questions: the TensorBoard event
files hold what train.json holds, a tracked run writes the same adapter as an untracked
one, and a missing extra fails before any work."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app
from tests.cli.test_distributed_cli import inputs, launched, negation_args
from tests.tiny_models import tiny_clip
from tests.train.test_tracking import f32, scalars

runner = CliRunner()
__all__ = ["inputs"]  # the launched runs' fixture (tests/cli/test_distributed_cli.py)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mechtune.sim.export import export_mimic
    from mechtune.sim.world import WorldConfig, make_world

    root = tmp_path_factory.mktemp("tracking_cli")
    export_mimic(make_world(WorldConfig.seeded(100, 0)), root / "mimic", seed=0)
    return root / "mimic", f"hf:{tiny_clip(root / 'clip')}"


def invoke(*args, code=0):
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


def _train_json(folder):
    return json.loads((folder / "train.json").read_text())


def _same_files(a, b, names) -> None:
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name


def test_negation_train_tracking_options(setup, tmp_path, monkeypatch):
    """--report-to tensorboard writes OUT/tracking/<method>: train/<term> equal train.json's
    history, the uniform run's single lr, a gradient norm per block; the adapter and
    train.json are byte-identical to an untracked run's. --tracking-dir moves the events;
    --eval-every 1 adds eval/claim_accuracy after each step (train.json's "eval"), the
    adapter unchanged. An unknown backend, or one whose package is missing, fails before
    anything is read or written."""
    data, model = setup
    base = ["negation", "train", "--model", model, "--data", data, "--no-report-facts",
            "--cache-dir", tmp_path / "cache", "--method", "uniform-lora", "--steps", 2]  # fmt: skip
    invoke(*base, "--out", tmp_path / "plain")
    assert not (tmp_path / "plain" / "tracking").exists()
    invoke(*base, "--report-to", "tensorboard", "--out", tmp_path / "tb")
    files = ["adapter/adapter_model.safetensors", "train.json"]
    _same_files(tmp_path / "plain", tmp_path / "tb", files)
    history = _train_json(tmp_path / "tb")["history"]
    logged = scalars(tmp_path / "tb" / "tracking" / "uniform-lora")
    for term in ("loss", "clip", "claim"):
        assert logged[f"train/{term}"] == [(h["step"], f32(h[term])) for h in history]
    assert logged["lr"] == [(1, f32(5e-4)), (2, f32(5e-4))]  # the default recipe's lr
    assert {"grad_norm/block_0", "grad_norm/block_1"} <= set(logged)

    invoke(*base, "--report-to", "tensorboard", "--tracking-dir", tmp_path / "elsewhere",
           "--eval-every", 1, "--out", tmp_path / "eval")  # fmt: skip
    _same_files(tmp_path / "plain", tmp_path / "eval", files[:1])
    assert not (tmp_path / "eval" / "tracking").exists()
    evals = _train_json(tmp_path / "eval")["eval"]
    assert [e["step"] for e in evals] == [1, 2] and 0 <= evals[0]["claim_accuracy"] <= 1
    logged = scalars(tmp_path / "elsewhere" / "uniform-lora")
    assert logged["eval/claim_accuracy"] == [(e["step"], f32(e["claim_accuracy"])) for e in evals]

    assert "--report-to must be one of" in invoke(*base, "--report-to", "mlflow", "--out",
                                                  tmp_path / "x", code=2)  # fmt: skip
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    out = invoke(*base, "--report-to", "tensorboard", "--out", tmp_path / "missing", code=2)
    assert "pip install 'mechtune[tracking]'" in out
    assert not (tmp_path / "missing").exists()


def test_negation_study_tracks_every_run(setup, tmp_path):
    """A study with --report-to tensorboard --tracking-dir DIR: one event folder per
    trained (method, seed) in DIR, with the loop's eval_every evaluations."""
    data, model = setup
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "methods: [zero-shot, uniform-lora]\nseeds: [0]\ntrace_max_pairs: 10\nloop: {steps: 2, "
        "caption_batch: 4, claim_batch: 4, checkpoint_every: 2, eval_every: 2}\n"
    )
    out = tmp_path / "study"
    invoke("negation", "study", "--model", model, "--data", data, "--no-report-facts",
           "--cache-dir", tmp_path / "cache", "--recipe", recipe, "--out", out,
           "--report-to", "tensorboard", "--tracking-dir", tmp_path / "tb")  # fmt: skip
    assert [p.name for p in (tmp_path / "tb").iterdir()] == ["uniform-lora"]
    logged = scalars(tmp_path / "tb" / "uniform-lora" / "seed0")
    history = _train_json(out / "runs" / "uniform-lora" / "seed0")
    assert logged["train/loss"] == [(h["step"], f32(h["loss"])) for h in history["history"]]
    (evaluation,) = history["eval"]
    assert logged["eval/claim_accuracy"] == [(2, f32(evaluation["claim_accuracy"]))]
    assert not (out / "tracking").exists()


@pytest.fixture(scope="module")
def no_splits(setup, tmp_path_factory):
    """The export's questions without their split labels."""
    data, _ = setup
    path = tmp_path_factory.mktemp("nosplit") / "questions.jsonl"
    rows = [json.loads(line) for line in (data / "questions.jsonl").read_text().splitlines()]
    path.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "split"}) + "\n"
                            for r in rows))  # fmt: skip
    return path


def test_paraphrase_train_tracking_options(setup, no_splits, tmp_path):
    """paraphrase train --report-to tensorboard --tracking-dir DIR --eval-every 1: the
    consistency terms, eval/flip_rate and eval/accuracy on the val-split questions after
    each step (train.json's "eval"), and the same adapter as an untracked run. Without
    split labels --eval-every has nothing to evaluate on: refused, naming it."""
    data, _ = setup
    base = ["paraphrase", "train", "--model", "phantom:vqa", "--questions",
            data / "questions.jsonl", "--data", data, "--layers", "4-5", "--steps", 2]  # fmt: skip
    invoke(*base, "--out", tmp_path / "plain")
    invoke(*base, "--report-to", "tensorboard", "--tracking-dir", tmp_path / "tb",
           "--eval-every", 1, "--out", tmp_path / "tracked")  # fmt: skip
    _same_files(tmp_path / "plain", tmp_path / "tracked", ["adapter/adapter_model.safetensors"])
    train = _train_json(tmp_path / "tracked")
    logged = scalars(tmp_path / "tb" / "consistency-lora")
    for term in ("answer_ce", "symmetric_kl", "loss"):
        assert logged[f"train/{term}"] == [(h["step"], f32(h[term])) for h in train["history"]]
    assert [e["step"] for e in train["eval"]] == [1, 2]
    for metric in ("flip_rate", "accuracy"):
        assert logged[f"eval/{metric}"] == [(e["step"], f32(e[metric])) for e in train["eval"]]
    assert {"grad_norm/block_4", "grad_norm/block_5", "lr"} <= set(logged)
    assert not (tmp_path / "tracked" / "tracking").exists()
    refused = invoke("paraphrase", "train", "--model", "phantom:vqa", "--questions", no_splits,
                     "--data", data, "--steps", 1, "--eval-every", 1, "--out", tmp_path / "n",
                     code=2)  # fmt: skip
    assert "--eval-every (lora.eval_every) evaluates on val-split questions" in refused
    assert "no split labels" in refused


def test_paraphrase_study_tracks_saes_and_lora_runs(setup, tmp_path):
    """paraphrase study --report-to tensorboard --tracking-dir DIR: each SAE layer's
    terms (DIR/saes/layer_<L>) and each LoRA run (DIR/<range>/seed<s>) with the recipe's
    lora.eval_every evaluations."""
    data, _ = setup
    recipe = tmp_path / "study.yaml"
    recipe.write_text(
        "model: phantom:vqa\nseeds: [0]\nsae_layers: [4, 5]\nsae_width: 32\nsae_k: 4\n"
        "sae_steps: 10\nsae_reports: 20\nanalysis_sets: 30\nhalf_width: 0\nranges: [sae]\n"
        "max_questions: 30\nlora:\n  steps: 2\n  batch_size: 4\n  checkpoint_every: 2\n"
        "  eval_every: 1\n"
    )
    out = tmp_path / "study"
    invoke("paraphrase", "study", "--recipe", recipe, "--questions", data / "questions.jsonl",
           "--data", data, "--out", out, "--report-to", "tensorboard",
           "--tracking-dir", tmp_path / "tb")  # fmt: skip
    for layer in (4, 5):
        logged = scalars(tmp_path / "tb" / "saes" / f"layer_{layer}")
        assert set(logged) == {"sae/loss", "sae/mse", "sae/l0"}
        assert [s for s, _ in logged["sae/loss"]] == [10]
    logged = scalars(tmp_path / "tb" / "sae" / "seed0")
    train = _train_json(out / "runs" / "sae" / "seed0")
    assert logged["train/loss"] == [(h["step"], f32(h["loss"])) for h in train["history"]]
    assert logged["eval/flip_rate"] == [(e["step"], f32(e["flip_rate"])) for e in train["eval"]]
    assert not (out / "tracking").exists()


def test_sae_train_tracks_each_layer(setup, tmp_path):
    """sae train --report-to tensorboard: one run per layer under OUT/tracking (or
    --tracking-dir) with sae/loss, sae/mse and sae/l0 at each log interval."""
    data, _ = setup
    base = ["sae", "train", "--model", "phantom:vqa", "--questions", data / "questions.jsonl",
            "--data", data, "--layers", "4,5", "--width", 16, "--k", 2, "--steps", 3]  # fmt: skip
    invoke(*base, "--report-to", "tensorboard", "--out", tmp_path / "saes")
    for layer in (4, 5):
        logged = scalars(tmp_path / "saes" / "tracking" / f"layer_{layer}")
        assert set(logged) == {"sae/loss", "sae/mse", "sae/l0"}
        assert logged["sae/loss"] == logged["sae/mse"]  # topk: the loss is the error
        assert [s for s, _ in logged["sae/l0"]] == [3] and logged["sae/l0"][0][1] <= 2
    invoke(*base, "--report-to", "tensorboard", "--tracking-dir", tmp_path / "tb", "--out",
           tmp_path / "again")  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == ["layer_4", "layer_5"]
    assert not (tmp_path / "again" / "tracking").exists()


def test_demo_report_to_reaches_both_studies(tmp_path, monkeypatch):
    """demo --report-to tensorboard --tracking-dir DIR: the negation study tracks under
    DIR/negation, the paraphrase study under DIR/paraphrase; a missing package fails
    before the world is rendered."""
    from mechtune.cli import main as cli_main

    seen = {}

    def record(name):
        def fake(*args, **kwargs):
            seen[name] = (args, kwargs)
            if name == "paraphrase":
                raise SystemExit(0)
            return {}

        return fake

    for stage in ("_world", "data_source", "_examples", "_zero_shot", "_paraphrase_study"):
        monkeypatch.setattr(cli_main, stage, record(stage.strip("_").split("_")[0]))
    monkeypatch.setattr(cli_main.data_cli, "build_kinds", record("build"))
    monkeypatch.setattr(cli_main.negation_cli, "run_study", record("negation"))
    args = ["demo", "--no-check", "--out", str(tmp_path), "--report-to", "tensorboard",
            "--tracking-dir", str(tmp_path / "tb")]  # fmt: skip
    runner.invoke(app, args, catch_exceptions=False)
    negation = seen["negation"][0][4]
    paraphrase = seen["paraphrase"][0][2]
    assert (negation.report_to, negation.logging_dir) == (
        "tensorboard",
        tmp_path / "tb" / "negation",
    )
    assert paraphrase.logging_dir == tmp_path / "tb" / "paraphrase"
    assert paraphrase.report_to == "tensorboard"
    seen.clear()
    runner.invoke(app, args[:-4], catch_exceptions=False)
    assert seen["negation"][0][4].enabled is False
    monkeypatch.setitem(sys.modules, "wandb", None)
    seen.clear()
    result = runner.invoke(app, [*args[:-4], "--report-to", "wandb"])
    assert result.exit_code == 2 and "mechtune[tracking]" in result.output
    assert "world" not in seen


TRACKING = {"--report-to": None, "--tracking-dir": None}
OPTION_TESTS = {
    "mechtune negation train": {
        **dict.fromkeys(TRACKING, "test_negation_train_tracking_options"),
        "--eval-every": "test_negation_train_tracking_options",
    },
    "mechtune negation study": dict.fromkeys(TRACKING, "test_negation_study_tracks_every_run"),
    "mechtune paraphrase train": {
        **dict.fromkeys(TRACKING, "test_paraphrase_train_tracking_options"),
        "--eval-every": "test_paraphrase_train_tracking_options",
    },
    "mechtune paraphrase study": dict.fromkeys(
        TRACKING, "test_paraphrase_study_tracks_saes_and_lora_runs"
    ),
    "mechtune sae train": dict.fromkeys(TRACKING, "test_sae_train_tracks_each_layer"),
    "mechtune demo": dict.fromkeys(TRACKING, "test_demo_report_to_reaches_both_studies"),
}


def test_negation_train_tracks_under_a_launch(tmp_path, inputs):
    """torchrun, 2 CPU processes, --report-to tensorboard --eval-every 1: the launch's
    accelerator logs (created with log_with), on rank 0 only: one event file, whose
    train/loss is train.json's history (the mean over the ranks) and whose evaluations
    are rank 0's; rank 1 writes nothing."""
    out = tmp_path / "ddp"
    args = [*negation_args(inputs, out), "--report-to", "tensorboard", "--eval-every", 1]
    _, _, rank1 = launched("torchrun", [str(a) for a in args], tmp_path / "record")
    assert rank1["writes"] == []
    events = list((out / "tracking" / "uniform-lora").glob("events.out.tfevents.*"))
    assert len(events) == 1
    train = _train_json(out)
    logged = scalars(out / "tracking" / "uniform-lora")
    assert logged["train/loss"] == [(h["step"], f32(h["loss"])) for h in train["history"]]
    assert [e["step"] for e in train["eval"]] == [1, 2]
    assert logged["eval/claim_accuracy"] == [
        (e["step"], f32(e["claim_accuracy"])) for e in train["eval"]
    ]
    assert {"lr", "grad_norm/block_0", "grad_norm/block_1"} <= set(logged)
