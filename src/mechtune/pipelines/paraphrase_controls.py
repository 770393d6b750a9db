"""Controls of the paraphrase study: does the SAE-chosen layer range beat chance?

**Random layer ranges.** The SAE analysis picks one contiguous range of blocks (the
flip-AUC peak ± ``half_width``). The control trains consistency LoRA, at the same budget,
on random contiguous ranges of the same width: ``draws`` of the other windows of that
width (the SAE range itself left out, windows overlapping it kept; no window drawn
twice), seeded. Every range gets every LoRA seed, so the SAE range and the random ones
are paired by question and seed. Under the null that the analysis picks no better than
a uniform draw among the windows, the SAE range's flip rate and the mean over the other
windows have the same expectation; the paired difference of
the per-question flip indicator (:mod:`mechtune.pipelines.paraphrase_report`) is the
test. Where the model has too few blocks for ``draws`` distinct windows, all of them are
drawn and :attr:`RandomRanges.note` says so; where it has none (the SAE range spans the
stack), there is no control.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mechtune.errors import ConfigError

RANDOM_PREFIX = "random-"  # run names of the random ranges: random-0, random-1, ...


def is_random_range(name: str) -> bool:
    """Whether ``name`` is a run name of the random-range control (``random-<i>``)."""
    return name.startswith(RANDOM_PREFIX) and name[len(RANDOM_PREFIX) :].isdigit()


@dataclass(frozen=True)
class RandomRanges:
    """The drawn ranges (``{"random-<i>": layers}`` in draw order), their ``width``, how
    many were ``requested``, how many windows of that width the model has besides the
    SAE range (``pool``), the ``seed`` of the draw, and a ``note`` when fewer than
    requested could be drawn (None otherwise)."""

    ranges: dict[str, tuple[int, ...]]
    width: int
    requested: int
    pool: int
    seed: int
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "drawn": {name: list(layers) for name, layers in self.ranges.items()},
            "width": self.width,
            "requested": self.requested,
            "pool": self.pool,
            "seed": self.seed,
            "note": self.note,
        }


def random_layer_ranges(
    chosen: Sequence[int], n_layers: int, draws: int, seed: int
) -> RandomRanges:
    """``draws`` contiguous ranges of ``len(chosen)`` blocks of an ``n_layers``-block
    stack, drawn uniformly without replacement (``random.Random`` seeded by ``seed``)
    from the windows other than ``chosen``; all of them, with a note, when there are
    fewer. Raises ConfigError for ``draws`` < 0 or a ``chosen`` range that is empty or
    outside the stack."""
    if draws < 0:
        raise ConfigError(f"random_ranges must be >= 0, got {draws}")
    chosen = tuple(sorted(int(i) for i in chosen))
    if not chosen or chosen[0] < 0 or chosen[-1] >= n_layers:
        raise ConfigError(
            f"the SAE range {list(chosen)} is not a range of blocks 0..{n_layers - 1}"
        )
    width = len(chosen)
    windows = [tuple(range(s, s + width)) for s in range(n_layers - width + 1)]
    pool = [w for w in windows if w != chosen]
    picked = random.Random(f"mechtune random layer ranges {seed}").sample(
        pool, min(draws, len(pool))
    )
    note = None
    if len(picked) < draws:
        span = f"L{chosen[0]}–{chosen[-1]}" if width > 1 else f"L{chosen[0]}"
        note = (
            f"{draws} random ranges asked, but a stack of {n_layers} blocks holds "
            f"{len(pool)} contiguous window(s) of width {width} besides the SAE range "
            f"({span}): "
            + (
                f"all {len(pool)} drawn, none twice"
                if pool
                else "no random range to train, so there is no random-range control"
            )
        )
    return RandomRanges(
        ranges={f"{RANDOM_PREFIX}{i}": w for i, w in enumerate(picked)},
        width=width,
        requested=draws,
        pool=len(pool),
        seed=seed,
        note=note,
    )


__all__ = ["RANDOM_PREFIX", "RandomRanges", "is_random_range", "random_layer_ranges"]
