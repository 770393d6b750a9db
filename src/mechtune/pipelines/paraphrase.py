"""The paraphrase study: measure, locate with SAEs, fix, compare, on any yes/no VLM and any
image-study source.

A study is a function of (config with the model spec, an image-study source, an output
folder); it renders nothing. ``mechtune.sim`` is one source and one model among others.

1. **Data.** The first ``max_studies`` items of the source, in its order, with its patient
   splits; PSF-Med style paraphrase sets (arXiv 2602.21428) for the train-split studies
   (train paraphrase families) and for the evaluation split (``val`` to choose settings,
   ``test`` to report), once with train families (in-distribution) and once with held-out
   families (:func:`mechtune.data.builders.paraphrase.image_paraphrase_sets`).
2. **Baseline.** Flip rate, pairwise flip rate, mean |margin difference|, accuracy,
   text-only agreement (blank image) and swap sensitivity (another patient's image).
3. **SAE analysis** on train-split pairs: one TopK SAE per language block, trained on the
   residual states of the train-split questions plus train-split reports; flip-prediction
   AUC by layer; feature attribution; a causal patch; the chosen layer range (AUC peak ±
   half_width).
4. **Clamping** the top feature at inference, on the evaluation split.
5. **Consistency LoRA** with the same budget on each layer range: all layers, the SAE
   range, the earliest and the latest layers of the same width; each run starts from a
   freshly loaded model.
6. A markdown table (held-out families; :mod:`mechtune.pipelines.paraphrase_report`),
   ``results.json`` and the SAEs. Each condition is compared with the baseline and with
   all-layer LoRA by the paired difference of the per-question flip indicator on the same
   test questions (clustered by patient); every report keeps those indicators with
   question and patient ids (``items``).

A model whose question states do not depend on the image (the phantom VQA's question
encoder never sees it; ``YesNoVLM.states_depend_on_image``) trains its SAEs on each
distinct question once.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechtune.data.answers import answers_from_margins
from mechtune.data.builders.paraphrase import image_paraphrase_sets
from mechtune.data.io import atomic_write_text, to_jsonable, write_json
from mechtune.data.schema import ImageQuestion, Study
from mechtune.data.sources.base import ImageStudySource
from mechtune.errors import ConfigError, DataError
from mechtune.eval.consistency import (
    answer_accuracy,
    flip_rate,
    group_flips,
    margin_difference,
    pairwise_flip_rate,
    swap_sensitivity,
    text_only_agreement,
)
from mechtune.eval.study_config import MIN_STUDIES, check_seeds
from mechtune.interp.sae import SAE, SAEConfig
from mechtune.interp.sae_analysis import (
    AnalysisConfig,
    Dictionary,
    SAEAnalysis,
    analyse,
    feature_edit,
    margins,
    paraphrase_pairs,
    token_states,
)
from mechtune.interp.sae_saelens import save_saelens
from mechtune.interp.sae_train import train_sae
from mechtune.models.vlm_spec import load_yes_no_vlm, parse_vlm_spec
from mechtune.models.yes_no import YesNoVLM, take_rows
from mechtune.pipelines.paraphrase_report import paired_rows, results_table
from mechtune.train.consistency import ConsistencyConfig, consistency_examples
from mechtune.train.methods import run_paraphrase_method

PAPER = {  # PSF-Med (arXiv 2602.21428), MedGemma-4B on MIMIC binary questions, in %
    "baseline": {"flip": 14.6, "margin_diff": 1.63, "accuracy": 84.2},
    "clamping": {"flip": 10.8, "margin_diff": None, "accuracy": None},
    "targeted LoRA (L15-19)": {"flip": 4.4, "margin_diff": 0.33, "accuracy": 82.3},
}
RANGES = ("all", "sae", "early", "late")


@dataclass(frozen=True)
class ParaphraseStudyConfig:
    """One paraphrase study; each field is checked at construction.

    ``model``: the yes/no VLM spec (:func:`mechtune.models.vlm_spec.load_yes_no_vlm`);
    ``seed``: the question sampler, the SAE corpus and the analysis sample;
    ``max_studies``: the first this many items of the source, in its order (None: all);
    ``questions_per_study``: balanced yes/no questions per study; ``eval_split``: "val"
    to choose settings, "test" to report; ``seeds``: one consistency LoRA run per seed and
    range; ``sae_width`` / ``sae_k`` / ``sae_steps``: the TopK SAEs on every language
    block, trained with ``sae_reports`` train-patient reports as extra text;
    ``analysis_sets``: train questions the flip analysis reads; ``half_width``: the chosen
    range is the AUC peak ± this; ``ranges``: which layer ranges get consistency LoRA;
    ``lora``: the LoRA settings every range shares (its ``layers`` and ``seed`` are set
    per run). Raises ``ConfigError`` naming the field.
    """

    model: str = "phantom:vqa"
    seed: int = 0
    max_studies: int | None = None
    questions_per_study: int = 2
    eval_split: str = "test"
    seeds: tuple[int, ...] = (0,)
    sae_width: int = 768
    sae_k: int = 16
    sae_steps: int = 400
    sae_reports: int = 1000
    analysis_sets: int = 600
    half_width: int = 1
    ranges: tuple[str, ...] = RANGES
    lora: ConsistencyConfig = field(default_factory=ConsistencyConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or ":" not in self.model:
            raise ConfigError(f"model must be a VLM spec SCHEME:NAME, got {self.model!r}")
        if self.eval_split not in ("val", "test"):
            raise ConfigError(
                f"eval_split must be 'val' (choosing settings) or 'test' (reporting), "
                f"got {self.eval_split!r}"
            )
        object.__setattr__(self, "seeds", tuple(self.seeds))
        object.__setattr__(self, "ranges", tuple(self.ranges))
        unknown = sorted(set(self.ranges) - set(RANGES))
        if unknown or not self.ranges or len(set(self.ranges)) != len(self.ranges):
            raise ConfigError(
                f"ranges must name distinct layer ranges of {list(RANGES)}, got {list(self.ranges)}"
            )
        check_seeds(self.seeds)
        if isinstance(self.lora, dict):
            object.__setattr__(self, "lora", ConsistencyConfig.from_dict(self.lora))
        least = {"questions_per_study": 1, "sae_width": 1, "sae_steps": 1}
        least |= {"analysis_sets": 2, "half_width": 0, "sae_reports": 0}
        if self.max_studies is not None:
            least["max_studies"] = MIN_STUDIES
        for name, low in least.items():
            if getattr(self, name) < low:
                raise ConfigError(f"{name} must be >= {low}, got {getattr(self, name)}")
        if not 1 <= self.sae_k <= self.sae_width:
            raise ConfigError(f"sae_k ({self.sae_k}) must be in [1, sae_width ({self.sae_width})]")
        if self.lora.lora.layers is not None or self.lora.seed != 0:
            raise ConfigError(
                "lora.lora.layers and lora.seed are set per run (the layers by ranges, the seed "
                f"by seeds); got lora.lora.layers={self.lora.lora.layers}, "
                f"lora.seed={self.lora.seed}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(seeds=list(self.seeds), ranges=list(self.ranges), lora=self.lora.to_dict())
        return d


@dataclass(frozen=True)
class ParaphraseRecipe:
    """A recipe file: the study's ``config`` and, when the recipe names one, the ``data``
    folder or file of its image-study source (relative to the working directory)."""

    config: ParaphraseStudyConfig
    data: Path | None = None


def load_paraphrase_recipe(path: str | Path) -> ParaphraseRecipe:
    """A paraphrase study from a recipe YAML (``recipes/consistency-phantom.yaml``).

    Every key must be a field of :class:`ParaphraseStudyConfig` (``model`` a VLM spec,
    ``lora`` a ConsistencyConfig) or ``data`` (a path). The model spec's scheme is checked
    (no weights load). Raises ConfigError naming the file and the key."""
    import yaml

    raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of keys, got {type(raw).__name__}")
    data = raw.pop("data", None)
    if data is not None and not isinstance(data, str):
        raise ConfigError(f"{path}: data must be a path, got {data!r}")
    unknown = sorted(set(raw) - {f.name for f in fields(ParaphraseStudyConfig)})
    lora = raw.get("lora") or {}
    unknown += sorted(f"lora.{k}" for k in set(lora) - {f.name for f in fields(ConsistencyConfig)})
    unknown += [f"lora.{k} (set per run)" for k in ("seed",) if k in lora]
    if "layers" in (lora.get("lora") or {}):
        unknown.append("lora.lora.layers (set per run)")
    if unknown:
        raise ConfigError(f"{path}: unknown recipe keys {unknown}")
    try:
        config = ParaphraseStudyConfig(**raw)
        parse_vlm_spec(config.model)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return ParaphraseRecipe(config, None if data is None else Path(data))


# -- the stages, each a function of the config ----------------------------------------------


def study_items(source: ImageStudySource, config: ParaphraseStudyConfig) -> list[Study]:
    """The first ``max_studies`` items of the source in its order (all when None); row
    ``i`` of the study's image batch is item ``i``. Raises ``DataError`` when the source
    has fewer items than ``max_studies``."""
    items = source.studies()
    if config.max_studies is not None:
        if len(items) < config.max_studies:
            raise DataError(
                f"{source.root}: max_studies is {config.max_studies} but the source has "
                f"{len(items)} items"
            )
        items = items[: config.max_studies]
    return items


def split_rows(
    source: ImageStudySource, items: Sequence[Study], split: str
) -> list[tuple[int, Study]]:
    """``(row, study)`` for the items of ``split``, in order."""
    return [(i, s) for i, s in enumerate(items) if source.split_of(s) == split]


def study_questions(
    source: ImageStudySource, items: Sequence[Study], config: ParaphraseStudyConfig
) -> tuple[list[ImageQuestion], dict[str, list[ImageQuestion]]]:
    """Training questions (train-split patients, training paraphrase families) and the
    evaluation questions of ``eval_split``: ``in_distribution`` (training families) and
    ``heldout`` (held-out families), ``questions_per_study`` per study, seeded by ``seed``.
    Rows are positions in ``items``."""
    kwargs = {"questions_per_study": config.questions_per_study, "seed": config.seed}
    train = image_paraphrase_sets(
        split_rows(source, items, "train"), "train", heldout=False, **kwargs
    )
    rows = split_rows(source, items, config.eval_split)
    evaluation = {
        "in_distribution": image_paraphrase_sets(rows, config.eval_split, heldout=False, **kwargs),
        "heldout": image_paraphrase_sets(rows, config.eval_split, heldout=True, **kwargs),
    }
    return train, evaluation


def sae_corpus(
    source: ImageStudySource, items: Sequence[Study], config: ParaphraseStudyConfig
) -> list[str]:
    """``sae_reports`` distinct train-patient reports (seeded by ``seed``): in-domain text,
    since the questions alone have too few distinct tokens for a dictionary."""
    train = [s for _, s in split_rows(source, items, "train")]
    reports = sorted({source.report_text(s) or "" for s in train} - {""})
    return random.Random(config.seed).sample(reports, min(config.sae_reports, len(reports)))


def study_images(vlm: YesNoVLM, source: ImageStudySource, items: Sequence[Study]) -> Any:
    """The items' images in the model's pixel mode, prepared for it
    (``YesNoVLM.prepare_images``): row ``i`` is item ``i``."""
    return vlm.prepare_images([source.load_image(s, vlm.image_mode) for s in items])


def analysis_questions(
    train: Sequence[ImageQuestion], config: ParaphraseStudyConfig
) -> list[ImageQuestion]:
    """``analysis_sets`` training questions (seeded by ``seed``) for the flip analysis."""
    return random.Random(config.seed).sample(list(train), min(config.analysis_sets, len(train)))


def analysis_config(config: ParaphraseStudyConfig) -> AnalysisConfig:
    """The flip analysis's settings: the chosen range is the AUC peak ± ``half_width``."""
    return AnalysisConfig(half_width=config.half_width, seed=0)


