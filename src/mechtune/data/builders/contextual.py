"""The contextual attribute-level negation set (NAST, arXiv 2602.12498, §3).

For every structured fact of a study, counterfactuals change exactly one attribute:

- existence: present <-> absent ("Small left pleural effusion." vs "No left pleural effusion.");
- laterality: left <-> right;
- severity: small/moderate/large or mild/moderate/severe.

Three kinds of correct claim come out of a study:

- a present finding, stated affirmatively;
- a **contralateral negation** of a lateral finding ("No right pneumothorax." for a left
  pneumothorax), the sharpest blind spot found in the phantom probe;
- a sampled absent condition, stated with a negation cue.

Each becomes a claim set (the correct claim plus up to K single-attribute negatives) and
each study also gets one *single negated caption*: a true caption with a negation in it.

Phrasing families: train-split patients only ever see train families. Validation and test
patients get every fact twice, once in a train family (in-distribution) and once in a
held-out family, so the two can be compared on the same facts.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from mechtune.data.builders.common import (
    BuildResult,
    Progress,
    SplitOf,
    TableSet,
    counted,
    finish,
    study_split,
)
from mechtune.data.ontology import CueFamily, load_ontology
from mechtune.data.schema import Caption, ClaimSet, Finding, Study
from mechtune.data.splits import DEFAULT_FRACTIONS, check_fractions, record_rng
from mechtune.data.text import realise
from mechtune.errors import ConfigError

_OTHER_SIDE = {"left": "right", "right": "left"}


@dataclass(frozen=True)
class ContextualConfig:
    """Knobs of the contextual builder. ``max_negatives`` is K (None keeps all).

    ``absent_per_study`` absent conditions are sampled per study, each stated on one side
    with chance ``lateral_absent_rate`` when the condition has sides; ``contralateral``
    adds "No right X." claims for left findings; ``captions`` writes one negated caption
    per study (which needs ``absent_per_study`` >= 1); ``heldout_eval`` adds a held-out
    family copy for validation and test patients.
    """

    seed: int = 0
    max_negatives: int | None = 3
    absent_per_study: int = 2
    lateral_absent_rate: float = 0.5
    contralateral: bool = True
    heldout_eval: bool = True
    captions: bool = True
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    def __post_init__(self) -> None:
        if self.max_negatives is not None and self.max_negatives < 1:
            raise ConfigError(f"max_negatives must be >= 1 or None, got {self.max_negatives}")
        if self.absent_per_study < 0:
            raise ConfigError(f"absent_per_study must be >= 0, got {self.absent_per_study}")
        if not 0.0 <= self.lateral_absent_rate <= 1.0:
            raise ConfigError(
                f"lateral_absent_rate must be in [0, 1], got {self.lateral_absent_rate}"
            )
        if self.captions and self.absent_per_study < 1:
            # A caption pairs a present finding with a sampled absence (_caption).
            raise ConfigError(
                "captions=True needs absent_per_study >= 1 (every caption states a sampled "
                f"absence), got absent_per_study={self.absent_per_study}; set captions=False"
            )
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ContextualConfig:
        return cls(**data)


@dataclass(frozen=True)
class _Pool:
    """The phrasing families one claim set may draw from."""

    heldout: bool
    affirmative: tuple[CueFamily, ...]
    negation: dict[str, tuple[CueFamily, ...]]


def _pools() -> tuple[_Pool, _Pool]:
    onto = load_ontology()
    pools = []
    for heldout in (False, True):
        negation = {
            c.id: onto.families_of("negation", heldout=heldout, condition=c.id)
            for c in onto.pathologies
        }
        pools.append(_Pool(heldout, onto.families_of("affirmative", heldout=heldout), negation))
    return pools[0], pools[1]


def _select(
    options: list[tuple[str, Finding]], k: int | None, rng: random.Random
) -> list[tuple[str, Finding]]:
    """Pick up to k negatives, covering as many flipped attributes as possible."""
    if k is None or len(options) <= k:
        return options
    by_attr: dict[str, list[tuple[str, Finding]]] = {}
    for opt in options:
        by_attr.setdefault(opt[0], []).append(opt)
    for group in by_attr.values():
        rng.shuffle(group)
    chosen: list[tuple[str, Finding]] = []
    while len(chosen) < k:
        for group in by_attr.values():
            if group and len(chosen) < k:
                chosen.append(group.pop())
    order = {id(o): i for i, o in enumerate(options)}
    return sorted(chosen, key=lambda o: order[id(o)])


def _counterfactuals(kind: str, fact: Finding) -> tuple[Finding, list[tuple[str, Finding]]]:
    """The correct finding to state, and its single-attribute counterfactuals."""
    cond = load_ontology().condition(fact.condition)
    c, side = fact.condition, fact.laterality
    if kind == "present":
        options: list[tuple[str, Finding]] = [
            ("existence", Finding(c, False, side if side != "bilateral" else None))
        ]
        if side in _OTHER_SIDE:
            options.append(
                ("laterality", Finding(c, True, _OTHER_SIDE[side], fact.zone, fact.severity))
            )
        if fact.severity is not None:
            options.extend(
                ("severity", Finding(c, True, side, fact.zone, sev))
                for sev in cond.severities
                if sev != fact.severity
            )
        return fact, options
    if kind == "contralateral":
        assert side in _OTHER_SIDE
        other = _OTHER_SIDE[side]
        correct = Finding(c, False, other)
        return correct, [
            ("existence", Finding(c, True, other, fact.zone, fact.severity)),
            ("laterality", Finding(c, False, side)),
        ]
    # An absent condition: the only single-attribute change is to assert it.
    return fact, [("existence", Finding(c, True, side))]


def _facts(study: Study, config: ContextualConfig, rng: random.Random) -> list[tuple[str, Finding]]:
    onto = load_ontology()
    facts: list[tuple[str, Finding]] = []
    present = [f for f in study.present() if not onto.condition(f.condition).summary]
    for f in present:
        facts.append(("present", f))
        if config.contralateral and f.laterality in _OTHER_SIDE:
            other = _OTHER_SIDE[f.laterality]
            clash = any(
                g.condition == f.condition and g.laterality in (other, "bilateral", None)
                for g in present
                if g is not f
            )
            if not clash:
                facts.append(("contralateral", f))
    absent = [f for f in study.absent() if not onto.condition(f.condition).summary]
    for f in rng.sample(absent, min(config.absent_per_study, len(absent))):
        sides = [s for s in onto.condition(f.condition).laterality if s in _OTHER_SIDE]
        if f.laterality is None and sides and rng.random() < config.lateral_absent_rate:
            f = Finding(f.condition, False, rng.choice(sides))
        facts.append(("absent", f))
    return facts


def _claim_set(
    study: Study,
    split: str,
    index: int,
    kind: str,
    fact: Finding,
    pool: _Pool,
    config: ContextualConfig,
    rng: random.Random,
) -> ClaimSet:
    aff = rng.choice(pool.affirmative)
    neg = rng.choice(pool.negation[fact.condition])
    correct, options = _counterfactuals(kind, fact)
    chosen = _select(options, config.max_negatives, rng)

    def say(f: Finding) -> tuple[str, str]:
        family = aff if f.present else neg
        return realise(f, family), family.id

    correct_text, correct_family = say(correct)
    negatives = [say(f) for _, f in chosen]
    return ClaimSet(
        claim_set_id=f"{study.study_id}-c{index}-{'h' if pool.heldout else 'i'}",
        study_id=study.study_id,
        patient_id=study.patient_id,
        condition=fact.condition,
        correct=correct_text,
        negatives=tuple(t for t, _ in negatives),
        flipped=tuple(a for a, _ in chosen),
        families=(correct_family, *(fam for _, fam in negatives)),
        polarity="affirmative" if correct.present else "negated",
        heldout_family=pool.heldout,
        contralateral=kind == "contralateral",
        split=split,
    )


def _caption(
    study: Study, split: str, facts: list[tuple[str, Finding]], pool: _Pool, rng: random.Random
) -> Caption | None:
    """One true caption that contains a negation: a present finding plus an absence."""
    stated = [f for kind, f in facts if kind == "present"][:1]
    absences = [f for kind, f in facts if kind == "absent"][: 2 - len(stated)]
    if not absences:
        return None
    parts = []
    for f in (*stated, *absences):
        family = rng.choice(pool.affirmative if f.present else pool.negation[f.condition])
        parts.append((f, realise(f, family), family.id))
    return Caption(
        caption_id=f"{study.study_id}-cap-{'h' if pool.heldout else 'i'}",
        study_id=study.study_id,
        patient_id=study.patient_id,
        text=" ".join(text for _, text, _ in parts),
        conditions=tuple(f.condition for f, _, _ in parts),
        polarities=tuple("affirmative" if f.present else "negated" for f, _, _ in parts),
        families=tuple(fam for _, _, fam in parts),
        heldout_family=pool.heldout,
        split=split,
    )


def study_records(
    study: Study,
    config: ContextualConfig,
    pools: tuple[_Pool, _Pool] | None = None,
    split_of: SplitOf | None = None,
) -> tuple[list[ClaimSet], list[Caption]]:
    """All claim sets and captions of one study (what the builder writes for it); the
    split is ``split_of(study)`` when given (see :func:`study_split`)."""
    in_dist, heldout = pools or _pools()
    split = study_split(study, config.seed, config.split_fractions, split_of)
    rng = record_rng(config.seed, "contextual", study.study_id)
    facts = _facts(study, config, rng)
    claim_sets: list[ClaimSet] = []
    captions: list[Caption] = []
    for pool in [in_dist, heldout] if split != "train" and config.heldout_eval else [in_dist]:
        for index, (kind, fact) in enumerate(facts):
            claim_sets.append(_claim_set(study, split, index, kind, fact, pool, config, rng))
        if config.captions:
            caption = _caption(study, split, facts, pool, rng)
            if caption is not None:
                captions.append(caption)
    return claim_sets, captions


def build_contextual(
    studies: Iterable[Study],
    out_dir: str | Path,
    config: ContextualConfig | None = None,
    *,
    fmt: str = "parquet",
    max_pairs: int | None = None,
    progress: Progress | None = None,
    source: dict[str, Any] | None = None,
    split_of: SplitOf | None = None,
) -> BuildResult:
    """Write ``claims`` and ``captions`` tables plus a manifest to ``out_dir``.

    Stops early once ``max_pairs`` (correct, negative) pairs are written.
    """
    config = config or ContextualConfig()
    out = Path(out_dir)
    pools = _pools()
    names = ["claims", "captions"] if config.captions else ["claims"]
    pairs = 0
    studies_seen = 0
    by_attr: Counter[str] = Counter()
    by_polarity: Counter[str] = Counter()
    contralateral = 0
    with TableSet(out, names, fmt) as tables:
        for study in counted(studies, progress):
            studies_seen += 1
            claim_sets, captions = study_records(study, config, pools, split_of)
            for claim_set in claim_sets:
                tables.write("claims", claim_set)
                pairs += len(claim_set.negatives)
                by_attr.update(claim_set.flipped)
                by_polarity[claim_set.polarity] += 1
                contralateral += claim_set.contralateral
            for caption in captions:
                tables.write("captions", caption)
            if max_pairs is not None and pairs >= max_pairs:
                break
    counts = {
        "studies": studies_seen,
        "pairs": pairs,
        "pairs_by_flipped_attribute": dict(sorted(by_attr.items())),
        "claim_sets_by_polarity": dict(sorted(by_polarity.items())),
        "contralateral_claim_sets": contralateral,
        "tables": tables.counts(),
    }
    result = BuildResult(out, "contextual", tables.files, counts)
    return finish(result, config=config.to_dict(), extra={"source": source or {}})
