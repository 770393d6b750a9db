"""`mechtune negation trace|train|eval|study` end to end, on a small phantom world exported
as MIMIC-CXR-JPG (real JPEG files), for a tiny random CLIPModel, a tiny random SiglipModel
and the phantom CLIP; and every option of the four commands changes what they do."""

from __future__ import annotations

import csv
import gzip
import json

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app
from tests.tiny_models import tiny_clip, tiny_siglip
from tests.train.test_model_card import card_metrics, expected_metrics

runner = CliRunner()
N = 100  # studies of the exported world


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from mechtune.sim.export import export_mimic
    from mechtune.sim.world import WorldConfig, make_world

    root = tmp_path_factory.mktemp("negation_cli")
    export_mimic(make_world(WorldConfig.seeded(N, 0)), root / "mimic", seed=0)
    models = {
        "clip": f"hf:{tiny_clip(root / 'clip')}",
        "siglip": f"hf:{tiny_siglip(root / 'siglip')}",
        "phantom": "phantom:default",
    }
    return root, root / "mimic", models


def invoke(*args, code=0):
    result = runner.invoke(app, ["negation", *map(str, args)])
    assert result.exit_code == code, result.output
    return " ".join(result.output.split())


def common(data, cache):
    return ["--data", data, "--no-report-facts", "--cache-dir", cache]


def train_nast(opts, trace, out, steps=2):
    """``negation train --method nast --alpha TRACE --steps N --out OUT``."""
    invoke("train", *opts, "--method", "nast", "--alpha", trace, "--steps", steps, "--out", out)


POOLING = {"clip": "eos", "siglip": "last", "phantom": "mean"}


@pytest.mark.parametrize("name", ["clip", "siglip", "phantom"])
def test_trace_train_eval_study_end_to_end(setup, tmp_path, name):
    _, data, models = setup
    model = models[name]
    opts = ["--model", model, *common(data, tmp_path / "cache")]

    # 1. trace (train-split pairs)
    invoke("trace", *opts, "--max-pairs", 12, "--out", tmp_path / "trace")
    meta = json.loads((tmp_path / "trace" / "trace.json").read_text())
    assert meta["aggregation"]["pooling"] == POOLING[name]
    assert meta["counts"]["split"] == "train" and meta["counts"]["used"] == 12

    # 2. train NAST with the traced alpha; checkpoints and a peft adapter
    run = tmp_path / "run"
    train_nast(opts, tmp_path / "trace", run)
    assert (run / "adapter" / "adapter_config.json").is_file()
    assert (run / "adapter" / "adapter_model.safetensors").is_file()

    # 3. eval with the adapter: the table, and the reload reproduces the trained model
    invoke("eval", *opts, "--adapter", run, "--out", tmp_path / "eval")
    report = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert report["adapter_check"]["max_abs_diff"] <= 1e-5
    assert card_metrics(run / "README.md") == expected_metrics(report)
    assert 0 <= report["claims"]["heldout"]["claim_accuracy"]["value"] <= 1
    assert 0 < report["retention"]["value"] <= 1.0 + 1e-6
    assert report["retrieval"]["R@1"] is not None  # the export has reports
    table = (tmp_path / "eval" / "table.md").read_text()
    for row in (
        "image->report R@1",
        "claim accuracy",
        "polarity MCQ, negated wording",
        "retention",
    ):
        assert row in table
    # --no-report-facts: the labels carry no side, so contralateral negation is n/a
    assert "contralateral" in report["not_available"]

    # 4. a 2-method, 1-seed study from a recipe
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(
        "methods: [uniform-lora, nast]\nseeds: [0]\ntrace_max_pairs: 10\n"
        "loop: {steps: 2, caption_batch: 4, claim_batch: 4, checkpoint_every: 2}\n"
    )
    invoke("study", *opts, "--recipe", recipe, "--out", tmp_path / "study")
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert set(results["runs"]) == {"uniform-lora", "nast"}
    assert results["config"]["model"] == model
    assert "nast" in (tmp_path / "study" / "table.md").read_text()
    assert (tmp_path / "study" / "figures" / "cte_heatmap.png").is_file()


