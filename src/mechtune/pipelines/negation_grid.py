"""A grid of negation studies from one recipe: every cell of ``grid``, one table.

A recipe's ``grid: {loop.beta: [0.5, 1, 2], alpha_norm: [minmax, rank]}`` crosses the
listed settings (:func:`~mechtune.pipelines.negation_config.grid_cells`). Each cell is a
whole study (every method x seed, the reference method included) in
``OUT/cells/<cell>/``; :func:`run_negation_grid` writes ``OUT/grid.json`` and
``OUT/grid.md``: per cell and method, the held-out claim accuracy and the paired
difference from the reference method (uniform LoRA) of the same cell on the same items,
with its 95% patient-bootstrap interval.

Resume: a cell whose ``results.json`` holds this cell's config is finished and read back,
not rerun; an unfinished cell reruns as a study does, each run resuming from its
checkpoints. So an interrupted grid loses at most the steps after each run's last
checkpoint. The model, image embeddings and trace are computed once for every cell when
no grid key changes them (:data:`~mechtune.pipelines.negation_study.INPUT_KEYS`), and a
run that several cells would train identically (the same
:func:`~mechtune.pipelines.negation_study.run_key`: uniform LoRA in cells that differ only
in beta or alpha, for one) is trained once, in the first cell that needs it; the other
cells reuse its report (``trained_in`` names its folder).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mechtune.data.io import atomic_write_text, dumps_json, to_jsonable, write_json
from mechtune.data.sources.base import ImageStudySource
from mechtune.pipelines.negation import Log
from mechtune.pipelines.negation_config import (
    NegationStudyConfig,
    RunOptions,
    grid_cells,
    joined_keys,
)
from mechtune.pipelines.negation_report import REFERENCE_METHOD, runs_label
from mechtune.pipelines.negation_study import (
    INPUT_KEYS,
    StudyInputs,
    run_negation_study,
    study_inputs,
)
from mechtune.progress import Tracker
from mechtune.train.tracking import Tracker as RunTracker

CELLS = "cells"
# (column, key of results["paired"][method]) of the grid table's paired columns
GRID_PAIRED = (
    ("Δ claim acc", "claim acc"),
    ("Δ negated acc", "negated acc"),
    ("Δ affirmative acc", "affirmative acc"),
)


def finished_cell(folder: Path, config: NegationStudyConfig) -> dict[str, Any] | None:
    """The results of ``folder`` when it holds a finished study of exactly ``config``
    (its ``results.json`` records the same config), else None."""
    path = folder / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:  # a torn or foreign file: the cell reruns and rewrites it
        return None
    wanted = json.loads(dumps_json(config.to_dict()))
    return results if results.get("config") == wanted else None


def run_negation_grid(
    recipe: NegationStudyConfig,
    source: ImageStudySource,
    out: str | Path,
    options: RunOptions | None = None,
    log: Log | None = None,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
) -> dict[str, Any]:
    """Run every cell of ``recipe.grid`` (module docstring) into ``OUT/cells/<cell>``,
    skipping finished cells; write ``OUT/grid.json`` and ``OUT/grid.md``. With
    ``tracker``, each training run is a session ``<cell>/<method>/<run>``. Returns the
    grid record (:func:`grid_record`). A recipe without a grid is one cell, ``study``."""
    out = Path(out)
    options = options or RunOptions()
    say = log or (lambda _message: None)
    cells = grid_cells(recipe)
    one_trace = recipe.grid is None or not {
        part for key in recipe.grid for part in joined_keys(key)
    } & set(INPUT_KEYS)
    inputs: StudyInputs | None = None
    studies: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    finished = [finished_cell(out / CELLS / name, config) for name, _, config in cells]
    # the runs every finished cell trained, by run key: the same run is trained once
    shared = {
        r["run_key"]: r
        for results in finished
        if results is not None
        for reports in results["runs"].values()
        for r in reports
        if "run_key" in r and "trained_in" in r
    }
    for number, ((name, settings, config), results) in enumerate(
        zip(cells, finished, strict=True), 1
    ):
        folder = out / CELLS / name
        if results is not None:
            say(f"cell {number}/{len(cells)} {name}: finished, read from {folder}")
        else:
            say(f"cell {number}/{len(cells)} {name} ...")
            if inputs is None or not one_trace:
                inputs = study_inputs(config, source, options, say, track)
            results = run_negation_study(
                config,
                source,
                folder,
                options,
                say,
                track,
                tracker,
                inputs=inputs,
                run_prefix=f"{name}/",
                shared=shared,
            )
        studies.append((name, settings, results))
    record = grid_record(recipe, studies)
    write_json(out / "grid.json", record)
    atomic_write_text(out / "grid.md", grid_table(record) + "\n")
    return record


def _mean_value(reports: list[dict[str, Any]], path: tuple[str, ...]) -> float | None:
    """The mean over ``reports`` of the estimate at ``path`` (None when a run lacks it)."""
    values = []
    for report in reports:
        node: Any = report
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        value = node.get("value") if isinstance(node, dict) else None
        if value is None:
            return None
        values.append(float(value))
    return sum(values) / len(values) if values else None


def _mean_claim_accuracy(reports: list[dict[str, Any]]) -> float | None:
    return _mean_value(reports, ("claims", "heldout", "claim_accuracy"))


# (column, report path) of the grid table's free-form columns: the "prefer No" shortcut
# shows there (issue 18), not on the template sets
GRID_FREEFORM = (
    ("free-form aff", ("freeform", "accuracy_by_polarity", "affirmative")),
    ("free-form neg", ("freeform", "accuracy_by_polarity", "negated")),
)


def grid_record(
    recipe: NegationStudyConfig, studies: list[tuple[str, dict[str, Any], dict[str, Any]]]
) -> dict[str, Any]:
    """``grid.json``: the grid, the reference method and, per cell (``name``,
    ``settings``, ``folder``), per method: its runs, mean held-out claim accuracy, mean
    free-form affirmative and negated accuracy (``freeform``: :data:`GRID_FREEFORM`) and the
    paired differences from the reference (``paired``: the cell's ``results["paired"]``
    entries of :data:`GRID_PAIRED`; None for the reference itself or where there is
    nothing to compare)."""
    cells = []
    for name, settings, results in studies:
        paired = results.get("paired", {})
        methods = {}
        for method, reports in results["runs"].items():
            diffs = paired.get(method, {})
            methods[method] = {
                "runs": runs_label(reports),
                "claim_accuracy": _mean_claim_accuracy(reports),
                "freeform": {c: _mean_value(reports, path) for c, path in GRID_FREEFORM},
                "paired": None
                if method == REFERENCE_METHOD
                else {key: diffs.get(key) for _, key in GRID_PAIRED},
            }
        cells.append(
            {
                "name": name,
                "settings": to_jsonable(settings),
                "folder": f"{CELLS}/{name}",
                "methods": methods,
            }
        )
    return {
        "grid": to_jsonable(recipe.to_dict()["grid"]),
        "reference": REFERENCE_METHOD,
        "eval_split": recipe.eval_split,
        "cells": cells,
    }


def _pp(diff: dict[str, Any] | None) -> str:
    if not diff:
        return "n/a"
    cell = f"{100 * diff['value']:+.1f} [{100 * diff['low']:+.1f}, {100 * diff['high']:+.1f}]"
    if diff.get("mcnemar_p") is not None:
        cell += f", McNemar p = {diff['mcnemar_p']:.2g}"
    return cell


def grid_table(record: dict[str, Any]) -> str:
    """Markdown of a grid record: one row per cell and method, the cell's settings as
    columns, held-out claim accuracy (%), the paired differences from the reference
    method of the same cell (pp, 95% interval) and free-form affirmative and negated
    accuracy (%, mean over the runs)."""
    keys = [part for key in record["grid"] or {} for part in joined_keys(key)]
    reference = record["reference"]
    columns = [*keys, "method", "seeds", "claim acc", *(c for c, _ in GRID_PAIRED)]
    columns += [c for c, _ in GRID_FREEFORM]
    lines = [
        f"Grid of {len(record['cells'])} cells, {record['eval_split']} patients, held-out "
        f"phrasing families. Δ: minus {reference} of the same cell on the same items, "
        "percentage points [95% patient-bootstrap interval]; per item, correctness "
        "averaged over each method's runs.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for cell in record["cells"]:
        for method, row in cell["methods"].items():
            accuracy = row["claim_accuracy"]
            values = [str(cell["settings"].get(k)) for k in keys]
            values += [method, row["runs"], "n/a" if accuracy is None else f"{100 * accuracy:.1f}"]
            if row["paired"] is None:
                values += ["(reference)"] * len(GRID_PAIRED)
            else:
                values += [_pp(row["paired"].get(key)) for _, key in GRID_PAIRED]
            freeform = row.get("freeform") or {}
            values += [
                "n/a" if freeform.get(c) is None else f"{100 * freeform[c]:.1f}"
                for c, _ in GRID_FREEFORM
            ]
            lines.append("| " + " | ".join(values) + " |")
    return "\n".join(lines)
