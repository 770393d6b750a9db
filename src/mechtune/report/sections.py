"""Readers that turn a run folder's files into report sections.

Each ``*_section`` reads one kind of output (what the command that wrote it documents)
and returns a :class:`~mechtune.report.model.Section`: a negation study
(``results.json`` with a trace and methods), a paraphrase study (``results.json`` with a
baseline and an SAE analysis), a negation or paraphrase evaluation (``eval.json``), a
training run (``train.json``) and data builds (``manifest.json``). Published numbers
(NAST, arXiv 2602.12498, Tables 1/3/4; PSF-Med, arXiv 2602.21428) sit beside ours as
"paper" rows where a table has a counterpart.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mechtune.data.io import dumps_json
from mechtune.report.figures import embed_png, training_curves
from mechtune.report.model import (
    Cell,
    Example,
    Figure,
    Section,
    Table,
    delta_cell,
    interval_text,
    number_cell,
    seeds_cell,
)

# figure file -> (kind of section it belongs to, title, caption)
FIGURES: dict[str, tuple[str, str, str]] = {
    "cte_heatmap.png": (
        "negation-study",
        "Causal tracing effect by layer and token role",
        "CTE(ℓ, role) = (S_corr − S^ℓ) / (S_corr − S_foil) (NAST, §3); layer 0 is the "
        "embedding output. Train-split pairs only.",
    ),
    "alpha.png": (
        "negation-study",
        "Per-layer CTE and NAST's weights α",
        "Left: CTE per layer with 95% intervals over pairs. Right: α_ℓ, the min-max "
        "normalised CTE that scales each block's update (α^β).",
    ),
    "update_share.png": (
        "negation-study",
        "Update share per layer",
        "Share of each method's total weight update per text block, beside the CTE at the "
        "block's output: NAST should put its update where the CTE is high.",
    ),
    "blind_spot.png": (
        "negation-eval",
        "The negation blind spot",
        "Claim accuracy by the polarity of the correct claim, and pairwise accuracy by the "
        "flipped attribute, with 95% intervals clustered by patient.",
    ),
    "zero_shot_blind_spot.png": (
        "negation-eval",
        "The negation blind spot (zero-shot)",
        "Claim accuracy by the polarity of the correct claim, and pairwise accuracy by the "
        "flipped attribute, with 95% intervals clustered by patient.",
    ),
    "flip_auc_by_layer.png": (
        "paraphrase-study",
        "Flip-AUC by layer",
        "How well SAE features at each layer predict that a paraphrase flips the answer "
        "(AUC, 95% interval); orange: the layers chosen for targeted LoRA.",
    ),
    "flip_rate.png": (
        "paraphrase-study",
        "Flip rate before and after",
        "Question-level flip rate (any paraphrase changes the answer) per condition, "
        "held-out and train paraphrase families.",
    ),
    "phantom_contact_sheet.png": (
        "data",
        "The phantom radiographs",
        "Procedural chest X-rays of the offline world, labelled with their findings.",
    ),
}

NAST_PAPER = {  # NAST (arXiv 2602.12498), Tables 1/3/4, in %
    "CLIP": {"R@1": 23.5, "R@5": 34.7, "claim acc": 24.6, "gap (pp)": 21.6},
    "NegCLIP": {"R@1": 36.2, "R@5": 52.4, "claim acc": 41.3, "gap (pp)": 12.8},
    "NegBench": {"R@1": 43.1, "R@5": 59.2, "claim acc": 48.7, "gap (pp)": 10.2},
    "uniform fine-tuning": {"top-3 share": 28.4, "top-5 share": 41.7},
    "NAST": {
        "R@1": 49.5,
        "R@5": 65.7,
        "claim acc": 55.6,
        "gap (pp)": 4.2,
        "top-3 share": 52.6,
        "top-5 share": 69.3,
    },
}
PSF_PAPER = {  # PSF-Med (arXiv 2602.21428), MedGemma-4B, MIMIC binary questions, in %
    "baseline (MedGemma-4B)": {"flip rate": 14.6, "mean abs margin diff": 1.63, "accuracy": 84.2},
    "clamping f3818 at L17": {"flip rate": 10.8},
    "targeted LoRA (L15–19)": {"flip rate": 4.4, "mean abs margin diff": 0.33, "accuracy": 82.3},
}
PSF_AUC = {10: 0.58, 13: 0.64, 15: 0.72, 17: 0.76, 19: 0.73, 22: 0.65, 25: 0.59}


def _json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _get(node: Any, path: str) -> Any:
    for key in path.split("/"):
        node = node.get(key) if isinstance(node, Mapping) else None
    return node


def _pct_value(value: Any) -> Any:
    """An Estimate dict stays; a bare fraction becomes an Estimate-like dict."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"value": float(value)}
    return value


