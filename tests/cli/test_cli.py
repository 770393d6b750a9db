import json

import pytest
from typer.testing import CliRunner

import mechtune
from mechtune.cli.main import app
from mechtune.data.io import read_table

runner = CliRunner()

COMMANDS = [
    [],
    ["demo"],
    ["data"],
    ["data", "build"],
    ["data", "build", "polarity"],
    ["data", "build", "contextual"],
    ["data", "build", "paraphrase"],
    ["data", "check"],
    ["data", "import"],
    ["data", "import", "nast"],
    ["data", "import", "psf"],
    ["sim"],
    ["sim", "render"],
    ["sim", "build"],
    ["sim", "train-clip"],
    ["sim", "export"],
    ["negation"],
    ["negation", "trace"],
    ["negation", "train"],
    ["negation", "eval"],
    ["negation", "study"],
    ["sae"],
    ["sae", "train"],
    ["sae", "analyze"],
]


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a) or "mechtune")
def test_help_on_every_command(args):
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output


def test_build_polarity_synthetic_jsonl(tmp_path):
    out = tmp_path / "pol"
    result = runner.invoke(
        app,
        [
            "data",
            "build",
            "polarity",
            "--n",
            "200",
            "--out",
            str(out),
            "--format",
            "jsonl",
            "--no-check",
        ],
    )
    assert result.exit_code == 0, result.output
    rows = read_table(out / "mcq.jsonl")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["tables"]["mcq"]["rows"] == len(rows) > 0
    assert manifest["source"]["synthetic"]["n_studies"] == 200


def test_build_all_kinds(tmp_path):
    result = runner.invoke(
        app, ["data", "build", "--n", "100", "--out", str(tmp_path), "--no-check"]
    )
    assert result.exit_code == 0, result.output
    for kind in ("polarity", "contextual", "paraphrase"):
        assert (tmp_path / kind / "manifest.json").is_file()


def test_build_all_requires_out():
    result = runner.invoke(app, ["data", "build", "--n", "10"])
    assert result.exit_code != 0
    assert "--out" in result.output


def test_build_from_label_csv(tmp_path):
    csv = tmp_path / "mimic-cxr-2.0.0-chexpert.csv"
    header = (
        "subject_id,study_id,Atelectasis,Cardiomegaly,Consolidation,Edema,"
        "Enlarged Cardiomediastinum,Fracture,Lung Lesion,Lung Opacity,No Finding,"
        "Pleural Effusion,Pleural Other,Pneumonia,Pneumothorax,Support Devices"
    )
    rows = [
        "10,50,1.0,1.0,0.0,0.0,,0.0,,,,-1.0,,,0.0,",
        "10,51,1.0,,0.0,,,,,,,,,,,",
        "11,52,1.0,1.0,0.0,0.0,0.0,,,1.0,,0.0,,,,1.0",
    ]
    csv.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "pol"
    result = runner.invoke(
        app, ["data", "build", "polarity", "--labels", str(csv), "--out", str(out), "--no-check"]
    )
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["studies"] == 3
    assert manifest["counts"]["filtered_out_by_row_filter"] == 1
    assert manifest["source"]["labels"]["uncertain_labels"] == 1


