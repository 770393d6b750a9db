"""Tables of a negation study: the NAST-shaped results table and the paired differences
against a reference method on the same evaluation items, and per-block update norms.

``results.json`` keeps every run's per-item correctness with item and patient ids
(``runs[m][i]["items"]``), so the paired comparison can be recomputed later and across runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mechtune.errors import DataError
from mechtune.eval.holdout import condition_items
from mechtune.eval.metrics import paired_items
from mechtune.models.sites import text_site
from mechtune.train.lora import lora_update_norms

PAPER = {  # NAST (arXiv 2602.12498), Tables 1/3/4, in %
    "CLIP": {"R@1": 23.5, "R@5": 34.7, "claim": 24.6, "gap": 21.6},
    "NegCLIP": {"R@1": 36.2, "R@5": 52.4, "claim": 41.3, "gap": 12.8},
    "NegBench": {"R@1": 43.1, "R@5": 59.2, "claim": 48.7, "gap": 10.2},
    "NAST": {"R@1": 49.5, "R@5": 65.7, "claim": 55.6, "gap": 4.2},
}


def block_weights(model: Any) -> dict[str, tuple[int, Any]]:
    """Every parameter inside a text block, with its block index (trainable or not)."""
    site = text_site(model)
    out = {}
    for name, p in model.named_parameters():
        layer = site.layer_index(name)
        if layer is not None and "lora_" not in name:
            out[name] = (layer, p.detach().clone())
    return out


def block_update_norms(model: Any, initial: dict[str, tuple[int, Any]]) -> dict[int, float]:
    """Per block, the summed update norm: ||(alpha/r) B A|| for LoRA adapters, or
    ||W - W_0|| for weights trained directly (full fine-tuning)."""
    norms = lora_update_norms(model)
    for name, p in model.named_parameters():
        if name in initial:  # peft renames the weights it wraps; those do not change
            layer, w0 = initial[name]
            delta = float((p.detach() - w0).norm())
            if delta > 0:
                norms[layer] = norms.get(layer, 0.0) + delta
    return norms


def _agg(cells: list[float | None]) -> str:
    values = [v for v in cells if v is not None and np.isfinite(v)]
    if not values or len(values) < len(cells):
        return "n/a"
    mean = 100 * float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ({100 * min(values):.1f}–{100 * max(values):.1f})"


def runs_label(reports: list[dict[str, Any]]) -> str:
    """The "seeds" cell of a method's row: its number of runs, or ``"S × K α"`` when its
    runs are K alpha permutations (random-alpha) of each of S seeds."""
    permutations = {r.get("permutation") for r in reports} - {None}
    if not permutations:
        return str(len(reports))
    seeds = len({r.get("seed") for r in reports})
    return f"{seeds} × {len(permutations)} α"


def results_table(results: dict[str, Any]) -> str:
    """Markdown in the shape of NAST's Tables 1/3/4, held-out phrasing families, then
    :func:`paired_table` (when the runs carry per-item results and uniform LoRA ran)."""
    head = (
        "| method | seeds | R@1 | R@5 | claim acc | affirmative acc | negated acc | "
        "gap (pp) | existence-only gap | contralateral | MCQ neg / aff | free-form aff / neg | "
        "top-3 share | top-5 share | retention |"
    )
    lines = [head, "|" + "---|" * 15]
    for method, reports in results["runs"].items():

        def get(path: str, reps: list[dict[str, Any]] = reports) -> list[float | None]:
            out: list[float | None] = []
            for r in reps:
                node: Any = r
                for key in path.split("/"):
                    node = node.get(key) if isinstance(node, dict) else None
                out.append(node["value"] if isinstance(node, dict) else node)
            return out  # None (missing, or NaN written as null) makes the cell n/a

        held = "claims/heldout"
        lines.append(
            "| "
            + " | ".join(
                [
                    method,
                    runs_label(reports),
                    _agg(get("retrieval/R@1")),
                    _agg(get("retrieval/R@5")),
                    _agg(get(f"{held}/claim_accuracy")),
                    _agg(get(f"{held}/accuracy_by_polarity/affirmative")),
                    _agg(get(f"{held}/accuracy_by_polarity/negated")),
                    _agg(get(f"{held}/affirmative_negation_gap")),
                    _agg(get(f"{held}/existence_only_gap")),
                    _agg(get(f"{held}/accuracy_by_polarity/contralateral")),
                    f"{_agg(get('polarity_mcq/negated'))} / {_agg(get('polarity_mcq/affirmative'))}",
                    f"{_agg(get('freeform/accuracy_by_polarity/affirmative'))} / "
                    f"{_agg(get('freeform/accuracy_by_polarity/negated'))}",
                    _agg(get("update_share/top3")),
                    _agg(get("update_share/top5")),
                    _agg(get("retention")),
                ]
            )
            + " |"
        )
    # each method minus uniform LoRA (the plain fix), then minus zero-shot (the untrained
    # model: did the fix lose what the model could already do, e.g. free-form affirmative)
    paired = [t for t in (paired_table(results), paired_table(results, ZERO_SHOT)) if t]
    out = "\n\n".join(["\n".join(lines), *paired])
    if "holdout" in results:
        out = f"{holdout_header(results['holdout'])}\n\n{out}\n\n{holdout_tables(results)}"
    return out


def _metric(report: dict[str, Any], path: str) -> float | None:
    node: Any = report
    for key in path.split("/"):
        node = node.get(key) if isinstance(node, dict) else None
    return node["value"] if isinstance(node, dict) else node


def holdout_header(record: dict[str, Any]) -> str:
    """The line that opens a held-out study's table: which conditions no training text
    was about, and what their removal took (``results["holdout"]``:
    :func:`~mechtune.pipelines.negation_study.holdout_record`)."""
    removed, kept = record["removed"], record["kept"]
    return (
        f"**Held out of training: {', '.join(record['conditions'])}.** Removed from the "
        f"training data: {removed['claim_sets']} claim sets, {removed['caption_sentences']} "
        f"caption sentences ({removed['captions']} captions left empty and dropped), "
        f"{removed['mcq']} MCQs ({removed['by_label_only']} of these texts named it only in "
        f"their record); kept {kept['claim_sets']} claim sets (after balancing), "
        f"{kept['captions']} captions, {kept['mcq']} MCQs. Validation for eval_every: "
        f"{record['validation']['template_claim_sets']} template claim sets, "
        f"{record['validation']['freeform_items']} free-form items, none about it. "
        f"{record['trace_pairs_naming_it']} traced pairs name it (the trace only chooses "
        "alpha; no weight is trained on them)."
    )


# (column, item table, selection, report path) of a held-out condition's slice
HOLDOUT_COLUMNS: tuple[tuple[str, str, dict[str, Any], str], ...] = (
    ("claim acc", "claims", {"heldout": True}, "template/claim_accuracy"),
    ("affirmative", "claims", {"heldout": True, "slice": "affirmative"},
     "template/accuracy_by_polarity/affirmative"),
    ("negated", "claims", {"heldout": True, "slice": "negated"},
     "template/accuracy_by_polarity/negated"),
    ("contralateral", "claims", {"heldout": True, "slice": "contralateral"},
     "template/accuracy_by_polarity/contralateral"),
    ("free-form aff", "freeform", {"slice": "affirmative"},
     "freeform/accuracy_by_polarity/affirmative"),
    ("free-form neg", "freeform", {"slice": "negated"}, "freeform/accuracy_by_polarity/negated"),
)  # fmt: skip
HOLDOUT_REFERENCES = ("zero-shot", "uniform-lora")  # the untrained model, the plain fix


def holdout_comparisons(
    results: dict[str, Any], condition: str, reference: str
) -> dict[str, dict[str, Any]]:
    """``{method: {column: PairedDifference or None}}``: each method minus ``reference``
    on the items about held-out ``condition`` (:data:`HOLDOUT_COLUMNS`; template sets in
    the held-out families, free-form items). Empty when ``reference`` did not run."""
    runs = results["runs"]
    if reference not in runs or any("items" not in r for rs in runs.values() for r in rs):
        return {}

    def subset(reports: list[dict[str, Any]], table: str) -> list[dict[str, Any]] | None:
        if any(table not in r["items"] for r in reports):
            return None
        return [condition_items(r["items"][table], condition) for r in reports]

    out: dict[str, dict[str, Any]] = {}
    for method, reports in runs.items():
        if method == reference:
            continue
        cells: dict[str, Any] = {}
        for column, table, select, _ in HOLDOUT_COLUMNS:
            a, b = subset(reports, table), subset(runs[reference], table)
            cells[column] = None
            if a is not None and b is not None:
                try:
                    cells[column] = paired_items(a, b, "correct", select=select)
                except DataError as err:
                    if "no item matches" not in str(err):
                        raise
        out[method] = cells
    return out


def holdout_tables(results: dict[str, Any]) -> str:
    """Markdown, per held-out condition: each method's accuracy on the claim sets about
    it (mean and range over seeds), then each method minus zero-shot and minus uniform
    LoRA on those items, in percentage points with the paired 95% interval."""
    parts = []
    names = [c for c, *_ in HOLDOUT_COLUMNS]
    for condition in results["holdout"]["conditions"]:
        lines = [
            f"Held-out condition **{condition}** (no training text was about it): accuracy on "
            "its claim sets (template: held-out phrasing families), %",
            "",
            "| method | seeds | " + " | ".join(names) + " |",
            "|" + "---|" * (2 + len(names)),
        ]
        for method, reports in results["runs"].items():
            cells = [
                _agg([_metric(r.get("holdout", {}).get(condition, {}), path) for r in reports])
                for *_, path in HOLDOUT_COLUMNS
            ]
            lines.append(f"| {method} | {runs_label(reports)} | " + " | ".join(cells) + " |")
        for reference in HOLDOUT_REFERENCES:
            paired = holdout_comparisons(results, condition, reference)
            if not paired:
                continue
            lines += [
                "",
                f"Δ vs {reference} on the items about {condition} [95% interval], percentage "
                "points",
                "",
                "| method | seeds | " + " | ".join(names) + " |",
                "|" + "---|" * (2 + len(names)),
            ]
            for method, diffs in paired.items():
                row = ["n/a" if diffs[c] is None else diffs[c].pp() for c in names]
                lines.append(
                    f"| {method} | {runs_label(results['runs'][method])} | "
                    + " | ".join(row)
                    + " |"
                )
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


REFERENCE_METHOD = "uniform-lora"
ZERO_SHOT = "zero-shot"
# (column, item table, value column, selection): per-item proportions of the test items
PAIRED_METRICS: tuple[tuple[str, str, str, dict[str, Any]], ...] = (
    ("claim acc", "claims", "correct", {"heldout": True}),
    ("affirmative acc", "claims", "correct", {"heldout": True, "slice": "affirmative"}),
    ("negated acc", "claims", "correct", {"heldout": True, "slice": "negated"}),
    ("contralateral", "claims", "correct", {"heldout": True, "slice": "contralateral"}),
    ("claim acc, in-dist", "claims", "correct", {"heldout": False}),
    ("free-form aff", "freeform", "correct", {"slice": "affirmative"}),
    ("free-form neg", "freeform", "correct", {"slice": "negated"}),
    ("MCQ neg", "polarity_mcq", "negated", {}),
    ("MCQ aff", "polarity_mcq", "affirmative", {}),
    ("R@1", "retrieval", "R@1", {}),
    ("R@5", "retrieval", "R@5", {}),
)


def paired_comparisons(
    results: dict[str, Any], reference: str = REFERENCE_METHOD
) -> dict[str, dict[str, Any]]:
    """``{method: {column: PairedDifference or None}}``: each method minus ``reference``
    on the same test items (:data:`PAIRED_METRICS`), from the runs' saved items. Empty when
    ``reference`` did not run or a run lacks items; None where no item is selected."""
    runs = results["runs"]
    if reference not in runs or any("items" not in r for rs in runs.values() for r in rs):
        return {}
    out: dict[str, dict[str, Any]] = {}
    for method, reports in runs.items():
        if method == reference:
            continue
        out[method] = paired_cells(reports, runs[reference])
    return out


def paired_cells(
    reports: list[dict[str, Any]],
    reference: list[dict[str, Any]],
    condition: str | None = None,
) -> dict[str, Any]:
    """``{column: PairedDifference or None}``: ``reports`` minus ``reference`` on the same
    items for each of :data:`PAIRED_METRICS` (None where no item is selected, or where a
    run has no such item table: free-form sets turned off). ``condition``: only the
    template claim sets about it (the other tables' columns are None)."""
    cells: dict[str, Any] = {}
    for column, table, value, select in PAIRED_METRICS:
        missing = any(table not in r["items"] for r in (*reports, *reference))
        if missing or (condition is not None and table != "claims"):
            cells[column] = None
            continue
        if condition is not None:
            select = {**select, "condition": condition}
        try:
            cells[column] = paired_items(
                [r["items"][table] for r in reports],
                [r["items"][table] for r in reference],
                value,
                select=select,
            )
        except DataError as err:
            if "no item matches" not in str(err):
                raise
            cells[column] = None
    return cells


def cross_study_cells(
    a: Mapping[str, Any],
    method_a: str,
    b: Mapping[str, Any],
    method_b: str,
    *,
    seeds: Sequence[int] | None = None,
    condition: str | None = None,
) -> dict[str, Any]:
    """``{column: PairedDifference or None}``: ``method_a`` of study ``a`` minus
    ``method_b`` of study ``b`` (two ``results.json`` dicts) on the same items, as
    :func:`paired_cells`; for a method trained in a study of its own (a setting chosen on
    validation patients, run later at the headline's seeds), or a study that held a
    condition out of training against one that did not. ``seeds``: only the runs of these
    training seeds, in both studies. ``condition``: only the template claim sets about it
    (the claims columns; the others are None). Raises ``DataError`` when a study lacks the
    method, its items or the seeds, or when the two evaluated other data, another split or
    another data seed (their items would not be the same)."""
    for name, results, method in (("first", a, method_a), ("second", b, method_b)):
        runs = results.get("runs", {}).get(method)
        if not runs:
            raise DataError(f"the {name} study has no runs of {method!r}")
        if any("items" not in r for r in runs):
            raise DataError(f"the {name} study's {method!r} runs lack their items")
    for key in ("data", "eval_split", "data_seed"):
        left, right = a.get("config", {}).get(key), b.get("config", {}).get(key)
        if left != right:
            raise DataError(
                f"the studies differ in {key} ({left!r} vs {right!r}): not the same items"
            )
    runs_a, runs_b = a["runs"][method_a], b["runs"][method_b]
    if seeds is not None:
        wanted = set(seeds)
        runs_a = [r for r in runs_a if r.get("seed") in wanted]
        runs_b = [r for r in runs_b if r.get("seed") in wanted]
        if not runs_a or not runs_b:
            raise DataError(f"no runs of seeds {sorted(wanted)} in both studies")
    return paired_cells(runs_a, runs_b, condition)


def split_name(results: Mapping[str, Any]) -> str:
    """The patients a study evaluated on, in words: ``test`` or ``validation`` (from
    ``results["config"]["eval_split"]``; ``test`` when the record has no config)."""
    split = str(results.get("config", {}).get("eval_split", "test"))
    return "validation" if split == "val" else split


def paired_table(results: dict[str, Any], reference: str = REFERENCE_METHOD) -> str:
    """Markdown: "Δ vs uniform LoRA [95% interval]" per method and metric, in percentage
    points (held-out phrasing families unless the column says in-dist); empty when there
    is nothing to compare."""
    paired = paired_comparisons(results, reference)
    if not paired:
        return ""
    label = reference.replace("-lora", " LoRA")
    head = "| method | seeds | " + " | ".join(c for c, *_ in PAIRED_METRICS) + " |"
    lines = [
        f"Δ vs {label} [95% interval], percentage points, on the same "
        f"{split_name(results)} items: per item, "
        "correctness averaged over each method's seeds; the interval bootstraps the mean "
        "difference over patients; McNemar's exact p where both methods ran one seed.",
        "",
        head,
        "|" + "---|" * (2 + len(PAIRED_METRICS)),
    ]
    for method, cells in paired.items():
        row = [method, runs_label(results["runs"][method])]
        row += ["n/a" if cells[c] is None else cells[c].pp() for c, *_ in PAIRED_METRICS]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)
