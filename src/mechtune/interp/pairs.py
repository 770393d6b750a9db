"""Length-matched (correct, foil) pairs for causal tracing, built from the data layer.

Templates put a negator and an affirmative modifier in the same slot ("There is no edema."
/ "There is severe edema."), across conditions and cue families. Each pair records the
role of every token position, so effects can be aligned across pairs:

    start, context, negator (the slot where the two texts differ), modifier (other words
    before the condition), subject_first, subject_rest, period, end

Pairs whose token lengths differ under a model's tokenizer are rejected and counted.
Orientation: ``negation_in_foil`` (the image shows the finding; the correct text affirms
it) or ``negation_in_caption`` (the finding is absent; the correct text negates it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mechtune.data.io import read_jsonl_records
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Study
from mechtune.data.splits import record_rng
from mechtune.interp.tracing import TraceError, TracePair

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
NEGATORS = frozenset({"no", "not", "without", "negative", "absent", "free", "none"})

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


def _text(segments: Sequence[tuple[str, str]]) -> str:
    text = " ".join(t for _, t in segments)
    return text.replace(" .", ".")


def position_roles(
    segments: Sequence[tuple[str, str]], tokenize: Callable[[str], list[str]], full: list[str]
) -> tuple[str, ...] | None:
    """Role of every token position of ``full`` (specials included), or None if the
    segments do not tokenise to the same tokens as the whole text."""
    body: list[str] = []
    roles: list[str] = []
    for role, text in segments:
        pieces = tokenize(text)
        if role == "subject":
            roles += ["subject_first"] + ["subject_rest"] * (len(pieces) - 1)
        else:
            roles += [role] * len(pieces)
        body += pieces
    inner = full[1:-1]
    if [b.lower() for b in body] != [t.lower() for t in inner]:
        return None
    return ("start", *roles, "end")


def infer_roles(correct: list[str], foil: list[str]) -> tuple[str, ...]:
    """Roles for user-supplied pairs: the differing slot is the negator; what follows it
    up to the period is the subject; the rest is context."""
    diff = [i for i, (a, b) in enumerate(zip(correct, foil, strict=True)) if a != b]
    last = len(correct) - 1
    roles = []
    for i, tok in enumerate(correct):
        if i == 0:
            roles.append("start")
        elif i == last:
            roles.append("end")
        elif tok == ".":
            roles.append("period")
        elif i in diff:
            roles.append("negator")
        elif diff and i == max(diff) + 1:
            roles.append("subject_first")
        elif diff and i > max(diff) + 1 and "." in correct[i:]:
            roles.append("subject_rest")
        else:
            roles.append("context")
    return tuple(roles)


def build_trace_pairs(
    studies: Sequence[tuple[int, Study]], encoder: Any, *, seed: int = 0, per_study: int = 2
) -> PairBuild:
    """Pairs true of each study's image (``(image_row, study)``), both orientations.

    A present condition gives ``negation_in_foil`` pairs (correct: "There is severe X.");
    an absent one gives ``negation_in_caption`` pairs (correct: "There is no X.").
    """
    onto = load_ontology()
    build = PairBuild()
    tok = encoder.tokenizer

    def pieces(text: str) -> list[str]:
        return list(tok.tokenize(text))

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
            correct, foil = (aff, neg) if is_present else (neg, aff)
            build.candidates += 1
            full_c = encoder.token_strings(
                encoder.tokenize([_text(correct)])["input_ids"][0].tolist()
            )
            full_f = encoder.token_strings(encoder.tokenize([_text(foil)])["input_ids"][0].tolist())
            if len(full_c) != len(full_f):
                build.rejected["token_length_mismatch"] += 1
                continue
            roles = position_roles(correct, pieces, full_c)
            if roles is None:
                build.rejected["segment_tokenisation_mismatch"] += 1
                continue
            build.pairs.append(
                TracePair(
                    _text(correct),
                    _text(foil),
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
    """User-supplied pairs: check lengths (rejections counted), infer token roles."""
    build = PairBuild()
    for record in records:
        build.candidates += 1
        full_c = encoder.token_strings(
            encoder.tokenize([record["correct"]])["input_ids"][0].tolist()
        )
        full_f = encoder.token_strings(encoder.tokenize([record["foil"]])["input_ids"][0].tolist())
        if len(full_c) != len(full_f):
            build.rejected["token_length_mismatch"] += 1
            continue
        build.pairs.append(
            TracePair(
                record["correct"],
                record["foil"],
                image_row(record["image"]),
                infer_roles(full_c, full_f),
                record.get("family", ""),
                record.get("condition", ""),
                record.get("orientation", "negation_in_foil"),
            )
        )
    return build
