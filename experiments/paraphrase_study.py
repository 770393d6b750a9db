"""Run the paraphrase study from a recipe, optionally overriding seeds, ranges and split.

    .venv/bin/python -m mechtune.cli.main sim export --n 2000 --seed 0 --out runs/export
    .venv/bin/python experiments/paraphrase_study.py --recipe recipes/consistency-phantom.yaml \\
        --questions runs/export/questions.jsonl --data runs/export --seeds 0 1 2 \\
        --out runs/paraphrase_3seeds

``--questions`` is a PSF-Med style file with split labels and ``--data`` the image-study
source (or plain folder) its images are in, as ``mechtune paraphrase study`` takes them;
they override the recipe's ``questions:`` / ``data:``. Choosing settings uses
the validation patients only (``--eval-split val``). ``--set`` overrides consistency-LoRA
settings, e.g. ``--set steps=100 consistency_weight=2``. Writes results.json and table.md
into --out; the table's Δ columns are paired differences of the per-question flip indicator
vs baseline and vs all-layer LoRA (see mechtune.pipelines.paraphrase_report), and vs the
SAE range with ``--random-ranges N`` (the random-range control: N random ranges of the SAE
range's width and their pooled row). ``--auc-shuffles K`` adds the shuffled-label control
of the flip-prediction AUC (results.json's analysis section).

    .venv/bin/python experiments/paraphrase_study.py --seeds 0 1 2 3 4 --ranges all sae \\
        --random-ranges 3 --auc-shuffles 20 --questions runs/export/questions.jsonl \\
        --data runs/export --out runs/paraphrase_5seeds
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import yaml

from mechtune.cli.paraphrase import run_study
from mechtune.pipelines.paraphrase import load_paraphrase_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--recipe", type=Path, default=Path("recipes/consistency-phantom.yaml"))
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--questions", type=Path, default=None)
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--ranges", nargs="+", default=None)
    parser.add_argument("--eval-split", choices=("val", "test"), default=None)
    parser.add_argument(
        "--random-ranges", type=int, default=None, help="the random-range control's draws"
    )
    parser.add_argument(
        "--auc-shuffles", type=int, default=None, help="the flip-AUC's label shuffles"
    )
    parser.add_argument("--set", nargs="*", default=[], metavar="LORA_KEY=VALUE")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--out", type=Path, default=Path("runs/paraphrase_study"))
    args = parser.parse_args()
    recipe = load_paraphrase_recipe(args.recipe)
    config = recipe.config
    data = args.data or recipe.data
    questions = args.questions or recipe.questions
    if data is None or questions is None:
        parser.error("--data and --questions are required when the recipe names none")
    if args.seeds:
        config = replace(config, seeds=tuple(args.seeds))
    if args.ranges:
        config = replace(config, ranges=tuple(args.ranges))
    if args.eval_split:
        config = replace(config, eval_split=args.eval_split)
    for key in ("random_ranges", "auc_shuffles"):
        if getattr(args, key) is not None:
            config = replace(config, **{key: getattr(args, key)})
    if args.set:
        overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
        config = replace(config, lora=replace(config.lora, **overrides))
    run_study(config, questions, data, args.out, device=args.device, dtype=args.dtype)
    print((args.out / "table.md").read_text())


if __name__ == "__main__":
    main()
