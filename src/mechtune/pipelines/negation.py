"""The negation half on any dual encoder and any image-study source: the stages of a
study (embed, trace, train, evaluate), which the commands and the study
(:mod:`mechtune.pipelines.negation_study`) call.

Every function here is a function of (model spec, :class:`ImageStudySource`, settings):
it loads the model through the spec registry, reads studies and pixels through the
source, and never knows which model or data it was given. The image tower is frozen by
every negation method, so each item's image is embedded once per study (and cached on
disk across runs by :mod:`mechtune.models.image_cache`).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mechtune.data.freeform import FreeformSets, load_freeform
from mechtune.data.freeform_match import SourceAttributes
from mechtune.data.io import read_jsonl_records, write_json
from mechtune.data.schema import SPLITS, Study
from mechtune.data.sources.base import ImageStudySource
from mechtune.errors import ConfigError, DataError
from mechtune.eval.freeform import DEFAULT_MAX_STUDIES, freeform_split_match
from mechtune.eval.holdout import freeform_about, holdout_report
from mechtune.eval.negation import (
    EvalStudies,
    evaluate_negation,
)
from mechtune.eval.retention import embedding_drift, general_sentences
from mechtune.interp.pairs import PairBuild, build_trace_pairs, pairs_from_records
from mechtune.interp.result import TraceConfig, TraceResult, trace
from mechtune.interp.tracing import TraceError
from mechtune.models.dual_encoder import DualEncoder
from mechtune.models.image_cache import CacheStats, embed_study_images
from mechtune.pipelines.negation_config import (
    PACKAGED_FREEFORM,
    NegationStudyConfig,
    RunOptions,
)
from mechtune.progress import Tracker, stage
from mechtune.train.checkpoint import load_trained
from mechtune.train.distributed import is_main_process, wait_for_everyone
from mechtune.train.methods import (
    METHODS,
    NegationData,
    negation_examples,
    run_method,
)
from mechtune.train.model_card import base_model_of
from mechtune.train.negation import ClaimExample, LoopConfig
from mechtune.train.tracking import Tracker as RunTracker
from mechtune.train.trainer import Evaluate
from mechtune.train.validation import negation_validation

Log = Callable[[str], None]


def _quiet(_message: str) -> None:
    return None


# -- the stages --------------------------------------------------------------------------


@dataclass
class StudyData:
    """One source's items, their image embeddings and their splits.

    ``studies[i]`` has image embedding ``images[i]`` (``[N, D]`` float32, CPU);
    ``splits[i]`` is its split (from the source's own patient-level split).
    """

    source: ImageStudySource
    studies: list[Study]
    images: torch.Tensor
    splits: list[str]
    cache: dict[str, int] = field(default_factory=dict)

    def rows(self, split: str) -> list[tuple[int, Study]]:
        """``(row, study)`` of one split's items, in source order."""
        if split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
        return [
            (i, s)
            for i, (s, sp) in enumerate(zip(self.studies, self.splits, strict=True))
            if sp == split
        ]

    def eval_set(self, split: str) -> EvalStudies:
        rows = self.rows(split)
        if not rows:
            raise DataError(
                f"{self.source.root}: no item in the {split!r} split "
                f"(split counts: {self.source.split_counts()})"
            )
        index = torch.tensor([i for i, _ in rows])
        return EvalStudies([s for _, s in rows], self.images[index], split)


def study_data(
    encoder: DualEncoder,
    source: ImageStudySource,
    spec: str,
    options: RunOptions,
    log: Log = _quiet,
    progress: Callable[[int], None] | None = None,
) -> StudyData:
    """Embed every item's image once (through the cache when ``options.cache_dir``)."""
    studies = source.studies()
    if not studies:
        raise DataError(f"{source.root}: the source has no item")
    stats = CacheStats()
    images = embed_study_images(
        encoder,
        source,
        studies,
        cache_dir=options.cache_dir,
        spec=spec,
        progress=progress,
        stats=stats,
    )
    counts = {"hits": stats.hits, "misses": stats.misses}
    where = f" (cache {stats.folder})" if stats.folder is not None else " (no cache)"
    log(f"image embeddings: {stats.hits} cache hits, {stats.misses} misses{where}")
    return StudyData(source, studies, images, [source.split_of(s) for s in studies], counts)


def pairs_file_rows(
    path: Path, studies: Sequence[Study], splits: Sequence[str], split: str
) -> list[tuple[int, dict[str, Any]]]:
    """``(row, record)`` of each line of a JSONL pairs file ``{"correct", "foil", "image"}``,
    ``image`` a study id of the source or a row (item index). Every image must belong to
    ``split``: alpha is chosen on train patients, and a pair of a test patient would let
    the test split choose it. Raises ``TraceError`` naming the file, line and value."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    ids = {s.study_id: i for i, s in enumerate(studies)}
    out = []
    for number, record in read_jsonl_records(path, ("correct", "foil", "image"), TraceError):
        value = record["image"]
        row = None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(studies):
            row = value
        elif isinstance(value, str):
            row = ids.get(value)
        if row is None:
            raise TraceError(
                f"{path}, line {number}: image {value!r} is neither a study id nor a row "
                f"(0..{len(studies) - 1}) of the data"
            )
        if splits[row] != split:
            raise TraceError(
                f"{path}, line {number}: image {value!r} is a {splits[row]}-split study, not "
                f"{split}; pairs must come from the --split {split} patients (pass --split "
                f"{splits[row]} to trace those patients on purpose)"
            )
        out.append((row, record))
    return out


def trace_pairs(
    encoder: DualEncoder,
    data: StudyData,
    *,
    split: str = "train",
    seed: int = 0,
    per_study: int = 1,
    max_pairs: int | None = None,
    pairs_file: Path | None = None,
) -> PairBuild:
    """The pairs to trace: length-matched pairs of ``split``'s studies (``per_study`` facts
    of each polarity per study, seeded by ``seed``), or a JSONL pairs file
    (:func:`pairs_file_rows`: every image a study of ``split``); cut to ``max_pairs``.

    Raises ``TraceError`` naming the file, line and value for an image the source does not
    have or that belongs to another split.
    """
    if pairs_file is None:
        build = build_trace_pairs(data.rows(split), encoder, seed=seed, per_study=per_study)
    else:
        records = pairs_file_rows(pairs_file, data.studies, data.splits, split)
        # every image value was checked above; the same value always names the same row
        row_of = {(type(r["image"]), r["image"]): row for row, r in records}
        build = pairs_from_records(
            [r for _, r in records], encoder, lambda image: row_of[(type(image), image)]
        )
    if max_pairs is not None:
        build.pairs = build.pairs[:max_pairs]
    if not build.pairs:
        raise TraceError(
            f"no length-matched pair to trace (candidates {build.candidates}, "
            f"rejected {dict(build.rejected)})"
        )
    return build


def weights_info(encoder: DualEncoder) -> dict[str, str]:
    """``{"device": ..., "dtype": ...}`` of the model's weights, as recorded in outputs."""
    return {
        "device": str(encoder.device),
        "dtype": str(encoder.dtype).removeprefix("torch."),
    }


