"""The paraphrase study's table: per condition, held-out-family metrics and the paired
differences of the per-question flip indicator against the baseline and all-layer LoRA,
and, when the study ran the random-range control
(:mod:`mechtune.pipelines.paraphrase_controls`), against the SAE range, with a pooled row
of the random ranges.

Reads the ``results.json`` dict :func:`mechtune.pipelines.paraphrase.run_paraphrase_study`
writes; the paired statistics are :func:`mechtune.eval.metrics.paired_items`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mechtune.eval.metrics import PairedDifference, paired_items
from mechtune.pipelines.paraphrase_controls import is_random_range


def _cell(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    if not values or any(v is None or not np.isfinite(v) for v in values):
        return "n/a"
    mean = scale * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    lo, hi = scale * min(values), scale * max(values)
    return f"{mean:.{digits}f} ({lo:.{digits}f}–{hi:.{digits}f})"


PAIRED_REFERENCES: tuple[tuple[str, str], ...] = (
    ("baseline", "Δ flip vs baseline"),
    ("all", "Δ flip vs all-layer LoRA"),
)
SAE_REFERENCE = ("sae", "Δ flip vs SAE range")
POOLED_RANDOM = "random"  # the key of the pooled row of the random ranges


def random_runs(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The runs of the random-range control, ``{"random-<i>": reports}`` in draw order."""
    return {k: v for k, v in results["runs"].items() if is_random_range(k)}


def paired_references(results: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """The references of the Δ columns, (key, title): the baseline and all-layer LoRA
    (:data:`PAIRED_REFERENCES`), and the SAE range (:data:`SAE_REFERENCE`) when the study
    ran it with the random-range control."""
    if random_runs(results) and "sae" in results["runs"]:
        return (*PAIRED_REFERENCES, SAE_REFERENCE)
    return PAIRED_REFERENCES


def conditions(results: Mapping[str, Any]) -> list[tuple[str, str, list[dict[str, Any]]]]:
    """(row label, reference key, reports) for the baseline, clamping and each LoRA range;
    with two or more random ranges, a last row pools their runs (key
    :data:`POOLED_RANDOM`: per question, flips averaged over every draw and seed)."""
    rows: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("baseline", "baseline", [results["baseline"]])
    ]
    if results.get("clamping"):
        a = results["clamping"]
        rows.append((f"clamp L{a['layer']} f{a['feature']}", "clamping", [a]))
    for name, reports in results["runs"].items():
        layers = reports[0]["layers"]
        label = f"LoRA {name} ({'all' if layers is None else _span(layers)})"
        if "same_as" in reports[0]:
            label += f", same runs as {reports[0]['same_as']}"
        rows.append((label, name, reports))
    drawn = random_runs(results)
    if len(drawn) >= 2:
        pooled = [r for reports in drawn.values() for r in reports]
        seeds = len(next(iter(drawn.values())))
        width = len(next(iter(drawn.values()))[0]["layers"])
        label = (
            f"LoRA random ranges, pooled ({len(drawn)} draws of {width} block"
            f"{'s' if width > 1 else ''} × {seeds} seed{'s' if seeds > 1 else ''})"
        )
        rows.append((label, POOLED_RANDOM, pooled))
    return rows


def _paired(
    a: list[dict[str, Any]], b: list[dict[str, Any]], split: str
) -> PairedDifference | None:
    if not all(split in r and "items" in r[split] for r in (*a, *b)):
        return None
    return paired_items([r[split]["items"] for r in a], [r[split]["items"] for r in b], "flip")


def sae_minus_random(
    results: Mapping[str, Any], split: str | None = None
) -> PairedDifference | None:
    """The control's answer: the SAE range's flip rate minus the random ranges' on the
    same ``split`` questions (:func:`primary_view` when None). Per question, the flip
    indicator averaged over the SAE range's seeds minus that averaged over every random
    draw and seed; the interval is a patient bootstrap (:func:`paired_items`), over
    questions given the drawn ranges and seeds (the draws are not resampled: with few
    windows they can be all there are). Negative: the SAE range flips less. None without
    the SAE range, random ranges, or per-question items."""
    drawn = random_runs(results)
    if not drawn or "sae" not in results["runs"]:
        return None
    pooled = [r for reports in drawn.values() for r in reports]
    return _paired(results["runs"]["sae"], pooled, split or primary_view(results))


def primary_view(results: Mapping[str, Any]) -> str:
    """The view the table reports: held-out paraphrase families where the questions label
    them, else all questions."""
    return "heldout" if "heldout" in results["baseline"] else "all"


