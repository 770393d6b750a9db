"""Registers the phantom models with mechtune's model-spec registry.

Called through the ``mechtune.model_schemes`` entry point (``pyproject.toml``) the first
time a spec names the ``phantom`` scheme, so that ``mechtune.models`` never imports
``mechtune.sim``: the phantom world is one registered fixture among others.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mechtune.models.dual_encoder import DualEncoder, PhantomDualEncoder
from mechtune.models.spec import register_scheme


def load_phantom(
    name: str, *, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> DualEncoder:
    """``phantom:default`` (the shipped checkpoint) or ``phantom:/path/to/checkpoint``, on
    ``device``, its weights cast to ``dtype`` (None: float32, as stored). The model is a
    few million parameters, so it is read in float32 and cast.

    Raises ``FileNotFoundError``/``OSError`` for a checkpoint folder that cannot be read
    (``load_dual_encoder`` turns them into ``ModelSpecError``).
    """
    from mechtune.models.minilm import minilm_path
    from mechtune.sim.clip import WEIGHTS, PhantomCLIP, default_checkpoint

    folder = default_checkpoint() if name == "default" else Path(name)
    model = PhantomCLIP.load(folder).to(device=device, dtype=dtype)
    files = [folder / WEIGHTS, *sorted(minilm_path().glob("*.safetensors"))]
    return PhantomDualEncoder(model, weight_files=files)


def register() -> None:
    """Register the ``phantom`` scheme."""
    register_scheme("phantom", load_phantom, ("phantom:default", "phantom:/path/to/checkpoint"))
