"""The negation study's run plan and its controls: does the traced alpha pick better
blocks than chance, at equal budget (issue 17)?

Two registered methods answer it beside ``nast`` and ``uniform-lora``
(:mod:`mechtune.train.methods`), on the same data, loss, beta and steps:

- ``random-alpha``: NAST with alpha permuted across the blocks, ``k`` permutations
  (``random_alpha_permutations``), each trained once per seed. The permutations are drawn
  once per study (seeded by ``data_seed``, so every seed and every rerun trains the same
  ones) and recorded in ``results.json`` (``controls``); the table pools the ``k`` x seeds
  runs into one row (per item, correctness averaged over all of them, as over seeds),
  whose paired difference from NAST is the answer to "better than chance?". Each run's
  folder is ``runs/random-alpha/seed<s>-p<j>``.
- ``effective-lr``: uniform LoRA at the mean over the blocks of NAST's per-block rate
  lr * alpha_l ** beta (:func:`~mechtune.train.scaling.effective_lr`): is NAST just a
  smaller learning rate?

:func:`control_comparisons` adds NAST minus each control on the same items
(``results["paired_controls"]``, and a table in ``table.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mechtune.errors import ConfigError, DataError
from mechtune.pipelines.negation_config import NegationStudyConfig
from mechtune.pipelines.negation_report import PAIRED_METRICS, paired_cells
from mechtune.train.scaling import effective_lr

RANDOM_ALPHA = "random-alpha"
EFFECTIVE_LR = "effective-lr"
CONTROLS = (RANDOM_ALPHA, EFFECTIVE_LR)
TARGET = "nast"  # the method the controls are controls for
MAX_DRAWS = 1000  # draws per permutation before accepting a repeat of an earlier one


@dataclass(frozen=True)
class StudyRun:
    """One training run of a study: ``method`` at training seed ``seed``; for
    ``random-alpha``, the index of its alpha permutation (else None)."""

    method: str
    seed: int
    permutation: int | None = None

    @property
    def name(self) -> str:
        """The run's folder under ``runs/<method>/`` and its tracker name's tail:
        ``seed<s>``, or ``seed<s>-p<j>`` for permutation ``j``."""
        tail = "" if self.permutation is None else f"-p{self.permutation}"
        return f"seed{self.seed}{tail}"


def run_plan(recipe: NegationStudyConfig) -> list[StudyRun]:
    """Every run of a study, in order: each method once per seed, except zero-shot
    (nothing to train), which runs once, and random-alpha, which runs each of its
    ``random_alpha_permutations`` permutations once per seed."""
    runs = []
    for method in recipe.methods:
        for seed in recipe.seeds if method != "zero-shot" else recipe.seeds[:1]:
            if method == RANDOM_ALPHA:
                runs += [StudyRun(method, seed, j) for j in range(recipe.random_alpha_permutations)]
            else:
                runs.append(StudyRun(method, seed))
    return runs


def alpha_permutations(alpha: torch.Tensor | Any, k: int, seed: int) -> list[torch.Tensor]:
    """``k`` copies of ``alpha`` ``[n_blocks + 1]`` with the blocks' entries ``alpha[1:]``
    permuted (``alpha[0]``, the embedding output, which no block reads, stays).

    The permutations are drawn in order from ``numpy.random.default_rng(seed)``, so the
    first ``j`` of ``k`` are those of any larger ``k``. A draw that leaves the blocks' values
    as they were is redrawn, so every permuted alpha differs from ``alpha`` unless all
    blocks share one value (then each is ``alpha`` itself: there is nothing to permute);
    a draw equal to an earlier permutation is redrawn up to :data:`MAX_DRAWS` times (few
    blocks have few distinct permutations). Each keeps the multiset of block values.
    Raises ConfigError for ``k`` < 1 and DataError for an alpha without blocks.
    """
    if k < 1:
        raise ConfigError(f"random_alpha_permutations must be >= 1, got {k}")
    a = torch.as_tensor(alpha, dtype=torch.float64).reshape(-1)
    if a.numel() < 2:
        raise DataError(f"alpha has {a.numel()} entries; there are no blocks to permute")
    blocks = a[1:]
    if bool((blocks == blocks[0]).all()):
        return [a.clone() for _ in range(k)]
    rng = np.random.default_rng(seed)
    drawn: list[torch.Tensor] = []
    for _ in range(k):
        first_new: torch.Tensor | None = None
        chosen: torch.Tensor | None = None
        for _draw in range(MAX_DRAWS):
            order = torch.from_numpy(rng.permutation(blocks.numel()))
            candidate = blocks[order]
            if torch.equal(candidate, blocks):
                continue
            first_new = candidate if first_new is None else first_new
            if not any(torch.equal(candidate, d[1:]) for d in drawn):
                chosen = candidate
                break
        if chosen is None:
            # a shift by one moves every value unless all are equal (handled above)
            chosen = first_new if first_new is not None else torch.roll(blocks, 1)
        drawn.append(torch.cat([a[:1], chosen]))
    return drawn


def controls_record(
    recipe: NegationStudyConfig, alpha: torch.Tensor, permutations: list[torch.Tensor]
) -> dict[str, Any]:
    """What ``results.json`` records of the controls that ran: random-alpha's permuted
    alphas (``alpha``: ``[k][n_blocks + 1]``) and their seed; effective-lr's rate."""
    out: dict[str, Any] = {}
    if RANDOM_ALPHA in recipe.methods:
        out[RANDOM_ALPHA] = {
            "permutations": len(permutations),
            "seed": recipe.data_seed,
            "alpha": [p.tolist() for p in permutations],
            "note": "alpha[1:] (the blocks') permuted; alpha[0], the embedding output, kept",
        }
    if EFFECTIVE_LR in recipe.methods:
        loop = recipe.loop
        out[EFFECTIVE_LR] = {
            "lr": effective_lr(alpha, loop.beta, loop.lr),
            "from": f"mean over blocks of lr * alpha ** beta (lr {loop.lr}, beta {loop.beta})",
        }
    return out


def control_comparisons(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{control: {column: PairedDifference or None}}``: NAST minus each control that ran
    (:data:`CONTROLS`) on the same items, for each metric of
    :data:`~mechtune.pipelines.negation_report.PAIRED_METRICS`; per item, correctness
    averaged over each side's runs (random-alpha's permutations and seeds alike). Empty
    when NAST or every control is missing, or a run lacks items."""
    runs = results["runs"]
    present = [c for c in CONTROLS if c in runs]
    if TARGET not in runs or not present:
        return {}
    if any("items" not in r for m in (TARGET, *present) for r in runs[m]):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for control in present:
        out[control] = paired_cells(runs[TARGET], runs[control])
    return out


def control_table(results: dict[str, Any]) -> str:
    """Markdown: NAST minus each control [95% interval] in percentage points on the same
    items; empty when there is nothing to compare."""
    paired = control_comparisons(results)
    if not paired:
        return ""
    head = "| comparison | runs | " + " | ".join(c for c, *_ in PAIRED_METRICS) + " |"
    lines = [
        "NAST minus its controls [95% interval], percentage points, on the same items: "
        "does the traced alpha beat a permuted alpha (random-alpha) and a uniform rate of "
        "the same mean (effective-lr)?",
        "",
        head,
        "|" + "---|" * (2 + len(PAIRED_METRICS)),
    ]
    for control, cells in paired.items():
        runs = f"{len(results['runs'][TARGET])} vs {len(results['runs'][control])}"
        row = [f"{TARGET} − {control}", runs]
        row += ["n/a" if cells[c] is None else cells[c].pp() for c, *_ in PAIRED_METRICS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
