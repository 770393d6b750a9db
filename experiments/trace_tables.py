"""Markdown tables of a saved trace (``mechtune trace --out DIR``), as docs/results.md shows.

    .venv/bin/python experiments/trace_tables.py runs/trace_minilm_i11

Prints CTE by layer and token role (the gap-weighted mean over pairs), the per-layer CTE_l
with its 95% interval, the median and top-5% share beside it, alpha_l, and the role CTE
by orientation (negation in the foil / in the caption).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from mechtune.interp.result import TraceResult


def _f(x: float) -> str:
    return "–" if not np.isfinite(x) else f"{x:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("trace", type=Path)
    args = parser.parse_args()
    r = TraceResult.load(args.trace)
    roles = [i for i, role in enumerate(r.roles) if np.isfinite(r.cte[:, i].numpy()).any()]
    print("| layer | " + " | ".join(r.roles[i] for i in roles) + " |")
    print("|---|" + "---:|" * len(roles))
    for layer in range(r.n_layers + 1):
        name = "0 (emb)" if layer == 0 else str(layer)
        print(f"| {name} | " + " | ".join(_f(float(r.cte[layer, i])) for i in roles) + " |")
    print()
    print("| layer | CTE_l [95% interval] | median | top-5% share | alpha_l |")
    print("|---|---|---:|---:|---:|")
    for layer in range(r.n_layers + 1):
        print(
            f"| {layer} | {r.cte_layer[layer]:.3f} [{r.cte_layer_low[layer]:.3f}, "
            f"{r.cte_layer_high[layer]:.3f}] | {r.cte_layer_median[layer]:.3f} | "
            f"{r.top5_share[layer]:.2f} | {r.alpha[layer]:.2f} |"
        )
    meta = json.loads((args.trace / "trace.json").read_text())
    kept = [p.get("status") == "kept" for p in meta["pairs"]]
    negator = r.roles.index("negator")
    pair_cte = r.pair_cte.numpy()[:, :, negator]  # [P, L+1]
    weight = r.pair_weight.numpy()  # [P, L+1] or [P]
    print()
    for orientation in ("negation_in_foil", "negation_in_caption"):
        rows = [
            i
            for i, p in enumerate(meta["pairs"])
            if kept[i] and p.get("orientation") == orientation
        ]
        w = weight[rows] if weight.ndim == 1 else weight[rows, 0]
        values = [
            float(
                np.nansum(pair_cte[rows, layer] * w) / np.sum(w[np.isfinite(pair_cte[rows, layer])])
            )
            for layer in range(r.n_layers + 1)
        ]
        print(
            f"negator CTE, {orientation} ({len(rows)} pairs): "
            + ", ".join(f"{v:.2f}" for v in values)
        )
    print()
    print(f"peak layer {r.peak_layer()}; counts {r.counts}")


if __name__ == "__main__":
    main()
