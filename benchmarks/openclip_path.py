"""Benchmark: the open_clip / BiomedCLIP path end to end, on a random-weight BiomedCLIP-shape
model (issue 15, item 5). It is the only place this path runs: open_clip needs torchvision.

    python benchmarks/openclip_path.py --scale tiny --device cpu --out openclip.json
    python benchmarks/openclip_path.py --scale real --device cuda --out openclip.json

Stages, each recorded with ``ok``, ``seconds`` and ``error``:

- ``build``: :func:`mechtune.bench.openclip_shape.write_openclip_shape` writes the model
  into a temporary folder (open_clip config, random BERT, tokenizer, open_clip checkpoint);
- ``load``: mechtune's spec loader, ``openclip:local-dir:DIR`` (no hub, no remote code);
- ``preprocess``: the adapter's open_clip transform on uint8 images of another size; a
  uniform grey image must come out as ``(g / 255 - mean) / std`` with BiomedCLIP's mean/std;
- ``encode_images``: ``[N, embed_dim]`` unit-norm embeddings;
- ``trace``: :func:`~mechtune.interp.tracing.trace_scores` on ``--pairs`` negation pairs,
  the first ``--reference-pairs`` of them checked against the plain loop
  (:func:`~mechtune.interp.tracing.trace_scores_reference`): the largest difference of
  the patched scores S^{l,p} (the CTE's numerator; the CTE difference is that divided by
  ``S_corr - S_foil``, also recorded) must be within 1e-4 in float32, 5e-2 in half precision;
- ``lora_step``: LoRA (r 8) on the text blocks (``apply_text_lora``), one AdamW step of the
  NAST loss (``NASTLoss``, lambda 0.5) on the cached image embeddings; every LoRA B matrix
  must move from zero and the frozen weights must not.

Without open_clip or torchvision the record says ``"skipped": "<the import error>"`` and the
script exits 0. Otherwise it exits 1 when a stage failed (the record says which).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechtune.bench.record import (
    add_common_options,
    goal,
    peak_memory_gib,
    reset_peak_memory,
    resolve_options,
    timed,
    write_record,
)

NAME = "openclip_path"
# Length-matched negation pairs (correct, foil): every word is one token of the builder's
# WordPiece vocabulary, so each pair has equal token lengths.
TEMPLATES = (
    ("There is small left pleural effusion.", "There is no left pleural effusion."),
    ("There is severe pulmonary edema.", "There is no pulmonary edema."),
    ("Large right pneumothorax.", "No right pneumothorax."),
    ("Positive for cardiomegaly.", "Negative for cardiomegaly."),
    ("Mild bilateral atelectasis.", "No bilateral atelectasis."),
    ("Moderate left lower lobe consolidation.", "No left lower lobe consolidation."),
    ("There is focal opacity.", "There is no opacity."),
    ("Heart size is enlarged.", "Heart size is normal."),
)
DEFAULTS = {"tiny": {"pairs": 4, "reference_pairs": 2}, "real": {"pairs": 8, "reference_pairs": 1}}
IMAGE_SIDES = {"tiny": (40, 52), "real": (300, 260)}  # not the model's size: preprocessing resizes
GREY = 128


def _import_error() -> str | None:
    """The error importing open_clip (and torchvision, which it imports) raises, or None."""
    try:
        import open_clip  # noqa: F401
        import torchvision  # noqa: F401
    except Exception as exc:  # torchvision can fail with RuntimeError (a missing operator)
        return f"{type(exc).__name__}: {exc}"
    return None


class Stages:
    """Runs the stages in order; a stage whose inputs failed is recorded as not run."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.records: dict[str, dict[str, Any]] = {}

    def run(self, name: str, fn: Callable[[], Any], needs: tuple[str, ...] = ()) -> Any:
        failed = [n for n in needs if not self.records.get(n, {}).get("ok")]
        if failed:
            self.records[name] = {"ok": False, "seconds": None, "error": f"not run: {failed}"}
            return None
        try:
            (result, details), seconds = timed(fn, self.device)
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self.records[name] = {
                "ok": False,
                "seconds": None,
                "error": f"{type(exc).__name__}: {exc}",
            }
            return None
        self.records[name] = {"ok": True, "seconds": round(seconds, 4), "error": None, **details}
        return result


def check(condition: bool, message: str) -> None:
    """A stage's own check (an AssertionError is recorded as the stage's error)."""
    if not condition:
        raise AssertionError(message)


def trace_pairs(n: int, n_images: int) -> list[Any]:
    from mechtune.interp.tracing import TracePair

    return [
        TracePair(*TEMPLATES[i % len(TEMPLATES)], image=i % n_images, family="negation")
        for i in range(n)
    ]


