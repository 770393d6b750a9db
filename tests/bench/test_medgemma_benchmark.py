"""benchmarks/medgemma.py runs end to end at tiny scale on the CPU: the record's fields,
the LoRA runs with and without gradient checkpointing agreeing, and each option changing
what is measured."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--scale", "tiny", "--device", "cpu"]


@pytest.fixture(scope="module")
def medgemma() -> ModuleType:
    spec = importlib.util.spec_from_file_location("medgemma", ROOT / "benchmarks" / "medgemma.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _lora_parameters(rank: int, layers: int) -> int:
    """LoRA on q/k/v/o/gate/up/down of the toy shape (hidden 32, 2 x 16 query, 1 x 16 kv,
    MLP 64): r * (in + out) per module."""
    d, q, kv, mlp = 32, 32, 16, 64
    widths = [(d, q), (d, kv), (d, kv), (q, d), (d, mlp), (d, mlp), (mlp, d)]
    return layers * rank * sum(a + b for a, b in widths)


@pytest.fixture(scope="module")
def record(medgemma, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("medgemma") / "medgemma.json"
    returned = medgemma.main([*COMMON, "--out", str(out)])
    written = json.loads(out.read_text(encoding="utf-8"))
    assert written == json.loads(json.dumps(returned))
    return written


def test_tiny_record_has_every_part(record) -> None:
    assert record["benchmark"] == "medgemma" and record["scale"] == "tiny"
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["parameters"]["readme_medgemma_4b"] == 4_300_079_472
    assert record["vocab_rows"] == record["tokenizer_size"] == 448
    margins = record["margins"]
    assert margins["batch"] == 8 and margins["batches"] == 1
    assert margins["lm_head_positions"] == 1 and margins["margins_finite"]
    assert margins["questions_per_s"] == pytest.approx(8 / margins["seconds_per_batch"])
    assert margins["prompt_tokens"] > 4  # 4 image tokens plus the question
    capture = record["capture"]
    assert capture["layers"] == [1, 2, 3, 4, 5]  # 15-19 of 34, shifted inward on 6 blocks
    assert capture["texts"] == capture["readout_tokens_per_layer"] == 8  # one per question
    assert capture["d_in"] == 32
    assert capture["rows_written_per_s"] == pytest.approx(5 * capture["readout_tokens_per_s"])
    assert capture["prompt_tokens_per_s"] > capture["readout_tokens_per_s"] > 0
    lora = record["lora"]
    plain, ckpt = lora["without_checkpointing"], lora["with_checkpointing"]
    assert lora["layers"] == [1, 2, 3, 4, 5]
    assert plain["gradient_checkpointing"] is False and ckpt["gradient_checkpointing"] is True
    for run in (plain, ckpt):
        # the recipe's r 16 on the 7 modules of 5 blocks, batch 1; tiny accumulates 2
        assert run["trainable_parameters"] == _lora_parameters(16, 5) == 40_960
        assert (run["batch_size"], run["grad_accum"], run["questions_per_step"]) == (1, 2, 2)
        assert run["steps"] == run["steps_run"] == 1 and run["seconds_per_step"] > 0
    assert ckpt["final_loss"] == pytest.approx(plain["final_loss"], rel=1e-5)
    goals = record["goals"]
    assert set(goals) == {"lora_peak_memory_gib", "lora_peak_memory_gib_checkpointing"}
    assert goals["lora_peak_memory_gib"]["target"] == pytest.approx(
        24e9 / 2**30
    )  # a 24 GB card, in GiB
    assert goals["lora_peak_memory_gib"]["value"] == plain["peak_memory_gib"]
    assert goals["lora_peak_memory_gib"]["met"] is (plain["peak_memory_gib"] <= 24e9 / 2**30)


def test_options_change_what_is_measured(medgemma, tmp_path, record) -> None:
    """Every option against the default run: the batch, the timed and warm-up counts, the
    accumulation, the captured questions and the recipe (rank 4, half width 1)."""
    recipe = tmp_path / "recipe.yaml"
    text = (ROOT / "recipes" / "consistency-medgemma-mimic.yaml").read_text(encoding="utf-8")
    text = text.replace("half_width: 2 ", "half_width: 1 ").replace("rank: 16", "rank: 4")
    recipe.write_text(text, encoding="utf-8")
    options = ["--batch", "2", "--margin-batches", "2", "--lora-steps", "2"]
    options += ["--warmup-steps", "1", "--grad-accum", "1", "--capture-texts", "3"]
    changed = medgemma.main([*COMMON, *options, "--recipe", str(recipe)])
    assert changed["margins"]["batch"] == changed["capture"]["batch"] == 2
    assert changed["margins"]["batches"] == 2
    assert changed["capture"]["texts"] == changed["capture"]["readout_tokens_per_layer"] == 3
    assert changed["capture"]["layers"] == changed["lora"]["layers"] == [3, 4, 5]
    run = changed["lora"]["with_checkpointing"]
    assert (run["steps"], run["steps_run"], run["grad_accum"]) == (2, 3, 1)
    assert run["trainable_parameters"] == _lora_parameters(4, 3)
    assert changed["recipe"] == str(recipe)
