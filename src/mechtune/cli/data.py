"""`mechtune data ...`: build, import and check benchmark and training data."""

from __future__ import annotations

import json
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mechtune.cli._common import StudySource, console, progress_bar, study_source
from mechtune.data.builders.common import BuildResult, TableSet, finish
from mechtune.data.builders.contextual import ContextualConfig, build_contextual
from mechtune.data.builders.paraphrase import ParaphraseConfig, build_paraphrase
from mechtune.data.builders.polarity import PolarityConfig, build_polarity
from mechtune.data.check import (
    DEFAULT_MAX_DISAGREEMENT,
    DEFAULT_MAX_UNCERTAIN,
    DEFAULT_SAMPLE,
    PolarityCheckFailed,
    check_dataset,
)
from mechtune.data.importers import read_nast_benchmark, read_psf_records
from mechtune.data.io import MANIFEST_NAME
from mechtune.data.polarity_check import PolarityReport, clinical_available
from mechtune.data.recipe import recipe_text
from mechtune.data.sources.base import DEFAULT_MAX_MISSING, ImageStudySource
from mechtune.data.verify import verify_folder
from mechtune.errors import DataError, MissingExtraError

app = typer.Typer(help="Build, import and check benchmark and training data.", no_args_is_help=True)
build_app = typer.Typer(
    help="Build datasets from a label CSV or the default synthetic studies. "
    "With no sub-command, builds all three kinds into OUT/{polarity,contextual,paraphrase}."
)
import_app = typer.Typer(
    help="Validate external benchmark files and convert them.", no_args_is_help=True
)
app.add_typer(build_app, name="build")
app.add_typer(import_app, name="import")


class Fmt(str, Enum):
    parquet = "parquet"
    jsonl = "jsonl"


class LabelTable(str, Enum):
    chexpert = "chexpert"
    negbio = "negbio"


class Uncertain(str, Enum):
    skip = "skip"
    present = "present"
    absent = "absent"


OutOpt = Annotated[Path, typer.Option("--out", "-o", help="Output folder.")]
LabelsOpt = Annotated[
    Path | None,
    typer.Option(help="CheXpert or MIMIC-CXR-JPG label CSV alone; default: synthetic studies."),
]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data",
        help="Imaging studies: a MIMIC-CXR-JPG or CheXpert folder, a manifest (CSV/JSONL), "
        "or a saved phantom world; labels, splits and reports come from it.",
    ),
]
MaxMissingOpt = Annotated[
    float,
    typer.Option(
        help="With --data: the largest share of missing or unreadable images tolerated "
        "(with --skip-bad); more fails the run.",
        min=0.0,
        max=1.0,
    ),
]
AllFrontalOpt = Annotated[
    bool,
    typer.Option(
        "--all-frontal",
        help="With a MIMIC or CheXpert --data folder: every frontal image is an item "
        "(sharing its study's labels), not only the first PA, else AP.",
    ),
]
LabelTableOpt = Annotated[
    LabelTable,
    typer.Option(help="With a MIMIC --data folder: which label table to read."),
]
ReportFactsOpt = Annotated[
    bool,
    typer.Option(
        "--report-facts/--no-report-facts",
        help="With --data: read side, zone and size from the reports (needs the `clinical` "
        "extra); labels still decide existence.",
    ),
]
NOpt = Annotated[int, typer.Option("--n", help="Number of synthetic studies.", min=1)]
SeedOpt = Annotated[int, typer.Option(help="Random seed: the same seed gives the same bytes.")]
FmtOpt = Annotated[Fmt, typer.Option("--format", help="Output table format.")]
UncertainOpt = Annotated[
    Uncertain, typer.Option(help="What a -1.0 (uncertain) label means: skip it, present or absent.")
]
SkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad", help="Skip malformed rows (and report their count).")
]
CheckOpt = Annotated[
    bool,
    typer.Option(
        "--check/--no-check",
        help="Run the independent polarity check (needs the `clinical` extra).",
    ),
]
MaxDisOpt = Annotated[
    float,
    typer.Option(help="Fail when the polarity disagreement rate exceeds this.", min=0.0, max=1.0),
]
PrintRecipeOpt = Annotated[
    bool,
    typer.Option(
        "--print-recipe",
        help="Print the exact command (every option resolved) and the versions that "
        "reproduce this build, then exit without building.",
    ),
]
MaxUncOpt = Annotated[
    float,
    typer.Option(
        help="Fail when the share of mentions the polarity check reads as uncertain exceeds this.",
        min=0.0,
        max=1.0,
    ),
]


