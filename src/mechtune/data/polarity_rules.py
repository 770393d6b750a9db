"""The ConText rule set and the list/clause scope rule of the independent polarity check.

medspacy's ConText (Harkema et al., J Biomed Inform 2009) gives every cue a scope that
runs to the end of its sentence (forward cues) or back to its start (backward cues), cut
by termination terms and by the next cue of the same category. Radiology reports pack
several findings into one sentence, so that alone is not enough:

- "No pneumothorax, pleural effusion, or consolidation." One cue governs every item of
  the list; a comma is not a clause break.
- "Negative for pleural effusion, evidence of consolidation and edema noted." The second
  and third items open clauses of their own, with their own (affirmative) cue.

So a list is split into *items* at ``,``, ``and``, ``or`` and ``nor`` (not inside a finding
or a cue: "lines and tubes" is one finding), and a cue reaches a finding in another item
only across items that carry no cue of their own (``reaches``). An item joined by "or" or
"nor" stays inside a forward cue's list even with an affirmative predicate ("No
pneumothorax or pleural effusion is seen."): a disjunction under a negation is how reports
write a negated list, and the predicate belongs to the whole list. Two more signals: a
size or grade word ("No effusion, small left pneumothorax.") marks a new, present finding
after a forward cue; and a clause whose items are marked one by one ("No A, B, no C";
"A, no B, C") does not distribute a cue over its bare items. This is the coordination
that NegBio reads from a dependency parse (Peng et al., AMIA 2018), taken here from
punctuation and cue positions, since the checker has no parser.

The cues themselves are medspacy's default English rules plus the radiology rules in
``resources/context_rules.yaml`` (which also lists the defaults it drops, and why).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from typing import Any

import yaml

NEGATED = "NEGATED_EXISTENCE"
POSSIBLE = "POSSIBLE_EXISTENCE"
HYPOTHETICAL = "HYPOTHETICAL"
AFFIRMED = "AFFIRMED_EXISTENCE"
GRADED = "GRADED_FINDING"
HEDGES = frozenset({POSSIBLE, HYPOTHETICAL})
LIST_SEPARATORS = frozenset({",", "and", "or", "nor"})
DISJUNCTIONS = frozenset({"or", "nor"})


@cache
def rule_resource() -> dict[str, Any]:
    """The parsed ``resources/context_rules.yaml`` (``drop`` and ``rules`` lists)."""
    text = resources.files("mechtune.data").joinpath("resources/context_rules.yaml").read_text()
    data: dict[str, Any] = yaml.safe_load(text)
    return data


def context_rules(default_rules_path: str) -> list[Any]:
    """medspacy's default ConText rules less the dropped ones, plus mechtune's.

    ``default_rules_path`` is medspacy's ``context_rules.json`` (the ConText component's
    ``DEFAULT_RULES_FILEPATH``). Returns ``ConTextRule`` objects.
    """
    from medspacy.context import ConTextRule

    spec = rule_resource()
    dropped = {d["literal"] for d in spec["drop"]}
    rules = [r for r in ConTextRule.from_json(default_rules_path) if r.literal not in dropped]
    for r in spec["rules"]:
        rules.append(
            ConTextRule(
                r["literal"],
                r["category"],
                pattern=r.get("pattern"),
                direction=r["direction"],
                max_scope=r.get("max_scope"),
            )
        )
    return rules


class ClauseLayout:
    """The list items and clauses of a parsed ``Doc`` and the cues each item carries.

    Items are split at list separators, clause breaks (ConText terminators) and sentence
    starts; a run of separators (", or") makes one split, and ``joint[k]`` holds the words
    before item ``k`` (``<break>`` for a terminator, ``<sentence>`` for a new sentence). A
    clause is a run of items with no break or sentence start between them. ``cues[k]``
    are the ConText modifiers (not terminators) that start in item ``k`` and do not overlap
    a finding; ``findings`` are the items where a finding starts.
    """

    def __init__(self, doc: Any, modifiers: list[Any]) -> None:
        covered: set[int] = set()
        for ent in doc.ents:
            covered.update(range(ent.start, ent.end))
        for mod in modifiers:
            covered.update(range(*mod.modifier_span))
        breaks = {m.modifier_span[0] for m in modifiers if m.direction == "TERMINATE"}
        self.item: list[int] = []
        self.joint: dict[int, set[str]] = {0: {"<sentence>"}}
        k, in_split = 0, False
        for tok in doc:
            hard = "<sentence>" if tok.i > 0 and tok.is_sent_start else None
            hard = hard or ("<break>" if tok.i in breaks else None)
            if hard:
                k, in_split = k + 1, False
                self.joint[k] = {hard}
            elif tok.lower_ in LIST_SEPARATORS and tok.i not in covered:
                if not in_split:
                    k, in_split = k + 1, True
                    self.joint[k] = set()
                self.joint[k].add(tok.lower_)
            else:
                in_split = False
            self.item.append(k)
        self.clause: dict[int, int] = {}
        clause = -1
        for j in range(k + 1):
            clause += bool(self.joint[j] & {"<sentence>", "<break>"})
            self.clause[j] = clause
        ents = [(e.start, e.end) for e in doc.ents]
        self.findings = {self.item[s] for s, _ in ents}
        self.cues: dict[int, list[Any]] = {}
        for mod in modifiers:
            start, end = mod.modifier_span
            if mod.direction == "TERMINATE" or any(s < end and start < e for s, e in ents):
                continue
            self.cues.setdefault(self.item[start], []).append(mod)

    def _own(self, k: int, cue: Any) -> list[Any]:
        return [m for m in self.cues.get(k, []) if m is not cue]

    def _per_item(self, cue: Any, c: int, forward: bool) -> bool:
        """Whether the cue's clause marks polarity item by item: another item repeats a cue
        of the same category ("No A, B, no C"), or a bare finding stands on the far side
        of the cue ("A, no B, C": forward; "A, B absent, C": backward)."""
        items = [j for j in self.clause if self.clause[j] == self.clause[c] and j != c]
        if any(m.category == cue.category for j in items for m in self._own(j, cue)):
            return True
        far = [j for j in items if (j < c if forward else j > c)]
        return any(j in self.findings and not self.cues.get(j) for j in far)

    def _or_closed(self, k: int, cue: Any) -> bool:
        """Whether the list goes on from item ``k``, through items with no cue of their own,
        to an item joined by "or"/"nor" ("No A, B, or C": B is in the disjunction)."""
        for j in range(k + 1, len(self.joint)):
            if self.clause[j] != self.clause[k]:
                return False
            if self.joint[j] & DISJUNCTIONS:
                return True
            if self._own(j, cue):
                return False
        return False

    def reaches(self, target: Any, cue: Any) -> bool:
        """Whether ``cue`` (a modifier ConText attached to ``target``) governs it.

        A cue reaches a finding in its own item, and never one in another clause. Across
        items, it reaches a finding when every item in between, and the finding's, carries
        no cue of its own, with three refinements:

        - a size or grade word ("small", "mild") stops a forward cue's list, not a backward
          one's ("No effusion, small pneumothorax."; "The small effusion and the
          pneumothorax have resolved.");
        - an item joined by "or"/"nor" stays in a forward cue's list unless it carries a
          negation or hedge of its own: the predicate of "No A or B is seen." is shared;
        - in a clause whose items are marked one by one (``_per_item``), a cue reaches no
          bare item beyond its own, unless the bare item is part of an "or" list.
        """
        cue_start = cue.modifier_span[0]
        t, c = self.item[target.start], self.item[cue_start]
        if t == c:
            return True
        if self.clause[t] != self.clause[c]:
            return False
        forward = cue_start < target.start
        per_item = self._per_item(cue, c, forward)
        if not forward:
            for k in range(t, c):
                if any(m.category != GRADED for m in self._own(k, cue)):
                    return False
            return not per_item
        for k in range(c + 1, t + 1):
            own = self._own(k, cue)
            if self.joint[k] & DISJUNCTIONS:
                if any(m.category not in (AFFIRMED, GRADED) for m in own):
                    return False
            elif own or (per_item and not self._or_closed(k, cue)):
                return False
        return True


def verdict(categories: set[str]) -> str:
    """A mention's verdict from the categories of the cues that reach it.

    A hedge (ConText POSSIBLE_EXISTENCE or HYPOTHETICAL) makes it ``uncertain`` whatever
    else reaches it; otherwise a negation makes it ``negated``; otherwise ``affirmed``.
    """
    if categories & HEDGES:
        return "uncertain"
    return "negated" if NEGATED in categories else "affirmed"


def entity_verdicts(doc: Any, *, inside: bool = True) -> list[tuple[Any, str]]:
    """``(entity span, verdict)`` for every entity of a ``Doc`` ConText has processed, in
    text order; the verdict is :func:`verdict` of the cues that reach it. ``inside=False``
    ignores cues that overlap the entity: for a target that holds its own predicate ("the
    heart is not enlarged", "device-free chest"), read by its caller."""
    graph = doc._.context_graph
    layout = ClauseLayout(doc, list(graph.modifiers) if graph is not None else [])
    out = []
    for ent in doc.ents:
        cues = [m for m in ent._.modifiers if layout.reaches(ent, m)]
        if not inside:
            cues = [m for m in cues if not _overlaps(m.modifier_span, (ent.start, ent.end))]
        out.append((ent, verdict({m.category for m in cues})))
    return out


def _overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def read_doc(doc: Any) -> dict[str, list[str]]:
    """``{condition: [verdict for each mention]}`` of a ``Doc`` ConText has processed."""
    found: dict[str, list[str]] = {}
    for ent, said in entity_verdicts(doc):
        found.setdefault(ent.label_, []).append(said)
    return found


__all__ = [
    "AFFIRMED",
    "DISJUNCTIONS",
    "GRADED",
    "HEDGES",
    "HYPOTHETICAL",
    "LIST_SEPARATORS",
    "NEGATED",
    "POSSIBLE",
    "ClauseLayout",
    "context_rules",
    "entity_verdicts",
    "read_doc",
    "rule_resource",
    "verdict",
]
