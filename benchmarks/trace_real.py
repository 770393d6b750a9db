"""Benchmark 1 of issue 15: the fast causal tracer against the plain NAST-style loop on a
real-size dual encoder, on the same device, with the same CTE.

    python benchmarks/trace_real.py --device cuda --out trace.json        # 1,000 pairs
    python benchmarks/trace_real.py --scale real --device cpu --pairs 20 --loop-pairs 2
    python benchmarks/trace_real.py --scale tiny --device cpu             # smoke run

The model is a random-weight BiomedCLIP shape (``--model medsiglip``: the MedSigLIP shape)
built on the device in ``--dtype`` (:mod:`mechtune.bench.dual_shapes`). The pairs are
``--pairs`` distinct (correct, foil) clinical sentence pairs from templates
(:func:`mechtune.bench.clinical_text.trace_text_pairs`), so the fast tracer's tracing of
each distinct text pair once gains nothing; each pair has its own random image at the
tower's size. Every cell is traced: every layer 0..L, every traced position.

- fast: image embeddings once (``encode_images``), then
  :func:`mechtune.interp.tracing.trace_scores`; ``fast_total_s`` counts both.
- loop: :func:`mechtune.interp.tracing.trace_scores_reference` with ``raw_images``, what
  the NAST code does: one full forward (image tower + text tower on the correct and foil
  texts) per (layer, position). Timed on the first ``--loop-pairs`` pairs and scaled per
  pair to ``--pairs``.

The CTE of the loop's pairs is compared with the fast tracer's (``max_abs_cte_diff``; the
raw patched scores too). Goals (issue 15): fast >= 20x faster than the loop; the whole
1,000-pair trace under 60 s (a GPU goal; when ``--pairs`` is not 1,000 the time is scaled
per pair and marked projected).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import numpy as np

from mechtune.bench.clinical_text import trace_text_pairs
from mechtune.bench.dual_shapes import SHAPES, dual_shape
from mechtune.bench.record import (
    add_common_options,
    goal,
    peak_memory_gib,
    reset_peak_memory,
    resolve_options,
    timed,
    write_record,
)
from mechtune.interp.tracing import TracePair, trace_scores, trace_scores_reference

DEFAULT_PAIRS = {"real": 1000, "tiny": 12}
DEFAULT_LOOP_PAIRS = {"real": 4, "tiny": 2}
GOAL_PAIRS = 1000
GOAL_SPEEDUP = 20.0
GOAL_SECONDS = 60.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = add_common_options(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--model", choices=sorted(SHAPES), default="biomedclip")
    parser.add_argument("--pairs", type=int, default=None, help="1000 at real scale")
    parser.add_argument(
        "--loop-pairs", type=int, default=None, help="pairs the loop is timed on (real: 4)"
    )
    args = parser.parse_args(argv)
    for name in ("pairs", "loop_pairs"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def random_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``[n, size, size, 3]`` uint8 noise images."""
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device, dtype = resolve_options(args)
    n_pairs = args.pairs or DEFAULT_PAIRS[args.scale]
    n_loop = min(args.loop_pairs or DEFAULT_LOOP_PAIRS[args.scale], n_pairs)

    encoder, build_s = timed(lambda: dual_shape(args.model, args.scale, device, dtype), device)
    texts = trace_text_pairs(n_pairs, seed=0)
    pairs = [TracePair(c, f, i) for i, (c, f) in enumerate(texts)]
    raw = random_images(n_pairs, encoder.image_size)

    trace_scores(encoder, pairs[:2], encoder.encode_images(raw[:2]))  # warm-up
    reset_peak_memory(device)
    images, embed_s = timed(lambda: encoder.encode_images(raw), device)
    fast, trace_s = timed(lambda: trace_scores(encoder, pairs, images), device)
    fast_peak = peak_memory_gib(device)
    fast_s = embed_s + trace_s

    loop, loop_sub_s = timed(
        lambda: trace_scores_reference(encoder, pairs[:n_loop], images, raw_images=raw), device
    )
    # loop time grows with the cells (layers x positions) traced: scale by cells, not pairs
    loop_s = loop_sub_s / sum(r.cte.numel() for r in loop) * sum(r.cte.numel() for r in fast)

    cte_diff = max(float((a.cte - b.cte).abs().max()) for a, b in zip(fast, loop, strict=False))
    score_diff = max(
        float((a.patched - b.patched).abs().max()) for a, b in zip(fast, loop, strict=False)
    )
    gaps = [abs(p.s_correct - p.s_foil) for p in fast[:n_loop]]
    cells = sum(int(p.patched.numel()) for p in fast)
    per_1000 = fast_s / n_pairs * GOAL_PAIRS
    speedup = loop_s / fast_s
    figures = {
        "model": args.model,
        "dtype": str(dtype).removeprefix("torch."),
        "text_layers": len(encoder.text_layers),
        "parameters": sum(p.numel() for p in encoder.model.parameters()),
        "pairs": n_pairs,
        "distinct_text_pairs": len({(p.correct, p.foil) for p in pairs}),
        "cells": cells,
        "loop_pairs": n_loop,
        "build_s": build_s,
        "image_embed_s": embed_s,
        "fast_trace_s": trace_s,
        "fast_total_s": fast_s,
        "fast_cells_per_s": cells / trace_s,
        "fast_peak_memory_gib": fast_peak,
        "loop_timed_s": loop_sub_s,
        "loop_s_per_pair": loop_sub_s / n_loop,
        "loop_projected_s": loop_s,
        "speedup_vs_loop": speedup,
        "max_abs_cte_diff": cte_diff,
        "max_abs_patched_score_diff": score_diff,
        "min_abs_score_gap": min(gaps),
        "trace_1000_pairs_s": per_1000,
        "trace_1000_pairs_projected": n_pairs != GOAL_PAIRS,
        "goals": {
            "speedup_vs_loop": goal(GOAL_SPEEDUP, speedup, higher_is_better=True),
            "trace_1000_pairs_s": goal(GOAL_SECONDS, per_1000, higher_is_better=False),
        },
    }
    return write_record(args, "trace_real", device, figures)


if __name__ == "__main__":
    main()
