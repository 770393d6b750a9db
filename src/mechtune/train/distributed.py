"""Training runs launched by an existing distributed engine: ``torchrun`` (PyTorch's
elastic launcher) or ``accelerate launch``. mechtune adds no launcher and no flags of its
own: it reads the environment the launcher sets and builds an ``accelerate.Accelerator``
for :class:`~mechtune.train.trainer.Trainer`, which spreads each step's shards over the
processes and averages their gradients.

Both launchers set ``WORLD_SIZE`` (processes in all, over every machine), ``RANK`` (this
process among them) and ``LOCAL_RANK`` (among this machine's); ``accelerate launch`` also
sets ``ACCELERATE_*`` variables (``ACCELERATE_USE_CPU`` for ``--cpu``), which
``accelerate.Accelerator`` reads itself. A ``WORLD_SIZE`` of 1 (or none) is one process:
no process group and no accelerator, exactly the plain run.

How ``--device`` reads under a launch of N > 1 processes:

- ``cpu``: every process on the CPU (``Accelerator(cpu=True)``: the gloo backend);
- ``cuda`` (no index): process r on GPU ``LOCAL_RANK`` (the NCCL backend), where its
  model is loaded (:attr:`Launch.device`);
- ``cuda:K`` (an index) or another device type: refused (``ConfigError``), since N
  processes cannot share one named GPU and accelerate's DDP runs on CPUs and CUDA GPUs.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechtune.errors import ConfigError
from mechtune.train.tracking import Tracker


def _int_variable(environ: Mapping[str, str], name: str, default: int) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"environment variable {name}={raw!r} is not an integer (set by torchrun or "
            "accelerate launch)"
        ) from None
    if value < 0:
        raise ConfigError(f"environment variable {name}={raw!r} must be >= 0")
    return value


def launched_processes(environ: Mapping[str, str] | None = None) -> int:
    """The number of processes the launcher started (``WORLD_SIZE``; 1 without a launch).
    Raises ConfigError for a ``WORLD_SIZE`` that is not an integer >= 1."""
    env = os.environ if environ is None else environ
    processes = _int_variable(env, "WORLD_SIZE", 1)
    if processes < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={processes} must be >= 1")
    return processes


def launch_rank(environ: Mapping[str, str] | None = None) -> int:
    """This process's global rank (``RANK``; 0 without a launch)."""
    env = os.environ if environ is None else environ
    return _int_variable(env, "RANK", 0)


def check_launch_shards(shards: int, processes: int, setting: str) -> None:
    """Refuse a launch whose ``processes`` cannot share each step's ``shards`` equally
    (:func:`~mechtune.train.trainer.check_shards`'s rule), before any weights load.

    ``setting`` names where the shard count comes from (e.g. ``"--grad-accum (the
    recipe's lora.grad_accum)"``). The effective batch is the recipe's whatever the number
    of processes: each process takes ``shards / processes`` of every step's shards, so the
    fix is a shard count that is a multiple of the processes, not a larger batch. Raises
    ConfigError naming the setting, its value and the process count.
    """
    if processes > 1 and (shards < processes or shards % processes):
        raise ConfigError(
            f"{setting} is {shards}, but {processes} processes were launched "
            f"(WORLD_SIZE={processes}): each process takes an equal share, at least one, of "
            f"a step's {shards} shards (grad_accum micro-batches; negation: loop.shards), so "
            f"that the effective batch stays the recipe's; set it to a multiple of "
            f"{processes}, or launch a number of processes that divides {shards}"
        )


