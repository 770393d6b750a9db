"""Shared SAE test helpers: random SAEs, file writers, and a reference SAELens forward pass
written from SAELens's own ``encode``/``decode`` (not from mechtune's folding)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

from mechtune.interp.sae import SAE, SAEConfig

D_IN, D_SAE = 6, 10


def random_sae(kind: str = "jumprelu", seed: int = 0, k: int | None = None) -> SAE:
    """A small SAE with every parameter random; thresholds put about half the
    positive pre-activations below threshold."""
    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(D_IN, D_SAE, kind, k=k, layer=3, model="tiny", hook="lm.layers.3"))
    with torch.no_grad():
        for tensor in sae.tensors().values():
            tensor.copy_(torch.randn(tensor.shape, generator=g))
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(D_SAE, generator=g))
    return sae


def numpy_params(sae: SAE) -> dict[str, np.ndarray]:
    return {name: t.numpy().astype(np.float64) for name, t in sae.tensors().items()}


def saelens_weights(architecture: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random SAELens-named weights of an architecture (decoder rows not unit norm)."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    w = {"W_enc": randn(D_IN, D_SAE), "W_dec": 2 * randn(D_SAE, D_IN), "b_dec": randn(D_IN)}
    if architecture == "gated":
        w |= {"b_gate": randn(D_SAE), "b_mag": randn(D_SAE), "r_mag": 0.5 * randn(D_SAE)}
    else:
        w["b_enc"] = randn(D_SAE)
    if architecture == "jumprelu":
        w["threshold"] = torch.rand(D_SAE, generator=g)
    return w


def write_saelens(folder: Path, cfg: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "sae_weights.safetensors")
    return folder


def saelens_reference(
    cfg: dict[str, Any], weights: dict[str, torch.Tensor], x: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``(features, reconstruction)`` as SAELens computes them for this cfg, in float64:
    ``process_sae_in`` subtracts b_dec when apply_b_dec_to_input (default true), then
    the architecture's encoder, then ``decode`` with the optional fine-tuning scale."""
    w = {key: value.double().numpy() for key, value in weights.items()}
    architecture = cfg.get("architecture", "standard")
    activation = cfg.get("activation_fn_str", cfg.get("activation_fn", "relu"))
    sae_in = x - w["b_dec"] * cfg.get("apply_b_dec_to_input", True)
    if architecture == "gated":
        active = (sae_in @ w["W_enc"] + w["b_gate"]) > 0
        magnitude = sae_in @ (w["W_enc"] * np.exp(w["r_mag"])) + w["b_mag"]
        f = active * np.maximum(magnitude, 0)
    else:
        pre = sae_in @ w["W_enc"] + w["b_enc"]
        if cfg.get("rescale_acts_by_decoder_norm"):
            pre = pre * np.linalg.norm(w["W_dec"], axis=1)
        if architecture == "topk" or activation == "topk":
            k = cfg.get("k") or cfg["activation_fn_kwargs"]["k"]
            f = np.zeros_like(pre)
            top = np.argsort(-pre, axis=-1)[..., :k]
            np.put_along_axis(f, top, np.maximum(np.take_along_axis(pre, top, -1), 0), -1)
        elif architecture == "jumprelu":
            f = np.maximum(pre, 0) * (pre > w["threshold"])
        else:
            f = np.maximum(pre, 0)
    decoded = f
    if cfg.get("rescale_acts_by_decoder_norm"):
        decoded = f / np.linalg.norm(w["W_dec"], axis=1)
    scale = w.get("finetuning_scaling_factor", w.get("scaling_factor"))
    if scale is not None:
        decoded = decoded * scale
    return f, decoded @ w["W_dec"] + w["b_dec"]
