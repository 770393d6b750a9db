"""Model cards beside every trained result (issue 16): front matter, training table,
research-use line, and metrics equal to the eval report's."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mechtune.errors import ConfigError
from mechtune.models.spec import load_dual_encoder
from mechtune.models.vlm_spec import load_yes_no_vlm
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.lora import LoraSettings
from mechtune.train.methods import NegationData, run_method, run_paraphrase_method
from mechtune.train.model_card import (
    RESEARCH_USE,
    CardFacts,
    base_model_of,
    metric_rows,
    update_card_metrics,
)
from mechtune.train.negation import LoopConfig
from tests.tiny_gemma import tiny_gemma
from tests.tiny_models import tiny_clip
from tests.train.test_consistency_hf import EXAMPLES
from tests.train.test_consistency_hf import _images as gemma_images
from tests.train.test_trainer import CAPTIONS, CLAIMS, _images

ALPHA = [0.2, 1.0, 0.5]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("gemma"))


def _split(card: str) -> tuple[dict, str]:
    match = re.match(r"^---\n(.*?)\n---\n(.*)$", card, re.S)
    assert match, card[:200]
    return yaml.safe_load(match.group(1)), match.group(2)


def _table(body: str, header: str) -> dict[str, str]:
    """The rows of the two-column table whose header row starts with ``| header |``."""
    lines = body.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"| {header} |"))
    rows = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = cells[1] if len(cells) == 2 else cells[1:]
    return rows


def card_metrics(card: Path) -> dict[str, list[str]]:
    """The metrics table of a card: {name: [value, interval]}."""
    _, body = _split(card.read_text())
    return _table(body, "Metric")


def expected_metrics(report: dict) -> dict[str, list[str]]:
    """What the card must show for an eval report: every numeric result, written as
    :func:`metric_rows` formats it, with ``low``/``high`` intervals."""
    return {name: [value, interval] for name, value, interval in metric_rows(report)}


def _negation(clip_dir: Path, out: Path, method: str, lora: LoraSettings | None):
    enc = load_dual_encoder(f"hf:{clip_dir}")
    config = LoopConfig(
        steps=3, caption_batch=4, claim_batch=4, lr=1e-2, checkpoint_every=3, lora=lora
    )
    run_method(
        method,
        enc,
        _images(),
        NegationData(CAPTIONS, CLAIMS),
        ALPHA,
        config,
        out,
        base_model=str(clip_dir),
    )
    return json.loads((out / "train.json").read_text())


def test_lora_card_beside_the_adapter_matches_the_run(clip_dir, tmp_path) -> None:
    """NAST LoRA: the card sits in the run folder and in adapter/ (replacing peft's own),
    its front matter names the base and peft, and the table's rank, alpha, steps,
    trainable count and per-block scales are the run's."""
    info = _negation(clip_dir, tmp_path, "nast", LoraSettings(rank=2, alpha=4, dropout=0.1))
    card = (tmp_path / "README.md").read_text()
    assert (tmp_path / "adapter" / "README.md").read_text() == card
    front, body = _split(card)
    assert front["base_model"] == str(clip_dir)
    assert front["library_name"] == "peft"
    assert front["tags"][:4] == ["mechtune", "nast", "negation", "medical-imaging"]
    rows = _table(body, "Setting")
    assert rows["Rank (r)"] == "2" and rows["Alpha"] == "4" and rows["Dropout"] == "0.1"
    assert rows["Steps"] == "3" == str(info["step"])
    assert rows["Learning rate"] == "0.01"
    assert rows["Effective batch"] == "4 captions + 4 claim sets"
    # the trainable count is LoRA's A and B, as peft saved them; the total adds the base's
    enc = load_dual_encoder(f"hf:{clip_dir}")
    saved = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    trainable = sum(t.numel() for t in saved.values())
    assert rows["Trainable parameters"] == str(trainable) == str(info["card"]["trainable"])
    total = info["card"]["total"]
    assert total == sum(p.numel() for p in enc.model.parameters()) + trainable
    assert rows["Trainable share"] == f"{100 * trainable / total:.4g}% of {total}"
    # NAST's alpha^beta (beta = 1): the per-block scales are shown, one per block
    scales = _table(body, "Block")
    assert len(scales) == len(info["card"]["scales"]) == 2
    assert [float(v) for v in scales.values()] == pytest.approx(info["card"]["scales"])
    assert RESEARCH_USE in card
    assert "PeftModel.from_pretrained" in card
    assert "mechtune negation eval --adapter DIR" in card
    final = info["history"][-1]
    assert _table(body, "Term")["loss"] == f"{final['loss']:.6g}"


def test_full_finetune_card_has_no_peft_library(clip_dir, tmp_path) -> None:
    """NegCLIP fine-tunes the text blocks: no library_name, no peft snippet, and the
    trainable count is the blocks' weights (as saved); uniform scales are not shown."""
    info = _negation(clip_dir, tmp_path, "negclip", None)
    front, body = _split((tmp_path / "README.md").read_text())
    assert "library_name" not in front
    assert front["tags"][:4] == ["mechtune", "negclip", "negation", "medical-imaging"]
    assert not (tmp_path / "adapter").exists()
    saved = load_file(str(tmp_path / "weights.safetensors"))
    rows = _table(body, "Setting")
    assert rows["Trainable parameters"] == str(sum(t.numel() for t in saved.values()))
    assert rows["Fine-tuning"] == "full fine-tuning of the text blocks"
    assert "PeftModel" not in body and "| Block |" not in body
    assert info["card"]["scales"] is None and not info["card"]["peft"]


def test_paraphrase_card_and_eval_metrics(gemma_dir, tmp_path) -> None:
    """consistency-LoRA on the tiny Gemma 3: paraphrase tags, layers and modules, effective
    batch; then an eval report re-renders the metrics section, whose values and intervals
    equal the report's."""
    vlm = load_yes_no_vlm(f"hf:{gemma_dir}")
    lora = LoraSettings(layers=(1,), rank=2, alpha=4, target_modules=("q_proj", "v_proj"))
    config = ConsistencyConfig(lora=lora, steps=2, batch_size=1, grad_accum=2)
    torch.manual_seed(0)
    run_paraphrase_method(
        "consistency-lora",
        vlm,
        gemma_images(),
        EXAMPLES,
        config,
        tmp_path,
        base_model=base_model_of(f"hf:{gemma_dir}"),
    )
    card = (tmp_path / "README.md").read_text()
    front, body = _split(card)
    assert front["base_model"] == str(gemma_dir)
    assert front["library_name"] == "peft"
    assert "paraphrase-consistency" in front["tags"]
    rows = _table(body, "Setting")
    assert rows["Target layers"] == "1" and rows["Target modules"] == "q_proj, v_proj"
    assert rows["Effective batch"] == "2 questions (1 x grad-accum 2)"
    assert rows["Steps"] == "2"
    assert "Not evaluated yet" in body
    report = {
        "split": "test",
        "n": 7,
        "flip_rate": {"value": 0.125, "lo": 0.03, "hi": 0.4},
        "accuracy": {"estimate": 0.75, "ci": [0.5, 0.875]},
        "mean_margin_diff": 1.2345678,
        "adapter": "x",
    }
    source = tmp_path / "eval" / "eval.json"
    written = update_card_metrics(tmp_path / "adapter", report, source)
    assert written == [tmp_path / "README.md", tmp_path / "adapter" / "README.md"]
    _, body = _split((tmp_path / "README.md").read_text())
    metrics = _table(body, "Metric")
    assert metrics == {
        "accuracy": ["0.75", "[0.5, 0.875]"],
        "flip_rate": ["0.125", "[0.03, 0.4]"],
    }  # bare numbers (a count, a number without an interval) are not listed
    assert str(source) in body and "(test split)" in body
    assert "Not evaluated yet" not in body
    # the training table survives the re-render
    assert _table(body, "Setting") == rows


def test_metric_rows_flatten_nested_reports() -> None:
    """Nested dicts give dotted names; an Estimate's dict (value, low, high) is one metric
    with its interval; bare numbers (counts, seeds), lists, booleans, strings and None
    are not metrics."""
    report = {
        "b": {"x": {"value": 1.0, "lo": 0.5, "hi": 2}},
        "a": [1, 2],
        "c": True,
        "e": {"value": 0.25, "low": 0.125, "high": 0.5, "n": 8, "method": "wilson"},
        "d": {"n": 3, "name": "x", "none": None},
    }
    assert metric_rows(report) == [
        ("b.x", "1", "[0.5, 2]"),
        ("e", "0.25", "[0.125, 0.5]"),
    ]


def test_card_facts_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="task"):
        CardFacts(None, "segmentation", 1, 2, True, "X")
    with pytest.raises(ConfigError, match="trainable"):
        CardFacts(None, "negation", 3, 2, True, "X")


def test_update_without_train_json_writes_nothing(tmp_path) -> None:
    assert update_card_metrics(tmp_path, {"n": 1}, tmp_path / "eval.json") == []
    assert not (tmp_path / "README.md").exists()
