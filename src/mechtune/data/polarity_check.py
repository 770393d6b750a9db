"""The independent polarity check: a real clinical negation detector reads our sentences.

Every generated sentence carries a known polarity per condition it mentions. Here
medspacy's ConText (the optional ``clinical`` extra) reads each sentence, and we count how
often its verdict disagrees with our label, so that a wrong template is caught before it
reaches a benchmark. medspacy's default rules miss postposed cues ("Pleural effusion is
not seen.", "Pneumothorax absent."), so backward rules for the cues our templates use are
added, with a one-token scope so that "A present, B absent" does not negate A.

Our generated clause lists give every clause its own cue ("negative for A, evidence of B
and C noted"), never one negation distributed over a list. ConText's default scope runs
to the end of the sentence, so "," ";" and "and" are added as scope terminators: that is
the reading our grammar means, and a template that did distribute a negation would be
flagged. The terminators get a one-token scope of their own: medspacy 1.3 only lets a
terminator cut a scope when the two scopes overlap at an edge, so with sentence-wide
terminator scopes only the first terminator of a sentence would take effect, and the
default backward cue "free" (as in "device-free chest") would reach across the rest.

Targets are each condition's name, plural, synonyms and lay term, so that every question
and paraphrase family names a target; the longest match wins ("a partly collapsed lung"
is atelectasis, not the pneumothorax synonym "a collapsed lung").
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from mechtune.data.ontology import load_ontology
from mechtune.errors import ConfigError, MissingExtraError

POLARITIES = ("affirmed", "negated", "absence_affirmative")
POSTPOSED_CUES = (
    "absent",
    "is absent",
    "are absent",
    "not seen",
    "is not seen",
    "are not seen",
    "not present",
    "is not present",
    "are not present",
    "has resolved",
    "have resolved",
    "no longer seen",
    "is no longer seen",
    "are no longer seen",
)
CLAUSE_BREAKS = (",", ";", "and")
_W036 = r".*\[W036\]"  # spaCy: medspacy's internal phrase matcher has no patterns
INSTALL_HINT = "the polarity check needs medspacy: pip install 'mechtune[clinical]'"


@dataclass(frozen=True)
class Mention:
    """A condition (ontology id) a sentence mentions, with the polarity we say it has."""

    condition: str
    polarity: str

    def __post_init__(self) -> None:
        if self.polarity not in POLARITIES:
            raise ConfigError(f"polarity must be one of {POLARITIES}, got {self.polarity!r}")


@dataclass(frozen=True)
class LabelledText:
    """A generated sentence, its labelled mentions, and the phrasing family it came from."""

    text: str
    mentions: tuple[Mention, ...]
    family: str | None = None


@dataclass
class PolarityReport:
    """Counts of mentions where the detector agrees, disagrees, or finds no target."""

    n_texts: int = 0
    n_mentions: int = 0
    agree: int = 0
    disagree: int = 0
    unmatched: int = 0
    by_family: dict[str, dict[str, int]] = field(default_factory=dict)
    by_polarity: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def disagreement_rate(self) -> float:
        """Disagreements over judged (agree + disagree) mentions; 0.0 when none was judged."""
        judged = self.agree + self.disagree
        return self.disagree / judged if judged else 0.0

    def passes(self, max_disagreement: float) -> bool:
        """Whether the disagreement rate is at most ``max_disagreement``."""
        return self.disagreement_rate <= max_disagreement

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field plus ``disagreement_rate``."""
        return {**asdict(self), "disagreement_rate": self.disagreement_rate}


def clinical_available() -> bool:
    """Whether the ``clinical`` extra (medspacy) can be imported."""
    try:
        import medspacy  # noqa: F401
    except ImportError:
        return False
    return True


def _silence_medspacy() -> None:
    try:
        from loguru import logger

        logger.disable("PyRuSH")
        logger.disable("medspacy")
    except ImportError:  # pragma: no cover - loguru comes with PyRuSH
        pass
    logging.getLogger("medspacy").setLevel(logging.WARNING)


def _strip_article(phrase: str) -> str:
    for article in ("a ", "an "):
        if phrase.startswith(article):
            return phrase[len(article) :]
    return phrase


