"""Train and evaluate the negation methods on the phantom world (issue #5, in progress).

    .venv/bin/python experiments/negation_methods.py --steps 150 --seed 0 --out runs/negation

Alpha comes from a saved trace (``mechtune trace ... --out runs/trace_minilm``). Each
method starts from the shipped phantom CLIP and trains on the world's train-split
patients; evaluation is on the test-split patients, in-distribution and held-out phrasing
families. Prints a JSON line per method and writes results.json.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mechtune.data.io import dumps_json, to_jsonable, write_json
from mechtune.eval.update_share import update_share
from mechtune.eval.zero_shot import embed_images, evaluate_zero_shot
from mechtune.interp.result import TraceResult
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import WorldConfig, make_world
from mechtune.train.loop import LoopConfig
from mechtune.train.lora import LoraSettings, lora_update_norms
from mechtune.train.methods import negation_examples, run_method


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--methods", nargs="+", default=["zero-shot", "uniform-lora", "nast"])
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--beta", type=float, default=2.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", type=Path, default=Path("runs/trace_minilm"))
    parser.add_argument("--out", type=Path, default=Path("runs/negation"))
    args = parser.parse_args()

    world = make_world(WorldConfig(n_studies=args.n, seed=0))
    trace = TraceResult.load(args.trace)
    alpha = trace.alpha
    cte_by_block = trace.cte_layer[1:].tolist()
    data = negation_examples(world)
    results = {}
    for method in args.methods:
        encoder = load_dual_encoder("phantom:default")
        images = embed_images(encoder, world.images)
        config = LoopConfig(
            steps=args.steps,
            lr=args.lr,
            beta=args.beta,
            seed=args.seed,
            checkpoint_every=args.steps,
            lora=LoraSettings(rank=8, alpha=16),
        )
        start = time.perf_counter()
        run_method(
            method, encoder, images, data, alpha, config, args.out / method / f"seed{args.seed}"
        )
        seconds = time.perf_counter() - start
        report = to_jsonable(evaluate_zero_shot(encoder, world, split="test", probes=False))
        if method != "zero-shot":
            norms = lora_update_norms(encoder.model)
            report["update_share"] = {
                f"top{k}": update_share(norms, cte_by_block, k) for k in (3, 5)
            }
        report["train_seconds"] = round(seconds, 1)
        results[method] = report
        held = report["claims"]["heldout"]
        print(
            dumps_json(
                {
                    "method": method,
                    "seconds": report["train_seconds"],
                    "heldout_acc": held["claim_accuracy"]["value"],
                    "heldout_gap": held["affirmative_negation_gap"]["value"],
                    "heldout_contra": held["accuracy_by_polarity"]["contralateral"]["value"],
                    "indist_acc": report["claims"]["in_distribution"]["claim_accuracy"]["value"],
                    "update_share": report.get("update_share"),
                },
                indent=None,
            ),
            flush=True,
        )
    write_json(args.out / f"results_seed{args.seed}.json", results)


if __name__ == "__main__":
    main()