def _paper_row(columns: Sequence[str], label: str, numbers: Mapping[str, float]) -> list[Cell]:
    """A published row: ``numbers`` by column name, blank where the paper has none."""
    cells = [Cell(f"paper: {label}", kind="paper")]
    for column in columns[1:]:
        value = numbers.get(column)
        cells.append(Cell("" if value is None else f"{value:g}", kind="paper"))
    return cells


def _figures_for(
    kind: str, folders: Sequence[Path], root: Path, names: Sequence[str] = ()
) -> list[Figure]:
    """The :data:`FIGURES` of ``kind`` (or the files ``names``) found in ``folders``, the
    first of each name."""
    found: list[Figure] = []
    seen: set[str] = set()
    for folder in folders:
        for name, (owner, title, caption) in FIGURES.items():
            path = folder / name
            wanted = name in names if names else owner == kind
            if wanted and name not in seen and path.is_file():
                seen.add(name)
                found.append(embed_png(path, title, caption, str(path.relative_to(root))))
    return found


def _histories(runs_dir: Path) -> dict[str, list[dict[str, float]]]:
    """``runs/<name>/seed<k>/train.json`` histories, labelled ``name`` (``name seed k``
    when a name has several seeds)."""
    out: dict[str, list[dict[str, float]]] = {}
    if not runs_dir.is_dir():
        return out
    for method in sorted(p for p in runs_dir.iterdir() if p.is_dir()):
        seeds = sorted(method.glob("seed*/train.json"))
        for file in seeds:
            label = method.name if len(seeds) == 1 else f"{method.name} {file.parent.name}"
            out[label] = _curve_records(_json(file))
    return out


def _curve_records(info: Mapping[str, Any]) -> list[dict[str, float]]:
    """``train.json``'s loss history, then its periodic validation metrics (``eval``,
    written when ``eval_every`` > 0) as ``eval/<metric>`` terms."""
    records = [dict(r) for r in info.get("history") or []]
    for r in info.get("eval") or []:
        records.append({"step": r["step"], **{f"eval/{k}": v for k, v in r.items() if k != "step"}})
    return records


def _curves(runs_dir: Path, root: Path, title: str) -> list[Figure]:
    figure = training_curves(
        _histories(runs_dir), title, f"rendered from {runs_dir.relative_to(root)}/*/*/train.json"
    )
    return [] if figure is None else [figure]


# -- negation ----------------------------------------------------------------------------

NEGATION_COLUMNS: tuple[tuple[str, str], ...] = (
    ("R@1", "retrieval/R@1"),
    ("R@5", "retrieval/R@5"),
    ("claim acc", "claims/heldout/claim_accuracy"),
    ("affirmative acc", "claims/heldout/accuracy_by_polarity/affirmative"),
    ("negated acc", "claims/heldout/accuracy_by_polarity/negated"),
    ("gap (pp)", "claims/heldout/affirmative_negation_gap"),
    ("existence-only gap (pp)", "claims/heldout/existence_only_gap"),
    ("contralateral", "claims/heldout/accuracy_by_polarity/contralateral"),
    ("MCQ neg", "polarity_mcq/negated"),
    ("MCQ aff", "polarity_mcq/affirmative"),
    ("top-3 share", "update_share/top3"),
    ("top-5 share", "update_share/top5"),
    ("retention", "retention"),
)


