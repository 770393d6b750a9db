"""`mechtune paraphrase eval|train|study` end to end, on the phantom VQA model and on the
tiny random Gemma 3, over a phantom world exported with its questions (`sim export` writes
questions.jsonl beside real JPEG files): the path a MedGemma user with MIMIC-CXR-JPG and a
PSF-Med style file takes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from mechtune.cli.main import app
from tests.tiny_gemma import TEXT_LAYERS, tiny_gemma
from tests.train.test_model_card import card_metrics, expected_metrics

runner = CliRunner()
RECIPES = Path(__file__).parents[2] / "recipes"
EXTERNAL = Path(__file__).parents[3] / "shared" / "data" / "external"
MEDGEMMA_ANSWERS = EXTERNAL / "medgemma_mimic_phrasing_answers.csv"


def ok(args: list[str]) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


def fails(args: list[str]) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    return " ".join(result.output.split())


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    from mechtune.sim.export import export_mimic
    from mechtune.sim.world import WorldConfig, make_world

    folder = tmp_path_factory.mktemp("export") / "mimic"
    export_mimic(make_world(WorldConfig.seeded(80, 1)), folder, seed=1)
    assert (folder / "questions.jsonl").is_file()
    return folder


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))


def _inputs(export_dir: Path) -> list[str]:
    return ["--questions", str(export_dir / "questions.jsonl"), "--data", str(export_dir)]


def _first_record_broken(export_dir: Path, path: Path, **changes: object) -> Path:
    """The export's questions file with ``changes`` made to its first record."""
    lines = (export_dir / "questions.jsonl").read_text().splitlines()
    first = {**json.loads(lines[0]), **changes}
    path.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    return path


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "eval.json").read_text())["metrics"]


def _margins(folder: Path) -> list[str]:
    return (folder / "margins.csv").read_text().splitlines()


@pytest.mark.parametrize("kind", ["phantom", "gemma"])
def test_eval_sae_train_eval_end_to_end(kind, export_dir, gemma_dir, tmp_path, request):
    """eval, sae train, sae analyze, train --layers, eval --adapter and eval --clamp; the
    eval numbers reproduce after reloading the adapter."""
    model = "phantom:vqa" if kind == "phantom" else f"hf:{gemma_dir}"
    layers = "2-3" if kind == "phantom" else "1-2"
    common = ["--model", model, *_inputs(export_dir)]
    split = ["--split", "test"] if kind == "phantom" else ["--split", "val"]

    ok(["paraphrase", "eval", *common, *split, "--out", tmp_path / "base"])
    base = _metrics(tmp_path / "base")
    assert {"all", "heldout", "in_distribution", "by_strategy"} <= set(base)
    assert base["all"]["flip_rate"]["n"] == base["all"]["groups"] > 0
    assert base["heldout"]["swap_sensitivity"] is not None
    records = [json.loads(x) for x in (export_dir / "questions.jsonl").read_text().splitlines()]
    wanted = [r for r in records if r["split"] == split[1]]
    rows = _margins(tmp_path / "base")
    assert len(rows) == 1 + sum(1 + len(r["paraphrases"]) for r in wanted)

    sae_layers = "2,3" if kind == "phantom" else "1,2"
    ok(["sae", "train", *common, "--layers", sae_layers, "--width", "32", "--k", "4",
        "--steps", "10", "--out", tmp_path / "saes"])  # fmt: skip
    ok(["sae", "analyze", *common, "--saes", tmp_path / "saes", "--out", tmp_path / "ana",
        "--max-questions", "40"])  # fmt: skip
    analysis = json.loads((tmp_path / "ana" / "analysis.json").read_text())
    assert sorted(int(k) for k in analysis["analysis"]["auc_by_layer"]) == [
        int(x) for x in sae_layers.split(",")
    ]

    ok(["paraphrase", "train", *common, "--layers", layers, "--steps", "3", "--seed", "0",
        "--out", tmp_path / "run"])  # fmt: skip
    config = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert config["layers_to_transform"] == [int(layers[0]), int(layers[-1])]
    assert (tmp_path / "run" / "train.json").is_file()

    for out in ("after", "again"):
        ok(["paraphrase", "eval", *common, *split, "--adapter", tmp_path / "run",
            "--out", tmp_path / out])  # fmt: skip
    after = json.loads((tmp_path / "after" / "eval.json").read_text())
    assert after["adapter"]["max_abs_diff"] <= 1e-3
    # the run's model card now shows exactly the last eval's metrics
    assert card_metrics(tmp_path / "run" / "README.md") == expected_metrics(after)
    assert str(tmp_path / "again" / "eval.json") in (tmp_path / "run" / "README.md").read_text()
    assert _margins(tmp_path / "after") != rows  # the adapter is applied
    assert (tmp_path / "after" / "eval.json").read_bytes() == (
        tmp_path / "again" / "eval.json"
    ).read_bytes()
    assert _margins(tmp_path / "after") == _margins(tmp_path / "again")

    layer = sae_layers.split(",")[0]
    clamp = f"{tmp_path / 'saes' / f'layer_{layer}'}:0:5.0"
    ok(["paraphrase", "eval", *common, *split, "--clamp", clamp, "--out", tmp_path / "clamp"])
    clamped = json.loads((tmp_path / "clamp" / "eval.json").read_text())
    assert clamped["clamp"] == {
        "sae": str(tmp_path / "saes" / f"layer_{layer}"),
        "layer": int(layer),
        "feature": 0,
        "value": 5.0,
    }
    assert _margins(tmp_path / "clamp") != rows


