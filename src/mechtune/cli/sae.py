"""`mechtune sae train|analyze`: sparse autoencoders on a yes/no VLM's residual stream.

Models (``--model``): a yes/no VLM spec (:func:`mechtune.models.vlm_spec.load_yes_no_vlm`):
``phantom:vqa`` (the shipped phantom VQA model) or ``hf:DIR`` / ``hf:HUB_ID`` (a
transformers image-text-to-text model such as MedGemma, read by
:class:`mechtune.models.hf_vqa.HFYesNoVLM`; never remote code), loaded on ``--device`` with
its weights in ``--dtype``.

Images and questions (:mod:`mechtune.pipelines.questions`, as the paraphrase commands):

- ``--questions FILE``: PSF-Med style records, JSONL or a JSON array
  (:func:`mechtune.data.importers.read_psf_records`); ``--split`` keeps the records of one
  split when the file labels them (default train);
- ``--data DIR``: an image-study source (a saved phantom world, ``mechtune sim export``
  output, MIMIC-CXR-JPG, CheXpert, a manifest), or any folder the questions' image paths
  are relative to (default: the questions file's folder). Without ``--questions``, the
  questions are the source's own PSF-Med style paraphrase sets of ``--split``, seeded by
  ``--seed``. The default SAE corpus is the reports of the source's train split.

SAEs (``sae analyze --saes DIR``): one folder per layer in DIR, named ``layer_<L>`` (what
``sae train`` writes) or ``layer_<L>_<variant>`` as Gemma Scope 2 names them
(``layer_17_width_16k_l0_medium``), in any layout :func:`mechtune.interp.sae.load_sae`
reads. The layer is the folder's and must agree with the SAE's own metadata; two folders
for one layer are refused unless ``--sae-variant`` picks one.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from mechtune.cli._common import console, progress_bar
from mechtune.cli._tracking import ReportToOpt, TrackingDirOpt, make_tracker
from mechtune.data.io import write_json
from mechtune.errors import ConfigError, DataError
from mechtune.models.yes_no import YesNoVLM
from mechtune.pipelines.questions import BoundQuestions, bind_questions

app = typer.Typer(help="Sparse autoencoders: train them, find where flips live.")

MODEL_HELP = "A yes/no VLM spec: phantom:vqa, or hf:DIR (a saved model such as MedGemma)."
QUESTIONS_HELP = "PSF-Med style records (JSONL or JSON array); default: the data's own."
DEFAULT_K = 16  # topk: features kept per token


def load_questions(
    model: str,
    questions: Path | None,
    *,
    data: Path | None,
    seed: int,
    split: str | None,
    skip_bad: bool,
    device: str = "cpu",
    dtype: str | None = None,
) -> tuple[YesNoVLM, BoundQuestions, dict[str, Any]]:
    """The model (on ``device``, weights in ``dtype``), the questions bound to its images
    (:func:`mechtune.pipelines.questions.bind_questions`, split default train) and the
    provenance for the command's JSON."""
    from mechtune.models.vlm_spec import load_yes_no_vlm
    from mechtune.pipelines.paraphrase_train import weights_dtype

    vlm = load_yes_no_vlm(model, device=device, dtype=dtype)
    weights = next(vlm.module.parameters())
    bound = bind_questions(
        vlm,
        questions=questions,
        data=data,
        split="train" if split is None else split,
        seed=seed,
        skip_bad=skip_bad,
        log=console.print,
    )
    source: dict[str, Any] = {
        "model": model,
        "device": str(weights.device),
        "dtype": weights_dtype(vlm),
        **bound.info,
    }
    return vlm, bound, source


def _layers(text: str | None, n_layers: int) -> list[int]:
    if text is None:
        return list(range(n_layers))
    try:
        layers = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise ConfigError(f"--layers {text!r}: expected comma-separated integers") from None
    bad = [i for i in layers if not 0 <= i < n_layers]
    if bad or not layers:
        raise ConfigError(f"--layers {text!r}: the model has layers 0..{n_layers - 1}")
    return layers


