"""Benchmark: the MedGemma-4B shape (issue 15, part 3), through mechtune's own code paths.

    python benchmarks/medgemma.py --scale real --device cuda --out medgemma.json
    python benchmarks/medgemma.py --scale tiny --device cpu     # a few seconds

A random-weight ``Gemma3ForConditionalGeneration`` of MedGemma-4B's architecture and size
(:mod:`mechtune.bench.gemma_shape`: real vocabulary, 896 px images, 256 image tokens),
built on the device in ``--dtype`` (bfloat16 on CUDA) behind mechtune's
:class:`~mechtune.models.hf_vqa.HFYesNoVLM`. One JSON record with:

- ``margins``: yes/no margins (``HFYesNoVLM.margin``: chat template with one image item,
  left padding, ``logits_to_keep=1``) at batch ``--batch`` (8), in questions/s, with the
  processor's share of the time (tokenising and resizing the images on the CPU) and the
  number of positions the LM head computed (``lm_head_positions``: 1 proves
  ``logits_to_keep=1`` reaches the model);
- ``lora``: consistency-LoRA optimiser steps through :func:`~mechtune.train.methods.
  paraphrase_trainer` and ``Trainer.fit`` at the recipe's settings (``--recipe``, default
  ``recipes/consistency-medgemma-mimic.yaml``: its ``lora`` section, on the layer window
  the study would choose around the paper's SAE-AUC peak, layer 17 of 34 (PSF-Med, arXiv
  2602.21428), ± the recipe's ``half_width``: blocks 15-19), without and with
  ``gradient_checkpointing``: seconds per optimiser step (``batch_size`` x ``grad_accum``
  questions, each with one paraphrase), peak memory and trainable parameters; goal: peak
  memory <= 24 GB = 22.35 GiB (a 24 GB card);
- ``capture``: :func:`~mechtune.interp.sae_store.write_activation_store` (the SAE path's
  one model pass that writes the residual stream at the readout positions to an on-disk
  store) at the same 5 layers, in readout tokens/s (rows written per layer per second;
  one per question for a decoder, whose readout is the answer position) and prompt
  tokens/s (every position the model ran, image tokens included);
- ``parameters``: counts on the meta device, and the weights' bytes in ``--dtype``.

Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA (each part starts a new
window, weights included); on the CPU it is the process's peak resident set size, for
the whole run.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from mechtune.bench.gemma_shape import (
    MEDGEMMA_4B_PARAMETERS,
    build_medgemma,
    image_size,
    medgemma_processor,
    parameter_count,
    questions,
    random_images,
)
from mechtune.bench.record import (
    add_common_options,
    goal,
    peak_memory_gib,
    reset_peak_memory,
    resolve_options,
    synchronize,
    timed,
    write_record,
)
from mechtune.interp.sae_analysis import layer_window
from mechtune.interp.sae_store import write_activation_store
from mechtune.models.yes_no import edit_block_output
from mechtune.pipelines.paraphrase import load_paraphrase_recipe
from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample
from mechtune.train.lora import gradient_checkpointing_enabled
from mechtune.train.methods import paraphrase_trainer

ROOT = Path(__file__).resolve().parent.parent
RECIPE = ROOT / "recipes" / "consistency-medgemma-mimic.yaml"
PAPER_AUC_PEAK = 17  # PSF-Med: flip-prediction AUC peaks at layer 17 of 34 (REFERENCE §2)
# a 24 GB card holds 24e9 bytes = 22.35 GiB (less the CUDA context, which
# max_memory_allocated does not count)
MEMORY_GOAL_GIB = 24e9 / 2**30
PARAPHRASES = (
    "Can a pleural effusion be seen?",
    "Is cardiomegaly present on this chest X-ray?",
    "Does this image show a pneumothorax?",
    "Is any edema visible?",
)


def free(device: torch.device) -> None:
    """Release what the previous part left, so the next peak is its own."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def chosen_layers(recipe: Path, n_layers: int) -> list[int]:
    """The study's layer window around the paper's peak, ``half_width`` from the recipe
    (shifted inward on a model with fewer blocks, as the study does)."""
    config = load_paraphrase_recipe(recipe).config
    return layer_window(PAPER_AUC_PEAK, config.half_width, n_layers)