def test_eval_answers_computes_the_metrics_of_recorded_answers(tmp_path):
    if not MEDGEMMA_ANSWERS.is_file():
        pytest.skip(f"{MEDGEMMA_ANSWERS} is absent")
    out = ok(["paraphrase", "eval", "--answers", MEDGEMMA_ANSWERS, "--out", tmp_path])
    metrics = _metrics(tmp_path)
    assert metrics["all"]["groups"] == 63 and metrics["all"]["flips"] == 20
    assert metrics["all"]["flip_rate"]["value"] == pytest.approx(20 / 63)
    assert metrics["all"]["margin_difference"] is None
    assert "margins" in metrics["all"]["na"]["margin_difference"]
    assert metrics["all"]["text_only_agreement"] is None
    assert "n/a" in (tmp_path / "table.md").read_text() and "31.7" in out
    message = fails(["paraphrase", "eval", "--answers", MEDGEMMA_ANSWERS, "--adapter", tmp_path])
    assert "--answers evaluates recorded answers; --adapter need a model" in message


def test_eval_options_change_the_report(export_dir, tmp_path, monkeypatch):
    common = ["--model", "phantom:vqa", *_inputs(export_dir)]
    ok(["paraphrase", "eval", *common, "--out", tmp_path / "test"])
    ok(["paraphrase", "eval", *common, "--split", "val", "--out", tmp_path / "val"])
    test, val = _metrics(tmp_path / "test"), _metrics(tmp_path / "val")
    assert test["all"]["groups"] != val["all"]["groups"]
    # --seed: the bootstrap of the clustered intervals
    ok(["paraphrase", "eval", *common, "--seed", "7", "--out", tmp_path / "seed"])
    reseeded = _metrics(tmp_path / "seed")
    assert reseeded["all"]["flip_rate"]["value"] == test["all"]["flip_rate"]["value"]
    assert reseeded["all"]["margin_difference"] != test["all"]["margin_difference"]
    # --skip-bad: a bad record fails naming the row, or is skipped and counted
    bad = _first_record_broken(export_dir, tmp_path / "bad.jsonl", answer="maybe")
    args = ["paraphrase", "eval", "--model", "phantom:vqa", "--questions", bad]
    message = fails([*args, "--data", export_dir, "--out", tmp_path / "bad"])
    assert "bad.jsonl, line 1" in message and "maybe" in message
    out = ok([*args, "--data", export_dir, "--skip-bad", "--out", tmp_path / "skip"])
    assert "skipped 1" in out
    # --device / --dtype reach the model load
    from mechtune.cli import paraphrase as cli

    seen = []

    def record(spec, device, dtype):
        seen.append((spec, device, dtype))
        raise cli.ConfigError("stop")

    monkeypatch.setattr(cli, "_load", record)
    fails(["paraphrase", "eval", *common, "--device", "cuda:1", "--dtype", "bfloat16"])
    assert seen == [("phantom:vqa", "cuda:1", "bfloat16")]


