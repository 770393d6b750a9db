"""The targets the report-fact extractor (:mod:`mechtune.data.report_facts`) reads besides
the condition names of the polarity check's pipeline, and their labels.

From the ontology: plurals of countable phrases, predicate forms of names and synonyms
("the heart is enlarged") and affirmative statements of absence with their predicate forms
("heart size is normal"). From the report-side vocabulary
(:mod:`mechtune.data.report_vocabulary`): CheXpert-style mention phrases, statements of
absence, broader findings whose negation rules a condition out, and "unmention" phrases
that displace a mention inside them (labelled :data:`NOT_A_FINDING`).

A predicate form is read with any copula ("is", "are", "remains", ...), an optional
negation and degree adverb before the predicate ("the heart is not enlarged", "is
moderately enlarged"), and a singular head noun for a plural subject ("the right lung is
clear", "the left costophrenic angle is sharp"). Coordination is read where the parts are
predicate forms of the same kind: two predicates of one subject ("lungs are well expanded
and clear") or one predicate of two subjects ("heart size and mediastinal contours are
normal"). The longest match wins, so a coordinated target displaces the single ones
inside it; its label names every condition its parts name.

A label is ``"<id>[+<id>...]"`` for a mention, ``"...|absent"`` for a statement of
absence, ``"...|absent_if_negated"`` for a broader finding, or :data:`NOT_A_FINDING`.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from mechtune.data.ontology import Condition, load_ontology
from mechtune.data.report_modifiers import PREPOSITIONS, lexicon
from mechtune.data.report_vocabulary import report_vocabulary, words

MENTION = "mention"
ABSENCE = "absent"  # label suffix of an affirmative statement of absence
ABSENT_IF_NEGATED = "absent_if_negated"  # label suffix of a broader finding
NOT_A_FINDING = "not_a_finding"  # label of an unmention phrase: no condition
LABEL_KINDS = (MENTION, ABSENCE, ABSENT_IF_NEGATED, NOT_A_FINDING)
NEGATIONS = frozenset({"not", "n't"})
_VOCABULARY_KIND = {
    "mentions": MENTION,
    "absent": ABSENCE,
    "absent_if_negated": ABSENT_IF_NEGATED,
    "not_findings": NOT_A_FINDING,
}
Pattern = list[dict[str, Any]]
Target = tuple[str, str, Pattern | None]


def _strip_article(phrase: str) -> str:
    for article in ("a ", "an "):
        if phrase.startswith(article):
            return phrase[len(article) :]
    return phrase


def plural(phrase: str) -> str:
    """The regular English plural of a noun phrase's last word ("pleural effusion" ->
    "pleural effusions", "pulmonary opacity" -> "pulmonary opacities", "pneumothorax" ->
    "pneumothoraces", the Latin plural radiology uses)."""
    head, _, last = phrase.rpartition(" ")
    if last.endswith("thorax"):
        last = last[:-1] + "ces"
    elif last.endswith(("s", "x", "sh", "ch")):
        last += "es"
    elif last.endswith("y") and last[-2:-1] not in "aeiou":
        last = last[:-1] + "ies"
    else:
        last += "s"
    return f"{head} {last}" if head else last


def singular(word: str) -> str:
    """The singular of a regular plural noun ("lungs" -> "lung", "opacities" -> "opacity");
    other words unchanged ("mass", "sulci", "parenchyma")."""
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"
    if word.endswith("s") and not word.endswith(("ss", "us", "is")) and len(word) > 3:
        return word[:-1]
    return word


def _countable(phrase: str) -> bool:
    """Whether a phrase takes a regular plural: one head noun (no preposition, no "and")
    not already plural."""
    ws = phrase.split()
    return not (set(ws) & (PREPOSITIONS | {"and", "or", "is"})) and singular(ws[-1]) == ws[-1]


def _plural_phrases(cond: Condition) -> set[str]:
    """Plurals of a countable condition's name, and of every synonym that takes an article
    (the article marks a countable noun phrase even where the condition's name is not:
    "a pleural plaque"), with one head noun; besides the ontology's own plural."""
    phrases = {cond.name} if cond.countable and not cond.plural else set()
    phrases |= {_strip_article(s) for s in cond.synonyms if s.startswith(("a ", "an "))}
    return {plural(p) for p in phrases if _countable(p)}


