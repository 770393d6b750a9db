"""Run the independent polarity check over a built data folder.

Every table row carries enough structure to say which condition each sentence mentions
and with what polarity; this module turns rows into ``LabelledText`` items, samples them
evenly, and runs the clinical negation detector over them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mechtune.data.io import MANIFEST_NAME, read_manifest, write_json
from mechtune.data.polarity_check import LabelledText, Mention, PolarityChecker, PolarityReport
from mechtune.errors import GateFailed

DEFAULT_MAX_DISAGREEMENT = 0.02
DEFAULT_SAMPLE = 2000


class PolarityCheckFailed(GateFailed):
    """The negation detector disagreed with our labels too often."""

    def __init__(self, out_dir: Path, report: PolarityReport, threshold: float) -> None:
        self.report = report
        shown = "; ".join(
            f"{e['text']!r} ({e['condition']}: expected {e['expected']}, got {e['detected']})"
            for e in report.examples[:3]
        )
        super().__init__(
            f"{out_dir}: polarity check failed: disagreement rate "
            f"{report.disagreement_rate:.2%} > {threshold:.2%} "
            f"({report.disagree} of {report.agree + report.disagree} mentions). E.g. {shown}"
        )


def _mention_polarity(polarity: str) -> str:
    return "affirmed" if polarity == "affirmative" else "negated"


def _from_claims(row: dict[str, Any]) -> Iterator[LabelledText]:
    other = {"affirmative": "negated", "negated": "affirmative"}
    polarities = [row["polarity"]] + [
        other[row["polarity"]] if attr == "existence" else row["polarity"]
        for attr in row["flipped"]
    ]
    texts = [row["correct"], *row["negatives"]]
    for text, polarity, family in zip(texts, polarities, row["families"], strict=True):
        yield LabelledText(text, (Mention(row["condition"], _mention_polarity(polarity)),), family)


def _from_captions(row: dict[str, Any]) -> Iterator[LabelledText]:
    mentions = tuple(
        Mention(c, _mention_polarity(p))
        for c, p in zip(row["conditions"], row["polarities"], strict=True)
    )
    yield LabelledText(row["text"], mentions, "+".join(row["families"]))


def _from_mcq(row: dict[str, Any]) -> Iterator[LabelledText]:
    families = row.get("families") or [None, None, None]
    for vec, neg, aff in zip(
        row["labels"], row["negated_options"], row["affirmative_options"], strict=True
    ):
        yield LabelledText(
            neg,
            tuple(
                Mention(c, "affirmed" if v else "negated")
                for c, v in zip(row["conditions"], vec, strict=True)
            ),
            families[1],
        )
        yield LabelledText(
            aff,
            tuple(
                Mention(c, "affirmed" if v else "absence_affirmative")
                for c, v in zip(row["conditions"], vec, strict=True)
            ),
            families[2],
        )


def _from_paraphrases(row: dict[str, Any]) -> Iterator[LabelledText]:
    if not row["condition"]:
        return  # an imported question of unknown condition cannot be checked
    mention = (Mention(row["condition"], "affirmed"),)
    yield LabelledText(row["question"], mention, "original")
    families = row["families"] or [None] * len(row["paraphrases"])
    for text, family in zip(row["paraphrases"], families, strict=True):
        yield LabelledText(text, mention, family)


_EXTRACTORS = {
    "claims": _from_claims,
    "captions": _from_captions,
    "mcq": _from_mcq,
    "paraphrases": _from_paraphrases,
}


def _read_rows(path: Path, sample: int | None) -> list[dict[str, Any]]:
    """Read all rows, or ``sample`` rows evenly spaced (deterministic)."""
    if path.suffix == ".parquet":
        table = pq.read_table(path)
        n = table.num_rows
        if sample is not None and n > sample:
            table = table.take([i * n // sample for i in range(sample)])
        return table.to_pylist()
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    if sample is not None and len(rows) > sample:
        rows = [rows[i * len(rows) // sample] for i in range(sample)]
    return rows


def labelled_texts(out_dir: str | Path, *, sample_rows: int | None = None) -> list[LabelledText]:
    """Every checkable sentence in a data folder (from ``sample_rows`` rows per table)."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    items: list[LabelledText] = []
    for name in sorted(manifest["files"]):
        table = name.split(".")[0]
        if table not in _EXTRACTORS:
            continue
        for row in _read_rows(out / name, sample_rows):
            items.extend(_EXTRACTORS[table](row))
    return items


def check_dataset(
    out_dir: str | Path,
    *,
    sample_rows: int | None = DEFAULT_SAMPLE,
    max_disagreement: float = DEFAULT_MAX_DISAGREEMENT,
    checker: PolarityChecker | None = None,
    record: bool = True,
) -> PolarityReport:
    """Check a data folder; record the result in its manifest; raise if it fails."""
    out = Path(out_dir)
    report = (checker or PolarityChecker()).check(labelled_texts(out, sample_rows=sample_rows))
    if record:
        manifest = read_manifest(out)
        manifest["polarity_check"] = {
            "sample_rows": sample_rows,
            "max_disagreement": max_disagreement,
            "passed": report.passes(max_disagreement),
            **report.to_dict(),
        }
        write_json(out / MANIFEST_NAME, manifest, sort_keys=True)
    if not report.passes(max_disagreement):
        raise PolarityCheckFailed(out, report, max_disagreement)
    return report
