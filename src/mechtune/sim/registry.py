"""Registers the phantom models with mechtune's model-spec registry.

Called through the ``mechtune.model_schemes`` entry point (``pyproject.toml``) the first
time a spec names the ``phantom`` scheme, so that ``mechtune.models`` never imports
``mechtune.sim``: the phantom world is one registered fixture among others.
"""

from __future__ import annotations

from mechtune.models.dual_encoder import DualEncoder, PhantomDualEncoder
from mechtune.models.spec import register_scheme


def load_phantom(name: str) -> DualEncoder:
    """``phantom:default`` (the shipped checkpoint) or ``phantom:/path/to/checkpoint``.

    Raises ``FileNotFoundError``/``OSError`` for a checkpoint folder that cannot be read
    (``load_dual_encoder`` turns them into ``ModelSpecError``).
    """
    from mechtune.sim.clip import PhantomCLIP, load_default

    model = load_default() if name == "default" else PhantomCLIP.load(name)
    return PhantomDualEncoder(model)


def register() -> None:
    """Register the ``phantom`` scheme."""
    register_scheme("phantom", load_phantom, ("phantom:default", "phantom:/path/to/checkpoint"))