def trace_model(
    encoder: DualEncoder,
    data: StudyData,
    build: PairBuild,
    config: TraceConfig,
    counts: dict[str, Any],
    track: Tracker | None = None,
) -> TraceResult:
    """Causal tracing of ``encoder`` on ``build``'s pairs against the items' images.
    ``track`` gets one stage counting the distinct (correct, foil) text pairs traced."""
    distinct = len({(p.correct, p.foil) for p in build.pairs})
    with stage(track, "trace distinct text pairs", distinct) as advance:
        return trace(
            encoder,
            build.pairs,
            data.images,
            config,
            counts={**build.to_dict(), "used": len(build.pairs), **counts},
            progress=advance,
        )


def training_data(data: StudyData, recipe: NegationStudyConfig) -> NegationData:
    """Captions, claim sets and MCQ options of the train-split patients (train phrasing
    families), seeded by ``data_seed``, without any text about the recipe's
    ``holdout_conditions`` (counted in ``removed``: :mod:`mechtune.train.negation_data`)."""
    rows = data.rows("train")
    if not rows:
        raise DataError(f"{data.source.root}: no item in the train split to train on")
    return negation_examples(
        rows,
        "train",
        seed=recipe.data_seed,
        balance_polarity=recipe.balance_polarity,
        holdout=recipe.holdout_conditions,
    )


