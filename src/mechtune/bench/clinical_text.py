"""Synthetic radiology sentences for the benchmarks, from templates: findings x locations x
severities x negation cues. No phantom world and no data files: the benchmark scripts run
on a machine that has neither.

- :func:`trace_text_pairs`: distinct length-matched (correct, foil) pairs for causal
  tracing, one stating a finding ("there is small left pleural effusion .") and one
  negating it with a cue of the same token length ("there is no left pleural effusion .");
  every pair distinct, so a tracer that traces each distinct text pair once gains nothing.
- :func:`claim_sets` / :func:`negated_captions`: NAST's two supervision formats (arXiv
  2602.12498): a correct claim with hard negatives that change one attribute
  (present<->absent, left<->right, small<->large), and single captions that contain a
  negation.

Every word used is in :data:`WORDS`, so a word-level tokenizer over it never falls back to
the unknown token; each word is one token.
"""

from __future__ import annotations

import itertools
import random

from mechtune.errors import ConfigError

SEVERITIES = ("small", "large", "mild", "moderate", "severe", "trace", "minimal", "extensive")
# The severity a severity hard negative swaps in (small <-> large, mild <-> severe, ...).
OPPOSITE_SEVERITY = {
    "small": "large",
    "large": "small",
    "mild": "severe",
    "severe": "mild",
    "moderate": "minimal",
    "minimal": "moderate",
    "trace": "extensive",
    "extensive": "trace",
}
LOCATIONS = (
    "left",
    "right",
    "bilateral",
    "basilar",
    "left basilar",
    "right basilar",
    "apical",
    "perihilar",
)
# Lateralised locations, for laterality hard negatives.
SIDES = ("left", "right", "left basilar", "right basilar", "left apical", "right apical")
FINDINGS = (
    "pleural effusion",
    "pneumothorax",
    "consolidation",
    "atelectasis",
    "pulmonary edema",
    "opacity",
    "nodule",
    "infiltrate",
    "airspace disease",
    "interstitial markings",
)
# (affirmative frame, negated frame): the negated frame drops the severity and adds a
# one-token cue, so both texts have the same token count.
NEGATION_FRAMES = (
    ("there is {s} {l} {f} .", "there is no {l} {f} ."),
    ("{s} {l} {f} is seen .", "no {l} {f} is seen ."),
    ("{s} {l} {f} is present .", "{l} {f} is not present ."),
    ("evidence of {s} {l} {f} .", "no evidence of {l} {f} ."),
    ("positive for {s} {l} {f} .", "negative for any {l} {f} ."),
    ("findings of {s} {l} {f} .", "free of any {l} {f} ."),
)


def _words() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    texts = [*SEVERITIES, *LOCATIONS, *SIDES, *FINDINGS]
    texts += [frame for pair in NEGATION_FRAMES for frame in pair]
    for text in texts:
        for word in text.replace("{s}", "").replace("{l}", "").replace("{f}", "").split():
            seen.setdefault(word, None)
    return tuple(seen)


WORDS: tuple[str, ...] = _words()  # every word of every template, once, in first-seen order


def _side_flip(location: str) -> str:
    return location.replace("left", "\0").replace("right", "left").replace("\0", "right")


def max_trace_pairs() -> int:
    """How many distinct pairs :func:`trace_text_pairs` can make."""
    return len(NEGATION_FRAMES) * len(SEVERITIES) * len(LOCATIONS) * len(FINDINGS)


def trace_text_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` distinct length-matched (correct, foil) sentence pairs.

    Drawn without replacement from every (frame, severity, location, finding); even-indexed
    pairs have the affirmative text correct and the negated one as foil, odd-indexed pairs
    the reverse, so the negation cue is in the foil for half of them. Raises ConfigError
    when ``n`` is below 1 or above :func:`max_trace_pairs`.
    """
    total = max_trace_pairs()
    if not 1 <= n <= total:
        raise ConfigError(f"pairs must be in 1..{total} (distinct template pairs), got {n}")
    combos = list(itertools.product(NEGATION_FRAMES, SEVERITIES, LOCATIONS, FINDINGS))
    random.Random(seed).shuffle(combos)
    out = []
    for i, ((affirmative, negated), s, loc, f) in enumerate(combos[:n]):
        a, b = affirmative.format(s=s, l=loc, f=f), negated.format(l=loc, f=f)
        out.append((a, b) if i % 2 == 0 else (b, a))
    return out


def claim_sets() -> list[tuple[str, str, str, str]]:
    """Every claim set of the templates: ``(correct, *3 hard negatives)``.

    A present claim ("small left pleural effusion .") gets its absence, its contralateral
    twin and its opposite severity; an absent claim ("no left pleural effusion .") gets
    the finding present, present at the opposite severity, and the contralateral absence.
    ``len(SIDES) * len(SEVERITIES) * len(FINDINGS) * 2`` sets (960).
    """
    out = []
    for side, s, f in itertools.product(SIDES, SEVERITIES, FINDINGS):
        other, opposite = _side_flip(side), OPPOSITE_SEVERITY[s]
        present, absent = f"{s} {side} {f} .", f"no {side} {f} ."
        out.append((present, absent, f"{s} {other} {f} .", f"{opposite} {side} {f} ."))
        out.append((absent, present, f"{opposite} {side} {f} .", f"no {other} {f} ."))
    return out


def negated_captions(n: int, seed: int = 0) -> list[str]:
    """``n`` single captions that state one finding and negate another, NAST's single
    negated caption ("small left pleural effusion . no right pneumothorax ."), drawn
    with replacement. Raises ConfigError for ``n`` below 1."""
    if n < 1:
        raise ConfigError(f"captions must be >= 1, got {n}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        f1, f2 = rng.sample(FINDINGS, 2)
        out.append(
            f"{rng.choice(SEVERITIES)} {rng.choice(LOCATIONS)} {f1} . "
            f"no {rng.choice(LOCATIONS)} {f2} ."
        )
    return out


__all__ = [
    "FINDINGS",
    "LOCATIONS",
    "NEGATION_FRAMES",
    "SEVERITIES",
    "SIDES",
    "WORDS",
    "claim_sets",
    "max_trace_pairs",
    "negated_captions",
    "trace_text_pairs",
]
