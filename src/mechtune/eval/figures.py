"""Figures: contact sheets of phantom radiographs and zero-shot blind-spot charts."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mechtune.data.io import atomic_path
from mechtune.data.schema import Finding, Study

ABBREVIATION = {
    "atelectasis": "atel",
    "cardiomegaly": "CM",
    "consolidation": "consol",
    "edema": "edema",
    "enlarged_cardiomediastinum": "wide med",
    "fracture": "rib fx",
    "lung_lesion": "nodule",
    "lung_opacity": "opac",
    "pleural_effusion": "eff",
    "pleural_other": "pl thick",
    "pneumonia": "pna",
    "pneumothorax": "PTX",
    "support_devices": "lines",
}
SIDE = {"left": "L", "right": "R", "bilateral": "bil"}
SIZE = {"small": "sm", "moderate": "mod", "large": "lg", "mild": "mild", "severe": "sev"}
ZONE = {"upper": "UZ", "middle": "MZ", "lower": "LZ", "apical": "apex", "basal": "base"}


def finding_label(f: Finding) -> str:
    """``Finding(pleural_effusion, left, small)`` -> ``"L eff sm"``."""
    parts = [
        SIDE.get(f.laterality or "", ""),
        ZONE.get(f.zone or "", ""),
        ABBREVIATION.get(f.condition, f.condition),
        SIZE.get(f.severity or "", ""),
    ]
    return " ".join(p for p in parts if p)


def study_label(study: Study) -> str:
    present = [finding_label(f) for f in study.present() if f.condition != "no_finding"]
    return ", ".join(present) if present else "normal"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save_png(plt: Any, fig: Any, path: str | Path, *, dpi: int) -> Path:
    """Write a figure atomically as PNG and close it."""
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return out


def contact_sheet(
    images: np.ndarray,
    studies: Sequence[Study],
    path: str | Path,
    *,
    columns: int = 8,
    title: str | None = None,
) -> Path:
    """A labelled grid of radiographs, written atomically as PNG.

    Labels use the patient's side: "L" findings appear on the image's right.
    """
    plt = _pyplot()
    n = len(studies)
    rows = (n + columns - 1) // columns
    fig, axes = plt.subplots(rows, columns, figsize=(2.1 * columns, 2.35 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, study in zip(axes.flat, images, studies, strict=False):
        ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        label = study_label(study)
        ax.set_title(label if len(label) < 34 else label[:31] + "...", fontsize=7)
        ax.text(
            0.98,
            0.02,
            "L",
            color="yellow",
            fontsize=7,
            ha="right",
            va="bottom",
            transform=ax.transAxes,
        )
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.985 if title else 1))
    return _save_png(plt, fig, path, dpi=90)


def blind_spot_chart(claims: dict[str, Any], path: str | Path) -> Path:
    """Bar chart: accuracy by polarity and flipped attribute, with 95% CIs. A slice the
    data cannot support (None, e.g. contralateral without sides) is left out, and named
    under the axis as n/a."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, (key, title) in zip(
        axes,
        (
            ("accuracy_by_polarity", "Claim accuracy by polarity of the correct claim"),
            ("pairwise_by_attribute", "Pairwise accuracy by flipped attribute"),
        ),
        strict=True,
    ):
        every = list(dict.fromkeys(n for r in claims.values() for n in r[key]))
        names = [n for n in every if all(r[key].get(n) is not None for r in claims.values())]
        missing = [n for n in every if n not in names]
        width = 0.38
        for j, (family, result) in enumerate(claims.items()):
            est = [result[key][n] for n in names]
            value = np.array([e.value for e in est])
            err = np.array([[e.value - e.low for e in est], [e.high - e.value for e in est]])
            x = np.arange(len(names)) + (j - 0.5) * width
            # yerr as lists: matplotlib 3.10 reads a (2, 1) array element as an array
            # (NumPy's ndim > 0 scalar DeprecationWarning) when a chart has one bar
            ax.bar(x, value, width, yerr=err.tolist(), capsize=3, label=family.replace("_", " "))
        ax.set_xticks(np.arange(len(names)), names)
        ax.set_ylim(0, 1)
        if key == "pairwise_by_attribute":
            ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="chance")
        ax.set_title(title, fontsize=9)
        if missing:
            ax.set_xlabel(f"n/a (not in the data): {', '.join(missing)}", fontsize=7)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save_png(plt, fig, path, dpi=100)