def test_every_trace_option_changes_the_output(setup, tmp_path):
    _, data, models = setup
    base = ["--model", models["clip"], *common(data, tmp_path / "cache"), "--max-pairs", 30]

    def trace(name, *extra):
        invoke("trace", *base, *extra, "--out", tmp_path / name)
        return json.loads((tmp_path / name / "trace.json").read_text())

    first = trace("base")
    assert (tmp_path / "base" / "trace.safetensors").is_file()  # --out
    assert (tmp_path / "base" / "cte_heatmap.png").is_file()
    pairs = [(p["correct"], p["foil"], p["image"]) for p in first["pairs"]]
    assert len(pairs) == 30

    assert trace("few", "--max-pairs", 5)["counts"]["used"] == 5
    assert trace("per", "--per-study", 2)["counts"]["candidates"] > first["counts"]["candidates"]
    reseeded = trace("seed", "--seed", 1)
    assert [(p["correct"], p["foil"], p["image"]) for p in reseeded["pairs"]] != pairs
    assert trace("val", "--split", "val")["counts"]["split"] == "val"
    loose = trace("gap", "--min-gap-share", 0.0)
    assert loose["aggregation"]["min_gap_share"] == 0.0 != first["aggregation"]["min_gap_share"]
    refused = invoke("trace", *base, "--min-gap-share", 1.5, "--out", tmp_path / "z", code=2)
    assert "--min-gap-share" in refused
    phantom = trace("phantom", "--model", models["phantom"])
    assert phantom["aggregation"]["pooling"] == "mean"

    # --pairs: a user file whose images are study ids of the source
    ids = [p["image"] for p in first["pairs"][:3]]
    lines = [
        json.dumps({"correct": p["correct"], "foil": p["foil"], "image": p["image"]})
        for p in first["pairs"][:3]
    ]
    pairs_file = tmp_path / "pairs.jsonl"
    pairs_file.write_text("\n".join(lines) + "\n")
    own = trace("own", "--pairs", pairs_file)
    assert [p["image"] for p in own["pairs"]] == ids
    pairs_file.write_text(json.dumps({"correct": "a", "foil": "b", "image": "nope"}) + "\n")
    out = invoke("trace", *base, "--pairs", pairs_file, "--out", tmp_path / "bad", code=2)
    assert "pairs.jsonl" in out and "'nope'" in out

    # --recipe: its data_seed and trace_max_pairs apply unless an option overrides them
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data_seed: 1\ntrace_max_pairs: 7\n")
    from_recipe = trace("recipe", "--recipe", recipe, "--max-pairs", 30)
    assert [(p["correct"], p["foil"], p["image"]) for p in from_recipe["pairs"]] == [
        (p["correct"], p["foil"], p["image"]) for p in reseeded["pairs"]
    ]


def test_device_dtype_and_cache_options(setup, tmp_path):
    _, data, models = setup
    base = ["--model", models["clip"], "--data", data, "--no-report-facts", "--max-pairs", 10]
    cache = tmp_path / "cache"
    out = invoke("trace", *base, "--cache-dir", cache, "--out", tmp_path / "a")
    cached = sorted(p for p in cache.rglob("*") if p.is_file())
    assert cached and "miss" in out
    again = invoke("trace", *base, "--cache-dir", cache, "--out", tmp_path / "b")
    assert "hit" in again and sorted(p for p in cache.rglob("*") if p.is_file()) == cached
    fresh = tmp_path / "fresh"
    invoke("trace", *base, "--cache-dir", fresh, "--no-cache", "--out", tmp_path / "c")
    assert not fresh.exists()
    a = json.loads((tmp_path / "a" / "trace.json").read_text())
    c = json.loads((tmp_path / "c" / "trace.json").read_text())
    assert a["per_layer"]["cte_layer"] == c["per_layer"]["cte_layer"]  # the cache changes no number

    bf16 = invoke("trace", *base, "--no-cache", "--dtype", "bfloat16", "--out", tmp_path / "h")
    half = json.loads((tmp_path / "h" / "trace.json").read_text())
    assert half["counts"]["dtype"] == "bfloat16" and a["counts"]["dtype"] == "float32"
    assert half["per_layer"]["cte_layer"] != a["per_layer"]["cte_layer"] and "pooling: eos" in bf16
    bad = invoke("trace", *base, "--no-cache", "--dtype", "int8", "--out", tmp_path / "x", code=2)
    assert "int8" in bad
    gpu = invoke(
        "trace", *base, "--no-cache", "--device", "cuda:7", "--out", tmp_path / "y", code=2
    )
    assert "cuda:7" in gpu


