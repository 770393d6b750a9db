"""Content hashes of a data folder, and verification against a published manifest.

A byte hash (sha256 of a file) changes whenever the writer changes: a newer pyarrow, another
compression or row-group size gives different Parquet bytes for the same rows. So a
manifest also records a *canonical content hash* of each table, computed from its rows:

- each row is serialised canonically (:func:`canonical_value`): keys (columns, struct
  fields) in sorted order; floats as ``repr`` of the float64 value (the shortest string
  that reads back to the same double, so a float32 value is hashed through its exact
  float64 widening); ``null`` explicit; integers in decimal; strings as JSON strings; lists
  in order; bytes as hex. Ints and floats stay distinct (``1`` is not ``1.0``);
- rows are cut into canonical groups of ``group_rows`` rows (default 65,536), independent of
  how the file stored its row groups, and each group is hashed (sha256 of its rows' lines);
- the table hash is sha256 over its sorted column names and its group hashes, in order.

Parquet and JSONL files are tables. Other JSON files (a whole JSON document) are hashed
canonically too (parsed, then serialised as above: sorted keys, fixed float form), so a
change of indentation or key order does not matter. Every other file (images, ``.npy``)
keeps its byte hash. The folder's ``canonical_hash`` is sha256 over ``name:hash`` lines of
its files, sorted by name.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from mechtune.errors import DataError

CANONICAL_VERSION = 1
GROUP_ROWS = 65536
TABLE_SUFFIXES = (".parquet", ".jsonl")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def canonical_value(value: Any) -> str:
    """The canonical text of one value (a cell, or a parsed JSON document).

    Raises ``DataError`` for a type with no canonical form.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "f:nan"
        return "f:" + repr(value)  # '1.0', '1e-07', 'inf', '-0.0': float64 round-trip form
    if isinstance(value, str):
        return encode_basestring(value)  # JSON string, non-ASCII kept
    if isinstance(value, bytes):
        return "b:" + value.hex()
    if isinstance(value, Mapping):
        items = sorted((str(k), v) for k, v in value.items())
        return (
            "{" + ",".join(f"{encode_basestring(k)}:{canonical_value(v)}" for k, v in items) + "}"
        )
    if isinstance(value, list | tuple):
        return "[" + ",".join(canonical_value(v) for v in value) + "]"
    if hasattr(value, "isoformat"):  # date, time, datetime from Arrow temporal columns
        return f"t:{value.isoformat()}"
    raise DataError(f"no canonical form for a {type(value).__name__} value: {value!r:.80}")


def _rows(path: Path) -> Iterator[dict[str, Any]]:
    if path.suffix == ".parquet":
        for batch in pq.ParquetFile(path).iter_batches(batch_size=8192):
            yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}, line {number}: invalid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {number}: expected a JSON object, got {row!r:.80}")
            yield row


