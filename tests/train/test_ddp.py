import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mechtune.train.lora import lora_parameters
from tests.tiny_models import tiny_clip
from tests.train import ddp_worker


def free_port() -> int:
    """A TCP port nothing listens on now (a fixed port fails when another run holds it)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_two_process_cpu_ddp_matches_single_process(tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    out = tmp_path / "ddp"
    out.mkdir()
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
        str(Path(ddp_worker.__file__)),
        str(folder),
        str(out),
    ]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if result.returncode != 0:
        pytest.fail(f"torchrun failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    ddp = load_file(str(out / "ddp_weights.safetensors"))

    single = ddp_worker.build(str(folder), str(tmp_path / "single"), None)
    single.model.eval()
    single.fit()
    ours = {n: p.detach() for n, (_, p) in lora_parameters(single.model).items()}
    assert ours.keys() == ddp.keys()
    for name in ours:
        assert torch.allclose(ours[name], ddp[name], atol=1e-6), name
