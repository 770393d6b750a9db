"""``--dry-run``: check a study's settings, data and model spec without loading weights.

Checks, in order, and raises at the first that fails (``ConfigError`` / ``DataError``
naming the key, file or value):

1. the recipe (every key was already checked when it was read: unknown keys, values);
2. the data: its layout (:func:`~mechtune.data.sources.detect_layout`), its tables read by
   the layout's reader (labels, splits, image paths; no pixels), and items in the train
   split and in the evaluation split;
3. the model spec: its scheme is registered and, for a local ``hf:`` folder, its
   ``config.json`` names a supported ``model_type``; a hub id or an optional extra that is
   missing here is reported as a ``needs:`` line (the run needs the network or the extra),
   and the summary line counts them;
4. the dtype name and the device (a CUDA device this machine lacks fails).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from mechtune.errors import ConfigError, DataError
from mechtune.models.precision import resolve_device, resolve_dtype
from mechtune.models.spec import parse_spec


def check_data(path: Path, eval_split: str) -> list[str]:
    """Open the source's tables (no pixels) and count items per split."""
    from mechtune.data.sources import detect_layout, open_source

    layout = detect_layout(path)
    source = open_source(path)
    counts = source.split_counts()
    for split in ("train", eval_split):
        if not counts.get(split):
            raise DataError(f"{path}: no item in the {split!r} split (split counts: {counts})")
    return [
        f"data: {path} is a {layout} source; {source.report.summary()}",
        f"data: items per split {counts}",
    ]


def check_model(spec: str) -> list[str]:
    """The spec's scheme is registered; a local hf folder's model_type is supported."""
    scheme, name = parse_spec(spec)
    lines = [f"model: {spec} (scheme {scheme!r} is registered)"]
    if scheme == "hf":
        folder = Path(name)
        if folder.is_dir():
            config = folder / "config.json"
            if not config.is_file():
                raise ConfigError(f"model {spec}: {config} is missing")
            model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
            supported = _hf_model_types()
            if model_type not in supported:
                raise ConfigError(
                    f"model {spec}: model_type {model_type!r} is not supported; supported: "
                    f"{', '.join(sorted(supported))}"
                )
            lines.append(f"model: local folder, model_type {model_type!r}")
        else:
            lines.append(
                f"model: needs: {name!r} is not a local folder; it is a hub id and loads only "
                "with network access or from the Hugging Face cache"
            )
    elif scheme == "openclip":
        if importlib.util.find_spec("open_clip") is None:
            lines.append(
                "model: needs: open_clip is not installed here; the run needs "
                "pip install 'mechtune[openclip]' (with a working torchvision)"
            )
        if name.startswith("hf-hub:"):
            lines.append(
                "model: needs: an hf-hub: model loads with network access or from the cache"
            )
    return lines


def _hf_model_types() -> set[str]:
    from mechtune.models.hf_dual import HF_ADAPTERS

    return set(HF_ADAPTERS)


def with_summary(lines: list[str], checked: str) -> list[str]:
    """``lines`` and a last line: all checks passed, or how many ``needs:`` lines name
    what this machine lacks for the run."""
    needs = sum(": needs: " in line for line in lines)
    if needs:
        last = (
            f"dry run: {checked} check out, but this machine lacks {needs} thing(s) the run "
            "needs (the 'needs:' lines); nothing was loaded or trained"
        )
    else:
        last = "dry run: all checks passed; nothing was loaded or trained"
    return [*lines, last]


def dry_run_report(
    recipe: Any, data: Path, *, dtype: str | None = None, device: str = "cpu"
) -> list[str]:
    """Every check of a dry run, as lines for the console; raises at the first failure.
    Lines with ``needs:`` name what this machine lacks to run the study (an extra, the
    network); the last line counts them."""
    lines = [
        f"recipe: every key known; methods {list(recipe.methods)}, seeds {list(recipe.seeds)}, "
        f"{recipe.loop.steps} steps, scaling {recipe.loop.scaling!r}, beta {recipe.loop.beta}, "
        f"optimizer {recipe.loop.optimizer!r}, alpha {recipe.alpha_norm} of the "
        f"{recipe.alpha_source} CTE"
    ]
    if recipe.holdout_conditions:
        lines.append(
            f"held out of training: {', '.join(recipe.holdout_conditions)} (every claim set, "
            "caption sentence and MCQ about it is removed and counted when the study runs)"
        )
    if recipe.grid is not None:
        from mechtune.pipelines.negation_config import grid_cells

        lines.append(
            f"grid: {len(grid_cells(recipe))} cells crossing {', '.join(recipe.grid)}, every "
            "cell's settings valid"
        )
    lines += check_data(Path(data), recipe.eval_split)
    lines += check_model(recipe.model)
    resolve_dtype(dtype)
    resolve_device(device)
    lines.append(f"device {device}, dtype {dtype or 'auto'}: available")
    return with_summary(lines, "recipe, data and model spec")


