"""The independent polarity check: a real clinical negation detector reads our sentences.

Every generated sentence carries a known polarity per condition it mentions. Here
medspacy's ConText (the optional ``clinical`` extra) reads each sentence and gives every
mention a verdict, ``negated``, ``affirmed`` or ``uncertain``; we count how often it
disagrees with our label, so that a wrong template is caught before it reaches a
benchmark. The detector must read real report language, not only our templates: its
accuracy per cue category on a hand-labelled fixture of radiology sentences
(``tests/data/fixtures/negation_scope.yaml``) is in ``docs/results.md``.

How a sentence is read (rules in ``resources/context_rules.yaml``, scope in
:mod:`mechtune.data.polarity_rules`):

1. Cues are medspacy's default ConText rules plus radiology rules: postposed negations
   ("Pleural effusion is not seen.", "Pneumothorax absent.", "has resolved"), "negative
   for" after a verb, hedges ("cannot be excluded", "may represent", "questionable",
   "versus"), indications ("Evaluate for pneumonia."), and pseudo-negations that negate
   nothing ("No change in the left pleural effusion.", "has not resolved").
2. A scope never leaves its sentence and stops at a clause break: ";", ":", "but",
   "however", "although", "with", "which", ...
3. One cue governs every item of a coordinated list ("No pneumothorax, pleural effusion,
   or consolidation."; "Pneumothorax and pleural effusion are not seen.").
4. A list item with a cue of its own opens a new clause that an earlier (or, for a
   backward cue, later) cue does not reach: "Negative for A, evidence of B and C noted",
   "Cardiomegaly present, pleural effusion absent". An item joined by "or" stays in a
   negated list even with a predicate: "No A or B is seen."
5. A mention reached by a hedge is ``uncertain`` (the checker does not guess); else by a
   negation, ``negated``; else ``affirmed``.

Uncertain mentions are counted apart from disagreements: the disagreement rate is over
decided mentions, and the uncertain rate over all matched ones. Both gate a dataset.

Targets are each condition's name, plural, synonyms and lay term, so that every question
and paraphrase family names a target; the longest match wins ("a partly collapsed lung"
is atelectasis, not the pneumothorax synonym "a collapsed lung").
"""

from __future__ import annotations

import logging
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from mechtune.data.ontology import load_ontology
from mechtune.errors import ConfigError, MissingExtraError

POLARITIES = ("affirmed", "negated", "absence_affirmative")
VERDICTS = ("affirmed", "negated", "uncertain")
DEFAULT_MAX_UNCERTAIN = 0.05
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


def _rates(counts: Mapping[str, int]) -> dict[str, float]:
    decided = counts.get("agree", 0) + counts.get("disagree", 0)
    matched = decided + counts.get("uncertain", 0)
    return {
        "disagreement_rate": counts.get("disagree", 0) / decided if decided else 0.0,
        "uncertain_rate": counts.get("uncertain", 0) / matched if matched else 0.0,
    }


