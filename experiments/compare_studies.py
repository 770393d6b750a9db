"""Paired differences between methods of two negation studies on the same items.

A setting chosen on validation patients is often run later, at the headline's seeds, in a
study of its own; this compares it with the headline's methods item by item
(mechtune.pipelines.negation_report.cross_study_cells: per item, correctness averaged over
each method's runs, percentile bootstrap over patients), refusing studies that evaluated
other data, another split or another data seed.

    .venv/bin/python experiments/compare_studies.py \\
        runs/nast-gradient/results.json:nast \\
        runs/nast-controls/results.json:nast runs/nast-controls/results.json:uniform-lora

prints one markdown row per reference: the first study's method minus each reference.
``--seeds 0 1 2`` keeps those training seeds in both studies; ``--condition pneumothorax``
keeps the template claim sets about it (a study that held it out of training against one
that did not; the other columns are n/a).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mechtune.errors import DataError
from mechtune.pipelines.negation_report import PAIRED_METRICS, cross_study_cells


def _study(spec: str) -> tuple[Path, dict, str]:
    path, sep, method = spec.rpartition(":")
    if not sep or not path or not method:
        raise SystemExit(f"expected RESULTS.json:METHOD, got {spec!r}")
    return Path(path), json.loads(Path(path).read_text(encoding="utf-8")), method


def cells_runs(results: dict, method: str, seeds: list[int] | None) -> int:
    return sum(seeds is None or r.get("seed") in seeds for r in results["runs"][method])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("study", help="RESULTS.json:METHOD, the method compared")
    parser.add_argument("references", nargs="+", help="RESULTS.json:METHOD, each a reference")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--condition", default=None)
    args = parser.parse_args()
    path_a, a, method_a = _study(args.study)
    print("| comparison | runs | " + " | ".join(c for c, *_ in PAIRED_METRICS) + " |")
    print("|" + "---|" * (2 + len(PAIRED_METRICS)))
    for spec in args.references:
        path_b, b, method_b = _study(spec)
        try:
            cells = cross_study_cells(
                a, method_a, b, method_b, seeds=args.seeds, condition=args.condition
            )
        except DataError as err:
            raise SystemExit(f"{path_a} vs {path_b}: {err}") from err
        runs = f"{cells_runs(a, method_a, args.seeds)} vs {cells_runs(b, method_b, args.seeds)}"
        row = [f"{method_a} ({path_a.parent.name}) − {method_b} ({path_b.parent.name})", runs]
        row += ["n/a" if cells[c] is None else cells[c].pp() for c, *_ in PAIRED_METRICS]
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