def _columns(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        return sorted(pq.read_schema(path).names)
    return []  # JSONL has no schema; its keys are in every row's canonical text


def table_hash(path: str | os.PathLike[str], *, group_rows: int = GROUP_ROWS) -> dict[str, Any]:
    """Canonical hashes of one Parquet or JSONL table: ``{"kind": "table", "rows": n,
    "group_rows": g, "columns": [...], "groups": [sha256 per g rows], "sha256": table}``.

    Streams the file (memory bounded by one batch). Raises ``DataError`` for an unreadable
    row or a value with no canonical form, naming the file.
    """
    if group_rows < 1:
        raise DataError(f"group_rows must be at least 1, got {group_rows}")
    p = Path(path)
    columns = _columns(p)
    groups: list[str] = []
    h = hashlib.sha256()
    in_group = rows = 0
    for row in _rows(p):
        try:
            h.update(canonical_value(row).encode("utf-8") + b"\n")
        except DataError as exc:
            raise DataError(f"{p}, row {rows}: {exc}") from None
        rows += 1
        in_group += 1
        if in_group == group_rows:
            groups.append(h.hexdigest())
            h, in_group = hashlib.sha256(), 0
    if in_group:
        groups.append(h.hexdigest())
    total = hashlib.sha256(("columns:" + canonical_value(columns) + "\n").encode())
    for g in groups:
        total.update(f"{g}\n".encode())
    return {
        "kind": "table",
        "rows": rows,
        "group_rows": group_rows,
        "columns": columns,
        "groups": groups,
        "sha256": total.hexdigest(),
    }


def file_content_hash(path: str | os.PathLike[str], *, group_rows: int = GROUP_ROWS) -> dict:
    """Canonical hash of one file: a table (:func:`table_hash`), a JSON document
    (``{"kind": "json", "sha256": ...}``) or any other file (``{"kind": "bytes", ...}``)."""
    from mechtune.data.io import sha256_file  # io imports this module

    p = Path(path)
    if p.suffix in TABLE_SUFFIXES:
        return table_hash(p, group_rows=group_rows)
    if p.suffix == ".json":
        try:
            doc = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: invalid JSON ({exc.msg})") from None
        return {"kind": "json", "sha256": hashlib.sha256(canonical_value(doc).encode()).hexdigest()}
    return {"kind": "bytes", "sha256": sha256_file(p)}


def combine(content: Mapping[str, Mapping[str, Any]]) -> str:
    """The folder's canonical hash: sha256 over ``name:sha256`` lines, sorted by name."""
    lines = "".join(f"{name}:{content[name]['sha256']}\n" for name in sorted(content))
    return hashlib.sha256(lines.encode()).hexdigest()


def content_hashes(
    out_dir: str | os.PathLike[str], files: list[str], *, group_rows: int = GROUP_ROWS
) -> dict[str, dict[str, Any]]:
    """:func:`file_content_hash` of each of ``files`` (names relative to ``out_dir``)."""
    out = Path(out_dir)
    return {name: file_content_hash(out / name, group_rows=group_rows) for name in files}


@dataclass(frozen=True)
class Verification:
    """The outcome of :func:`verify_folder`: ``ok``, and a one-line ``message`` that on a
    mismatch names the first differing file (table), row group and row range."""

    ok: bool
    message: str
    canonical_hash: str


def _load_manifest(path: Path) -> dict[str, Any]:
    if path.is_dir():
        from mechtune.data.io import MANIFEST_NAME

        path = path / MANIFEST_NAME
    if not path.is_file():
        raise DataError(f"{path}: no manifest file here; is this a mechtune data folder?")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise DataError(f"{path}: not a mechtune manifest (no 'files' mapping)")
    return manifest


def _first_difference(name: str, want: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    if want.get("kind") != "table" or got.get("kind") != "table":
        return f"{name}: content differs ({want.get('kind')} hash {want['sha256'][:12]}…)"
    if want["columns"] != got["columns"]:
        return f"{name}: columns differ: expected {want['columns']}, got {got['columns']}"
    g = want["group_rows"]
    counts = (
        "" if want["rows"] == got["rows"] else f"; expected {want['rows']} rows, got {got['rows']}"
    )
    for i, (a, b) in enumerate(zip(want["groups"], got["groups"], strict=False)):
        if a != b:
            last = min((i + 1) * g, want["rows"]) - 1
            return f"{name}: row group {i} (rows {i * g}-{last}) differs{counts}"
    return (
        f"{name}: expected {want['rows']} rows, got {got['rows']} "
        f"(the first {min(want['rows'], got['rows'])} rows match)"
    )


def verify_folder(data_dir: str | os.PathLike[str], expect: str | os.PathLike[str]) -> Verification:
    """Recompute ``data_dir``'s canonical content hashes and compare with ``expect``: a
    published manifest (file, or folder holding ``manifest.json``) or a 64-hex sha256 of the
    whole folder's content (its ``canonical_hash``).

    With a manifest, the files compared are the manifest's; the first difference (sorted by
    file name) is named with its row group and row range. A manifest written before canonical
    hashes existed (no ``content`` key) is compared by byte hashes, and the message says so.
    Raises ``DataError`` naming the file when ``data_dir`` has no manifest or ``expect`` is
    neither a manifest file nor a sha256.
    """
    from mechtune.data.io import sha256_file

    local = _load_manifest(Path(data_dir))
    out = Path(data_dir if Path(data_dir).is_dir() else Path(data_dir).parent)
    expect_s = os.fspath(expect)
    if _SHA256.match(expect_s.strip().lower()) and not Path(expect_s).exists():
        want_hash = expect_s.strip().lower()
        group_rows = int(local.get("group_rows", GROUP_ROWS))  # the hash depends on it
        got = content_hashes(out, sorted(local["files"]), group_rows=group_rows)
        got_hash = combine(got)
        if got_hash == want_hash:
            return Verification(True, f"{out}: content matches {want_hash}", got_hash)
        return Verification(
            False,
            f"{out}: content hash {got_hash} does not match the expected {want_hash}",
            got_hash,
        )
    want = _load_manifest(Path(expect_s))
    if "content" not in want:  # an old manifest: byte hashes only
        for name in sorted(want["files"]):
            if not (out / name).is_file():
                return Verification(False, f"{out / name}: file missing", "")
            if sha256_file(out / name) != want["files"][name]:
                return Verification(False, f"{name}: bytes differ (old manifest: byte hashes)", "")
        return Verification(
            True, f"{out}: bytes match {want.get('content_hash')} (old manifest: byte hashes)", ""
        )
    group_rows = int(want.get("group_rows", GROUP_ROWS))
    got_content: dict[str, dict[str, Any]] = {}
    for name in sorted(want["content"]):
        if not (out / name).is_file():
            return Verification(False, f"{out / name}: file missing", "")
        got_content[name] = file_content_hash(out / name, group_rows=group_rows)
        if got_content[name]["sha256"] != want["content"][name]["sha256"]:
            message = _first_difference(name, want["content"][name], got_content[name])
            return Verification(False, message, "")
    got_hash = combine(got_content)
    return Verification(
        True, f"{out}: content matches {want.get('canonical_hash', got_hash)}", got_hash
    )


__all__ = [
    "CANONICAL_VERSION",
    "GROUP_ROWS",
    "Verification",
    "canonical_value",
    "combine",
    "content_hashes",
    "file_content_hash",
    "table_hash",
    "verify_folder",
]
