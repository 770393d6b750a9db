"""Does a text mention a condition? The words a training text may use for one condition,
from the packaged vocabulary, for holding a finding out of training.

A held-out-finding study (issue 18) trains with every text about one condition removed and
then evaluates on that condition, to tell whether a fix learned negation or the trained
strings. A text is about condition ``c`` when it holds any phrase the vocabulary gives
``c`` (:func:`condition_phrases`):

- the ontology's name, CheXpert column, synonyms, plural and lay term, and its
  affirmative statements of absence ("fully expanded lungs" for pneumothorax), which the
  generators write (``resources/ontology.yaml``);
- the report-side phrases of :mod:`mechtune.data.report_vocabulary` (``mentions``,
  ``absent``, ``absent_if_negated``; a ``not_findings`` phrase holds one of these anyway).

Matching is on whole words, case-insensitive, a hyphen or any run of white space standing
for any other ("well aerated" matches "well-aerated"), and the last word of a phrase also
matches its regular plural (``-s``, ``-es``) and the Greek/Latin ``-x`` -> ``-ces``
("pneumothoraces"). A summary label (No Finding) is not a condition one can hold out.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence

from mechtune.data.ontology import load_ontology
from mechtune.data.report_vocabulary import report_vocabulary
from mechtune.errors import ConfigError

# report-vocabulary lists whose phrases state something about the condition itself
_VOCABULARY_KINDS = ("mentions", "absent", "absent_if_negated")


def check_conditions(names: Iterable[str], field: str = "holdout_conditions") -> tuple[str, ...]:
    """``names`` as distinct ontology condition ids (an id or a CheXpert column name is
    accepted: ``Pneumothorax`` -> ``pneumothorax``), in the order given. Raises ConfigError
    naming ``field`` and the value for an unknown name, the summary label (No Finding), a
    repeat, or a value that is not a list of strings."""
    if isinstance(names, str) or not isinstance(names, Iterable):
        raise ConfigError(f"{field} must be a list of condition names, got {names!r}")
    onto = load_ontology()
    known = ", ".join(c.id for c in onto.pathologies)
    out: list[str] = []
    for name in names:
        if not isinstance(name, str) or not onto.has_condition(name):
            raise ConfigError(f"{field}: {name!r} is not a condition; known: {known}")
        condition = onto.condition(name)
        if condition.summary:
            raise ConfigError(
                f"{field}: {name!r} is a summary label, not a finding one can hold out; "
                f"known: {known}"
            )
        if condition.id in out:
            raise ConfigError(f"{field}: {condition.id!r} is named twice")
        out.append(condition.id)
    return tuple(out)


def _strip_article(phrase: str) -> str:
    for article in ("a ", "an ", "the "):
        if phrase.startswith(article):
            return phrase[len(article) :]
    return phrase


@functools.cache
def condition_phrases(condition: str) -> tuple[str, ...]:
    """Every phrase (lower case, articles stripped, sorted) that names condition
    ``condition`` (an id) or states its absence, from the ontology and the report
    vocabulary (module docstring). Raises ConfigError for an unknown condition."""
    (cid,) = check_conditions([condition], "condition")
    c = load_ontology().condition(cid)
    phrases = {c.name, c.column, *c.synonyms, c.lay_term, *c.absent_affirmative}
    if c.plural:
        phrases.add(c.plural)
    vocabulary = report_vocabulary().phrases
    for kind in _VOCABULARY_KINDS:
        phrases.update(p for p, owners in vocabulary[kind].items() if cid in owners)
    return tuple(sorted({_strip_article(p.lower().strip()) for p in phrases if p.strip()}))


def _phrase_pattern(phrase: str) -> str:
    words = [w for w in re.split(r"[\s\-]+", phrase) if w]
    *head, last = words
    endings = [re.escape(last) + "(?:e?s)?"]
    if last.endswith("x"):
        endings.append(re.escape(last[:-1]) + "ces")
    tail = "(?:" + "|".join(endings) + ")"
    return r"[\s\-]+".join([*(re.escape(w) for w in head), tail])


@functools.cache
def mention_pattern(conditions: tuple[str, ...]) -> re.Pattern[str]:
    """One compiled pattern matching any phrase of any of ``conditions`` (ids) as whole
    words (:func:`condition_phrases`), longest phrase first."""
    phrases = sorted({p for c in conditions for p in condition_phrases(c)}, key=len, reverse=True)
    body = "|".join(_phrase_pattern(p) for p in phrases)
    return re.compile(rf"(?<![\w-])(?:{body})(?![\w-])", re.IGNORECASE)


def mentions(text: str, conditions: Sequence[str]) -> bool:
    """Whether ``text`` holds a phrase of any of ``conditions`` (ids; empty: never)."""
    if not conditions:
        return False
    return mention_pattern(tuple(conditions)).search(text) is not None


SENTENCE_END = re.compile(r"(?<=[.!?;])\s+")


def sentences(text: str) -> list[str]:
    """``text`` split after each ``.``, ``!``, ``?`` or ``;`` that white space follows
    (a generated caption joins its sentences with one space)."""
    return [s for s in SENTENCE_END.split(text.strip()) if s]


__all__ = [
    "check_conditions",
    "condition_phrases",
    "mention_pattern",
    "mentions",
    "sentences",
]