def _with_uncertain(data, tmp_path):
    """A copy of the export whose label rows say -1.0 (uncertain) for every condition
    that was 1.0."""
    import shutil

    copy = tmp_path / "uncertain"
    shutil.copytree(data, copy)
    table = copy / "mimic-cxr-2.0.0-chexpert.csv.gz"
    with gzip.open(table, "rt", newline="") as f:
        rows = list(csv.reader(f))
    for row in rows[1:]:
        row[:] = ["-1.0" if v == "1.0" else v for v in row]
    with gzip.open(table, "wt", newline="") as f:
        csv.writer(f).writerows(rows)
    return copy


def test_every_eval_option_changes_the_report(setup, tmp_path):
    _, data, models = setup
    base = ["--model", models["phantom"], "--cache-dir", tmp_path / "cache"]

    def evaluate(name, *extra, source=data):
        invoke("eval", *base, "--data", source, *extra, "--out", tmp_path / name)
        return json.loads((tmp_path / name / "eval.json").read_text())

    first = evaluate("base", "--no-report-facts")
    assert first["split"] == "test" and "probes" not in first and first["adapter"] is None
    assert "retention" not in first  # no adapter: nothing to drift from
    assert evaluate("val", "--no-report-facts", "--split", "val")["split"] == "val"
    assert evaluate("probes", "--no-report-facts", "--probes")["probes"]
    reseeded = evaluate("seed", "--no-report-facts", "--seed", 5)
    assert reseeded["items"]["claims"]["id"] == first["items"]["claims"]["id"]
    assert reseeded["items"] != first["items"]
    # report facts give the findings their sides: contralateral negation becomes measurable
    facts = evaluate("facts", "--report-facts")
    assert (
        "contralateral" in first["not_available"] and "contralateral" not in facts["not_available"]
    )
    # --uncertain: uncertain labels skipped vs read as present change the findings
    copy = _with_uncertain(data, tmp_path)
    skip = evaluate("skip", "--no-report-facts", source=copy)
    present = evaluate("present", "--no-report-facts", "--uncertain", "present", source=copy)
    # skipped: the uncertain conditions are unstated, so fewer claim sets; present: as labelled
    assert len(skip["items"]["claims"]["id"]) < len(present["items"]["claims"]["id"])
    assert present["items"]["claims"]["id"] == first["items"]["claims"]["id"]
    assert present["data"]["read"]["uncertain_policy"] == "present"
    # --model and --recipe: the recipe's model is evaluated unless --model is given
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {models['clip']}\ndata_seed: 5\n")
    invoke(
        "eval",
        "--recipe",
        recipe,
        "--data",
        data,
        "--no-report-facts",
        "--cache-dir",
        tmp_path / "cache",
        "--out",
        tmp_path / "recipe",
    )
    from_recipe = json.loads((tmp_path / "recipe" / "eval.json").read_text())
    assert from_recipe["model"] == models["clip"]


def test_train_options(setup, tmp_path):
    _, data, models = setup
    base = ["--model", models["clip"], *common(data, tmp_path / "cache")]

    def history(folder):
        return json.loads((folder / "train.json").read_text())

    invoke("train", *base, "--method", "uniform-lora", "--steps", 2, "--out", tmp_path / "u")
    first = history(tmp_path / "u")
    assert first["method"] == "uniform-lora" and first["step"] == 2
    invoke(
        "train",
        *base,
        "--method",
        "uniform-lora",
        "--steps",
        2,
        "--seed",
        4,
        "--out",
        tmp_path / "s",
    )
    assert history(tmp_path / "s")["history"] != first["history"]
    # a folder with checkpoints is refused without --resume, continued with it
    out = invoke(
        "train", *base, "--method", "uniform-lora", "--steps", 3, "--out", tmp_path / "u", code=2
    )
    assert "--resume" in out
    invoke(
        "train",
        *base,
        "--method",
        "uniform-lora",
        "--steps",
        3,
        "--resume",
        "--out",
        tmp_path / "u",
    )
    resumed = history(tmp_path / "u")
    assert resumed["step"] == 3 and resumed["history"][:2] == first["history"]
    # nast needs --alpha; negclip saves text-block weights, not an adapter
    assert "--alpha" in invoke("train", *base, "--method", "nast", "--out", tmp_path / "n", code=2)
    invoke("train", *base, "--method", "negclip", "--steps", 1, "--out", tmp_path / "c")
    assert (tmp_path / "c" / "weights.safetensors").is_file()
    assert not (tmp_path / "c" / "adapter").exists()
    bogus = invoke("train", *base, "--method", "bogus", "--out", tmp_path / "x", code=2)
    assert "--method must be one of" in bogus and "'bogus'" in bogus
    # --recipe: its loop settings are the run's
    recipe = tmp_path / "r.yaml"
    recipe.write_text("loop: {steps: 1, caption_batch: 4, claim_batch: 4, lr: 0.01}\n")
    invoke("train", *base, "--recipe", recipe, "--method", "uniform-lora", "--out", tmp_path / "r")
    run = history(tmp_path / "r")
    assert run["step"] == 1 and run["config"]["lr"] == 0.01