def paired_rows(
    results: dict[str, Any], split: str | None = None
) -> list[tuple[str, str, dict[str, PairedDifference | None]]]:
    """Per condition of :func:`conditions`: (row label, key, ``{reference:
    PairedDifference or None}``), the paired difference of the per-question flip
    indicator on ``split`` against each of :func:`paired_references`: per question, flips
    averaged over each condition's seeds (and draws, for the pooled random row), a
    patient bootstrap of the mean difference, and McNemar's exact p when both sides have
    one run. None for the reference itself, a reference that did not run, or reports
    without ``items``."""
    split = split or primary_view(results)
    rows = conditions(results)
    by_key = {key: reports for _, key, reports in rows}
    out = []
    for label, key, reports in rows:
        cells: dict[str, PairedDifference | None] = {}
        for ref, _ in paired_references(results):
            other = by_key.get(ref)
            cells[ref] = None if other is None or ref == key else _paired(reports, other, split)
        out.append((label, key, cells))
    return out


def results_table(results: dict[str, Any]) -> str:
    """Markdown: held-out paraphrase families (all questions when the file labels no
    families; :func:`primary_view`) and the in-distribution flip rate, mean and range over
    seeds, and the paired differences of :func:`paired_rows` in percentage points with
    their 95% intervals."""
    view = primary_view(results)
    references = paired_references(results)
    head = (
        "| condition | seeds | flip rate | pairwise flip | mean abs margin diff | accuracy | "
        "flip rate, in-dist | text-only agreement | "
        + " | ".join(f"{title} [95% interval]" for _, title in references)
        + " |"
    )
    lines = [head, "|" + "---|" * (8 + len(references))]
    paired = paired_rows(results)
    for (label, _, reports), (_, _, cells) in zip(conditions(results), paired, strict=True):

        def vals(split: str, key: str, reps: list[dict[str, Any]] = reports) -> list[float]:
            return [
                r[split][key]["value"] if split in r and r[split].get(key) else float("nan")
                for r in reps
            ]

        deltas = []
        for ref, _ in references:
            cell = cells[ref]
            deltas.append("–" if cell is None else cell.pp())
        lines.append(
            "| "
            + " | ".join(
                [
                    label,
                    str(len(reports)),
                    _cell(vals(view, "flip_rate")),
                    _cell(vals(view, "pairwise_flip_rate")),
                    _cell(vals(view, "margin_difference"), scale=1.0, digits=2),
                    _cell(vals(view, "accuracy")),
                    _cell(vals("in_distribution", "flip_rate")),
                    _cell(vals(view, "text_only_agreement")),
                    *deltas,
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def _groups(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """Margin rows (:func:`mechtune.pipelines.paraphrase_eval.margin_rows`) by question,
    in variant order (0 = the original)."""
    out: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        out.setdefault(str(row["question_id"]), []).append(row)
    for variants in out.values():
        variants.sort(key=lambda r: int(r["variant"]))
    return out


def _flips(variants: Sequence[Mapping[str, Any]]) -> bool:
    return any(v["answer"] != variants[0]["answer"] for v in variants[1:])


def select_question_examples(
    rows_by_condition: Mapping[str, Sequence[Mapping[str, Any]]],
    *,
    reference: str = "baseline",
    limit: int = 6,
) -> list[dict[str, Any]]:
    """Questions ``reference`` flips on, with every condition's margins per variant:
    first those that every other condition answers consistently ("fixed"), then the rest
    ("still flips somewhere"), each in question-id order. ``rows_by_condition``: condition
    -> margin rows over the same questions. Each example: ``id``, ``patient``, ``label``,
    ``texts`` (original first), ``margins`` (condition -> one margin per text, None where
    the model gave none) and ``why``."""
    if reference not in rows_by_condition:
        return []
    grouped = {c: _groups(rows) for c, rows in rows_by_condition.items()}
    base = grouped[reference]
    others = [c for c in grouped if c != reference]
    flipped = [q for q in sorted(base) if _flips(base[q]) and all(q in grouped[c] for c in others)]
    fixed = [q for q in flipped if others and not any(_flips(grouped[c][q]) for c in others)]
    rest = [q for q in flipped if q not in fixed]
    chosen: list[dict[str, Any]] = []
    for why, ids in (
        (f"{reference} flips; every other condition answers consistently", fixed),
        (f"{reference} flips, and so does another condition", rest),
    ):
        for q in ids[: limit - len(chosen)]:
            variants = base[q]
            chosen.append(
                {
                    "id": q,
                    "patient": variants[0]["patient_id"],
                    "label": variants[0]["label"],
                    "texts": [v["text"] for v in variants],
                    "margins": {
                        c: [
                            None if v["margin"] is None else round(float(v["margin"]), 4)
                            for v in grouped[c][q]
                        ]
                        for c in grouped
                    },
                    "why": why,
                }
            )
    return chosen


def _span(layers: Sequence[int]) -> str:
    layers = sorted(layers)
    if layers == list(range(layers[0], layers[-1] + 1)):
        return f"L{layers[0]}–{layers[-1]}" if len(layers) > 1 else f"L{layers[0]}"
    return ",".join(f"L{i}" for i in layers)


__all__ = [
    "PAIRED_REFERENCES",
    "POOLED_RANDOM",
    "SAE_REFERENCE",
    "conditions",
    "paired_references",
    "paired_rows",
    "primary_view",
    "random_runs",
    "results_table",
    "sae_minus_random",
    "select_question_examples",
]