# -- the paraphrase study ------------------------------------------------------------------


def _vlm_depth(folder: Path, spec: str) -> tuple[str, int | None]:
    """(architecture, language-block count) from a local hf folder's config.json."""
    from mechtune.models.hf_vqa import VLM_SITES

    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"model {spec}: {config_file} is missing")
    config = json.loads(config_file.read_text(encoding="utf-8"))
    architectures = config.get("architectures") or []
    known = [a for a in architectures if a in VLM_SITES]
    if not known:
        raise ConfigError(
            f"model {spec}: architectures {architectures} has no supported yes/no VLM class; "
            f"supported: {', '.join(sorted(VLM_SITES))}"
        )
    text = config.get("text_config") or config
    depth = text.get("num_hidden_layers")
    return known[0], None if depth is None else int(depth)


def check_vlm_model(spec: str, layers: list[int]) -> list[str]:
    """The VLM spec's scheme is registered; a local hf folder's class is supported and has
    the blocks ``layers`` name."""
    from mechtune.models.vlm_spec import parse_vlm_spec

    scheme, name = parse_vlm_spec(spec)
    lines = [f"model: {spec} (scheme {scheme!r} is registered)"]
    if scheme != "hf":
        return lines
    folder = Path(name).expanduser()
    if not folder.is_dir():
        lines.append(
            f"model: needs: {name!r} is not a local folder; it is a hub id and loads only "
            "with network access or from the Hugging Face cache (block indices are checked "
            "when it loads)"
        )
        return lines
    architecture, depth = _vlm_depth(folder, spec)
    lines.append(f"model: local folder, {architecture} with {depth} language blocks")
    bad = [i for i in layers if depth is not None and i >= depth]
    if bad:
        raise ConfigError(f"model {spec}: layers {bad} out of range (it has {depth} blocks)")
    return lines


def check_questions(questions: Path | None, data: Path | None, eval_split: str) -> list[str]:
    """Read every question record (no images) and count them per split; a path this
    machine lacks is a ``needs:`` line."""
    from mechtune.pipelines.questions import read_question_file

    lines = []
    if questions is None and data is None:
        raise ConfigError("give --questions FILE and --data DIR (or name them in the recipe)")
    if data is not None:
        if Path(data).exists():
            lines.append(f"data: {data} exists")
        else:
            lines.append(f"data: needs: {data} (the images) is not on this machine")
    if questions is None:
        lines.append("questions: the data's own (built from its labels at run time)")
        return lines
    if not Path(questions).is_file():
        lines.append(f"questions: needs: {questions} is not on this machine")
        return lines
    records, report = read_question_file(Path(questions), skip_bad=False)
    counts: dict[str, int] = {}
    for r in records:
        counts[r.split] = counts.get(r.split, 0) + 1
    if not report.get("split_labels", False):
        raise DataError(f"{questions}: the study needs records labelled with a split")
    for split in ("train", eval_split):
        if not counts.get(split):
            raise DataError(f"{questions}: no record of the {split!r} split (counts {counts})")
    lines.append(f"questions: {len(records)} records of {questions}; per split {counts}")
    return lines


def paraphrase_dry_run(
    config: Any,
    questions: Path | None,
    data: Path | None,
    *,
    device: str = "cpu",
    dtype: str | None = None,
) -> list[str]:
    """Every check of a paraphrase study's dry run (recipe, questions, data, model spec,
    SAE folder, device, dtype), as lines; raises at the first failure. ``needs:`` lines
    name what this machine lacks; the last line counts them."""
    lora = config.lora
    lines = [
        f"recipe: every key known; model {config.model}, ranges {list(config.ranges)}, seeds "
        f"{list(config.seeds)}, {lora.steps} steps of {lora.batch_size} x {lora.grad_accum} "
        f"questions, LoRA r {lora.lora.rank} alpha {lora.lora.alpha}, answer loss "
        f"{lora.answer_loss!r}; random ranges {config.random_ranges}, AUC shuffles "
        f"{config.auc_shuffles}"
    ]
    lines += check_questions(questions, data, config.eval_split)
    lines += check_vlm_model(config.model, list(config.sae_layers or ()))
    if config.saes is not None:
        if Path(config.saes).is_dir():
            lines.append(f"saes: {config.saes} exists")
        else:
            lines.append(f"saes: needs: {config.saes} (the SAE folders) is not on this machine")
    resolve_dtype(dtype)
    resolve_device(device)
    lines.append(f"device {device}, dtype {dtype or 'auto'}: available")
    return with_summary(lines, "recipe and settings")