def negation_results_table(results: Mapping[str, Any]) -> Table:
    """Every method's held-out-family metrics with 95% intervals (mean and range over
    seeds when several), and the NAST paper's rows."""
    columns = ["method", "seeds", *(c for c, _ in NEGATION_COLUMNS)]
    rows: list[list[Cell]] = []
    from mechtune.pipelines.negation_report import runs_label

    for method, reports in results["runs"].items():
        row = [Cell(method), Cell(runs_label(reports))]
        for _, path in NEGATION_COLUMNS:
            row.append(seeds_cell([_pct_value(_get(r, path)) for r in reports]))
        rows.append(row)
    for label, numbers in NAST_PAPER.items():
        rows.append(_paper_row(columns, label, numbers))
    split = results.get("config", {}).get("eval_split", "test")
    return Table(
        "Negation metrics, held-out phrasing families",
        columns,
        rows,
        caption=(
            f"{split} patients; percent, value [95% interval clustered by patient]; with "
            "several seeds, mean (min–max over seeds), each seed's interval on hover. "
            "Paper rows: NAST (arXiv 2602.12498) Tables 1/3/4, on MIMIC-CXR with real "
            "encoders, for scale, not as a like-for-like comparison."
        ),
    )


def negation_paired_table(results: Mapping[str, Any]) -> Table | None:
    """Each method minus uniform LoRA on the same items (pp, 95% interval)."""
    from mechtune.pipelines.negation_report import (
        PAIRED_METRICS,
        REFERENCE_METHOD,
        paired_comparisons,
        runs_label,
        split_name,
    )

    paired = paired_comparisons(dict(results))
    if not paired:
        return None
    columns = ["method", "seeds", *(c for c, *_ in PAIRED_METRICS)]
    rows = [
        [Cell(m), Cell(runs_label(results["runs"][m]))]
        + [delta_cell(cells[c]) for c, *_ in PAIRED_METRICS]
        for m, cells in paired.items()
    ]
    return Table(
        f"Paired differences vs {REFERENCE_METHOD}",
        columns,
        rows,
        caption=(
            f"Percentage points on the same {split_name(results)} items [95% "
            "patient-bootstrap interval]; "
            "McNemar's exact p where both methods ran one seed. Green/red: the interval "
            "excludes 0."
        ),
    )


def negation_control_table(results: Mapping[str, Any]) -> Table | None:
    """NAST minus each of its controls (random-alpha, effective-lr) on the same items (pp,
    95% interval); None when NAST or every control is missing."""
    from mechtune.pipelines.negation_controls import TARGET, control_comparisons
    from mechtune.pipelines.negation_report import PAIRED_METRICS, split_name

    paired = control_comparisons(dict(results))
    if not paired:
        return None
    runs = results["runs"]
    columns = ["comparison", "runs", *(c for c, *_ in PAIRED_METRICS)]
    rows = [
        [Cell(f"{TARGET} − {control}"), Cell(f"{len(runs[TARGET])} vs {len(runs[control])}")]
        + [delta_cell(cells[c]) for c, *_ in PAIRED_METRICS]
        for control, cells in paired.items()
    ]
    return Table(
        "NAST minus its controls",
        columns,
        rows,
        caption=(
            "Does the traced α beat the same α permuted across blocks (random-alpha: its "
            "permutations and seeds pooled per item) and uniform LoRA at NAST's mean "
            "per-block rate (effective-lr)? Percentage points on the same "
            f"{split_name(results)} items [95% patient-bootstrap interval]. Green/red: the "
            "interval excludes 0."
        ),
    )


def claim_examples(examples: Sequence[Mapping[str, Any]], limit: int = 6) -> list[Example]:
    """Claim sets with every model's score per candidate (``results["examples"]`` or
    ``eval.json``'s): the correct claim first, the model's choice marked."""
    out = []
    for ex in list(examples)[:limit]:
        models = list(ex["scores"])
        rows = []
        for i, text in enumerate(ex["candidates"]):
            cells = [Cell(("✓ " if i == 0 else "") + text, kind="" if i else "correct")]
            for m in models:
                scores = ex["scores"][m]
                best = max(range(len(scores)), key=scores.__getitem__)
                if i == best:  # the model's choice: green when right, red when wrong
                    cells.append(Cell(f"◀ {scores[i]:.3f}", kind="up" if i == 0 else "down"))
                else:
                    cells.append(Cell(f"{scores[i]:.3f}", kind="num"))
            rows.append(cells)
        out.append(
            Example(
                f"{ex['id']} ({ex.get('slice', '')}, patient {ex.get('patient', '')})",
                ["claim (✓ correct)", *models],
                rows,
                caption=(
                    f"{ex.get('why', '')}. Image–text similarity per candidate; ◀ each "
                    "model's choice (green: right, red: wrong)."
                ),
            )
        )
    return out


