"""Where does phrasing sensitivity live? SAE analysis of a yes/no VLM (PSF-Med §SAE).

Given paraphrase pairs (an original question and one paraphrase, same image) and one
sparse autoencoder per analysed layer:

1. **Flip-prediction AUC by layer.** Per pair, the SAE feature change f(paraphrase) −
   f(original) (features averaged over the model's readout positions) feeds an L2
   logistic regression, cross-validated by question, that predicts whether the answer
   flips. The layer where flips are most predictable is where the sensitivity is encoded.
   The classifier, its AUC and the shuffled-label control for that AUC (``shuffles``
   relabellings by question set; a permutation p per layer and for the peak) are
   :mod:`mechtune.interp.flip_auc`'s.
2. **Feature attribution** at the peak layer: features whose change correlates with the
   margin shift m(paraphrase) − m(original).
3. **Causal patch** on flip cases: remove one feature's contribution, x − f_k·W_dec[k],
   from the paraphrase's residual at the readout positions and report the share of the
   margin gap recovered, (m_patched − m_para) / (m_orig − m_para), for each of the first
   ``patch_features`` attributed features; the best one is the causal candidate. The
   ratio is aggregated over pairs as causal tracing's CTE is (``interp/ratios.py``: gap-
   relative exclusion, ratio of sums, median and top-5% share beside it).
4. **Clamping** at inference: set that feature k to a fixed value c on every question,
   x + (c − f_k)·W_dec[k], with c its mean on original-register questions; the caller
   measures flip rate and accuracy with the hook on.

The output is the chosen layer range (the AUC peak ± ``half_width``, shifted inward at the
ends of the stack) with this evidence.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from mechtune.data.schema import ImageQuestion
from mechtune.errors import ConfigError
from mechtune.interp.flip_auc import (
    ShuffledAUC,
    auc_interval,
    cross_validated_scores,
    roc_auc,
    shuffled_label_aucs,
)
from mechtune.interp.ratios import MIN_GAP_SHARE, check_min_gap_share, summarise_ratios
from mechtune.models.yes_no import (
    YesNoVLM,
    capture_block_outputs,
    edit_block_output,
    take_rows,
)
from mechtune.progress import Tracker, stage


class Dictionary(Protocol):
    """What the analysis needs from an SAE: encoding and the decoder directions."""

    w_dec: torch.Tensor  # [d_sae, d_in]

    def encode(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass(frozen=True)
class PairBatch:
    """Paraphrase pairs: image rows, texts, answers, and the set each pair came from."""

    rows: list[int]
    originals: list[str]
    paraphrases: list[str]
    answers: np.ndarray  # [P] bool
    groups: np.ndarray  # [P] set index, for grouped cross-validation

    def __len__(self) -> int:
        return len(self.rows)


def paraphrase_pairs(questions: Sequence[ImageQuestion]) -> PairBatch:
    """Every (original, paraphrase) pair of the questions, read with each one's image."""
    rows, originals, paraphrases, answers, groups = [], [], [], [], []
    for g, q in enumerate(questions):
        for p in q.record.paraphrases:
            rows.append(q.image)
            originals.append(q.record.question)
            paraphrases.append(p)
            answers.append(q.record.answer)
            groups.append(g)
    return PairBatch(rows, originals, paraphrases, np.asarray(answers), np.asarray(groups))