def margins(vlm: Any, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Yes/no margin throughput at ``--batch``; one warm-up batch is not timed."""
    batch = args.batch
    texts = list(questions(batch))
    images = random_images(batch, image_size(args.scale), seed=1)
    positions: list[int] = []

    def lm_head_positions(logits: torch.Tensor) -> None:
        positions.append(int(logits.shape[1]))

    with torch.no_grad(), edit_block_output(vlm.model.lm_head, lm_head_positions):
        vlm.margin(images, texts)  # warm-up
        reset_peak_memory(device)
        _, encode_s = timed(lambda: vlm.encode(images, texts), device)
        seconds = 0.0
        for _ in range(args.margin_batches):
            margin, s = timed(lambda: vlm.margin(images, texts), device)
            seconds += s
    n = batch * args.margin_batches
    return {
        "batch": batch,
        "batches": args.margin_batches,
        "questions_per_s": n / seconds,
        "seconds_per_batch": seconds / args.margin_batches,
        "processor_seconds_per_batch": encode_s,
        "prompt_tokens": int(vlm.encode(images, texts)["attention_mask"].shape[1]),
        "lm_head_positions": max(positions),
        "margins_finite": bool(torch.isfinite(margin).all()),
        "peak_memory_gib": peak_memory_gib(device),
    }


def capture(
    vlm: Any, layers: list[int], args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """One activation-store pass over ``--capture-texts`` questions at ``layers``."""
    n = args.capture_texts
    texts = list(questions(n))
    images = random_images(n, image_size(args.scale), seed=2)
    rows = list(range(n))
    with tempfile.TemporaryDirectory() as folder:
        reset_peak_memory(device)
        store, seconds = timed(
            lambda: write_activation_store(
                vlm, images, rows, texts, layers, folder, batch=args.batch
            ),
            device,
        )
        readout = store.layers[layers[0]].tokens
        width = store.d_in(layers[0])
    prompt_tokens = 0
    for start in range(0, n, args.batch):
        mask = vlm.encode(images[start : start + args.batch], texts[start : start + args.batch])
        prompt_tokens += int(mask["attention_mask"].sum())
    return {
        "layers": layers,
        "texts": n,
        "batch": args.batch,
        "d_in": width,
        "readout_tokens_per_layer": readout,
        "readout_tokens_per_s": readout / seconds,
        "rows_written_per_s": readout * len(layers) / seconds,
        "prompt_tokens_per_s": prompt_tokens / seconds,
        "seconds": seconds,
        "peak_memory_gib": peak_memory_gib(device),
    }


def lora_run(
    checkpointing: bool,
    layers: list[int],
    processor: Any,
    args: argparse.Namespace,
    device: torch.device,
) -> dict[str, Any]:
    """Consistency-LoRA steps at the recipe's settings on a fresh model: ``--warmup-steps``
    untimed steps, then ``--lora-steps`` timed ones (``Trainer.fit``, no checkpoint
    written). ``--grad-accum`` replaces the recipe's accumulation when given."""
    _, dtype = resolve_options(args)
    recipe = load_paraphrase_recipe(args.recipe).config.lora
    measured = args.lora_steps
    config: ConsistencyConfig = replace(
        recipe,
        lora=replace(recipe.lora, layers=tuple(layers)),
        steps=10_000,  # fit(stop_after=...) ends the run long before: no checkpoint
        checkpoint_every=10_000,
        gradient_checkpointing=checkpointing,
        grad_accum=args.grad_accum or recipe.grad_accum,
    )
    n = len(PARAPHRASES)
    examples = [
        ConsistencyExample(i, q, (PARAPHRASES[i],), i % 2 == 0) for i, q in enumerate(questions(n))
    ]
    images = random_images(n, image_size(args.scale), seed=3)
    free(device)
    vlm = build_medgemma(args.scale, device=device, dtype=dtype, processor=processor)
    with tempfile.TemporaryDirectory() as out:
        trainer = paraphrase_trainer("consistency-lora", vlm, images, examples, config, out)
        trainable = sum(p.numel() for _, p in trainer.params.values())
        if args.warmup_steps:  # kernels, allocator, optimiser state
            trainer.fit(stop_after=args.warmup_steps)
        reset_peak_memory(device)
        history, seconds = timed(lambda: trainer.fit(stop_after=measured), device)
        synchronize(device)
        figures = {
            "gradient_checkpointing": gradient_checkpointing_enabled(vlm.module),
            "steps": measured,
            "steps_run": trainer.step,  # warm-up and timed
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "questions_per_step": config.batch_size * config.grad_accum,
            "seconds_per_step": seconds / measured,
            "peak_memory_gib": peak_memory_gib(device),
            "trainable_parameters": trainable,
            "final_loss": history[-1]["loss"],
        }
    return figures


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = add_common_options(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--recipe", type=Path, default=RECIPE)
    parser.add_argument("--batch", type=int, default=8, help="questions per forward pass")
    for option, text in (
        ("--margin-batches", "timed margin batches (real 4, tiny 1)"),
        ("--lora-steps", "timed optimiser steps (1)"),
        ("--warmup-steps", "untimed optimiser steps first (real 1, tiny 0)"),
        ("--grad-accum", "micro-batches per step (real: the recipe's, tiny 2)"),
        ("--capture-texts", "questions captured (real 32, tiny 8)"),
    ):
        parser.add_argument(option, type=int, default=None, help=text)
    args = parser.parse_args(argv)
    real = args.scale == "real"
    defaults = {
        "margin_batches": 4 if real else 1,
        "lora_steps": 1,
        "warmup_steps": 1 if real else 0,
        "capture_texts": 32 if real else args.batch,
    }
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.grad_accum is None and not real:
        args.grad_accum = 2  # a few seconds on the CPU; the real run keeps the recipe's 8
    device, dtype = resolve_options(args)

    counts = parameter_count(args.scale)
    bytes_per = torch.empty(0, dtype=dtype).element_size()
    processor = medgemma_processor(args.scale)
    vlm = build_medgemma(args.scale, device=device, dtype=dtype, processor=processor)
    layers = chosen_layers(args.recipe, len(vlm.layers))
    figures: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "recipe": str(
            args.recipe.relative_to(ROOT) if args.recipe.is_relative_to(ROOT) else args.recipe
        ),
        "parameters": {
            **counts,
            "readme_medgemma_4b": MEDGEMMA_4B_PARAMETERS,
            "weight_gib": counts["total"] * bytes_per / 2**30,
        },
        "vocab_rows": int(vlm.model.get_output_embeddings().weight.shape[0]),
        "tokenizer_size": len(vlm.processor.tokenizer),
        "margins": margins(vlm, args, device),
        "capture": capture(vlm, layers, args, device),
    }
    del vlm
    lora: dict[str, Any] = {
        "layers": layers,
        "without_checkpointing": lora_run(False, layers, processor, args, device),
    }
    lora["with_checkpointing"] = lora_run(True, layers, processor, args, device)
    figures["lora"] = lora
    figures["goals"] = {
        "lora_peak_memory_gib": goal(
            MEMORY_GOAL_GIB,
            lora["without_checkpointing"]["peak_memory_gib"],
            higher_is_better=False,
        ),
        "lora_peak_memory_gib_checkpointing": goal(
            MEMORY_GOAL_GIB,
            lora["with_checkpointing"]["peak_memory_gib"],
            higher_is_better=False,
        ),
    }
    return write_record(args, "medgemma", device, figures)


if __name__ == "__main__":
    main(sys.argv[1:])