def cte_heatmap(
    cte: np.ndarray,
    roles: Sequence[str],
    path: str | Path,
    *,
    title: str = "Causal tracing effect by layer and token role",
) -> Path:
    """Heatmap of CTE ``[L+1, R]`` (layer 0 = embedding output); NaN cells left blank."""
    plt = _pyplot()
    data = np.asarray(cte, dtype=float).T  # roles x layers
    fig, ax = plt.subplots(figsize=(1.0 + 0.7 * data.shape[1], 0.6 + 0.45 * data.shape[0]))
    finite = data[np.isfinite(data)]
    vmax = max(abs(finite).max(), 1e-6) if finite.size else 1.0
    im = ax.imshow(np.ma.masked_invalid(data), cmap="RdBu_r", vmin=-vmax, vmax=vmax, aspect="auto")
    for (r, c), value in np.ndenumerate(data):
        if np.isfinite(value):
            ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=7)
    ax.set_yticks(range(len(roles)), [r.replace("_", " ") for r in roles])
    ax.set_xticks(range(data.shape[1]), [str(i) for i in range(data.shape[1])])
    ax.set_xlabel("layer (0 = embedding output)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8)
    fig.tight_layout()
    return _save_png(plt, fig, path, dpi=110)


def alpha_bars(
    cte_layer: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    alpha: np.ndarray,
    path: str | Path,
    alpha_title: str = "alpha_l = min-max normalised CTE_l",
) -> Path:
    """Per-layer CTE ``[L+1]`` with its 95% interval ``low``/``high`` ``[L+1]`` (left), and
    the NAST weights alpha_l ``[L+1]`` (right, titled ``alpha_title``: say how alpha was
    built). Writes and returns the PNG ``path``."""
    plt = _pyplot()
    x = np.arange(len(cte_layer))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    err = np.vstack([cte_layer - low, high - cte_layer])
    axes[0].bar(x, cte_layer, yerr=err.tolist(), capsize=3, color="tab:blue")
    axes[0].set_title("per-layer CTE (mean over roles, 95% CI over pairs)", fontsize=9)
    axes[1].bar(x, alpha, color="tab:orange")
    axes[1].set_title(alpha_title, fontsize=9)
    for ax in axes:
        ax.set_xticks(x)
        ax.set_xlabel("layer (0 = embedding output)")
    fig.tight_layout()
    return _save_png(plt, fig, path, dpi=110)


def update_share_chart(
    norms_by_method: dict[str, dict[int, float]],
    cte_by_block: Sequence[float],
    path: str | Path,
    cte_label: str = "CTE at block output",
) -> Path:
    """Per-block share of the total update for each method (bars; ``norms_by_method``:
    method -> block -> ‖ΔW‖), next to the per-block CTE ``cte_by_block`` ``[blocks]``
    (dashed line, named ``cte_label``). Writes and returns the PNG ``path``."""
    plt = _pyplot()
    blocks = np.arange(len(cte_by_block))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    width = 0.8 / max(1, len(norms_by_method))
    for j, (method, norms) in enumerate(norms_by_method.items()):
        total = sum(norms.values()) or 1.0
        share = [norms.get(int(b), 0.0) / total for b in blocks]
        ax.bar(blocks + (j - (len(norms_by_method) - 1) / 2) * width, share, width, label=method)
    ax2 = ax.twinx()
    ax2.plot(blocks, cte_by_block, "k.--", label=cte_label)
    ax.set_xlabel("text block")
    ax.set_ylabel("share of total update")
    ax2.set_ylabel(cte_label)
    ax.set_xticks(blocks)
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("Where the update lands", fontsize=9)
    fig.tight_layout()
    return _save_png(plt, fig, path, dpi=110)


def auc_by_layer_chart(
    auc: dict[int, float],
    ci: dict[int, tuple[float, float]],
    chosen: Sequence[int],
    path: str | Path,
    shuffled: dict[int, tuple[float | None, float | None]] | None = None,
) -> Path:
    """Flip-prediction AUC per layer with 95% CIs; the chosen range highlighted. An
    undefined AUC (None or NaN: no flip, or no non-flip, among the pairs) gets no bar and
    an "n/a" mark. ``shuffled``: per layer, the 95% range of the AUC on shuffled flip
    labels (:mod:`mechtune.interp.flip_auc`), drawn as a grey band per bar."""
    plt = _pyplot()
    layers = sorted(auc)

    def number(value: float | None) -> float:
        return float("nan") if value is None else float(value)

    values = np.array([number(auc[i]) for i in layers])
    low = np.array([number(ci[i][0]) for i in layers])
    high = np.array([number(ci[i][1]) for i in layers])
    defined = np.isfinite(values)
    colors = ["tab:orange" if i in chosen else "tab:blue" for i in layers]
    fig, ax = plt.subplots(figsize=(6, 3.2))
    err = np.nan_to_num(np.vstack([values - low, high - values]), nan=0.0)
    ax.bar(layers, np.where(defined, values, 0.0), yerr=err.tolist(), capsize=3, color=colors)
    for layer, ok in zip(layers, defined, strict=True):
        if not ok:
            ax.text(layer, 0.42, "n/a", ha="center", fontsize=8)
    if shuffled:
        for layer in layers:
            low_s, high_s = (number(v) for v in shuffled.get(layer, (None, None)))
            if np.isfinite(low_s) and np.isfinite(high_s):
                ax.fill_between(
                    [layer - 0.45, layer + 0.45], low_s, high_s, color="grey", alpha=0.35, lw=0
                )
        ax.plot([], [], color="grey", alpha=0.35, lw=6, label="shuffled flip labels, 95% range")
        ax.legend(fontsize=7, loc="upper left")
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylim(0.4 if not shuffled else 0.3, 1.0)
    ax.set_xticks(layers)
    ax.set_xlabel("language-model layer (block output)")
    ax.set_ylabel("flip-prediction AUC")
    title = "Where phrasing sensitivity is readable (orange: chosen range)"
    if not defined.any():
        title = "No flips among the analysis pairs: AUC undefined (orange: fallback range)"
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    return _save_png(plt, fig, path, dpi=110)


def flip_rate_chart(rows: dict[str, dict[str, float]], path: str | Path) -> Path:
    """Flip rate (held-out and in-distribution paraphrase families) per condition."""
    plt = _pyplot()
    names = list(rows)
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(1.5 + 1.1 * len(names), 3.4))
    for j, (key, label) in enumerate(
        (("heldout", "held-out families"), ("in_distribution", "train families"))
    ):
        ax.bar(x + (j - 0.5) * 0.38, [100 * rows[n][key] for n in names], 0.38, label=label)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("flip rate (%)")
    ax.legend(fontsize=7)
    ax.set_title("Paraphrase flip rate before and after", fontsize=9)
    fig.tight_layout()
    return _save_png(plt, fig, path, dpi=110)