@pytest.fixture(scope="module")
def gemma_runs(export_dir, gemma_dir, tmp_path_factory):
    """Tiny Gemma runs that differ in one option each, trained once for the module."""
    root = tmp_path_factory.mktemp("gemma_runs")
    common = ["--model", f"hf:{gemma_dir}", *_inputs(export_dir), "--layers", "0-1"]
    base = ["--steps", "2", "--seed", "0", "--grad-accum", "1"]
    variants = {
        "base": base,
        "binary": [*base, "--answer-loss", "binary"],
        "accum": ["--steps", "2", "--seed", "0", "--grad-accum", "2"],
        "seed": ["--steps", "2", "--seed", "1", "--grad-accum", "1"],
        "steps": ["--steps", "3", "--seed", "0", "--grad-accum", "1"],
        "layers": [*base, "--layers", "2"],
    }
    for name, extra in variants.items():
        ok(["paraphrase", "train", *common, *extra, "--out", root / name])
    return root


def _adapter(folder: Path) -> dict:
    return load_file(str(folder / "adapter" / "adapter_model.safetensors"))


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_train_options(gemma_runs, export_dir, gemma_dir, tmp_path):
    base = _adapter(gemma_runs / "base")
    for name in ("binary", "accum", "seed", "steps", "layers"):
        assert not _same(_adapter(gemma_runs / name), base), name
    history = json.loads((gemma_runs / "base" / "train.json").read_text())
    assert history["config"]["answer_loss"] == "vocab"
    binary = json.loads((gemma_runs / "binary" / "train.json").read_text())
    assert binary["config"]["answer_loss"] == "binary"
    layers = json.loads((gemma_runs / "layers" / "adapter" / "adapter_config.json").read_text())
    assert layers["layers_to_transform"] == [2]
    # --out holding checkpoints: refused without --resume; --resume continues them
    import shutil

    run = tmp_path / "run"
    shutil.copytree(gemma_runs / "base", run)
    common = ["--model", f"hf:{gemma_dir}", *_inputs(export_dir), "--layers", "0-1"]
    args = ["paraphrase", "train", *common, "--seed", "0", "--grad-accum", "1"]
    assert "pass --resume" in fails([*args, "--steps", "3", "--out", run])
    ok([*args, "--steps", "3", "--resume", "--out", run])
    assert _same(_adapter(run), _adapter(gemma_runs / "steps"))  # resumed == straight run
    message = fails([*args, "--steps", "3", "--answer-loss", "binary", "--resume", "--out", run])
    assert "other settings" in message and "answer_loss" in message