def preprocess_stage(encoder: Any, images: list[np.ndarray], dtype: torch.dtype) -> Any:
    from mechtune.bench.openclip_shape import BIOMEDCLIP_MEAN, BIOMEDCLIP_STD

    pixels = encoder.pixel_values(images)
    side = int(encoder.model.visual.image_size[0])
    check(pixels.shape == (len(images), 3, side, side), f"pixel shape {tuple(pixels.shape)}")
    check(bool(torch.isfinite(pixels).all()), "non-finite pixels")
    mean, std = torch.tensor(BIOMEDCLIP_MEAN), torch.tensor(BIOMEDCLIP_STD)
    want = ((GREY / 255 - mean) / std).view(3, 1, 1).expand(3, side, side)
    error = float((pixels[-1] - want).abs().max())  # the last image is uniform grey
    check(error < 1e-3, f"grey image normalised off by {error} (mean/std not BiomedCLIP's?)")
    return None, {"pixel_shape": list(pixels.shape), "grey_error": error}


def encode_stage(encoder: Any, images: list[np.ndarray]) -> Any:
    emb = encoder.encode_images(images)
    check(emb.dtype == torch.float32, f"embeddings are {emb.dtype}")
    norms = emb.norm(dim=-1)
    check(bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-4)), "not unit norm")
    return emb, {"embedding_shape": list(emb.shape)}


def trace_stage(
    encoder: Any, pairs: list[Any], n_reference: int, image_emb: torch.Tensor, half: bool
) -> Any:
    from mechtune.interp.tracing import trace_scores, trace_scores_reference

    fast, fast_s = timed(lambda: trace_scores(encoder, pairs, image_emb), encoder.device)
    ref, ref_s = timed(
        lambda: trace_scores_reference(encoder, pairs[:n_reference], image_emb), encoder.device
    )
    score_diff = max(
        float((f.patched - r.patched).abs().max())
        for f, r in zip(fast[:n_reference], ref, strict=True)
    )
    cte_diff = max(
        float((f.cte - r.cte).abs().max()) for f, r in zip(fast[:n_reference], ref, strict=True)
    )
    tol = 5e-2 if half else 1e-4
    check(score_diff <= tol, f"fast and reference patched scores differ by {score_diff} > {tol}")
    cells = sum(int(s.patched.numel()) for s in fast)
    return fast, {
        "pairs": len(pairs),
        "reference_pairs": n_reference,
        "cells": cells,
        "fast_s": round(fast_s, 4),
        "reference_s": round(ref_s, 4),
        "max_abs_score_diff": score_diff,
        "max_abs_cte_diff": cte_diff,
        "tolerance": tol,
        "layers": int(fast[0].patched.shape[0]),
    }


def lora_stage(encoder: Any, pairs: list[Any], image_emb: torch.Tensor) -> Any:
    from mechtune.train.lora import LoraSettings, apply_text_lora, lora_parameters
    from mechtune.train.losses import NASTLoss, NegationBatch

    frozen_before = {
        n: p.detach().clone()
        for n, p in encoder.model.named_parameters()
        if n.startswith(("text.proj", "visual."))
    }
    model = apply_text_lora(encoder.model, LoraSettings(rank=8, alpha=16))
    params = lora_parameters(model)
    optimizer = torch.optim.AdamW([p for _, p in params.values()], lr=1e-3)
    device = encoder.device
    images = image_emb.to(device)
    rows = torch.tensor([p.image for p in pairs], device=device)
    captions = encoder.encode_tokens(encoder.tokenize([p.correct for p in pairs]))
    claims = encoder.encode_tokens(
        encoder.tokenize([t for p in pairs for t in (p.correct, p.foil)])
    ).view(len(pairs), 2, -1)
    batch = NegationBatch(
        caption_image=images[rows],
        caption_text=captions,
        claim_image=images[rows],
        candidates=claims,
        mask=torch.ones(len(pairs), 2, dtype=torch.bool, device=device),
        scale=encoder.logit_scale,
    )
    terms = NASTLoss(0.5)(batch)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    loss = float(terms["loss"].detach())  # the one device-to-host read of the step
    check(bool(np.isfinite(loss)), f"loss {loss}")
    moved = [n for n, (_, p) in params.items() if "lora_B" in n and bool(p.detach().any())]
    n_b = sum("lora_B" in n for n in params)
    check(len(moved) == n_b > 0, f"{len(moved)} of {n_b} LoRA B matrices moved")
    base = dict(model.get_base_model().named_parameters())
    changed = [n for n, v in frozen_before.items() if not torch.equal(base[n], v)]
    check(not changed, f"frozen weights changed: {changed[:3]}")
    layers = sorted({i for i, _ in params.values()})
    return None, {
        "loss": loss,
        "lora_tensors": len(params),
        "lora_parameters": sum(p.numel() for _, p in params.values()),
        "lora_layers": layers,
    }


