"""Negation metrics of a dual encoder on one split of any image-study data.

The data is an :class:`EvalStudies`: the split's studies (findings, optional report) and
their image embeddings, from any :class:`~mechtune.data.sources.ImageStudySource`. Nothing
here knows where the studies came from.

- image -> report retrieval, R@1 and R@5 over the split's distinct reports (needs reports);
- claim accuracy (top-1 over the claim set) and pairwise accuracy by flipped attribute;
- accuracy when the correct claim is affirmative vs negated (and contralateral, which needs
  findings with a side), and the affirmative-negation gap;
- in-distribution vs held-out phrasing families;
- the polarity-controlled MCQ (negated vs affirmative wording of absence);
- linear probes on image embeddings, so that text-side failures are not blamed on images.

A metric the data cannot support is ``None`` in the report, and
``report["not_available"][metric]`` says why (R@k without reports; contralateral
negation without laterality).

Intervals: every item (a retrieval query, a claim set, a pair, an MCQ) belongs to a study
of a patient, and a patient's studies share anatomy and findings, so proportions use
:func:`~mechtune.eval.metrics.proportion` clustered by patient (Wilson when each patient
has one item, else a patient bootstrap with a Wilson floor) and the gaps a patient
bootstrap of the difference. ``report["items"]`` keeps the per-item correctness with item
and patient ids, so that two models can be compared item by item
(:func:`~mechtune.eval.metrics.paired_difference`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import zip_longest
from typing import Any, Protocol

import numpy as np
import torch

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.data.freeform import FreeformSets
from mechtune.data.freeform_match import SourceAttributes
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import ClaimSet, Study
from mechtune.errors import DataError
from mechtune.eval.freeform import (
    DEFAULT_MAX_STUDIES,
    add_freeform,
    freeform_split_match,
    freeform_texts,
)
from mechtune.eval.metrics import (
    Estimate,
    bootstrap_mean_difference,
    claim_hits,
    linear_probe_accuracy,
    pairwise_hits,
    proportion,
    retrieval_hits,
)
from mechtune.progress import Tracker, stage


class DualEncoder(Protocol):
    def encode_images(self, images: Any) -> torch.Tensor: ...
    def encode_texts(self, texts: Any) -> torch.Tensor: ...


@dataclass(frozen=True)
class EvalStudies:
    """The studies of one split and their image embeddings.

    ``studies[i]`` is the study whose image embedding is ``images[i]`` (``[N, D]``, float32,
    L2-normalised); ``split`` names the split (``train``, ``val`` or ``test``).
    Raises ``DataError`` when the two lengths differ or there is no study.
    """

    studies: Sequence[Study]
    images: torch.Tensor
    split: str

    def __post_init__(self) -> None:
        if len(self.studies) != len(self.images):
            raise DataError(
                f"{len(self.studies)} studies but {len(self.images)} image embeddings "
                f"for split {self.split!r}"
            )
        if not self.studies:
            raise DataError(f"split {self.split!r} has no study to evaluate")

    @property
    def patients(self) -> list[str]:
        return [s.patient_id for s in self.studies]


def embed_images(model: DualEncoder, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """``uint8 [N, H, W]`` (or any batch ``encode_images`` takes) -> ``[N, D]`` float32."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[lo : lo + batch_size])
            out.append(model.encode_images(torch.from_numpy(chunk)).float().cpu())
    return torch.cat(out)


TEXT_BATCH = 256  # texts per encode_texts call (DualEncoder.encode_texts's own batch)

# Embeddings of distinct texts: ``vectors [T, D]`` float32 and ``index[text]`` its row.
TextTable = tuple[torch.Tensor, dict[str, int]]


def embed_texts(
    model: DualEncoder,
    texts: Sequence[str],
    progress: Callable[[int], None] | None = None,
    batch_size: int = TEXT_BATCH,
) -> TextTable:
    """The distinct ``texts``, sorted, embedded ``batch_size`` at a time: ``([T, D]
    float32 on the CPU, {text: row})``. ``progress(n)`` after each batch of n texts."""
    unique = sorted(set(texts))
    parts = []
    with torch.no_grad():
        for lo in range(0, len(unique), batch_size):
            chunk = unique[lo : lo + batch_size]
            parts.append(model.encode_texts(chunk).float().cpu())
            if progress is not None:
                progress(len(chunk))
    table = torch.cat(parts) if parts else torch.empty(0)
    return table, {t: i for i, t in enumerate(unique)}