@dataclass
class Launch:
    """How this process runs: alone (``accelerator`` None) or as one of
    ``processes`` ranks of a launch, with the ``accelerate.Accelerator`` the trainer uses.

    ``device``: where this process loads its model (``"cpu"``, ``"cuda:<LOCAL_RANK>"``,
    or the ``--device`` of a plain run); ``tracker``: where its training values are
    logged (:mod:`mechtune.train.tracking`; the launch's accelerator under a launch).
    """

    accelerator: Any | None
    device: str
    tracker: Tracker = field(default_factory=Tracker, compare=False)

    @property
    def processes(self) -> int:
        return 1 if self.accelerator is None else int(self.accelerator.num_processes)

    @property
    def rank(self) -> int:
        return 0 if self.accelerator is None else int(self.accelerator.process_index)

    @property
    def is_main(self) -> bool:
        """Whether this process writes the shared outputs (rank 0, or a plain run)."""
        return self.accelerator is None or bool(self.accelerator.is_main_process)

    def wait(self) -> None:
        """Block until every process reaches this point (a no-op in a plain run)."""
        wait_for_everyone(self.accelerator)

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Run the body on the main process first, then on the others (for work that
        fills an on-disk cache the others then read)."""
        if self.accelerator is None:
            yield
        else:
            with self.accelerator.main_process_first():
                yield


def wait_for_everyone(accelerator: Any | None) -> None:
    """``accelerator.wait_for_everyone()``, or nothing without an accelerator."""
    if accelerator is not None:
        accelerator.wait_for_everyone()


def is_main_process(accelerator: Any | None) -> bool:
    """Whether this process writes shared outputs: no accelerator, or its main process."""
    return accelerator is None or bool(accelerator.is_main_process)


def start_launch(
    device: str,
    environ: Mapping[str, str] | None = None,
    *,
    report_to: str = "none",
    tracking_dir: str | Path | None = None,
) -> Launch:
    """This process's :class:`Launch`, from the launcher's environment and ``--device``.

    Without a launch (``WORLD_SIZE`` absent or 1) returns ``Launch(None, device)``.
    Under a launch of N > 1 processes builds ``accelerate.Accelerator(cpu=...)`` (which
    joins the process group: gloo on CPUs, NCCL on GPUs) and places the model on its
    device, as the module docstring says; with ``report_to`` other than ``"none"`` the
    accelerator is created with ``log_with=report_to`` and ``project_dir=tracking_dir``
    and the launch's tracker uses it (:class:`~mechtune.train.tracking.Tracker`; in a
    plain process the tracker makes its own). Raises ConfigError for a GPU index under a
    launch, a device type other than cpu/cuda, or a launcher that put this process on
    another device than ``--device`` asks for (``accelerate launch --cpu`` with
    ``--device cuda``); the tracker's errors (an unknown ``report_to``, its package
    missing) before anything else.
    """
    env = os.environ if environ is None else environ
    Tracker(report_to, tracking_dir)  # checks the backend and its package, creates nothing
    processes = launched_processes(env)
    if processes == 1:
        return Launch(None, device, Tracker(report_to, tracking_dir))
    try:
        wanted = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"--device {device!r} is not a torch device name ({exc})") from None
    if wanted.type not in ("cpu", "cuda"):
        raise ConfigError(
            f"--device {device!r}: a launch of {processes} processes runs on CPUs (--device "
            "cpu) or CUDA GPUs (--device cuda), the devices accelerate's DDP supports"
        )
    if wanted.type == "cuda" and wanted.index is not None:
        raise ConfigError(
            f"--device {device!r} under a launch of {processes} processes: each process "
            "takes the GPU of its LOCAL_RANK; pass --device cuda (choose GPUs with "
            "CUDA_VISIBLE_DEVICES or accelerate launch --gpu_ids)"
        )
    from accelerate import Accelerator

    logging: dict[str, Any] = {}
    if report_to != "none":
        logging = {"log_with": report_to, "project_dir": tracking_dir}
    accelerator = Accelerator(cpu=wanted.type == "cpu", **logging)
    if accelerator.device.type != wanted.type:
        raise ConfigError(
            f"--device {device!r}, but the launcher put process {accelerator.process_index} "
            f"on {accelerator.device} (accelerate launch --cpu, or no GPU visible?); pass "
            f"--device {accelerator.device.type}"
        )
    if accelerator.num_processes != processes:
        raise ConfigError(
            f"WORLD_SIZE={processes}, but accelerate joined {accelerator.num_processes} "
            "processes; launch with torchrun or accelerate launch"
        )
    tracker = Tracker(report_to, tracking_dir, accelerator=accelerator)
    return Launch(accelerator, str(accelerator.device), tracker)


def refuse_launch(command: str, instead: str, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to run ``command`` as one of several launched processes (``ConfigError``
    naming the process count and ``instead``, the command that trains under a launch)."""
    processes = launched_processes(environ)
    if processes > 1:
        raise ConfigError(
            f"{command} runs in one process, but it was launched as {processes} processes "
            f"(WORLD_SIZE={processes}, torchrun or accelerate launch): every process would "
            f"repeat the whole study and write the same files; run it without a launcher, "
            f"or launch `{instead}`, which spreads each training step over the processes"
        )


__all__ = [
    "Launch",
    "check_launch_shards",
    "is_main_process",
    "launch_rank",
    "launched_processes",
    "refuse_launch",
    "start_launch",
    "wait_for_everyone",
]