def predicate_parts(phrase: str) -> tuple[list[str], list[str]] | None:
    """``(subject, predicate)`` words of the predicate form of ``phrase``: "normal heart
    size" -> (heart size, normal); "heart size within normal limits" -> (heart size,
    within normal limits); a phrase written in predicate form, "heart is normal in size"
    -> (heart, normal in size). None when the phrase opens with no state word."""
    lex = lexicon()
    ws = words(phrase)
    if "is" in ws[1:-1]:
        k = ws.index("is")
        return ws[:k], ws[k + 1 :]
    opening = lex.predicate_adjectives | lex.predicate_adverbs | {"-"}
    n = 0
    while n < len(ws) and ws[n] in opening:
        n += 1
    if "within" in ws[1:]:
        n = ws.index("within")
        return ws[:n], ws[n:]
    if 0 < n < len(ws) and ws[n - 1] in lex.predicate_adjectives:
        return ws[n:], ws[:n]
    return None


def _subject(ws: list[str]) -> Pattern:
    """Tokens of a subject; its head noun also in the singular."""
    *head, last = ws
    one = singular(last)
    tail: dict[str, Any] = {"LOWER": last} if one == last else {"LOWER": {"IN": [last, one]}}
    return [*({"LOWER": w} for w in head), tail]


def _predicate(ws: list[str]) -> Pattern:
    """Tokens of a predicate after an optional negation and degree adverb; a hyphen in it
    is optional ("well-expanded" / "well expanded")."""
    return [
        {"LOWER": {"IN": sorted(NEGATIONS)}, "OP": "?"},
        {"LOWER": {"IN": lexicon().degree_adverbs}, "OP": "?"},
        *({"ORTH": "-", "OP": "?"} if w == "-" else {"LOWER": w} for w in ws),
    ]


_COPULA_OP = "*"
_AND: Pattern = [{"ORTH": ",", "OP": "?"}, {"LOWER": "and"}]


def predicate_pattern(subjects: list[list[str]], predicates: list[list[str]]) -> Pattern:
    """A token pattern for "<subject> (and <subject>) <copula>* <predicate> (and
    <predicate>)": each predicate after an optional negation and degree adverb."""
    out: Pattern = []
    for k, s in enumerate(subjects):
        if k:
            out += [*_AND, {"LOWER": "the", "OP": "?"}]
        out += _subject(s)
    out.append({"LOWER": {"IN": sorted(lexicon().copulas)}, "OP": _COPULA_OP})
    for k, p in enumerate(predicates):
        out += [*(_AND if k else []), *_predicate(p)]
    return out


class _Targets:
    """Targets keyed by what they match, each with the set of conditions it names."""

    def __init__(self) -> None:
        self.conditions: dict[tuple[str, str], set[str]] = {}
        self.literal: dict[tuple[str, str], tuple[str, Pattern | None]] = {}
        # (kind, subject) -> predicates, (kind, predicate) -> subjects, for coordination
        self.by_subject: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], set[str]]] = {}
        self.by_predicate: dict[tuple[str, tuple[str, ...]], dict[tuple[str, ...], set[str]]] = {}

    def add(self, kind: str, cids: Iterable[str], text: str, pattern: Pattern | None) -> None:
        key = (kind, repr(pattern) if pattern is not None else text)
        self.conditions.setdefault(key, set()).update(cids)
        self.literal.setdefault(key, (text, pattern))

    def phrase(self, kind: str, cids: Iterable[str], phrase: str, literal: bool = True) -> None:
        """A phrase and, where it has one, its predicate form."""
        cids = set(cids)
        parts = predicate_parts(phrase)
        if literal and (parts is None or "is" not in words(phrase)):
            self.add(kind, cids, phrase, None)
        if parts is not None and kind in (MENTION, ABSENCE):
            subject, predicate = (tuple(p) for p in parts)
            pattern = predicate_pattern([list(subject)], [list(predicate)])
            self.add(kind, cids, f"{phrase} (predicate)", pattern)
            self.by_subject.setdefault((kind, subject), {}).setdefault(predicate, set()).update(
                cids
            )
            self.by_predicate.setdefault((kind, predicate), {}).setdefault(subject, set()).update(
                cids
            )

    def coordinate(self) -> None:
        """Ordered pairs of predicates of one subject and of subjects of one predicate."""
        for (kind, subject), preds in sorted(self.by_subject.items()):
            for p1, c1 in sorted(preds.items()):
                for p2, c2 in sorted(preds.items()):
                    if p1 != p2:
                        pattern = predicate_pattern([list(subject)], [list(p1), list(p2)])
                        text = f"{' '.join(subject)} is {' '.join(p1)} and {' '.join(p2)}"
                        self.add(kind, c1 | c2, f"{text} (coordinated)", pattern)
        for (kind, predicate), subjects in sorted(self.by_predicate.items()):
            for s1, c1 in sorted(subjects.items()):
                for s2, c2 in sorted(subjects.items()):
                    if s1 != s2:
                        pattern = predicate_pattern([list(s1), list(s2)], [list(predicate)])
                        text = f"{' '.join(s1)} and {' '.join(s2)} are {' '.join(predicate)}"
                        self.add(kind, c1 | c2, f"{text} (coordinated)", pattern)

    def out(self, taken: set[str]) -> list[Target]:
        result = []
        for key, cids in self.conditions.items():
            text, pattern = self.literal[key]
            if pattern is None and text in taken:
                continue  # already a condition target of the polarity check's pipeline
            result.append((text, label(key[0], cids), pattern))
        return result


