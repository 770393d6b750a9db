"""How the zero-shot polarity bias depends on how often reports state pertinent negatives.

For each rate, train the phantom CLIP (same seed, same budget) on reports written with that
rate, then evaluate zero-shot on the training world's held-out test patients. The shipped
default (rate 0.2) is evaluated from its checkpoint rather than retrained.

    .venv/bin/python experiments/negative_rate_sweep.py --rates 0.0 0.2 0.5 --out runs/sweep

Writes one JSON per rate plus summary.json; docs/results.md quotes the summary.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechtune.data.io import dumps_json, to_jsonable, write_json
from mechtune.eval.negation import evaluate_negation
from mechtune.models.minilm import MiniLMTower
from mechtune.sim.clip import default_checkpoint, load_default
from mechtune.sim.train_clip import TrainCLIPConfig, train_phantom_clip
from mechtune.sim.world import make_world


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rates", type=float, nargs="+", default=[0.0, 0.2, 0.5])
    parser.add_argument("--out", type=Path, default=Path("runs/negative_rate_sweep"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    text = MiniLMTower().eval()
    shipped = TrainCLIPConfig.from_dict(
        json.loads((default_checkpoint() / "config.json").read_text())["train"]["config"]
    )
    summary = {}
    for rate in args.rates:
        config = TrainCLIPConfig.from_dict({**shipped.to_dict(), "negative_rate": rate})
        world = make_world(config.world_config())
        if config == shipped:
            model = load_default(text=text)
        else:
            model, _ = train_phantom_clip(config, world=world, text=text)
        report = to_jsonable(
            evaluate_negation(
                model,
                world.eval_set(model, "test"),
                seed=world.config.seed,
                probe_train=world.eval_set(model, "train"),
            )
        )
        write_json(args.out / f"rate_{rate}.json", report)
        summary[str(rate)] = {"retrieval": report["retrieval"], "claims": report["claims"]}
        gap = report["claims"]["heldout"]["affirmative_negation_gap"]
        print(rate, dumps_json(gap, indent=None), flush=True)
    write_json(args.out / "summary.json", summary)


if __name__ == "__main__":
    main()
