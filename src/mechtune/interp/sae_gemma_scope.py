"""Gemma Scope SAE files: read exactly as Google wrote them, or refused.

Both releases are JumpReLU SAEs (Lieberum et al. 2024, "Gemma Scope"; REFERENCE §3):
``f = relu(x @ W_enc + b_enc) * (pre > threshold)``, ``x_hat = f @ W_dec + b_dec``, and
b_dec is **not** subtracted from the input.

* **Gemma Scope 2** (Gemma 3): ``<site>/layer_<L>_width_<W>_l0_<size>/params.safetensors``
  with ``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``,
  ``threshold`` and, beside it, a ``config.json`` whose ``hf_hook_point_in`` names the
  site (``model.layers.<L>.output`` for the residual stream).
* **Gemma Scope 1** (Gemma 2): ``layer_<L>/width_<W>/average_l0_<N>/params.npz`` with
  ``W_enc`` ... ``threshold`` (SAELens also accepts lower-case ``w_enc``/``w_dec``).

Checked: every key present, no unknown key (a transcoder's skip weights or a crosscoder's
extra layers would be one), every shape against ``w_enc``'s, float dtypes, finite values.
The layer comes from the folder name and, when present, from the file's own metadata
(``config.json``'s ``hf_hook_point_in``, or the config mechtune keeps in the safetensors
header); a disagreement is an error naming both. Refused from ``config.json``: an
``architecture`` other than JumpReLU, ``affine_connection: true`` (a skip transcoder),
an ``hf_hook_point_out`` other than the input site (a transcoder), a ``type`` other than
``sae``, and a ``width`` that is not the tensors' d_sae. Other keys there (``model_name``,
``l0``) are bookkeeping: the tensors fix the math.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from mechtune.data.io import atomic_path, dumps_json
from mechtune.errors import DataError
from mechtune.interp.sae import (
    GEMMA_SCOPE_1_FILE,
    GEMMA_SCOPE_2_CONFIG,
    GEMMA_SCOPE_2_FILE,
    SAE,
    SAEConfig,
    SAEFormatError,
    block_output_layer,
    build_sae,
    check_tensors,
    hook_block_index,
    layer_folder,
    shapes_of,
    storage_dtype,
)

_CONFIG_METADATA_KEY = "mechtune_sae_config"  # our config, kept in the safetensors header
_JUMPRELU = ("w_enc", "w_dec", "b_enc", "b_dec", "threshold")
_ARCHITECTURES = ("jump_relu", "jumprelu")


def read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, header metadata)`` of a safetensors file."""
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    with safe_open(str(file), framework="pt") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        metadata = fh.metadata() or {}
    return tensors, metadata


def _encoder_shape(tensors: Mapping[str, torch.Tensor], key: str, file: Path) -> tuple[int, int]:
    if key not in tensors:
        raise SAEFormatError(f"{file}: missing key {key!r} (found: {sorted(tensors)})")
    if tensors[key].ndim != 2:
        raise SAEFormatError(f"{file}: key {key!r} must be 2-D, got {tuple(tensors[key].shape)}")
    d_in, d_sae = tensors[key].shape
    return int(d_in), int(d_sae)


def _file_in(path: str | Path, default: str) -> Path:
    p = Path(path)
    return p / default if p.is_dir() else p


def _site_config(file: Path, d_sae: int) -> dict[str, Any]:
    """``{"hook", "model"}`` from a Gemma Scope 2 ``config.json`` beside ``file``, after
    refusing what would change the math; empty when there is none."""
    path = file.parent / GEMMA_SCOPE_2_CONFIG
    if not path.is_file():
        return {}
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SAEFormatError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(cfg, dict):
        raise SAEFormatError(f"{path}: expected a JSON object, got {type(cfg).__name__}")
    architecture = cfg.get("architecture")
    if architecture is not None and str(architecture).lower() not in _ARCHITECTURES:
        raise SAEFormatError(
            f"{path}: architecture={architecture!r} is not a JumpReLU SAE; mechtune reads "
            f"{list(_ARCHITECTURES)} from {GEMMA_SCOPE_2_FILE}"
        )
    if cfg.get("affine_connection"):
        raise SAEFormatError(
            f"{path}: affine_connection={cfg['affine_connection']!r} (a skip transcoder, whose "
            "output adds a linear map of the input); mechtune reads SAEs only"
        )
    kind = cfg.get("type")
    if kind is not None and str(kind).lower() != "sae":
        raise SAEFormatError(f"{path}: type={kind!r} is not an SAE; mechtune reads type 'sae'")
    hook, hook_out = cfg.get("hf_hook_point_in"), cfg.get("hf_hook_point_out")
    if hook_out is not None and hook_out != hook:
        raise SAEFormatError(
            f"{path}: hf_hook_point_out={hook_out!r} differs from hf_hook_point_in={hook!r} "
            "(a transcoder, which writes to another site); mechtune reads SAEs only"
        )
    width = cfg.get("width")
    if width is not None and width != d_sae:
        raise SAEFormatError(f"{path}: width={width!r} but the tensors have d_sae={d_sae}")
    return {"hook": hook, "model": cfg.get("model_name")}


def _header_config(metadata: Mapping[str, str], file: Path) -> SAEConfig | None:
    if _CONFIG_METADATA_KEY not in metadata:
        return None
    try:
        return SAEConfig.from_dict(json.loads(metadata[_CONFIG_METADATA_KEY]))
    except ValueError as exc:  # json.JSONDecodeError and ConfigError are ValueErrors too
        raise SAEFormatError(f"{file}: bad {_CONFIG_METADATA_KEY} metadata: {exc}") from None