def test_bad_csv_names_file_line_and_value(tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_text("subject_id,study_id,Edema\n1,2,1.0\n1,3,2.0\n")
    result = runner.invoke(
        app,
        [
            "data",
            "build",
            "polarity",
            "--labels",
            str(csv),
            "--out",
            str(tmp_path / "o"),
            "--no-check",
        ],
    )
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "labels.csv" in text and "line 3" in text and "2.0" in text
    skipped = runner.invoke(
        app,
        [
            "data",
            "build",
            "polarity",
            "--labels",
            str(csv),
            "--out",
            str(tmp_path / "o"),
            "--no-check",
            "--skip-bad",
        ],
    )
    assert skipped.exit_code == 0, skipped.output
    assert "skipped 1" in " ".join(skipped.output.split())


def test_demo_quick(tmp_path):
    result = runner.invoke(app, ["demo", "--quick", "--no-check", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data" / "contextual" / "claims.parquet").is_file()
    assert "Example claim sets" in result.output
    assert "phantom:default: test split" in " ".join(result.output.split())
    report = json.loads((tmp_path / "zero-shot" / "eval.json").read_text())
    assert 0 <= report["claims"]["heldout"]["claim_accuracy"]["value"] <= 1
    assert report["data"]["layout"] == "mimic-cxr-jpg"  # read from the export's files
    pngs = (
        "phantom_contact_sheet.png",
        "zero_shot_blind_spot.png",
        "flip_auc_by_layer.png",
        "flip_rate.png",
    )
    for png in pngs:
        assert (tmp_path / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    for png in ("cte_heatmap.png", "alpha.png", "update_share.png"):
        assert (tmp_path / "negation" / "figures" / png).read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "world" / "images.npy").is_file()
    assert "Paraphrase consistency on held-out paraphrase families" in result.output
    paraphrase = json.loads((tmp_path / "paraphrase" / "results.json").read_text())
    assert set(paraphrase["runs"]) == {"sae"}
    assert 0 <= paraphrase["baseline"]["heldout"]["flip_rate"]["value"] <= 1
    # paired comparisons on the same test items, recomputable from the saved items
    (sae_row,) = [v for k, v in paraphrase["paired"].items() if k.startswith("LoRA sae")]
    groups = paraphrase["baseline"]["heldout"]["groups"]
    assert sae_row["baseline"]["n_items"] == groups and sae_row["all"] is None
    negation = json.loads((tmp_path / "negation" / "results.json").read_text())
    nast = negation["runs"]["nast"][0]["items"]["claims"]
    assert len(nast["id"]) == len(nast["patient"]) == len(nast["correct"]) > 0
    assert negation["paired"]["nast"]["claim acc"]["mcnemar_p"] is not None  # one seed each
    # the random-alpha control, one permutation: its run, row and NAST minus it
    (control,) = negation["runs"]["random-alpha"]
    assert (control["seed"], control["permutation"]) == (0, 0)
    assert len(negation["controls"]["random-alpha"]["alpha"]) == 1
    assert negation["paired_controls"]["random-alpha"]["claim acc"] is not None
    table = (tmp_path / "negation" / "table.md").read_text()
    assert "Δ vs uniform LoRA [95% interval]" in table and "| random-alpha | 1 × 1 α |" in table
    assert "| nast − random-alpha | 1 vs 1 |" in table
    assert (tmp_path / "paraphrase" / "saes" / "layer_0" / "cfg.json").is_file()


def test_sim_render_build_and_train(tmp_path):
    png = tmp_path / "grid.png"
    result = runner.invoke(app, ["sim", "render", "--n", "8", "--out", str(png)])
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:4] == b"\x89PNG"
    result = runner.invoke(app, ["sim", "build", "--n", "40", "--out", str(tmp_path / "w")])
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "w" / "manifest.json").read_text())
    assert manifest["counts"]["image_shape"] == [40, 128, 128]
    result = runner.invoke(
        app, ["sim", "train-clip", "--steps", "2", "--n", "120", "--out", str(tmp_path / "ckpt")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "ckpt" / "model.safetensors").is_file()
    assert "largest |difference| from the shipped checkpoint" in result.output
    result = runner.invoke(
        app, ["sim", "train-vqa", "--steps", "2", "--n", "120", "--out", str(tmp_path / "vqa")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "vqa" / "model.safetensors").is_file()
    assert "val balanced accuracy" in result.output


@pytest.mark.parametrize(
    "kind,name,table",
    [("nast", "nast_benchmark.json", "mcq"), ("psf", "psf_records.jsonl", "paraphrases")],
)
def test_import_external_files(tmp_path, kind, name, table):
    from pathlib import Path

    fixture = Path(__file__).resolve().parents[1] / "data" / "fixtures" / "importers" / name
    args = ["data", "import", kind, str(fixture), "--out", str(tmp_path)]
    if kind == "nast":
        args.append("--no-check")
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    rows = read_table(tmp_path / f"{table}.parquet")
    assert manifest["counts"]["tables"][table]["rows"] == len(rows) > 0
    assert manifest["source"]["import"]["rows_kept"] == len(rows)
    bad = runner.invoke(
        app, ["data", "import", kind, str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")]
    )
    assert bad.exit_code == 2 and "missing.json" in " ".join(bad.output.split())


def test_demo_options_reach_every_stage(tmp_path, monkeypatch):
    """--n, --seed, --quick and --check reach the world and its MIMIC export, the data
    build (which reads the export), the zero-shot evaluation and both studies (once,
    --seed and --n stopped at the data build)."""
    from mechtune.cli import main as cli_main

    seen = {}

    def record(name, value=None):
        def fake(*args, **kwargs):
            seen[name] = (args, kwargs)
            if name == "paraphrase":
                raise SystemExit(0)
            return value

        return fake

    world, source = object(), object()
    monkeypatch.setattr(cli_main, "_world", record("world", world))
    monkeypatch.setattr(cli_main, "data_source", record("source", source))
    monkeypatch.setattr(cli_main.data_cli, "build_kinds", record("build"))
    monkeypatch.setattr(cli_main, "_examples", lambda out: "")
    monkeypatch.setattr(cli_main, "_zero_shot", record("zero_shot", {}))
    monkeypatch.setattr(cli_main.negation_cli, "run_study", record("negation"))
    monkeypatch.setattr(cli_main, "_paraphrase_study", record("paraphrase"))
    args = ["demo", "--n", "800", "--seed", "3", "--no-check", "--out", str(tmp_path)]
    runner.invoke(app, args, catch_exceptions=False)
    assert seen["world"][0] == (tmp_path, 800, 3)
    assert seen["source"][0][0] == tmp_path / cli_main.MIMIC_DIR
    build_args = seen["build"][0]
    assert build_args[1] == tmp_path / "data"  # --out
    assert build_args[2] is source
    assert build_args[3] == 3 and build_args[5] is False  # seed, --no-check
    assert seen["zero_shot"][0][1] is source and seen["zero_shot"][0][4] is False  # quick
    # the negation study: `negation study --model phantom:default --data OUT/mimic-cxr-jpg`
    negation, study_source, study_out = seen["negation"][0][:3]
    assert study_source is source and study_out == tmp_path / "negation"
    assert negation.model == "phantom:default"
    assert negation.data == str(tmp_path / cli_main.MIMIC_DIR)
    assert (negation.data_seed, negation.seeds) == (3, (3,))
    paraphrase = seen["paraphrase"][0][1]
    assert (paraphrase.max_questions, paraphrase.seed, paraphrase.seeds) == (266, 3, (3,))


def test_the_demos_paraphrase_part_is_paraphrase_study_on_the_exports_questions(
    tmp_path, monkeypatch
):
    """`_paraphrase_study` runs what `mechtune paraphrase study --questions
    OUT/mimic-cxr-jpg/questions.jsonl --data OUT/mimic-cxr-jpg` runs, with the plan's
    config, then copies the study's figures next to the demo's others."""
    from mechtune.cli import main as cli_main

    seen = {}

    def fake(config, questions, data, out, **kwargs):
        seen.update(config=config, questions=questions, data=data, out=out, **kwargs)
        (out / "figures").mkdir(parents=True)
        for name in ("flip_auc_by_layer.png", "flip_rate.png"):
            (out / "figures" / name).write_bytes(name.encode())
        (out / "table.md").write_text("| condition |\n")
        return {}

    monkeypatch.setattr(cli_main.paraphrase_cli, "run_study", fake)
    (tmp_path / "figures").mkdir()
    config = cli_main.demo_plan(900, 1, False, tmp_path).paraphrase
    cli_main._paraphrase_study(tmp_path, config)
    export = tmp_path / cli_main.MIMIC_DIR
    assert seen == {
        "config": config,
        "questions": export / "questions.jsonl",
        "data": export,
        "out": tmp_path / "paraphrase",
        "tracker": None,
    }
    assert (tmp_path / "figures" / "flip_rate.png").read_bytes() == b"flip_rate.png"


def test_demo_plan_quick_is_smaller_and_keeps_equal_budgets():
    from mechtune.cli.main import demo_plan

    full, quick = demo_plan(2000, 0, False), demo_plan(2000, 0, True)
    assert (full.n, quick.n) == (2000, 600)
    assert quick.negation.loop.steps < full.negation.loop.steps
    assert quick.paraphrase.lora.steps < full.paraphrase.lora.steps
    assert quick.paraphrase.ranges == ("sae",) and len(full.paraphrase.ranges) == 4
    # every method / layer range gets the same budget: one loop and one LoRA config each
    assert full.negation.loop.steps == 80 and full.paraphrase.lora.steps == 80
    # both run the random-alpha control beside NAST, with one permutation of alpha
    for plan in (full, quick):
        assert plan.negation.methods == ("zero-shot", "uniform-lora", "nast", "random-alpha")
        assert plan.negation.random_alpha_permutations == 1


OPTION_TESTS = {
    "mechtune demo": {
        "--out": "test_demo_options_reach_every_stage",
        "--n": "test_demo_options_reach_every_stage",
        "--seed": "test_demo_options_reach_every_stage",
        "--check": "test_demo_options_reach_every_stage",
        "--quick": "test_demo_plan_quick_is_smaller_and_keeps_equal_budgets",
    }
}


def test_root_version_option():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"mechtune {mechtune.__version__}"


OPTION_TESTS["mechtune"] = {"--version": "test_root_version_option"}
