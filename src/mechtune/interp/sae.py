"""Sparse autoencoders (JumpReLU and TopK): the model, loaders, savers and metrics.

An SAE maps a residual state x ``[..., d_in]`` to features f ``[..., d_sae]`` and back:

* pre-activation ``pre = x @ w_enc + b_enc`` (b_dec is **not** subtracted from x first:
  Gemma Scope's convention, and the trap when porting SAELens code);
* ``jumprelu``: ``f = relu(pre) * (pre > threshold)``;
* ``topk``: the k largest of ``relu(pre)`` are kept, the rest zeroed;
* reconstruction ``x_hat = f @ w_dec + b_dec``.

Three on-disk layouts load into the same ``SAE`` (``load_sae`` picks by the files present):
Gemma Scope 2 (``params.safetensors``, lower-case ``w_enc``), Gemma Scope 1 (``params.npz``,
``W_enc``) and SAELens (``cfg.json`` + ``sae_weights.safetensors``). An SAELens SAE that
subtracts b_dec from its input has that folded into b_enc on load
(``b_enc - b_dec @ W_enc``), so every loaded SAE follows the formulas above; a
``standard`` (ReLU) SAELens SAE becomes a JumpReLU SAE with a zero threshold.
Training lives in ``mechtune.interp.sae_train``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from mechtune.data.io import atomic_path, dumps_json, write_json
from mechtune.errors import ConfigError, DataError

GEMMA_SCOPE_2_FILE = "params.safetensors"
GEMMA_SCOPE_1_FILE = "params.npz"
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"
_CONFIG_METADATA_KEY = "mechtune_sae_config"  # our config, kept in the safetensors header


class SAEFormatError(DataError):
    """An SAE file lacks a key, has a misshaped tensor, or uses an unsupported option."""


@dataclass(frozen=True)
class _Kind:
    """One SAE architecture: its activation and the tensors it stores."""

    activate: Callable[[SAE, torch.Tensor], torch.Tensor]  # (sae, pre) -> f
    tensors: tuple[str, ...]


def _jumprelu(sae: SAE, pre: torch.Tensor) -> torch.Tensor:
    assert sae.threshold is not None  # a jumprelu SAE always has one (see SAE.__init__)
    return torch.relu(pre) * (pre > sae.threshold)


def _topk(sae: SAE, pre: torch.Tensor) -> torch.Tensor:
    assert sae.config.k is not None  # SAEConfig requires k for topk
    values, indices = torch.relu(pre).topk(sae.config.k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter(-1, indices, values)


_BASE_TENSORS = ("w_enc", "w_dec", "b_enc", "b_dec")
_KINDS: dict[str, _Kind] = {
    "jumprelu": _Kind(_jumprelu, (*_BASE_TENSORS, "threshold")),
    "topk": _Kind(_topk, _BASE_TENSORS),
}
KINDS: tuple[str, ...] = tuple(sorted(_KINDS))


@dataclass(frozen=True)
class SAEConfig:
    """Shape and kind of an SAE, plus where in which model it reads (metadata only)."""

    d_in: int
    d_sae: int
    kind: str = "jumprelu"
    k: int | None = None  # topk only: features kept per row
    layer: int | None = None
    model: str | None = None
    hook: str | None = None

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.kind not in _KINDS:
            raise ConfigError(f"unknown SAE kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "topk":
            if isinstance(self.k, bool) or not isinstance(self.k, int):
                raise ConfigError(f"kind 'topk' needs an int k, got k={self.k!r}")
            if not 1 <= self.k <= self.d_sae:
                raise ConfigError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        elif self.k is not None:
            raise ConfigError(f"k is only for kind 'topk', got k={self.k!r} for {self.kind!r}")
        if self.layer is not None and (not isinstance(self.layer, int) or self.layer < 0):
            raise ConfigError(f"layer must be a non-negative int or None, got {self.layer!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SAEConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown SAEConfig field(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


class SAE(nn.Module):
    """A sparse autoencoder; parameters w_enc ``[d_in, d_sae]``, w_dec ``[d_sae, d_in]``,
    b_enc ``[d_sae]``, b_dec ``[d_in]`` and, for jumprelu, threshold ``[d_sae]``.

    Built with zero parameters; load weights with ``load_state_dict`` or a loader.
    Inputs are cast to the parameters' dtype.
    """

    # Annotated as Tensor (they hold nn.Parameters) so the SAE satisfies protocols
    # that declare ``w_dec: torch.Tensor``.
    w_enc: torch.Tensor
    w_dec: torch.Tensor
    b_enc: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None

    def __init__(
        self,
        config: SAEConfig,
        *,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._kind = _KINDS[config.kind]

        def zeros(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(*shape, dtype=dtype, device=device))

        self.w_enc = zeros(config.d_in, config.d_sae)
        self.w_dec = zeros(config.d_sae, config.d_in)
        self.b_enc = zeros(config.d_sae)
        self.b_dec = zeros(config.d_in)
        self.register_parameter(
            "threshold", zeros(config.d_sae) if "threshold" in self._kind.tensors else None
        )

    @property
    def d_in(self) -> int:
        return self.config.d_in

    @property
    def d_sae(self) -> int:
        return self.config.d_sae

    def pre(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> pre-activations ``x @ w_enc + b_enc`` ``[..., d_sae]``."""
        return x.to(self.w_enc.dtype) @ self.w_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> sparse features ``[..., d_sae]``."""
        return self._kind.activate(self, self.pre(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Features ``[..., d_sae]`` -> reconstruction ``f @ w_dec + b_dec`` ``[..., d_in]``."""
        return f.to(self.w_dec.dtype) @ self.w_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., d_in]`` -> reconstruction ``[..., d_in]``."""
        return self.decode(self.encode(x))

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors of this kind, detached, by our (lower-case) names."""
        return {name: getattr(self, name).detach() for name in self._kind.tensors}


