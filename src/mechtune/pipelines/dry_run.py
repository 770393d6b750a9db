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


def dry_run_report(
    recipe: Any, data: Path, *, dtype: str | None = None, device: str = "cpu"
) -> list[str]:
    """Every check of a dry run, as lines for the console; raises at the first failure.
    Lines with ``needs:`` name what this machine lacks to run the study (an extra, the
    network); the last line counts them."""
    lines = [
        f"recipe: every key known; methods {list(recipe.methods)}, seeds {list(recipe.seeds)}, "
        f"{recipe.loop.steps} steps, scaling {recipe.loop.scaling!r}, beta {recipe.loop.beta}"
    ]
    lines += check_data(Path(data), recipe.eval_split)
    lines += check_model(recipe.model)
    resolve_dtype(dtype)
    resolve_device(device)
    lines.append(f"device {device}, dtype {dtype or 'auto'}: available")
    needs = sum(": needs: " in line for line in lines)
    if needs:
        lines.append(
            f"dry run: recipe, data and model spec check out, but this machine lacks {needs} "
            "thing(s) the run needs (the 'needs:' lines); nothing was loaded or trained"
        )
    else:
        lines.append("dry run: all checks passed; nothing was loaded or trained")
    return lines
