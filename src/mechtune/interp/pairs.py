"""Length-matched (correct, foil) pairs for causal tracing, built from the data layer.

Templates put a negator and an affirmative modifier in the same slot ("There is no edema."
/ "There is severe edema."), across conditions and cue families. Each pair records the
role of every real token (padding is never a token), so effects can be aligned across
pairs:

    start, context, negator (the slot where the two texts differ), modifier (other words
    before the condition), subject_first, subject_rest, period, end

Roles come from the tokenizer's own output (``DualEncoder.token_layouts``), never from
token strings: a token's role is that of the character span it covers (the template's
segments; for user pairs the differing words, the condition's name and the sentence-final
period), and start/end are the special tokens before and after the text. Pairs whose real
token lengths (attention-mask counts) differ are rejected and counted, as are template
pairs with a token that straddles two roles. Orientation: ``negation_in_foil`` (the image
shows the finding; the correct text affirms it) or ``negation_in_caption`` (the finding is
absent; the correct text negates it).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechtune.data.io import read_jsonl_records
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Study
from mechtune.data.splits import record_rng
from mechtune.errors import DataError
from mechtune.interp.tracing import TraceError, TracePair
from mechtune.models.dual_encoder import TokenLayout

ROLES: tuple[str, ...] = (
    "start",
    "context",
    "negator",
    "modifier",
    "subject_first",
    "subject_rest",
    "period",
    "end",
)
# When a token covers characters of several roles, the first of these wins.
ROLE_PRIORITY: tuple[str, ...] = ("negator", "subject", "period", "modifier", "context")
Span = tuple[str, int, int]  # (role, start, end): a character span of a text

# (family, negated segments, affirmative segments); "{slot}" is the differing word.
# Segments are (role, text); the condition's name fills role "subject".
TEMPLATES: tuple[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...]], ...] = (
    (
        "neg.there_is_no",
        (("context", "There is"), ("negator", "no"), ("subject", ""), ("period", ".")),
        (("context", "There is"), ("negator", "{mod}"), ("subject", ""), ("period", ".")),
    ),
    (
        "neg.no",
        (("negator", "No"), ("subject", ""), ("period", ".")),
        (("negator", "{Mod}"), ("subject", ""), ("period", ".")),
    ),
    (
        "neg.no_evidence",
        (("negator", "No"), ("context", "evidence of"), ("subject", ""), ("period", ".")),
        (("negator", "Clear"), ("context", "evidence of"), ("subject", ""), ("period", ".")),
    ),
    (
        "neg.negative_for",
        (("negator", "Negative"), ("context", "for"), ("subject", ""), ("period", ".")),
        (("negator", "Positive"), ("context", "for"), ("subject", ""), ("period", ".")),
    ),
    (
        "neg.not_seen",
        (
            ("subject", ""),
            ("context", "is"),
            ("negator", "not"),
            ("context", "seen"),
            ("period", "."),
        ),
        (
            ("subject", ""),
            ("context", "is"),
            ("negator", "clearly"),
            ("context", "seen"),
            ("period", "."),
        ),
    ),
)


@dataclass
class PairBuild:
    """Pairs that passed, and the count of candidates rejected by reason."""

    pairs: list[TracePair] = field(default_factory=list)
    candidates: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": self.candidates,
            "kept": len(self.pairs),
            "rejected": dict(sorted(self.rejected.items())),
        }


def _realise(segments: Sequence[tuple[str, str]], subject: str, mod: str) -> list[tuple[str, str]]:
    out = []
    for role, text in segments:
        text = subject if role == "subject" else text.format(mod=mod, Mod=mod.capitalize())
        out.append((role, text))
    if out[0][1][:1].islower():
        out[0] = (out[0][0], out[0][1][:1].upper() + out[0][1][1:])
    return out


def compose(segments: Sequence[tuple[str, str]]) -> tuple[str, list[Span]]:
    """The text of ``(role, words)`` segments (space-separated, a period attached to the
    word before it) and each segment's character span."""
    text, spans = "", []
    for role, words in segments:
        if text and not words.startswith("."):
            text += " "
        spans.append((role, len(text), len(text) + len(words)))
        text += words
    return text, spans


def roles_from_spans(layout: TokenLayout, spans: Sequence[Span]) -> tuple[tuple[str, ...], bool]:
    """The role of every real token of ``layout``, and whether a token straddled roles.

    Special tokens (the tokenizer's special-tokens mask) before the first text token are
    ``start``, after the last one ``end``. A text token takes the role of the spans its
    character offsets overlap (``ROLE_PRIORITY`` decides between several; none: context).
    The first token of the subject is ``subject_first``, the others ``subject_rest``.
    """
    text_tokens = [k for k, special in enumerate(layout.special) if not special]
    first = text_tokens[0] if text_tokens else len(layout)
    last = text_tokens[-1] if text_tokens else -1
    roles: list[str] = []
    crossed, seen_subject = False, False
    for k, ((start, end), special) in enumerate(zip(layout.offsets, layout.special, strict=True)):
        if special:
            roles.append("start" if k < first else "end" if k > last else "context")
            continue
        hit = {role for role, a, b in spans if start < b and end > a}
        crossed |= len(hit) > 1
        role = next((r for r in ROLE_PRIORITY if r in hit), "context")
        if role == "subject":
            role = "subject_rest" if seen_subject else "subject_first"
            seen_subject = True
        roles.append(role)
    return tuple(roles), crossed


def _widen_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    return start, end


