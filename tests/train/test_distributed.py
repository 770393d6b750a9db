"""The launch a training command reads from torchrun's / accelerate's environment: the
process count, how --device reads under a launch, and the refusals (each before or
instead of joining a process group, so no launch is needed here; the launched runs are
in tests/cli/test_distributed_cli.py)."""

from __future__ import annotations

import re
import sys
import types

import pytest

from mechtune.errors import ConfigError
from mechtune.train import distributed
from mechtune.train.distributed import (
    Launch,
    check_launch_shards,
    launch_rank,
    launched_processes,
    refuse_launch,
    start_launch,
)


def test_the_process_count_and_rank_come_from_the_launchers_variables():
    assert launched_processes({}) == 1 and launch_rank({}) == 0
    assert launched_processes({"WORLD_SIZE": "4", "RANK": "3"}) == 4
    assert launch_rank({"WORLD_SIZE": "4", "RANK": "3"}) == 3
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not an integer"):
        launched_processes({"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="WORLD_SIZE=0 must be >= 1"):
        launched_processes({"WORLD_SIZE": "0"})


def test_a_plain_run_has_no_accelerator_and_keeps_its_device():
    launch = start_launch("cuda:1", {"WORLD_SIZE": "1"})  # one process: no GPU check here
    assert launch == Launch(None, "cuda:1")
    assert launch.processes == 1 and launch.rank == 0 and launch.is_main
    launch.wait()  # a no-op
    with launch.main_first():
        pass


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("cuda:1", "each process takes the GPU of its LOCAL_RANK; pass --device cuda"),
        ("mps", "runs on CPUs (--device cpu) or CUDA GPUs (--device cuda)"),
        ("tpu9", "is not a torch device name"),
    ],
)
def test_devices_a_launch_cannot_use_are_refused(device, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        start_launch(device, {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"})


class FakeAccelerator:
    def __init__(self, cpu: bool, device: str, processes: int) -> None:
        import torch

        self.device, self.num_processes, self.process_index = torch.device(device), processes, 1
        self.is_main_process, self.cpu = False, cpu


def test_the_launchers_device_must_be_the_one_asked_for(monkeypatch):
    """``accelerate launch --cpu`` (ACCELERATE_USE_CPU) with --device cuda: accelerate
    puts the process on the CPU, and the command says so instead of training there."""
    env = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1"}
    fake = types.SimpleNamespace(Accelerator=lambda cpu: FakeAccelerator(cpu, "cpu", 2))
    monkeypatch.setitem(sys.modules, "accelerate", fake)
    with pytest.raises(ConfigError, match=r"put process 1 on cpu .* pass --device cpu"):
        start_launch("cuda", env)
    launch = start_launch("cpu", env)  # --device cpu: Accelerator(cpu=True)
    assert launch.accelerator.cpu is True and launch.device == "cpu"
    assert launch.processes == 2 and launch.rank == 1 and not launch.is_main

    fake.Accelerator = lambda cpu: FakeAccelerator(cpu, "cpu", 1)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2, but accelerate joined 1 processes"):
        start_launch("cpu", env)


@pytest.mark.parametrize(("shards", "processes", "ok"), [(2, 2, True), (4, 2, True), (1, 1, True),
                         (3, 2, False), (1, 2, False), (6, 4, False)])  # fmt: skip
def test_shards_must_split_evenly_over_the_processes(shards, processes, ok):
    if ok:
        check_launch_shards(shards, processes, "--grad-accum")
        return
    with pytest.raises(ConfigError) as err:
        check_launch_shards(shards, processes, "--grad-accum")
    message = str(err.value)
    assert f"--grad-accum is {shards}, but {processes} processes were launched" in message
    assert f"set it to a multiple of {processes}" in message


def test_a_study_refuses_a_launch_of_several_processes():
    refuse_launch("mechtune negation study", "mechtune negation train", {"WORLD_SIZE": "1"})
    with pytest.raises(ConfigError, match=r"launched as 3 processes .* `mechtune x train`"):
        refuse_launch("mechtune x study", "mechtune x train", {"WORLD_SIZE": "3"})


def test_the_helpers_without_an_accelerator_are_the_plain_run():
    assert distributed.is_main_process(None)
    distributed.wait_for_everyone(None)
