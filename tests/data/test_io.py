"""The one JSON encoder (mechtune.data.io.to_jsonable / dumps_json / write_json)."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from mechtune.data.io import TableWriter, dumps_json, to_jsonable, write_json
from mechtune.errors import DataError
from mechtune.eval.metrics import Estimate, bootstrap_mean, paired_difference


def _strict(text: str):
    """json.loads that refuses NaN, Infinity and -Infinity (JSON has none of them)."""

    def refuse(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@dataclasses.dataclass
class _Plain:
    x: float
    tags: tuple[str, ...]


def test_results_with_nan_round_trip_through_strict_json():
    results = {
        "empty": bootstrap_mean([]),  # NaN value and bounds
        "rate": Estimate(0.5, 0.25, 0.75, 8, "wilson", 8),
        "inf": float("inf"),
        "neg_inf": -math.inf,
        "np_nan": np.float32("nan"),
        "array": np.array([1.0, np.nan, 3.0]),
        "tensor": torch.tensor([[1.5, float("nan")]]),
        "ints": np.arange(3),
        "flags": np.array([True, False]),
        "scalar": np.int64(7),
        "bool": np.bool_(True),
        "paired": paired_difference([1, 0, 1], [0, 0, 1]),
        "plain": _Plain(float("nan"), ("a", "b")),
        "path": Path("runs") / "x",
        "by_layer": {3: 0.5, np.int64(4): 0.25},
        "nested": [({"deep": float("nan")},)],
    }
    data = _strict(dumps_json(results))
    assert data["empty"] == {
        "value": None,
        "low": None,
        "high": None,
        "n": 0,
        "clusters": 0,
        "method": "bootstrap",
    }
    assert data["rate"]["method"] == "wilson"
    assert data["inf"] is None and data["neg_inf"] is None and data["np_nan"] is None
    assert data["array"] == [1.0, None, 3.0]
    assert data["tensor"] == [[1.5, None]]
    assert data["ints"] == [0, 1, 2] and data["flags"] == [True, False]
    assert data["scalar"] == 7 and data["bool"] is True
    assert data["paired"]["discordant"] == [1, 0] and data["paired"]["mcnemar_p"] == 1.0
    assert data["plain"] == {"x": None, "tags": ["a", "b"]}
    assert data["path"] == str(Path("runs") / "x")
    assert data["by_layer"] == {"3": 0.5, "4": 0.25}
    assert data["nested"] == [[{"deep": None}]]


def test_anything_else_is_refused_with_where_it_is():
    with pytest.raises(DataError, match=r"cannot write a set to JSON at \$\.runs\[1\]\.x"):
        to_jsonable({"runs": [{}, {"x": {1, 2}}]})
    with pytest.raises(DataError, match="a tuple key"):
        dumps_json({(1, 2): 3})
    with pytest.raises(DataError, match="object"):
        dumps_json([object()])


def test_compact_json_has_no_spaces_and_is_what_json_gives_with_tight_separators():
    import json

    obj = {"b": [1, 2.5, "é"], "a": {"x": None}}
    compact = dumps_json(obj, indent=None, sort_keys=True, ensure_ascii=False, compact=True)
    assert compact == '{"a":{"x":null},"b":[1,2.5,"é"]}'
    assert compact == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert dumps_json(obj, indent=None) == '{"b": [1, 2.5, "\\u00e9"], "a": {"x": null}}'


def test_write_json_is_strict_and_ends_with_a_newline(tmp_path):
    path = tmp_path / "sub" / "results.json"
    write_json(path, {"b": float("nan"), "a": 1}, sort_keys=True)
    text = path.read_text()
    assert text == '{\n  "a": 1,\n  "b": null\n}\n'
    assert _strict(text) == {"a": 1, "b": None}


def test_jsonl_tables_write_null_for_nan(tmp_path):
    schema = pa.schema([("name", pa.string()), ("score", pa.float64())])
    with TableWriter(tmp_path / "t.jsonl", schema, fmt="jsonl") as writer:
        writer.write({"name": "é", "score": float("nan")})
        writer.write({"name": "b", "score": 0.5})
    lines = (tmp_path / "t.jsonl").read_text(encoding="utf-8").splitlines()
    assert [_strict(line) for line in lines] == [
        {"name": "é", "score": None},
        {"name": "b", "score": 0.5},
    ]
    assert "é" in lines[0]  # ensure_ascii=False, as before


def test_every_json_writer_in_src_uses_the_one_encoder():
    src = Path(__file__).resolve().parents[2] / "src" / "mechtune"
    offenders = [
        f"{path.relative_to(src)}:{number}"
        for path in sorted(src.rglob("*.py"))
        if path.relative_to(src).as_posix() != "data/io.py"
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if "json.dump" in line
    ]
    assert offenders == [], "write JSON with mechtune.data.io.dumps_json / write_json"
