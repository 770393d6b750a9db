"""PSF-Med's metrics of a yes/no VLM on bound paraphrase sets, or of recorded answers.

PSF-Med (arXiv 2602.21428; REFERENCE §2) defines, per question group (an original
question and its paraphrases): the **flip rate** (a group flips if any paraphrase's
answer differs from the original's), the **pairwise flip rate**, the **mean |margin
difference|** (margin = logit(yes) − logit(no) at the first answer token), **accuracy**
(agreement with the label, over all answers), **text-only agreement** (the original's
answer unchanged with the image blanked) and **swap sensitivity** (the answer changed with
another patient's image). The metric code is :mod:`mechtune.eval.consistency`; every
value is an :class:`~mechtune.eval.metrics.Estimate` with a 95% interval clustered by
patient (a patient's questions share anatomy).

Views: ``all`` groups; ``heldout`` and ``in_distribution``, each keeping the paraphrases
of held-out (or training) paraphrase families with their originals, where the records
label families (``heldout_family``); ``by_strategy``, one row per rewriting strategy.
A metric that cannot be computed is None, with its reason in ``na``. Per question, each
report keeps ``items`` (id, patient, flip) for paired comparisons.
"""

from __future__ import annotations

import csv
import dataclasses
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from mechtune.data.answers import HELD_OUT, IN_DISTRIBUTION, AnswerGroup, answers_from_margins
from mechtune.data.io import atomic_write_text, to_jsonable
from mechtune.data.schema import ImageQuestion
from mechtune.errors import DataError
from mechtune.eval.consistency import (
    answer_accuracy,
    consistency_summary,
    flip_rate,
    group_flips,
    margin_difference,
    original_accuracy,
    pairwise_flip_rate,
    swap_sensitivity,
    text_only_agreement,
)
from mechtune.eval.metrics import Estimate
from mechtune.interp.sae_analysis import margins
from mechtune.models.yes_no import YesNoVLM, take_rows
from mechtune.progress import Tracker, stage

VIEWS = ("all", "heldout", "in_distribution")
_VIEW_LABEL = {"heldout": HELD_OUT, "in_distribution": IN_DISTRIBUTION}
NO_IMAGES = "recorded answers: no images to blank or swap"
ONE_PATIENT = "swap sensitivity needs questions on the images of at least two patients"
NO_MARGINS = "the answers carry no margins"
NO_TRUTH = "no ground truth for some groups"


def swap_rows(questions: Sequence[ImageQuestion]) -> list[int] | None:
    """For each question, the image row of another patient's question in the list (the
    next one whose patient and image both differ, cyclically): deterministic, never the
    same patient nor the same image. None when some question has no such partner (one
    patient, or every other patient's questions on its own image)."""
    out = []
    for i, q in enumerate(questions):
        for step in range(1, len(questions)):
            other = questions[(i + step) % len(questions)]
            if other.record.patient_id != q.record.patient_id and other.image != q.image:
                out.append(other.image)
                break
        else:
            return None
    return out


def _check_ids(ids: Sequence[str]) -> None:
    seen: set[str] = set()
    for q in ids:
        if q in seen:
            raise DataError(f"question id {q!r} repeats; per-question results need unique ids")
        seen.add(q)


@torch.no_grad()
def model_answers(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    track: Tracker | None = None,
    description: str = "margins",
) -> tuple[list[AnswerGroup], dict[str, Any]]:
    """The model's answer groups (margins of every question and paraphrase on its image)
    and the image controls: ``{"blank": [N] margins with the image blanked, "swap": [N]
    margins with another patient's image, or None}`` for the original questions.
    ``track`` gets one stage (``description``) counting the texts read: every question
    and paraphrase, then the originals once per control."""
    sets = [q.record for q in questions]
    _check_ids([s.question_id for s in sets])
    rows = [q.image for q in questions for _ in range(1 + len(q.record.paraphrases))]
    texts = [t for s in sets for t in (s.question, *s.paraphrases)]
    swapped = swap_rows(questions)
    total = len(texts) + len(sets) * (1 if swapped is None else 2)
    with stage(track, description, total) as advance:
        flat = margins(vlm, images, rows, texts, progress=advance)
        per_set, at = [], 0
        for s in sets:
            n = 1 + len(s.paraphrases)
            per_set.append(flat[at : at + n])
            at += n
        groups = answers_from_margins(sets, per_set)
        originals = [s.question for s in sets]
        blank = vlm.blank_images(take_rows(images, [q.image for q in questions]))
        controls: dict[str, Any] = {
            "blank": margins(vlm, blank, list(range(len(sets))), originals, progress=advance),
            "swap": None,
        }
        if swapped is not None:
            controls["swap"] = margins(vlm, images, swapped, originals, progress=advance)
    return groups, controls


