"""`mechtune sae train|analyze`: sparse autoencoders on a yes/no VLM's residual stream.

Models (``--model``): a yes/no VLM spec (:func:`mechtune.models.vlm_spec.load_yes_no_vlm`):
``phantom:vqa`` (the shipped phantom VQA model) or ``hf:DIR`` / ``hf:HUB_ID`` (a
transformers image-text-to-text model such as MedGemma, read by
:class:`mechtune.models.hf_vqa.HFYesNoVLM`; never remote code), loaded on ``--device`` with
its weights in ``--dtype``.

Images and questions:

- ``--data DIR``: an image-study source (any layout :func:`mechtune.data.sources.open_source`
  reads: a saved phantom world, ``mechtune sim export`` output, MIMIC-CXR-JPG, CheXpert, a
  manifest). Without ``--questions``, the questions are the source's own PSF-Med style
  paraphrase sets of ``--split`` (default train), seeded by ``--seed``; with it, each
  record's ``image_ref`` (or ``study_id``) must name an item's study id or image reference.
  The default SAE corpus is the reports of the source's train split.
- Without ``--data``: ``--questions`` records whose ``image_ref`` is an image file path
  relative to ``--image-root`` (default: the questions file's folder).

Questions (``--questions``): PSF-Med style records, JSONL or a JSON array
(:func:`mechtune.data.importers.read_psf_records`). Options that nothing would read
(``--image-root`` with ``--data``; ``--split`` without ``--data`` or with ``--questions``)
are refused.

SAEs (``sae analyze --saes DIR``): one folder per layer in DIR, named ``layer_<L>`` (what
``sae train`` writes) or ``layer_<L>_<variant>`` as Gemma Scope 2 names them
(``layer_17_width_16k_l0_medium``), in any layout :func:`mechtune.interp.sae.load_sae`
reads. The layer is the folder's and must agree with the SAE's own metadata; two folders
for one layer are refused unless ``--sae-variant`` picks one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mechtune.cli._common import console
from mechtune.data.importers import DataFormatError, read_psf_records
from mechtune.data.io import write_json
from mechtune.data.schema import ImageQuestion, ParaphraseSet, Study
from mechtune.errors import ConfigError, DataError
from mechtune.models.yes_no import YesNoVLM

app = typer.Typer(help="Sparse autoencoders: train them, find where flips live.")

MODEL_HELP = "A yes/no VLM spec: phantom:vqa, or hf:DIR (a saved model such as MedGemma)."
QUESTIONS_HELP = "PSF-Med style records (JSONL or JSON array); default: the data's own."
DEFAULT_K = 16  # topk: features kept per token


class QuestionFileError(DataError):
    pass


@dataclass
class Questions:
    """A model, its image batch, and paraphrase sets bound to rows of that batch."""

    vlm: YesNoVLM
    images: Any
    sets: list[ImageQuestion]
    per_image: bool  # whether question states depend on the image
    corpus: list[str]  # extra in-domain text for SAE training
    source: dict[str, Any]


def _source_rows(
    sets: list[ParaphraseSet], items: list[Study], path: Path, data: Path
) -> tuple[list[ImageQuestion], list[Study]]:
    """Bind each set to an item of the source: its image reference (or, without one, its
    study id) must be an item's study id or image reference. Returns the sets with rows
    into the returned list of distinct items, in first-use order."""
    by_ref: dict[str, Study] = {}
    for study in items:
        by_ref.setdefault(study.study_id, study)
        if study.image_ref:
            by_ref.setdefault(study.image_ref, study)
    rows: dict[str, int] = {}
    used: list[Study] = []
    out = []
    for s in sets:
        ref = s.image_ref or s.study_id
        found = by_ref.get(ref)
        if found is None:
            raise QuestionFileError(
                f"{path}, question {s.question_id!r}: image {ref!r} is neither a study id nor "
                f"an image reference of --data {data}"
            )
        if found.study_id not in rows:
            rows[found.study_id] = len(used)
            used.append(found)
        out.append(ImageQuestion(s, rows[found.study_id]))
    return out, used


def _image_rows(
    sets: list[ParaphraseSet], root: Path, path: Path, mode: str
) -> tuple[list[ImageQuestion], list[Any]]:
    """Read each distinct image file once (``mode``: the model's) and bind every set to its
    image's row."""
    from mechtune.data.sources.base import read_image_file

    index: dict[str, int] = {}
    images: list[Any] = []
    out = []
    for s in sets:
        if not s.image_ref:
            raise QuestionFileError(
                f"{path}, question {s.question_id!r}: no image reference (image_ref, image, "
                "image_path or dicom_id); without --data each question needs one"
            )
        if s.image_ref not in index:
            file = root / s.image_ref
            try:
                images.append(read_image_file(file, mode))
            except DataError as exc:
                raise QuestionFileError(
                    f"{path}, question {s.question_id!r}: image {str(file)!r} cannot be read "
                    f"({exc})"
                ) from None
            index[s.image_ref] = len(images) - 1
        out.append(ImageQuestion(s, index[s.image_ref]))
    return out, images


def load_questions(
    model: str,
    questions: Path | None,
    *,
    data: Path | None,
    seed: int,
    split: str | None,
    heldout: bool = False,
    image_root: Path | None,
    skip_bad: bool,
    device: str = "cpu",
    dtype: str | None = None,
) -> Questions:
    """The model (on ``device``, weights in ``dtype``), its images and the paraphrase sets
    of a command; errors name the file and record.

    ``data``: an image-study source folder or file; its own paraphrase sets of ``split``
    (default train) when ``questions`` is None. ``image_root``: where image paths of
    ``questions`` are relative to, without ``data``. An option nothing would read is a
    ConfigError, checked before the model loads."""
    unread: dict[str, object] = (
        {"--image-root": image_root} if data is not None else {"--split": split}
    )
    if data is not None and questions is not None:
        unread["--split"] = split
    given = [option for option, value in unread.items() if value is not None]
    if given:
        why = "with --data" if data is not None else "without --data"
        if data is not None and questions is not None and given == ["--split"]:
            why = "with --questions (it picks the data's own questions)"
        raise ConfigError(f"{', '.join(given)} cannot be used {why}")
    if data is None and questions is None:
        raise ConfigError("give --data (an image-study source) or --questions (with images)")
    from mechtune.models.vlm_spec import load_yes_no_vlm

    vlm = load_yes_no_vlm(model, device=device, dtype=dtype)
    weights = next(vlm.module.parameters())
    source: dict[str, Any] = {
        "model": model,
        "device": str(weights.device),
        "dtype": str(weights.dtype).removeprefix("torch."),
    }
    records: list[ParaphraseSet] = []
    if questions is not None:
        try:
            records, report = read_psf_records(questions, skip_bad=skip_bad)
        except (DataFormatError, FileNotFoundError) as exc:
            raise QuestionFileError(str(exc)) from None
        skipped = sum(report.skipped.values())
        console.print(
            f"read {report.rows_read} records from {questions}: kept {report.rows_kept}, "
            f"skipped {skipped} {dict(report.skipped) if skipped else ''}"
        )
        if not records:
            raise QuestionFileError(f"{questions}: no usable question records")
        source["questions"] = report.to_dict()
    if data is None:
        assert questions is not None
        root = image_root if image_root is not None else questions.parent
        sets, pixels = _image_rows(records, root, questions, vlm.image_mode)
        source["images"] = {"root": str(root), "distinct": len(pixels)}
        return Questions(
            vlm, vlm.prepare_images(pixels), sets, vlm.states_depend_on_image, [], source
        )

    from mechtune.data.builders.paraphrase import image_paraphrase_sets
    from mechtune.data.sources import open_source

    study_source = open_source(data)
    console.print(study_source.report.summary())
    source["data"] = {"path": str(data), "layout": study_source.layout, "items": len(study_source)}
    if questions is not None:
        sets, used = _source_rows(records, study_source.studies(), questions, data)
    else:
        split = "train" if split is None else split
        used = study_source.split(split)
        sets = image_paraphrase_sets(enumerate(used), split, heldout=heldout, seed=seed)
        source["split"] = {"split": split, "heldout_families": heldout, "sets": len(sets)}
        if not sets:
            raise QuestionFileError(f"--data {data}: no {split}-split studies with definite labels")
    train = study_source.split("train")
    corpus = sorted({study_source.report_text(s) or "" for s in train} - {""})
    pixels = [study_source.load_image(s, vlm.image_mode) for s in used]
    source["images"] = {"distinct": len(pixels)}
    return Questions(
        vlm, vlm.prepare_images(pixels), sets, vlm.states_depend_on_image, corpus, source
    )


def _layers(text: str | None, n_layers: int) -> list[int]:
    if text is None:
        return list(range(n_layers))
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise QuestionFileError(f"--layers {text!r}: expected comma-separated integers") from None
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise QuestionFileError(f"--layers {text!r}: the model has layers 0..{n_layers - 1}")
    return layers


# Options shared by both commands.
ModelOpt = Annotated[str, typer.Option(help=MODEL_HELP)]
QuestionsOpt = Annotated[Path | None, typer.Option(help=QUESTIONS_HELP)]
DataOpt = Annotated[
    Path | None,
    typer.Option(help="An image-study source (world, export, MIMIC-CXR-JPG, CheXpert, manifest)."),
]
DeviceOpt = Annotated[str, typer.Option(help="Torch device the model runs on (cpu, cuda:0).")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(help="Weights dtype: float32, bfloat16, float16 or auto [the checkpoint's]."),
]
SeedOpt = Annotated[int, typer.Option(help="Question sampling and training seed.")]
RootOpt = Annotated[
    Path | None, typer.Option(help="Without --data: folder image paths are relative to.")
]
SkipOpt = Annotated[bool, typer.Option(help="Skip bad records (counted) instead of failing.")]
LayersOpt = Annotated[str | None, typer.Option(help="Comma-separated layers; default all.")]
SplitOpt = Annotated[
    str | None, typer.Option(help="With --data: split of the data's own questions [train].")
]


@app.command("train")
def train(
    out: Annotated[Path, typer.Option(help="Folder for layer_<L>/ SAEs and report.json.")],
    model: ModelOpt = "phantom:vqa",
    questions: QuestionsOpt = None,
    layers: LayersOpt = None,
    kind: Annotated[str, typer.Option(help="topk or jumprelu.")] = "topk",
    width: Annotated[int, typer.Option(min=1, help="Features per SAE.")] = 768,
    k: Annotated[
        int | None, typer.Option(min=1, help=f"topk: features kept per token [{DEFAULT_K}].")
    ] = None,
    steps: Annotated[int, typer.Option(min=1, help="Optimiser steps per SAE.")] = 400,
    corpus: Annotated[
        Path | None,
        typer.Option(help="Extra texts, one per line (default: the data's train reports)."),
    ] = None,
    data: DataOpt = None,
    seed: SeedOpt = 0,
    split: SplitOpt = None,
    image_root: RootOpt = None,
    skip_bad: SkipOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Train one SAE per layer on the residual states of the questions and paraphrases,
    saved in SAELens layout (cfg.json + sae_weights.safetensors) with R², FVU and L0."""
    from mechtune.interp.sae import SAEConfig
    from mechtune.interp.sae_saelens import save_saelens
    from mechtune.pipelines.paraphrase import train_question_saes

    loaded = load_questions(
        model,
        questions,
        data=data,
        seed=seed,
        split=split,
        image_root=image_root,
        skip_bad=skip_bad,
        device=device,
        dtype=dtype,
    )
    if k is not None and kind != "topk":
        raise ConfigError(f"--k is for --kind topk, not {kind!r}")
    chosen = _layers(layers, len(loaded.vlm.layers))
    k = DEFAULT_K if kind == "topk" and k is None else k
    shape = SAEConfig(d_in=1, d_sae=width, kind=kind, k=k, model=model)
    texts = list(loaded.corpus)
    if corpus is not None:
        if not corpus.is_file():
            raise QuestionFileError(f"--corpus {corpus}: no such file")
        texts = [line.strip() for line in corpus.read_text().splitlines() if line.strip()]
    console.print(
        f"training {len(chosen)} {kind} SAEs ({width} features) on {len(loaded.sets)} question "
        f"sets + {len(texts)} corpus texts, {steps} steps each ..."
    )
    saes, reports = train_question_saes(
        loaded.vlm,
        loaded.images,
        loaded.sets,
        chosen,
        shape,
        steps=steps,
        corpus=texts,
        per_image=loaded.per_image,
        seed=seed,
    )
    table = Table("layer", "tokens", "R²", "FVU", "L0")
    for layer, sae in saes.items():
        save_saelens(sae, out / f"layer_{layer}")
        r = reports[layer]
        table.add_row(
            str(layer), str(r["tokens"]), f"{r['r2']:.3f}", f"{r['fvu']:.3f}", f"{r['l0']:.1f}"
        )
    console.print(table)
    report = {
        **loaded.source,
        "sae": {"kind": kind, "width": width, "k": shape.k, "steps": steps, "seed": seed},
        "question_sets": len(loaded.sets),
        "corpus_texts": len(texts),
        "layers": {str(layer): r for layer, r in reports.items()},
    }
    write_json(out / "report.json", report)
    console.print(f"wrote {len(saes)} SAEs and report.json to {out}")


def load_layer_saes(
    folder: Path, layers: list[int] | None, variant: str | None = None
) -> dict[int, Any]:
    """``{layer: SAE}`` from the SAE folders in ``folder``, in any layout load_sae reads.

    A folder is named ``layer_<L>`` or, as Gemma Scope 2 names them, ``layer_<L>_<variant>``
    (``layer_17_width_16k_l0_medium``); ``variant`` keeps only folders of that variant.
    The layer is the folder name's; an SAE whose own metadata places it elsewhere, or reads
    a site that is not a block output, is refused naming both, and so are two folders for
    one layer. Only the folders of ``layers`` (all when None) are loaded.
    """
    from mechtune.interp.sae import layer_folder, load_sae

    if not folder.is_dir():
        raise QuestionFileError(f"--saes {folder}: no such folder")
    chosen: dict[int, Path] = {}
    variants: set[str] = set()
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        parsed = layer_folder(child.name)
        if parsed is None:
            if child.name.startswith("layer_"):
                raise QuestionFileError(
                    f"--saes {folder}: folder {child.name!r} is not named layer_<L> or "
                    "layer_<L>_<variant> (one layer per SAE)"
                )
            continue
        layer, name = parsed
        variants.add(name)
        if (variant is not None and name != variant) or (
            layers is not None and layer not in layers
        ):
            continue
        if layer in chosen:
            raise QuestionFileError(
                f"--saes {folder}: two SAEs for layer {layer}: {chosen[layer].name!r} and "
                f"{child.name!r}; pick one with --sae-variant (found: {sorted(variants)})"
            )
        chosen[layer] = child
    saes: dict[int, Any] = {}
    for layer, child in chosen.items():
        sae = load_sae(child)
        own, hook = sae.config.layer, sae.config.hook
        if own is None and hook is not None:
            raise QuestionFileError(
                f"--saes {child}: the SAE reads {hook!r}, which is not the output of block "
                f"{layer}; sae analyze reads block outputs"
            )
        if own is not None and own != layer:
            raise QuestionFileError(
                f"--saes {child}: the folder name says layer {layer} but the SAE's own "
                f"metadata says layer {own} (hook {hook!r})"
            )
        saes[layer] = sae.eval()
    if not saes:
        wanted = "" if variant is None else f" of variant {variant!r}"
        raise QuestionFileError(
            f"--saes {folder}: no layer_<L>/ SAE folders{wanted} for layers "
            f"{'all' if layers is None else layers} (variants found: {sorted(variants)})"
        )
    return dict(sorted(saes.items()))


@app.command("analyze")
def analyze(
    saes: Annotated[
        Path,
        typer.Option(
            help="Folder of layer_<L>[_<variant>]/ SAEs (sae train's --out, Gemma Scope 2)."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Folder for analysis.json and auc_by_layer.png.")],
    model: ModelOpt = "phantom:vqa",
    questions: QuestionsOpt = None,
    layers: LayersOpt = None,
    half_width: Annotated[int, typer.Option(min=0, help="Chosen range: peak ± this.")] = 1,
    sae_variant: Annotated[
        str | None,
        typer.Option(help="Only SAE folders layer_<L>_<VARIANT>, e.g. width_16k_l0_medium."),
    ] = None,
    max_questions: Annotated[int, typer.Option(min=2, help="Question sets sampled.")] = 600,
    data: DataOpt = None,
    seed: SeedOpt = 0,
    split: SplitOpt = None,
    image_root: RootOpt = None,
    skip_bad: SkipOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Flip-prediction AUC by layer, feature attribution, a causal patch, and the flip rate
    and accuracy with the top feature clamped: the chosen layer range, with evidence."""
    from mechtune.eval.figures import auc_by_layer_chart
    from mechtune.interp.sae_analysis import AnalysisConfig, analyse, paraphrase_pairs
    from mechtune.pipelines.paraphrase import clamped_report, evaluate_sets, swap_rows

    loaded = load_questions(
        model,
        questions,
        data=data,
        seed=seed,
        split=split,
        image_root=image_root,
        skip_bad=skip_bad,
        device=device,
        dtype=dtype,
    )
    wanted = None if layers is None else _layers(layers, len(loaded.vlm.layers))
    dictionaries = load_layer_saes(saes, wanted, sae_variant)
    sets = loaded.sets
    if len(sets) > max_questions:
        sets = random.Random(seed).sample(sets, max_questions)
    pairs = paraphrase_pairs(sets)
    console.print(
        f"analysing {len(pairs)} paraphrase pairs of {len(sets)} questions at layers "
        f"{sorted(dictionaries)} ..."
    )
    analysis = analyse(
        loaded.vlm,
        loaded.images,
        pairs,
        dictionaries,
        AnalysisConfig(half_width=half_width, seed=seed),
    )
    baseline = evaluate_sets(loaded.vlm, loaded.images, sets, swap_rows(sets))
    clamped = clamped_report(loaded.vlm, loaded.images, {"questions": sets}, dictionaries, analysis)
    result = {
        **loaded.source,
        "saes": str(saes),
        "sae_variant": sae_variant,
        "analysis": analysis.to_dict(),
        "baseline": baseline,
        "clamping": clamped["questions"] if clamped else None,
    }
    write_json(out / "analysis.json", result)
    auc_by_layer_chart(
        analysis.auc_by_layer,
        analysis.auc_ci_by_layer,
        analysis.chosen_layers,
        out / "auc_by_layer.png",
    )
    table = Table("layer", "flip AUC", "95% CI")
    for layer in analysis.layers:
        lo, hi = analysis.auc_ci_by_layer[layer]
        table.add_row(str(layer), f"{analysis.auc_by_layer[layer]:.3f}", f"{lo:.3f}–{hi:.3f}")
    console.print(table)
    console.print(
        f"{analysis.flip_pairs} of {analysis.pairs} pairs flip; AUC peaks at layer "
        f"{analysis.peak_layer}: chosen layers {analysis.chosen_layers}"
    )
    if clamped:
        after = clamped["questions"]
        console.print(
            f"clamping feature {clamped['feature']} at layer {clamped['layer']}: flip rate "
            f"{baseline['flip_rate'].pct()} -> {100 * after['flip_rate'].value:.1f}%, "
            f"accuracy {baseline['accuracy'].pct()} -> {100 * after['accuracy'].value:.1f}%"
        )
    console.print(f"wrote {out / 'analysis.json'}")
