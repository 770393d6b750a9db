"""Sparse autoencoders (JumpReLU and TopK): the model, its config, file checks and metrics.

An SAE maps a residual state x ``[..., d_in]`` to features f ``[..., d_sae]`` and back:

* pre-activation ``pre = x @ w_enc + b_enc`` (b_dec is **not** subtracted from x first:
  Gemma Scope's convention, and the trap when porting SAELens code);
* ``jumprelu``: ``f = relu(pre) * (pre > threshold)`` (Rajamanoharan et al. 2024, eq. 3;
  a zero threshold makes it a plain ReLU SAE);
* ``topk``: the k largest of ``relu(pre)`` are kept, the rest zeroed (Gao et al. 2024);
* reconstruction ``x_hat = f @ w_dec + b_dec``.

Files: :func:`load_sae` reads the three layouts users have, each into this one model, and
reads each exactly as its writer meant or refuses it with :class:`SAEFormatError`, naming
the key and value:

* Gemma Scope 2 (``params.safetensors``) and Gemma Scope 1 (``params.npz``):
  :mod:`mechtune.interp.sae_gemma_scope`;
* SAELens (``cfg.json`` + ``sae_weights.safetensors``, every config layout SAELens has
  written): :mod:`mechtune.interp.sae_saelens`, whose docstring lists which variants are
  read and which refused.

Where an SAE reads (``SAEConfig.layer`` and ``hook``): mechtune's layer L is the output of
text block L (the residual stream after it). :func:`block_output_layer` reads that layer
from a hook name, so that an SAE trained on ``blocks.3.hook_resid_pre`` (block 3's
*input*) sits at layer 2, and one trained on ``blocks.3.hook_mlp_out`` sits at no layer.
Training lives in :mod:`mechtune.interp.sae_train`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechtune.errors import ConfigError, DataError

GEMMA_SCOPE_2_FILE = "params.safetensors"
GEMMA_SCOPE_2_CONFIG = "config.json"
GEMMA_SCOPE_1_FILE = "params.npz"
SAELENS_CONFIG = "cfg.json"
SAELENS_WEIGHTS = "sae_weights.safetensors"


class SAEFormatError(DataError):
    """An SAE file lacks a key, has a misshaped tensor, or uses an option mechtune does not
    read exactly; the message names the file, the key and the value."""


# ---------------------------------------------------------------- where an SAE reads

_BLOCK = r"(?:blocks|layers|layer|h)\.(\d+)"
_BLOCK_INDEX = re.compile(rf"(?:^|\.){_BLOCK}(?:\.|$)")
_BLOCK_OUTPUT = re.compile(rf"(?:^|\.){_BLOCK}(?:\.output|\.hook_resid_post)?$")
_BLOCK_INPUT = re.compile(rf"(?:^|\.){_BLOCK}\.hook_resid_pre$")
_LAYER_FOLDER = re.compile(r"layer_(\d+)(?:_([A-Za-z].*))?")


def hook_block_index(hook: str) -> int | None:
    """The index of the block a hook name lies in, or None when it names no block:
    ``blocks.3.hook_mlp_out`` -> 3 (TransformerLens), ``model.layers.3.output`` -> 3 (the
    Hugging Face module path Gemma Scope 2 uses), ``hook_embed`` -> None. This is SAELens's
    ``hook_layer``."""
    match = _BLOCK_INDEX.search(hook)
    return int(match.group(1)) if match else None


def block_output_layer(hook: str) -> int | None:
    """mechtune's layer of a hook name: L when it reads the output of block L, else None.

    ``blocks.L.hook_resid_post``, ``...layers.L.output`` and a block's own module path
    (``language_model.layers.L``, how mechtune names its hooks) read block L's output;
    ``blocks.L.hook_resid_pre`` reads block L's input, which is block L-1's output (None
    for L = 0, the embeddings). Any other site (``hook_mlp_out``, ``attn.hook_z``,
    ``self_attn.o_proj.input``, ...) is not a block output: None.
    """
    match = _BLOCK_OUTPUT.search(hook)
    if match:
        return int(match.group(1))
    match = _BLOCK_INPUT.search(hook)
    if match and int(match.group(1)) > 0:
        return int(match.group(1)) - 1
    return None


def layer_folder(name: str) -> tuple[int, str] | None:
    """``(layer, variant)`` of an SAE folder name: ``layer_17`` -> ``(17, "")``,
    ``layer_17_width_16k_l0_medium`` (Gemma Scope 2) -> ``(17, "width_16k_l0_medium")``;
    None for other names, including ``layer_7_13_17`` (a multi-layer crosscoder)."""
    match = _LAYER_FOLDER.fullmatch(name)
    return (int(match.group(1)), match.group(2) or "") if match else None


# ---------------------------------------------------------------- the model


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


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class SAEConfig:
    """Shape and kind of an SAE, and where in which model it reads.

    ``layer`` is the block whose output the SAE reads (None: not a block output, or
    unknown); ``hook`` the site's name as its writer gave it; ``model`` the model it was
    trained on. When ``hook`` names a block (see :func:`hook_block_index`), ``layer`` must
    agree with it (:func:`block_output_layer`).
    """

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
            if not _is_int(value) or value < 1:
                raise ConfigError(f"{name} must be a positive int, got {value!r}")
        if self.kind not in _KINDS:
            raise ConfigError(f"unknown SAE kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.kind == "topk":
            if not _is_int(self.k):
                raise ConfigError(f"kind 'topk' needs an int k, got k={self.k!r}")
            if not 1 <= self.k <= self.d_sae:  # type: ignore[operator]
                raise ConfigError(f"k must be in [1, d_sae={self.d_sae}], got {self.k}")
        elif self.k is not None:
            raise ConfigError(f"k is only for kind 'topk', got k={self.k!r} for {self.kind!r}")
        if self.layer is not None and (not _is_int(self.layer) or self.layer < 0):
            raise ConfigError(f"layer must be a non-negative int or None, got {self.layer!r}")
        for name in ("model", "hook"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigError(f"{name} must be a string or None, got {value!r}")
        if self.hook is not None and self.layer is not None:
            at = block_output_layer(self.hook)
            if at is None and hook_block_index(self.hook) is not None:
                raise ConfigError(
                    f"hook {self.hook!r} is not a block output, so layer must be None, "
                    f"got layer={self.layer}"
                )
            if at is not None and at != self.layer:
                raise ConfigError(
                    f"hook {self.hook!r} reads the output of block {at}, but layer={self.layer}"
                )

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


# ---------------------------------------------------------------- file checks (all layouts)

# The dtype names SAELens writes (``str(torch.float32)`` before 3.0, ``float32`` after).
DTYPES: dict[str, torch.dtype] = {
    name: dtype
    for short, dtype in (
        ("float32", torch.float32),
        ("float64", torch.float64),
        ("float16", torch.float16),
        ("bfloat16", torch.bfloat16),
    )
    for name in (short, f"torch.{short}")
}


def parse_dtype(value: Any, where: str) -> torch.dtype:
    """A dtype name (``float32``, ``torch.bfloat16``, ...) -> torch dtype; refuses others."""
    if not isinstance(value, str) or value not in DTYPES:
        raise SAEFormatError(
            f"{where}: dtype={value!r} is not a dtype mechtune reads; known: {sorted(DTYPES)}"
        )
    return DTYPES[value]


def check_tensors(
    tensors: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, ...]],
    file: Path,
    optional: tuple[str, ...] = (),
) -> None:
    """Refuse a file whose tensors are not exactly ``shapes`` (key -> shape): a missing
    key, an unknown key (unless in ``optional``), a wrong shape, a non-float tensor or a
    NaN/inf value, each named with the file and key."""
    for key in shapes:
        if key not in tensors:
            raise SAEFormatError(f"{file}: missing key {key!r} (found: {sorted(tensors)})")
    unknown = sorted(set(tensors) - set(shapes) - set(optional))
    if unknown:
        raise SAEFormatError(
            f"{file}: unknown key(s) {unknown}; mechtune cannot tell what they do to the "
            f"SAE's math (expected: {sorted(shapes)})"
        )
    for key, shape in shapes.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != shape:
            raise SAEFormatError(
                f"{file}: key {key!r} has shape {tuple(tensor.shape)}, expected {shape}"
            )
        if not tensor.is_floating_point():
            raise SAEFormatError(f"{file}: key {key!r} has dtype {tensor.dtype}, not a float")
        if not bool(torch.isfinite(tensor).all()):
            raise SAEFormatError(f"{file}: key {key!r} contains NaN or inf")


def shapes_of(d_in: int, d_sae: int, names: Mapping[str, str]) -> dict[str, tuple[int, ...]]:
    """File key -> expected shape, for ``names`` mapping our tensor name -> file key."""
    ours = {
        "w_enc": (d_in, d_sae),
        "w_dec": (d_sae, d_in),
        "b_enc": (d_sae,),
        "b_dec": (d_in,),
        "threshold": (d_sae,),
    }
    return {key: ours[name] for name, key in names.items()}


def storage_dtype(
    tensors: Mapping[str, torch.Tensor],
    requested: torch.dtype | None,
    file: Path,
    written: torch.dtype | None = None,
) -> torch.dtype:
    """The dtype to load ``tensors`` in, never rounding a value the caller did not ask for.

    ``requested`` None means the writer's dtype: ``written`` (what the file's config says
    it computes in, as SAELens casts its weights to it) or else the widest dtype among the
    tensors (exact). A requested dtype that cannot hold every stored value exactly (e.g.
    float32 for float64 weights) is refused, naming the key.
    """
    if requested is None:
        if written is not None:
            return written
        return functools.reduce(torch.promote_types, [t.dtype for t in tensors.values()])
    for key, tensor in tensors.items():
        if tensor.dtype != requested and not torch.equal(
            tensor.to(requested).to(tensor.dtype), tensor
        ):
            raise SAEFormatError(
                f"{file}: key {key!r} holds {tensor.dtype} values that dtype={requested} "
                "cannot represent exactly; load with dtype=None (the writer's) or a wider "
                "dtype"
            )
    return requested


def build_sae(
    config: SAEConfig,
    tensors: Mapping[str, torch.Tensor],
    dtype: torch.dtype,
    device: str | torch.device | None,
) -> SAE:
    """An SAE in eval mode from ``tensors`` keyed by our names (cast to ``dtype``)."""
    sae = SAE(config, dtype=dtype, device=device)
    sae.load_state_dict({name: tensors[name].to(dtype) for name in sae.tensors()})
    return sae.eval()


def load_sae(
    path: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> SAE:
    """Load an SAE from a folder (or its weights file), detecting the layout.

    Looks for, in order: ``cfg.json`` + ``sae_weights.safetensors`` (SAELens),
    ``params.safetensors`` (Gemma Scope 2), ``params.npz`` (Gemma Scope 1). ``dtype`` None
    keeps the writer's dtype; see :func:`storage_dtype`. Raises :class:`SAEFormatError` for
    a file that cannot be read exactly, ``FileNotFoundError`` when there is no SAE.
    """
    from mechtune.interp.sae_gemma_scope import load_gemma_scope, load_gemma_scope_npz
    from mechtune.interp.sae_saelens import load_saelens

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