def _vectors(table: TextTable, texts: Sequence[str]) -> torch.Tensor:
    """``[len(texts), D]`` rows of ``table``."""
    vectors, index = table
    return vectors[[index[t] for t in texts]]


NO_REPORTS = "R@k needs reports: no study of the split has one"
NO_LATERALITY = (
    "contralateral negation needs findings with a side (laterality): no claim set of the "
    "split negates the opposite side"
)


def retrieval_hit_table(
    model: DualEncoder, data: EvalStudies, table: TextTable | None = None
) -> dict[str, Any]:
    """Per query study that has a report: is its own report among the top k of the
    split's distinct reports? ``{"rows": int [Q] (rows of data), "R@1": bool [Q],
    "R@5": bool [Q]}``; Q = 0 when no study has a report. ``table``: the reports'
    embeddings, already computed (:func:`embed_texts`; it may hold other texts too)."""
    rows = np.array([i for i, s in enumerate(data.studies) if s.report], dtype=np.int64)
    if not rows.size:
        return {"rows": rows, "R@1": np.zeros(0, bool), "R@5": np.zeros(0, bool)}
    reports = [data.studies[i].report or "" for i in rows]
    distinct = sorted(set(reports))
    vectors = _vectors(table or embed_texts(model, distinct), distinct)
    sim = (data.images[torch.as_tensor(rows)].float() @ vectors.T).numpy()
    position = {r: i for i, r in enumerate(distinct)}
    target = np.array([position[r] for r in reports])
    return {"rows": rows, **{f"R@{k}": retrieval_hits(sim, target, k) for k in (1, 5)}}


def claim_scores(
    model: DualEncoder,
    claim_sets: list[ClaimSet],
    study_row: dict[str, int],
    image_emb: torch.Tensor,
    table: TextTable | None = None,
) -> list[np.ndarray]:
    """Per claim set, ``[K]`` image-text similarities of its candidates with its study's
    image embedding (``image_emb[study_row[study_id]]``). ``table``: the candidates'
    embeddings, already computed (:func:`embed_texts`)."""
    if table is None:
        table = embed_texts(model, [t for cs in claim_sets for t in cs.candidates])
    scores = []
    for cs in claim_sets:
        cand = _vectors(table, cs.candidates)
        scores.append((cand @ image_emb[study_row[cs.study_id]].float()).numpy())
    return scores


def claim_slice(cs: ClaimSet) -> str:
    """``"affirmative"``, ``"negated"`` (same side) or ``"contralateral"``: the kind of
    the correct claim, the slices accuracy is reported by."""
    if cs.contralateral:
        return "contralateral"
    return "affirmative" if cs.polarity == "affirmative" else "negated"


def summarise_claims(claim_sets: list[ClaimSet], scores: list[np.ndarray]) -> dict[str, Any]:
    """Top-1 and pairwise accuracies, sliced every way the papers report them.

    Proportions are clustered by patient; gaps are differences of two slices' accuracy
    with a patient bootstrap. A slice with no claim set (e.g. contralateral, when no
    finding has a side) is ``None``."""
    top1 = claim_hits(scores).astype(np.float64)
    pairs = pairwise_hits(scores)
    patients = np.array([cs.patient_id for cs in claim_sets], dtype=object)
    slices = np.array([claim_slice(cs) for cs in claim_sets], dtype=object)
    out: dict[str, Any] = {}
    for family_name, keep in (("in_distribution", False), ("heldout", True)):
        sel = np.array([i for i, cs in enumerate(claim_sets) if cs.heldout_family == keep], int)
        if not sel.size:
            continue
        by_attr: dict[str, list[tuple[bool, str]]] = defaultdict(list)
        for i in sel:
            for hit, attr in zip(pairs[i], claim_sets[i].flipped, strict=True):
                by_attr[attr].append((bool(hit), claim_sets[i].patient_id))
        groups = {k: sel[slices[sel] == k] for k in ("affirmative", "negated", "contralateral")}
        acc = {
            k: proportion(top1[v], clusters=patients[v]) if v.size else None
            for k, v in groups.items()
        }
        gap = _gap(top1, patients, groups["affirmative"], groups["negated"])
        # Like for like: sets whose only negative is the polarity-flipped statement, so
        # affirmative and negated sets are equally hard apart from the wording.
        existence = {
            k: np.array([i for i in v if claim_sets[i].flipped == ("existence",)], int)
            for k, v in groups.items()
            if k != "contralateral"
        }
        existence_gap = _gap(top1, patients, existence["affirmative"], existence["negated"])
        out[family_name] = {
            "claim_accuracy": proportion(top1[sel], clusters=patients[sel]),
            "pairwise_by_attribute": {
                a: proportion([h for h, _ in v], clusters=[p for _, p in v])
                for a, v in sorted(by_attr.items())
            },
            "accuracy_by_polarity": acc,
            "affirmative_negation_gap": gap,
            "existence_only_gap": existence_gap,
            "claim_sets": int(sel.size),
        }
    return out


