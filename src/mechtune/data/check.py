"""Run the independent polarity check over a built data folder.

Every table row carries enough structure to say which condition each sentence mentions
and with what polarity; this module turns rows into ``LabelledText`` items, samples them
evenly, and runs the clinical negation detector over them. The gate fails when more than
``max_disagreement`` of the decided mentions disagree with their label (default 2%) or
more than ``max_uncertain`` of the matched mentions read as uncertain (default 5%); the
result, both limits and the rates by family and by labelled polarity go into the manifest.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mechtune.data.io import MANIFEST_NAME, read_manifest, write_json
from mechtune.data.polarity_check import (
    DEFAULT_MAX_UNCERTAIN,
    LabelledText,
    Mention,
    PolarityChecker,
    PolarityReport,
)
from mechtune.errors import ConfigError, GateFailed
from mechtune.progress import Tracker, stage

DEFAULT_MAX_DISAGREEMENT = 0.02
DEFAULT_SAMPLE = 2000


def _shown(examples: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{e['text']!r} ({e['condition']}: expected {e['expected']}, got {e['detected']})"
        for e in examples[:3]
    )


class PolarityCheckFailed(GateFailed):
    """The negation detector disagreed with our labels, or was uncertain, too often."""

    def __init__(
        self,
        out_dir: Path,
        report: PolarityReport,
        threshold: float,
        max_uncertain: float = DEFAULT_MAX_UNCERTAIN,
    ) -> None:
        self.report = report
        parts = []
        if report.disagreement_rate > threshold:
            parts.append(f"{report.failures(threshold, 1.0)[0]}. E.g. {_shown(report.examples)}")
        if report.uncertain_rate > max_uncertain:
            parts.append(
                f"{report.failures(1.0, max_uncertain)[0]}. "
                f"E.g. {_shown(report.uncertain_examples)}"
            )
        super().__init__(f"{out_dir}: polarity check failed: " + "; and ".join(parts))


def _check_limits(max_disagreement: float, max_uncertain: float) -> None:
    for name, value in (("max_disagreement", max_disagreement), ("max_uncertain", max_uncertain)):
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{name} must be a rate in [0, 1], got {value!r}")


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
    max_uncertain: float = DEFAULT_MAX_UNCERTAIN,
    checker: PolarityChecker | None = None,
    record: bool = True,
    track: Tracker | None = None,
) -> PolarityReport:
    """Check a data folder; record the result in its manifest; raise if it fails.

    The gate fails when the disagreement rate (over decided mentions) exceeds
    ``max_disagreement`` or the uncertain rate (over matched mentions) exceeds
    ``max_uncertain``: a detector that cannot decide has not checked the label either.
    Raises ``ConfigError`` for a limit outside [0, 1] and ``PolarityCheckFailed`` (a
    ``GateFailed``) naming the rate(s) over their limit, with examples. ``track`` gets one
    stage counting the sentences checked.
    """
    _check_limits(max_disagreement, max_uncertain)
    out = Path(out_dir)
    texts = labelled_texts(out, sample_rows=sample_rows)
    with stage(track, f"polarity check: {out}", len(texts)) as advance:
        report = (checker or PolarityChecker()).check(texts, progress=advance)
    passed = report.passes(max_disagreement, max_uncertain)
    if record:
        manifest = read_manifest(out)
        manifest["polarity_check"] = {
            "sample_rows": sample_rows,
            "max_disagreement": max_disagreement,
            "max_uncertain": max_uncertain,
            "passed": passed,
            **report.to_dict(),
        }
        write_json(out / MANIFEST_NAME, manifest, sort_keys=True)
    if not passed:
        raise PolarityCheckFailed(out, report, max_disagreement, max_uncertain)
    return report