@dataclass
class PolarityReport:
    """Counts of mentions where the detector agrees, disagrees, is uncertain, or finds no
    target, overall and by family and by labelled polarity.

    ``examples`` keeps disagreements and ``uncertain_examples`` uncertain mentions, each a
    dict with the text, condition, expected polarity, what was detected and the family.
    """

    n_texts: int = 0
    n_mentions: int = 0
    agree: int = 0
    disagree: int = 0
    uncertain: int = 0
    unmatched: int = 0
    by_family: dict[str, dict[str, int]] = field(default_factory=dict)
    by_polarity: dict[str, dict[str, int]] = field(default_factory=dict)
    examples: list[dict[str, Any]] = field(default_factory=list)
    uncertain_examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def disagreement_rate(self) -> float:
        """Disagreements over decided (agree + disagree) mentions; 0.0 when none was decided."""
        return _rates(self._counts())["disagreement_rate"]

    @property
    def uncertain_rate(self) -> float:
        """Uncertain over matched (agree + disagree + uncertain) mentions; 0.0 when none."""
        return _rates(self._counts())["uncertain_rate"]

    def _counts(self) -> dict[str, int]:
        return {"agree": self.agree, "disagree": self.disagree, "uncertain": self.uncertain}

    def rates_by_family(self) -> dict[str, dict[str, float]]:
        """``{family: {"disagreement_rate": .., "uncertain_rate": ..}}``."""
        return {k: _rates(v) for k, v in self.by_family.items()}

    def rates_by_polarity(self) -> dict[str, dict[str, float]]:
        """``{labelled polarity: {"disagreement_rate": .., "uncertain_rate": ..}}``."""
        return {k: _rates(v) for k, v in self.by_polarity.items()}

    def failures(
        self, max_disagreement: float, max_uncertain: float = DEFAULT_MAX_UNCERTAIN
    ) -> list[str]:
        """The limits this report exceeds, as readable phrases; empty when it passes."""
        out = []
        if self.disagreement_rate > max_disagreement:
            out.append(
                f"disagreement rate {self.disagreement_rate:.2%} > {max_disagreement:.2%} "
                f"({self.disagree} of {self.agree + self.disagree} decided mentions)"
            )
        if self.uncertain_rate > max_uncertain:
            out.append(
                f"uncertain rate {self.uncertain_rate:.2%} > {max_uncertain:.2%} "
                f"({self.uncertain} of {self.agree + self.disagree + self.uncertain} "
                "matched mentions)"
            )
        return out

    def passes(self, max_disagreement: float, max_uncertain: float = DEFAULT_MAX_UNCERTAIN) -> bool:
        """Whether the disagreement rate is at most ``max_disagreement`` and the uncertain
        rate at most ``max_uncertain``."""
        return not self.failures(max_disagreement, max_uncertain)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field plus the rates, overall, by family and polarity."""
        return {
            **asdict(self),
            "disagreement_rate": self.disagreement_rate,
            "uncertain_rate": self.uncertain_rate,
            "rates_by_family": self.rates_by_family(),
            "rates_by_polarity": self.rates_by_polarity(),
        }


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


def _condition_targets() -> list[Any]:
    """A ``TargetRule`` for each condition's name, plural, synonyms and lay term (articles
    stripped), labelled with the condition id."""
    from medspacy.ner import TargetRule

    targets = []
    for cond in load_ontology().pathologies:
        phrases = {cond.name, *cond.synonyms, cond.lay_term}
        if cond.plural:
            phrases.add(cond.plural)
        targets += [TargetRule(p, cond.id) for p in sorted({_strip_article(p) for p in phrases})]
    return targets


def build_context_pipeline(
    extra_targets: Iterable[tuple[str, str, list[dict[str, Any]] | None]] = (),
    *,
    extra_rules: Iterable[Mapping[str, Any]] = (),
    install_hint: str = INSTALL_HINT,
) -> Any:
    """The medspacy pipeline both readers of report language share.

    medspacy's sentence splitter (PyRuSH), a target matcher with every condition's name,
    plural, synonyms and lay term (the longest match wins) plus ``extra_targets``, and
    ConText with medspacy's default rules less the dropped ones plus mechtune's radiology
    rules (:func:`mechtune.data.polarity_rules.context_rules`). Each extra target is
    ``(literal, label, pattern)``: a ``medspacy.ner.TargetRule`` with a spaCy token pattern,
    or ``None`` to match the literal. Each extra rule is a mapping with the keys of
    ``resources/context_rules.yaml`` plus an optional ``allowed_types`` (the entity labels
    it may modify), added as a ``medspacy.context.ConTextRule``. The polarity check passes
    neither. Building takes a few seconds: build once, reuse. Returns a spaCy ``Language``.

    Raises ``MissingExtraError`` (an ``ImportError``) with ``install_hint`` when medspacy
    (the ``clinical`` extra) is missing.
    """
    try:
        import medspacy
        from medspacy.ner import TargetRule
    except ImportError as exc:
        raise MissingExtraError(install_hint) from exc
    from mechtune.data.polarity_rules import context_rules

    _silence_medspacy()
    nlp = medspacy.load(load_rules=False)
    targets = _condition_targets()
    targets += [TargetRule(lit, label, pattern=pat) for lit, label, pat in extra_targets]
    nlp.get_pipe("medspacy_target_matcher").add(targets)
    context = nlp.get_pipe("medspacy_context")
    rules = context_rules(context.DEFAULT_RULES_FILEPATH)
    if extra_rules:
        from medspacy.context import ConTextRule

        for r in extra_rules:
            allowed = r.get("allowed_types")
            rules.append(
                ConTextRule(
                    r["literal"],
                    r["category"],
                    pattern=r.get("pattern"),
                    direction=r["direction"],
                    max_scope=r.get("max_scope"),
                    allowed_types=set(allowed) if allowed else None,
                )
            )
    context.add(rules)
    return nlp


@contextmanager
def quiet_spacy() -> Iterator[None]:
    """Silence spaCy's W036 warning (medspacy's internal phrase matcher has no patterns)
    while a pipeline runs."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_W036)
        yield