def negation_study_section(folder: Path, root: Path) -> Section:
    results = _json(folder / "results.json")
    config = results.get("config", {})
    # a grid's cells (GRID/cells/<cell>) are studies each, with ids and titles of their own
    cell = folder.name if folder.parent.name == "cells" else None
    section = Section(
        "negation-study" if cell is None else f"negation-study-{cell}",
        "Negation study: trace, then train where it matters"
        if cell is None
        else f"Negation study, grid cell {cell}",
        str(folder.relative_to(root)),
    )
    counts = results.get("trace", {}).get("counts", {})
    section.facts = [
        ("model", str(config.get("model"))),
        ("data", str(config.get("data"))),
        ("methods", ", ".join(config.get("methods", []))),
        ("seeds", ", ".join(str(s) for s in config.get("seeds", []))),
        ("steps per run", str(config.get("loop", {}).get("steps"))),
        ("evaluated on", f"{config.get('eval_split')} patients"),
        (
            "traced pairs",
            f"{counts.get('traced')} traced, {counts.get('aggregated')} aggregated "
            f"({counts.get('excluded_small_gap', 0)} with too small a score gap left out)",
        ),
    ]
    trace = results.get("trace", {})
    alpha = trace.get("alpha")
    if alpha:
        top = sorted(range(len(alpha)), key=lambda i: -alpha[i])[:3]
        section.facts.append(("layers with the largest α", ", ".join(str(i) for i in top)))
    if trace.get("alpha_source"):
        norm = trace.get("alpha_norm")
        tau = f" (τ = {trace.get('alpha_tau')})" if norm == "softmax" else ""
        section.facts.append(("α", f"{norm}-normalised {trace['alpha_source']} CTE profile{tau}"))
    section.tables.append(negation_results_table(results))
    for table in (negation_paired_table(results), negation_control_table(results)):
        if table is not None:
            section.tables.append(table)
    section.figures += _figures_for("negation-study", [folder / "figures", folder], root)
    section.figures += _curves(folder / "runs", root, "Training curves (negation)")
    section.timings = [
        (f"negation: train {m} seed {r.get('seed')}", f"{r['train_seconds']:.1f} s")
        for m, reports in results["runs"].items()
        for r in reports
        if r.get("train_seconds") is not None
    ]
    section.examples += claim_examples(results.get("examples", []))
    return section


def negation_eval_section(folder: Path, root: Path, extra_figures: Sequence[Path]) -> Section:
    report = _json(folder / "eval.json")
    model = report.get("model")
    adapter = report.get("adapter")
    section = Section(
        f"negation-eval-{folder.name}",
        f"Negation evaluation: {model}" + (f" + {adapter}" if adapter else ""),
        str(folder.relative_to(root)),
    )
    section.facts = [
        ("split", f"{report.get('split')} ({report.get('studies')} studies)"),
        ("wording seed", str(report.get("seed"))),
    ]
    families = ("in_distribution", "heldout")
    rows: list[list[Cell]] = []

    def add(label: str, path: str, *, family: bool = True) -> None:
        if family:
            cells = [
                Cell(interval_text(_get(report, f"claims/{f}/{path}")), kind="num")
                for f in families
            ]
        else:
            cells = [Cell(interval_text(_get(report, path)), kind="num"), Cell("")]
        rows.append([Cell(label), *cells])

    add("image→report R@1", "retrieval/R@1", family=False)
    add("image→report R@5", "retrieval/R@5", family=False)
    add("claim accuracy (top-1)", "claim_accuracy")
    add("correct claim affirmative", "accuracy_by_polarity/affirmative")
    add("correct claim negated", "accuracy_by_polarity/negated")
    add("contralateral negation", "accuracy_by_polarity/contralateral")
    add("affirmative − negated gap (pp)", "affirmative_negation_gap")
    add("same gap, existence-only sets (pp)", "existence_only_gap")
    for attr in ("existence", "laterality", "severity"):
        add(f"pairwise, {attr} flipped", f"pairwise_by_attribute/{attr}")
    add("polarity MCQ, negated wording", "polarity_mcq/negated", family=False)
    add("polarity MCQ, affirmative wording", "polarity_mcq/affirmative", family=False)
    if "retention" in report:
        add("retention (cosine, everyday sentences)", "retention", family=False)
    notes = [f"n/a {k}: {v}" for k, v in report.get("not_available", {}).items()]
    section.tables.append(
        Table(
            "Negation metrics",
            ["metric", "in-distribution phrasing", "held-out phrasing"],
            rows,
            caption="Percent, value [95% interval clustered by patient].",
            notes=notes,
        )
    )
    section.figures += _figures_for("negation-eval", [folder, *extra_figures], root)
    section.examples += claim_examples(report.get("examples", []))
    return section


