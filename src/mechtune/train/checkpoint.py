"""Training checkpoints (exact resume) and trained results (adapters, weights), for both tasks.

A checkpoint folder ``step_NNNNNN`` holds the trainable weights (``adapter.safetensors``),
the optimiser state, the random streams (the sampler's generator and torch's global one,
which dropout draws from), ``state.json`` (step, config, history) and, for LoRA, the
standard peft layout under ``peft/`` (``PeftModel.from_pretrained(base, folder / "peft")``).
Every file is written atomically; a folder without ``state.json`` is incomplete and ignored.

The trained result of a run (:func:`save_trained`) sits beside the checkpoints: a peft
adapter in ``out/adapter/`` (``adapter_config.json`` + ``adapter_model.safetensors``) for
LoRA, or the trained blocks' weights in ``out/weights.safetensors`` for full fine-tuning,
and ``out/train.json`` (method, config, final step, loss history), with the model card
``README.md`` beside them (:mod:`mechtune.train.model_card`).
:func:`load_trained` applies either to a freshly loaded model. Nothing here unpickles
arbitrary objects: safetensors, or ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from peft.utils.error import PeftError
from safetensors.torch import load_file, save_file
from torch import nn

from mechtune.data.io import atomic_path, write_json
from mechtune.errors import DataError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.train.lora import LoraSite, lm_lora_site, text_lora_site
from mechtune.train.model_card import CardFacts, card_facts_dict, write_model_card


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
    extra: Callable[[Path], Mapping[str, Any]] | None = None,
) -> Path:
    """Write ``out/step_{step}``; ``state`` must be JSON-serialisable. ``extra`` writes
    more files into the folder before ``state.json`` and returns entries for it (the
    kept best weights: :meth:`mechtune.train.selection.BestKeeper.save`)."""
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
    more = dict(extra(folder)) if extra is not None else {}
    # state.json last: its presence marks the checkpoint complete
    write_json(folder / "state.json", {"step": step, **state, **more})
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


ADAPTER = "adapter"
WEIGHTS = "weights.safetensors"
TRAIN_JSON = "train.json"


def save_trained(
    out: Path,
    model: nn.Module,
    site: LoraSite,
    info: dict[str, Any],
    card: CardFacts | None = None,
) -> None:
    """Write the trained result of ``model`` to ``out`` (see the module docstring).

    A :class:`~peft.PeftModel` saves its adapter (``save_pretrained``, safetensors);
    otherwise every trainable parameter, all inside ``site``'s blocks, goes to
    ``weights.safetensors`` under the model's own parameter names. ``info`` (JSON-able)
    becomes ``train.json``, written last. With ``card``, its facts go into ``train.json``
    under ``"card"`` and the model card (:mod:`mechtune.train.model_card`) is written to
    ``out/README.md`` and, for LoRA, ``out/adapter/README.md``.
    """
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, PeftModel):
        staging = out / f".{ADAPTER}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        model.save_pretrained(str(staging), safe_serialization=True)
        shutil.rmtree(out / ADAPTER, ignore_errors=True)
        staging.rename(out / ADAPTER)
    else:
        weights = {
            n: p.detach().contiguous()
            for n, p in model.named_parameters()
            if p.requires_grad and site.layer_index(n) is not None
        }
        with atomic_path(out / WEIGHTS) as tmp:
            save_file(weights, str(tmp))
    if card is not None:
        info = {**info, "card": card_facts_dict(card)}
        write_model_card(out, info, card)
    write_json(out / TRAIN_JSON, info)


def load_trained(model: Any, folder: str | Path) -> Any:
    """Apply a trained result to a freshly loaded ``model`` and return it.

    ``model``: a :class:`~mechtune.models.dual_encoder.DualEncoder` (its text tower) or a
    :class:`~mechtune.models.yes_no.YesNoVLM` (its language model). ``folder``: a run's
    output (holding ``adapter/`` or ``weights.safetensors``) or a peft adapter folder
    itself. A peft adapter is injected into the model's own modules
    (``PeftModel.from_pretrained``); weights replace the same-named block parameters.
    Raises DataError naming the folder when it holds neither (or both), and naming the
    file and key for a weight outside the blocks, unknown to the model, or of the wrong
    shape.
    """
    if isinstance(model, DualEncoder):
        module: nn.Module = model.model
        site = text_lora_site(module)
    else:
        module, site = model.module, lm_lora_site(model)
    folder = Path(folder)
    adapter = None
    for candidate in (folder / ADAPTER, folder):
        if (candidate / "adapter_config.json").is_file():
            adapter = candidate
            break
    weights = folder / WEIGHTS
    if adapter is not None and weights.is_file():
        raise DataError(f"{folder}: holds both a peft adapter and {WEIGHTS}; keep one")
    if adapter is not None:
        try:
            PeftModel.from_pretrained(module, str(adapter))
        except (PeftError, ValueError, KeyError, RuntimeError) as exc:
            raise DataError(
                f"{adapter}: this peft adapter does not fit the model "
                f"({type(module).__name__}): {str(exc)[:300]}; was it trained on another "
                "architecture?"
            ) from None
        module.eval()
        return model
    if not weights.is_file():
        raise DataError(
            f"{folder}: neither a peft adapter ({ADAPTER}/adapter_config.json) nor {WEIGHTS}"
        )
    tensors = load_file(str(weights))
    params = dict(module.named_parameters())
    for name, value in tensors.items():
        if name not in params or site.layer_index(name) is None:
            raise DataError(
                f"{weights}: {name!r} is not a parameter of the model's blocks "
                f"({site.layers_pattern})"
            )
        if tuple(value.shape) != tuple(params[name].shape):
            raise DataError(
                f"{weights}: {name!r} has shape {tuple(value.shape)}, the model "
                f"{tuple(params[name].shape)}"
            )
    with torch.no_grad():
        for name, value in tensors.items():
            params[name].copy_(value.to(device=params[name].device, dtype=params[name].dtype))
    return model