def run_config(
    config: ParaphraseStudyConfig, layers: tuple[int, ...] | None, seed: int
) -> ConsistencyConfig:
    """The LoRA settings of one run: ``lora`` on ``layers`` (None: all) with ``seed``."""
    return replace(config.lora, lora=replace(config.lora.lora, layers=layers), seed=seed)


# -- evaluation -----------------------------------------------------------------------------


def swap_rows(questions: Sequence[ImageQuestion]) -> list[int]:
    """For each question, the image row of another patient's study in the same list (the
    next question whose patient differs, cyclically): deterministic and never the same
    patient. Raises ``DataError`` when the list has one patient only."""
    out = []
    for i, q in enumerate(questions):
        for step in range(1, len(questions)):
            other = questions[(i + step) % len(questions)]
            if other.record.patient_id != q.record.patient_id:
                out.append(other.image)
                break
        else:
            raise DataError("swap sensitivity needs questions from at least two patients")
    return out


@torch.no_grad()
def evaluate_sets(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    swapped: Sequence[int],
) -> dict[str, Any]:
    """PSF-Med metrics of one list of paraphrase sets bound to their images, with 95%
    intervals clustered by patient (a patient's questions share anatomy, and here two
    share each study), and ``items``: per question, ``id``, ``patient`` and ``flip`` (any
    paraphrase's answer differs from the original's), for paired comparisons. ``swapped``
    ``[N]``: the image row each question is asked again with (swap sensitivity). Raises
    ``DataError`` when a question id repeats."""
    sets = [q.record for q in questions]
    ids = [s.question_id for s in sets]
    if len(set(ids)) != len(ids):
        repeated = next(q for q in ids if ids.count(q) > 1)
        raise DataError(f"question id {repeated!r} repeats; per-question results need unique ids")
    patients = [s.patient_id for s in sets]
    by_group = dict(zip(ids, patients, strict=True))
    rows = [q.image for q in questions for _ in range(1 + len(q.record.paraphrases))]
    texts = [t for s in sets for t in (s.question, *s.paraphrases)]
    flat = margins(vlm, images, rows, texts)
    per_set, at = [], 0
    for s in sets:
        n = 1 + len(s.paraphrases)
        per_set.append(flat[at : at + n])
        at += n
    groups = answers_from_margins(sets, per_set)
    originals = [s.question for s in sets]
    base = np.array([g.original_answer for g in groups])
    blank = vlm.blank_images(take_rows(images, [q.image for q in questions]))
    blank_answers = margins(vlm, blank, list(range(len(sets))), originals) > 0
    swap_answers = margins(vlm, images, list(swapped), originals) > 0
    flips = [group_flips(g) for g in groups]
    return {
        "groups": len(groups),
        "flips": int(sum(flips)),
        "flip_rate": flip_rate(groups, clusters=by_group),
        "pairwise_flip_rate": pairwise_flip_rate(groups, clusters=by_group),
        "margin_difference": margin_difference(groups, clusters=by_group),
        "accuracy": answer_accuracy(groups, clusters=by_group),
        "text_only_agreement": text_only_agreement(base, blank_answers, clusters=patients),
        "swap_sensitivity": swap_sensitivity(base, swap_answers, clusters=patients),
        "items": {"id": ids, "patient": patients, "flip": flips},
    }


