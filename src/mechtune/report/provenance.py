"""What was run, and with what: ``provenance.json``, written by every study, eval and train command
into its output folder, and read by :mod:`mechtune.report`.

The record holds the command (as typed, and with every option at its resolved value), the
recipe, the model spec, the data source, the seeds, the device, the versions that matter
(mechtune and its git commit, python, torch, transformers, peft, accelerate) and the
content hashes of the data manifests the run read (``canonical_hash``: the hash
``mechtune data verify`` checks, so a reader can tell whether two runs read the same data).
"""

from __future__ import annotations

import json
import platform
import sys
from collections.abc import Mapping, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import mechtune
from mechtune.data.io import to_jsonable, write_json
from mechtune.data.recipe import git_commit

PROVENANCE_FILE = "provenance.json"
PACKAGES = ("torch", "transformers", "peft", "accelerate", "numpy", "pyarrow")


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions from the distributions' metadata (None: not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def environment(device: str | None = None) -> dict[str, Any]:
    """mechtune's version and git commit, python, the :data:`PACKAGES` versions, the
    platform, and ``device`` with its name (the GPU's name for a CUDA device that exists,
    else the device string as given)."""
    name = None
    if device and device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            try:
                name = torch.cuda.get_device_name(torch.device(device))
            except (AssertionError, RuntimeError):  # an index this machine lacks
                name = None
    return {
        "mechtune": mechtune.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "device": device,
        "device_name": name,
    }


def _manifest_files(path: Path) -> list[Path]:
    """``manifest.json`` of ``path`` (a file's folder, or the folder) and of its direct
    subfolders (a ``data build`` of several kinds writes one per kind)."""
    folder = path if path.is_dir() else path.parent
    found = [folder / "manifest.json"] if (folder / "manifest.json").is_file() else []
    if folder.is_dir():
        found += sorted(p for p in folder.glob("*/manifest.json") if p.is_file())
    return found


def manifest_hashes(paths: Sequence[str | Path | None]) -> list[dict[str, Any]]:
    """One entry per data manifest found at ``paths`` (:func:`_manifest_files`):
    ``path``, ``kind``, ``canonical_hash`` (content, as ``data verify`` checks it) and
    ``content_hash`` (bytes); hashes an older manifest lacks are None. A manifest that is
    not valid JSON is listed with its ``error``, never skipped silently."""
    seen: set[Path] = set()
    out: list[dict[str, Any]] = []
    for given in paths:
        if given is None:
            continue
        for file in _manifest_files(Path(given)):
            key = file.resolve()
            if key in seen:
                continue
            seen.add(key)
            try:
                manifest = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                out.append({"path": str(file), "error": f"unreadable manifest: {err}"})
                continue
            out.append(
                {
                    "path": str(file),
                    "kind": manifest.get("kind"),
                    "canonical_hash": manifest.get("canonical_hash"),
                    "content_hash": manifest.get("content_hash"),
                }
            )
    return out


def run_record(
    *,
    command: str | None,
    recipe: Mapping[str, Any] | None = None,
    model: str | None = None,
    data: str | Path | None = None,
    data_paths: Sequence[str | Path | None] = (),
    seeds: Sequence[int] | None = None,
    device: str | None = None,
    argv: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The ``provenance.json`` dict. ``command``: the command with every option resolved
    (:func:`mechtune.data.recipe.command_line`); ``argv``: as typed (default
    ``sys.argv``); ``data_paths``: where to look for manifests (``data`` included)."""
    return to_jsonable(
        {
            "command": command,
            "argv": list(sys.argv if argv is None else argv),
            "recipe": dict(recipe) if recipe is not None else None,
            "model": model,
            "data": None if data is None else str(data),
            "seeds": None if seeds is None else [int(s) for s in seeds],
            "environment": environment(device),
            "manifests": manifest_hashes([data, *data_paths]),
        }
    )


def write_run_record(out: str | Path, **facts: Any) -> Path:
    """Write ``out/provenance.json`` atomically (:func:`run_record` with ``facts``); returns its
    path."""
    path = Path(out) / PROVENANCE_FILE
    write_json(path, run_record(**facts))
    return path


def read_run_record(folder: str | Path) -> dict[str, Any] | None:
    """``folder/provenance.json`` as a dict, or None when there is none."""
    path = Path(folder) / PROVENANCE_FILE
    if not path.is_file():
        return None
    loaded: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return loaded


__all__ = [
    "PACKAGES",
    "PROVENANCE_FILE",
    "environment",
    "manifest_hashes",
    "package_versions",
    "read_run_record",
    "run_record",
    "write_run_record",
]
