"""Registers the phantom VQA model with mechtune's yes/no VLM spec registry.

Called through the ``mechtune.vlm_schemes`` entry point (``pyproject.toml``) the first time
a spec names the ``phantom`` scheme, so that ``mechtune.models`` never imports
``mechtune.sim``.
"""

from __future__ import annotations

import torch

from mechtune.errors import ConfigError
from mechtune.models.vlm_spec import register_vlm_scheme
from mechtune.models.yes_no import YesNoVLM


def load_phantom_vqa(name: str, *, device: torch.device, dtype: torch.dtype | None) -> YesNoVLM:
    """``phantom:vqa`` (the shipped head) or ``phantom:/path/to/head`` (a folder saved by
    :meth:`~mechtune.sim.vqa.PhantomVQA.save`), on ``device``.

    The phantom VQA runs in float32 only (its image embeddings are cached in float32):
    ``dtype`` must be None or ``torch.float32``, else ``ConfigError`` names it. Raises
    ``FileNotFoundError`` for a folder without the head's files (``load_yes_no_vlm`` turns
    it into ``VLMSpecError``).
    """
    from mechtune.sim.vqa import PhantomVQA, load_default_vqa

    if dtype not in (None, torch.float32):
        raise ConfigError(f"dtype: the phantom VQA model runs in float32 only, got {dtype}")
    model = load_default_vqa() if name == "vqa" else PhantomVQA.load(name)
    return model.to(device)


def register() -> None:
    """Register the ``phantom`` VLM scheme."""
    register_vlm_scheme("phantom", load_phantom_vqa, ("phantom:vqa", "phantom:/path/to/vqa_head"))