# -- paraphrase ----------------------------------------------------------------------------


def paraphrase_results_table(results: Mapping[str, Any]) -> Table:
    """Per condition: flip rate, pairwise flip rate, margin difference, accuracy (95%
    intervals), and the paired Δ flip against the baseline and all-layer LoRA (and the
    SAE range, with the random-range control: its random rows and their pooled row);
    PSF-Med's rows beside them."""
    from mechtune.pipelines.paraphrase_report import (
        conditions,
        paired_references,
        paired_rows,
        primary_view,
    )

    view = primary_view(dict(results))
    references = paired_references(results)
    metrics = (
        ("flip rate", view, "flip_rate", 100.0, 1),
        ("pairwise flip", view, "pairwise_flip_rate", 100.0, 1),
        ("mean abs margin diff", view, "margin_difference", 1.0, 2),
        ("accuracy", view, "accuracy", 100.0, 1),
        ("flip rate, in-dist", "in_distribution", "flip_rate", 100.0, 1),
        ("text-only agreement", view, "text_only_agreement", 100.0, 1),
    )
    columns = ["condition", "seeds", *(m[0] for m in metrics), *(t for _, t in references)]
    rows: list[list[Cell]] = []
    paired = paired_rows(dict(results))
    for (label, _, reports), (_, _, cells) in zip(conditions(results), paired, strict=True):
        row = [Cell(label), Cell(str(len(reports)))]
        for _, split, name, scale, digits in metrics:
            row.append(seeds_cell([_get(r, f"{split}/{name}") for r in reports], scale, digits))
        row += [delta_cell(cells[ref]) for ref, _ in references]
        rows.append(row)
    for label, numbers in PSF_PAPER.items():
        rows.append(_paper_row(columns, label, numbers))
    split = results.get("config", {}).get("eval_split", "test")
    family = "held-out paraphrase families" if view == "heldout" else "all questions"
    return Table(
        f"Paraphrase consistency, {family}",
        columns,
        rows,
        caption=(
            f"{split} questions; percent (margins in logits), value [95% interval]; Δ flip "
            "in percentage points on the same questions [95% patient bootstrap], McNemar's "
            "p with one seed each. "
            + (
                "Random ranges: contiguous ranges of the SAE range's width, drawn apart "
                "from it; the pooled row averages each question's flips over every draw "
                "and seed, its interval over questions given the draws. "
                if len(references) > 2
                else ""
            )
            + "Paper rows: PSF-Med (arXiv 2602.21428), MedGemma-4B on MIMIC binary "
            "questions."
        ),
    )


def auc_table(analysis: Mapping[str, Any]) -> Table:
    """Flip-prediction AUC per layer with its interval, the chosen layers marked, and
    PSF-Med's AUCs at MedGemma-4B's layers for reference; with the shuffled-label control
    (``auc_shuffled_by_layer``), the shuffled AUCs' mean [2.5–97.5 percentiles] and the
    permutation p beside each layer, and the peak's max-statistic p in the caption."""
    chosen = set(analysis.get("chosen_layers", []))
    shuffled = analysis.get("auc_shuffled_by_layer") or {}
    rows = []
    for layer, auc in sorted(analysis.get("auc_by_layer", {}).items(), key=lambda kv: int(kv[0])):
        low, high = analysis.get("auc_ci_by_layer", {}).get(layer, [None, None])
        row = [
            Cell(f"L{layer}" + (" (chosen)" if int(layer) in chosen else "")),
            Cell(
                interval_text({"value": auc, "low": low, "high": high}, 1.0, 2),
                kind="up" if int(layer) in chosen else "num",
            ),
        ]
        if shuffled:
            control = shuffled.get(layer) or {}
            row.append(Cell(interval_text({"value": control.get("mean"), **control}, 1.0, 2)))
            row.append(number_cell(control.get("p_value"), "{:.3g}"))
        rows.append(row)
    paper = ", ".join(f"L{k} {v:.2f}" for k, v in PSF_AUC.items())
    columns = ["layer", "flip-prediction AUC [95% interval]"]
    caption = f"PSF-Med's MedGemma-4B (34 layers, Gemma Scope 2 SAEs): {paper}."
    if shuffled:
        k = next(iter(shuffled.values())).get("shuffles")
        columns += ["AUC, shuffled flip labels [95% range]", "permutation p"]
        peak = analysis.get("peak_auc_p_value")
        caption = (
            f"Shuffled labels: the same cross-validated fit on {k} shuffles of the flip "
            "labels (whole question sets moved, so flips stay clustered); p = (1 + #{shuffled "
            f"≥ real}}) / (1 + {k}). The peak against each shuffle's best layer: p = "
            + ("n/a" if peak is None else f"{peak:.3g}")
            + ". "
            + caption
        )
    return Table("Where phrasing sensitivity is readable", columns, rows, caption=caption)