# ---------------------------------------------------------------- loading and saving


def _check_tensors(
    tensors: Mapping[str, torch.Tensor],
    names: Mapping[str, str],
    file: Path,
    d_in: int | None = None,
    d_sae: int | None = None,
) -> tuple[int, int]:
    """Check presence and shapes of the tensors; ``names`` maps our name -> file key.

    Returns ``(d_in, d_sae)``, read from the encoder unless given.
    """
    for key in names.values():
        if key not in tensors:
            raise SAEFormatError(f"{file}: missing key {key!r} (found: {sorted(tensors)})")
    w_enc = tensors[names["w_enc"]]
    if w_enc.ndim != 2:
        raise SAEFormatError(
            f"{file}: key {names['w_enc']!r} must be 2-D, got {tuple(w_enc.shape)}"
        )
    d_in = int(w_enc.shape[0]) if d_in is None else d_in
    d_sae = int(w_enc.shape[1]) if d_sae is None else d_sae
    expected = {
        "w_enc": (d_in, d_sae),
        "w_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }
    for ours, key in names.items():
        shape = tuple(tensors[key].shape)
        if shape != expected[ours]:
            raise SAEFormatError(
                f"{file}: key {key!r} has shape {shape}, expected {expected[ours]} "
                f"(d_in={d_in}, d_sae={d_sae})"
            )
    return d_in, d_sae


def _build(
    config: SAEConfig,
    tensors: Mapping[str, torch.Tensor],
    names: Mapping[str, str],
    dtype: torch.dtype,
    device: str | torch.device | None,
) -> SAE:
    sae = SAE(config, dtype=dtype, device=device)
    sae.load_state_dict({ours: tensors[key] for ours, key in names.items()})
    return sae.eval()


def _read_safetensors(file: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    with safe_open(str(file), framework="pt") as fh:
        tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        metadata = fh.metadata() or {}
    return tensors, metadata


def _layer_from_path(path: Path) -> int | None:
    """Gemma Scope folders are named like ``layer_17_width_16k_l0_medium``."""
    for part in reversed(path.parts):
        match = re.match(r"layer_(\d+)", part)
        if match:
            return int(match.group(1))
    return None


def _gemma_scope_file(path: str | Path, default: str) -> Path:
    p = Path(path)
    return p / default if p.is_dir() else p


def load_gemma_scope(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> SAE:
    """A Gemma Scope 2 folder (``params.safetensors``) or file -> jumprelu SAE.

    Keys ``w_enc [d_in, d_sae]``, ``w_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``.
    """
    file = _gemma_scope_file(path, GEMMA_SCOPE_2_FILE)
    tensors, metadata = _read_safetensors(file)
    names = {name: name for name in _KINDS["jumprelu"].tensors}
    d_in, d_sae = _check_tensors(tensors, names, file)
    if _CONFIG_METADATA_KEY in metadata:
        try:
            config = SAEConfig.from_dict(json.loads(metadata[_CONFIG_METADATA_KEY]))
        except ValueError as exc:  # json.JSONDecodeError is a ValueError too
            raise SAEFormatError(f"{file}: bad {_CONFIG_METADATA_KEY} metadata: {exc}") from None
        if (config.d_in, config.d_sae) != (d_in, d_sae):
            raise SAEFormatError(
                f"{file}: stored config says d_in={config.d_in}, d_sae={config.d_sae} but "
                f"the tensors give d_in={d_in}, d_sae={d_sae}"
            )
    else:
        config = SAEConfig(d_in, d_sae, "jumprelu", layer=_layer_from_path(file.parent))
    return _build(config, tensors, names, dtype, device)


def load_gemma_scope_npz(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> SAE:
    """A Gemma Scope 1 folder (``params.npz``) or file -> jumprelu SAE.

    Keys ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``.
    """
    file = _gemma_scope_file(path, GEMMA_SCOPE_1_FILE)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    with np.load(file) as data:
        tensors = {key: torch.from_numpy(np.array(data[key])) for key in data.files}
    names = {
        "w_enc": "W_enc",
        "w_dec": "W_dec",
        "b_enc": "b_enc",
        "b_dec": "b_dec",
        "threshold": "threshold",
    }
    d_in, d_sae = _check_tensors(tensors, names, file)
    config = SAEConfig(d_in, d_sae, "jumprelu", layer=_layer_from_path(file.parent))
    return _build(config, tensors, names, dtype, device)


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


_SAELENS_NAMES = {
    "w_enc": "W_enc",
    "w_dec": "W_dec",
    "b_enc": "b_enc",
    "b_dec": "b_dec",
    "threshold": "threshold",
}
# SAELens architecture -> our kind. A "standard" SAE is ReLU: jumprelu with threshold 0.
_SAELENS_KINDS = {"jumprelu": "jumprelu", "topk": "topk", "standard": "jumprelu"}


def _saelens_field(cfg: Mapping[str, Any], key: str) -> Any:
    """A field at the top level of cfg.json, or under ``metadata`` (SAELens 6)."""
    if key in cfg:
        return cfg[key]
    meta = cfg.get("metadata")
    return meta.get(key) if isinstance(meta, Mapping) else None


def load_saelens(
    folder: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> SAE:
    """An SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) -> SAE.

    Architectures jumprelu, topk (``k`` top-level or in ``activation_fn_kwargs``) and
    standard (ReLU, loaded as jumprelu with a zero threshold). ``apply_b_dec_to_input``
    (SAELens's default, True, when absent) is folded into b_enc.
    """
    root = Path(folder)
    cfg_file, weights_file = root / SAELENS_CONFIG, root / SAELENS_WEIGHTS
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: no such file")
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise SAEFormatError(f"{cfg_file}: missing key {key!r}")
    architecture = cfg.get("architecture", "standard")
    if architecture not in _SAELENS_KINDS:
        raise SAEFormatError(
            f"{cfg_file}: architecture {architecture!r} is not supported; "
            f"supported: {sorted(_SAELENS_KINDS)}"
        )
    normalize = cfg.get("normalize_activations")
    if normalize not in (None, "none"):
        raise SAEFormatError(
            f"{cfg_file}: normalize_activations={normalize!r} is not supported (only 'none')"
        )
    kind = _SAELENS_KINDS[architecture]
    k = None
    if kind == "topk":
        kwargs = cfg.get("activation_fn_kwargs") or {}
        k = cfg.get("k", kwargs.get("k"))
        if k is None:
            raise SAEFormatError(
                f"{cfg_file}: topk SAE without 'k' (top level or activation_fn_kwargs)"
            )
    layer = _saelens_field(cfg, "hook_layer")
    if layer is None:
        hook_name = _saelens_field(cfg, "hook_name") or ""
        match = re.search(r"(?:blocks|layers)\.(\d+)\.", hook_name)
        layer = int(match.group(1)) if match else None
    try:
        config = SAEConfig(
            d_in=int(cfg["d_in"]),
            d_sae=int(cfg["d_sae"]),
            kind=kind,
            k=None if k is None else int(k),
            layer=layer,
            model=_saelens_field(cfg, "model_name"),
            hook=_saelens_field(cfg, "hook_name"),
        )
    except (TypeError, ValueError) as exc:
        raise SAEFormatError(f"{cfg_file}: {exc}") from None
    tensors, _ = _read_safetensors(weights_file)
    stored = [n for n in _KINDS[kind].tensors if architecture != "standard" or n != "threshold"]
    names = {ours: _SAELENS_NAMES[ours] for ours in stored}
    _check_tensors(tensors, names, weights_file, config.d_in, config.d_sae)
    tensors = {key: tensors[key].to(torch.float64) for key in names.values()}
    if architecture == "standard":
        tensors["threshold"] = torch.zeros(config.d_sae, dtype=torch.float64)
        names["threshold"] = "threshold"
    if cfg.get("apply_b_dec_to_input", True):  # SAELens's default when the key is absent
        # (x - b_dec) @ W_enc + b_enc == x @ W_enc + (b_enc - b_dec @ W_enc)
        tensors["b_enc"] = tensors["b_enc"] - tensors["b_dec"] @ tensors["W_enc"]
    return _build(config, tensors, names, dtype, device)


def save_saelens(sae: SAE, folder: str | Path) -> Path:
    """Write an SAE as an SAELens folder: ``cfg.json`` + ``sae_weights.safetensors``
    (each atomically). Returns the folder."""
    root = Path(folder)
    config = sae.config
    cfg: dict[str, Any] = {
        "architecture": config.kind,
        "d_in": config.d_in,
        "d_sae": config.d_sae,
        "dtype": str(sae.w_enc.dtype).removeprefix("torch."),
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {
            "model_name": config.model,
            "hook_name": config.hook,
            "hook_layer": config.layer,
        },
    }
    if config.k is not None:
        cfg["k"] = config.k
    tensors = {_SAELENS_NAMES[k]: v.contiguous().cpu() for k, v in sae.tensors().items()}
    with atomic_path(root / SAELENS_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json(root / SAELENS_CONFIG, cfg, sort_keys=True)
    return root


def load_sae(
    path: str | Path,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> SAE:
    """Load an SAE from a folder (or its weights file), detecting the layout.

    Looks for, in order: ``cfg.json`` + ``sae_weights.safetensors`` (SAELens),
    ``params.safetensors`` (Gemma Scope 2), ``params.npz`` (Gemma Scope 1).
    """
    p = Path(path)
    if p.is_file():
        if p.name == SAELENS_WEIGHTS or p.name == SAELENS_CONFIG:
            return load_saelens(p.parent, dtype=dtype, device=device)
        if p.suffix == ".safetensors":
            return load_gemma_scope(p, dtype=dtype, device=device)
        if p.suffix == ".npz":
            return load_gemma_scope_npz(p, dtype=dtype, device=device)
        raise SAEFormatError(f"{p}: not an SAE file (expected .safetensors or .npz)")
    if not p.is_dir():
        raise FileNotFoundError(f"{p}: no such file or folder")
    if (p / SAELENS_CONFIG).is_file() and (p / SAELENS_WEIGHTS).is_file():
        return load_saelens(p, dtype=dtype, device=device)
    if (p / GEMMA_SCOPE_2_FILE).is_file():
        return load_gemma_scope(p, dtype=dtype, device=device)
    if (p / GEMMA_SCOPE_1_FILE).is_file():
        return load_gemma_scope_npz(p, dtype=dtype, device=device)
    present = sorted(child.name for child in p.iterdir())[:20]
    raise FileNotFoundError(
        f"{p}: no SAE found; looked for {SAELENS_CONFIG} + {SAELENS_WEIGHTS} (SAELens), "
        f"{GEMMA_SCOPE_2_FILE} (Gemma Scope 2), {GEMMA_SCOPE_1_FILE} (Gemma Scope 1); "
        f"found: {present}"
    )


# ---------------------------------------------------------------- metrics


@dataclass(frozen=True)
class ReconstructionStats:
    """How well an SAE reconstructs a set of activations."""

    r2: float  # 1 - fvu
    fvu: float  # sum ||x - x_hat||^2 / sum ||x - mean(x)||^2
    mse: float  # mean over rows of ||x - x_hat||^2
    l0: float  # mean number of active features per row
    dead_fraction: float  # share of features never active on these rows
    n_rows: int
    frequency: torch.Tensor  # [d_sae], share of rows on which each feature is active

    def to_dict(self) -> dict[str, Any]:
        """Scalars only (the per-feature frequency is left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "frequency"}


@torch.no_grad()
def reconstruction_stats(
    sae: SAE, activations: torch.Tensor, *, chunk_rows: int = 4096
) -> ReconstructionStats:
    """R², FVU, MSE, mean L0 and dead-feature share of ``sae`` on ``[..., d_in]`` rows.

    Works over ``chunk_rows`` rows at a time; sums are accumulated in float64.
    """
    x_all = activations.reshape(-1, activations.shape[-1])
    n = int(x_all.shape[0])
    if n == 0:
        raise DataError("reconstruction_stats needs at least one row")
    if x_all.shape[1] != sae.d_in:
        raise DataError(f"activations have d={x_all.shape[1]}, the SAE expects d_in={sae.d_in}")
    device = sae.w_enc.device
    total = torch.zeros(sae.d_in, dtype=torch.float64, device=device)
    for start in range(0, n, chunk_rows):
        total += x_all[start : start + chunk_rows].to(device, torch.float64).sum(0)
    mean = total / n
    sq_err = torch.zeros((), dtype=torch.float64, device=device)
    sq_dev = torch.zeros((), dtype=torch.float64, device=device)
    active = torch.zeros(sae.d_sae, dtype=torch.float64, device=device)
    for start in range(0, n, chunk_rows):
        x = x_all[start : start + chunk_rows].to(device)
        f = sae.encode(x)
        x_hat = sae.decode(f)
        x64 = x.to(torch.float64)
        sq_err += (x64 - x_hat.to(torch.float64)).square().sum()
        sq_dev += (x64 - mean).square().sum()
        active += (f != 0).sum(0, dtype=torch.float64)
    fvu = float(sq_err / sq_dev) if sq_dev > 0 else float("nan")
    frequency = (active / n).float().cpu()
    return ReconstructionStats(
        r2=1.0 - fvu,
        fvu=fvu,
        mse=float(sq_err) / n,
        l0=float(active.sum()) / n,
        dead_fraction=float((frequency == 0).float().mean()),
        n_rows=n,
        frequency=frequency,
    )