def reader_options(max_missing: float, all_frontal: bool, label_table: LabelTable) -> dict:
    """The --data reader options that differ from their defaults (a layout refuses an
    option it does not take, so only what the user changed is passed on)."""
    options: dict[str, Any] = {}
    if max_missing != DEFAULT_MAX_MISSING:
        options["max_missing"] = max_missing
    if all_frontal:
        options["all_frontal"] = True
    if label_table is not LabelTable.chexpert:
        options["labels"] = label_table.value
    return options


def report_table(title: str, result: BuildResult) -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for split in ("train", "val", "test"):
        table.add_column(split, justify="right")
    for name, info in result.counts.get("tables", {}).items():
        by = info["by_split"]
        table.add_row(
            name, str(info["rows"]), *(str(by.get(s, 0)) for s in ("train", "val", "test"))
        )
    return table


def print_check(report: PolarityReport, threshold: float, max_uncertain: float) -> None:
    status = "[green]passed[/]" if report.passes(threshold, max_uncertain) else "[red]FAILED[/]"
    console.print(
        f"polarity check {status}: {report.n_texts} sentences, {report.n_mentions} mentions; "
        f"disagreement {report.disagreement_rate:.2%} (limit {threshold:.2%}), "
        f"uncertain {report.uncertain} = {report.uncertain_rate:.2%} "
        f"(limit {max_uncertain:.2%}), unmatched {report.unmatched}"
    )


def check_table(title: str, counts: dict[str, dict[str, int]]) -> Table:
    """One row per family (or labelled polarity): counts and the two rates."""
    table = Table(title, "agree", "disagree", "uncertain", "unmatched", "disagree%", "uncertain%")
    for key, c in sorted(counts.items()):
        decided = c.get("agree", 0) + c.get("disagree", 0)
        matched = decided + c.get("uncertain", 0)
        table.add_row(
            key,
            *(str(c.get(k, 0)) for k in ("agree", "disagree", "uncertain", "unmatched")),
            f"{c.get('disagree', 0) / decided:.1%}" if decided else "-",
            f"{c.get('uncertain', 0) / matched:.1%}" if matched else "-",
        )
    return table


def run_check(
    out: Path,
    enabled: bool,
    threshold: float,
    max_uncertain: float = DEFAULT_MAX_UNCERTAIN,
    sample: int = DEFAULT_SAMPLE,
) -> None:
    """Run the polarity check after a build; a missing extra is reported, not hidden."""
    if not enabled:
        console.print(f"{out}: polarity check disabled (--no-check)")
        return
    if not clinical_available():
        console.print(
            f"[yellow]{out}: polarity check skipped: medspacy is not installed "
            "(pip install 'mechtune[clinical]')[/]"
        )
        return
    try:
        report = check_dataset(
            out,
            sample_rows=sample,
            max_disagreement=threshold,
            max_uncertain=max_uncertain,
            track=progress_bar,
        )
    except PolarityCheckFailed as exc:
        print_check(exc.report, threshold, max_uncertain)
        raise
    print_check(report, threshold, max_uncertain)


def _build(
    kind: str, source: StudySource | ImageStudySource, out: Path, seed: int, fmt: Fmt
) -> BuildResult:
    with progress_bar(f"{kind}: {out}", len(source)) as advance:
        source_info: dict[str, Any] = source.description
        if kind == "polarity":
            return build_polarity(
                source,
                out,
                PolarityConfig(seed=seed),
                fmt=fmt.value,
                progress=advance,
                source=source_info,
                split_of=source.split_of,
            )
        if kind == "contextual":
            return build_contextual(
                source,
                out,
                ContextualConfig(seed=seed),
                fmt=fmt.value,
                progress=advance,
                source=source_info,
                split_of=source.split_of,
            )
        return build_paraphrase(
            source,
            out,
            ParaphraseConfig(seed=seed),
            fmt=fmt.value,
            progress=advance,
            source=source_info,
            split_of=source.split_of,
        )


def build_kinds(
    kinds: list[str],
    out: Path,
    source: StudySource | ImageStudySource,
    seed: int,
    fmt: Fmt,
    check: bool,
    max_disagreement: float,
    nested: bool,
    max_uncertain: float = DEFAULT_MAX_UNCERTAIN,
) -> dict[str, BuildResult]:
    results = {}
    for kind in kinds:
        target = out / kind if nested else out
        results[kind] = _build(kind, source, target, seed, fmt)
        console.print(report_table(f"{kind} -> {target}", results[kind]))
        run_check(target, check, max_disagreement, max_uncertain)
    return results