def evaluate_both(
    vlm: YesNoVLM, images: Any, eval_sets: dict[str, list[ImageQuestion]]
) -> dict[str, Any]:
    return {
        name: evaluate_sets(vlm, images, sets, swap_rows(sets)) for name, sets in eval_sets.items()
    }


# -- SAEs ------------------------------------------------------------------------------------


def train_question_saes(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    layers: Sequence[int],
    sae: SAEConfig,
    *,
    steps: int,
    corpus: Sequence[str] = (),
    per_image: bool = True,
    seed: int = 0,
) -> tuple[dict[int, SAE], dict[int, dict[str, Any]]]:
    """One SAE per layer (shape and kind from ``sae``; ``d_in`` and ``layer`` are filled in),
    trained on the residual states at the readout positions of every question and
    paraphrase of ``questions`` plus the ``corpus`` texts (read with image row 0).

    ``per_image=False`` reads each distinct text once, for models whose question states do
    not depend on the image (the phantom VQA's question encoder); otherwise each distinct
    (image, text) pair is read once."""
    first_row: dict[tuple[int, str], int] = {}
    for q in questions:
        for t in (q.record.question, *q.record.paraphrases):
            key = (q.image if per_image else 0, t)
            first_row.setdefault(key, q.image)
    for t in corpus:
        first_row.setdefault((0, t), 0)
    keys = sorted(first_row)
    if not keys:
        raise DataError("no questions to train SAEs on")
    states = token_states(vlm, images, [first_row[k] for k in keys], [t for _, t in keys], layers)
    saes, reports = {}, {}
    for layer in layers:
        config = replace(
            sae, d_in=int(states[layer].shape[1]), layer=layer, hook=f"{vlm.layers_pattern}.{layer}"
        )
        trained, report = train_sae(states[layer], config, steps=steps, seed=seed)
        saes[layer] = trained.eval()
        reports[layer] = {"tokens": int(states[layer].shape[0]), **report.final.to_dict()}
    return saes, reports


