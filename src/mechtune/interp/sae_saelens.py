"""SAELens SAE folders (``cfg.json`` + ``sae_weights.safetensors``), every layout SAELens
has written, each read exactly as its writer meant or refused with the key and value.

SAELens changed its ``cfg.json`` several times (facts from its own code, tags 1.x-6.x):
before 3.0 the file held the whole training-runner config (``hook_point``,
``hook_point_layer``, ``activation_fn``, ``normalize_activations`` as a bool); 3.0-5.x
hold ``hook_name``/``hook_layer``, ``activation_fn_str`` + ``activation_fn_kwargs`` (TopK
was ``activation_fn_str: "topk"`` with ``{"k": K}``, under ``architecture`` "standard" or
"topk") and ``finetuning_scaling_factor``; 6.x moved ``hook_name``/``model_name`` under
``metadata``, made ``architecture`` decide the encoder and put TopK's ``k`` at the top.

**Read**, into mechtune's JumpReLU/TopK SAE with the same features and reconstruction:

============================================  ===============================================
cfg.json says                                 read as
============================================  ===============================================
``architecture`` absent or ``standard``,      ReLU: jumprelu with threshold 0, since
activation absent or ``relu``                 ``relu(pre) * (pre > 0) = relu(pre)``
``standard`` or ``topk`` with activation      topk with that k (case01: the OpenAI gpt2 TopK
``topk``; k from ``k`` or                     SAEs; SAELens #553)
``activation_fn_kwargs.k``
``jumprelu`` (tensor ``threshold``)           jumprelu
``gated`` (``b_gate``, ``b_mag``,             jumprelu with ``w_enc = W_enc * exp(r_mag)``,
``r_mag``, no ``b_enc``)                      ``b_enc = b_mag``, ``threshold = b_mag -
                                              exp(r_mag) * b_gate``: SAELens's gate
                                              ``x W + b_gate > 0`` is ``pre > threshold``
                                              (exp > 0), so the features are equal; the
                                              equivalence Rajamanoharan et al. 2024 note
``apply_b_dec_to_input`` true (SAELens's      ``(x - b_dec) W_enc + b_enc``, folded into
default when absent)                          ``b_enc - b_dec W_enc`` (gated: into b_gate and
                                              b_mag)
``finetuning_scaling_factor`` true, or a      decode ``(f * s) @ W_dec`` folded into
``scaling_factor`` tensor (SAELens <= 2       ``W_dec`` rows (a ``scaling_factor`` of all ones
applied it always)                            is ignored, as SAELens does)
``rescale_acts_by_decoder_norm`` (TopK, 6.x)  ``pre * n`` before TopK, ``f / n`` before
                                              decoding, ``n = |W_dec rows|``: folded into
                                              ``w_enc``, ``b_enc`` and ``w_dec``
``normalize_activations`` ``none``/null/false as is
``reshape_activations: hook_z`` (or a hook    the same math on the flattened input
ending ``_z``)                                ``[..., n_heads * d_head]``; not a block output
``hook_name`` / ``hook_point`` /              ``SAEConfig.hook``; layer = the block output it
``metadata.hook_name``; ``hook_layer`` /      reads (:func:`~mechtune.interp.sae.
``hook_point_layer``                          block_output_layer`): ``blocks.3.hook_resid_pre``
                                              is layer 2
``dtype`` (``float32``, ``torch.bfloat16``,   the writer's dtype when ``load_saelens(dtype=
...)                                          None)``, as SAELens casts its weights to it
============================================  ===============================================

**Refused** (:class:`~mechtune.interp.sae.SAEFormatError`, naming key and value):
``activation_fn_str: tanh-relu`` and other activations; ``normalize_activations``
``expected_average_only_in`` (or ``true``): its scale factor was estimated from data and
is not in the file (SAELens 6 folds it into the weights and writes ``none``);
``constant_norm_rescale`` and ``layer_norm``: they rescale each row by its own norm (mean
and std) and undo it on the output, so a feature's contribution to x is not
``f_k * W_dec[k]``, which mechtune's analysis edits; the transcoder architectures,
``batchtopk``/``matryoshka_batchtopk`` (training-time; SAELens saves them as jumprelu) and
any other architecture; contradictory keys (``architecture: topk`` with activation
``relu``, two different k, hook names or layers); ``hook_head_index`` (a single head's
SAE); ``d_out``/``hook_name_out`` (transcoders); ``noise_scale > 0`` (SAELens <= 2 added
that noise at inference too); an unknown dtype name; any top-level key in neither
:data:`MATH_KEYS` nor :data:`BOOKKEEPING_KEYS`; weight keys other than the architecture's.
Keys under ``metadata`` are bookkeeping by SAELens 6's design (the math lives at the top
level); ``model_name``, ``hook_name``, ``hook_layer``, ``hook_head_index`` and
``hook_name_out`` are read from there too.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import torch
from safetensors.torch import save_file

from mechtune.data.io import atomic_path, write_json
from mechtune.interp.sae import (
    SAE,
    SAELENS_CONFIG,
    SAELENS_WEIGHTS,
    SAEConfig,
    SAEFormatError,
    block_output_layer,
    build_sae,
    check_tensors,
    hook_block_index,
    parse_dtype,
    storage_dtype,
)
from mechtune.interp.sae_gemma_scope import read_safetensors

# Keys whose value decides the SAE's math or site: each is read and checked below.
MATH_KEYS = frozenset(
    {
        "architecture", "d_in", "d_sae", "dtype", "activation_fn", "activation_fn_str",
        "activation_fn_kwargs", "k", "apply_b_dec_to_input", "normalize_activations",
        "reshape_activations", "finetuning_scaling_factor", "rescale_acts_by_decoder_norm",
        "noise_scale", "d_out", "hook_name", "hook_point", "hook_layer", "hook_point_layer",
        "hook_head_index", "hook_point_head_index", "hook_name_out", "hook_head_index_out",
        "model_name", "metadata",
    }
)  # fmt: skip
# Keys that record how the SAE was trained, on what data, with which logging: they do
# not change what the saved weights compute (all that SAELens 1.x-6.x configs hold).
BOOKKEEPING_KEYS = frozenset(
    {
        "act_store_device", "adam_beta1", "adam_beta2", "autocast", "autocast_lm",
        "aux_loss_coefficient", "b_dec_init_method", "cached_activations_path",
        "checkpoint_path", "compile_llm", "compile_sae", "context_size", "dataset_path",
        "dataset_trust_remote_code", "dead_feature_threshold", "dead_feature_window",
        "decoder_heuristic_init", "decoder_heuristic_init_norm", "decoder_init_norm",
        "decoder_orthogonal_init", "device", "disable_concat_sequences",
        "eval_batch_size_prompts", "eval_every_n_wandb_logs", "exclude_special_tokens",
        "expansion_factor", "feature_sampling_window", "finetuning_method",
        "finetuning_tokens", "from_pretrained_path", "hf_hook_name", "hook_eval",
        "hook_point_eval", "init_encoder_as_decoder_transpose", "is_dataset_tokenized",
        "jumprelu_bandwidth", "jumprelu_init_threshold", "jumprelu_sparsity_loss_mode",
        "jumprelu_tanh_scale", "l0_coefficient", "l0_warm_up_steps", "l1_coefficient",
        "l1_warm_up_steps", "llm_compilation_mode", "log_activations_store_to_wandb",
        "log_optimizer_state_to_wandb", "log_to_wandb", "lp_norm", "lr", "lr_decay_steps",
        "lr_end", "lr_scheduler_name", "lr_warm_up_steps", "matryoshka_widths",
        "model_class_name", "model_from_pretrained_kwargs", "model_kwargs",
        "mse_loss_normalization", "n_batches_in_buffer", "n_checkpoints", "n_eval_batches",
        "n_eval_seqs", "n_restart_cycles", "neuronpedia_id", "new_cached_activations_path",
        "normalize_sae_decoder", "output_path", "pre_act_loss_coefficient", "prepend_bos",
        "resume", "resume_from_checkpoint", "run_name", "sae_compilation_mode",
        "sae_lens_training_version", "sae_lens_version", "save_final_checkpoint",
        "scale_sparsity_penalty_by_decoder_norm", "seed", "seqpos_slice",
        "sequence_separator_token", "store_batch_size", "store_batch_size_prompts",
        "streaming", "tokens_per_buffer", "topk_threshold_lr", "total_training_samples",
        "total_training_steps", "total_training_tokens", "train_batch_size",
        "train_batch_size_samples", "train_batch_size_tokens", "training_tokens",
        "use_cached_activations", "use_ghost_grads", "use_sparse_activations", "verbose",
        "wandb_entity", "wandb_id", "wandb_log_frequency", "wandb_project",
    }
)  # fmt: skip

ARCHITECTURES: tuple[str, ...] = ("gated", "jumprelu", "standard", "topk")
_REFUSED_ARCHITECTURES = {
    "transcoder": "a transcoder (it writes to another site than it reads)",
    "skip_transcoder": "a transcoder with a skip connection",
    "jumprelu_transcoder": "a transcoder (it writes to another site than it reads)",
    "jumprelu_skip_transcoder": "a transcoder with a skip connection",
    "batchtopk": "a training-time architecture (SAELens saves the inference SAE as jumprelu)",
    "matryoshka_batchtopk": "a training-time architecture (SAELens saves it as jumprelu)",
}
_NORMALIZE_REFUSED = {
    "expected_average_only_in": (
        "its input scale factor was estimated from the training data and is not in the "
        "file; fold it in (W_enc * c, W_dec / c, b_dec / c, as SAELens 6 does on saving) "
        "and write 'none'"
    ),
    "constant_norm_rescale": (
        "it rescales each row to norm sqrt(d_in) and undoes that on the output, so a "
        "feature's contribution to x is not f_k * W_dec[k], which mechtune's analysis edits"
    ),
    "layer_norm": (
        "it standardises each row and undoes that on the output, so a feature's "
        "contribution to x is not f_k * W_dec[k], which mechtune's analysis edits"
    ),
}
_NAMES = {"w_enc": "W_enc", "w_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec"}


@dataclass(frozen=True)
class SAELensConfig:
    """What a ``cfg.json`` says about the SAE's math and site, the same for every SAELens
    version (see the module docstring)."""

    architecture: str  # one of ARCHITECTURES
    d_in: int
    d_sae: int
    k: int | None  # topk only (architecture "standard" or "topk")
    apply_b_dec_to_input: bool
    finetuning_scaling_factor: bool | None  # None: the key is absent
    rescale_acts_by_decoder_norm: bool
    dtype: torch.dtype | None
    hook: str | None
    layer: int | None  # mechtune's layer: the block output the SAE reads
    model: str | None

    @property
    def kind(self) -> str:
        return "topk" if self.k is not None else "jumprelu"


class _Cfg:
    """Typed access to a cfg.json dict; every refusal names the file, key and value."""

    def __init__(self, cfg: Mapping[str, Any], where: str) -> None:
        self.cfg, self.where = cfg, where
        meta = cfg.get("metadata")
        if meta is not None and not isinstance(meta, Mapping):
            self.refuse("metadata", meta, "expected a JSON object")
        self.meta: Mapping[str, Any] = meta or {}

    def refuse(self, key: str, value: Any, why: str) -> NoReturn:
        raise SAEFormatError(f"{self.where}: {key}={value!r}: {why}")

    def typed(self, key: str, value: Any, types: tuple[type, ...]) -> Any:
        if value is not None and (
            not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        ):
            self.refuse(key, value, f"expected {' or '.join(t.__name__ for t in types)}")
        return value

    def get(self, key: str, types: tuple[type, ...], default: Any = None) -> Any:
        return self.typed(key, self.cfg.get(key, default), types)

    def one(self, keys: tuple[str, ...], types: tuple[type, ...]) -> Any:
        """The value that several keys (renamed across versions, or under ``metadata``)
        agree on; None when none is given."""
        found: dict[str, Any] = {}
        for key in keys:
            for name, source in ((key, self.cfg), (f"metadata.{key}", self.meta)):
                if source.get(key) is not None:
                    found[name] = self.typed(name, source[key], types)
        if len({repr(v) for v in found.values()}) > 1:
            said = ", ".join(f"{k}={v!r}" for k, v in found.items())
            raise SAEFormatError(f"{self.where}: these keys disagree: {said}")
        return next(iter(found.values()), None)


def read_saelens_config(cfg: Mapping[str, Any], where: str) -> SAELensConfig:
    """Normalise an SAELens ``cfg.json`` dict, refusing what cannot be read exactly."""
    if not isinstance(cfg, Mapping):
        raise SAEFormatError(f"{where}: expected a JSON object, got {type(cfg).__name__}")
    c = _Cfg(cfg, where)
    unknown = sorted(set(cfg) - MATH_KEYS - BOOKKEEPING_KEYS)
    if unknown:
        raise SAEFormatError(
            f"{where}: unknown key(s) {', '.join(f'{k}={cfg[k]!r}' for k in unknown)}; "
            "mechtune cannot tell whether they change the SAE's math"
        )
    dims = {}
    for key in ("d_in", "d_sae"):
        if key not in cfg:
            raise SAEFormatError(f"{where}: missing key {key!r}")
        dims[key] = c.get(key, (int,))
        if dims[key] is None or dims[key] < 1:
            c.refuse(key, cfg[key], "expected a positive int")
    _check_input_transforms(c)
    architecture = c.get("architecture", (str,), "standard")
    k = _topk(c, architecture, dims["d_sae"])
    rescale = c.get("rescale_acts_by_decoder_norm", (bool,), False)
    if rescale and k is None:
        c.refuse("rescale_acts_by_decoder_norm", rescale, "only TopK SAEs rescale by it")
    dtype = cfg.get("dtype")
    hook = c.one(("hook_name", "hook_point"), (str,))
    return SAELensConfig(
        architecture=architecture,
        d_in=dims["d_in"],
        d_sae=dims["d_sae"],
        k=k,
        apply_b_dec_to_input=c.get("apply_b_dec_to_input", (bool,), True),
        finetuning_scaling_factor=c.get("finetuning_scaling_factor", (bool,)),
        rescale_acts_by_decoder_norm=bool(rescale),
        dtype=None if dtype is None else parse_dtype(dtype, f"{where}: key 'dtype'"),
        hook=hook,
        layer=_site(c, hook),
        model=c.one(("model_name",), (str,)),
    )


def _check_input_transforms(c: _Cfg) -> None:
    """Refuse the input normalisations, reshapes and noise mechtune does not compute."""
    normalize = c.cfg.get("normalize_activations")
    if normalize is True:  # SAELens <= 2 wrote a bool; true became expected_average_only_in
        c.refuse("normalize_activations", True, _NORMALIZE_REFUSED["expected_average_only_in"])
    if isinstance(normalize, str) and normalize in _NORMALIZE_REFUSED:
        c.refuse("normalize_activations", normalize, _NORMALIZE_REFUSED[normalize])
    if not (normalize is None or normalize is False or normalize == "none"):
        c.refuse("normalize_activations", normalize, "unknown normalisation")
    reshape = c.get("reshape_activations", (str,))
    if reshape not in (None, "none", "hook_z"):
        c.refuse("reshape_activations", reshape, "unknown; mechtune reads 'none' and 'hook_z'")
    noise = c.get("noise_scale", (int, float))
    if noise:
        c.refuse("noise_scale", noise, "SAELens <= 2 added this noise to every encoding")


def _topk(c: _Cfg, architecture: str, d_sae: int) -> int | None:
    """k for a TopK SAE, None for a ReLU/JumpReLU/gated one; refuses other architectures
    and activations, and contradictions between them."""
    if architecture in _REFUSED_ARCHITECTURES:
        why = _REFUSED_ARCHITECTURES[architecture]
        c.refuse("architecture", architecture, f"{why}; mechtune reads SAEs only")
    if architecture not in ARCHITECTURES:
        c.refuse("architecture", architecture, f"unknown; mechtune reads {list(ARCHITECTURES)}")
    activation = c.one(("activation_fn_str", "activation_fn"), (str,))
    if activation is None:
        activation = "topk" if architecture == "topk" else "relu"
    if activation not in ("relu", "topk"):
        why = "f = tanh(relu(pre)) is not " if activation == "tanh-relu" else "not "
        c.refuse("activation_fn_str", activation, why + "an activation mechtune's SAE computes")
    allowed = ("standard", "topk") if activation == "topk" else ("standard", "jumprelu", "gated")
    if architecture not in allowed:
        raise SAEFormatError(
            f"{c.where}: architecture={architecture!r} contradicts activation "
            f"{activation!r}; which one is meant?"
        )
    kwargs = c.get("activation_fn_kwargs", (dict,)) or {}
    extra = sorted(set(kwargs) - ({"k"} if activation == "topk" else set()))
    if extra:
        c.refuse("activation_fn_kwargs", kwargs, f"key(s) {extra} mean nothing to {activation!r}")
    if activation != "topk":
        if c.cfg.get("k") is not None:
            c.refuse("k", c.cfg["k"], f"k given for a non-TopK SAE (architecture {architecture!r})")
        return None
    pairs = (("activation_fn_kwargs.k", kwargs.get("k")), ("k", c.cfg.get("k")))
    given = {name: value for name, value in pairs if value is not None}
    if len({repr(v) for v in given.values()}) > 1:
        raise SAEFormatError(f"{c.where}: two different TopK k: {given}")
    if not given:
        raise SAEFormatError(f"{c.where}: a TopK SAE without k (key 'k' or activation_fn_kwargs.k)")
    name, k = next(iter(given.items()))
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= d_sae:
        c.refuse(name, k, f"expected an int in [1, d_sae={d_sae}]")
    return k


def _site(c: _Cfg, hook: str | None) -> int | None:
    """mechtune's layer from the hook name and hook_layer, which must agree."""
    head = c.one(("hook_head_index", "hook_point_head_index"), (int,))
    if head is not None:
        c.refuse("hook_head_index", head, "an SAE of one attention head; mechtune reads blocks")
    out = c.one(("hook_name_out",), (str,))
    if out is not None and out != hook:
        c.refuse("hook_name_out", out, "a transcoder writes to another site; mechtune reads SAEs")
    head_out = c.one(("hook_head_index_out",), (int,))
    if head_out is not None:
        c.refuse("hook_head_index_out", head_out, "a transcoder's; mechtune reads SAEs")
    if c.cfg.get("d_out") is not None:
        c.refuse("d_out", c.cfg["d_out"], "a transcoder's output width; mechtune reads SAEs")
    hook_layer = c.one(("hook_layer", "hook_point_layer"), (int,))
    if hook_layer is not None and hook_layer < 0:
        c.refuse("hook_layer", hook_layer, "expected a non-negative int")
    block = hook_block_index(hook) if hook is not None else None
    if block is None:
        return hook_layer
    if hook_layer is not None and hook_layer != block:
        raise SAEFormatError(
            f"{c.where}: hook_layer={hook_layer} but the hook {hook!r} is in block {block}"
        )
    return block_output_layer(hook)  # type: ignore[arg-type]


