import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mechtune.train.lora import lora_parameters
from tests.tiny_models import tiny_clip
from tests.train import ddp_consistency_worker, ddp_worker


def free_port() -> int:
    """A TCP port nothing listens on now (a fixed port fails when another run holds it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def torchrun(worker: Path, *args: str) -> None:
    """Run ``worker`` on 2 CPU processes (torchrun) with the repository on PYTHONPATH."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": path}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        str(worker),
        *args,
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if result.returncode != 0:
        pytest.fail(f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")


def test_two_process_cpu_ddp_matches_single_process(tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    out = tmp_path / "ddp"
    out.mkdir()
    torchrun(Path(ddp_worker.__file__), str(folder), str(out))
    ddp = load_file(str(out / "ddp_weights.safetensors"))

    single = ddp_worker.build(str(folder), str(tmp_path / "single"), None)
    single.model.eval()
    single.fit()
    ours = {n: p.detach() for n, (_, p) in lora_parameters(single.model).items()}
    assert ours.keys() == ddp.keys()
    for name in ours:
        assert torch.allclose(ours[name], ddp[name], atol=1e-6), name


def test_two_process_consistency_ddp_matches_single_process(tmp_path):
    """Consistency LoRA on phantom:vqa, batch 1 x grad_accum 4: each of 2 ranks takes 2
    micro-batches (shards r, r + 2) and divides by 2, and the all-reduce averages the
    ranks: the trained LoRA weights and the logged history are the single process's."""
    out = tmp_path / "ddp"
    out.mkdir()
    torchrun(Path(ddp_consistency_worker.__file__), str(out))
    ddp = load_file(str(out / "ddp_weights.safetensors"))
    ddp_history = json.loads((out / "ddp_history.json").read_text())

    single = ddp_consistency_worker.build(str(tmp_path / "single"), None)
    start = {n: p.clone() for n, p in ddp_consistency_worker.weights(single).items()}
    history = single.fit()
    ours = ddp_consistency_worker.weights(single)
    assert ours.keys() == ddp.keys() and len(ours) == 12  # 6 BERT linears x (A, B)
    moved = 0
    for name, p in ours.items():
        assert torch.allclose(p, ddp[name], rtol=1e-5, atol=1e-6), name
        moved += not torch.equal(p, start[name])
    assert moved == len(ours)  # every factor trained, so the match is not of untouched weights
    assert [h["step"] for h in ddp_history] == [1, 2]
    for mine, theirs in zip(history, ddp_history, strict=True):
        assert mine.keys() == theirs.keys()
        for key in mine:
            assert mine[key] == pytest.approx(theirs[key], rel=1e-5), key
