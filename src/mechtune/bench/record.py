"""What every benchmark script shares: the common options, the device's name, timing
with the device synchronised, peak memory and the atomic JSON record.

Each script under ``benchmarks/`` takes ``--scale {tiny,real}``, ``--device``, ``--dtype``
and ``--out FILE``, and writes one JSON object (:func:`write_record`): ``benchmark``,
``scale``, the :func:`device_info` fields, its figures, and ``goals`` (name -> target,
value, met). ``benchmarks/gpu_suite.sh`` merges them; ``benchmarks/suite_table.py`` turns
the merged file into the table of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mechtune.data.io import write_json
from mechtune.errors import ConfigError
from mechtune.models.precision import resolve_device, resolve_dtype

SCALES = ("tiny", "real")


def default_device() -> str:
    """``"cuda"`` where a CUDA device is present, else ``"cpu"``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def add_common_options(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--scale`` (tiny: a few-second smoke run of the same code; real: the published
    sizes), ``--device``, ``--dtype`` (default bfloat16 on CUDA, float32 on the CPU) and
    ``--out`` (the JSON record)."""
    parser.add_argument("--scale", choices=SCALES, default="real")
    parser.add_argument("--device", default=default_device())
    parser.add_argument("--dtype", default=None, help="float32, bfloat16 or float16")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    return parser


def resolve_options(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The parsed ``--device`` and ``--dtype`` as torch objects (dtype default: bfloat16 on
    CUDA, float32 elsewhere). Raises ConfigError for an unknown or absent device/dtype."""
    device = resolve_device(args.device)
    if args.dtype is None:
        return device, torch.bfloat16 if device.type == "cuda" else torch.float32
    dtype = resolve_dtype(args.dtype)
    if dtype is None:
        raise ConfigError("--dtype must name a dtype (float32, bfloat16, float16), not auto")
    return device, dtype


def device_info(device: torch.device) -> dict[str, Any]:
    """``device``, ``device_name`` (the GPU's name, or the CPU's model and core count),
    ``torch``, ``cuda`` (the CUDA runtime version or None), ``threads``, ``python`` and
    ``packages`` (the versions of transformers, peft, accelerate, open_clip_torch and timm,
    None where absent: the device's image may differ from the development machine's)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"{_cpu_model()} ({os.cpu_count()} cores)"
    return {
        "device": str(device),
        "device_name": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "packages": _versions(("transformers", "peft", "accelerate", "open_clip_torch", "timm")),
    }


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed versions (None: not installed), from the distributions' metadata."""
    from mechtune.report.provenance import package_versions

    return package_versions(names)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so a timer reads real time."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> tuple[Any, float]:
    """``(fn(), seconds)``, the device synchronised before and after."""
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def reset_peak_memory(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only; the CPU's peak RSS cannot be reset)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_gib(device: torch.device) -> float:
    """Peak memory in GiB: on CUDA, ``torch.cuda.max_memory_allocated`` since the last
    :func:`reset_peak_memory` (tensors only, not the allocator's cache); on the CPU, the
    process's peak resident set size (``ru_maxrss``) over its whole life."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20


def goal(target: float, value: float, *, higher_is_better: bool) -> dict[str, Any]:
    """``{"target", "value", "met"}`` for a goal such as ">= 20x" or "<= 600 s"."""
    met = value >= target if higher_is_better else value <= target
    return {"target": target, "value": value, "met": bool(met)}


def write_record(
    args: argparse.Namespace, name: str, device: torch.device, figures: dict[str, Any]
) -> dict[str, Any]:
    """Assemble the record (``benchmark``, ``scale``, :func:`device_info`, ``figures``),
    print it as one JSON line and, with ``--out``, write it atomically. Returns it."""
    from mechtune.data.io import dumps_json

    record = {"benchmark": name, "scale": args.scale, **device_info(device), **figures}
    print(dumps_json(record, indent=None))
    if args.out is not None:
        write_json(args.out, record)
    return record


__all__ = [
    "SCALES",
    "add_common_options",
    "default_device",
    "device_info",
    "goal",
    "peak_memory_gib",
    "reset_peak_memory",
    "resolve_options",
    "synchronize",
    "timed",
    "write_record",
]
