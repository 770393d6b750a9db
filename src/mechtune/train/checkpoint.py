"""Training checkpoints shared by the trainers: exact resume, peft-format adapters.

A checkpoint folder ``step_NNNNNN`` holds the trainable weights (``adapter.safetensors``),
the optimiser state, the random streams (the sampler's generator and torch's global one,
which dropout draws from), ``state.json`` (step, config, history) and, for LoRA, the
standard peft layout under ``peft/`` (``PeftModel.from_pretrained(base, folder / "peft")``).
Every file is written atomically; a folder without ``state.json`` is incomplete and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from safetensors.torch import load_file, save_file
from torch import nn

from mechtune.data.io import atomic_path, write_json
from mechtune.errors import DataError


def checkpoint_folders(out: Path) -> list[Path]:
    """Complete checkpoints under ``out``, oldest first."""
    found = [p for p in out.glob("step_*") if (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]))


def save_checkpoint(
    out: Path,
    step: int,
    params: Mapping[str, torch.Tensor],
    optim: torch.optim.Optimizer,
    generator: torch.Generator,
    state: dict[str, Any],
    model: nn.Module | None = None,
) -> Path:
    """Write ``out/step_{step}``; ``state`` must be JSON-serialisable."""
    folder = out / f"step_{step:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    weights = {n: p.detach().contiguous() for n, p in params.items()}
    with atomic_path(folder / "adapter.safetensors") as tmp:
        save_file(weights, str(tmp))
    with atomic_path(folder / "optimizer.pt") as tmp:
        torch.save(optim.state_dict(), tmp)
    with atomic_path(folder / "rng.pt") as tmp:
        torch.save({"sampler": generator.get_state(), "torch": torch.get_rng_state()}, tmp)
    if isinstance(model, PeftModel):
        model.save_pretrained(str(folder / "peft"))
    # state.json last: its presence marks the checkpoint complete
    write_json(folder / "state.json", {"step": step, **state})
    return folder


def load_latest_checkpoint(
    out: Path,
    params: Mapping[str, torch.Tensor],
    optim: torch.optim.Optimizer,
    generator: torch.Generator,
) -> dict[str, Any] | None:
    """Restore the newest checkpoint into ``params``, ``optim`` and the random streams.

    Returns its ``state.json`` (with ``step``), or None when there is none.
    """
    found = checkpoint_folders(out)
    if not found:
        return None
    folder = found[-1]
    weights = load_file(str(folder / "adapter.safetensors"))
    missing = sorted(set(params) - set(weights))
    if missing:
        raise DataError(f"{folder / 'adapter.safetensors'}: missing parameters {missing[:3]}")
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(weights[name])
    optim.load_state_dict(torch.load(folder / "optimizer.pt", weights_only=True))
    rng = torch.load(folder / "rng.pt", weights_only=True)
    generator.set_state(rng["sampler"])
    torch.set_rng_state(rng["torch"])
    state: dict[str, Any] = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    return state
