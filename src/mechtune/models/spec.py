"""Model specs a user can type: ``hf:...``, ``openclip:...``, ``phantom:...``, resolved by a
registry of schemes.

- ``hf:openai/clip-vit-base-patch32`` or ``hf:/path/to/local/folder``: a transformers
  dual encoder (``save_pretrained`` layout), chosen by the config's ``model_type``:
  ``clip``, ``siglip`` (MedSigLIP) or ``vision-text-dual-encoder``
  (:mod:`mechtune.models.hf_dual`);
- ``openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` or
  ``openclip:local-dir:/path``: open_clip (optional ``openclip`` extra);
- ``phantom:default`` or ``phantom:/path/to/checkpoint``: the phantom CLIP, registered by
  ``mechtune.sim`` (this module never imports it).

A scheme is registered with :func:`register_scheme`, by the package that owns its models;
a scheme not registered yet is looked up in the ``mechtune.model_schemes`` entry-point
group (``pyproject.toml``: ``phantom = "mechtune.sim.registry:register"``), whose target
is called once to register it. Adding an architecture therefore takes an adapter, a site
table entry and one registration (see :mod:`mechtune.models.dual_encoder`).

Loaders are called ``load(name, device=..., dtype=...)`` and load the weights directly in
that dtype (``dtype`` a ``torch.dtype``, or None for the checkpoint's own); embeddings
still come back float32 (:mod:`mechtune.models.precision`).

Remote code is never trusted. Hub ids need network access unless cached; with
``HF_HUB_OFFLINE=1`` they fail with a message saying so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from mechtune.errors import ConfigError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.hf_dual import load_hf
from mechtune.models.open_clip_adapter import OpenCLIPDualEncoder
from mechtune.models.registry import SchemeRegistry

# load(name, *, device: torch.device, dtype: torch.dtype | None) -> DualEncoder
Loader = Callable[..., DualEncoder]

ENTRY_POINT_GROUP = "mechtune.model_schemes"


class ModelSpecError(ConfigError):
    """A model spec is malformed or names a model that cannot be loaded."""


_REGISTRY: SchemeRegistry[DualEncoder] = SchemeRegistry("model", ENTRY_POINT_GROUP, ModelSpecError)


def register_scheme(name: str, load: Loader, examples: tuple[str, ...] = ()) -> None:
    """Register (or replace) the loader of specs ``name:...``; it is called
    ``load(name, device=torch.device, dtype=torch.dtype | None)``.

    Raises ``ConfigError`` for a name that is empty or contains ``:``.
    """
    _REGISTRY.register(name, load, examples)


def schemes() -> tuple[str, ...]:
    """Every scheme a spec may use: registered ones and those of installed entry points."""
    return _REGISTRY.schemes()


def parse_spec(spec: str) -> tuple[str, str]:
    """``"scheme:name"`` -> ``(scheme, name)``. Raises ``ModelSpecError`` naming the known
    schemes when the spec is malformed or its scheme is not registered."""
    return _REGISTRY.parse(spec)


def load_dual_encoder(
    spec: str,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> DualEncoder:
    """Load a dual encoder from a spec string, with a clear error when it cannot be.

    ``device``: where the weights go (``"cpu"``, ``"cuda"``, ``"cuda:1"``); ``dtype``:
    ``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"``/None (the checkpoint's own),
    the dtype the weights are loaded in. Raises ``ConfigError`` for a bad device or dtype,
    ``ModelSpecError`` for a malformed spec, an unknown scheme, a missing extra, or a
    model that cannot be read (offline hub ids say so), ``UnsupportedModelError`` for an
    architecture no adapter supports.
    """
    return _REGISTRY.load(spec, device=device, dtype=dtype)


register_scheme(
    "hf",
    load_hf,
    ("hf:openai/clip-vit-base-patch32", "hf:google/medsiglip-448", "hf:/path/to/local/model"),
)
register_scheme(
    "openclip",
    OpenCLIPDualEncoder.from_pretrained,
    ("openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",),
)
