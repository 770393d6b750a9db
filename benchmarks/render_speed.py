"""Benchmark: phantom radiographs rendered per second (issue goal: >= 1,000 img/s at
128x128 on 2 cores).

    .venv/bin/python benchmarks/render_speed.py --n 8192 --size 128 --workers 2

Prints one JSON line. Studies come from the synthetic sampler, so the mix of findings is
the realistic one; sampling them is not timed.
"""

from __future__ import annotations

import argparse
import json
import time

from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.sim.render import RenderConfig, Renderer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=8192)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    studies = list(sample_studies(SyntheticConfig(n_studies=args.n)))
    renderer = Renderer(RenderConfig(size=args.size))
    renderer.render(studies[: args.batch], workers=args.workers)  # warm-up
    start = time.perf_counter()
    for lo in range(0, args.n, args.batch):
        renderer.render(studies[lo : lo + args.batch], workers=args.workers)
    seconds = time.perf_counter() - start
    print(
        json.dumps(
            {
                "images": args.n,
                "size": args.size,
                "workers": args.workers,
                "seconds": round(seconds, 2),
                "images_per_s": round(args.n / seconds),
            }
        )
    )


if __name__ == "__main__":
    main()