def train_layer_saes(
    vlm: YesNoVLM,
    images: Any,
    questions: Sequence[ImageQuestion],
    config: ParaphraseStudyConfig,
    corpus: Sequence[str] = (),
) -> tuple[dict[int, SAE], dict[int, dict[str, Any]]]:
    """One TopK SAE (``sae_width``, ``sae_k``, ``sae_steps``) per language block, trained
    on the residual states of the distinct train-split questions plus ``corpus``
    (in-domain text: the question set alone has too few distinct tokens for a dictionary
    of this width); per (image, text) pair when the model's question states depend on the
    image, else per text."""
    shape = SAEConfig(d_in=1, d_sae=config.sae_width, kind="topk", k=config.sae_k)
    shape = replace(shape, model=config.model)
    layers = list(range(len(vlm.layers)))
    return train_question_saes(
        vlm,
        images,
        questions,
        layers,
        shape,
        steps=config.sae_steps,
        corpus=corpus,
        per_image=vlm.states_depend_on_image,
    )


def layer_ranges(chosen: Sequence[int], n_layers: int, names: Sequence[str]) -> dict[str, Any]:
    """``{name: layers}``: all (None), the SAE range, and the first/last blocks of the same
    width, so each targeted range trains the same number of blocks."""
    width = len(chosen)
    table: dict[str, Any] = {
        "all": None,
        "sae": tuple(chosen),
        "early": tuple(range(width)),
        "late": tuple(range(n_layers - width, n_layers)),
    }
    return {name: table[name] for name in names}


