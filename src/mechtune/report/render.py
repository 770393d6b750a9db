"""``mechtune report RUN_DIR``: read a run folder and write one self-contained
``report.html`` (inline CSS, figures embedded as base64, a content security policy that
lets the page fetch nothing), from the Jinja2 template in ``templates/``.

The page checks itself when it loads: every figure must decode and every table must have
rows. It records the result on ``<body data-render=...>`` and logs each failure to the
console, which is what the browser test reads (``tests/report/test_browser.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import jinja2

import mechtune
from mechtune.data.io import atomic_write_text, dumps_json
from mechtune.errors import DataError
from mechtune.report import sections as read
from mechtune.report.model import Report, Section, interval_text
from mechtune.report.provenance import read_run_record

REPORT_FILE = "report.html"
# folders never searched: image caches, checkpoints, SAE weights, images, trackers
SKIP_DIRS = frozenset({"cache", "saes", "files", "tracking", "adapter", "peft", "wandb"})
MAX_DEPTH = 4
ORDER = (
    "negation-eval",
    "trace",
    "negation-study",
    "paraphrase-eval",
    "paraphrase",
    "train",
    "data",
)


def _walk(root: Path) -> list[Path]:
    """Folders under ``root`` (itself included) up to :data:`MAX_DEPTH`, in sorted order,
    without :data:`SKIP_DIRS` and checkpoint folders (``step_*``)."""
    found: list[Path] = []
    for here, dirs, _ in os.walk(root):
        path = Path(here)
        depth = len(path.relative_to(root).parts)
        dirs[:] = sorted(
            d
            for d in dirs
            if d not in SKIP_DIRS and not d.startswith("step_") and depth < MAX_DEPTH
        )
        found.append(path)
    return sorted(found)


def _inside_study(folder: Path) -> bool:
    """A study's own run (``STUDY/runs/<method>/seed<k>``) or trace (``STUDY/trace``)."""
    if folder.parent.parent.name == "runs" and (folder.parents[2] / "results.json").is_file():
        return True
    return folder.name == "trace" and (folder.parent / "results.json").is_file()


def _headline(sections: list[Section], root: Path) -> list[str]:
    """One line per study: the comparison the study exists for."""
    lines = []
    for s in sections:
        if s.id.startswith("negation-eval"):
            report = json.loads((root / s.path / "eval.json").read_text(encoding="utf-8"))
            held = report.get("claims", {}).get("heldout", {})
            gap = held.get("affirmative_negation_gap")
            by = held.get("accuracy_by_polarity", {})
            if gap and by.get("affirmative") and by.get("negated"):
                lines.append(
                    f"{s.title.split(': ', 1)[-1]}: held-out claim accuracy "
                    f"{interval_text(by['affirmative'])}% when the correct claim is "
                    f"affirmative, {interval_text(by['negated'])}% when it is negated: a gap "
                    f"of {interval_text(gap)} pp."
                )
        if s.id == "negation-study":
            from mechtune.pipelines.negation_report import paired_comparisons

            results = json.loads((root / s.path / "results.json").read_text(encoding="utf-8"))
            for method, cells in paired_comparisons(results).items():
                diff = cells.get("claim acc")
                if diff is not None and method != "zero-shot":
                    lines.append(
                        f"Negation study: {method} minus uniform LoRA on the same test claim "
                        f"sets, held-out claim accuracy (pp): {diff.pp()}."
                    )
        if s.id == "paraphrase-study":
            from mechtune.pipelines.paraphrase_report import (
                paired_rows,
                random_runs,
                sae_minus_random,
            )

            results = json.loads((root / s.path / "results.json").read_text(encoding="utf-8"))
            drawn = random_runs(results)
            for label, key, cells in paired_rows(results):
                diff = cells.get("baseline")
                # the random draws one by one stay in the table; the control's line follows
                if diff is not None and key not in ("baseline", "clamping", *drawn):
                    lines.append(
                        f"Paraphrase study: {label} minus the baseline on the same questions, "
                        f"flip rate (pp): {diff.pp()}."
                    )
            control = sae_minus_random(results)
            if control is not None:
                lines.append(
                    "Paraphrase study: the SAE range minus the mean of "
                    f"{len(drawn)} random ranges of its width on the same "
                    f"questions, flip rate (pp): {control.pp()}."
                )
    return lines


