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

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points

import torch

from mechtune.errors import ConfigError, UnsupportedModelError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.hf_dual import load_hf
from mechtune.models.open_clip_adapter import OpenCLIPDualEncoder
from mechtune.models.precision import resolve_device, resolve_dtype

# load(name, *, device: torch.device, dtype: torch.dtype | None) -> DualEncoder
Loader = Callable[..., DualEncoder]

ENTRY_POINT_GROUP = "mechtune.model_schemes"


class ModelSpecError(ConfigError):
    """A model spec is malformed or names a model that cannot be loaded."""


@dataclass(frozen=True)
class Scheme:
    """How one spec scheme loads a dual encoder: ``load(name, device=, dtype=)`` gets the
    text after ``scheme:``; ``examples`` are full specs shown in error messages."""

    name: str
    load: Loader
    examples: tuple[str, ...] = ()


_REGISTRY: dict[str, Scheme] = {}


def register_scheme(name: str, load: Loader, examples: tuple[str, ...] = ()) -> None:
    """Register (or replace) the loader of specs ``name:...``; it is called
    ``load(name, device=torch.device, dtype=torch.dtype | None)``.

    Raises ``ConfigError`` for a name that is empty or contains ``:``.
    """
    if not name or ":" in name:
        raise ConfigError(f"a model-spec scheme is a non-empty name without ':', got {name!r}")
    _REGISTRY[name] = Scheme(name, load, tuple(examples))


def _plugins() -> dict[str, object]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def schemes() -> tuple[str, ...]:
    """Every scheme a spec may use: registered ones and those of installed entry points."""
    return tuple(sorted(set(_REGISTRY) | set(_plugins())))


def _scheme(name: str) -> Scheme | None:
    if name not in _REGISTRY:
        plugin = _plugins().get(name)
        if plugin is not None:
            plugin.load()()  # type: ignore[attr-defined]
    return _REGISTRY.get(name)


def _examples() -> str:
    shown = [e for name in schemes() for e in (_scheme(name) or Scheme(name, _none)).examples]
    return " | ".join(shown)


def _none(name: str, **kw: object) -> DualEncoder:  # pragma: no cover - never called
    raise ModelSpecError(name)


def parse_spec(spec: str) -> tuple[str, str]:
    """``"scheme:name"`` -> ``(scheme, name)``. Raises ``ModelSpecError`` naming the known
    schemes when the spec is malformed or its scheme is not registered."""
    scheme, sep, rest = (spec or "").partition(":")
    if not sep or _scheme(scheme) is None or not rest:
        raise ModelSpecError(
            f"bad model spec {spec!r}: expected SCHEME:NAME with SCHEME one of "
            f"{', '.join(schemes())}, e.g. {_examples()}"
        )
    return scheme, rest


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
    scheme, name = parse_spec(spec)
    where, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    loader = _REGISTRY[scheme].load
    try:
        return loader(name, device=where, dtype=torch_dtype)
    except (ModelSpecError, UnsupportedModelError):
        raise
    except ImportError as exc:
        raise ModelSpecError(f"cannot load {spec!r}: {exc}") from exc
    except (OSError, FileNotFoundError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: only local folders and cached models load)" if offline else ""
        raise ModelSpecError(f"cannot load {spec!r}: {exc}{hint}") from exc


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
