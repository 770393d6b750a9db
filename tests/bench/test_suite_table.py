"""benchmarks/suite_table.py: merging the GPU suite's parts and the docs table."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_script():
    spec = importlib.util.spec_from_file_location("suite_table", ROOT / "benchmarks/suite_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


st = load_script()

HOST = {
    "device": "cuda",
    "device_name": "NVIDIA H200",
    "torch": "2.9.0",
    "cuda": "12.8",
    "threads": 16,
    "python": "3.12.3",
    "packages": {"transformers": "5.17.0", "timm": None},
}
JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest"
errors="0" failures="1" skipped="2" tests="6"></testsuite></testsuites>"""


def work(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    (w / "trace.status").write_text("0 41250 70\n")
    trace = {
        "benchmark": "trace_real",
        "scale": "real",
        **HOST,
        "pairs": 1000,
        "fast_s": 31.25,
        "loop": {"s_per_pair": 2.5},
        "goals": {"speedup_vs_loop": {"target": 20, "value": 80.0, "met": True}},
    }
    (w / "trace.json").write_text(json.dumps(trace))
    (w / "nast.status").write_text("124 40000 40\n")
    (w / "nast.log").write_text("x" * 5000 + "KILLED AT THE END")
    (w / "gpu_tests.status").write_text("1 9000 40\n")
    (w / "gpu_tests.xml").write_text(JUNIT)
    return w


def test_merge_keeps_records_goals_counts_and_failure_tails(tmp_path):
    suite, ok = st.merge(work(tmp_path), "real", 95_500)
    assert not ok
    assert list(suite["parts"]) == ["trace", "nast", "gpu_tests"]  # the suite's order
    assert suite["wall_s"] == 95.5 and suite["host"] == HOST
    trace = suite["parts"]["trace"]
    assert trace["ok"] and trace["seconds"] == 41.25 and trace["record"]["pairs"] == 1000
    assert "output_tail" not in trace
    nast = suite["parts"]["nast"]
    assert nast["timed_out"] and not nast["ok"] and nast["limit_s"] == 40
    assert nast["output_tail"].endswith("KILLED AT THE END") and len(nast["output_tail"]) == 3000
    assert suite["parts"]["gpu_tests"]["tests"] == {
        "tests": 6,
        "failures": 1,
        "errors": 0,
        "skipped": 2,
        "passed": 3,
    }
    assert suite["goals"] == {"trace.speedup_vs_loop": {"target": 20, "value": 80.0, "met": True}}


def test_a_part_with_exit_zero_but_no_record_is_a_failure(tmp_path):
    w = tmp_path / "w"
    w.mkdir()
    (w / "ddp.status").write_text("0 100 25\n")
    (w / "ddp.log").write_text("printed nothing useful")
    suite, ok = st.merge(w, "tiny", 100)
    assert not ok and suite["parts"]["ddp"]["output_tail"] == "printed nothing useful"


def test_merge_command_writes_the_file_and_exits_1_on_failure(tmp_path):
    out = tmp_path / "suite.json"
    rc = st.main(
        ["merge", str(work(tmp_path)), "--out", str(out), "--scale", "real", "--wall-ms", "1"]
    )
    assert rc == 1 and json.loads(out.read_text())["parts"]["trace"]["ok"]


def test_table_names_the_hardware_goals_and_every_figure(tmp_path):
    suite, _ = st.merge(work(tmp_path), "real", 95_500)
    text = st.table(suite)
    assert (
        "**NVIDIA H200** (`cuda`), torch 2.9.0, CUDA 12.8, Python 3.12.3, transformers 5.17.0;"
        in text
    )
    assert "the suite took 96 s" in text or "the suite took 95 s" in text
    assert "| trace.speedup_vs_loop | 20 | 80 | yes |" in text
    assert (
        "| trace | ok | 41.2 | pairs | 1,000 |" in text
        or "| trace | ok | 41.3 | pairs | 1,000 |" in text
    )
    assert "| loop.s_per_pair | 2.5 |" in text
    assert "| nast | timed out | 40.0 |" in text
    assert "| gpu_tests | failed (exit 1) | 9.0 | tests | 6 |" in text
    assert "device_name" not in text.split("| part |")[1]  # host fields are not figures


def test_write_replaces_only_the_marked_block(tmp_path):
    doc = tmp_path / "bench.md"
    doc.write_text(f"# Title\n\nbefore\n{st.BEGIN}\nold table\n{st.END}\nafter\n")
    st.write_between_markers(doc, "| new |\n")
    assert doc.read_text() == f"# Title\n\nbefore\n{st.BEGIN}\n| new |\n{st.END}\nafter\n"
    doc.write_text("no markers here\n")
    with pytest.raises(SystemExit, match="needs the markers"):
        st.write_between_markers(doc, "x")
