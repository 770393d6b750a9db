"""Imaging-study sources: one protocol (:class:`ImageStudySource`), several layouts.

:func:`open_source` finds the layout of a path and opens it with the matching reader:
MIMIC-CXR-JPG (:class:`MimicCxrJpg`), CheXpert (:class:`CheXpert`), a manifest file
(:class:`Manifest`; PadChest via :func:`padchest_manifest`) or a saved phantom world.
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from mechtune.data.sources.base import (
    DEFAULT_MAX_MISSING,
    IMAGE_MODES,
    ImageStudySource,
    SourceReport,
    read_image_file,
    to_uint8,
)
from mechtune.data.sources.chexpert import CheXpert, chexpert_root
from mechtune.data.sources.manifest import Manifest, manifest_kind
from mechtune.data.sources.mimic import METADATA, MimicCxrJpg, report_sections
from mechtune.data.sources.padchest import PADCHEST_TO_CHEXPERT, padchest_manifest
from mechtune.errors import ConfigError, DataError

# Readers outside mechtune.data, named "module:Class" and imported only when a folder of
# theirs is opened, so that mechtune.data never imports them (the phantom world is a
# plugin beside the data layer).
LAZY_READERS: dict[str, str] = {"world": "mechtune.sim.source:PhantomWorldSource"}


def detect_layout(path: str | Path) -> str:
    """The layout of ``path``: ``mimic-cxr-jpg``, ``chexpert``, ``manifest`` or ``world``.

    In order: a manifest file (``.csv``, ``.jsonl``, ``.json``, plain or ``.gz``); a
    folder with ``mimic-cxr-2.0.0-metadata.csv(.gz)``; a folder with ``train.csv`` or
    ``valid.csv`` (plain or ``.gz``), here or in a ``CheXpert-v1.0*`` subfolder; a folder
    whose ``manifest.json`` has ``"kind": "world"``. Raises ``DataError`` naming the path
    and what was looked for otherwise.
    """
    path = Path(path)
    if path.is_file() and manifest_kind(path) is not None:
        return "manifest"
    if path.is_dir():
        if any((path / name).is_file() for name in (METADATA, f"{METADATA}.gz")):
            return "mimic-cxr-jpg"
        if chexpert_root(path) is not None:
            return "chexpert"
        manifest = path / "manifest.json"
        if manifest.is_file():
            try:
                kind = json.loads(manifest.read_text(encoding="utf-8")).get("kind")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                kind = None
            if kind == "world":
                return "world"
    elif not path.exists():
        raise DataError(f"{path}: no such file or folder")
    raise DataError(
        f"{path}: unknown data layout; looked for a manifest file (.csv, .jsonl, .json, "
        f"plain or .gz), a MIMIC-CXR-JPG folder ({METADATA}[.gz]), a CheXpert folder "
        "(train.csv or valid.csv, or a CheXpert-v1.0 subfolder with them) and a phantom "
        "world folder (manifest.json with kind 'world')"
    )


def reader_class(layout: str) -> type[ImageStudySource]:
    """The reader class of a layout name (a lazy one is imported now)."""
    readers: dict[str, type[ImageStudySource]] = {
        MimicCxrJpg.layout: MimicCxrJpg,
        CheXpert.layout: CheXpert,
        Manifest.layout: Manifest,
    }
    if layout in readers:
        return readers[layout]
    if layout in LAZY_READERS:
        module, name = LAZY_READERS[layout].split(":")
        try:
            cls: type[ImageStudySource] = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise DataError(
                f"the {layout} layout's reader {LAZY_READERS[layout]} cannot be loaded ({exc})"
            ) from None
        return cls
    known = ", ".join([*readers, *LAZY_READERS])
    raise ConfigError(f"layout must be one of {known}, got {layout!r}")


def open_source(path: str | Path, **options: Any) -> ImageStudySource:
    """Open ``path`` with the reader of its layout (:func:`detect_layout`).

    ``options`` are keyword arguments of that reader (``uncertain``, ``skip_bad``,
    ``max_missing``, ``split_seed``, ...). An option the layout's reader does not take
    raises ``ConfigError`` naming it, the layout and the options it takes.
    """
    layout = detect_layout(path)
    cls = reader_class(layout)
    params = inspect.signature(cls.__init__).parameters
    accepted = [n for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY]
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    unknown = sorted(set(options) - set(accepted))
    if unknown and not takes_any:
        raise ConfigError(
            f"{path}: the {layout} reader does not take option(s) {', '.join(unknown)}; "
            f"it takes {', '.join(accepted) or 'none'}"
        )
    return cast(Callable[..., ImageStudySource], cls)(path, **options)


__all__ = [
    "DEFAULT_MAX_MISSING",
    "IMAGE_MODES",
    "LAZY_READERS",
    "PADCHEST_TO_CHEXPERT",
    "CheXpert",
    "ImageStudySource",
    "Manifest",
    "MimicCxrJpg",
    "SourceReport",
    "detect_layout",
    "open_source",
    "padchest_manifest",
    "read_image_file",
    "reader_class",
    "report_sections",
    "to_uint8",
]