# Options shared by both commands.
ModelOpt = Annotated[str, typer.Option(help=MODEL_HELP)]
QuestionsOpt = Annotated[Path | None, typer.Option(help=QUESTIONS_HELP)]
DataOpt = Annotated[
    Path | None,
    typer.Option(
        help="An image-study source (world, export, MIMIC-CXR-JPG, CheXpert, manifest) or "
        "any folder the questions' image paths are relative to."
    ),
]
DeviceOpt = Annotated[str, typer.Option(help="Torch device the model runs on (cpu, cuda:0).")]
DtypeOpt = Annotated[
    str | None,
    typer.Option(help="Weights dtype: float32, bfloat16, float16 or auto [the checkpoint's]."),
]
SeedOpt = Annotated[int, typer.Option(help="Question sampling and training seed.")]
SkipOpt = Annotated[bool, typer.Option(help="Skip bad records (counted) instead of failing.")]
LayersOpt = Annotated[str | None, typer.Option(help="Comma-separated layers; default all.")]
SplitOpt = Annotated[
    str | None,
    typer.Option(help="Split of the questions (a labelled file's, or the data's own) [train]."),
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
    buffer_tokens: Annotated[
        int,
        typer.Option(
            min=1,
            help="Activation rows held at once per SAE (the shuffle buffer); memory does "
            "not grow with the token count.",
        ),
    ] = 65536,
    corpus: Annotated[
        Path | None,
        typer.Option(help="Extra texts, one per line (default: the data's train reports)."),
    ] = None,
    data: DataOpt = None,
    seed: SeedOpt = 0,
    split: SplitOpt = None,
    skip_bad: SkipOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
    report_to: ReportToOpt = "none",
    tracking_dir: TrackingDirOpt = None,
) -> None:
    """Train one SAE per layer on the residual states of the questions and paraphrases,
    saved in SAELens layout (cfg.json + sae_weights.safetensors) with R², FVU and L0.
    With --report-to, each layer's loss terms (sae/loss, sae/mse, sae/l0, ...) per log
    interval go to a tracker run layer_<L>."""
    from mechtune.interp.sae import SAEConfig
    from mechtune.interp.sae_saelens import save_saelens
    from mechtune.pipelines.paraphrase import train_question_saes
    from mechtune.train.tracking import layer_sessions

    tracker = make_tracker(report_to, out, tracking_dir)
    vlm, bound, source = load_questions(
        model,
        questions,
        data=data,
        seed=seed,
        split=split,
        skip_bad=skip_bad,
        device=device,
        dtype=dtype,
    )
    if k is not None and kind != "topk":
        raise ConfigError(f"--k is for --kind topk, not {kind!r}")
    chosen = _layers(layers, len(vlm.layers))
    k = DEFAULT_K if kind == "topk" and k is None else k
    shape = SAEConfig(d_in=1, d_sae=width, kind=kind, k=k, model=model)
    texts = list(bound.corpus)
    if corpus is not None:
        if not corpus.is_file():
            raise DataError(f"--corpus {corpus}: no such file")
        texts = [line.strip() for line in corpus.read_text().splitlines() if line.strip()]
    console.print(
        f"training {len(chosen)} {kind} SAEs ({width} features) on {len(bound.sets)} question "
        f"sets + {len(texts)} corpus texts, {steps} steps each ..."
    )
    hyper = {"model": model, "kind": kind, "width": width, "k": k, "steps": steps, "seed": seed}
    with layer_sessions(tracker, "", hyper) as progress:
        saes, reports = train_question_saes(
            vlm,
            bound.images,
            bound.sets,
            chosen,
            shape,
            steps=steps,
            corpus=texts,
            per_image=vlm.states_depend_on_image,
            seed=seed,
            buffer_tokens=buffer_tokens,
            track=progress_bar,
            progress=progress,
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
        **source,
        "sae": {
            "kind": kind,
            "width": width,
            "k": shape.k,
            "steps": steps,
            "seed": seed,
            "buffer_tokens": buffer_tokens,
        },
        "question_sets": len(bound.sets),
        "corpus_texts": len(texts),
        "layers": {str(layer): r for layer, r in reports.items()},
    }
    write_json(out / "report.json", report)
    console.print(f"wrote {len(saes)} SAEs and report.json to {out}")


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
    auc_shuffles: Annotated[
        int,
        typer.Option(
            min=0,
            help="Shuffles of the flip labels for the AUC's shuffled-label control (a "
            "permutation p per layer); 0: off.",
        ),
    ] = 0,
    sae_variant: Annotated[
        str | None,
        typer.Option(help="Only SAE folders layer_<L>_<VARIANT>, e.g. width_16k_l0_medium."),
    ] = None,
    max_questions: Annotated[int, typer.Option(min=2, help="Question sets sampled.")] = 600,
    data: DataOpt = None,
    seed: SeedOpt = 0,
    split: SplitOpt = None,
    skip_bad: SkipOpt = False,
    device: DeviceOpt = "cpu",
    dtype: DtypeOpt = None,
) -> None:
    """Flip-prediction AUC by layer, feature attribution, a causal patch, and the flip rate
    and accuracy with the top feature clamped: the chosen layer range, with evidence."""
    from mechtune.eval.figures import auc_by_layer_chart
    from mechtune.interp.sae_analysis import AnalysisConfig, analyse, paraphrase_pairs
    from mechtune.interp.sae_folders import load_layer_saes
    from mechtune.pipelines.paraphrase import clamped_report
    from mechtune.pipelines.paraphrase_eval import evaluate_questions

    vlm, bound, source = load_questions(
        model,
        questions,
        data=data,
        seed=seed,
        split=split,
        skip_bad=skip_bad,
        device=device,
        dtype=dtype,
    )
    wanted = None if layers is None else _layers(layers, len(vlm.layers))
    dictionaries = load_layer_saes(saes, wanted, sae_variant)
    too_deep = [layer for layer in dictionaries if layer >= len(vlm.layers)]
    if too_deep:
        raise ConfigError(
            f"--saes {saes}: SAEs for layers {too_deep}; {model} has blocks "
            f"0..{len(vlm.layers) - 1}"
        )
    sets = bound.sets
    if len(sets) > max_questions:
        sets = random.Random(seed).sample(sets, max_questions)
    pairs = paraphrase_pairs(sets)
    console.print(
        f"analysing {len(pairs)} paraphrase pairs of {len(sets)} questions at layers "
        f"{sorted(dictionaries)} ..."
    )
    analysis = analyse(
        vlm,
        bound.images,
        pairs,
        dictionaries,
        AnalysisConfig(half_width=half_width, shuffles=auc_shuffles, seed=seed),
        track=progress_bar,
    )
    baseline, _ = evaluate_questions(
        vlm, bound.images, sets, seed=seed, track=progress_bar, description="baseline: margins"
    )
    clamped = clamped_report(vlm, bound.images, sets, dictionaries, analysis, track=progress_bar)
    result = {
        **source,
        "saes": str(saes),
        "sae_variant": sae_variant,
        "analysis": analysis.to_dict(),
        "baseline": baseline,
        "clamping": clamped,
    }
    write_json(out / "analysis.json", result)
    auc_by_layer_chart(
        analysis.auc_by_layer,
        analysis.auc_ci_by_layer,
        analysis.chosen_layers,
        out / "auc_by_layer.png",
        shuffled={k: (v.low, v.high) for k, v in analysis.auc_shuffled_by_layer.items()},
    )
    shuffled = analysis.auc_shuffled_by_layer
    columns = ["layer", "flip AUC", "95% CI"]
    if shuffled:
        columns += [f"shuffled labels ({auc_shuffles}): mean [95% range]", "permutation p"]
    table = Table(*columns)
    for layer in analysis.layers:
        lo, hi = analysis.auc_ci_by_layer[layer]
        row = [str(layer), f"{analysis.auc_by_layer[layer]:.3f}", f"{lo:.3f}–{hi:.3f}"]
        if shuffled:
            c = shuffled[layer]
            row += [f"{c.mean:.3f} [{c.low:.3f}, {c.high:.3f}]", f"{c.p_value:.3g}"]
        table.add_row(*row)
    console.print(table)
    console.print(
        f"{analysis.flip_pairs} of {analysis.pairs} pairs flip; AUC peaks at layer "
        f"{analysis.peak_layer}: chosen layers {analysis.chosen_layers}"
    )
    if clamped:
        before, after = baseline["all"], clamped["all"]
        console.print(
            f"clamping feature {clamped['feature']} at layer {clamped['layer']}: flip rate "
            f"{before['flip_rate'].pct()} -> {after['flip_rate'].pct()}, accuracy "
            f"{_pct(before['accuracy'])} -> {_pct(after['accuracy'])}"
        )
    console.print(f"wrote {out / 'analysis.json'}")


def _pct(estimate: Any) -> str:
    return "n/a" if estimate is None else estimate.pct()
