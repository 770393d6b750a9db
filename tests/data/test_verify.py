"""Canonical content hashes (mechtune.data.verify) and verification against a manifest."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mechtune.data.io import MANIFEST_NAME, write_manifest
from mechtune.data.verify import canonical_value, combine, table_hash, verify_folder
from mechtune.errors import DataError

ROWS = [
    {"id": i, "score": i / 3, "text": f"row {i}", "tags": ["a", None] if i % 2 else [], "x": None}
    for i in range(10)
]


def _write(path: Path, rows: list[dict], **kwargs) -> None:
    pq.write_table(pa.Table.from_pylist(rows), path, **kwargs)


def _manifest(folder: Path, files: list[str], group_rows: int = 4) -> dict:
    write_manifest(folder, kind="t", config={}, counts={}, files=files, group_rows=group_rows)
    return json.loads((folder / MANIFEST_NAME).read_text())


def test_canonical_value_is_sorted_typed_and_exact():
    assert canonical_value({"b": [1, None, 0.1], "a": "x", "c": True}) == (
        '{"a":"x","b":[1,null,f:0.1],"c":true}'
    )
    # float32 is hashed through its exact float64 widening; ints are not floats
    assert canonical_value(float(np.float32(0.1))) == "f:0.10000000149011612"
    assert canonical_value(1) != canonical_value(1.0)
    assert canonical_value(float("nan")) == "f:nan"
    assert canonical_value(b"\x00\xff") == "b:00ff"
    assert canonical_value("é\n") == '"é\\n"'  # a JSON string, non-ASCII kept
    with pytest.raises(DataError, match="no canonical form for a object"):
        canonical_value(object())


def test_group_and_table_hashes_match_a_hand_computation(tmp_path):
    _write(tmp_path / "t.parquet", ROWS)
    got = table_hash(tmp_path / "t.parquet", group_rows=4)
    tags = ['["a",null]' if i % 2 else "[]" for i in range(10)]
    lines = [
        f'{{"id":{i},"score":f:{i / 3!r},"tags":{tags[i]},"text":"row {i}","x":null}}\n'
        for i in range(10)
    ]
    groups = [hashlib.sha256("".join(lines[s : s + 4]).encode()).hexdigest() for s in (0, 4, 8)]
    assert got["groups"] == groups
    assert got["rows"] == 10 and got["columns"] == ["id", "score", "tags", "text", "x"]
    header = 'columns:["id","score","tags","text","x"]\n'
    total = hashlib.sha256((header + "".join(g + "\n" for g in groups)).encode()).hexdigest()
    assert got["sha256"] == total


def test_other_parquet_settings_verify_while_bytes_differ(tmp_path):
    pub, mine = tmp_path / "pub", tmp_path / "mine"
    pub.mkdir(), mine.mkdir()
    _write(pub / "t.parquet", ROWS, compression="zstd")
    published = _manifest(pub, ["t.parquet"])
    # another compression, another row-group size, columns in another order
    reordered = [dict(reversed(list(r.items()))) for r in ROWS]
    _write(mine / "t.parquet", reordered, compression="snappy", row_group_size=3)
    local = _manifest(mine, ["t.parquet"])
    assert local["files"] != published["files"]  # the byte hashes differ...
    assert local["content_hash"] != published["content_hash"]
    assert local["canonical_hash"] == published["canonical_hash"]  # ...the content does not
    result = verify_folder(mine, pub / MANIFEST_NAME)
    assert result.ok, result.message
    assert result.canonical_hash == published["canonical_hash"]
    assert verify_folder(mine, published["canonical_hash"]).ok


@pytest.mark.parametrize(("row", "group", "span"), [(9, 2, "rows 8-9"), (5, 1, "rows 4-7")])
def test_a_mismatch_names_the_first_table_and_row_group(tmp_path, row, group, span):
    pub, mine = tmp_path / "pub", tmp_path / "mine"
    pub.mkdir(), mine.mkdir()
    for folder in (pub, mine):
        _write(folder / "a.parquet", ROWS)
    changed = [dict(r) for r in ROWS]
    changed[row]["score"] = changed[row]["score"] + 1e-12  # below a 12-digit print
    _write(pub / "b.parquet", ROWS)
    _write(mine / "b.parquet", changed)
    published = _manifest(pub, ["a.parquet", "b.parquet"])
    _manifest(mine, ["a.parquet", "b.parquet"])
    result = verify_folder(mine, pub)
    assert not result.ok
    assert result.message == f"b.parquet: row group {group} ({span}) differs"
    assert not verify_folder(mine, published["canonical_hash"]).ok
    # with both tables changed, the first (by name) is named
    _write(mine / "a.parquet", changed)
    assert verify_folder(mine, pub).message.startswith("a.parquet: row group")


def test_fewer_rows_and_missing_files_are_named(tmp_path):
    pub, mine = tmp_path / "pub", tmp_path / "mine"
    pub.mkdir(), mine.mkdir()
    _write(pub / "t.parquet", ROWS)
    _manifest(pub, ["t.parquet"])
    _write(mine / "t.parquet", ROWS[:9])
    (mine / MANIFEST_NAME).write_text(json.dumps({"files": {}}))
    message = verify_folder(mine, pub).message
    assert message == "t.parquet: row group 2 (rows 8-9) differs; expected 10 rows, got 9"
    _write(mine / "t.parquet", ROWS[:8])
    message = verify_folder(mine, pub).message
    assert message == "t.parquet: expected 10 rows, got 8 (the first 8 rows match)"
    (mine / "t.parquet").unlink()
    assert verify_folder(mine, pub).message == f"{mine / 't.parquet'}: file missing"


def test_a_missing_manifest_is_a_data_error_naming_the_file(tmp_path):
    _write(tmp_path / "t.parquet", ROWS)
    with pytest.raises(DataError, match=f"{tmp_path / MANIFEST_NAME}: no manifest"):
        verify_folder(tmp_path, "0" * 64)
    _manifest(tmp_path, ["t.parquet"])
    with pytest.raises(DataError, match=f"{tmp_path / 'published.json'}: no manifest"):
        verify_folder(tmp_path, tmp_path / "published.json")


def test_json_is_canonical_and_other_files_keep_byte_hashes(tmp_path):
    pub, mine = tmp_path / "pub", tmp_path / "mine"
    pub.mkdir(), mine.mkdir()
    doc = {"b": 0.5, "a": [1, 2]}
    (pub / "info.json").write_text(json.dumps(doc, indent=2))
    (mine / "info.json").write_text(json.dumps(dict(reversed(doc.items()))))
    for folder in (pub, mine):
        np.save(folder / "x.npy", np.arange(4))
    published = _manifest(pub, ["info.json", "x.npy"])
    assert published["content"]["info.json"]["kind"] == "json"
    assert published["content"]["x.npy"]["kind"] == "bytes"
    assert published["content"]["x.npy"]["sha256"] == published["files"]["x.npy"]
    _manifest(mine, ["info.json", "x.npy"])
    assert verify_folder(mine, pub).ok
    np.save(mine / "x.npy", np.arange(5))
    assert verify_folder(mine, pub).message == "x.npy: content differs (bytes hash " + (
        published["files"]["x.npy"][:12] + "…)"
    )


def test_jsonl_and_parquet_of_the_same_rows_hash_alike(tmp_path):
    _write(tmp_path / "t.parquet", ROWS)
    (tmp_path / "t.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    assert (
        table_hash(tmp_path / "t.parquet")["groups"] == table_hash(tmp_path / "t.jsonl")["groups"]
    )


def test_an_old_manifest_is_compared_by_bytes(tmp_path):
    _write(tmp_path / "t.parquet", ROWS)
    manifest = _manifest(tmp_path, ["t.parquet"])
    old = {k: manifest[k] for k in ("kind", "files", "content_hash")}
    (tmp_path / "old.json").write_text(json.dumps(old))
    result = verify_folder(tmp_path, tmp_path / "old.json")
    assert result.ok and "old manifest: byte hashes" in result.message
    _write(tmp_path / "t.parquet", ROWS, compression="zstd")  # the default is snappy
    assert verify_folder(tmp_path, tmp_path / "old.json").message == (
        "t.parquet: bytes differ (old manifest: byte hashes)"
    )


def test_combine_is_order_free_over_names():
    a = {"x": {"sha256": "1"}, "y": {"sha256": "2"}}
    assert combine(a) == combine(dict(reversed(a.items())))
    assert combine(a) == hashlib.sha256(b"x:1\ny:2\n").hexdigest()