class PolarityChecker:
    """medspacy ConText with targets for every condition and mechtune's radiology rules
    (the pipeline of :func:`build_context_pipeline`).

    Raises ``MissingExtraError`` (an ``ImportError``) naming the ``clinical`` extra when
    medspacy is missing.
    """

    def __init__(self) -> None:
        self.nlp = build_context_pipeline()

    def read(self, text: str) -> dict[str, list[str]]:
        """``{condition: [verdict for each mention]}``, each verdict one of ``VERDICTS``."""
        from mechtune.data.polarity_rules import read_doc

        with quiet_spacy():
            return read_doc(self.nlp(text))

    def detect(self, text: str) -> dict[str, list[bool]]:
        """``{condition: [is_negated for each mention]}``: True only for a ``negated``
        verdict, so an ``uncertain`` mention reads False (not a confident negation)."""
        return {c: [v == "negated" for v in vs] for c, vs in self.read(text).items()}

    def check(
        self,
        items: Iterable[LabelledText],
        *,
        batch_size: int = 256,
        max_examples: int = 20,
        progress: Callable[[int], None] | None = None,
    ) -> PolarityReport:
        """Score every mention: agree, disagree, uncertain, or unmatched (no entity of its
        condition). Up to ``max_examples`` disagreements are kept in ``examples`` and as many
        uncertain mentions in ``uncertain_examples``. ``progress(1)`` after each text.
        """
        from mechtune.data.polarity_rules import read_doc

        report = PolarityReport()
        by_family: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        by_polarity: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        items = list(items)
        with quiet_spacy():
            docs = self.nlp.pipe((it.text for it in items), batch_size=batch_size)
            for item, doc in zip(items, docs, strict=True):
                report.n_texts += 1
                if progress is not None:
                    progress(1)
                found = read_doc(doc)
                for mention in item.mentions:
                    report.n_mentions += 1
                    outcome, detected = _judge(mention, found)
                    setattr(report, outcome, getattr(report, outcome) + 1)
                    by_family[item.family or "unknown"][outcome] += 1
                    by_polarity[mention.polarity][outcome] += 1
                    kept = {"disagree": report.examples, "uncertain": report.uncertain_examples}
                    if outcome in kept and len(kept[outcome]) < max_examples:
                        kept[outcome].append(
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


def _judge(mention: Mention, found: dict[str, list[str]]) -> tuple[str, str]:
    """(outcome, what the detector saw) for one mention.

    An absence stated in affirmative words must carry no negation anywhere in its text.
    For a named condition, a wrong definite verdict is a disagreement even if another
    mention of it is uncertain; otherwise any uncertain mention makes it uncertain.
    """
    if mention.polarity == "absence_affirmative":
        negated = any(v == "negated" for vs in found.values() for v in vs)
        return ("disagree", "negation cue") if negated else ("agree", "no negation")
    verdicts = found.get(mention.condition)
    if not verdicts:
        return "unmatched", "not found"
    detected = verdicts[0] if len(set(verdicts)) == 1 else "mixed"
    definite = {v for v in verdicts if v != "uncertain"}
    if definite - {mention.polarity}:
        return "disagree", detected
    return ("uncertain" if "uncertain" in verdicts else "agree"), detected


__all__ = [
    "DEFAULT_MAX_UNCERTAIN",
    "VERDICTS",
    "LabelledText",
    "Mention",
    "PolarityChecker",
    "PolarityReport",
    "build_context_pipeline",
    "clinical_available",
    "quiet_spacy",
]
