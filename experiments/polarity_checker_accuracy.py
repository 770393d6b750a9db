"""Per-cue-category accuracy of the independent polarity check on hand-labelled sentences.

    .venv/bin/python experiments/polarity_checker_accuracy.py \
        --json experiments/results/polarity_checker_after.json \
        --before experiments/results/polarity_checker_before.json

Reads the reference file (default: the test fixture ``tests/data/fixtures/negation_scope.yaml``),
runs the real ``PolarityChecker`` (medspacy ConText, the ``clinical`` extra) over every
sentence, and prints a markdown table of mention accuracy per cue category with a 95%
Wilson interval, then every wrong mention. ``--before`` adds the accuracy column of an
earlier run's JSON, so that one table shows before and after. ``--plain`` reads with plain
medspacy instead: its default ConText rules and the same targets, none of mechtune's
rules (a reference point; ``is_uncertain``/``is_hypothetical`` read as uncertain).
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path
from typing import Any

from mechtune.data.ontology import load_ontology
from mechtune.data.polarity_check import PolarityChecker
from mechtune.data.polarity_eval import (
    accuracy_by_category,
    load_reference_sentences,
    score_reference,
)

FIXTURE = Path(__file__).resolve().parents[1] / "tests/data/fixtures/negation_scope.yaml"


def _shown(path: Path) -> str:
    root = FIXTURE.parents[3]
    path = path.resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _pct(acc: dict[str, Any]) -> str:
    low, high = acc["ci95"]
    return (
        f"{acc['mentions_right']}/{acc['mentions']} = {100 * acc['accuracy']:.0f}% "
        f"[{100 * low:.0f}, {100 * high:.0f}]"
    )


class PlainMedspacy:
    """medspacy's default pipeline and ConText rules, with a target for every ontology phrase."""

    def __init__(self) -> None:
        import medspacy
        from loguru import logger
        from medspacy.ner import TargetRule

        logger.disable("PyRuSH")  # it logs every sentence at DEBUG level
        self.nlp = medspacy.load()
        phrases = {
            (p[2:] if p.startswith("a ") else p[3:] if p.startswith("an ") else p, c.id)
            for c in load_ontology().pathologies
            for p in (c.name, *c.synonyms, c.lay_term, *([c.plural] if c.plural else []))
        }
        rules = [TargetRule(p, cid) for p, cid in sorted(phrases)]
        self.nlp.get_pipe("medspacy_target_matcher").add(rules)

    def read(self, text: str) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for ent in self.nlp(text).ents:
            hedged = ent._.is_uncertain or ent._.is_hypothetical
            verdict = "uncertain" if hedged else "negated" if ent._.is_negated else "affirmed"
            found.setdefault(ent.label_, []).append(verdict)
        return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--json", type=Path, help="Write the numbers here.")
    parser.add_argument("--before", type=Path, help="An earlier run's JSON, shown beside.")
    parser.add_argument("--plain", action="store_true", help="Read with plain medspacy.")
    args = parser.parse_args()

    digest = hashlib.sha256(args.fixture.read_bytes()).hexdigest()
    sentences = load_reference_sentences(args.fixture)
    reader = PlainMedspacy() if args.plain else PolarityChecker()
    table = accuracy_by_category(score_reference(reader, sentences))
    result = {
        "reader": "plain medspacy" if args.plain else "mechtune PolarityChecker",
        "fixture": _shown(args.fixture),
        "sha256": digest,
        "sentences": len(sentences),
        "categories": {k: v.to_dict() for k, v in table.items()},
    }
    before = json.loads(args.before.read_text())["categories"] if args.before else None

    print(f"fixture {_shown(args.fixture)} (sha256 {digest}), {len(sentences)} sentences\n")
    head = ["cue category", "sentences", "mentions"]
    head += ["before: right / mentions [95% CI]"] if before else []
    head += ["right / mentions [95% CI]", "sentences all right"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|")
    for name, acc in result["categories"].items():
        row = [name if name != "all" else "**all**", str(acc["sentences"]), str(acc["mentions"])]
        if before:
            row.append(_pct(before[name]) if name in before else "–")
        row += [_pct(acc), f"{acc['sentences_right']}/{acc['sentences']}"]
        print("| " + " | ".join(row) + " |")
    print("\nwrong mentions:")
    for name, acc in result["categories"].items():
        if name == "all":
            continue
        for w in acc["wrong"]:
            print(
                f"- [{name}] {w['text']!r}: {w['condition']} expected {w['expected']}, got {w['got']}"
            )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
