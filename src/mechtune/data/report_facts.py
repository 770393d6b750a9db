"""Structured facts from radiology report text: ``Finding(condition, present, laterality,
zone, severity)``.

Label CSVs give existence only; the contextual counterfactuals also flip side and size,
and reports say both. :class:`FactExtractor` reads a report with the medspacy/ConText
pipeline of the independent polarity check (:func:`mechtune.data.polarity_check.
build_context_pipeline`: the same condition targets, sentence splitter and radiology
ConText rules, with the same list and clause scope, :mod:`mechtune.data.polarity_rules`),
plus targets for plurals, predicate forms ("the heart is enlarged", "the right lung is
clear", "lungs are well expanded and clear") and affirmative statements of absence ("heart
size is normal"; the ontology's ``absent_affirmative`` phrases), built from the ontology,
and a report-side vocabulary the ontology does not list, per condition, after the CheXpert
labeler's mention lists ("opacity", "nodule", "endotracheal tube", "pericardial effusion"
as an unmention; :mod:`mechtune.data.report_vocabulary`, :func:`mechtune.data.
report_targets.extra_targets`), with its ConText rules for removed devices. The polarity
check reads none of these. Side, zone and size come from the mention's noun phrase and
the words after it (:mod:`mechtune.data.report_modifiers`).

**Status of a mention** is the polarity check's verdict (the two readers agree on every
hand-labelled sentence of the polarity check; tested): ``affirmed`` -> ``present``, ``negated`` -> ``absent``, ``uncertain`` (a ConText
hedge or indication reaches it: "cannot be excluded", "possible", "may represent",
"questionable", "likely", "concerning for", "versus", "evaluate for") -> ``uncertain``.
Temporal wording follows the same rules: "no change in X", "unchanged X", "persistent X",
"new X", "improved/decreased X", "partially resolved X" are present (X is still there);
"X has resolved", "resolved X", "interval resolution of X", "X is no longer seen" are
absent. A statement of absence in affirmative words ("the lungs are clear") is ``absent``
when affirmed, ``uncertain`` when hedged, and no mention when negated ("the lungs are not
clear" says nothing definite about consolidation). A predicate-form target negated inside
("the heart is not enlarged") is ``absent``. A broader finding ("no acute osseous
abnormality") gives an ``absent`` mention only when negated, and an unmention phrase
("pericardial effusion") none. The ``no_finding`` summary label is never
extracted: it is a conclusion of the labeler, not a finding of the report.

**Findings of a report** (:meth:`FactExtractor.findings`) resolve the mentions of each
condition into a Study-valid set, in three tiers:

1. definite present mentions. Mentions of the same side merge, each attribute taken from
   the first mention that states it (the most specific mention wins); a side-less mention
   lends its zone and severity to the sided ones and is dropped when a sided one exists; a
   left and a right finding with the same zone and severity become one bilateral finding
   where the condition allows it (else they stay two), and a bilateral finding absorbs a
   left or right one;
2. definite absent mentions, on sides no present finding covers (present wins over absent
   on the same side; "no side" covers both sides). A side-less absence absorbs sided ones;
3. uncertain mentions, per the ``uncertain`` policy (``mechtune.data.importers.
   UNCERTAIN_POLICIES``, as for ``-1.0`` labels): ``skip`` drops them, ``present`` and
   ``absent`` read them so, and they are kept only on sides no definite finding covers (a
   definite statement beats a hedged one).

Absent findings carry no zone or severity (``Finding`` forbids them), though the mention
keeps what the sentence said ("no large pneumothorax").

:func:`merge_findings` joins label findings and report findings: labels win for existence.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mechtune.data.importers import UNCERTAIN_POLICIES
from mechtune.data.ontology import load_ontology
from mechtune.data.report_modifiers import attribute_groups, ontology_attributes
from mechtune.data.report_targets import (
    ABSENCE,
    ABSENT_IF_NEGATED,
    NOT_A_FINDING,
    extra_targets,
    label_kind,
    parse_label,
)
from mechtune.data.report_vocabulary import report_vocabulary
from mechtune.data.schema import Finding, Study
from mechtune.errors import ConfigError

STATUSES = ("present", "absent", "uncertain")
_STATUS_OF_VERDICT = {"affirmed": "present", "negated": "absent", "uncertain": "uncertain"}
INSTALL_HINT = "reading facts from reports needs medspacy: pip install 'mechtune[clinical]'"


@dataclass(frozen=True)
class Mention:
    """One statement of a condition in report text, with the attributes it gives.

    ``status`` is ``present``, ``absent`` or ``uncertain``; ``laterality``, ``zone`` and
    ``severity`` are None or values the ontology allows for the condition. ``sentence`` is
    the sentence it stands in; ``start``/``end`` are character offsets of the matched
    phrase in the text read. Raises ``ConfigError`` for an unknown status.
    """

    condition: str
    status: str
    laterality: str | None
    zone: str | None
    severity: str | None
    sentence: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"Mention.status must be one of {STATUSES}; got {self.status!r}")


def _collapse_whitespace(text: str) -> tuple[str, list[int]]:
    """``(collapsed text, offset in text of each collapsed character)``: every whitespace
    run becomes one space, or a blank line when it holds two line breaks."""
    pieces: list[str] = []
    where: list[int] = []
    pos = 0
    for run in re.finditer(r"\s+", text):
        pieces.append(text[pos : run.start()])
        where.extend(range(pos, run.start()))
        gap = "\n\n" if run.group().count("\n") >= 2 else " "
        pieces.append(gap)
        where.extend([run.start()] * len(gap))
        pos = run.end()
    pieces.append(text[pos:])
    where.extend(range(pos, len(text)))
    return "".join(pieces), where


def _status(verdict: str, kind: str, negated_inside: bool) -> str | None:
    """A mention's status from its ConText verdict, the kind of its target
    (:data:`mechtune.data.report_targets.LABEL_KINDS`), and whether the target holds a
    negation ("heart is not enlarged")."""
    status = _STATUS_OF_VERDICT[verdict]
    if kind == NOT_A_FINDING:
        return None
    if kind == ABSENT_IF_NEGATED:
        return "absent" if status == "absent" and not negated_inside else None
    if kind == ABSENCE:
        if negated_inside or status == "absent":
            return None
        return "absent" if status == "present" else status
    if negated_inside:
        return {"present": "absent", "absent": None, "uncertain": "uncertain"}[status]
    return status


class FactExtractor:
    """Reads radiology report text into mentions and Study-valid findings.

    Building it loads medspacy and compiles the rules (a few seconds): build once, reuse.
    Raises ``MissingExtraError`` (an ``ImportError``) naming the ``clinical`` extra when
    medspacy is missing.
    """

    def __init__(self) -> None:
        from mechtune.data.polarity_check import build_context_pipeline

        self.nlp = build_context_pipeline(
            extra_targets(),
            extra_rules=report_vocabulary().context_rules,
            install_hint=INSTALL_HINT,
        )

    def mentions(self, text: str) -> list[Mention]:
        """Every mention of a condition in ``text``, in text order (see the module docstring
        for status and attributes). One phrase can give several mentions: "small left and
        moderate right pleural effusions" gives two.

        Reports are hard-wrapped ("small left\npleural effusion"): the text is read with
        each whitespace run collapsed to a space, or to a blank line where it holds one (a
        paragraph break), and offsets are mapped back to ``text``; ``sentence`` is the
        collapsed sentence.
        """
        from mechtune.data.polarity_check import quiet_spacy
        from mechtune.data.polarity_rules import entity_verdicts

        flat, where = _collapse_whitespace(text)
        with quiet_spacy():
            doc = self.nlp(flat)
        read = entity_verdicts(doc, inside=False)
        groups = attribute_groups(doc, [ent for ent, _ in read])
        onto = load_ontology()
        out: list[Mention] = []
        for (ent, verdict), ent_groups in zip(read, groups, strict=True):
            conditions, _ = parse_label(ent.label_)
            inside = any(t.lower_ in ("not", "n't") for t in ent)
            status = _status(verdict, label_kind(ent.label_), inside)
            if status is None:
                continue
            for condition in conditions:
                cond = onto.condition(condition)
                seen: set[tuple[str | None, str | None, str | None]] = set()
                for group in ent_groups:
                    for attrs in ontology_attributes(cond, group):
                        if attrs in seen:
                            continue
                        seen.add(attrs)
                        side, zone, severity = attrs
                        out.append(
                            Mention(
                                cond.id,
                                status,
                                side,
                                zone,
                                severity,
                                ent.sent.text.strip(),
                                where[ent.start_char],
                                where[ent.end_char - 1] + 1,
                            )
                        )
        return out

    def findings(self, text: str, uncertain: str = "skip") -> tuple[Finding, ...]:
        """The report's findings, Study-valid (see the module docstring for how mentions
        resolve). ``uncertain`` is one of ``UNCERTAIN_POLICIES``: ``skip``, ``present`` or
        ``absent``. Raises ``ConfigError`` for another policy."""
        return resolve_mentions(self.mentions(text), uncertain)


# -- resolution ------------------------------------------------------------------------------


def _lungs(side: str | None) -> set[str]:
    return {"left", "right"} if side in (None, "bilateral") else {str(side)}


def _covers(a: str | None, b: str | None) -> bool:
    """Whether sides ``a`` and ``b`` share a lung (None: both sides), as ``Study`` checks."""
    return bool(_lungs(a) & _lungs(b))


def _merge_present(condition: str, mentions: Sequence[Mention]) -> list[Finding]:
    """Tier 1 of the module docstring: present mentions of one condition -> findings."""
    cond = load_ontology().condition(condition)
    by_side: dict[str | None, list[str | None]] = {}  # side -> [zone, severity]
    for m in mentions:
        attrs = by_side.setdefault(m.laterality, [None, None])
        attrs[0] = attrs[0] or m.zone
        attrs[1] = attrs[1] or m.severity
    sided = [s for s in by_side if s is not None]
    if sided and None in by_side:
        loose = by_side.pop(None)
        for s in sided:
            by_side[s] = [a or b for a, b in zip(by_side[s], loose, strict=True)]
    if "bilateral" in by_side:
        for s in ("left", "right"):
            if s in by_side:
                side_attrs = by_side.pop(s)
                by_side["bilateral"] = [
                    a or b for a, b in zip(by_side["bilateral"], side_attrs, strict=True)
                ]
    elif (
        "left" in by_side
        and "right" in by_side
        and by_side["left"] == by_side["right"]
        and "bilateral" in cond.laterality
    ):
        attrs = by_side.pop("left")
        del by_side["right"]
        by_side["bilateral"] = attrs
    return [Finding(condition, True, s, z, sev) for s, (z, sev) in by_side.items()]


def _merge_absent(condition: str, mentions: Sequence[Mention]) -> list[Finding]:
    """Absent mentions of one condition -> findings: a side-less absence absorbs the rest."""
    sides = list(dict.fromkeys(m.laterality for m in mentions))
    if None in sides:
        sides = [None]
    return [Finding(condition, False, s) for s in sides]


def _add(kept: list[Finding], new: Iterable[Finding]) -> None:
    """Append the findings of ``new`` whose sides no finding in ``kept`` covers."""
    base = list(kept)
    kept.extend(f for f in new if not any(_covers(f.laterality, k.laterality) for k in base))


def resolve_mentions(mentions: Iterable[Mention], uncertain: str = "skip") -> tuple[Finding, ...]:
    """Study-valid findings from mentions, condition by condition, in order of first mention
    (the tiers of the module docstring). Raises ``ConfigError`` for an ``uncertain`` policy
    not in ``UNCERTAIN_POLICIES``."""
    if uncertain not in UNCERTAIN_POLICIES:
        raise ConfigError(
            f"uncertain must be one of {', '.join(UNCERTAIN_POLICIES)}; got {uncertain!r}"
        )
    by_condition: dict[str, list[Mention]] = {}
    for m in mentions:
        by_condition.setdefault(m.condition, []).append(m)
    out: list[Finding] = []
    for condition, ms in by_condition.items():
        kept = _merge_present(condition, [m for m in ms if m.status == "present"])
        _add(kept, _merge_absent(condition, [m for m in ms if m.status == "absent"]))
        hedged = [m for m in ms if m.status == "uncertain"]
        if hedged and uncertain == "present":
            _add(kept, _merge_present(condition, hedged))
        elif hedged and uncertain == "absent":
            _add(kept, _merge_absent(condition, hedged))
        out.extend(kept)
    return tuple(out)


def merge_findings(
    label_findings: Sequence[Finding], report_findings: Sequence[Finding]
) -> tuple[Finding, ...]:
    """Label findings and report findings of one study, labels winning for existence.

    For a condition the labels state, its existence is the labels' (present if any label
    finding of it is present, as ``Study.label``): a present label takes its side, zone and
    severity from the report's present findings of the condition (several report findings
    give several findings); where the report has none, the label findings stay as they
    are. An absent label stays as the labels give it: a side-less absence already covers
    both sides, and a report's side would only narrow it. A condition the labels do not
    state takes the report's findings. Conditions keep the labels' order, then the
    report's. Raises ``RecordError`` if the inputs are not each Study-valid.
    """
    labels: dict[str, list[Finding]] = {}
    for f in label_findings:
        labels.setdefault(f.condition, []).append(f)
    report: dict[str, list[Finding]] = {}
    for f in report_findings:
        report.setdefault(f.condition, []).append(f)
    out: list[Finding] = []
    for condition, stated in labels.items():
        present = any(f.present for f in stated)
        said = [f for f in report.get(condition, []) if f.present] if present else []
        out.extend(said or stated)
    for condition, said in report.items():
        if condition not in labels:
            out.extend(said)
    merged = tuple(out)
    Study("merge_findings", "merge_findings", merged)  # raises RecordError if not Study-valid
    return merged


__all__ = [
    "STATUSES",
    "FactExtractor",
    "Mention",
    "merge_findings",
    "resolve_mentions",
]
