"""Devices and dtypes of dual encoders: what ``--device`` and ``--dtype`` resolve to.

A model's *weights* may be bf16 or fp16 (so a 4B model fits), but every score mechtune
computes from them is float32: similarities, causal-tracing effect ratios and losses. bf16
keeps 8 bits of mantissa, a relative rounding of 2**-9 ≈ 2e-3 per value, enough to
distort the score gaps of about 1e-2 that negation tracing divides by. So adapters return
embeddings upcast with :func:`upcast`, and L2-normalise them after the upcast.
"""

from __future__ import annotations

import torch

from mechtune.errors import ConfigError

# The names ``--dtype`` accepts; "auto" keeps the checkpoint's own dtype.
DTYPES: dict[str, torch.dtype | None] = {
    "auto": None,
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
HALF_DTYPES = (torch.bfloat16, torch.float16)


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """A dtype name (``"float32"``, ``"bfloat16"``, ``"float16"``, ``"auto"``), a
    ``torch.dtype`` among those, or None -> the ``torch.dtype`` to load weights in (None:
    the checkpoint's own). Raises ``ConfigError`` naming the value otherwise."""
    if dtype is None:
        return None
    if isinstance(dtype, torch.dtype):
        if dtype not in DTYPES.values():
            raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype}")
        return dtype
    if dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    return DTYPES[dtype]


def resolve_device(device: str | torch.device) -> torch.device:
    """``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or a ``torch.device``. Raises
    ``ConfigError`` for a malformed name or a CUDA device this machine does not have."""
    try:
        out = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigError(f"device {device!r} is not a torch device name ({exc})") from None
    if out.type == "cuda":
        index = out.index or 0
        if not torch.cuda.is_available() or index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r}: CUDA is not available here "
                f"({torch.cuda.device_count()} CUDA devices)"
            )
    return out


def upcast(x: torch.Tensor) -> torch.Tensor:
    """bf16/fp16 -> float32; float32 and float64 are kept (a float64 model, as in the
    tracing reference tests, stays float64)."""
    return x.float() if x.dtype in HALF_DTYPES else x


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalise the last dimension after :func:`upcast` (torch ``F.normalize``)."""
    return torch.nn.functional.normalize(upcast(x), dim=-1)


__all__ = ["DTYPES", "HALF_DTYPES", "resolve_device", "resolve_dtype", "unit", "upcast"]
