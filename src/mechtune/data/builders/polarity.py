"""Polarity-controlled multiple-choice pairs, MedNega-CXR style (NAST, arXiv 2602.12498).

From each labelled study that passes the row filter (among the 13 pathologies' non-missing
labels, at least ``min_absent`` absent and ``min_present`` present), sample
``n_conditions`` conditions. The options are the true label vector plus distinct hard
negatives that each flip 1 to ``max_flips`` conditions. Every option is written twice:

- *negated*: absence stated with a negation cue ("cardiomegaly, pleural effusion and no
  pulmonary edema");
- *affirmative*: the same sentence with each negation replaced by an affirmative
  equivalent of absence ("... and normal pulmonary vascularity").

The wording comes from phrasing families, deterministic by seed. The released NAST code
words options with an LLM instead; ``OptionRewriter`` is the hook to plug one in.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

from mechtune.data.builders.common import (
    BuildResult,
    Progress,
    SplitOf,
    TableSet,
    counted,
    finish,
    study_split,
)
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding, MCQPair, Study
from mechtune.data.splits import DEFAULT_FRACTIONS, check_fractions, record_rng
from mechtune.data.text import capitalise, realise, realise_absence_affirmative
from mechtune.errors import ConfigError

FAMILY_SETS: tuple[str, ...] = ("all", "train", "heldout")


class OptionRewriter(Protocol):
    """Rewrites a templated option, e.g. with an LLM, keeping its meaning and polarity.

    ``form`` is "negated" or "affirmative". The polarity check runs on the result.
    """

    def __call__(
        self, text: str, *, conditions: Sequence[str], labels: Sequence[int], form: str
    ) -> str: ...


@dataclass(frozen=True)
class PolarityConfig:
    """Knobs of the polarity builder (NAST's defaults).

    A study passes the row filter with at least ``min_present`` present and ``min_absent``
    absent pathologies; ``n_conditions`` of its labelled pathologies are sampled, and the
    ``n_options`` options are the truth plus distinct vectors 1..``max_flips`` flips away
    (so ``n_options`` <= 1 + sum_k C(n_conditions, k), k = 1..max_flips). ``families``:
    phrasing families "all", "train" or "heldout". Checked at construction (``ConfigError``).
    """

    seed: int = 0
    n_conditions: int = 3
    n_options: int = 4
    min_present: int = 2
    min_absent: int = 3
    max_flips: int = 3
    families: str = "all"
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    def __post_init__(self) -> None:
        n_pathologies = len(load_ontology().pathologies)
        if not 1 <= self.n_conditions <= n_pathologies:
            raise ConfigError(
                f"n_conditions must be in [1, {n_pathologies}] (the pathologies), "
                f"got {self.n_conditions}"
            )
        if not 1 <= self.max_flips <= self.n_conditions:
            raise ConfigError(
                f"max_flips must be in [1, n_conditions = {self.n_conditions}], "
                f"got {self.max_flips}"
            )
        # The options are the truth plus distinct vectors 1..max_flips flips away from it.
        reachable = 1 + sum(math.comb(self.n_conditions, k) for k in range(1, self.max_flips + 1))
        if not 2 <= self.n_options <= reachable:
            raise ConfigError(
                f"n_options must be in [2, {reachable}]: n_conditions = {self.n_conditions} "
                f"with max_flips = {self.max_flips} allow only {reachable} distinct options, "
                f"got n_options = {self.n_options}"
            )
        if self.min_present < 0 or self.min_absent < 0:
            raise ConfigError(
                f"min_present and min_absent must be >= 0, got {self.min_present}, "
                f"{self.min_absent}"
            )
        if not self.n_conditions <= self.min_present + self.min_absent <= n_pathologies:
            raise ConfigError(
                f"min_present + min_absent must be in [n_conditions = {self.n_conditions}, "
                f"{n_pathologies}] (no study has more labelled pathologies), got "
                f"{self.min_present} + {self.min_absent}"
            )
        if self.families not in FAMILY_SETS:
            raise ConfigError(f"families must be one of {FAMILY_SETS}, got {self.families!r}")
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["split_fractions"] = list(self.split_fractions)
        return d


def passes_row_filter(study: Study, config: PolarityConfig) -> bool:
    """NAST's filter: enough present and absent labels among the 13 pathologies."""
    labels = [study.label(c.id) for c in load_ontology().pathologies]
    return (
        sum(1 for v in labels if v is True) >= config.min_present
        and sum(1 for v in labels if v is False) >= config.min_absent
    )


def _join(clauses: list[str]) -> str:
    body = clauses[0] if len(clauses) == 1 else ", ".join(clauses[:-1]) + " and " + clauses[-1]
    return capitalise(body) + "."


def _heldout_filter(families: str) -> bool | None:
    return {"all": None, "train": False, "heldout": True}[families]


def make_mcq(
    study: Study, config: PolarityConfig, split: str, rewriter: OptionRewriter | None = None
) -> MCQPair:
    """One MCQ pair for a study that passes the row filter."""
    onto = load_ontology()
    rng = record_rng(config.seed, "polarity", study.study_id)
    available = [c.id for c in onto.pathologies if study.label(c.id) is not None]
    conditions = rng.sample(available, config.n_conditions)
    truth = tuple(int(bool(study.label(c))) for c in conditions)

    vectors = [truth]
    while len(vectors) < config.n_options:
        flips = rng.sample(range(config.n_conditions), rng.randint(1, config.max_flips))
        candidate = tuple(1 - v if i in flips else v for i, v in enumerate(truth))
        if candidate not in vectors:
            vectors.append(candidate)
    correct_index = rng.randrange(config.n_options)
    wrong = vectors[1:]
    rng.shuffle(wrong)
    labels = [*wrong[:correct_index], truth, *wrong[correct_index:]]

    heldout = _heldout_filter(config.families)
    caff = rng.choice(onto.families_of("clause_affirmative", heldout=heldout))
    cneg_pool = [
        f
        for f in onto.families_of("clause_negation", heldout=heldout)
        if all(f.suits(c) for c in conditions)
    ]
    cneg = rng.choice(cneg_pool)
    caffeq = rng.choice(onto.families_of("clause_absence_affirmative"))
    equivalent = {c: rng.randrange(len(onto.condition(c).absent_affirmative)) for c in conditions}

    negated, affirmative = [], []
    for vec in labels:
        neg_clauses, aff_clauses = [], []
        for cond, value in zip(conditions, vec, strict=True):
            if value:
                text = realise(Finding(cond, True), caff)
                neg_clauses.append(text)
                aff_clauses.append(text)
            else:
                neg_clauses.append(realise(Finding(cond, False), cneg))
                aff_clauses.append(realise_absence_affirmative(cond, caffeq.id, equivalent[cond]))
        neg_text, aff_text = _join(neg_clauses), _join(aff_clauses)
        if rewriter is not None:
            neg_text = rewriter(neg_text, conditions=conditions, labels=vec, form="negated")
            aff_text = rewriter(aff_text, conditions=conditions, labels=vec, form="affirmative")
        negated.append(neg_text)
        affirmative.append(aff_text)

    return MCQPair(
        mcq_id=f"{study.patient_id}-{study.study_id}",
        study_id=study.study_id,
        patient_id=study.patient_id,
        question=rng.choice(onto.mcq_stems),
        conditions=tuple(conditions),
        labels=tuple(labels),
        negated_options=tuple(negated),
        affirmative_options=tuple(affirmative),
        correct_index=correct_index,
        families=(caff.id, cneg.id, caffeq.id),
        split=split,
    )


def build_polarity(
    studies: Iterable[Study],
    out_dir: str | Path,
    config: PolarityConfig | None = None,
    *,
    fmt: str = "parquet",
    rewriter: OptionRewriter | None = None,
    progress: Progress | None = None,
    source: dict[str, Any] | None = None,
    split_of: SplitOf | None = None,
) -> BuildResult:
    """Write the ``mcq`` table plus a manifest; studies failing the row filter are counted."""
    config = config or PolarityConfig()
    out = Path(out_dir)
    seen = 0
    filtered = 0
    correct_positions: Counter[int] = Counter()
    with TableSet(out, ["mcq"], fmt) as tables:
        for study in counted(studies, progress):
            seen += 1
            if not passes_row_filter(study, config):
                filtered += 1
                continue
            split = study_split(study, config.seed, config.split_fractions, split_of)
            mcq = make_mcq(study, config, split, rewriter)
            correct_positions[mcq.correct_index] += 1
            tables.write("mcq", mcq)
    counts = {
        "studies": seen,
        "filtered_out_by_row_filter": filtered,
        "correct_index": {str(k): v for k, v in sorted(correct_positions.items())},
        "tables": tables.counts(),
    }
    result = BuildResult(out, "polarity", tables.files, counts)
    extra = {"source": source or {}, "rewriter": type(rewriter).__name__ if rewriter else None}
    return finish(result, config=config.to_dict(), extra=extra)
