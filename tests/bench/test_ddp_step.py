"""benchmarks/ddp_step.py at tiny scale on the CPU, launched by torchrun with 1 process:
the step joins a gloo process group through accelerate, and after one step its LoRA
weights are the plain step's (the all-reduce of one process is the identity)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "ddp_step.py"


def run(*head: str, out: Path) -> subprocess.CompletedProcess[str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = str(sock.getsockname()[1])
    launcher = [str(a).replace("PORT", port) for a in head]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    cmd = [sys.executable, *launcher, str(SCRIPT), "--scale", "tiny", "--device", "cpu",
           "--out", str(out)]  # fmt: skip
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)


def test_one_ddp_step_at_world_size_one_equals_the_plain_step(tmp_path):
    out = tmp_path / "ddp.json"
    result = run("-m", "torch.distributed.run", "--nproc_per_node", "1", "--master_port",
                 "PORT", out=out)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(out.read_text())
    assert record["benchmark"] == "ddp_step" and record["scale"] == "tiny"
    assert record["backend"] == "gloo" and record["world_size"] == 1
    assert record["weights_max_abs_diff_after_one_step"] <= 1e-6 and record["weights_equal"]
    assert record["goals"]["weights_equal_at_world_size_1"]["met"] is True
    # LoRA r 16 in 2 blocks of width 32 (MLP 64): q/k/v/out (A 16x32, B 32x16) and
    # fc1, fc2 (A 16x32 + B 64x16; A 16x64 + B 32x16)
    assert record["trainable_parameters"] == 2 * (4 * (16 * 32 * 2) + 2 * (16 * 32 + 16 * 64))
    assert record["ddp_step_s"] > 0 and record["single_step_s"] > 0
    ratio = record["ddp_step_s"] / record["single_step_s"]  # of the roundings to 1 microsecond
    assert abs(record["ddp_over_single"] - ratio) <= 0.02 * ratio
    assert record["multi_gpu_scaling"].startswith("not measured")


def test_it_refuses_to_run_without_the_launcher(tmp_path):
    result = run(out=tmp_path / "x.json")
    assert result.returncode != 0
    assert "launch with python -m torch.distributed.run --nproc_per_node 1" in result.stderr
    assert not (tmp_path / "x.json").exists()
