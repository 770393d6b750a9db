"""Zero-shot evaluation of a dual encoder on a phantom world's held-out patients.

- image -> report retrieval, R@1 and R@5 over the split's distinct reports;
- claim accuracy (top-1 over the claim set) and pairwise accuracy by flipped attribute;
- accuracy when the correct claim is affirmative vs negated (and contralateral), and the
  affirmative-negation gap;
- in-distribution vs held-out phrasing families;
- linear probes on image embeddings, so that text-side failures are not blamed on images.

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
from typing import Any, Protocol

import numpy as np
import torch

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import ClaimSet
from mechtune.eval.metrics import (
    Estimate,
    bootstrap_mean_difference,
    claim_hits,
    linear_probe_accuracy,
    pairwise_hits,
    proportion,
    retrieval_hits,
)
from mechtune.sim.world import World


class DualEncoder(Protocol):
    def encode_images(self, images: Any) -> torch.Tensor: ...
    def encode_texts(self, texts: Any) -> torch.Tensor: ...


def embed_images(model: DualEncoder, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            chunk = np.ascontiguousarray(images[lo : lo + batch_size])
            out.append(model.encode_images(torch.from_numpy(chunk)))
    return torch.cat(out)


def embed_texts(model: DualEncoder, texts: list[str]) -> tuple[torch.Tensor, dict[str, int]]:
    unique = sorted(set(texts))
    with torch.no_grad():
        table = model.encode_texts(unique)
    return table, {t: i for i, t in enumerate(unique)}


def retrieval_hit_table(
    model: DualEncoder, world: World, idx: np.ndarray, image_emb: torch.Tensor
) -> dict[str, np.ndarray]:
    """Per query study of ``idx``: is its own report among the top k of the split's
    distinct reports? ``{"R@1": bool [Q], "R@5": bool [Q]}``."""
    reports = [world.studies[i].report or "" for i in idx]
    table, index = embed_texts(model, reports)
    sim = (image_emb @ table.T).numpy()
    target = np.array([index[r] for r in reports])
    return {f"R@{k}": retrieval_hits(sim, target, k) for k in (1, 5)}


def claim_scores(
    model: DualEncoder,
    claim_sets: list[ClaimSet],
    study_row: dict[str, int],
    image_emb: torch.Tensor,
) -> list[np.ndarray]:
    texts = [t for cs in claim_sets for t in cs.candidates]
    table, index = embed_texts(model, texts)
    scores = []
    for cs in claim_sets:
        cand = table[[index[t] for t in cs.candidates]]
        scores.append((cand @ image_emb[study_row[cs.study_id]]).numpy())
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
    with a patient bootstrap."""
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
        acc = {k: proportion(top1[v], clusters=patients[v]) for k, v in groups.items()}
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


def _gap(top1: np.ndarray, patients: np.ndarray, a: np.ndarray, b: np.ndarray) -> Estimate:
    """Accuracy of claim sets ``a`` minus that of ``b``, with a patient bootstrap."""
    return bootstrap_mean_difference(
        top1[a], top1[b], clusters_a=list(patients[a]), clusters_b=list(patients[b])
    )


def claim_items(claim_sets: list[ClaimSet], scores: list[np.ndarray]) -> dict[str, list[Any]]:
    """Per claim set, column-wise: ``id``, ``patient``, ``heldout`` (phrasing family),
    ``slice`` (:func:`claim_slice`) and ``correct`` (top-1 hit), for paired comparisons."""
    return {
        "id": [cs.claim_set_id for cs in claim_sets],
        "patient": [cs.patient_id for cs in claim_sets],
        "heldout": [cs.heldout_family for cs in claim_sets],
        "slice": [claim_slice(cs) for cs in claim_sets],
        "correct": claim_hits(scores).tolist(),
    }