def _restrict(groups: Sequence[AnswerGroup], label: str) -> list[AnswerGroup]:
    out = []
    for g in groups:
        kept = tuple(v for v in g.variants if v.family == label)
        if kept:
            out.append(dataclasses.replace(g, variants=kept))
    return out


def family_view_gap(
    groups: Sequence[AnswerGroup], heldout: Mapping[str, Sequence[bool]] | None
) -> str | None:
    """Why :func:`views` gives no held-out / in-distribution views although some records
    flag their families: how many groups lack a held-out flag per paraphrase. None when
    every group is labelled, or none is (a file that labels no families has no family
    views to explain)."""
    if not heldout:
        return None
    unlabelled = [
        g.group_id for g in groups if len((heldout or {}).get(g.group_id) or ()) != len(g.variants)
    ]
    if not unlabelled:
        return None
    return (
        f"{len(unlabelled)} of {len(groups)} records lack a heldout_family flag per paraphrase "
        f"(e.g. {unlabelled[0]!r})"
    )


def views(
    groups: Sequence[AnswerGroup], heldout: Mapping[str, Sequence[bool]] | None
) -> dict[str, list[AnswerGroup]]:
    """``{"all": groups}`` plus ``heldout`` / ``in_distribution`` where ``heldout`` (group
    id -> per-paraphrase held-out flags) labels them; a view without groups is left out."""
    out: dict[str, list[AnswerGroup]] = {"all": list(groups)}
    if not heldout:
        return out
    labelled = []
    for g in groups:
        flags = heldout.get(g.group_id) or ()
        if len(flags) != len(g.variants):
            return out  # the records do not label every paraphrase: no family views
        variants = tuple(
            v._replace(family=HELD_OUT if f else IN_DISTRIBUTION)
            for v, f in zip(g.variants, flags, strict=True)
        )
        labelled.append(dataclasses.replace(g, variants=variants))
    for view, label in _VIEW_LABEL.items():
        kept = _restrict(labelled, label)
        if kept:
            out[view] = kept
    return out