def _gap(top1: np.ndarray, patients: np.ndarray, a: np.ndarray, b: np.ndarray) -> Estimate | None:
    """Accuracy of claim sets ``a`` minus that of ``b``, with a patient bootstrap (None
    when either slice is empty)."""
    if not a.size or not b.size:
        return None
    return bootstrap_mean_difference(
        top1[a], top1[b], clusters_a=list(patients[a]), clusters_b=list(patients[b])
    )


def claim_items(claim_sets: list[ClaimSet], scores: list[np.ndarray]) -> dict[str, list[Any]]:
    """Per claim set, column-wise: ``id``, ``patient``, ``heldout`` (phrasing family),
    ``slice`` (:func:`claim_slice`), ``condition`` (the ontology id the set is about),
    ``correct`` (top-1 hit), for paired comparisons, and
    ``scores`` (each candidate's image-text similarity, the correct claim first, rounded
    to 5 decimals), from which a study picks its examples."""
    return {
        "id": [cs.claim_set_id for cs in claim_sets],
        "patient": [cs.patient_id for cs in claim_sets],
        "heldout": [cs.heldout_family for cs in claim_sets],
        "slice": [claim_slice(cs) for cs in claim_sets],
        "condition": [cs.condition for cs in claim_sets],
        "correct": claim_hits(scores).tolist(),
        "scores": [[round(float(x), 5) for x in sc] for sc in scores],
    }


def probe_labels(studies: Sequence[Study]) -> dict[str, np.ndarray]:
    """Targets for linear probes: presence per condition, side and severity of findings."""
    onto = load_ontology()
    labels: dict[str, list[str]] = defaultdict(list)
    for study in studies:
        present = {f.condition: f for f in study.present()}
        for cond in onto.pathologies:
            labels[f"presence:{cond.id}"].append(str(cond.id in present))
        for cond in onto.pathologies:
            f = present.get(cond.id)
            labels[f"laterality:{cond.id}"].append((f.laterality or "none") if f else "absent")
            labels[f"severity:{cond.id}"].append((f.severity or "none") if f else "absent")
    return {k: np.array(v) for k, v in labels.items()}


def linear_probes(
    train_emb: torch.Tensor,
    train_labels: dict[str, np.ndarray],
    test_emb: torch.Tensor,
    test_labels: dict[str, np.ndarray],
    min_count: int = 20,
) -> dict[str, dict[str, float]]:
    """Probe accuracy per attribute, among studies where the finding is present
    (for side and severity) and its majority-class baseline."""
    out: dict[str, dict[str, float]] = {}
    for name, ytr in train_labels.items():
        yte = test_labels[name]
        if name.startswith("presence:"):
            mtr, mte = np.ones(len(ytr), bool), np.ones(len(yte), bool)
        else:
            mtr, mte = ytr != "absent", yte != "absent"
        if mtr.sum() < min_count or mte.sum() < 5 or len(np.unique(ytr[mtr])) < 2:
            continue
        acc = linear_probe_accuracy(train_emb[mtr], ytr[mtr], test_emb[mte], yte[mte])
        values, counts = np.unique(ytr[mtr], return_counts=True)
        majority = values[counts.argmax()]
        out[name] = {
            "accuracy": acc,
            "majority_baseline": float((yte[mte] == majority).mean()),
            "n_test": int(mte.sum()),
        }
    return out