def test_released_adapter_shape_through_the_medgemma_recipe(export_dir, gemma_dir, tmp_path):
    """`paraphrase train --recipe recipes/consistency-medgemma-mimic.yaml` on the tiny Gemma:
    the released adapter's settings, the layers scaled to the tiny model's depth."""
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    recipe = RECIPES / "consistency-medgemma-mimic.yaml"
    ok(["paraphrase", "train", "--recipe", recipe, "--model", f"hf:{gemma_dir}",
        *_inputs(export_dir), "--layers", "1-2", "--steps", "1", "--out", tmp_path])  # fmt: skip
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["lora_dropout"]) == (16, 32, 0.05)
    assert sorted(config["target_modules"]) == sorted(
        ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    assert config["layers_to_transform"] == [1, 2]
    assert config["layers_pattern"] in ("language_model.layers", ["language_model.layers"])
    weights = _adapter(tmp_path)
    assert weights and not any("vision" in k for k in weights)
    train = json.loads((tmp_path / "train.json").read_text())
    assert (train["config"]["batch_size"], train["config"]["grad_accum"]) == (1, 8)
    base = AutoModelForImageTextToText.from_pretrained(str(gemma_dir))
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    expected = 0
    for layer in (1, 2):
        block = base.model.language_model.layers[layer]
        for module in (*block.self_attn.children(), *block.mlp.children()):
            if hasattr(module, "base_layer"):
                linear = module.base_layer
                expected += 16 * (linear.in_features + linear.out_features)
    trainable = sum(v.numel() for v in weights.values())
    assert trainable == expected > 0
    assert TEXT_LAYERS == 3
    del model


def _study_recipe(tmp_path: Path, name: str = "study.yaml", *, trained_saes: bool = True) -> Path:
    recipe = tmp_path / name
    text = (
        "model: phantom:vqa\nseeds: [0]\nsae_width: 32\nsae_k: 4\nsae_steps: 10\n"
        "sae_reports: 20\nanalysis_sets: 30\nhalf_width: 0\nranges: [sae, early]\n"
        "max_questions: 40\nlora:\n  steps: 2\n  batch_size: 4\n  checkpoint_every: 2\n"
    )
    if not trained_saes:  # the keys that shape SAEs the study trains
        text = "".join(line + "\n" for line in text.splitlines() if not line.startswith("sae_"))
    recipe.write_text(text)
    return recipe


def test_study_end_to_end_and_with_given_saes(export_dir, tmp_path):
    recipe = _study_recipe(tmp_path)
    out = tmp_path / "study"
    log = ok(["paraphrase", "study", "--recipe", recipe, *_inputs(export_dir), "--out", out])
    results = json.loads((out / "results.json").read_text())
    assert results["sae"]["source"] == "trained" and len(results["runs"]) == 2
    # each long step reports its progress, to its end (plain lines: not a terminal)
    done = [line.split(": ", 1)[0] for line in log.splitlines() if " done in " in line]
    assert done[:3] == ["baseline", "capture activations at 6 layers", "train SAE at layer 0"]
    assert "SAE analysis" in done and "train consistency-lora (seed 0)" in done
    trained = [name for name, runs in results["runs"].items() if "same_as" not in runs[0]]
    assert done.count("train consistency-lora (seed 0)") == len(trained)  # each range once
    assert {f"evaluate LoRA {name} (seed 0)" for name in trained} <= set(done)
    assert results["counts"]["eval_sets"] == 40
    for name in (
        "table.md",
        "margins.csv",
        "figures/flip_auc_by_layer.png",
        "figures/flip_rate.png",
    ):
        assert (out / name).is_file(), name
    assert {p.name for p in (out / "saes").iterdir()} == {f"layer_{i}" for i in range(6)}
    # --saes: analyse the SAEs just trained instead of training new ones
    given = _study_recipe(tmp_path, "given.yaml", trained_saes=False)
    again = tmp_path / "again"
    ok(["paraphrase", "study", "--recipe", given, *_inputs(export_dir), "--saes", out / "saes",
        "--out", again])  # fmt: skip
    loaded = json.loads((again / "results.json").read_text())
    assert loaded["sae"]["source"] == str(out / "saes")
    assert loaded["analysis"]["auc_by_layer"] == results["analysis"]["auc_by_layer"]
    assert not (again / "saes").exists()


def test_study_runs_its_controls(export_dir, tmp_path):
    """random_ranges and auc_shuffles: LoRA on random ranges of the SAE range's width
    (rows random-0, random-1, each layer shown), the shuffled-label AUC per layer."""
    recipe = tmp_path / "controls.yaml"
    recipe.write_text(
        "model: phantom:vqa\nseeds: [0]\nsae_width: 32\nsae_k: 4\nsae_steps: 10\n"
        "sae_reports: 20\nanalysis_sets: 30\nhalf_width: 0\nranges: [sae]\n"
        "random_ranges: 2\nauc_shuffles: 3\nmax_questions: 40\n"
        "lora:\n  steps: 2\n  batch_size: 4\n  checkpoint_every: 2\n"
    )
    out = tmp_path / "study"
    log = ok(["paraphrase", "study", "--recipe", recipe, *_inputs(export_dir), "--out", out])
    results = json.loads((out / "results.json").read_text())
    sae = results["runs"]["sae"][0]["layers"]
    drawn = results["random_ranges"]["drawn"]
    assert list(results["runs"]) == ["sae", "random-0", "random-1"] and len(drawn) == 2
    for name, layers in drawn.items():
        assert results["runs"][name][0]["layers"] == layers and len(layers) == len(sae) == 1
        assert layers != sae and (out / "runs" / name / "seed0" / "adapter").is_dir()
        assert f"LoRA {name} (L{layers[0]})" in (out / "table.md").read_text()
    assert drawn["random-0"] != drawn["random-1"] and "random ranges of width 1" in log
    assert "Δ flip vs SAE range" in (out / "table.md").read_text()
    shuffled = results["analysis"]["auc_shuffled_by_layer"]
    assert sorted(int(k) for k in shuffled) == list(range(6))
    for layer, control in shuffled.items():
        assert control["shuffles"] == 3
        if results["analysis"]["auc_by_layer"][layer] is not None:
            assert control["p_value"] in (0.25, 0.5, 0.75, 1.0)


def test_study_runs_on_the_tiny_gemma(export_dir, gemma_dir, tmp_path):
    """The study takes any model spec: on the tiny Gemma 3 (3 language blocks), SAEs on
    two of them, the SAE range and the late range trained at the same budget."""
    recipe = tmp_path / "gemma.yaml"
    recipe.write_text(
        f"model: hf:{gemma_dir}\nseeds: [0]\nsae_layers: [1, 2]\nsae_width: 16\nsae_k: 4\n"
        "sae_steps: 5\nsae_reports: 5\nanalysis_sets: 10\nhalf_width: 0\n"
        "ranges: [sae, late]\nmax_questions: 12\neval_split: val\n"
        "lora:\n  steps: 1\n  batch_size: 2\n  checkpoint_every: 1\n"
    )
    out = tmp_path / "study"
    ok(["paraphrase", "study", "--recipe", recipe, *_inputs(export_dir), "--out", out])
    results = json.loads((out / "results.json").read_text())
    assert sorted(int(k) for k in results["analysis"]["auc_by_layer"]) == [1, 2]
    assert results["counts"]["eval_sets"] == 12 and results["baseline"]["all"]["groups"] == 12
    late = results["runs"]["late"][0]
    assert late["layers"] == [2]
    trained = late.get("same_as", "late")  # the SAE range may be the late one: one run
    config = json.loads(
        (out / "runs" / trained / "seed0" / "adapter" / "adapter_config.json").read_text()
    )
    assert config["layers_to_transform"] == [2]
    assert {p.name for p in (out / "saes").iterdir()} == {"layer_1", "layer_2"}


def test_study_dry_run_validates_the_medgemma_recipe(export_dir, gemma_dir, tmp_path):
    recipe = RECIPES / "consistency-medgemma-mimic.yaml"
    out = ok(["paraphrase", "study", "--recipe", recipe, *_inputs(export_dir), "--dry-run"])
    assert "hub id" in out and "needs:" in out
    assert "1 x 8" in out and "nothing was loaded or trained" in out
    missing = ok(["paraphrase", "study", "--recipe", recipe, "--questions", tmp_path / "q.jsonl",
                  "--data", tmp_path / "mimic", "--dry-run"])  # fmt: skip
    assert missing.count("needs:") >= 3
    # a local model too shallow for the recipe's SAE layers is an error, before loading
    message = fails(["paraphrase", "study", "--recipe", recipe, "--model", f"hf:{gemma_dir}",
                     *_inputs(export_dir), "--dry-run"])  # fmt: skip
    assert "out of range" in message and "3 blocks" in message


def test_study_options_reach_the_study(export_dir, tmp_path, monkeypatch):
    from mechtune.cli import paraphrase as cli

    seen = {}

    def record(config, questions, data, out, **kwargs):
        seen.update(config=config, questions=questions, data=data, out=out, **kwargs)
        out.mkdir(parents=True, exist_ok=True)
        (out / "table.md").write_text("| condition |\n")
        return {}

    monkeypatch.setattr(cli, "run_study", record)
    recipe = _study_recipe(tmp_path)
    ok(["paraphrase", "study", "--recipe", recipe, "--model", "phantom:other",
        *_inputs(export_dir), "--out", tmp_path / "o", "--device", "cuda:2",
        "--dtype", "float16", "--skip-bad"])  # fmt: skip
    assert seen["config"].model == "phantom:other" and seen["config"].lora.steps == 2
    assert seen["questions"] == export_dir / "questions.jsonl" and seen["data"] == export_dir
    assert (seen["out"], seen["device"], seen["dtype"]) == (tmp_path / "o", "cuda:2", "float16")
    assert seen["skip_bad"] is True
    bare = _study_recipe(tmp_path, "bare.yaml", trained_saes=False)
    ok(["paraphrase", "study", "--recipe", bare, *_inputs(export_dir), "--saes", tmp_path])
    assert seen["config"].saes == str(tmp_path)


COMMON = {
    "--model": "test_eval_sae_train_eval_end_to_end",
    "--questions": "test_eval_sae_train_eval_end_to_end",
    "--data": "test_eval_sae_train_eval_end_to_end",
    "--device": "test_eval_options_change_the_report",
    "--dtype": "test_eval_options_change_the_report",
    "--skip-bad": "test_eval_options_change_the_report",
}
OPTION_TESTS = {
    "mechtune paraphrase eval": {
        **COMMON,
        "--out": "test_eval_sae_train_eval_end_to_end",
        "--adapter": "test_eval_sae_train_eval_end_to_end",
        "--clamp": "test_eval_sae_train_eval_end_to_end",
        "--answers": "test_eval_answers_computes_the_metrics_of_recorded_answers",
        "--split": "test_eval_options_change_the_report",
        "--seed": "test_eval_options_change_the_report",
    },
    "mechtune paraphrase train": {
        **COMMON,
        "--device": "test_train_device_and_dtype_reach_the_model_load",
        "--dtype": "test_train_device_and_dtype_reach_the_model_load",
        "--skip-bad": "test_train_device_and_dtype_reach_the_model_load",
        "--layers": "test_train_options",
        "--recipe": "test_released_adapter_shape_through_the_medgemma_recipe",
        "--steps": "test_train_options",
        "--answer-loss": "test_train_options",
        "--grad-accum": "test_train_options",
        "--seed": "test_train_options",
        "--out": "test_train_options",
        "--resume": "test_train_options",
    },
    "mechtune paraphrase study": {
        **COMMON,
        "--model": "test_study_options_reach_the_study",
        "--questions": "test_study_options_reach_the_study",
        "--data": "test_study_options_reach_the_study",
        "--device": "test_study_options_reach_the_study",
        "--dtype": "test_study_options_reach_the_study",
        "--skip-bad": "test_study_options_reach_the_study",
        "--recipe": "test_study_end_to_end_and_with_given_saes",
        "--saes": "test_study_end_to_end_and_with_given_saes",
        "--out": "test_study_end_to_end_and_with_given_saes",
        "--dry-run": "test_study_dry_run_validates_the_medgemma_recipe",
    },
}


def test_train_device_and_dtype_reach_the_model_load(export_dir, tmp_path, monkeypatch):
    from mechtune.cli import paraphrase as cli

    seen = []

    def record(spec, device, dtype):
        seen.append((spec, device, dtype))
        raise cli.ConfigError("stop")

    monkeypatch.setattr(cli, "_load", record)
    fails(["paraphrase", "train", "--model", "phantom:vqa", *_inputs(export_dir),
           "--device", "cuda:1", "--dtype", "bfloat16", "--out", tmp_path])  # fmt: skip
    assert seen == [("phantom:vqa", "cuda:1", "bfloat16")]
    # --skip-bad reaches the reader: a bad record is skipped and counted
    monkeypatch.undo()
    bad = _first_record_broken(export_dir, tmp_path / "bad.jsonl", paraphrases=[])
    out = ok(["paraphrase", "train", "--model", "phantom:vqa", "--questions", bad, "--data",
              export_dir, "--skip-bad", "--steps", "1", "--out", tmp_path / "run"])  # fmt: skip
    assert "skipped 1" in out
