"""`mechtune sae train|analyze` on the tiny random Gemma 3 (question files with image paths)
and on the phantom VQA model (the world's own questions)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from mechtune.cli.main import app
from mechtune.interp.sae import load_sae
from tests.tiny_gemma import TEXT_LAYERS, tiny_gemma

runner = CliRunner()

RECORDS = [
    ("Is there edema?", ["Any edema?", "Is edema present?"], "yes", "a.png"),
    ("Is there an effusion?", ["Any effusion?", "Is an effusion seen?"], "no", "b.png"),
    ("Is the heart enlarged?", ["Is there cardiomegaly?"], "yes", "c.png"),
    ("Is there a pneumothorax?", ["Any pneumothorax?", "Is a pneumothorax seen?"], "no", "a.png"),
]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))


@pytest.fixture
def questions(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("a.png", "b.png", "c.png"):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / name)
    path = tmp_path / "questions.jsonl"
    lines = [
        json.dumps({"question": q, "paraphrases": p, "answer": a, "image": img})
        for q, p, a, img in RECORDS
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


def _train(gemma_dir, questions, out, *extra):
    args = ["sae", "train", "--model", f"hf:{gemma_dir}", "--questions", str(questions)]
    args += ["--out", str(out), "--width", "16", "--k", "4", "--steps", "5", *extra]
    return runner.invoke(app, args)


def test_sae_train_on_gemma_writes_saelens_saes_and_stats(gemma_dir, questions, tmp_path):
    out = tmp_path / "saes"
    result = _train(gemma_dir, questions, out, "--layers", "0,2")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert set(report["layers"]) == {"0", "2"}
    # readout = the answer position: one token per distinct (image, text) pair
    assert all(r["tokens"] == 4 + 7 for r in report["layers"].values())
    assert all(np.isfinite(r["r2"]) and r["l0"] <= 4 for r in report["layers"].values())
    assert report["images"]["distinct"] == 3
    sae = load_sae(out / "layer_2")
    hidden = json.loads((gemma_dir / "config.json").read_text())["text_config"]["hidden_size"]
    assert (sae.config.layer, sae.config.d_in, sae.config.d_sae) == (2, hidden, 16)
    assert sorted(p.name for p in out.iterdir()) == ["layer_0", "layer_2", "report.json"]


def test_sae_analyze_on_gemma_reports_auc_per_layer_and_a_range(gemma_dir, questions, tmp_path):
    saes = tmp_path / "saes"
    assert _train(gemma_dir, questions, saes).exit_code == 0
    out = tmp_path / "analysis"
    args = ["sae", "analyze", "--model", f"hf:{gemma_dir}", "--questions", str(questions)]
    result = runner.invoke(app, [*args, "--saes", str(saes), "--out", str(out)])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "analysis.json").read_text())
    analysis = data["analysis"]
    assert analysis["layers"] == list(range(TEXT_LAYERS))
    assert analysis["pairs"] == sum(len(p) for _, p, _, _ in RECORDS)
    assert len(analysis["chosen_layers"]) == 3  # peak +- 1 in a 3-layer model
    assert data["baseline"]["groups"] == len(RECORDS)
    assert (out / "auc_by_layer.png").stat().st_size > 0


def test_sae_train_names_the_question_and_the_missing_image(gemma_dir, questions, tmp_path):
    (questions.parent / "b.png").unlink()
    result = _train(gemma_dir, questions, tmp_path / "saes")
    assert result.exit_code == 2
    output = " ".join(result.output.split())
    assert (
        "questions.jsonl" in output and "'q2'" in output
    )  # q<n>: the n-th record and "b.png" in output
    assert not (tmp_path / "saes").exists()


def test_sae_train_rejects_a_bad_model_spec_and_bad_layers(gemma_dir, questions, tmp_path):
    result = _train("nowhere", questions, tmp_path / "saes")
    assert result.exit_code == 2 and "not a folder" in " ".join(result.output.split())
    result = _train(gemma_dir, questions, tmp_path / "saes", "--layers", "0,7")
    assert result.exit_code == 2 and "layers 0..2" in " ".join(result.output.split())
    args = ["sae", "train", "--model", "clip:x", "--out", str(tmp_path / "s")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and "unknown model spec" in result.output


def test_sae_train_and_analyze_on_the_phantom_vqa(tmp_path):
    torch.manual_seed(0)
    saes, out = tmp_path / "saes", tmp_path / "analysis"
    world = ["--n", "60", "--seed", "1"]
    result = runner.invoke(
        app,
        ["sae", "train", "--out", str(saes), "--layers", "4,5", "--steps", "5", *world],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((saes / "report.json").read_text())
    assert report["model"] == "phantom:vqa" and report["corpus_texts"] > 0
    args = ["sae", "analyze", "--saes", str(saes), "--out", str(out), "--max-questions", "40"]
    result = runner.invoke(app, [*args, *world])
    assert result.exit_code == 0, result.output
    analysis = json.loads((out / "analysis.json").read_text())["analysis"]
    assert analysis["layers"] == [4, 5] and analysis["peak_layer"] in (4, 5)
    assert analysis["chosen_layers"] == [3, 4, 5]  # peak +- 1, shifted inside 0..5