def collect(run_dir: str | Path) -> Report:
    """Read every known output under ``run_dir`` into a :class:`Report`. A file that
    cannot be read becomes a listed problem, not a silent omission.

    Raises :class:`~mechtune.errors.DataError` when ``run_dir`` is not a folder or holds
    nothing to report."""
    root = Path(run_dir)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (mechtune report reads a run folder)")
    problems: list[str] = []
    sections: list[Section] = []
    manifests: list[Path] = []
    figures = root / "figures"
    extra = [figures] if figures.is_dir() else []

    def attempt(build: Callable[[], Section | None], what: Path) -> None:
        try:
            section = build()
        except (OSError, ValueError, KeyError, TypeError, IndexError, DataError) as err:
            problems.append(f"{what.relative_to(root)}: could not be read ({err!r})")
            return
        if section is None:
            return
        nested = read_run_record(root / section.path) if section.path != "." else None
        if nested is not None and nested.get("command"):
            section.facts.insert(0, ("command", str(nested["command"])))
        sections.append(section)

    for folder in _walk(root):
        results, evaluation = folder / "results.json", folder / "eval.json"
        if results.is_file():
            try:
                keys = set(json.loads(results.read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:
                problems.append(f"{results.relative_to(root)}: not JSON ({err})")
                keys = set()
            if {"baseline", "analysis"} <= keys:
                attempt(partial(read.paraphrase_study_section, folder, root), results)
            elif {"runs", "trace"} <= keys:
                attempt(partial(read.negation_study_section, folder, root), results)
        if evaluation.is_file():
            try:
                keys = set(json.loads(evaluation.read_text(encoding="utf-8")))
            except (OSError, ValueError) as err:
                problems.append(f"{evaluation.relative_to(root)}: not JSON ({err})")
                keys = set()
            if "claims" in keys:
                attempt(partial(read.negation_eval_section, folder, root, extra), evaluation)
            elif "metrics" in keys:
                attempt(partial(read.paraphrase_eval_section, folder, root), evaluation)
        if folder != root and _inside_study(folder):
            continue
        if (folder / "train.json").is_file():
            attempt(partial(read.train_section, folder, root), folder / "train.json")
        if (folder / "trace.json").is_file() and not results.is_file():
            attempt(partial(read.trace_section, folder, root), folder / "trace.json")
        if (folder / "manifest.json").is_file():
            manifests.append(folder / "manifest.json")
    if manifests:
        attempt(partial(read.data_section, manifests, root, extra), root)
    run = read_run_record(root)
    if not sections and run is None:
        raise DataError(
            f"{root}: nothing to report (no results.json, eval.json, train.json, trace.json, "
            "manifest.json or provenance.json under it)"
        )
    sections.sort(key=lambda s: next((i for i, k in enumerate(ORDER) if s.id.startswith(k)), 99))
    timings: list[tuple[str, str]] = []
    if (root / "timings.json").is_file():
        timings = [
            (k, f"{v:.1f} s")
            for k, v in json.loads((root / "timings.json").read_text(encoding="utf-8")).items()
        ]
    timings += [t for s in sections for t in s.timings]
    title = f"mechtune report: {root.resolve().name}"
    return Report(
        title=title,
        run_dir=str(root),
        run=run,
        sections=sections,
        headline=_headline(sections, root),
        timings=timings,
        problems=problems,
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("mechtune.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"], default=True),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["tojson_pretty"] = lambda v: dumps_json(v, indent=2, sort_keys=True)
    return env


def render(report: Report) -> str:
    """The report as one HTML page (``templates/report.html.j2``)."""
    template = _environment().get_template("report.html.j2")
    return template.render(report=report, version=mechtune.__version__)


def write_report(run_dir: str | Path, out: str | Path | None = None) -> tuple[Path, Report]:
    """Collect ``run_dir`` and write the page atomically to ``out`` (default
    ``run_dir/report.html``). Returns the path and the report (its ``problems`` list
    what could not be read)."""
    report = collect(run_dir)
    path = Path(out) if out is not None else Path(run_dir) / REPORT_FILE
    atomic_write_text(path, render(report))
    return path, report


def report_after(out: Path, log: Callable[[str], Any]) -> Path | None:
    """What every study and eval command does at its end: write ``out/report.html`` and
    log its path (and any problem). Returns the path."""
    path, report = write_report(out)
    for problem in report.problems:
        log(f"report: {problem}")
    log(f"report: {path}")
    return path


__all__ = ["REPORT_FILE", "collect", "render", "report_after", "write_report"]