def test_train_controls_read_the_recipes_alpha_and_permutation(setup, tmp_path):
    """--alpha is the recipe's alpha_norm of its alpha_source profile; random-alpha
    trains permutation --permutation of it (the study's seed<k>-p<j>), effective-lr the
    mean of lr * alpha ** beta over the blocks."""
    from mechtune.interp.alpha import alpha_from_trace
    from mechtune.interp.result import TraceResult
    from mechtune.pipelines.negation_controls import alpha_permutations
    from mechtune.train.scaling import effective_lr

    _, data, _ = setup
    clip4 = f"hf:{tiny_clip(tmp_path / 'clip4', text_layers=4)}"
    base = ["--model", clip4, *common(data, tmp_path / "cache")]
    trace = tmp_path / "trace"
    invoke("trace", *base, "--max-pairs", 12, "--out", trace)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("alpha_norm: rank\nloop: {steps: 1, caption_batch: 4, claim_batch: 4}\n")
    alpha = alpha_from_trace(TraceResult.load(trace), "mean", "rank")

    def train(method, out, *extra, code=0):
        args = ["train", *base, "--recipe", recipe, "--method", method, "--alpha", trace]
        return invoke(*args, *extra, "--out", tmp_path / out, code=code)

    def run_alpha(out):
        return json.loads((tmp_path / out / "run.json").read_text())["alpha"]

    def rounded(values):
        return [round(float(v), 6) for v in values]

    train("nast", "nast")
    assert run_alpha("nast") == rounded(alpha)  # rank-normalised, as the recipe says
    train("random-alpha", "p0")
    train("random-alpha", "p1", "--permutation", 1)
    permutations = alpha_permutations(alpha, 2, seed=0)  # the recipe's data_seed
    assert run_alpha("p0") == rounded(permutations[0]) != run_alpha("p1")
    assert run_alpha("p1") == rounded(permutations[1])
    train("effective-lr", "e")
    config = json.loads((tmp_path / "e" / "train.json").read_text())["config"]
    assert config["lr"] == pytest.approx(effective_lr(alpha, 1.0, 1e-4)) and config["beta"] == 0
    refused = train("nast", "x", "--permutation", 1, code=2)
    assert "--permutation is read by --method random-alpha only" in refused
    no_alpha = ["train", *base, "--method", "effective-lr", "--out", tmp_path / "y"]
    assert "--method effective-lr needs --alpha" in invoke(*no_alpha, code=2)


def test_study_with_a_grid_recipe_runs_every_cell_into_one_table(setup, tmp_path):
    _, data, models = setup
    recipe = tmp_path / "grid.yaml"
    recipe.write_text(
        "methods: [uniform-lora, nast]\ntrace_max_pairs: 10\neval_split: val\n"
        "grid: {loop.beta: [0, 1]}\n"
        "loop: {steps: 1, caption_batch: 4, claim_batch: 4, checkpoint_every: 1}\n"
    )
    opts = ["--model", models["clip"], *common(data, tmp_path / "cache")]
    dry = invoke("study", *opts, "--recipe", recipe, "--dry-run")
    assert "grid: 2 cells crossing loop.beta" in dry
    out = invoke("study", *opts, "--recipe", recipe, "--out", tmp_path / "grid")
    assert "Grid of 2 cells" in out and "Δ claim acc" in out
    record = json.loads((tmp_path / "grid" / "grid.json").read_text())
    assert [c["name"] for c in record["cells"]] == ["loop.beta=0", "loop.beta=1"]
    for cell in record["cells"]:
        folder = tmp_path / "grid" / cell["folder"]
        assert (folder / "figures" / "cte_heatmap.png").is_file()
        assert set(json.loads((folder / "results.json").read_text())["runs"]) == {
            "uniform-lora",
            "nast",
        }
    page = (tmp_path / "grid" / "report.html").read_text()
    assert "Negation study, grid cell loop.beta=0" in page
    assert "Negation study, grid cell loop.beta=1" in page