def metrics_report(
    groups: Sequence[AnswerGroup],
    patients: Mapping[str, str],
    controls: Mapping[str, Any] | None,
    *,
    index: Mapping[str, int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Every PSF-Med metric of ``groups`` (Estimates, clustered by ``patients``: group id
    -> patient), the image controls from ``controls`` (margins ``[N]`` by ``index``: group
    id -> position; None without images), ``na`` (metric -> reason) and ``items``."""
    kw: dict[str, Any] = {"clusters": patients, "n_boot": n_boot, "seed": seed}
    na: dict[str, str] = {}
    report: dict[str, Any] = {
        "groups": len(groups),
        "pairs": sum(len(g.variants) for g in groups),
        "flips": int(sum(group_flips(g) for g in groups)),
        "flip_rate": flip_rate(groups, **kw),
        "pairwise_flip_rate": pairwise_flip_rate(groups, **kw),
    }
    if all(m is not None for g in groups for m in g.margins):
        report["margin_difference"] = margin_difference(groups, **kw)
    else:
        report["margin_difference"], na["margin_difference"] = None, NO_MARGINS
    if all(g.ground_truth is not None for g in groups):
        report["accuracy"] = answer_accuracy(groups, **kw)
        report["original_accuracy"] = original_accuracy(groups, **kw)
    else:
        report["accuracy"] = report["original_accuracy"] = None
        na["accuracy"] = na["original_accuracy"] = NO_TRUTH
    cluster = [patients[g.group_id] for g in groups]
    base = np.array([g.original_answer for g in groups], dtype=bool)
    for name, key, metric, reason in (
        ("text_only_agreement", "blank", text_only_agreement, NO_IMAGES),
        ("swap_sensitivity", "swap", swap_sensitivity, ONE_PATIENT),
    ):
        values = None if controls is None else controls.get(key)
        if values is None or index is None:
            report[name], na[name] = None, NO_IMAGES if controls is None else reason
            continue
        other = np.asarray(values)[[index[g.group_id] for g in groups]] > 0
        report[name] = metric(base, other, clusters=cluster, n_boot=n_boot, seed=seed)
    report["na"] = na
    report["items"] = {
        "id": [g.group_id for g in groups],
        "patient": cluster,
        "flip": [bool(group_flips(g)) for g in groups],
    }
    return report


def evaluate_groups(
    groups: Sequence[AnswerGroup],
    *,
    patients: Mapping[str, str] | None = None,
    heldout: Mapping[str, Sequence[bool]] | None = None,
    controls: Mapping[str, Any] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """The metrics of every view (:data:`VIEWS` present) and ``by_strategy`` rows
    (:func:`mechtune.eval.consistency.consistency_summary`). ``patients`` defaults to each
    group's study; ``controls`` as :func:`metrics_report` takes them, aligned with
    ``groups``."""
    patients = patients or {g.group_id: g.study_id for g in groups}
    index = {g.group_id: i for i, g in enumerate(groups)}
    out: dict[str, Any] = {
        view: metrics_report(vg, patients, controls, index=index, n_boot=n_boot, seed=seed)
        for view, vg in views(groups, heldout).items()
    }
    gap = family_view_gap(groups, heldout)
    if gap is not None:  # said where the views would be, so the table shows why
        out["all"]["na"]["heldout"] = out["all"]["na"]["in_distribution"] = gap
    rows = consistency_summary(groups, "strategy", clusters=patients, n_boot=n_boot, seed=seed)
    # one dict per strategy, its metrics kept as Estimates (as the views keep them)
    out["by_strategy"] = [
        {f.name: getattr(r, f.name) for f in dataclasses.fields(r)} for r in rows[1:]
    ]
    return out


def evaluate_questions(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    *,
    seed: int = 0,
    track: Tracker | None = None,
    description: str = "evaluate: margins",
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The metrics of ``questions`` asked to ``vlm`` (:func:`evaluate_groups`, views and
    strategies) and the per-question margin rows (:func:`margin_rows`). ``track``: the
    progress of the margins (:func:`model_answers`), as ``description``."""
    if not questions:
        raise DataError("no questions to evaluate")
    groups, controls = model_answers(vlm, images, questions, track, description)
    patients = {q.record.question_id: q.record.patient_id for q in questions}
    heldout = {
        q.record.question_id: q.record.heldout_family for q in questions if q.record.heldout_family
    }
    report = evaluate_groups(
        groups, patients=patients, heldout=heldout, controls=controls, seed=seed
    )
    return report, margin_rows(questions, groups, controls)


def margin_rows(
    questions: Sequence[ImageQuestion], groups: Sequence[AnswerGroup], controls: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """One row per (question, variant): ids, variant index (0 = the original), strategy,
    held-out flag, text, margin, answer, label; the original's row also holds its margins
    with the image blanked and swapped."""
    rows = []
    for i, (q, g) in enumerate(zip(questions, groups, strict=True)):
        r = q.record
        flags: Sequence[bool | None] = r.heldout_family or (None,) * len(r.paraphrases)
        variants: list[tuple[str, str, bool | None, float | None]]
        variants = [(r.question, "original", None, g.original_margin)]
        variants += [
            (v.question, v.strategy, f, v.margin) for v, f in zip(g.variants, flags, strict=True)
        ]
        for k, (text, strategy, held, margin) in enumerate(variants):
            blank = swap = None
            if k == 0:
                blank = float(controls["blank"][i])
                swap = None if controls["swap"] is None else float(controls["swap"][i])
            rows.append(
                {
                    "question_id": r.question_id,
                    "study_id": r.study_id,
                    "patient_id": r.patient_id,
                    "split": r.split,
                    "variant": k,
                    "strategy": strategy,
                    "heldout_family": held,
                    "text": text,
                    "margin": margin,
                    "answer": "yes" if margin is not None and margin > 0 else "no",
                    "label": "yes" if r.answer else "no",
                    "margin_blank_image": blank,
                    "margin_swapped_image": swap,
                }
            )
    return rows


def write_margins(rows: Sequence[Mapping[str, Any]], path: Any) -> None:
    """Per-question margins as CSV (atomic; margins with 6 decimals, empty for None)."""
    if not rows:
        raise DataError("no margin rows to write")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow(
            {
                k: ("" if v is None else f"{v:.6f}" if isinstance(v, float) else v)
                for k, v in row.items()
            }
        )
    atomic_write_text(path, buffer.getvalue())


# -- tables -------------------------------------------------------------------------------

_COLUMNS = (
    ("flip rate %", "flip_rate", "pct"),
    ("pairwise flip %", "pairwise_flip_rate", "pct"),
    ("mean abs margin diff", "margin_difference", "logits"),
    ("accuracy %", "accuracy", "pct"),
    ("text-only agreement %", "text_only_agreement", "pct"),
    ("swap sensitivity %", "swap_sensitivity", "pct"),
)


def _fmt(value: Any, kind: str) -> str:
    if value is None:
        return "n/a"
    e = value if isinstance(value, Estimate) else Estimate(**value)
    if e.n == 0:
        return "n/a"
    if kind == "pct":
        return e.pct()
    return f"{e.value:.2f} [{e.low:.2f}, {e.high:.2f}]"


def eval_table(report: Mapping[str, Any]) -> str:
    """Markdown: one row per view, then per strategy (the image controls are
    per-question, so strategy rows show "–"), then each n/a metric with its reason."""
    head = "| view | groups | " + " | ".join(c for c, _, _ in _COLUMNS) + " |"
    lines = [head, "|" + "---|" * (2 + len(_COLUMNS))]
    reasons: dict[str, str] = {}
    for view in VIEWS:
        if view not in report:
            continue
        r = report[view]
        cells = [_fmt(r.get(key), kind) for _, key, kind in _COLUMNS]
        lines.append(f"| {view} | {r['groups']} | " + " | ".join(cells) + " |")
        reasons.update(r.get("na", {}))
    for row in report.get("by_strategy", []):
        cells = [
            _fmt(row["flip_rate"], "pct"),
            _fmt(row["pairwise_flip_rate"], "pct"),
            _fmt(row["margin_difference"], "logits"),
            _fmt(row["answer_accuracy"], "pct"),
            "–",
            "–",
        ]
        label = str(row["label"]).replace("|", "\\|")
        lines.append(f"| strategy: {label} | {row['groups']} | " + " | ".join(cells) + " |")
    for metric, reason in sorted(reasons.items()):
        lines.append("")
        lines.append(f"n/a {metric}: {reason}")
    return "\n".join(lines) + "\n"


def jsonable(report: Mapping[str, Any]) -> Any:
    """The report with Estimates as dicts (``results.json``)."""
    return to_jsonable(dict(report))


__all__ = [
    "NO_IMAGES",
    "NO_MARGINS",
    "NO_TRUTH",
    "ONE_PATIENT",
    "VIEWS",
    "eval_table",
    "evaluate_groups",
    "evaluate_questions",
    "family_view_gap",
    "jsonable",
    "margin_rows",
    "metrics_report",
    "model_answers",
    "swap_rows",
    "views",
    "write_margins",
]
