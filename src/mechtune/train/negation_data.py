"""The training examples of the negation task, built from one split's studies, with
conditions optionally held out of every training text.

:func:`negation_examples` turns studies into single negated captions, claim sets (the
contextual builder's: :mod:`mechtune.data.builders.contextual`) and NegBench-style MCQ
options (the polarity builder's: :mod:`mechtune.data.builders.polarity`).

Held-out findings (issue 18): with ``holdout`` conditions, no training text about any of
them survives. A text is about a condition when its record says so (a claim set's
``condition``, a caption's ``conditions``, an MCQ's ``conditions``) **or** its words name
the condition (:func:`mechtune.data.mentions.mentions`: names, synonyms, plurals, lay
terms and affirmative statements of absence); so neither a labelling slip nor an unusual
wording lets one through. Removed are: every claim set any of whose candidates (correct
claim or foil) is about one; every caption sentence about one (a caption left with no
sentence is dropped); every MCQ with an option about one. What was removed is counted in
:attr:`NegationData.removed`, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mechtune.data.builders.contextual import ContextualConfig, study_records
from mechtune.data.builders.polarity import PolarityConfig, make_mcq, passes_row_filter
from mechtune.data.mentions import check_conditions, mentions, sentences
from mechtune.data.schema import SPLITS, Caption, ClaimSet, Study
from mechtune.errors import ConfigError
from mechtune.train.negation import CaptionExample, ClaimExample

# NegationData.removed's keys, in the order a report lists them
REMOVED_KEYS: tuple[str, ...] = (
    "claim_sets",
    "captions",
    "caption_sentences",
    "mcq",
    "by_label_only",
)


@dataclass(frozen=True)
class NegationData:
    """Training examples of the negation task: single negated captions, claim sets and
    NegBench-style MCQ options (correct option first), each with its image row.

    ``removed``: what holding conditions out took away (:data:`REMOVED_KEYS`):
    ``claim_sets`` (before polarity balancing), ``captions`` dropped whole,
    ``caption_sentences`` removed (from kept and dropped captions), ``mcq`` questions;
    ``by_label_only``: of those, how many texts the record named the condition in but
    whose words the matcher did not catch (a vocabulary gap: then the text is removed
    anyway). Empty when nothing is held out."""

    captions: list[CaptionExample]
    claims: list[ClaimExample]
    mcq: list[ClaimExample] = field(default_factory=list)
    removed: Mapping[str, int] = field(default_factory=dict)


def claim_example(cs: ClaimSet, row: int) -> ClaimExample:
    """A claim set as a training example: its candidates (correct first), image row,
    polarity and the index of its existence-flipped foil (the negation twin), if any."""
    twin = 1 + cs.flipped.index("existence") if "existence" in cs.flipped else None
    return ClaimExample(cs.candidates, row, cs.polarity, twin)


class _Holdout:
    """Counts what removing ``conditions`` from the training texts takes away."""

    def __init__(self, conditions: Sequence[str]) -> None:
        self.conditions = tuple(conditions)
        self.counts = dict.fromkeys(REMOVED_KEYS, 0)

    def _about(self, labels: Sequence[str], texts: Sequence[str]) -> bool:
        by_text = any(mentions(t, self.conditions) for t in texts)
        by_label = any(c in self.conditions for c in labels)
        if by_label and not by_text:
            self.counts["by_label_only"] += 1
        return by_text or by_label

    def keeps_claim_set(self, cs: ClaimSet) -> bool:
        if not self.conditions or not self._about([cs.condition], cs.candidates):
            return True
        self.counts["claim_sets"] += 1
        return False

    def keeps_mcq(self, conditions: Sequence[str], options: Sequence[str]) -> bool:
        if not self.conditions or not self._about(conditions, options):
            return True
        self.counts["mcq"] += 1
        return False

    def caption_text(self, caption: Caption) -> str | None:
        """The caption without its sentences about a held-out condition (None: none left)."""
        if not self.conditions:
            return caption.text
        parts = sentences(caption.text)
        kept = [s for s in parts if not mentions(s, self.conditions)]
        self.counts["caption_sentences"] += len(parts) - len(kept)
        if len(kept) == len(parts) and any(c in self.conditions for c in caption.conditions):
            self.counts["by_label_only"] += 1  # named in the record, not found in the words
            self.counts["caption_sentences"] += len(parts)
            kept = []
        if not kept:
            self.counts["captions"] += 1
            return None
        return " ".join(kept)


def negation_examples(
    rows: Sequence[tuple[int, Study]],
    split: str = "train",
    *,
    seed: int,
    heldout: bool = False,
    balance_polarity: bool = True,
    holdout: Sequence[str] = (),
) -> NegationData:
    """Single negated captions, claim sets and MCQ options of one split's studies.

    ``rows``: ``(row of the image-embedding tensor, study)`` for the studies of ``split``
    (the caller's source decides the split). ``seed`` drives the per-study random streams
    of the contextual and polarity builders (``record_rng``), as their ``seed`` does;
    ``heldout`` picks the held-out phrasing families instead of the training ones. MCQ
    options come from studies passing NAST's row filter. Claim sets carry their polarity
    and negation twin (:func:`claim_example`).

    Most conditions are absent in most studies, so about two thirds of the claim sets have
    a negated correct claim; trained on them as drawn, every method learns to prefer "No
    ..." wording and overshoots (the affirmative-negation gap flips sign). With
    ``balance_polarity`` the minority polarity's claim sets are repeated, in order, until
    both polarities are equally many, so uniform sampling sees each half the time (over
    the epoch; per batch: ``LoopConfig.batch_polarity``).

    ``holdout``: condition ids (or CheXpert columns) whose every text is removed (module
    docstring), counted in ``removed``. Raises ConfigError for an unknown split or
    condition.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    drop = _Holdout(check_conditions(holdout, "holdout"))
    contextual = ContextualConfig(seed=seed)
    polarity = PolarityConfig(seed=seed, families="heldout" if heldout else "train")

    def split_of(_study: Study) -> str:
        return split

    captions, mcq = [], []
    by_polarity: dict[str, list[ClaimExample]] = {"affirmative": [], "negated": []}
    for row, study in rows:
        row = int(row)
        claim_sets, caps = study_records(study, contextual, split_of=split_of)
        for c in caps:
            if c.heldout_family == heldout:
                text = drop.caption_text(c)
                if text is not None:
                    captions.append(CaptionExample(text, row))
        for cs in claim_sets:
            if cs.heldout_family == heldout and drop.keeps_claim_set(cs):
                by_polarity.setdefault(cs.polarity, []).append(claim_example(cs, row))
        if passes_row_filter(study, polarity):
            q = make_mcq(study, polarity, split)
            if drop.keeps_mcq(q.conditions, (*q.negated_options, *q.affirmative_options)):
                options = [q.negated_options[q.correct_index]]
                options += [o for i, o in enumerate(q.negated_options) if i != q.correct_index]
                mcq.append(ClaimExample(tuple(options), row))
    if balance_polarity:
        claims = _balanced(list(by_polarity.values()))
    else:
        claims = [c for group in by_polarity.values() for c in group]
    return NegationData(captions, claims, mcq, drop.counts if drop.conditions else {})


def _balanced(groups: list[list[ClaimExample]]) -> list[ClaimExample]:
    """Each non-empty group repeated cyclically up to the largest group's size."""
    size = max((len(g) for g in groups), default=0)
    return [g[i % len(g)] for g in groups if g for i in range(size)]


__all__ = ["REMOVED_KEYS", "NegationData", "claim_example", "negation_examples"]