def validation_claims(
    data: StudyData, loop: LoopConfig, seed: int, holdout: Sequence[str] = ()
) -> list[ClaimExample]:
    """The claim sets ``loop.eval_every`` evaluates on: those of the **val**-split
    patients in the held-out phrasing families (what the study reports), seeded by
    ``seed`` (the recipe's ``data_seed``), not balanced, none about a ``holdout``
    condition (a held-out finding must not choose the kept step either). Empty when
    ``eval_every`` is 0. Raises ConfigError naming ``loop.eval_every``
    (``--eval-every``) when the source has no val-split item."""
    if not loop.eval_every:
        return []
    rows = data.rows("val")
    if not rows:
        raise ConfigError(
            f"loop.eval_every (--eval-every) is {loop.eval_every}, but {data.source.root} has "
            f"no item in the 'val' split to evaluate on (split counts: "
            f"{data.source.split_counts()}); set it to 0"
        )
    held = negation_examples(
        rows, "val", seed=seed, heldout=True, balance_polarity=False, holdout=holdout
    )
    return held.claims


def validation_freeform(
    data: StudyData, recipe: NegationStudyConfig, loop: LoopConfig
) -> list[ClaimExample]:
    """The free-form items ``loop.eval_every`` evaluates on: the **val** half of the
    recipe's free-form sets (:func:`study_freeform`) matched to the val-split studies,
    at most ``freeform_max_studies`` per set (what the source can ground read from every
    item), each with its image row and its correct claim's polarity; none about a
    ``holdout_conditions`` condition (:func:`mechtune.eval.holdout.freeform_about`).
    Empty when ``eval_every`` is 0 or the free-form sets are off. The test half is never
    read here."""
    sets = study_freeform(recipe) if loop.eval_every else None
    rows = data.rows("val") if sets is not None else []
    match = freeform_split_match(
        sets,
        "val",
        [s for _, s in rows],
        recipe.freeform_max_studies,
        SourceAttributes.of(data.studies),
    )
    if match is None:
        return []
    row = {s.study_id: i for i, s in rows}
    return [
        ClaimExample(cs.candidates, row[study.study_id], cs.polarity)
        for cs, study in match.items
        if not freeform_about(cs, recipe.holdout_conditions)
    ]


def validation(
    encoder: DualEncoder,
    data: StudyData,
    claims: list[ClaimExample],
    freeform: Sequence[ClaimExample] = (),
) -> Evaluate | None:
    """The trainer's ``evaluate`` on ``claims`` (:func:`validation_claims`; None when
    there are none) and the free-form items ``freeform`` (:func:`validation_freeform`):
    claim accuracy of ``encoder``, which is trained in place, and free-form accuracy by
    polarity (:func:`~mechtune.train.validation.negation_validation`)."""
    if not claims:
        return None
    return negation_validation(encoder, data.images, claims, freeform=freeform)


def study_freeform(recipe: NegationStudyConfig) -> FreeformSets | None:
    """The free-form claim sets ``recipe.freeform`` names: the packaged set, a file of
    the same schema, or None (off). Raises ``DataError`` naming the file, set and value
    for a bad file."""
    if recipe.freeform is None:
        return None
    return load_freeform(None if recipe.freeform == PACKAGED_FREEFORM else recipe.freeform)


def evaluate_model(
    encoder: DualEncoder,
    data: StudyData,
    *,
    split: str,
    seed: int,
    probes: bool = False,
    base: DualEncoder | None = None,
    track: Tracker | None = None,
    freeform: FreeformSets | None = None,
    freeform_max_studies: int = DEFAULT_MAX_STUDIES,
    holdout: Sequence[str] = (),
) -> dict[str, Any]:
    """Every negation metric of ``encoder`` on ``split``; with ``probes``, linear probes
    fitted on the train split; with ``base``, retention (the drift of the text embeddings
    of everyday sentences from ``base``'s). ``track``: progress of the text embedding.
    ``freeform``: free-form claim sets (:func:`study_freeform`), the split's half scored
    on its studies, at most ``freeform_max_studies`` per set; what the source can ground
    is read from every item of ``data``. ``holdout``: conditions held out of training,
    whose slice goes to ``report["holdout"]`` (:func:`~mechtune.eval.holdout.holdout_report`)."""
    probe_train = data.eval_set("train") if probes else None
    report = evaluate_negation(
        encoder,
        data.eval_set(split),
        seed=seed,
        probe_train=probe_train,
        track=track,
        freeform=freeform,
        freeform_max_studies=freeform_max_studies,
        freeform_source=SourceAttributes.of(data.studies) if freeform is not None else None,
    )
    if holdout:
        report["holdout"] = holdout_report(report["items"], holdout)
    if base is not None:
        sentences = general_sentences()
        report["retention"] = embedding_drift(
            base.encode_texts(sentences), encoder.encode_texts(sentences)
        )
    return report