def label(kind: str, conditions: Iterable[str]) -> str:
    """The entity label of a target of ``kind`` (one of :data:`LABEL_KINDS`)."""
    if kind == NOT_A_FINDING:
        return NOT_A_FINDING
    joined = "+".join(sorted(conditions))
    return joined if kind == MENTION else f"{joined}|{kind}"


def extra_targets() -> list[Target]:
    """``(literal, label, pattern)`` targets the extractor reads besides the condition names
    of :func:`mechtune.data.polarity_check.build_context_pipeline` (the module docstring):

    - plurals of countable names and synonyms (:func:`plural`), labelled with the id;
    - predicate forms of names, synonyms and lay terms ("the heart is enlarged");
    - each ``absent_affirmative`` phrase ("normal heart size") and its predicate form
      ("heart size is normal"), labelled ``"<id>[+<id>...]|absent"``;
    - the report vocabulary's phrases, with plurals of mentions, broader findings and
      unmention phrases, and predicate forms of mentions and absences;
    - coordinated predicate forms.

    A phrase shared by several conditions ("clear lung fields") names them all.
    """
    targets = _Targets()
    for cond in load_ontology().pathologies:
        for p in sorted(_plural_phrases(cond)):
            targets.add(MENTION, [cond.id], p, None)
        named = {_strip_article(p) for p in (cond.name, *cond.synonyms, cond.lay_term)}
        for p in sorted(named):
            targets.phrase(MENTION, [cond.id], p, literal=False)
        for p in sorted({_strip_article(p) for p in cond.absent_affirmative}):
            targets.phrase(ABSENCE, [cond.id], p)
    vocab = report_vocabulary()
    for list_name, kind in _VOCABULARY_KIND.items():
        for p, cids in sorted(vocab.phrases[list_name].items()):
            targets.phrase(kind, cids, p)
            if kind != ABSENCE and _countable(p):
                targets.add(kind, cids, plural(p), None)
    targets.coordinate()
    return targets.out(_condition_phrases())


def _condition_phrases() -> set[str]:
    """The literal targets of the polarity check's pipeline (names, plurals, synonyms and
    lay terms, articles stripped): a report phrase's plural that equals one is not added."""
    out = set()
    for cond in load_ontology().pathologies:
        out |= {_strip_article(p) for p in (cond.name, *cond.synonyms, cond.lay_term)}
        if cond.plural:
            out.add(cond.plural)
    return out


def label_kind(label_: str) -> str:
    """The kind of an entity label: one of :data:`LABEL_KINDS`."""
    if label_ == NOT_A_FINDING:
        return NOT_A_FINDING
    kind = label_.partition("|")[2]
    return kind or MENTION


def parse_label(label_: str) -> tuple[tuple[str, ...], bool]:
    """``(condition ids, states absence)`` of an entity label of the extractor's pipeline;
    no conditions for :data:`NOT_A_FINDING` (see :func:`label_kind` for the other kinds)."""
    if label_ == NOT_A_FINDING:
        return (), False
    names, _, kind = label_.partition("|")
    return tuple(names.split("+")), kind == ABSENCE


__all__ = [
    "ABSENCE",
    "ABSENT_IF_NEGATED",
    "LABEL_KINDS",
    "MENTION",
    "NOT_A_FINDING",
    "extra_targets",
    "label",
    "label_kind",
    "parse_label",
    "plural",
    "predicate_parts",
    "predicate_pattern",
    "singular",
]