def eval_claim_sets(data: EvalStudies, seed: int) -> list[ClaimSet]:
    """The claim sets :func:`evaluate_negation` scores on ``data`` (wording seeded per
    study by ``seed``, so every model sees the same sets), in study order."""
    contextual = ContextualConfig(seed=seed)

    def split_of(_study: Study) -> str:
        return data.split

    return [cs for s in data.studies for cs in study_records(s, contextual, split_of=split_of)[0]]


def _best(scores: Sequence[float]) -> int:
    return max(range(len(scores)), key=lambda i: scores[i])


def select_claim_examples(
    claim_sets: Sequence[ClaimSet],
    scores: Mapping[str, Mapping[str, Sequence[float]]],
    *,
    reference: str | None = None,
    target: str | None = None,
    limit: int = 6,
) -> list[dict[str, Any]]:
    """Held-out-family claim sets worth showing, each with its candidates (the correct
    claim first) and every model's scores (``scores``: model -> claim set id -> one score
    per candidate). With ``reference`` and ``target``: the sets ``target`` gets right and
    ``reference`` wrong first ("fixed"), then the reverse ("broken"), then both wrong;
    otherwise the sets the (first) model gets wrong first, taking the slices (affirmative,
    negated, contralateral) in turn. Sets are taken in id order within each group, so the
    choice is deterministic. Sets missing from any model's scores are left out."""
    models = list(scores)
    usable = [
        cs
        for cs in sorted(claim_sets, key=lambda c: c.claim_set_id)
        if cs.heldout_family and all(cs.claim_set_id in scores[m] for m in models)
    ]

    def right(model: str, cs: ClaimSet) -> bool:
        return _best(scores[model][cs.claim_set_id]) == 0

    groups: list[tuple[str, list[ClaimSet]]]
    if reference is not None and target is not None:
        groups = [
            (
                f"{target} right, {reference} wrong",
                [c for c in usable if right(target, c) and not right(reference, c)],
            ),
            (
                f"{target} wrong, {reference} right",
                [c for c in usable if not right(target, c) and right(reference, c)],
            ),
            ("both wrong", [c for c in usable if not right(target, c) and not right(reference, c)]),
        ]
    else:
        first = models[0] if models else ""
        wrong = [c for c in usable if not right(first, c)]
        by_slice = [
            [c for c in wrong if claim_slice(c) == k]
            for k in ("negated", "affirmative", "contralateral")
        ]
        interleaved = [c for batch in zip_longest(*by_slice) for c in batch if c is not None]
        groups = [("the model's choice is wrong", interleaved)]
    chosen: list[dict[str, Any]] = []
    for why, sets in groups:
        for cs in sets:
            if len(chosen) >= limit:
                return chosen
            chosen.append(
                {
                    "id": cs.claim_set_id,
                    "patient": cs.patient_id,
                    "slice": claim_slice(cs),
                    "flipped": list(cs.flipped),
                    "candidates": list(cs.candidates),
                    "scores": {
                        m: [round(float(x), 5) for x in scores[m][cs.claim_set_id]] for m in models
                    },
                    "why": why,
                }
            )
    return chosen