PROBE_FILE = "probe_embeddings.safetensors"
PROBE_SENTENCES = 16  # everyday sentences whose embeddings fingerprint a trained text tower


RUN_FILE = "run.json"  # what a training run was: method, model, dtype, data, alpha


def run_identity(
    method: str,
    spec: str,
    encoder: DualEncoder,
    data: StudyData,
    alpha: Any,
    holdout: Sequence[str] = (),
) -> dict[str, Any]:
    """What a resumed run must share with the run that wrote its checkpoints; the
    conditions held out of its training data (``holdout``) when there are any."""
    identity = {
        "method": method,
        "model": spec,
        "dtype": weights_info(encoder)["dtype"],
        "data": str(data.source.root),
        "alpha": [round(float(a), 6) for a in torch.as_tensor(alpha).reshape(-1).tolist()],
    }
    if holdout:
        identity["holdout"] = list(holdout)
    return identity


def check_resume(out: Path, identity: dict[str, Any], steps: int) -> None:
    """Refuse to continue ``out``'s checkpoints under another method, model, dtype, data
    or alpha, or to a step count below the one they reached (``ConfigError`` naming each
    difference)."""
    previous_file = out / RUN_FILE
    if not previous_file.is_file():
        return
    previous = json.loads(previous_file.read_text(encoding="utf-8"))
    changed = [  # a key only one side has (holdout) differs too
        f"{key} {previous.get(key)!r} -> {identity.get(key)!r}"
        for key in [*identity, *(k for k in previous if k not in identity)]
        if previous.get(key) != identity.get(key)
    ]
    if changed:
        raise ConfigError(
            f"{out} holds a run of other settings ({'; '.join(changed)}); resume it with "
            "its own settings, or train into another --out"
        )
    done = out / "train.json"
    if done.is_file():
        reached = int(json.loads(done.read_text(encoding="utf-8")).get("step", 0))
        if reached > steps:
            raise ConfigError(
                f"{out} is already at step {reached}, beyond the {steps} steps asked for; "
                "ask for more steps to continue it"
            )


def train_model(
    encoder: DualEncoder,
    method: str,
    data: StudyData,
    examples: NegationData,
    alpha: Sequence[float] | torch.Tensor,
    loop: LoopConfig,
    out: Path,
    spec: str,
    *,
    accelerator: Any | None = None,
    track: Tracker | None = None,
    tracker: RunTracker | None = None,
    run_name: str | None = None,
    evaluate: Evaluate | None = None,
    holdout: Sequence[str] = (),
) -> DualEncoder:
    """Train ``encoder`` (loaded from ``spec``) in place with a registered method,
    resuming from ``out`` (:func:`check_resume` first), and write ``out/run.json``
    (:func:`run_identity`) and ``out/probe_embeddings.safetensors``: the trained text
    tower's embeddings of :data:`PROBE_SENTENCES` everyday sentences, which
    :func:`apply_adapter` compares with the reloaded model's.

    ``accelerator``: an ``accelerate.Accelerator`` for DDP (each process holds the same
    ``encoder`` on its own device; ``loop.shards`` a multiple of its processes). Every
    process checks ``out`` before the main process rewrites ``run.json``; only the main
    process writes, and all return once its files are complete. ``track``: progress of
    the steps, with the loss (:func:`~mechtune.train.methods.fit_reporting`).

    ``tracker``: the run is one tracker session named ``run_name`` (default: the method)
    with the method, model and loop settings as hyperparameters; ``evaluate``: the
    validation metric of ``loop.eval_every`` (:func:`validation`). ``holdout``: the
    conditions ``examples`` were built without (:func:`training_data`), part of the
    run's identity."""
    from safetensors.torch import save_file

    from mechtune.data.io import atomic_path

    identity = run_identity(method, spec, encoder, data, alpha, holdout)
    check_resume(out, identity, loop.steps)
    wait_for_everyone(accelerator)  # every process has read the old run.json
    if is_main_process(accelerator):
        write_json(out / RUN_FILE, identity)
    hyper = {"method": method, "model": spec, "loop": loop.to_dict()}
    trains = method in METHODS and METHODS[method].loss is not None  # zero-shot does not
    session = (
        tracker.session(run_name or method, hyper)
        if tracker is not None and trains
        else contextlib.nullcontext()
    )
    with session:
        run_method(
            method,
            encoder,
            data.images,
            examples,
            alpha,
            loop,
            out,
            accelerator=accelerator,
            base_model=base_model_of(spec),
            tracker=tracker,
            evaluate=evaluate,
            track=track,
        )
    if is_main_process(accelerator):
        probes = encoder.encode_texts(general_sentences()[:PROBE_SENTENCES]).float().cpu()
        with atomic_path(out / PROBE_FILE) as tmp:
            save_file(
                {"embeddings": probes.contiguous()}, str(tmp), metadata=identity_meta(identity)
            )
    wait_for_everyone(accelerator)
    return encoder