@torch.no_grad()
def margins(
    vlm: YesNoVLM,
    images: Any,
    rows: Sequence[int],
    texts: Sequence[str],
    batch: int = 64,
    progress: Callable[[int], None] | None = None,
) -> np.ndarray:
    """``[N]`` margins of (images[rows[i]], texts[i]), ``batch`` at a time;
    ``progress(n)`` after each batch of n texts."""
    out = []
    for i in range(0, len(texts), batch):
        chunk = texts[i : i + batch]
        out.append(vlm.margin(take_rows(images, rows[i : i + batch]), chunk).float().cpu())
        if progress is not None:
            progress(len(chunk))
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def _readout_means(sae: Dictionary, state: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``[B, d_sae]``: features of ``state [B, T, d]`` averaged over the positions of
    ``mask [B, T]`` (0 where a row has none). Only those positions are encoded: a decoder
    reads one position of hundreds, and ``[B, T, d_sae]`` features of a 16k-wide SAE would
    be the largest tensor of the batch."""
    mask = mask.to(state.device)
    features = sae.encode(state[mask].float())  # [n_readout, d_sae]
    example = mask.nonzero()[:, 0]
    sums = features.new_zeros(state.shape[0], features.shape[-1]).index_add_(0, example, features)
    return sums / mask.sum(1, keepdim=True).clamp(min=1).to(sums.dtype)


@torch.no_grad()
def readout_features(
    vlm: YesNoVLM,
    images: Any,
    rows: Sequence[int],
    texts: Sequence[str],
    saes: Mapping[int, Dictionary],
    batch: int = 64,
    progress: Callable[[int], None] | None = None,
) -> dict[int, torch.Tensor]:
    """``{layer: [N, d_sae]}``: SAE features averaged over each question's readout
    positions (features are encoded per token, then averaged). Works ``batch`` texts at
    a time, encoding only the readout positions; what is kept is one row per text.
    ``progress(n)`` after each batch of n texts."""
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in saes}
    for i in range(0, len(texts), batch):
        imgs, qs = take_rows(images, rows[i : i + batch]), list(texts[i : i + batch])
        mask = vlm.readout_positions(imgs, qs)
        with capture_block_outputs(vlm, list(saes)) as states:
            vlm.margin(imgs, qs)
        for layer, sae in saes.items():
            out[layer].append(_readout_means(sae, states[layer], mask).cpu())
        if progress is not None:
            progress(len(qs))
    return {layer: torch.cat(parts) for layer, parts in out.items()}


@torch.no_grad()
def token_states(
    vlm: YesNoVLM,
    images: Any,
    rows: Sequence[int],
    texts: Sequence[str],
    layers: Sequence[int],
    batch: int = 64,
) -> dict[int, torch.Tensor]:
    """``{layer: [n_tokens, d]}``: residual states at every readout position, all held in
    memory at once; :func:`mechtune.interp.sae_stream.stream_and_train` writes them to a
    disk store chunk by chunk instead, for SAE training on a large model."""
    out: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for i in range(0, len(texts), batch):
        imgs, qs = take_rows(images, rows[i : i + batch]), list(texts[i : i + batch])
        mask = vlm.readout_positions(imgs, qs)
        with capture_block_outputs(vlm, layers) as states:
            vlm.margin(imgs, qs)
        for layer in layers:
            state = states[layer].float()
            out[layer].append(state[mask.to(state.device)].cpu())
    return {layer: torch.cat(parts) for layer, parts in out.items()}


# -- the analysis --------------------------------------------------------------------------


@dataclass(frozen=True)
class AnalysisConfig:
    """Settings of :func:`analyse`; each is checked at construction."""

    folds: int = 5  # cross-validation folds of the flip classifier, split by question set
    l2: float = 1e-2  # L2 penalty of the logistic regression (on standardised features)
    top_features: int = 10  # features kept by the attribution
    min_active_share: float = 0.01  # a feature must be active on this share of pairs
    half_width: int = 1  # chosen layers: the AUC peak ± this
    patch_features: int = 5  # top attributed features tried by the causal patch
    bootstrap: int = 1000  # resamples of question sets for the AUC's 95% interval
    # flip-label shuffles of the shuffled-label control for the AUC (mechtune.interp.
    # flip_auc: a permutation test by question set); 0: off
    shuffles: int = 0
    seed: int = 0  # seed of the resamples and of the shuffles
    # the causal patch's recovery ratio leaves out flip pairs whose margin gap is below
    # this share of the median gap (mechtune.interp.ratios, the rule tracing uses)
    min_gap_share: float = MIN_GAP_SHARE

    def __post_init__(self) -> None:
        minimum = {"folds": 2, "top_features": 1, "half_width": 0, "patch_features": 1}
        minimum |= {"bootstrap": 1, "shuffles": 0, "seed": 0}
        for name, least in minimum.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ConfigError(f"{name} must be an int >= {least}, got {value!r}")
        if not (isinstance(self.l2, int | float) and 0 <= self.l2 < float("inf")):
            raise ConfigError(f"l2 must be a finite number >= 0, got {self.l2!r}")
        if not (isinstance(self.min_active_share, int | float) and 0 <= self.min_active_share <= 1):
            raise ConfigError(f"min_active_share must be in [0, 1], got {self.min_active_share!r}")
        check_min_gap_share(self.min_gap_share)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SAEAnalysis:
    """Evidence for a layer range; every field is JSON-serialisable via ``to_dict``."""

    layers: list[int]
    auc_by_layer: dict[int, float]
    auc_ci_by_layer: dict[int, tuple[float, float]]
    peak_layer: int
    chosen_layers: list[int]
    pairs: int
    flip_pairs: int
    top_features: list[dict[str, float]]
    patch: dict[str, float] = field(default_factory=dict)  # the best of ``patches``
    patches: list[dict[str, float]] = field(default_factory=list)
    clamp_value: float = 0.0
    # the shuffled-label control (AnalysisConfig.shuffles > 0; mechtune.interp.flip_auc):
    # per layer, the AUCs under shuffled flip labels and the real AUC's permutation p; and
    # the peak's p against the best layer of each shuffle
    auc_shuffled_by_layer: dict[int, ShuffledAUC] = field(default_factory=dict)
    peak_auc_p_value: float | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["auc_by_layer"] = {str(k): v for k, v in self.auc_by_layer.items()}
        d["auc_ci_by_layer"] = {str(k): list(v) for k, v in self.auc_ci_by_layer.items()}
        d["auc_shuffled_by_layer"] = {
            str(k): v.to_dict() for k, v in self.auc_shuffled_by_layer.items()
        }
        return d


def analyse(
    vlm: YesNoVLM,
    images: Any,
    pairs: PairBatch,
    saes: Mapping[int, Dictionary],
    config: AnalysisConfig | None = None,
    track: Tracker | None = None,
) -> SAEAnalysis:
    """Steps 1-3 of the module docstring on ``pairs``; the clamp value for step 4; with
    ``config.shuffles`` > 0, the shuffled-label control of each layer's AUC
    (:func:`mechtune.interp.flip_auc.shuffled_label_aucs`). ``track`` gets a stage
    counting the texts read for margins and features (each pair's original and
    paraphrase, twice), then one counting the layers fitted on shuffled labels, then one
    counting the texts of the patches."""
    config = config or AnalysisConfig()
    layers = sorted(saes)
    rows = pairs.rows
    with stage(track, "SAE analysis: margins and features", 4 * len(pairs)) as advance:
        m_orig = margins(vlm, images, rows, pairs.originals, progress=advance)
        m_para = margins(vlm, images, rows, pairs.paraphrases, progress=advance)
        f_orig = readout_features(vlm, images, rows, pairs.originals, saes, progress=advance)
        f_para = readout_features(vlm, images, rows, pairs.paraphrases, saes, progress=advance)
    flips = (m_orig > 0) != (m_para > 0)
    auc, ci = {}, {}
    deltas = {layer: f_para[layer] - f_orig[layer] for layer in layers}
    for layer in layers:
        scores = cross_validated_scores(deltas[layer], flips, pairs.groups, config.folds, config.l2)
        auc[layer] = roc_auc(scores, flips)
        ci[layer] = auc_interval(scores, flips, pairs.groups, config.bootstrap, config.seed)
    shuffled: dict[int, ShuffledAUC] = {}
    peak_p = None
    if config.shuffles:
        total = config.shuffles * len(layers)
        with stage(track, "SAE analysis: AUC on shuffled flip labels", total) as advance:
            shuffled, peak_p = shuffled_label_aucs(
                deltas,
                flips,
                pairs.groups,
                auc,
                config.shuffles,
                config.seed,
                folds=config.folds,
                l2=config.l2,
                progress=advance,
            )
    finite = {k: v for k, v in auc.items() if np.isfinite(v)}
    peak = max(finite, key=lambda k: finite[k]) if finite else layers[len(layers) // 2]
    chosen = layer_window(peak, config.half_width, len(vlm.layers))
    peak_delta = (f_para[peak] - f_orig[peak]).numpy()
    shift = m_para - m_orig
    top = attribute_features(peak_delta, shift, f_orig[peak].numpy(), config)
    analysis = SAEAnalysis(
        layers=layers,
        auc_by_layer=auc,
        auc_ci_by_layer=ci,
        peak_layer=peak,
        chosen_layers=chosen,
        pairs=len(pairs),
        flip_pairs=int(flips.sum()),
        top_features=top,
        auc_shuffled_by_layer=shuffled,
        peak_auc_p_value=peak_p,
    )
    if top:
        # Patch each of the first few attributed features on the flip pairs; the one that
        # recovers the most margin is the causal candidate, and the one clamped.
        patched = top[: config.patch_features]
        total = len(patched) * int(flips.sum())
        with stage(track, f"SAE analysis: patch features at layer {peak}", total) as advance:
            analysis.patches = [
                patch_recovery(
                    vlm,
                    images,
                    pairs,
                    flips,
                    m_orig,
                    m_para,
                    saes[peak],
                    peak,
                    int(f["feature"]),
                    min_gap_share=config.min_gap_share,
                    progress=advance,
                )
                for f in patched
            ]
        analysis.patch = max(analysis.patches, key=lambda p: p.get("recovered_mean", 0.0))
        analysis.clamp_value = float(f_orig[peak][:, int(analysis.patch["feature"])].mean())
    return analysis


def layer_window(peak: int, half_width: int, n_layers: int) -> list[int]:
    """``2 * half_width + 1`` consecutive layers centred on ``peak``, shifted inward at
    the ends so the width (and a LoRA budget over it) does not depend on where the peak
    is; all layers when there are fewer."""
    width = min(2 * half_width + 1, n_layers)
    start = min(max(peak - half_width, 0), n_layers - width)
    return list(range(start, start + width))


def attribute_features(
    delta: np.ndarray, shift: np.ndarray, original: np.ndarray, config: AnalysisConfig
) -> list[dict[str, float]]:
    """Features whose change ``delta [P, F]`` correlates with the margin shift ``[P]``.

    Only features active (non-zero) on at least ``min_active_share`` of the pairs, in the
    original or the paraphrase, are ranked, by |Pearson r|.
    """
    active = ((np.abs(delta) > 0) | (original > 0)).mean(0) >= config.min_active_share
    d = delta - delta.mean(0)
    s = shift - shift.mean()
    denom = np.sqrt((d**2).sum(0) * (s**2).sum()) + 1e-12
    r = (d * s[:, None]).sum(0) / denom
    r[~active] = 0.0
    order = np.argsort(-np.abs(r), kind="stable")[: config.top_features]
    return [
        {
            "feature": int(k),
            "correlation": round(float(r[k]), 4),
            "mean_change": round(float(delta[:, k].mean()), 4),
            "active_share": round(float((np.abs(delta[:, k]) > 0).mean()), 4),
        }
        for k in order
        if r[k] != 0.0
    ]


@contextlib.contextmanager
def feature_edit(
    vlm: YesNoVLM,
    sae: Dictionary,
    layer: int,
    feature: int,
    value: float | None,
    mask: torch.Tensor | None = None,
) -> Iterator[None]:
    """While open, layer ``layer``'s output becomes x + (c − f_k(x))·W_dec[k] at the readout
    positions ``mask [B, T]`` (all positions when None): ``value=None`` means c = 0, the
    paper's patch x − f_k·W_dec[k]; a number clamps the feature to it."""
    direction = sae.w_dec[feature].detach()

    def edit(state: torch.Tensor) -> torch.Tensor:
        # With a mask only its positions are encoded (and changed).
        where = None if mask is None else mask.to(state.device)
        x = state if where is None else state[where]
        f = sae.encode(x.float())[..., feature]
        target = torch.zeros_like(f) if value is None else torch.full_like(f, value)
        change = ((target - f).unsqueeze(-1) * direction.to(state.device)).to(state.dtype)
        if where is None:
            return state + change
        edited = state.clone()
        edited[where] = x + change
        return edited

    with edit_block_output(vlm.layers[layer], edit):
        yield


@torch.no_grad()
def patch_recovery(
    vlm: YesNoVLM,
    images: Any,
    pairs: PairBatch,
    flips: np.ndarray,
    m_orig: np.ndarray,
    m_para: np.ndarray,
    sae: Dictionary,
    layer: int,
    feature: int,
    batch: int = 64,
    *,
    min_gap_share: float = MIN_GAP_SHARE,
    progress: Callable[[int], None] | None = None,
) -> dict[str, float]:
    """Share of the margin gap recovered on flip pairs by removing one feature from the
    paraphrase's readout positions (``progress(n)`` after each batch of n pairs).

    Per flip pair, recovery = (m_patched - m_para) / (m_orig - m_para), a ratio over the
    pair's own margin gap, aggregated by the rule of :mod:`mechtune.interp.ratios`: pairs
    whose |m_orig - m_para| is below ``min_gap_share`` x the median are excluded (counted
    in ``excluded_small_gap``); ``recovered_mean`` is the ratio of sums (the gap-weighted
    mean); ``recovered_median`` the median over kept pairs; ``recovered_top5_share`` the
    share of ``recovered_mean`` carried by the top 5% of pairs. ``answers_restored`` is
    over all flip pairs. ``m_orig``, ``m_para``: ``[P]`` margins; ``flips``: ``[P]`` bool.
    """
    idx = np.flatnonzero(flips)
    if len(idx) == 0:
        return {"feature": feature, "flip_pairs": 0}
    patched = []
    for i in range(0, len(idx), batch):
        part = idx[i : i + batch]
        rows = [pairs.rows[j] for j in part]
        imgs, qs = take_rows(images, rows), [pairs.paraphrases[j] for j in part]
        mask = vlm.readout_positions(imgs, qs)
        with feature_edit(vlm, sae, layer, feature, None, mask):
            patched.append(vlm.margin(imgs, qs).float().cpu())
        if progress is not None:
            progress(len(qs))
    m_patch = torch.cat(patched).numpy().astype(np.float64)
    gap = np.asarray(m_orig, dtype=np.float64)[idx] - np.asarray(m_para, dtype=np.float64)[idx]
    summary = summarise_ratios(
        m_patch - np.asarray(m_para, dtype=np.float64)[idx], gap, min_gap_share
    )
    return {
        "feature": feature,
        "layer": layer,
        "flip_pairs": len(idx),
        **summary.counts,
        "recovered_mean": round(float(summary.weighted), 4),
        "recovered_median": round(float(summary.median), 4),
        "recovered_top5_share": round(float(summary.top_share), 4),
        "answers_restored": round(float(((m_patch > 0) == (m_orig[idx] > 0)).mean()), 4),
    }


__all__ = [
    "AnalysisConfig",
    "Dictionary",
    "PairBatch",
    "SAEAnalysis",
    "analyse",
    "attribute_features",
    "cross_validated_scores",
    "feature_edit",
    "layer_window",
    "margins",
    "paraphrase_pairs",
    "patch_recovery",
    "readout_features",
    "roc_auc",
    "token_states",
]
