"""Precision and recall per attribute of the report-fact extractor (issue #12).

    .venv/bin/python experiments/report_facts_eval.py --n 500 --seed 0 \
        --out experiments/results/report_facts.json

Runs :class:`mechtune.data.report_facts.FactExtractor` (medspacy, the ``clinical`` extra)
with the ``skip`` policy for uncertain mentions over

(a) the hand-written gold set ``tests/data/fixtures/report_sentences.yaml``, all of it and
    its ``ontology``-vocabulary part (sentences whose findings are named with ontology
    phrases; the rest use words the ontology lacks, "opacity", "endotracheal tube", which
    the extractor reads from its report vocabulary, ``resources/report_vocabulary.yaml``).
    This set is the development set of that vocabulary and of the singular and
    coordinated predicate forms: they were added looking at its errors. A set written
    apart from them is measured with ``--fixture``;
(b) ``--n`` phantom reports whose truth findings are complete: the world
    ``WorldConfig.seeded(n, seed)`` exported in MIMIC-CXR-JPG layout and read back with
    ``MimicCxrJpg`` (FINDINGS then IMPRESSION, as a MIMIC user's reports are read).

Facts (:mod:`mechtune.eval.report_facts`): per text, ``existence`` is the set of
``(condition, present)`` of its findings (``present``/``absent`` its two halves),
``laterality`` the set of ``(condition, present, side)`` of findings with a side, ``zone``
and ``severity`` the sets of ``(condition, value)`` of present findings with one, and
``uncertain`` the conditions mentioned only with a hedge (an uncertain mention and no
definite finding). Precision = true extracted facts / extracted facts; recall = extracted
stated facts / stated facts, both pooled over texts, with 95% intervals that treat each
text as a cluster (cluster bootstrap floored at Wilson; ``mechtune.eval.metrics.proportion``).

- Gold set: a fact is true, and stated, when the gold entry lists it.
- Phantom: a fact is true when the study's complete truth agrees
  (:func:`mechtune.eval.report_facts.judge_by_study`: an absence on a side is true when no
  present finding covers that side). Stated facts: a phantom report states every present
  non-summary finding with all its attributes (``mechtune.sim.reports.write_report``), so
  every present fact of the truth is stated; of the absences it states only its pertinent
  negatives, found here as the exact sentence of a negation family for an absent condition.
  A normal study's summary sentence ("The lungs are clear.") states consolidation absent
  in ontology terms; such an absence counts for precision, not recall. Phantom reports
  never hedge, so ``uncertain`` has no stated facts there.

Prints markdown tables and every gold-set error; ``--out`` writes the numbers as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from mechtune.data.ontology import load_ontology
from mechtune.data.report_facts import FactExtractor, Mention, resolve_mentions
from mechtune.data.schema import Finding, Study
from mechtune.data.sources.mimic import MimicCxrJpg
from mechtune.data.text import realise
from mechtune.eval.report_facts import (
    FACT_KINDS,
    Tally,
    facts,
    judge_by_study,
    load_gold,
    score_gold,
)
from mechtune.sim.export import export_mimic
from mechtune.sim.mimic_layout import mimic_study_id
from mechtune.sim.world import WorldConfig, make_world

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests/data/fixtures/report_sentences.yaml"


def hedged(mentions: list[Mention], found: tuple[Finding, ...]) -> set[str]:
    """Conditions with an uncertain mention and no definite finding."""
    definite = {f.condition for f in found}
    return {m.condition for m in mentions if m.status == "uncertain"} - definite


def read(extractor: FactExtractor, text: str) -> tuple[tuple[Finding, ...], set[str]]:
    mentions = extractor.mentions(text)
    found = resolve_mentions(mentions, "skip")
    return found, hedged(mentions, found)


def stated_negatives(report: str, absent: list[str]) -> set[str]:
    """Absent conditions whose pertinent-negative sentence the report holds verbatim."""
    onto = load_ontology()
    out = set()
    for condition in absent:
        for fam in onto.families_of("negation", condition=condition):
            if realise(Finding(condition, False), fam) in report:
                out.add(condition)
                break
    return out


def exported_reports(n: int, seed: int) -> list[tuple[Study, str]]:
    """The world's studies with their reports as a MIMIC-CXR-JPG user reads them: the world
    is exported in MIMIC layout and read back by ``MimicCxrJpg`` (FINDINGS + IMPRESSION)."""
    world = make_world(WorldConfig.seeded(n, seed))
    with tempfile.TemporaryDirectory() as tmp:
        export_mimic(world, Path(tmp) / "mimic", seed=seed)
        source = MimicCxrJpg(Path(tmp) / "mimic")
        texts = {s.study_id: s.report for s in source}
    out = []
    for study in world.studies:
        text = texts[str(mimic_study_id(study.study_id))]
        if text is None:
            raise SystemExit(f"study {study.study_id}: the export has no report")
        out.append((study, text))
    return out


def score_phantom(extractor: FactExtractor, n: int, seed: int) -> dict[str, Tally]:
    onto = load_ontology()
    tallies = {k: Tally() for k in FACT_KINDS}
    for study, report in exported_reports(n, seed):
        found, unsure = read(extractor, report)
        pred = facts(found, unsure)
        present = [
            f for f in study.findings if f.present and not onto.condition(f.condition).summary
        ]
        absent = [f.condition for f in study.findings if not f.present]
        negatives = [Finding(c, False) for c in sorted(stated_negatives(report, absent))]
        stated = facts([*present, *negatives])
        judge = judge_by_study(study.findings)
        for kind, tally in tallies.items():
            tally.add(report, pred[kind], stated[kind], lambda f, k=kind, j=judge: j(k, f))
    return tallies


def table(tallies: dict[str, Tally]) -> tuple[list[str], dict[str, Any]]:
    lines = [
        "| fact | precision [95% CI] | true / extracted | recall [95% CI] | found / stated |",
        "|---|---:|---:|---:|---:|",
    ]
    numbers: dict[str, Any] = {}
    for kind, t in tallies.items():
        p, r = t.precision(), t.recall()
        numbers[kind] = {
            "precision": p.to_dict(),
            "recall": r.to_dict(),
            "true_extracted": [sum(t.true_pred), sum(t.n_pred)],
            "found_stated": [sum(t.found), sum(t.n_stated)],
        }
        lines.append(
            f"| {kind} | {p.pct()} | {sum(t.true_pred)}/{sum(t.n_pred)} | {r.pct()} | "
            f"{sum(t.found)}/{sum(t.n_stated)} |"
        )
    return lines, numbers


def errors(tallies: dict[str, Tally]) -> dict[str, list[str]]:
    return {
        kind: [f"false {f} in {text!r}" for text, f in t.false]
        + [f"missed {f} in {text!r}" for text, f in t.misses]
        for kind, t in tallies.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--fixture", type=Path, default=FIXTURE)
    parser.add_argument("--n", type=int, default=500, help="Phantom reports.")
    parser.add_argument("--seed", type=int, default=0, help="Phantom world seed.")
    parser.add_argument("--out", type=Path, help="Write the numbers here as JSON.")
    args = parser.parse_args()

    start = time.perf_counter()
    extractor = FactExtractor()
    gold = load_gold(args.fixture)
    digest = hashlib.sha256(args.fixture.read_bytes()).hexdigest()
    predictions = [read(extractor, s.text) for s in gold]
    ontology_only = [i for i, s in enumerate(gold) if s.vocabulary == "ontology"]
    gold_all = score_gold(predictions, gold)
    gold_onto = score_gold(
        [predictions[i] for i in ontology_only], [gold[i] for i in ontology_only]
    )
    phantom = score_phantom(extractor, args.n, args.seed)

    shown = args.fixture.resolve()
    shown_name = str(shown.relative_to(ROOT)) if shown.is_relative_to(ROOT) else str(shown)
    result: dict[str, Any] = {"gold": {"fixture": shown_name, "sha256": digest}}
    sections = [
        (f"gold set, all {len(gold)} entries", "all", gold_all),
        (f"gold set, ontology vocabulary ({len(ontology_only)} entries)", "ontology", gold_onto),
        (f"exported phantom reports (n={args.n}, seed={args.seed})", "phantom", phantom),
    ]
    print(f"fixture {shown_name} (sha256 {digest})\n")
    for title, key, tallies in sections:
        lines, numbers = table(tallies)
        print(f"### {title}\n")
        print("\n".join(lines) + "\n")
        result[key] = {"title": title, "facts": numbers, "errors": errors(tallies)}
    print("gold-set errors:")
    for kind, items in result["all"]["errors"].items():
        for item in items:
            print(f"- [{kind}] {item}")
    phantom_errors = [e for items in result["phantom"]["errors"].values() for e in items]
    print(f"\nphantom errors: {len(phantom_errors)}")
    for e in phantom_errors[:20]:
        print(f"- {e}")
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(f"\n{result['seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