@build_app.callback(invoke_without_command=True)
def build_all(
    ctx: typer.Context,
    out: Annotated[Path | None, typer.Option("--out", "-o", help="Output folder.")] = None,
    labels: LabelsOpt = None,
    data: DataOpt = None,
    report_facts: ReportFactsOpt = True,
    max_missing: MaxMissingOpt = DEFAULT_MAX_MISSING,
    all_frontal: AllFrontalOpt = False,
    label_table: LabelTableOpt = LabelTable.chexpert,
    n: NOpt = 2000,
    seed: SeedOpt = 0,
    fmt: FmtOpt = Fmt.parquet,
    uncertain: UncertainOpt = Uncertain.skip,
    skip_bad: SkipBadOpt = False,
    check: CheckOpt = True,
    max_disagreement: MaxDisOpt = DEFAULT_MAX_DISAGREEMENT,
    max_uncertain: MaxUncOpt = DEFAULT_MAX_UNCERTAIN,
    print_recipe: PrintRecipeOpt = False,
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if out is None:
        raise typer.BadParameter("missing option '--out'", param_hint="--out")
    if print_recipe:
        typer.echo(recipe_text(ctx))
        return
    source = study_source(
        labels,
        n,
        seed,
        uncertain.value,
        skip_bad,
        data,
        report_facts,
        reader_options(max_missing, all_frontal, label_table),
    )
    build_kinds(
        ["polarity", "contextual", "paraphrase"],
        out,
        source,
        seed,
        fmt,
        check,
        max_disagreement,
        nested=True,
        max_uncertain=max_uncertain,
    )


BUILD_HELP = {
    "polarity": "Polarity-controlled MCQ pairs (MedNega-CXR style): negated vs affirmative wording.",
    "contextual": "Attribute-level counterfactual claim sets and single negated captions.",
    "paraphrase": "Yes/no questions with 4-6 labelled, meaning-preserving paraphrases each.",
}


def _build_command(kind: str) -> Callable[..., None]:
    """One `data build KIND` command; the three kinds share every option."""

    def command(
        ctx: typer.Context,
        out: OutOpt,
        labels: LabelsOpt = None,
        data: DataOpt = None,
        report_facts: ReportFactsOpt = True,
        max_missing: MaxMissingOpt = DEFAULT_MAX_MISSING,
        all_frontal: AllFrontalOpt = False,
        label_table: LabelTableOpt = LabelTable.chexpert,
        n: NOpt = 2000,
        seed: SeedOpt = 0,
        fmt: FmtOpt = Fmt.parquet,
        uncertain: UncertainOpt = Uncertain.skip,
        skip_bad: SkipBadOpt = False,
        check: CheckOpt = True,
        max_disagreement: MaxDisOpt = DEFAULT_MAX_DISAGREEMENT,
        max_uncertain: MaxUncOpt = DEFAULT_MAX_UNCERTAIN,
        print_recipe: PrintRecipeOpt = False,
    ) -> None:
        if print_recipe:
            typer.echo(recipe_text(ctx))
            return
        source = study_source(
            labels,
            n,
            seed,
            uncertain.value,
            skip_bad,
            data,
            report_facts,
            reader_options(max_missing, all_frontal, label_table),
        )
        build_kinds(
            [kind],
            out,
            source,
            seed,
            fmt,
            check,
            max_disagreement,
            nested=False,
            max_uncertain=max_uncertain,
        )

    command.__doc__ = BUILD_HELP[kind]
    return command


for _kind in BUILD_HELP:
    build_app.command(_kind)(_build_command(_kind))


def _import(
    read: Callable[..., tuple[list[Any], Any]],
    path: Path,
    skip_bad: bool,
    kind: str,
    table: str,
    out: Path,
    fmt: Fmt,
) -> None:
    """Read and validate an external file, write it as a table with a manifest, report."""
    records, report = read(path, skip_bad=skip_bad)
    with TableSet(out, [table], fmt.value) as tables:
        for record in records:
            tables.write(table, record)
    result = BuildResult(out, kind, tables.files, {"tables": tables.counts()})
    finish(result, config={"imported": True}, extra={"source": {"import": report.to_dict()}})
    console.print(
        f"kept {report.rows_kept} of {report.rows_read} records; skipped {report.skipped}"
    )
    console.print(report_table(f"imported -> {out}", result))


@import_app.command("nast")
def import_nast(
    path: Annotated[Path, typer.Argument(help="NAST benchmark JSON or JSONL file.")],
    out: OutOpt,
    fmt: FmtOpt = Fmt.parquet,
    skip_bad: SkipBadOpt = False,
    check: CheckOpt = True,
    max_disagreement: MaxDisOpt = DEFAULT_MAX_DISAGREEMENT,
    max_uncertain: MaxUncOpt = DEFAULT_MAX_UNCERTAIN,
) -> None:
    """Validate a NAST (MedNega-CXR) benchmark file and convert it to an mcq table."""
    _import(read_nast_benchmark, path, skip_bad, "polarity", "mcq", out, fmt)
    run_check(out, check, max_disagreement, max_uncertain)


@import_app.command("psf")
def import_psf(
    path: Annotated[Path, typer.Argument(help="PSF-Med style paraphrase JSON or JSONL file.")],
    out: OutOpt,
    fmt: FmtOpt = Fmt.parquet,
    skip_bad: SkipBadOpt = False,
) -> None:
    """Validate PSF-Med style paraphrase records and convert them to a paraphrases table."""
    _import(read_psf_records, path, skip_bad, "paraphrase", "paraphrases", out, fmt)


@app.command("check")
def check_cmd(
    path: Annotated[Path, typer.Argument(help="A data folder, or a folder of data folders.")],
    sample: Annotated[
        int, typer.Option(help="Rows to check per table (0: all).", min=0)
    ] = DEFAULT_SAMPLE,
    max_disagreement: MaxDisOpt = DEFAULT_MAX_DISAGREEMENT,
    max_uncertain: MaxUncOpt = DEFAULT_MAX_UNCERTAIN,
) -> None:
    """Run the polarity check on built data and print statistics: per family and per
    labelled polarity, how many mentions agree, disagree, or read as uncertain."""
    folders = (
        [path]
        if (path / MANIFEST_NAME).is_file()
        else sorted(p.parent for p in path.glob(f"*/{MANIFEST_NAME}"))
    )
    if not folders:
        raise DataError(f"{path}: no {MANIFEST_NAME} here or one level down; nothing to check")
    if not clinical_available():
        raise MissingExtraError(
            "the polarity check needs medspacy: pip install 'mechtune[clinical]'"
        )
    failed = False
    for folder in folders:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
        console.print(f"[bold]{folder}[/] ({manifest['kind']})")
        try:
            report = check_dataset(
                folder,
                sample_rows=sample or None,
                max_disagreement=max_disagreement,
                max_uncertain=max_uncertain,
            )
        except PolarityCheckFailed as exc:
            report, failed = exc.report, True
        print_check(report, max_disagreement, max_uncertain)
        console.print(check_table("family", report.by_family))
        console.print(check_table("label", report.by_polarity))
    if failed:
        raise typer.Exit(1)


@app.command("verify")
def verify_cmd(
    path: Annotated[Path, typer.Argument(help="A built data folder (holding manifest.json).")],
    expect: Annotated[
        str,
        typer.Option(
            "--expect",
            help="A published manifest (file or folder) or the sha256 of the whole "
            "content (the manifest's canonical_hash).",
        ),
    ],
) -> None:
    """Recompute the folder's canonical content hashes and compare with a published
    manifest or hash: exit 0 on a match; on a mismatch, exit 1 naming the first table
    and row group (with its rows) that differ."""
    result = verify_folder(path, expect)
    if not result.ok:
        typer.echo(f"MISMATCH: {result.message}", err=True)
        raise typer.Exit(1)
    typer.echo(f"OK: {result.message}")


@app.command("padchest-manifest")
def padchest_manifest_cmd(
    csv_path: Annotated[Path, typer.Argument(help="The PadChest labels CSV (plain or .gz).")],
    images: Annotated[
        Path, typer.Option("--images", help="Folder of PadChest PNGs (flat, or <ImageDir>/).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Manifest CSV to write.")],
    skip_bad: SkipBadOpt = False,
) -> None:
    """Write a manifest CSV for PadChest: one frontal image per study, labels mapped to
    CheXpert's conditions (presence-only; see docs/data.md). Read it with `--data FILE`."""
    from mechtune.data.sources.padchest import padchest_manifest

    report = padchest_manifest(csv_path, images, out, skip_bad=skip_bad)
    console.print(report.summary())
    unmapped = report.notes["unmapped_labels"]
    if unmapped:
        shown = ", ".join(f"{k} {v}" for k, v in list(unmapped.items())[:10])
        console.print(f"unmapped labels ({len(unmapped)}): {shown}")
    if report.notes["missing_images"]:
        console.print(
            f"[yellow]{report.notes['missing_images']} images not found under {images}[/]"
        )
    console.print(f"wrote {out}")