def identity_meta(identity: dict[str, Any]) -> dict[str, str]:
    return {"model": identity["model"], "dtype": identity["dtype"]}


def run_probe(folder: Path, probe_file: str, spec: str | None) -> tuple[Path, Path, dict[str, str]]:
    """A training run's folder (``folder`` or, for its ``adapter/``, the parent), its probe
    file and the probe's metadata (empty when the run saved none). Raises DataError naming
    the folder when the run was trained on another model spec than ``spec``."""
    from safetensors import safe_open

    run = folder.parent if folder.name == "adapter" else folder
    probe = run / probe_file
    meta: dict[str, str] = {}
    if probe.is_file():
        with safe_open(str(probe), framework="pt") as f:
            meta = dict(f.metadata() or {})
    trained_on = meta.get("model")
    if spec is not None and trained_on is not None and trained_on != spec:
        raise DataError(
            f"{folder}: trained on --model {trained_on}, not {spec}; evaluate it with "
            f"--model {trained_on}"
        )
    return run, probe, meta


# float32 reloads reproduce to ~1e-7; a bf16 or fp16 side rounds each entry by ~2**-9
# relative, observed up to 4e-3 on unit-norm embeddings
TOLERANCE = {"float32": 1e-4, "half": 2e-2}


def apply_adapter(
    encoder: DualEncoder, folder: Path, spec: str | None = None
) -> tuple[DualEncoder, dict[str, Any]]:
    """Apply what ``negation train`` wrote (a run folder, or its ``adapter/`` folder: a
    peft adapter or text-block weights) to a freshly loaded ``encoder`` (loaded from
    ``spec``), and check that it reproduces the trained model: the max |difference| of the
    probe sentences' embeddings from those saved at the end of training
    (``{"max_abs_diff", "tolerance", "trained_dtype", "dtype"}``; ``max_abs_diff`` None
    when the run saved none).

    Raises ``DataError`` naming the folder when the run was trained on another model spec
    (before loading anything), when the adapter does not fit the model's architecture, or
    when the difference exceeds the tolerance: 1e-4 when both sides are float32, 2e-2
    when either is bf16/fp16 (their rounding; the message names both dtypes).
    """
    from safetensors.torch import load_file

    folder = Path(folder)
    run, probe, meta = run_probe(folder, PROBE_FILE, spec)
    trained = load_trained(encoder, run)
    dtype = weights_info(trained)["dtype"]
    check: dict[str, Any] = {"max_abs_diff": None, "dtype": dtype}
    if not probe.is_file():
        return trained, check
    trained_dtype = meta.get("dtype", "float32")
    both_full = {dtype, trained_dtype} == {"float32"}
    tolerance = TOLERANCE["float32" if both_full else "half"]
    saved = load_file(str(probe))["embeddings"]
    now = trained.encode_texts(general_sentences()[: len(saved)]).float().cpu()
    diff = float((now - saved).abs().max())
    check.update(max_abs_diff=diff, tolerance=tolerance, trained_dtype=trained_dtype)
    if diff > tolerance:
        raise DataError(
            f"{folder}: the reloaded model does not reproduce the trained model's text "
            f"embeddings (max |difference| {diff:.3g} > {tolerance:g}; trained in "
            f"{trained_dtype}, loaded in {dtype}); was it trained on another checkpoint?"
        )
    return trained, check