# -- the study ---------------------------------------------------------------------------------


def run_paraphrase_study(
    config: ParaphraseStudyConfig,
    source: ImageStudySource,
    out: str | Path,
    *,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run every step on ``source`` with the model ``config.model`` (loaded on ``device``
    in ``dtype``, afresh for each LoRA run); write ``results.json``, ``table.md``, the
    SAEs (``saes/layer_<L>``, SAELens layout) and the adapters (``runs/<range>/seed<s>``).

    Returns the results dict. Raises ``VLMSpecError`` for a model that cannot be loaded
    and ``DataError`` for a source with too few items, unreadable images, or an
    evaluation split with questions of one patient only.
    """
    out = Path(out)
    say = log or (lambda _msg: None)
    items = study_items(source, config)
    train_sets, eval_sets = study_questions(source, items, config)
    vqa = load_yes_no_vlm(config.model, device=device, dtype=dtype)
    images = study_images(vqa, source, items)
    timings: dict[str, float] = {}

    start = time.perf_counter()
    say(f"baseline on {len(eval_sets['heldout'])} {config.eval_split}-split questions ...")
    baseline = evaluate_both(vqa, images, eval_sets)
    timings["baseline"] = time.perf_counter() - start

    start = time.perf_counter()
    say(f"training {len(vqa.layers)} SAEs on train-split questions ...")
    corpus = sae_corpus(source, items, config)
    saes, sae_reports = train_layer_saes(vqa, images, train_sets, config, corpus)
    pairs = paraphrase_pairs(analysis_questions(train_sets, config))
    analysis = analyse(vqa, images, pairs, saes, analysis_config(config))
    timings["sae"] = time.perf_counter() - start
    say(
        f"flip-prediction AUC peaks at layer {analysis.peak_layer}; "
        f"chosen layers {analysis.chosen_layers}"
    )

    start = time.perf_counter()
    clamped = clamped_report(vqa, images, eval_sets, saes, analysis)
    timings["clamping"] = time.perf_counter() - start

    runs: dict[str, list[dict[str, Any]]] = {}
    ranges = layer_ranges(analysis.chosen_layers, len(vqa.layers), config.ranges)
    examples = consistency_examples(train_sets)
    trained: dict[Any, str] = {}
    for name, layers in ranges.items():
        if layers in trained:
            # Two names for the same layers (the SAE range can be the last blocks): the same
            # training would give the same weights, so the reports are shared, not recomputed.
            first = trained[layers]
            say(f"layers {name} are the same as {first}; reusing its runs")
            runs[name] = [{**r, "same_as": first} for r in runs[first]]
            continue
        trained[layers] = name
        for seed in config.seeds:
            say(f"consistency LoRA on layers {name} ({layers or 'all'}), seed {seed} ...")
            model = load_yes_no_vlm(config.model, device=device, dtype=dtype)
            start = time.perf_counter()
            lora = run_config(config, layers, seed)
            run_paraphrase_method(
                "consistency-lora",
                model,
                images,
                examples,
                lora,
                out / "runs" / name / f"seed{seed}",
            )
            seconds = time.perf_counter() - start
            report = evaluate_both(model, images, eval_sets)
            report.update(seed=seed, layers=None if layers is None else list(layers))
            report["train_seconds"] = round(seconds, 1)
            runs.setdefault(name, []).append(report)

    results = to_jsonable(
        {
            "config": config.to_dict(),
            "data": {**source.description, "studies": len(items)},
            "counts": {
                "train_sets": len(train_sets),
                **{k: len(v) for k, v in eval_sets.items()},
                "analysis_pairs": len(pairs),
            },
            "baseline": baseline,
            "sae": {"layers": {str(k): v for k, v in sae_reports.items()}},
            "analysis": analysis.to_dict(),
            "clamping": clamped,
            "runs": runs,
            "seconds": {k: round(v, 1) for k, v in timings.items()},
        }
    )
    results["paired"] = to_jsonable({label: cells for label, _, cells in paired_rows(results)})
    for layer, sae in saes.items():
        save_saelens(sae, out / "saes" / f"layer_{layer}")
    write_json(out / "results.json", results)
    atomic_write_text(out / "table.md", results_table(results) + "\n")
    return results


def clamped_report(
    vqa: YesNoVLM,
    images: Any,
    eval_sets: dict[str, list[ImageQuestion]],
    saes: Mapping[int, Dictionary],
    analysis: SAEAnalysis,
) -> dict[str, Any] | None:
    """The metrics of ``eval_sets`` with the analysis's causal candidate (the patched
    feature that recovered most margin) clamped at the peak layer (None when no feature was
    attributed)."""
    if not analysis.patch:
        return None
    feature = int(analysis.patch["feature"])
    layer = analysis.peak_layer
    with feature_edit(vqa, saes[layer], layer, feature, analysis.clamp_value):
        report = evaluate_both(vqa, images, eval_sets)
    report.update(layer=layer, feature=feature, value=analysis.clamp_value)
    return report


__all__ = [
    "PAPER",
    "RANGES",
    "ParaphraseRecipe",
    "ParaphraseStudyConfig",
    "analysis_config",
    "analysis_questions",
    "clamped_report",
    "evaluate_both",
    "evaluate_sets",
    "layer_ranges",
    "load_paraphrase_recipe",
    "run_config",
    "run_paraphrase_study",
    "sae_corpus",
    "split_rows",
    "study_images",
    "study_items",
    "study_questions",
    "swap_rows",
    "train_layer_saes",
    "train_question_saes",
]