def _weights(spec: SAELensConfig, file: Path) -> tuple[dict[str, torch.Tensor], Any]:
    """``(tensors by file key, scaling factor or None)`` after checking keys and shapes."""
    tensors, _ = read_safetensors(file)
    d_in, d_sae = spec.d_in, spec.d_sae
    shapes: dict[str, tuple[int, ...]] = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in)}
    shapes["b_dec"] = (d_in,)
    extra = {"gated": ("b_gate", "b_mag", "r_mag"), "jumprelu": ("threshold",)}
    shapes.update({key: (d_sae,) for key in extra.get(spec.architecture, ())})
    if spec.architecture != "gated":
        shapes["b_enc"] = (d_sae,)
    scales = [key for key in ("scaling_factor", "finetuning_scaling_factor") if key in tensors]
    if len(scales) > 1:
        raise SAEFormatError(f"{file}: both {scales}; which scaling factor is meant?")
    check_tensors(tensors, {**shapes, **{key: (d_sae,) for key in scales}}, file)
    scale = tensors[scales[0]] if scales else None
    flag = spec.finetuning_scaling_factor
    if flag and scale is None:
        raise SAEFormatError(
            f"{file}: cfg.json says finetuning_scaling_factor=true but there is no "
            "'finetuning_scaling_factor' or 'scaling_factor' key"
        )
    if flag is False and scale is not None and not bool((scale == 1).all()):
        raise SAEFormatError(
            f"{file}: key {scales[0]!r} holds values other than 1 but cfg.json says "
            "finetuning_scaling_factor=false; which is meant?"
        )
    return tensors, scale


