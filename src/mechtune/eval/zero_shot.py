"""Zero-shot evaluation of a dual encoder on a phantom world's held-out patients.

- image -> report retrieval, R@1 and R@5 over the split's distinct reports;
- claim accuracy (top-1 over the claim set) and pairwise accuracy by flipped attribute;
- accuracy when the correct claim is affirmative vs negated (and contralateral), and the
  affirmative-negation gap;
- in-distribution vs held-out phrasing families;
- linear probes on image embeddings, so that text-side failures are not blamed on images.
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
    bootstrap_mean,
    claim_hits,
    linear_probe_accuracy,
    pairwise_hits,
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


def retrieval(
    model: DualEncoder, world: World, idx: np.ndarray, image_emb: torch.Tensor
) -> dict[str, Estimate]:
    reports = [world.studies[i].report or "" for i in idx]
    table, index = embed_texts(model, reports)
    sim = (image_emb @ table.T).numpy()
    target = np.array([index[r] for r in reports])
    return {f"R@{k}": bootstrap_mean(retrieval_hits(sim, target, k)) for k in (1, 5)}


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


def summarise_claims(claim_sets: list[ClaimSet], scores: list[np.ndarray]) -> dict[str, Any]:
    """Top-1 and pairwise accuracies, sliced every way the papers report them."""
    top1 = claim_hits(scores)
    pairs = pairwise_hits(scores)
    out: dict[str, Any] = {}
    for family_name, keep in (("in_distribution", False), ("heldout", True)):
        mask = np.array([cs.heldout_family == keep for cs in claim_sets])
        if not mask.any():
            continue
        sel = [i for i in range(len(claim_sets)) if mask[i]]
        by_attr: dict[str, list[bool]] = defaultdict(list)
        for i in sel:
            for hit, attr in zip(pairs[i], claim_sets[i].flipped, strict=True):
                by_attr[attr].append(bool(hit))
        groups = {
            "affirmative": [i for i in sel if claim_sets[i].polarity == "affirmative"],
            "negated": [
                i
                for i in sel
                if claim_sets[i].polarity == "negated" and not claim_sets[i].contralateral
            ],
            "contralateral": [i for i in sel if claim_sets[i].contralateral],
        }
        acc = {k: bootstrap_mean(top1[v]) for k, v in groups.items()}
        gap = bootstrap_mean_diff(top1[groups["affirmative"]], top1[groups["negated"]])
        # Like for like: sets whose only negative is the polarity-flipped statement, so
        # affirmative and negated sets are equally hard apart from the wording.
        existence = {
            k: [i for i in v if claim_sets[i].flipped == ("existence",)]
            for k, v in groups.items()
            if k != "contralateral"
        }
        existence_gap = bootstrap_mean_diff(
            top1[existence["affirmative"]], top1[existence["negated"]]
        )
        out[family_name] = {
            "claim_accuracy": bootstrap_mean(top1[sel]),
            "pairwise_by_attribute": {a: bootstrap_mean(v) for a, v in sorted(by_attr.items())},
            "accuracy_by_polarity": acc,
            "affirmative_negation_gap": gap,
            "existence_only_gap": existence_gap,
            "claim_sets": len(sel),
        }
    return out


def bootstrap_mean_diff(
    a: np.ndarray, b: np.ndarray, n_boot: int = 1000, seed: int = 0
) -> Estimate:
    """Difference of two independent means with a percentile bootstrap interval."""
    if len(a) == 0 or len(b) == 0:
        return Estimate(float("nan"), float("nan"), float("nan"), 0)
    rng = np.random.default_rng(seed)
    x, y = np.asarray(a, float), np.asarray(b, float)
    diffs = x[rng.integers(0, len(x), (n_boot, len(x)))].mean(1) - y[
        rng.integers(0, len(y), (n_boot, len(y)))
    ].mean(1)
    low, high = np.quantile(diffs, [0.025, 0.975])
    return Estimate(float(x.mean() - y.mean()), float(low), float(high), len(x) + len(y))


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
    """All sanity figures on one split of a world."""
    contextual = contextual or ContextualConfig(
        seed=world.config.seed, split_fractions=world.config.split_fractions
    )
    idx = world.indices(split)
    image_emb = embed_images(model, world.images[idx])
    row = {world.studies[i].study_id: j for j, i in enumerate(idx)}
    claim_sets = [cs for i in idx for cs in study_records(world.studies[i], contextual)[0]]
    scores = claim_scores(model, claim_sets, row, image_emb)
    report: dict[str, Any] = {
        "split": split,
        "studies": len(idx),
        "retrieval": retrieval(model, world, idx, image_emb),
        "claims": summarise_claims(claim_sets, scores),
        "polarity_mcq": polarity_mcq_accuracy(model, world, split=split, image_emb=image_emb),
    }
    if probes:
        train_idx = world.indices("train")
        train_emb = embed_images(model, world.images[train_idx])
        report["probes"] = linear_probes(
            train_emb, probe_labels(world, train_idx), image_emb, probe_labels(world, idx)
        )
    return report


def to_jsonable(obj: Any) -> Any:
    """Estimates and nested dicts as plain JSON values."""
    if isinstance(obj, Estimate):
        return obj.to_dict()
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    return obj


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


def polarity_mcq_accuracy(
    model: DualEncoder, world: World, *, split: str = "test", image_emb: torch.Tensor | None = None
) -> dict[str, Estimate]:
    """Accuracy on the polarity-controlled MCQs: the same questions with absence worded
    by negation vs by affirmative equivalents (NAST's MedNega-CXR comparison)."""
    from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter

    cfg = PolarityConfig(seed=world.config.seed, split_fractions=world.config.split_fractions)
    idx = world.indices(split)
    emb = image_emb if image_emb is not None else embed_images(model, world.images[idx])
    questions = [
        (j, make_mcq(world.studies[i], cfg, split))
        for j, i in enumerate(idx)
        if passes_row_filter(world.studies[i], cfg)
    ]
    out: dict[str, Estimate] = {}
    for form in ("negated", "affirmative"):
        texts = [t for _, q in questions for t in getattr(q, f"{form}_options")]
        table, index = embed_texts(model, texts) if texts else (torch.empty(0), {})
        hits = []
        for j, q in questions:
            options = table[[index[t] for t in getattr(q, f"{form}_options")]]
            hits.append(int((options @ emb[j]).argmax()) == q.correct_index)
        out[form] = bootstrap_mean(np.array(hits, dtype=float))
    return out
