"""What every builder shares: Arrow schemas of the records, the write loop, the manifest."""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from mechtune.data.io import TableWriter, table_filename, write_manifest
from mechtune.data.schema import SPLITS, Caption, ClaimSet, MCQPair, ParaphraseSet, Study
from mechtune.data.splits import patient_split
from mechtune.errors import DataError

Progress = Callable[[int], None]
SplitOf = Callable[[Study], str]


def study_split(
    study: Study, seed: int, fractions: tuple[float, float, float], split_of: SplitOf | None
) -> str:
    """The split a builder files a study under.

    ``split_of`` is the data source's own rule (MIMIC's official split file, a manifest's
    split column, a saved world's patient split); without one, the patients are split by
    a hash of ``seed`` and the id (:func:`mechtune.data.splits.patient_split`) into
    ``fractions``. Raises ``DataError`` when ``split_of`` returns something else than
    train, val or test.
    """
    if split_of is None:
        return patient_split(study.patient_id, seed, fractions)
    split = split_of(study)
    if split not in SPLITS:
        raise DataError(
            f"study {study.study_id!r}: the source's split {split!r} is not one of {SPLITS}"
        )
    return split


"""Called with the number of input studies consumed since the last call."""

_STR = pa.string()
_STRS = pa.list_(pa.string())

SCHEMAS: dict[type, pa.Schema] = {
    ClaimSet: pa.schema(
        [
            ("claim_set_id", _STR),
            ("study_id", _STR),
            ("patient_id", _STR),
            ("condition", _STR),
            ("correct", _STR),
            ("negatives", _STRS),
            ("flipped", _STRS),
            ("families", _STRS),
            ("polarity", _STR),
            ("heldout_family", pa.bool_()),
            ("contralateral", pa.bool_()),
            ("split", _STR),
        ]
    ),
    Caption: pa.schema(
        [
            ("caption_id", _STR),
            ("study_id", _STR),
            ("patient_id", _STR),
            ("text", _STR),
            ("conditions", _STRS),
            ("polarities", _STRS),
            ("families", _STRS),
            ("heldout_family", pa.bool_()),
            ("split", _STR),
        ]
    ),
    MCQPair: pa.schema(
        [
            ("mcq_id", _STR),
            ("study_id", _STR),
            ("patient_id", _STR),
            ("question", _STR),
            ("conditions", _STRS),
            ("labels", pa.list_(pa.list_(pa.int8()))),
            ("negated_options", _STRS),
            ("affirmative_options", _STRS),
            ("correct_index", pa.int8()),
            ("families", _STRS),
            ("split", _STR),
        ]
    ),
    ParaphraseSet: pa.schema(
        [
            ("question_id", _STR),
            ("study_id", _STR),
            ("patient_id", _STR),
            ("condition", _STR),
            ("question", _STR),
            ("paraphrases", _STRS),
            ("strategies", _STRS),
            ("families", _STRS),
            ("answer", pa.bool_()),
            ("image_ref", _STR),
            ("heldout_family", pa.list_(pa.bool_())),
            ("split", _STR),
        ]
    ),
}

TABLE_RECORDS: dict[str, type] = {
    "claims": ClaimSet,
    "captions": Caption,
    "mcq": MCQPair,
    "paraphrases": ParaphraseSet,
}


def _check_schemas() -> None:
    for record, schema in SCHEMAS.items():
        names = [f.name for f in dataclasses.fields(record)]
        if names != schema.names:
            raise AssertionError(f"{record.__name__}: schema {schema.names} != fields {names}")


_check_schemas()


@dataclass
class BuildResult:
    """What a builder wrote: where, how many rows of what, and counts worth reporting."""

    out_dir: Path
    kind: str
    files: list[str]
    counts: dict[str, Any] = field(default_factory=dict)
    manifest: Path | None = None


class TableSet:
    """Open one streaming table per record type in ``out_dir``; count rows by split."""

    def __init__(self, out_dir: Path, names: Iterable[str], fmt: str) -> None:
        self.out_dir = out_dir
        self.writers: dict[str, TableWriter] = {}
        self.by_split: dict[str, Counter[str]] = {}
        for name in names:
            schema = SCHEMAS[TABLE_RECORDS[name]]
            self.writers[name] = TableWriter(out_dir / table_filename(name, fmt), schema, fmt=fmt)
            self.by_split[name] = Counter()

    def write(self, name: str, record: Any) -> None:
        row = record.to_dict()
        self.writers[name].write(row)
        self.by_split[name][row["split"]] += 1

    @property
    def files(self) -> list[str]:
        return [w.path.name for w in self.writers.values()]

    def close(self, exc: BaseException | None = None) -> None:
        for writer in self.writers.values():
            if exc is None:
                writer.close()
            else:
                writer.abort(exc)

    def __enter__(self) -> TableSet:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.close(exc)

    def counts(self) -> dict[str, Any]:
        return {
            name: {"rows": sum(c.values()), "by_split": dict(sorted(c.items()))}
            for name, c in self.by_split.items()
        }


def finish(
    result: BuildResult, *, config: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> BuildResult:
    result.manifest = write_manifest(
        result.out_dir,
        kind=result.kind,
        config=config,
        counts=result.counts,
        files=result.files,
        extra=extra,
    )
    return result


def counted(studies: Iterable[Any], progress: Progress | None, every: int = 256) -> Iterator[Any]:
    """Pass studies through, reporting progress in chunks (cheap on hot loops)."""
    pending = 0
    for study in studies:
        yield study
        pending += 1
        if progress is not None and pending >= every:
            progress(pending)
            pending = 0
    if progress is not None and pending:
        progress(pending)
