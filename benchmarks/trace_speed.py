"""Benchmark: fast causal tracing vs the plain loop (issue goal: >= 20x, same CTE).

    .venv/bin/python benchmarks/trace_speed.py --model phantom --pairs 200
    .venv/bin/python benchmarks/trace_speed.py --model clip-b32 --pairs 8 --loop-pairs 2

Two plain loops are timed: ``nast`` does what the NAST code does per (layer, position)
(image encoder + text tower on the correct and foil texts); ``text`` re-runs only the text
tower on the correct text against a cached image embedding (a stronger baseline). The
loops run on a subset of pairs and are scaled to the full set. ``clip-b32`` is a
random-weight transformers CLIPModel of ViT-B/32 size (12-layer text tower).

Phantom pairs are the default tracing workload (``build_trace_pairs`` on a world's test
patients), where many pairs share their texts; the fast tracer traces each distinct text
pair once. ``fast_distinct_s`` times the worst case, the distinct text pairs alone.
Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mechtune.interp.pairs import build_trace_pairs
from mechtune.interp.tracing import TracePair, trace_scores, trace_scores_reference
from mechtune.models.hf_dual import HFCLIPDualEncoder
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import WorldConfig, make_world

TEMPLATES = [
    ("There is small left pleural effusion.", "There is no left pleural effusion."),
    ("No pneumothorax.", "Large pneumothorax."),
    ("There is severe pulmonary edema.", "There is no pulmonary edema."),
    ("Negative for cardiomegaly.", "Positive for cardiomegaly."),
]


def clip_b32() -> HFCLIPDualEncoder:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizerFast

    words = sorted({w.strip(".").lower() for pair in TEMPLATES for t in pair for w in t.split()})
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, ".": 3, **{w: i + 4 for i, w in enumerate(words)}}
    vocab["<eos>"] = 49407
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers import normalizers, processors
    from transformers import PreTrainedTokenizerFast

    tok.normalizer = normalizers.Lowercase()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 49407)]
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")
    _ = CLIPTokenizerFast  # the real tokenizer needs the hub; sizes are what matter here
    torch.manual_seed(0)
    model = CLIPModel(CLIPConfig(text_config={"eos_token_id": 2}))  # ViT-B/32 defaults
    return HFCLIPDualEncoder(model.eval(), fast)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", choices=["phantom", "clip-b32"], default="phantom")
    parser.add_argument("--pairs", type=int, default=24)
    parser.add_argument("--loop-pairs", type=int, default=4, help="pairs timed in the loops")
    args = parser.parse_args()

    encoder = load_dual_encoder("phantom:default") if args.model == "phantom" else clip_b32()
    world = make_world(WorldConfig(n_studies=max(64, args.pairs)))
    raw = world.images
    with torch.no_grad():
        images = torch.cat(
            [encoder.encode_images(raw[lo : lo + 256]) for lo in range(0, len(raw), 256)]
        )
    if args.model == "phantom":
        built = build_trace_pairs(list(enumerate(world.studies)), encoder, seed=0)
        pairs = built.pairs[: args.pairs]
    else:
        pairs = [
            TracePair(c, f, i % 4)
            for i, (c, f) in zip(
                range(args.pairs), TEMPLATES * (args.pairs // len(TEMPLATES) + 1), strict=False
            )
        ]
    distinct = list({(p.correct, p.foil): p for p in pairs}.values())
    trace_scores(encoder, pairs[:2], images)  # warm-up
    start = time.perf_counter()
    fast = trace_scores(encoder, pairs, images)
    t_fast = time.perf_counter() - start
    start = time.perf_counter()
    trace_scores(encoder, distinct, images)
    t_distinct = time.perf_counter() - start
    sub = pairs[: args.loop_pairs]
    scale = len(pairs) / len(sub)
    start = time.perf_counter()
    text_loop = trace_scores_reference(encoder, sub, images)
    t_text = (time.perf_counter() - start) * scale
    start = time.perf_counter()
    nast_loop = trace_scores_reference(encoder, sub, images, raw_images=raw)
    t_nast = (time.perf_counter() - start) * scale
    diff = max(float((a.cte - b.cte).abs().max()) for a, b in zip(fast, text_loop, strict=False))
    diff_nast = max(
        float((a.cte - b.cte).abs().max()) for a, b in zip(fast, nast_loop, strict=False)
    )
    print(
        json.dumps(
            {
                "model": args.model,
                "text_layers": len(encoder.text_layers),
                "pairs": len(pairs),
                "distinct_text_pairs": len(distinct),
                "fast_s": round(t_fast, 2),
                "fast_distinct_s": round(t_distinct, 2),
                "text_loop_s": round(t_text, 1),
                "nast_loop_s": round(t_nast, 1),
                "speedup_vs_text_loop": round(t_text / t_fast, 1),
                "speedup_vs_nast_loop": round(t_nast / t_fast, 1),
                "speedup_vs_nast_loop_distinct": round(
                    t_nast / len(pairs) * len(distinct) / t_distinct, 1
                ),
                "max_abs_cte_diff_text": diff,
                "max_abs_cte_diff_nast": diff_nast,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