def question_examples(examples: Sequence[Mapping[str, Any]], limit: int = 6) -> list[Example]:
    """Question groups (original and paraphrases) with each condition's margin
    (logit yes − logit no) and answer."""
    out = []
    for ex in list(examples)[:limit]:
        conditions = list(ex["margins"])
        rows = []
        for i, text in enumerate(ex["texts"]):
            cells = [Cell(("original: " if i == 0 else "") + text)]
            for c in conditions:
                margin = ex["margins"][c][i]
                if margin is None:
                    cells.append(Cell("n/a", kind="na"))
                    continue
                first = ex["margins"][c][0]
                flipped = first is not None and (margin > 0) != (first > 0)
                answer = "yes" if margin > 0 else "no"
                cells.append(Cell(f"{answer} {margin:+.2f}", kind="down" if flipped else "num"))
            rows.append(cells)
        label = ex.get("label")
        out.append(
            Example(
                f"{ex['id']} (label: {label}, patient {ex.get('patient', '')})",
                ["question", *conditions],
                rows,
                caption=ex.get("why", "Answer and margin (logit yes − logit no); red: a flip."),
            )
        )
    return out


def paraphrase_study_section(folder: Path, root: Path) -> Section:
    results = _json(folder / "results.json")
    config = results.get("config", {})
    analysis = results.get("analysis", {})
    section = Section(
        "paraphrase-study",
        "Paraphrase study: SAE analysis, then targeted consistency LoRA",
        str(folder.relative_to(root)),
    )
    counts = results.get("counts", {})
    section.facts = [
        ("model", str(config.get("model"))),
        ("questions", ", ".join(f"{k} {v}" for k, v in counts.items())),
        ("LoRA ranges", ", ".join(str(r) for r in config.get("ranges", []))),
        ("seeds", ", ".join(str(s) for s in config.get("seeds", []))),
        ("chosen layers", ", ".join(str(i) for i in analysis.get("chosen_layers", []))),
        ("peak flip-AUC layer", str(analysis.get("peak_layer"))),
    ]
    drawn = results.get("random_ranges")
    if drawn:
        spans = ", ".join(
            f"{name} (L{layers[0]}–{layers[-1]})" if len(layers) > 1 else f"{name} (L{layers[0]})"
            for name, layers in drawn["drawn"].items()
        )
        section.facts.append(
            (
                "random ranges",
                (spans or "none")
                + f", drawn with seed {drawn['seed']} among {drawn['pool']} other windows"
                + (f"; {drawn['note']}" if drawn.get("note") else ""),
            )
        )
    patch = analysis.get("patch")
    if patch and patch.get("flip_pairs") and "recovered_mean" in patch:
        section.facts.append(
            (
                "top feature",
                f"f{patch['feature']} at L{patch.get('layer')}: removing it recovers "
                f"{100 * patch['recovered_mean']:.1f}% of the margin on {patch['flip_pairs']} "
                "flip pairs (PSF-Med's f3818: 44.8%)",
            )
        )
    elif patch:
        section.facts.append(
            (
                "top feature",
                f"f{patch.get('feature')}: no flip pair to patch, recovery not measured",
            )
        )
    section.tables.append(paraphrase_results_table(results))
    if analysis.get("auc_by_layer"):
        section.tables.append(auc_table(analysis))
    sae = results.get("sae", {}).get("layers", {})
    if sae:
        section.tables.append(
            Table(
                "SAE fit per layer",
                ["layer", "tokens", "R²", "L0", "dead share"],
                [
                    [
                        Cell(f"L{k}"),
                        number_cell(v.get("tokens"), "{:,.0f}"),
                        number_cell(v.get("r2"), "{:.3f}"),
                        number_cell(v.get("l0"), "{:.1f}"),
                        number_cell(v.get("dead_fraction"), "{:.1%}"),
                    ]
                    for k, v in sorted(sae.items(), key=lambda kv: int(kv[0]))
                ],
                caption="Reconstruction R² of the residual stream (PSF-Med: ≈ 0.997 with "
                "Gemma Scope 2 on MedGemma).",
            )
        )
    section.figures += _figures_for("paraphrase-study", [folder / "figures", folder], root)
    section.figures += _curves(folder / "runs", root, "Training curves (consistency LoRA)")
    section.timings = [
        (f"paraphrase: {k}", f"{v:.1f} s") for k, v in results.get("seconds", {}).items()
    ] + [
        (f"paraphrase: train LoRA {name} seed {r.get('seed')}", f"{r['train_seconds']:.1f} s")
        for name, reports in results["runs"].items()
        for r in reports
        if r.get("train_seconds") is not None
    ]
    section.examples += question_examples(results.get("examples", []))
    return section