class PolarityChecker:
    """medspacy ConText with targets for every condition and our postposed cues.

    Raises ``ImportError`` naming the ``clinical`` extra when medspacy is missing.
    """

    def __init__(self) -> None:
        try:
            import medspacy
            from medspacy.context import ConTextRule
            from medspacy.ner import TargetRule
        except ImportError as exc:
            raise MissingExtraError(INSTALL_HINT) from exc
        _silence_medspacy()
        self.nlp = medspacy.load()
        targets = []
        for cond in load_ontology().pathologies:
            phrases = {cond.name, *cond.synonyms, cond.lay_term}
            if cond.plural:
                phrases.add(cond.plural)
            targets += [
                TargetRule(p, cond.id) for p in sorted({_strip_article(p) for p in phrases})
            ]
        self.nlp.get_pipe("medspacy_target_matcher").add(targets)
        rules = [
            ConTextRule(cue, "NEGATED_EXISTENCE", direction="BACKWARD", max_scope=1)
            for cue in POSTPOSED_CUES
        ]
        rules += [
            ConTextRule(t, "TERMINATE", direction="TERMINATE", max_scope=1) for t in CLAUSE_BREAKS
        ]
        self.nlp.get_pipe("medspacy_context").add(rules)

    def detect(self, text: str) -> dict[str, list[bool]]:
        """``{condition: [is_negated for each mention]}`` as ConText reads the text."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_W036)
            return _found(self.nlp(text))

    def read(self, text: str) -> dict[str, list[str]]:
        """``{condition: [verdict for each mention]}``, a verdict ``negated`` or ``affirmed``."""
        return {
            cond: ["negated" if f else "affirmed" for f in flags]
            for cond, flags in self.detect(text).items()
        }

    def check(
        self, items: Iterable[LabelledText], *, batch_size: int = 256, max_examples: int = 20
    ) -> PolarityReport:
        """Score every mention: agree, disagree, or unmatched (no entity of its condition).

        Up to ``max_examples`` disagreements are kept in ``examples``.
        """
        report = PolarityReport()
        by_family: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_polarity: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        items = list(items)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_W036)
            docs = self.nlp.pipe((it.text for it in items), batch_size=batch_size)
            for item, doc in zip(items, docs, strict=True):
                report.n_texts += 1
                found = _found(doc)
                any_negated = any(v for flags in found.values() for v in flags)
                for mention in item.mentions:
                    report.n_mentions += 1
                    verdict, detected = _judge(mention, found, any_negated)
                    setattr(report, verdict, getattr(report, verdict) + 1)
                    by_family[item.family or "unknown"][verdict] += 1
                    by_polarity[mention.polarity][verdict] += 1
                    if verdict == "disagree" and len(report.examples) < max_examples:
                        report.examples.append(
                            {
                                "text": item.text,
                                "condition": mention.condition,
                                "expected": mention.polarity,
                                "detected": detected,
                                "family": item.family,
                            }
                        )
        report.by_family = {k: dict(v) for k, v in sorted(by_family.items())}
        report.by_polarity = {k: dict(v) for k, v in sorted(by_polarity.items())}
        return report


def _found(doc: Any) -> dict[str, list[bool]]:
    found: dict[str, list[bool]] = defaultdict(list)
    for ent in doc.ents:
        found[ent.label_].append(bool(ent._.is_negated))
    return dict(found)


def _judge(mention: Mention, found: dict[str, list[bool]], any_negated: bool) -> tuple[str, str]:
    """(verdict, what the detector saw) for one mention."""
    if mention.polarity == "absence_affirmative":
        return ("disagree", "negation cue") if any_negated else ("agree", "no negation")
    flags = found.get(mention.condition)
    if not flags:
        return "unmatched", "not found"
    want = mention.polarity == "negated"
    detected = "negated" if all(flags) else "affirmed" if not any(flags) else "mixed"
    return ("agree" if all(f == want for f in flags) else "disagree"), detected


__all__ = [
    "LabelledText",
    "Mention",
    "PolarityChecker",
    "PolarityReport",
    "clinical_available",
]
