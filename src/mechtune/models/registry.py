"""A registry of model-spec schemes, shared by every kind of model mechtune loads.

A *spec* is ``SCHEME:NAME`` (``hf:google/medgemma-4b-it``, ``phantom:vqa``). Each kind of
model (dual encoders, yes/no VLMs) keeps one :class:`SchemeRegistry`; the package that owns
a scheme registers its loader with :meth:`SchemeRegistry.register`, and a scheme not yet
registered is looked up in the registry's entry-point group (``pyproject.toml``), whose
target is called once to register it. So ``mechtune.models`` never imports the packages
that own a scheme (``mechtune.sim`` registers ``phantom:``), as in TransformerLens's
registry keyed by architecture or importlib-metadata plugin groups.

Loaders are called ``load(name, device=..., dtype=...)``: ``device`` a torch device or its
name, ``dtype`` a ``torch.dtype`` or None (the checkpoint's own), as
:func:`mechtune.models.precision.resolve_dtype` returns it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

import torch

from mechtune.errors import ConfigError, MechtuneError
from mechtune.models.precision import resolve_device, resolve_dtype

T = TypeVar("T")


@dataclass(frozen=True)
class Scheme(Generic[T]):
    """How one scheme loads a model: ``load(name, device=..., dtype=...)`` gets the text
    after ``scheme:``; ``examples`` are full specs shown in error messages."""

    name: str
    load: Callable[..., T]
    examples: tuple[str, ...] = ()


class SchemeRegistry(Generic[T]):
    """The schemes of one kind of model (``kind`` names it in messages), with plugins from
    the entry-point group ``group``; ``error`` is the ``ConfigError`` subclass raised for a
    spec that is malformed or cannot be loaded."""

    def __init__(self, kind: str, group: str, error: type[ConfigError] = ConfigError) -> None:
        self.kind = kind
        self.group = group
        self.error = error
        self._schemes: dict[str, Scheme[T]] = {}

    def register(self, name: str, load: Callable[..., T], examples: tuple[str, ...] = ()) -> None:
        """Register (or replace) the loader of specs ``name:...``. Raises ``ConfigError``
        for a name that is empty or contains ``:``."""
        if not name or ":" in name:
            raise ConfigError(f"a {self.kind} scheme is a non-empty name without ':', got {name!r}")
        self._schemes[name] = Scheme(name, load, tuple(examples))

    def _plugins(self) -> dict[str, Any]:
        return {ep.name: ep for ep in entry_points(group=self.group)}

    def schemes(self) -> tuple[str, ...]:
        """Every scheme a spec may use: registered ones and those of installed plugins."""
        return tuple(sorted(set(self._schemes) | set(self._plugins())))

    def scheme(self, name: str) -> Scheme[T] | None:
        """The scheme ``name``, registering it from its entry point first if need be."""
        if name not in self._schemes:
            plugin = self._plugins().get(name)
            if plugin is not None:
                plugin.load()()
        return self._schemes.get(name)

    def examples(self) -> str:
        shown = [e for n in self.schemes() if (s := self.scheme(n)) for e in s.examples]
        return " | ".join(shown)

    def parse(self, spec: str) -> tuple[str, str]:
        """``"scheme:name"`` -> ``(scheme, name)``. Raises ``error`` naming the known
        schemes when the spec is malformed or its scheme is not registered."""
        scheme, sep, rest = (spec or "").partition(":")
        if not sep or not rest or self.scheme(scheme) is None:
            raise self.error(
                f"bad {self.kind} spec {spec!r}: expected SCHEME:NAME with SCHEME one of "
                f"{', '.join(self.schemes())}, e.g. {self.examples()}"
            )
        return scheme, rest

    def load(
        self, spec: str, *, device: str | torch.device = "cpu", dtype: str | torch.dtype | None
    ) -> T:
        """Load the model a spec names on ``device`` in ``dtype`` (both resolved by
        :mod:`mechtune.models.precision`).

        Raises ``error`` for a malformed spec, an unknown scheme, a missing extra, or a
        model that cannot be read (offline hub ids say so); ``ConfigError`` for a bad dtype.
        """
        scheme, name = self.parse(spec)
        where, resolved = resolve_device(device), resolve_dtype(dtype)
        loader = self._schemes[scheme].load
        try:
            return loader(name, device=where, dtype=resolved)
        except MechtuneError:
            raise
        except ImportError as exc:
            raise self.error(f"cannot load {spec!r}: {exc}") from exc
        except (OSError, ValueError, RuntimeError) as exc:
            offline = os.environ.get("HF_HUB_OFFLINE") == "1"
            hint = (
                " (HF_HUB_OFFLINE=1: only local folders and cached models load)" if offline else ""
            )
            raise self.error(f"cannot load {spec!r}: {exc}{hint}") from exc


__all__ = ["Scheme", "SchemeRegistry"]
