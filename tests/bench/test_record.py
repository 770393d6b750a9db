"""The measurement helpers every benchmark script shares (mechtune.bench.record)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from mechtune.bench import record
from mechtune.errors import ConfigError


def parse(*argv: str) -> argparse.Namespace:
    return record.add_common_options(argparse.ArgumentParser()).parse_args(list(argv))


def test_defaults_are_real_scale_on_the_present_device():
    args = parse()
    assert args.scale == "real" and args.out is None
    assert args.device == ("cuda" if torch.cuda.is_available() else "cpu")


def test_dtype_defaults_to_float32_on_cpu_and_follows_the_option():
    assert record.resolve_options(parse("--device", "cpu")) == (torch.device("cpu"), torch.float32)
    _, dtype = record.resolve_options(parse("--device", "cpu", "--dtype", "bfloat16"))
    assert dtype is torch.bfloat16


def test_auto_dtype_and_unknown_scale_are_refused():
    with pytest.raises(ConfigError, match="not auto"):
        record.resolve_options(parse("--device", "cpu", "--dtype", "auto"))
    with pytest.raises(ConfigError, match="float64"):
        record.resolve_options(parse("--device", "cpu", "--dtype", "float64"))
    with pytest.raises(SystemExit):
        parse("--scale", "huge")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_absent_cuda_device_is_a_config_error():
    with pytest.raises(ConfigError, match="CUDA is not available"):
        record.resolve_options(parse("--device", "cuda"))


def test_goal_direction():
    assert record.goal(20, 25.0, higher_is_better=True)["met"] is True
    assert record.goal(20, 19.9, higher_is_better=True)["met"] is False
    assert record.goal(600, 599.0, higher_is_better=False) == {
        "target": 600,
        "value": 599.0,
        "met": True,
    }
    assert record.goal(24, 30.5, higher_is_better=False)["met"] is False


def test_timed_returns_the_result_and_nonnegative_seconds():
    result, seconds = record.timed(lambda: 7, torch.device("cpu"))
    assert result == 7 and seconds >= 0


def test_cpu_peak_memory_is_the_process_rss():
    before = record.peak_memory_gib(torch.device("cpu"))
    block = bytearray(64 * 2**20)  # touch 64 MiB
    block[::4096] = b"x" * len(block[::4096])
    after = record.peak_memory_gib(torch.device("cpu"))
    assert 0 < before <= after


def test_write_record_prints_one_line_and_writes_the_file(tmp_path, capsys):
    out = tmp_path / "sub" / "r.json"
    args = parse("--scale", "tiny", "--device", "cpu", "--out", str(out))
    rec = record.write_record(args, "demo", torch.device("cpu"), {"figure": 1.5})
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and json.loads(printed[0]) == rec
    assert json.loads(out.read_text()) == rec
    assert rec["benchmark"] == "demo" and rec["scale"] == "tiny" and rec["figure"] == 1.5
    assert rec["device"] == "cpu" and rec["cuda"] == torch.version.cuda
    assert "cores" in rec["device_name"]
