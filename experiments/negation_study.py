"""Run the negation study from a recipe, overriding methods, seeds and loop settings
(``mechtune negation study`` with a recipe does the same without overrides).

    mechtune sim export --n 2000 --seed 0 --out runs/phantom-mimic
    .venv/bin/python experiments/negation_study.py --recipe recipes/nast-phantom.yaml \\
        --data runs/phantom-mimic --methods zero-shot uniform-lora nast --seeds 0 1 2 \\
        --out runs/negation_3seeds

Choosing settings uses the validation patients only, e.g.

    .venv/bin/python experiments/negation_study.py --eval-split val --methods nast \\
        --set scaling=lr beta=1 --out runs/tune/nast_lr_b1

Writes results.json (with every run's per-item correctness) and table.md into --out; the
table ends with each method's paired Δ vs uniform LoRA (mechtune.pipelines.negation_report)
and NAST's Δ vs its controls. A recipe with a grid runs every cell into --out/cells and
writes --out/grid.md (mechtune.pipelines.negation_grid); rerun to resume.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import yaml

from mechtune.data.polarity_check import clinical_available
from mechtune.data.sources import open_source
from mechtune.pipelines.negation import RunOptions
from mechtune.pipelines.negation_config import load_recipe
from mechtune.pipelines.negation_grid import run_negation_grid
from mechtune.pipelines.negation_study import run_negation_study


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/nast-phantom.yaml"))
    parser.add_argument("--data", type=Path, default=None, help="default: the recipe's")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/cache"))
    parser.add_argument("--methods", nargs="+", default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/negation_study"))
    parser.add_argument(
        "--eval-split", choices=("val", "test"), default=None, help="val to choose settings"
    )
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="LOOP_KEY=VALUE",
        help="override loop settings, e.g. scaling=lr beta=1 steps=100",
    )
    parser.add_argument("--no-balance", action="store_true", help="claim sets as drawn")
    args = parser.parse_args()
    config = load_recipe(args.recipe)
    if args.no_balance:
        config = replace(config, balance_polarity=False)
    if args.eval_split:
        config = replace(config, eval_split=args.eval_split)
    if args.set:
        overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        config = replace(config, loop=replace(config.loop, **overrides))
    if args.methods:
        config = replace(config, methods=tuple(args.methods))
    if args.seeds:
        config = replace(config, seeds=tuple(args.seeds))
    if args.data:
        config = replace(config, data=str(args.data))
    source = open_source(config.data)
    if clinical_available() and any(s.report for s in source):
        source.with_report_facts()
    options = RunOptions(cache_dir=args.cache_dir)
    if config.grid is not None:  # every cell a study, one table (grid.md)
        run_negation_grid(config, source, args.out, options, log=lambda m: print(m, flush=True))
        print((args.out / "grid.md").read_text())
        return
    run_negation_study(config, source, args.out, options, log=lambda m: print(m, flush=True))
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