def evaluate_negation(
    model: DualEncoder,
    data: EvalStudies,
    *,
    seed: int = 0,
    probe_train: EvalStudies | None = None,
    track: Tracker | None = None,
    freeform: FreeformSets | None = None,
    freeform_max_studies: int = DEFAULT_MAX_STUDIES,
    freeform_source: SourceAttributes | None = None,
) -> dict[str, Any]:
    """Every negation metric on one split, with the per-item correctness under
    ``"items"`` (``claims``: :func:`claim_items`; ``retrieval`` and ``polarity_mcq``:
    ``id`` (study), ``patient`` and one bool list per metric; ``freeform``:
    :func:`~mechtune.eval.freeform.freeform_items`).

    ``freeform``: hand-written claim sets (:func:`~mechtune.data.freeform.load_freeform`);
    the split's half of them is matched to its studies, at most ``freeform_max_studies``
    per set, and scored into ``report["freeform"]``
    (:func:`~mechtune.eval.freeform.summarise_freeform`); ``freeform_source``: what the
    whole source can ground (default: the split's studies). None: no free-form block.

    ``seed`` seeds the wording of claim sets and MCQs (per study, so that any two models
    see the same items); ``probe_train``: another split's studies and embeddings to fit
    linear probes on (no probes when None). A metric the data cannot support is None,
    and ``report["not_available"]`` maps it to the reason. Every distinct text (claims,
    reports, MCQ options) is embedded once; ``track`` gets one stage counting them.
    """
    row = {s.study_id: j for j, s in enumerate(data.studies)}
    claim_sets = eval_claim_sets(data, seed)
    texts = {t for cs in claim_sets for t in cs.candidates}
    texts.update(s.report for s in data.studies if s.report)
    mcqs = polarity_mcqs(data, seed=seed)
    for form in MCQ_FORMS:
        texts.update(mcq_texts(mcqs, form))
    match = freeform_split_match(
        freeform, data.split, data.studies, freeform_max_studies, freeform_source
    )
    if match is not None:
        texts.update(freeform_texts(match))
    with stage(track, f"evaluate {data.split}: embed texts", len(texts)) as advance:
        table = embed_texts(model, sorted(texts), progress=advance)
    scores = claim_scores(model, claim_sets, row, data.images, table)
    hits = retrieval_hit_table(model, data, table)
    patients = data.patients
    queries = hits["rows"]
    mcq_items = polarity_mcq_items(model, data, seed=seed, table=table)
    not_available: dict[str, str] = {}
    retrieval: dict[str, Estimate | None] = {"R@1": None, "R@5": None}
    if queries.size:
        query_patients = [patients[i] for i in queries]
        retrieval = {k: proportion(hits[k], clusters=query_patients) for k in ("R@1", "R@5")}
    else:
        not_available["retrieval"] = NO_REPORTS
    claims = summarise_claims(claim_sets, scores) if claim_sets else {}
    if not claim_sets:
        not_available["claims"] = "no study of the split yields a claim set (no findings)"
    elif not any(claim_slice(cs) == "contralateral" for cs in claim_sets):
        not_available["contralateral"] = NO_LATERALITY
    report: dict[str, Any] = {
        "split": data.split,
        "studies": len(data.studies),
        "retrieval": retrieval,
        "claims": claims,
        "polarity_mcq": _mcq_estimates(mcq_items),
        "not_available": not_available,
        "examples": select_claim_examples(
            claim_sets,
            {
                "score": {
                    cs.claim_set_id: sc.tolist() for cs, sc in zip(claim_sets, scores, strict=True)
                }
            },
        ),
        "items": {
            "claims": claim_items(claim_sets, scores),
            "retrieval": {
                "id": [data.studies[i].study_id for i in queries],
                "patient": [patients[i] for i in queries],
                **{k: hits[k].tolist() for k in ("R@1", "R@5")},
            },
            "polarity_mcq": mcq_items,
        },
    }
    if not mcq_items["id"]:
        not_available["polarity_mcq"] = "no study of the split passes the MCQ row filter"
    add_freeform(report, freeform, match, row, data.images, table)
    if probe_train is not None:
        report["probes"] = linear_probes(
            probe_train.images,
            probe_labels(probe_train.studies),
            data.images,
            probe_labels(data.studies),
        )
    return report


