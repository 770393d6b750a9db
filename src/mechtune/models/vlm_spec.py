"""Yes/no VLM specs a user can type, resolved by a registry of schemes.

- ``hf:google/medgemma-4b-it`` or ``hf:/path/to/folder``: a transformers image-text-to-text
  model and its processor (``save_pretrained`` layout), read by
  :class:`mechtune.models.hf_vqa.HFYesNoVLM`; remote code is never trusted;
- ``phantom:vqa`` (the shipped phantom VQA model) or ``phantom:/path/to/head``: registered
  by ``mechtune.sim`` through the ``mechtune.vlm_schemes`` entry point
  (``pyproject.toml``); this module never imports it.

A scheme is registered with :func:`register_vlm_scheme` by the package that owns its
models; its loader is called ``load(name, device=torch.device, dtype=torch.dtype | None)``
and loads the weights in that dtype (None: the checkpoint's own) on that device. Inputs
follow the model (the adapters move and cast them); margins come back in float32.
Hub ids need network access unless cached; with ``HF_HUB_OFFLINE=1`` they fail saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from mechtune.errors import ConfigError
from mechtune.models.registry import SchemeRegistry
from mechtune.models.yes_no import YesNoVLM

ENTRY_POINT_GROUP = "mechtune.vlm_schemes"


class VLMSpecError(ConfigError):
    """A yes/no VLM spec is malformed or names a model that cannot be loaded."""


_REGISTRY: SchemeRegistry[YesNoVLM] = SchemeRegistry("yes/no VLM", ENTRY_POINT_GROUP, VLMSpecError)


def register_vlm_scheme(
    name: str, load: Callable[..., YesNoVLM], examples: tuple[str, ...] = ()
) -> None:
    """Register (or replace) the loader of specs ``name:...``: ``load(name, *, device,
    dtype) -> YesNoVLM``; ``examples`` are full specs shown in error messages.

    Raises ``ConfigError`` for a name that is empty or contains ``:``.
    """
    _REGISTRY.register(name, load, examples)


def vlm_schemes() -> tuple[str, ...]:
    """Every scheme a VLM spec may use: registered ones and installed entry points."""
    return _REGISTRY.schemes()


def parse_vlm_spec(spec: str) -> tuple[str, str]:
    """``"scheme:name"`` -> ``(scheme, name)``; raises ``VLMSpecError`` naming the known
    schemes when the spec is malformed or its scheme is unknown. Loads no weights."""
    return _REGISTRY.parse(spec)


def load_yes_no_vlm(
    spec: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None = None
) -> YesNoVLM:
    """The yes/no VLM a spec names, with its weights in ``dtype`` (``"float32"``,
    ``"bfloat16"``, ``"float16"``, a ``torch.dtype``, or ``"auto"``/None for the
    checkpoint's own) on ``device``.

    Raises ``VLMSpecError`` for a malformed spec, an unknown scheme, or a model that cannot
    be read (a missing folder, an offline hub id); ``ConfigError`` for an unknown dtype or
    one the scheme cannot load in.
    """
    return _REGISTRY.load(spec, device=device, dtype=dtype)


def _load_hf(name: str, *, device: torch.device, dtype: torch.dtype | None) -> YesNoVLM:
    from mechtune.models.hf_vqa import HFYesNoVLM

    looks_local = name.startswith((".", "/", "~")) or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise VLMSpecError(
            f"cannot load 'hf:{name}': {name} is not a folder (save the model and processor "
            "there with save_pretrained)"
        )
    return HFYesNoVLM.from_pretrained(
        str(Path(name).expanduser()) if looks_local else name,
        dtype="auto" if dtype is None else dtype,
        device=device,
    )


register_vlm_scheme("hf", _load_hf, ("hf:google/medgemma-4b-it", "hf:/path/to/saved/vlm"))


__all__ = [
    "ENTRY_POINT_GROUP",
    "VLMSpecError",
    "load_yes_no_vlm",
    "parse_vlm_spec",
    "register_vlm_scheme",
    "vlm_schemes",
]