def test_study_dry_run_checks_the_mimic_recipe_without_loading(setup, tmp_path):
    _, data, _ = setup
    out = invoke(
        "study",
        "--recipe",
        "recipes/nast-biomedclip-mimic.yaml",
        "--data",
        data,
        "--dry-run",
        "--out",
        tmp_path / "never",
    )
    assert "mimic-cxr-jpg source" in out and "mechtune[openclip]" in out
    assert "scaling 'lr', beta 2.0, optimizer 'adamw'" in out  # the recipe's loop
    assert "lacks 2 thing(s) the run needs" in out  # open_clip, and the hub offline
    assert not (tmp_path / "never").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [nast]\nloop: {scalling: lr}\n")
    assert "loop.scalling" in invoke("study", "--recipe", bad, "--data", data, "--dry-run", code=2)
    assert "unknown data layout" in invoke("study", "--data", tmp_path, "--dry-run", code=2)
    assert "bad model spec" in invoke(
        "study", "--model", "nope:x", "--data", data, "--dry-run", code=2
    )


COMMON = {
    "--model": "test_trace_train_eval_study_end_to_end",
    "--data": "test_trace_train_eval_study_end_to_end",
    "--recipe": "test_every_trace_option_changes_the_output",
    "--out": "test_every_trace_option_changes_the_output",
    "--device": "test_device_dtype_and_cache_options",
    "--dtype": "test_device_dtype_and_cache_options",
    "--cache-dir": "test_device_dtype_and_cache_options",
    "--no-cache": "test_device_dtype_and_cache_options",
    "--uncertain": "test_every_eval_option_changes_the_report",
    "--report-facts": "test_every_eval_option_changes_the_report",
}
OPTION_TESTS = {
    "mechtune negation trace": {
        **COMMON,
        "--pairs": "test_every_trace_option_changes_the_output",
        "--split": "test_every_trace_option_changes_the_output",
        "--per-study": "test_every_trace_option_changes_the_output",
        "--max-pairs": "test_every_trace_option_changes_the_output",
        "--seed": "test_every_trace_option_changes_the_output",
        "--min-gap-share": "test_every_trace_option_changes_the_output",
    },
    "mechtune negation train": {
        **COMMON,
        "--recipe": "test_train_options",
        "--out": "test_train_options",
        "--method": "test_train_options",
        "--alpha": "test_trace_train_eval_study_end_to_end",
        "--steps": "test_train_options",
        "--seed": "test_train_options",
        "--resume": "test_train_options",
        "--permutation": "test_train_controls_read_the_recipes_alpha_and_permutation",
    },
    "mechtune negation eval": {
        **COMMON,
        "--recipe": "test_every_eval_option_changes_the_report",
        "--out": "test_every_eval_option_changes_the_report",
        "--adapter": "test_trace_train_eval_study_end_to_end",
        "--split": "test_every_eval_option_changes_the_report",
        "--probes": "test_every_eval_option_changes_the_report",
        "--seed": "test_every_eval_option_changes_the_report",
    },
    "mechtune negation study": {
        **COMMON,
        "--recipe": "test_trace_train_eval_study_end_to_end",
        "--out": "test_trace_train_eval_study_end_to_end",
        "--dry-run": "test_study_dry_run_checks_the_mimic_recipe_without_loading",
    },
}