def _condition_span(text: str, condition: str) -> tuple[int, int] | None:
    """The longest mention in ``text`` of ``condition`` (an ontology id or column, whose
    name, plural and synonyms count, or the literal words), case-insensitive."""
    names = {condition.replace("_", " ")}
    try:
        found = load_ontology().condition(condition)
    except DataError:
        pass
    else:
        names |= {found.name, *found.synonyms, *([found.plural] if found.plural else [])}
    best: tuple[int, int] | None = None
    for name in names:
        match = re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text, flags=re.IGNORECASE)
        if match and (best is None or match.end() - match.start() > best[1] - best[0]):
            best = (match.start(), match.end())
    return best


def user_spans(correct: str, foil: str, condition: str = "") -> list[Span]:
    """Character spans of the roles of a user-supplied correct text.

    negator: the characters where ``correct`` and ``foil`` differ (between their common
    prefix and suffix), widened to whole words; period: a sentence-final "."; subject: the
    condition's mention when ``condition`` is given and found, otherwise the words between
    the negator and the period.
    """
    spans: list[Span] = []
    prefix = 0
    while prefix < min(len(correct), len(foil)) and correct[prefix] == foil[prefix]:
        prefix += 1
    suffix = 0
    while (
        suffix < min(len(correct), len(foil)) - prefix and correct[-1 - suffix] == foil[-1 - suffix]
    ):
        suffix += 1
    neg_start, neg_end = _widen_to_words(correct, prefix, len(correct) - suffix)
    if neg_end > neg_start:
        spans.append(("negator", neg_start, neg_end))
    stripped = correct.rstrip()
    period = len(stripped) - 1 if stripped.endswith(".") else len(stripped)
    if period < len(stripped):
        spans.append(("period", period, period + 1))
    subject = _condition_span(correct, condition) if condition else None
    if subject is None and neg_end > neg_start:
        words = correct[neg_end:period]
        lead = len(words) - len(words.lstrip())
        if words.strip():
            subject = (neg_end + lead, neg_end + lead + len(words.strip()))
    if subject is not None:
        spans.append(("subject", *subject))
    return spans


def infer_roles(correct: TokenLayout, foil: TokenLayout, condition: str = "") -> tuple[str, ...]:
    """Roles of a user-supplied pair's real tokens, from the correct text's offsets and
    special-tokens mask (see :func:`user_spans` and :func:`roles_from_spans`)."""
    return roles_from_spans(correct, user_spans(correct.text, foil.text, condition))[0]


def build_trace_pairs(
    studies: Sequence[tuple[int, Study]], encoder: Any, *, seed: int = 0, per_study: int = 2
) -> PairBuild:
    """Pairs true of each study's image (``(image_row, study)``), both orientations.

    A present condition gives ``negation_in_foil`` pairs (correct: "There is severe X.");
    an absent one gives ``negation_in_caption`` pairs (correct: "There is no X.").
    ``encoder`` needs ``token_layouts`` (a ``DualEncoder``); lengths are real lengths, so
    fixed-length padding (open_clip) builds the same pairs as dynamic padding.
    """
    onto = load_ontology()
    build = PairBuild()
    for row, study in studies:
        rng = record_rng(seed, "trace", study.study_id)
        present = [f for f in study.present() if not onto.condition(f.condition).summary]
        absent = [f for f in study.absent() if not onto.condition(f.condition).summary]
        facts = [(f, True) for f in rng.sample(present, min(per_study, len(present)))] + [
            (f, False) for f in rng.sample(absent, min(per_study, len(absent)))
        ]
        for finding, is_present in facts:
            cond = onto.condition(finding.condition)
            family, negated, affirmative = rng.choice(TEMPLATES)
            mod = finding.severity or (
                rng.choice(cond.severities) if cond.severities else "visible"
            )
            neg = _realise(negated, cond.name, mod)
            aff = _realise(affirmative, cond.name, mod)
            (text_c, spans_c), (text_f, _) = (
                (compose(aff), compose(neg)) if is_present else (compose(neg), compose(aff))
            )
            build.candidates += 1
            layout_c, layout_f = encoder.token_layouts([text_c, text_f])
            if len(layout_c) != len(layout_f):
                build.rejected["token_length_mismatch"] += 1
                continue
            roles, crossed = roles_from_spans(layout_c, spans_c)
            if crossed:
                build.rejected["token_crosses_roles"] += 1
                continue
            build.pairs.append(
                TracePair(
                    text_c,
                    text_f,
                    row,
                    roles,
                    family,
                    cond.id,
                    "negation_in_foil" if is_present else "negation_in_caption",
                )
            )
    return build


def read_pairs_file(path: str | Path) -> list[dict[str, Any]]:
    """JSONL of ``{"correct": ..., "foil": ..., "image": <row or study id>}`` records."""
    return [r for _, r in read_jsonl_records(path, ("correct", "foil", "image"), TraceError)]


def pairs_from_records(
    records: Sequence[dict[str, Any]], encoder: Any, image_row: Callable[[Any], int]
) -> PairBuild:
    """User-supplied pairs: check real token lengths (rejections counted), infer roles
    from offsets (:func:`infer_roles`; an optional ``condition`` key names the subject)."""
    build = PairBuild()
    for record in records:
        build.candidates += 1
        layout_c, layout_f = encoder.token_layouts([record["correct"], record["foil"]])
        if len(layout_c) != len(layout_f):
            build.rejected["token_length_mismatch"] += 1
            continue
        condition = str(record.get("condition", "") or "")
        build.pairs.append(
            TracePair(
                record["correct"],
                record["foil"],
                image_row(record["image"]),
                infer_roles(layout_c, layout_f, condition),
                record.get("family", ""),
                condition,
                record.get("orientation", "negation_in_foil"),
            )
        )
    return build
