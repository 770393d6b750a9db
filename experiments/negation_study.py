"""Run the negation study from a recipe, optionally overriding methods and seeds.

    .venv/bin/python experiments/negation_study.py --recipe recipes/nast-phantom.yaml \\
        --methods zero-shot uniform-lora nast --seeds 0 1 2 --out runs/negation_3seeds

Writes results.json and table.md into --out (see mechtune.eval.negation_study).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from mechtune.eval.negation_study import load_recipe, run_negation_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/nast-phantom.yaml"))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/negation_study"))
    args = parser.parse_args()
    config = load_recipe(args.recipe)
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    if args.seeds:
        config = replace(config, seeds=tuple(args.seeds))
    run_negation_study(config, args.out, log=lambda m: print(m, flush=True))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