def run(args: argparse.Namespace) -> int:
    device, dtype = resolve_options(args)
    error = _import_error()
    if error is not None:
        # on a GPU this is the one place the path can be tested: a missing import there
        # (wheels not carried, a broken torchvision) fails the part instead of passing
        imported = goal(1, 0, higher_is_better=True)
        write_record(args, NAME, device, {"skipped": error, "goals": {"imported": imported}})
        return 1 if device.type == "cuda" else 0
    import open_clip
    import timm
    import torchvision

    from mechtune.bench.openclip_shape import openclip_spec, shape_of, write_openclip_shape
    from mechtune.models.spec import load_dual_encoder

    defaults = DEFAULTS[args.scale]
    n_pairs = args.pairs or defaults["pairs"]
    n_reference = min(n_pairs, args.reference_pairs or defaults["reference_pairs"])
    shape = shape_of(args.scale)
    rng = np.random.default_rng(0)
    h, w = IMAGE_SIDES[args.scale]
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(3)]
    images.append(np.full((h, w, 3), GREY, dtype=np.uint8))
    pairs = trace_pairs(n_pairs, len(images))
    half = dtype in (torch.bfloat16, torch.float16)
    stages = Stages(device)
    reset_peak_memory(device)
    with tempfile.TemporaryDirectory(prefix="openclip-shape-") as tmp:
        folder = Path(tmp) / "biomedclip-shape"

        def build() -> Any:
            write_openclip_shape(folder, args.scale)
            files = sorted(p.name for p in folder.iterdir())
            return None, {"files": files}

        def load() -> Any:
            enc = load_dual_encoder(openclip_spec(folder), device=device, dtype=dtype)
            text = sum(p.numel() for p in enc.model.text.parameters())
            vision = sum(p.numel() for p in enc.model.visual.parameters())
            check(enc.dtype == dtype, f"weights loaded in {enc.dtype}, not {dtype}")
            check(len(enc.text_layers) == shape.text_layers, "text layer count")
            check(len(enc.model.visual.trunk.blocks) == shape.vision_layers, "vision layers")
            check(enc.max_length == shape.context_length, f"context {enc.max_length}")
            return enc, {
                "model_class": type(enc.model).__name__,
                "text_parameters": text,
                "vision_parameters": vision,
                "pooling": enc.pooling,
            }

        stages.run("build", build)
        encoder = stages.run("load", load, ("build",))
        stages.run("preprocess", lambda: preprocess_stage(encoder, images, dtype), ("load",))
        image_emb = stages.run("encode_images", lambda: encode_stage(encoder, images), ("load",))
        stages.run(
            "trace",
            lambda: trace_stage(encoder, pairs, n_reference, image_emb, half),
            ("encode_images",),
        )
        stages.run("lora_step", lambda: lora_stage(encoder, pairs, image_emb), ("encode_images",))
    n_ok = sum(r["ok"] for r in stages.records.values())
    figures = {
        "dtype": str(dtype).removeprefix("torch."),
        "ok": n_ok == len(stages.records),
        "stages": stages.records,
        "versions": {
            "open_clip": open_clip.__version__,
            "timm": timm.__version__,
            "torchvision": torchvision.__version__,
        },
        "shape": {
            "text_layers": shape.text_layers,
            "text_width": shape.text_width,
            "vocab_size": shape.vocab_size,
            "context_length": shape.context_length,
            "timm_model_name": shape.timm_model_name,
            "image_size": shape.image_size,
            "embed_dim": shape.embed_dim,
        },
        "peak_memory_gib": round(peak_memory_gib(device), 3),
        "goals": {
            "stages_ok": goal(len(stages.records), n_ok, higher_is_better=True),
        },
    }
    write_record(args, NAME, device, figures)
    return 0 if figures["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = add_common_options(argparse.ArgumentParser(description=__doc__))
    parser.add_argument("--pairs", type=int, default=None, help="negation pairs traced")
    parser.add_argument(
        "--reference-pairs", type=int, default=None, help="pairs also run by the plain loop"
    )
    args = parser.parse_args(argv)
    for option in ("pairs", "reference_pairs"):
        value = getattr(args, option)
        if value is not None and value < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {value}")
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