def margins_examples(path: Path, model: str, limit: int = 4) -> list[dict[str, Any]]:
    """Flipped question groups from a ``margins.csv`` (paraphrase eval), in file order."""
    groups: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        for row in csv.DictReader(handle):
            g = groups.setdefault(
                row["question_id"],
                {
                    "id": row["question_id"],
                    "patient": row["patient_id"],
                    "label": row["label"],
                    "texts": [],
                    "margins": {model: []},
                },
            )
            g["texts"].append(row["text"])
            g["margins"][model].append(float(row["margin"]) if row["margin"] else None)
    flipped = []
    for g in groups.values():
        m = g["margins"][model]
        if m and m[0] is not None and any(x is not None and (x > 0) != (m[0] > 0) for x in m):
            g["why"] = "A flipped question: red marks the paraphrases answered differently."
            flipped.append(g)
    return flipped[:limit]


def paraphrase_eval_section(folder: Path, root: Path) -> Section:
    report = _json(folder / "eval.json")
    metrics = report.get("metrics", {})
    model = str(report.get("model", "recorded answers"))
    section = Section(
        f"paraphrase-eval-{folder.name}",
        f"Paraphrase evaluation: {model}",
        str(folder.relative_to(root)),
    )
    section.facts = [("questions", str(report.get("questions")))]
    if report.get("clamp"):
        section.facts.append(("clamp", dumps_json(report["clamp"], indent=None)))
    names = (
        ("flip rate", "flip_rate", 100.0, 1),
        ("pairwise flip rate", "pairwise_flip_rate", 100.0, 1),
        ("mean abs margin diff (logits)", "margin_difference", 1.0, 2),
        ("accuracy", "accuracy", 100.0, 1),
        ("text-only agreement", "text_only_agreement", 100.0, 1),
        ("swap sensitivity", "swap_sensitivity", 100.0, 1),
    )
    views = [v for v in ("all", "in_distribution", "heldout") if v in metrics]
    rows = [
        [Cell(label)]
        + [Cell(interval_text(metrics[v].get(key), scale, digits), kind="num") for v in views]
        for label, key, scale, digits in names
    ]
    notes = sorted({f"n/a {k}: {r}" for v in views for k, r in metrics[v].get("na", {}).items()})
    section.tables.append(
        Table(
            "PSF-Med metrics",
            ["metric", *(v.replace("_", "-") for v in views)],
            rows,
            caption="Percent unless stated, value [95% bootstrap interval clustered by patient].",
            notes=notes,
        )
    )
    margins = folder / "margins.csv"
    if margins.is_file():
        section.examples += question_examples(margins_examples(margins, model))
    return section