def probe_labels(world: World, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Targets for linear probes: presence per condition, side and severity of findings."""
    onto = load_ontology()
    labels: dict[str, list[str]] = defaultdict(list)
    for i in idx:
        present = {f.condition: f for f in world.studies[i].present()}
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


def evaluate_zero_shot(
    model: DualEncoder,
    world: World,
    *,
    split: str = "test",
    contextual: ContextualConfig | None = None,
    probes: bool = True,
) -> dict[str, Any]:
    """All sanity figures on one split of a world, with the per-item correctness under
    ``"items"`` (``claims``: :func:`claim_items`; ``retrieval`` and ``polarity_mcq``:
    ``id`` (study), ``patient`` and one bool list per metric)."""
    contextual = contextual or ContextualConfig(
        seed=world.config.seed, split_fractions=world.config.split_fractions
    )
    idx = world.indices(split)
    image_emb = embed_images(model, world.images[idx])
    row = {world.studies[i].study_id: j for j, i in enumerate(idx)}
    claim_sets = [cs for i in idx for cs in study_records(world.studies[i], contextual)[0]]
    scores = claim_scores(model, claim_sets, row, image_emb)
    patients = [world.studies[i].patient_id for i in idx]
    hits = retrieval_hit_table(model, world, idx, image_emb)
    mcq_items = polarity_mcq_items(model, world, split=split, image_emb=image_emb)
    report: dict[str, Any] = {
        "split": split,
        "studies": len(idx),
        "retrieval": {name: proportion(h, clusters=patients) for name, h in hits.items()},
        "claims": summarise_claims(claim_sets, scores),
        "polarity_mcq": _mcq_estimates(mcq_items),
        "items": {
            "claims": claim_items(claim_sets, scores),
            "retrieval": {
                "id": [world.studies[i].study_id for i in idx],
                "patient": patients,
                **{name: h.tolist() for name, h in hits.items()},
            },
            "polarity_mcq": mcq_items,
        },
    }
    if probes:
        train_idx = world.indices("train")
        train_emb = embed_images(model, world.images[train_idx])
        report["probes"] = linear_probes(
            train_emb, probe_labels(world, train_idx), image_emb, probe_labels(world, idx)
        )
    return report


def summary_rows(report: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(metric, in-distribution families, held-out families) rows, in percent with CIs."""
    claims = report["claims"]
    fams = ("in_distribution", "heldout")

    def row(label: str, get: Any) -> tuple[str, str, str]:
        cells = []
        for fam in fams:
            try:
                cells.append(get(claims[fam]).pct())
            except KeyError:
                cells.append("n/a")
        return (label, cells[0], cells[1])

    rows = [
        ("image->report R@1", report["retrieval"]["R@1"].pct(), ""),
        ("image->report R@5", report["retrieval"]["R@5"].pct(), ""),
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
    if "polarity_mcq" in report:
        mcq = report["polarity_mcq"]
        rows.append(("polarity MCQ, negated wording", mcq["negated"].pct(), ""))
        rows.append(("polarity MCQ, affirmative wording", mcq["affirmative"].pct(), ""))
    return rows


MCQ_FORMS: tuple[str, ...] = ("negated", "affirmative")


def polarity_mcq_items(
    model: DualEncoder, world: World, *, split: str = "test", image_emb: torch.Tensor | None = None
) -> dict[str, list[Any]]:
    """Per polarity-controlled MCQ (one per study that passes the row filter),
    column-wise: ``id`` (study), ``patient``, and ``negated`` / ``affirmative``: is the
    correct option top-scored when absence is worded by negation / by an affirmative
    equivalent (NAST's MedNega-CXR comparison)?"""
    from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter

    cfg = PolarityConfig(seed=world.config.seed, split_fractions=world.config.split_fractions)
    idx = world.indices(split)
    emb = image_emb if image_emb is not None else embed_images(model, world.images[idx])
    questions = [
        (j, int(i), make_mcq(world.studies[i], cfg, split))
        for j, i in enumerate(idx)
        if passes_row_filter(world.studies[i], cfg)
    ]
    out: dict[str, list[Any]] = {
        "id": [world.studies[i].study_id for _, i, _ in questions],
        "patient": [world.studies[i].patient_id for _, i, _ in questions],
    }
    for form in MCQ_FORMS:
        texts = [t for _, _, q in questions for t in getattr(q, f"{form}_options")]
        table, index = embed_texts(model, texts) if texts else (torch.empty(0), {})
        hits = []
        for j, _, q in questions:
            options = table[[index[t] for t in getattr(q, f"{form}_options")]]
            hits.append(int((options @ emb[j]).argmax()) == q.correct_index)
        out[form] = hits
    return out


def _mcq_estimates(items: dict[str, list[Any]]) -> dict[str, Estimate]:
    return {
        form: proportion(np.array(items[form], dtype=np.float64), clusters=items["patient"])
        for form in MCQ_FORMS
    }


def polarity_mcq_accuracy(
    model: DualEncoder, world: World, *, split: str = "test", image_emb: torch.Tensor | None = None
) -> dict[str, Estimate]:
    """Accuracy on the polarity-controlled MCQs (:func:`polarity_mcq_items`), a
    proportion over questions clustered by patient, per wording."""
    return _mcq_estimates(polarity_mcq_items(model, world, split=split, image_emb=image_emb))
