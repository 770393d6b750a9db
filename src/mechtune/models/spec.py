"""Model specs a user can type: ``hf:...``, ``openclip:...``, ``phantom:...``.

- ``hf:openai/clip-vit-base-patch32`` or ``hf:/path/to/local/folder``: transformers
  ``CLIPModel`` + tokenizer (``save_pretrained`` layout);
- ``openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224`` or
  ``openclip:local-dir:/path``: open_clip (optional ``openclip`` extra);
- ``phantom:default`` or ``phantom:/path/to/checkpoint``: the phantom CLIP.

Remote code is never trusted. Hub ids need network access unless cached; with
``HF_HUB_OFFLINE=1`` they fail with a message saying so.
"""

from __future__ import annotations

import os

from mechtune.errors import ConfigError
from mechtune.models.dual_encoder import (
    DualEncoder,
    HFCLIPDualEncoder,
    OpenCLIPDualEncoder,
    PhantomDualEncoder,
)

SCHEMES = ("hf", "openclip", "phantom")
EXAMPLES = (
    "hf:openai/clip-vit-base-patch32",
    "hf:/path/to/local/clip",
    "openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224",
    "phantom:default",
)


class ModelSpecError(ConfigError):
    """A model spec is malformed or names a model that cannot be loaded."""


def parse_spec(spec: str) -> tuple[str, str]:
    scheme, sep, rest = (spec or "").partition(":")
    if not sep or scheme not in SCHEMES or not rest:
        raise ModelSpecError(
            f"bad model spec {spec!r}: expected SCHEME:NAME with SCHEME one of "
            f"{', '.join(SCHEMES)}, e.g. {' | '.join(EXAMPLES)}"
        )
    return scheme, rest


def load_dual_encoder(spec: str) -> DualEncoder:
    """Load a dual encoder from a spec string, with a clear error when it cannot be."""
    scheme, name = parse_spec(spec)
    try:
        if scheme == "phantom":
            from mechtune.sim.clip import PhantomCLIP, load_default

            model = load_default() if name == "default" else PhantomCLIP.load(name)
            return PhantomDualEncoder(model)
        if scheme == "hf":
            return HFCLIPDualEncoder.from_pretrained(name)
        return OpenCLIPDualEncoder.from_pretrained(name)
    except ImportError as exc:
        raise ModelSpecError(f"cannot load {spec!r}: {exc}") from exc
    except (OSError, FileNotFoundError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = " (HF_HUB_OFFLINE=1: only local folders and cached models load)" if offline else ""
        raise ModelSpecError(f"cannot load {spec!r}: {exc}{hint}") from exc