def _pct(estimate: Estimate | None) -> str:
    return "n/a" if estimate is None else estimate.pct()


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, in-distribution families, held-out families) rows, in percent with CIs;
    "n/a" where the data cannot support a metric (reasons in ``not_available``)."""
    claims = report["claims"]
    fams = ("in_distribution", "heldout")

    def row(label: str, get: Any) -> tuple[str, str, str]:
        cells = []
        for fam in fams:
            try:
                cells.append(_pct(get(claims[fam])))
            except KeyError:
                cells.append("n/a")
        return (label, cells[0], cells[1])

    rows = [
        ("image->report R@1", _pct(report["retrieval"]["R@1"]), ""),
        ("image->report R@5", _pct(report["retrieval"]["R@5"]), ""),
        row("claim accuracy (top-1)", lambda c: c["claim_accuracy"]),
        row("  correct claim affirmative", lambda c: c["accuracy_by_polarity"]["affirmative"]),
        row("  correct claim negated", lambda c: c["accuracy_by_polarity"]["negated"]),
        row("  contralateral negation", lambda c: c["accuracy_by_polarity"]["contralateral"]),
        row("affirmative - negated gap (pp)", lambda c: c["affirmative_negation_gap"]),
        row("  same gap, existence-only sets (pp)", lambda c: c["existence_only_gap"]),
    ]
    for attr in ("existence", "laterality", "severity"):
        rows.append(
            row(f"pairwise, {attr} flipped", lambda c, a=attr: c["pairwise_by_attribute"][a])
        )
    freeform = report.get("freeform") or {}
    for label, get in (
        ("free-form claim accuracy", lambda f: f["claim_accuracy"]),
        (
            "  free-form, correct claim affirmative",
            lambda f: f["accuracy_by_polarity"]["affirmative"],
        ),
        ("  free-form, correct claim negated", lambda f: f["accuracy_by_polarity"]["negated"]),
    ):
        rows.append((label, _pct(get(freeform)) if freeform else "n/a", ""))
    mcq = report["polarity_mcq"]
    rows.append(("polarity MCQ, negated wording", _pct(mcq["negated"]), ""))
    rows.append(("polarity MCQ, affirmative wording", _pct(mcq["affirmative"]), ""))
    if "retention" in report:
        rows.append(("retention (cosine on everyday sentences)", _pct(report["retention"]), ""))
    return rows


MCQ_FORMS: tuple[str, ...] = ("negated", "affirmative")


def polarity_mcqs(data: EvalStudies, *, seed: int = 0) -> list[tuple[int, Study, Any]]:
    """``(row, study, PolarityMCQ)`` of each study of ``data`` that passes the polarity
    row filter, its options worded with ``seed``."""
    from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter

    cfg = PolarityConfig(seed=seed)
    return [
        (j, s, make_mcq(s, cfg, data.split))
        for j, s in enumerate(data.studies)
        if passes_row_filter(s, cfg)
    ]


def mcq_texts(questions: Sequence[tuple[int, Study, Any]], form: str) -> list[str]:
    """Every option of ``questions`` in one wording (``negated`` or ``affirmative``)."""
    return [t for _, _, q in questions for t in getattr(q, f"{form}_options")]


def polarity_mcq_items(
    model: DualEncoder, data: EvalStudies, *, seed: int = 0, table: TextTable | None = None
) -> dict[str, list[Any]]:
    """Per polarity-controlled MCQ (one per study that passes the row filter),
    column-wise: ``id`` (study), ``patient``, and ``negated`` / ``affirmative``: is the
    correct option top-scored when absence is worded by negation / by an affirmative
    equivalent (NAST's MedNega-CXR comparison)? ``table``: the options' embeddings,
    already computed (:func:`embed_texts`)."""
    questions = polarity_mcqs(data, seed=seed)
    out: dict[str, list[Any]] = {
        "id": [s.study_id for _, s, _ in questions],
        "patient": [s.patient_id for _, s, _ in questions],
    }
    for form in MCQ_FORMS:
        texts = mcq_texts(questions, form)
        forms = table or embed_texts(model, texts)
        hits = []
        for j, _, q in questions:
            options = _vectors(forms, getattr(q, f"{form}_options"))
            hits.append(int((options @ data.images[j].float()).argmax()) == q.correct_index)
        out[form] = hits
    return out


def _mcq_estimates(items: dict[str, list[Any]]) -> dict[str, Estimate | None]:
    if not items["id"]:
        return dict.fromkeys(MCQ_FORMS)
    return {
        form: proportion(np.array(items[form], dtype=np.float64), clusters=items["patient"])
        for form in MCQ_FORMS
    }


def polarity_mcq_accuracy(
    model: DualEncoder, data: EvalStudies, *, seed: int = 0
) -> dict[str, Estimate | None]:
    """Accuracy on the polarity-controlled MCQs (:func:`polarity_mcq_items`), a
    proportion over questions clustered by patient, per wording."""
    return _mcq_estimates(polarity_mcq_items(model, data, seed=seed))
