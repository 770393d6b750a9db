"""Atomic, deterministic, streaming output: Parquet or JSONL tables plus a manifest, and
the one JSON encoder every JSON file mechtune writes goes through (:func:`dumps_json`)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import mechtune
from mechtune.data.verify import CANONICAL_VERSION, GROUP_ROWS, combine, content_hashes
from mechtune.errors import ConfigError, DataError

FORMATS: tuple[str, ...] = ("parquet", "jsonl")
MANIFEST_NAME = "manifest.json"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only on success."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def to_jsonable(obj: Any, where: str = "$") -> Any:
    """``obj`` as plain JSON values: the one conversion behind :func:`dumps_json`.

    - ``None``, ``bool``, ``int``, ``str`` stay; a float stays if finite, and NaN or
      infinity becomes ``None`` (JSON has no NaN; ``null`` reads back as missing);
    - numpy scalars and arrays, torch tensors -> Python numbers and nested lists;
    - an object with a ``to_dict()`` method (``Estimate``, configs, results) -> its dict;
      another dataclass instance -> a dict of its fields; a path -> its string;
    - mappings -> dicts (keys must be ``str`` or ``int``; an int key becomes its string, as
      ``json.dumps`` does); lists and tuples -> lists.

    Anything else raises ``DataError`` naming the type and where it is (``$.runs[0].x``).
    """
    if obj is None or isinstance(obj, bool | str):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item(), where)
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist(), where)
    torch = sys.modules.get("torch")  # never import torch just to find out
    if torch is not None and isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist(), where)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if not isinstance(obj, type):
        to_dict = getattr(obj, "to_dict", None)
        if callable(to_dict):
            return to_jsonable(to_dict(), where)
        if dataclasses.is_dataclass(obj):
            return {
                f.name: to_jsonable(getattr(obj, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(obj)
            }
    if isinstance(obj, Mapping):
        out = {}
        for key, value in obj.items():
            if isinstance(key, bool) or not isinstance(key, str | int | np.integer):
                raise DataError(
                    f"cannot write a {type(key).__name__} key {key!r} to JSON at {where}"
                )
            name = str(int(key)) if not isinstance(key, str) else key
            out[name] = to_jsonable(value, f"{where}.{name}")
        return out
    if isinstance(obj, list | tuple):
        return [to_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    raise DataError(f"cannot write a {type(obj).__name__} to JSON at {where}: {obj!r:.80}")


def dumps_json(
    obj: Any,
    *,
    indent: int | None = 2,
    sort_keys: bool = False,
    ensure_ascii: bool = True,
    compact: bool = False,
) -> str:
    """Strict JSON text of ``obj`` (via :func:`to_jsonable`; never NaN or Infinity), no
    trailing newline; ``compact``: no spaces after ``,`` and ``:`` (a canonical form to
    hash). Raises ``DataError`` for a value JSON cannot hold."""
    return json.dumps(
        to_jsonable(obj),
        indent=indent,
        sort_keys=sort_keys,
        ensure_ascii=ensure_ascii,
        allow_nan=False,
        separators=(",", ":") if compact else None,
    )


def write_json(
    path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2, sort_keys: bool = False
) -> None:
    """Write ``obj`` to ``path`` atomically as strict JSON (:func:`dumps_json`) plus a
    newline."""
    atomic_write_text(path, dumps_json(obj, indent=indent, sort_keys=sort_keys) + "\n")


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class TableWriter:
    """Stream rows to a Parquet (row groups) or JSONL file, atomically.

    Rows are buffered up to ``row_group_size`` and flushed, so memory stays bounded
    however many rows are written. The file appears at ``path`` only on ``close()``
    without error; use it as a context manager.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        schema: pa.Schema,
        *,
        fmt: str = "parquet",
        row_group_size: int = 65536,
    ) -> None:
        if fmt not in FORMATS:
            raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.path = Path(path)
        self.schema = schema
        self.fmt = fmt
        self.row_group_size = row_group_size
        self.rows = 0
        self._buffer: dict[str, list[Any]] = {name: [] for name in schema.names}
        self._buffered = 0
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._pq: pq.ParquetWriter | None = None
        self._fh: Any = None
        if fmt == "parquet":
            self._pq = pq.ParquetWriter(self._tmp, schema, compression="zstd")
        else:
            self._fh = open(self._tmp, "w", encoding="utf-8")  # noqa: SIM115

    def write(self, row: Mapping[str, Any]) -> None:
        for name, column in self._buffer.items():
            column.append(row[name])
        self._buffered += 1
        if self._buffered >= self.row_group_size:
            self._flush()

    def write_many(self, rows: Sequence[Mapping[str, Any]]) -> None:
        for row in rows:
            self.write(row)

    def _flush(self) -> None:
        if not self._buffered:
            return
        if self._pq is not None:
            table = pa.Table.from_pydict(self._buffer, schema=self.schema)
            self._pq.write_table(table, row_group_size=self.row_group_size)
        else:
            names = self.schema.names
            columns = [self._buffer[n] for n in names]
            lines = [
                dumps_json(dict(zip(names, values, strict=True)), indent=None, ensure_ascii=False)
                for values in zip(*columns, strict=True)
            ]
            self._fh.write("\n".join(lines) + "\n")
        self.rows += self._buffered
        self._buffer = {name: [] for name in self.schema.names}
        self._buffered = 0

    def close(self) -> None:
        self._flush()
        if self._pq is not None:
            self._pq.close()
        else:
            self._fh.close()
        self._ctx.__exit__(None, None, None)

    def abort(self, exc: BaseException) -> None:
        if self._pq is not None:
            self._pq.close()
        elif self._fh is not None:
            self._fh.close()
        self._ctx.__exit__(type(exc), exc, exc.__traceback__)

    def __enter__(self) -> TableWriter:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc is None:
            self.close()
        else:
            self.abort(exc)


