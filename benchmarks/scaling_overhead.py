"""Benchmark: NAST gradient-scaling overhead vs a plain LoRA step, and training throughput
(issue #5 goal: overhead <= 5%).

    .venv/bin/python benchmarks/scaling_overhead.py --steps 20

Same model (phantom CLIP, LoRA rank 8 on all 6 MiniLM blocks), same batches; the only
difference is the per-parameter gradient hooks. Steps alternate between the two modes so
that drift in machine speed hits both. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import time
from contextlib import nullcontext

import torch

from mechtune.eval.negation import embed_images
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import WorldConfig, make_world
from mechtune.train.lora import LoraSettings, apply_text_lora, lora_parameters
from mechtune.train.losses import NASTLoss, NegationBatch
from mechtune.train.methods import negation_examples
from mechtune.train.negation import _claim_tensors, _encode_distinct
from mechtune.train.scaling import block_scales, scaled_gradients


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()

    world = make_world(WorldConfig(n_studies=400))
    enc = load_dual_encoder("phantom:default")
    images = embed_images(enc, world.images)
    rows = [(int(i), world.studies[int(i)]) for i in world.indices("train")]
    data = negation_examples(rows, seed=world.config.seed)
    model = apply_text_lora(enc.model, LoraSettings(rank=8, alpha=16))
    params = [p for _, p in lora_parameters(model).values()]
    opt = torch.optim.AdamW(params, lr=1e-4)
    loss_fn = NASTLoss(0.5)
    scales = block_scales(torch.linspace(0, 1, 7), 2.0, 6)
    gen = torch.Generator().manual_seed(0)
    times = {"plain": 0.0, "scaled": 0.0}
    pairs = {"plain": 0, "scaled": 0}
    for step in range(2 * args.steps + 2):
        mode = "scaled" if step % 2 else "plain"
        cap = [
            data.captions[i]
            for i in torch.randint(len(data.captions), (args.batch,), generator=gen)
        ]
        clm = [
            data.claims[i] for i in torch.randint(len(data.claims), (args.batch,), generator=gen)
        ]
        start = time.perf_counter()
        with scaled_gradients(model, scales) if mode == "scaled" else nullcontext():
            text = _encode_distinct(enc, [c.text for c in cap])
            cands, mask = _claim_tensors(enc, clm)
            terms = loss_fn(
                NegationBatch(
                    images[[c.image for c in cap]],
                    text,
                    images[[c.image for c in clm]],
                    cands,
                    mask,
                    enc.logit_scale,
                )
            )
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
        opt.step()
        if step >= 2:  # the first two steps warm up
            times[mode] += time.perf_counter() - start
            pairs[mode] += sum(len(c.candidates) - 1 for c in clm)
    overhead = times["scaled"] / times["plain"] - 1
    print(
        json.dumps(
            {
                "steps_each": args.steps,
                "batch": args.batch,
                "plain_s_per_step": round(times["plain"] / args.steps, 3),
                "scaled_s_per_step": round(times["scaled"] / args.steps, 3),
                "overhead_pct": round(100 * overhead, 2),
                "claim_pairs_per_s": round(pairs["scaled"] / times["scaled"], 1),
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