def _agree(file: Path, key: str, *values: tuple[str, Any]) -> Any:
    """The one value the named sources give for ``key`` (None if none does)."""
    given = [(source, value) for source, value in values if value is not None]
    if len({repr(value) for _, value in given}) > 1:
        said = ", ".join(f"{source} says {value!r}" for source, value in given)
        raise SAEFormatError(f"{file}: the {key} disagrees: {said}")
    return given[0][1] if given else None


def _place(
    file: Path,
    folder_depth: int,
    header: SAEConfig | None = None,
    site: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"layer", "hook", "model"}`` reconciled from the folder name (up to
    ``folder_depth`` folders above the file) and the file's own metadata: the ``header``
    config mechtune stores and the ``site`` read from Gemma Scope 2's config.json."""
    stored = asdict(header) if header is not None else {}
    site = site or {}
    hook = _agree(
        file,
        "hook",
        ("the stored config", stored.get("hook")),
        (GEMMA_SCOPE_2_CONFIG, site.get("hook")),
    )
    model = _agree(
        file,
        "model",
        ("the stored config", stored.get("model")),
        (GEMMA_SCOPE_2_CONFIG, site.get("model")),
    )
    folder_layer, folder_name = None, ""
    for folder in list(file.parents)[:folder_depth]:
        parsed = layer_folder(folder.name)
        if parsed is not None:
            folder_layer, folder_name = parsed[0], folder.name
            break
    block = hook_block_index(hook) if hook is not None else None
    if block is not None:
        if folder_layer is not None and folder_layer != block:
            raise SAEFormatError(
                f"{file}: folder {folder_name!r} says layer {folder_layer} but the SAE's hook "
                f"{hook!r} is in block {block}"
            )
        layer = block_output_layer(hook)
        _agree(file, "layer", ("the stored config", stored.get("layer")), ("its hook", layer))
    else:
        layer = _agree(
            file,
            "layer",
            ("the stored config", stored.get("layer")),
            ("the folder name", folder_layer),
        )
    return {"layer": layer, "hook": hook, "model": model}


def load_gemma_scope(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> SAE:
    """A Gemma Scope 2 folder (``params.safetensors``, optional ``config.json``) or file ->
    jumprelu SAE. Keys ``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_in]``, ``b_enc``,
    ``b_dec``, ``threshold``; ``dtype`` None keeps the file's. Raises SAEFormatError."""
    file = _file_in(path, GEMMA_SCOPE_2_FILE)
    tensors, metadata = read_safetensors(file)
    d_in, d_sae = _encoder_shape(tensors, "w_enc", file)
    check_tensors(tensors, shapes_of(d_in, d_sae, {n: n for n in _JUMPRELU}), file)
    header = _header_config(metadata, file)
    if header is not None and (header.kind, header.d_in, header.d_sae) != ("jumprelu", d_in, d_sae):
        raise SAEFormatError(
            f"{file}: stored config says kind={header.kind!r}, d_in={header.d_in}, "
            f"d_sae={header.d_sae} but the tensors are a jumprelu SAE with d_in={d_in}, "
            f"d_sae={d_sae}"
        )
    place = _place(file, 1, header=header, site=_site_config(file, d_sae))
    config = SAEConfig(d_in, d_sae, "jumprelu", **place)
    return build_sae(config, tensors, storage_dtype(tensors, dtype, file), device)


def load_gemma_scope_npz(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> SAE:
    """A Gemma Scope 1 folder (``params.npz``) or file -> jumprelu SAE.

    Keys ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]`` (or lower-case), ``b_enc``,
    ``b_dec``, ``threshold``. The layer comes from a ``layer_<L>`` folder up to three
    levels above the file (Gemma Scope 1 nests ``layer_<L>/width_<W>/average_l0_<N>``).
    """
    file = _file_in(path, GEMMA_SCOPE_1_FILE)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    with np.load(file) as data:
        tensors = {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    names = {name: name for name in _JUMPRELU} | {"w_enc": "W_enc", "w_dec": "W_dec"}
    for name in ("w_enc", "w_dec"):
        if name in tensors and names[name] in tensors:
            raise SAEFormatError(f"{file}: both {name!r} and {names[name]!r}; which one is meant?")
        if name in tensors:
            names[name] = name
    d_in, d_sae = _encoder_shape(tensors, names["w_enc"], file)
    check_tensors(tensors, shapes_of(d_in, d_sae, names), file)
    config = SAEConfig(d_in, d_sae, "jumprelu", **_place(file, 3))
    by_name = {name: tensors[key] for name, key in names.items()}
    return build_sae(config, by_name, storage_dtype(by_name, dtype, file), device)


def save_gemma_scope(sae: SAE, folder: str | Path) -> Path:
    """Write a jumprelu SAE as a Gemma Scope 2 ``params.safetensors`` (atomically).

    Our config rides along in the safetensors header, so ``load_gemma_scope`` restores
    layer, model and hook as well. Returns the file written.
    """
    if sae.config.kind != "jumprelu":
        raise DataError(f"Gemma Scope stores jumprelu SAEs only, got kind {sae.config.kind!r}")
    file = Path(folder) / GEMMA_SCOPE_2_FILE
    tensors = {k: v.contiguous().cpu() for k, v in sae.tensors().items()}
    metadata = {_CONFIG_METADATA_KEY: dumps_json(sae.config, indent=None, sort_keys=True)}
    with atomic_path(file) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return file


__all__ = ["load_gemma_scope", "load_gemma_scope_npz", "read_safetensors", "save_gemma_scope"]
