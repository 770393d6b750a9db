"""benchmarks/gpu_suite.sh end to end at tiny scale on the CPU: every part runs and
lands in the one JSON, so the suite is known to work before a GPU is lent."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SUITE = ROOT / "benchmarks" / "gpu_suite.sh"
PARTS = ["trace", "nast", "medgemma", "ddp", "openclip", "gpu_tests"]


def run_suite(out: Path, *args: str, env: dict[str, str] | None = None):
    environ = {
        **os.environ,
        "PYTHON": sys.executable,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        **(env or {}),
    }
    cmd = ["bash", str(SUITE), "--scale", "tiny", "--device", "cpu", "--out", str(out), *args]
    return subprocess.run(cmd, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=400)


def test_the_whole_suite_runs_at_tiny_scale_and_tables(tmp_path):
    out = tmp_path / "suite.json"
    result = run_suite(out)
    assert result.returncode == 0, result.stderr[-4000:]
    suite = json.loads(out.read_text())
    assert list(suite["parts"]) == PARTS
    assert suite["scale"] == "tiny" and suite["host"]["device"] == "cpu"
    for name, part in suite["parts"].items():
        assert part["ok"] and part["exit_code"] == 0, (name, part.get("output_tail"))
        assert 0 < part["seconds"] <= part["limit_s"]
    records = {n: p["record"] for n, p in suite["parts"].items() if n != "gpu_tests"}
    # ddp names the accelerator's device (cpu:0 under a launch)
    assert all(r["scale"] == "tiny" and r["device"].startswith("cpu") for r in records.values())
    assert records["ddp"]["world_size"] == 1 and records["ddp"]["backend"] == "gloo"
    # the goals are all recorded, named by part
    for name in (
        "trace.speedup_vs_loop",
        "trace.trace_1000_pairs_s",
        "nast.epoch_1m_pairs_s",
        "medgemma.lora_peak_memory_gib",
        "medgemma.lora_peak_memory_gib_checkpointing",
    ):
        assert {"target", "value", "met"} <= set(suite["goals"][name])
    logs = sorted(p.name for p in (tmp_path / "gpu_suite_logs").iterdir())
    assert logs == sorted(f"{name}.log" for name in PARTS)  # full outputs kept beside FILE
    assert "packages" in suite["host"] and suite["host"]["packages"]["transformers"]
    tests = suite["parts"]["gpu_tests"]["tests"]
    assert tests["tests"] >= 5 and tests["skipped"] == tests["tests"]  # no CUDA here
    table = subprocess.run(
        [sys.executable, "benchmarks/suite_table.py", "table", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in PARTS:
        assert f"| {name} | ok |" in table


def test_a_failing_part_is_recorded_and_fails_the_suite(tmp_path):
    out = tmp_path / "suite.json"
    result = run_suite(out, "--only", "trace", env={"PART_ARGS_trace": "--loop-pairs 0"})
    assert result.returncode == 1
    suite = json.loads(out.read_text())
    assert list(suite["parts"]) == ["trace"]
    trace = suite["parts"]["trace"]
    assert not trace["ok"] and trace["exit_code"] != 0 and "loop-pairs" in trace["output_tail"]


def test_bad_arguments_are_refused(tmp_path):
    result = run_suite(tmp_path / "s.json", "--frobnicate")
    assert result.returncode == 2 and "unknown argument --frobnicate" in result.stderr
    result = subprocess.run(
        ["bash", str(SUITE), "--scale", "huge"], cwd=ROOT, capture_output=True, text=True
    )
    assert result.returncode == 2 and "--scale must be real or tiny" in result.stderr
    result = run_suite(tmp_path / "s.json", "--only", "trace,tracing")
    assert result.returncode == 2 and "--only: unknown part 'tracing'" in result.stderr


def test_every_gpu_test_is_in_a_path_the_suite_runs():
    text = SUITE.read_text()
    paths = re.search(r"GPU_TEST_PATHS=\(([^)]*)\)", text).group(1).split()
    marked = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "tests").rglob("test_*.py")
        if re.search(r"pytest\.mark\.gpu\b|mark\.gpu\b", p.read_text(encoding="utf-8"))
    }
    assert marked, "no gpu-marked test found"
    outside = sorted(m for m in marked if not any(m == p or m.startswith(p + "/") for p in paths))
    assert not outside, f"gpu tests the suite does not run: {outside}"


@pytest.mark.parametrize("part", PARTS[:-1])
def test_each_part_script_exists_and_documents_itself(part):
    line = next(ln for ln in SUITE.read_text().splitlines() if ln.startswith(f"run_part {part} "))
    script = re.search(r"benchmarks/\w+\.py", line)
    if script is None:  # ddp's script is on the continuation line
        text = SUITE.read_text()
        script = re.search(r"benchmarks/\w+\.py", text[text.index(line) :])
    path = ROOT / script.group(0)
    assert path.exists()
    assert '"""' in path.read_text()[:200]  # a module docstring with the command


def test_a_part_past_its_limit_is_recorded_as_timed_out(tmp_path):
    out = tmp_path / "suite.json"
    result = run_suite(out, "--only", "trace", env={"PART_LIMIT_trace": "1"})
    assert result.returncode == 1 and "(limit 1s)" in result.stderr
    trace = json.loads(out.read_text())["parts"]["trace"]
    assert trace["timed_out"] and trace["exit_code"] == 124 and trace["limit_s"] == 1