def trace_section(folder: Path, root: Path) -> Section:
    """``negation trace``'s output: per-layer CTE with intervals and α, and its figures."""
    trace = _json(folder / "trace.json")
    counts = trace.get("counts", {})
    section = Section(
        f"trace-{folder.name}",
        f"Causal tracing: {counts.get('model')}",
        str(folder.relative_to(root)),
    )
    section.facts = [
        ("split", str(counts.get("split"))),
        ("pairs", f"{counts.get('traced')} traced, {counts.get('aggregated')} aggregated"),
        ("peak layer", str(trace.get("peak_layer"))),
    ]
    from mechtune.interp.result import TraceResult

    traced = TraceResult.load(folder)
    columns = (traced.cte_layer, traced.cte_layer_low, traced.cte_layer_high, traced.alpha)
    rows = [
        [
            Cell(str(i)),
            Cell(interval_text({"value": c, "low": lo, "high": hi}, 1.0, 3), kind="num"),
            number_cell(a, "{:.3f}"),
        ]
        for i, (c, lo, hi, a) in enumerate(zip(*(t.tolist() for t in columns), strict=True))
    ]
    if rows:
        section.tables.append(
            Table(
                "CTE per layer",
                ["layer (0 = embedding output)", "CTE [95% interval]", "α (min-max)"],
                rows,
                caption=(
                    "CTE averaged over token roles; interval over pairs (NAST §3). α: the "
                    "trace's own, min-max of this CTE; a study built from this trace "
                    "reports the α it used (its source and normalisation) in its section."
                ),
            )
        )
    section.figures += _figures_for(
        "", [folder, folder / "figures"], root, ("cte_heatmap.png", "alpha.png")
    )
    return section


# -- training runs and data ---------------------------------------------------------------


def train_section(folder: Path, root: Path) -> Section:
    info = _json(folder / "train.json")
    config = info.get("config", {})
    section = Section(
        f"train-{folder.name}",
        f"Training run: {info.get('method')}",
        str(folder.relative_to(root)),
    )
    card = info.get("card") or {}
    section.facts = [("steps", str(info.get("step")))]
    for key in ("base_model", "task", "trainable", "total", "target_layers", "target_modules"):
        if card.get(key) is not None:
            section.facts.append((key.replace("_", " "), str(card[key])))
    keys = ["optimizer", "lr", "steps", "batch_size", "grad_accum", "lam", "beta", "scaling"]
    if config.get("optimizer") == "sgd":
        keys.append("momentum")
    for key in keys:
        if key in config:
            section.facts.append((key, str(config[key])))
    figure = training_curves(
        {str(info.get("method")): _curve_records(info)},
        "Training curves",
        f"rendered from {(folder / 'train.json').relative_to(root)}",
    )
    if figure is not None:
        section.figures.append(figure)
    if (folder / "README.md").is_file():
        section.facts.append(("model card", str((folder / "README.md").relative_to(root))))
    return section


def data_section(manifests: Sequence[Path], root: Path, extra_figures: Sequence[Path]) -> Section:
    section = Section("data", "Data", ".")
    rows = []
    for path in manifests:
        manifest = _json(path)
        counts = manifest.get("counts", {})
        tables = counts.get("tables") if isinstance(counts, Mapping) else None
        size = (
            ", ".join(f"{k} {v.get('rows')}" for k, v in tables.items())
            if isinstance(tables, Mapping)
            else ""
        )
        rows.append(
            [
                Cell(str(path.parent.relative_to(root))),
                Cell(str(manifest.get("kind"))),
                Cell(size),
                Cell(
                    str(manifest.get("canonical_hash") or "–")[:16], note="canonical content hash"
                ),
            ]
        )
    section.tables.append(
        Table(
            "Data built or read by this run",
            ["folder", "kind", "rows", "content hash"],
            rows,
            caption="The first 16 hex digits of each manifest's canonical content hash, which "
            "`mechtune data verify` checks (full hashes in the manifests and provenance).",
        )
    )
    section.figures += _figures_for("data", extra_figures, root)
    return section


__all__ = [
    "FIGURES",
    "NAST_PAPER",
    "PSF_PAPER",
    "auc_table",
    "claim_examples",
    "data_section",
    "margins_examples",
    "negation_eval_section",
    "negation_paired_table",
    "negation_results_table",
    "negation_study_section",
    "paraphrase_eval_section",
    "paraphrase_results_table",
    "paraphrase_study_section",
    "question_examples",
    "trace_section",
    "train_section",
]