def load_saelens(
    folder: str | Path,
    *,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> SAE:
    """An SAELens folder (``cfg.json`` + ``sae_weights.safetensors``) -> SAE with the same
    features and reconstruction as SAELens computes (see the module docstring).

    ``dtype`` None loads in the cfg's ``dtype`` (else the tensors'); folds are computed in
    float64 and rounded once. Raises SAEFormatError naming the key and value.
    """
    root = Path(folder)
    cfg_file, weights_file = root / SAELENS_CONFIG, root / SAELENS_WEIGHTS
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: no such file")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise SAEFormatError(f"{cfg_file}: not valid JSON ({exc})") from None
    spec = read_saelens_config(cfg, str(cfg_file))
    tensors, scale = _weights(spec, weights_file)
    target = storage_dtype(tensors, dtype, weights_file, written=spec.dtype)
    t = {key: value.to(torch.float64) for key, value in tensors.items()}
    w_enc, w_dec, b_dec = t["W_enc"], t["W_dec"], t["b_dec"]
    centre = (
        b_dec @ w_enc if spec.apply_b_dec_to_input else torch.zeros(spec.d_sae, dtype=torch.float64)
    )
    if spec.architecture == "gated":
        # gate: (x - b_dec) W + b_gate > 0; magnitude: relu((x - b_dec) W e^r + b_mag)
        gain = t["r_mag"].exp()
        b_enc = t["b_mag"] - centre * gain
        threshold = b_enc - gain * (t["b_gate"] - centre)
        w_enc = w_enc * gain
    else:
        b_enc = t["b_enc"] - centre
        threshold = t.get("threshold", torch.zeros(spec.d_sae, dtype=torch.float64))
    if spec.rescale_acts_by_decoder_norm:
        norm = w_dec.norm(dim=1)
        if not bool((norm > 0).all()):
            raise SAEFormatError(f"{weights_file}: a zero W_dec row cannot be rescaled by its norm")
        w_enc, b_enc, w_dec = w_enc * norm, b_enc * norm, w_dec / norm[:, None]
    if scale is not None:
        w_dec = scale.to(torch.float64)[:, None] * w_dec
    config = SAEConfig(
        spec.d_in,
        spec.d_sae,
        spec.kind,
        k=spec.k,
        layer=spec.layer,
        model=spec.model,
        hook=spec.hook,
    )
    ours = {"w_enc": w_enc, "w_dec": w_dec, "b_enc": b_enc, "b_dec": b_dec, "threshold": threshold}
    return build_sae(config, ours, target, device)


def save_saelens(sae: SAE, folder: str | Path) -> Path:
    """Write an SAE as an SAELens 6 style folder: ``cfg.json`` + ``sae_weights.safetensors``
    (each atomically), which :func:`load_saelens` reads back unchanged. Returns the folder."""
    root = Path(folder)
    config = sae.config
    block = hook_block_index(config.hook) if config.hook is not None else None
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
            # SAELens's hook_layer is the block the hook lies in (not always our layer)
            "hook_layer": block if block is not None else config.layer,
        },
    }
    if config.k is not None:
        cfg["k"] = config.k
    names = {**_NAMES, "threshold": "threshold"}
    tensors = {names[k]: v.contiguous().cpu() for k, v in sae.tensors().items()}
    with atomic_path(root / SAELENS_WEIGHTS) as tmp:
        save_file(tensors, str(tmp))
    write_json(root / SAELENS_CONFIG, cfg, sort_keys=True)
    return root


__all__ = [
    "ARCHITECTURES",
    "BOOKKEEPING_KEYS",
    "MATH_KEYS",
    "SAELensConfig",
    "load_saelens",
    "read_saelens_config",
    "save_saelens",
]
