"""Benchmark: build N contextual claim pairs to Parquet (issue goal: 1,000,000 in <= 60 s
on 2 cores, memory bounded by streaming).

    .venv/bin/python benchmarks/build_contextual_pairs.py --pairs 1000000

Prints one JSON line: pairs, claim sets, studies, seconds, pairs/s, peak RSS (MiB).
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from pathlib import Path

from mechtune.data.builders.contextual import ContextualConfig, build_contextual
from mechtune.data.synthetic import iter_unbounded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="default: a temporary folder")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp) / "contextual"
        start = time.perf_counter()
        result = build_contextual(
            iter_unbounded(args.seed), out, ContextualConfig(seed=args.seed), max_pairs=args.pairs
        )
        seconds = time.perf_counter() - start
        size = sum(p.stat().st_size for p in out.iterdir())
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        json.dumps(
            {
                "pairs": result.counts["pairs"],
                "claim_sets": result.counts["tables"]["claims"]["rows"],
                "captions": result.counts["tables"]["captions"]["rows"],
                "studies": result.counts["studies"],
                "seconds": round(seconds, 2),
                "pairs_per_s": round(result.counts["pairs"] / seconds),
                "peak_rss_mib": round(peak_mib),
                "output_mib": round(size / 2**20, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