def test_adapters_are_checked_against_the_model_dtype_and_split(setup, tmp_path):
    """What a review found: an adapter is refused for another model before anything
    loads, accepted at another dtype within bf16 rounding; user pairs may not come from
    another split; a resumed run must keep its method and alpha and cannot go backwards;
    cheap checks fail before the data is read; error text is printed as written."""
    _, data, models = setup
    base = ["--model", models["clip"], *common(data, tmp_path / "cache")]
    invoke("trace", *base, "--max-pairs", 10, "--out", tmp_path / "trace")
    run = tmp_path / "run"
    train_nast(base, tmp_path / "trace", run)
    identity = json.loads((run / "run.json").read_text())
    assert identity["method"] == "nast" and identity["model"] == models["clip"]

    other = ["--model", models["siglip"], *common(data, tmp_path / "cache")]
    refused = invoke("eval", *other, "--adapter", run, "--out", tmp_path / "e1", code=2)
    assert f"trained on --model {models['clip']}" in refused
    invoke("eval", *base, "--adapter", run, "--dtype", "bfloat16", "--out", tmp_path / "e2")
    check = json.loads((tmp_path / "e2" / "eval.json").read_text())["adapter_check"]
    assert check["trained_dtype"] == "float32" and check["dtype"] == "bfloat16"
    assert 0 < check["max_abs_diff"] <= check["tolerance"] == 2e-2

    # a resumed run keeps its method and alpha, and never goes back in steps
    out = invoke(
        "train", *base, "--method", "uniform-lora", "--steps", 3, "--resume", "--out", run, code=2
    )
    assert "method 'nast' -> 'uniform-lora'" in out
    assert "beyond the 1 steps" in invoke(
        "train",
        *base,
        "--method",
        "nast",
        "--alpha",
        tmp_path / "trace",
        "--steps",
        1,
        "--resume",
        "--out",
        run,
        code=2,
    )
    # another alpha: the same trace, rank-normalised (min-max has a 0, rank's least value
    # is 1/L, so the two always differ; a second trace of a tiny model can round to the
    # same min-max alpha)
    rank = tmp_path / "rank.yaml"
    rank.write_text("alpha_norm: rank\n")
    moved = invoke(
        "train",
        *base,
        "--recipe",
        rank,
        "--method",
        "nast",
        "--alpha",
        tmp_path / "trace",
        "--steps",
        3,
        "--resume",
        "--out",
        run,
        code=2,
    )
    assert "alpha" in moved and "other settings" in moved

    # user pairs from test patients are refused for the default --split train
    meta = json.loads((tmp_path / "trace" / "trace.json").read_text())
    from mechtune.data.sources import open_source

    source = open_source(data)
    test_id = next(s.study_id for s in source if source.split_of(s) == "test")
    pairs = tmp_path / "pairs.jsonl"
    pair = meta["pairs"][0]
    pairs.write_text(
        json.dumps({"correct": pair["correct"], "foil": pair["foil"], "image": test_id}) + "\n"
    )
    out = invoke("trace", *base, "--pairs", pairs, "--out", tmp_path / "t3", code=2)
    assert "line 1" in out and "test-split study" in out and "--split train" in out
    invoke("trace", *base, "--pairs", pairs, "--split", "test", "--out", tmp_path / "t4")

    # cheap checks fail before the data is read (the data folder does not even exist)
    nowhere = ["--data", tmp_path / "nowhere", "--no-cache"]
    assert "bad model spec" in invoke("eval", "--model", "nope:x", *nowhere, code=2)
    assert "cuda:3" in invoke(
        "eval", "--model", models["clip"], "--device", "cuda:3", *nowhere, code=2
    )
    assert "--split must be one of" in invoke("trace", "--split", "foo", *nowhere, code=2)
    # messages are text, not markup: the extra's name survives
    missing = invoke(
        "eval",
        "--model",
        "openclip:hf-hub:x/y",
        *common(data, tmp_path / "c"),
        "--out",
        tmp_path / "e3",
        code=2,
    )
    assert "mechtune[openclip]" in missing


def test_eval_report_names_patients_seed_and_version(setup, tmp_path):
    import mechtune

    _, data, models = setup
    out = invoke(
        "eval",
        "--model",
        models["phantom"],
        *common(data, tmp_path / "cache"),
        "--out",
        tmp_path / "e",
    )
    report = json.loads((tmp_path / "e" / "eval.json").read_text())
    patients = len(set(report["items"]["retrieval"]["patient"]))
    assert f"{report['studies']} studies of {patients} patients" in out
    assert report["seed"] == 0 and report["mechtune"] == mechtune.__version__
    assert "needs --adapter" in report["not_available"]["retention"]


def test_the_default_cache_follows_mechtune_cache(monkeypatch, tmp_path):
    from pathlib import Path

    from mechtune.cli.negation import default_cache_dir

    monkeypatch.setenv("MECHTUNE_CACHE", str(tmp_path))
    assert default_cache_dir() == tmp_path / "image-embeddings"
    monkeypatch.delenv("MECHTUNE_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "mechtune" / "image-embeddings"