def table_filename(name: str, fmt: str) -> str:
    return f"{name}.{fmt}"


def write_manifest(
    out_dir: str | os.PathLike[str],
    *,
    kind: str,
    config: Mapping[str, Any],
    counts: Mapping[str, Any],
    files: Sequence[str],
    extra: Mapping[str, Any] | None = None,
    group_rows: int = GROUP_ROWS,
) -> Path:
    """Write ``manifest.json``: what was built, from what config, with what content hash.

    Two kinds of hash, per file and for the folder:

    - ``files`` / ``content_hash``: sha256 of each file's bytes, and of their ``name:hash``
      lines (kept so that older readers and ``data check`` work unchanged);
    - ``content`` / ``canonical_hash``: canonical content hashes (``mechtune.data.verify``):
      per table, one hash per ``group_rows`` rows and one for the table, from a canonical
      form of its rows, so another Parquet writer (pyarrow version, compression, row-group
      size) still verifies with ``mechtune data verify``.

    No timestamps: the same seed and config give a byte-identical manifest.
    """
    out = Path(out_dir)
    hashes = {name: sha256_file(out / name) for name in files}
    content = hashlib.sha256("".join(f"{n}:{hashes[n]}\n" for n in sorted(hashes)).encode())
    canonical = content_hashes(out, list(files), group_rows=group_rows)
    manifest = {
        "kind": kind,
        "mechtune_version": mechtune.__version__,
        "config": dict(config),
        "counts": dict(counts),
        "files": hashes,
        "content_hash": content.hexdigest(),
        "content": canonical,
        "canonical_hash": combine(canonical),
        "canonical_version": CANONICAL_VERSION,
        "group_rows": group_rows,
        **(dict(extra) if extra else {}),
    }
    path = out / MANIFEST_NAME
    write_json(path, manifest, sort_keys=True)
    return path


def read_manifest(out_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no manifest; is this a mechtune data folder?")
    return json.loads(path.read_text(encoding="utf-8"))


def read_table(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Read a Parquet or JSONL table written by ``TableWriter`` into row dicts."""
    p = Path(path)
    if p.suffix == ".parquet":
        return pq.read_table(p).to_pylist()
    if p.suffix == ".jsonl":
        with open(p, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    raise DataError(f"{p}: unknown table format (expected .parquet or .jsonl)")


def read_jsonl_records(
    path: str | os.PathLike[str], required: Sequence[str], error: type[Exception] = ValueError
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line; a line that is not a JSON object or
    lacks a ``required`` field raises ``error`` naming the file and the line."""
    p = Path(path)
    with open(p, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise error(f"{p}, line {number}: invalid JSON ({exc.msg})") from None
            if not isinstance(record, dict):
                raise error(f"{p}, line {number}: expected a JSON object, got {record!r}")
            for key in required:
                if key not in record:
                    raise error(f"{p}, line {number}: missing field {key!r}")
            yield number, record
