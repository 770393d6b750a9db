"""Yes/no VLM specs resolve through a registry of schemes; sim registers phantom: through
its entry point."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechtune.errors import ConfigError, DataError
from mechtune.models import vlm_spec
from mechtune.models.vlm_spec import VLMSpecError, load_yes_no_vlm, register_vlm_scheme


def test_a_registered_scheme_gets_the_name_device_and_dtype(monkeypatch):
    monkeypatch.setattr(vlm_spec, "_REGISTRY", vlm_spec.SchemeRegistry("yes/no VLM", "none"))
    seen = []
    register_vlm_scheme("toy", lambda name, **kw: seen.append((name, kw)) or "model", ("toy:x",))
    assert vlm_spec.vlm_schemes() == ("toy",)
    assert load_yes_no_vlm("toy:a/b", dtype="bfloat16") == "model"
    assert seen == [("a/b", {"device": torch.device("cpu"), "dtype": torch.bfloat16})]
    load_yes_no_vlm("toy:c", device="meta", dtype="auto")
    assert seen[-1] == ("c", {"device": torch.device("meta"), "dtype": None})
    with pytest.raises(ConfigError, match="non-empty name without ':'"):
        register_vlm_scheme("a:b", lambda name, **kw: None)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            "medgemma",
            "bad yes/no VLM spec 'medgemma': expected SCHEME:NAME with SCHEME one of hf, phantom",
        ),
        ("clip:x", "e.g. hf:google/medgemma-4b-it .* phantom:vqa"),
        ("hf:", "bad yes/no VLM spec 'hf:'"),
        ("hf:./missing", "'hf:./missing': ./missing is not a folder"),
        ("phantom:/no/head", "cannot load 'phantom:/no/head'"),
    ],
)
def test_bad_specs_name_the_spec_and_the_schemes(spec, message):
    with pytest.raises(VLMSpecError, match=message):
        load_yes_no_vlm(spec)


def test_dtypes_are_named_or_refused():
    # the names are mechtune.models.precision's (tested there); VLM loads use them too
    with pytest.raises(ConfigError, match="dtype must be one of auto, float32, bfloat16"):
        load_yes_no_vlm("phantom:vqa", dtype="fp8")
    with pytest.raises(ConfigError, match="phantom VQA model runs in float32 only"):
        load_yes_no_vlm("phantom:vqa", dtype="bfloat16")


def test_the_phantom_vqa_prepares_grey_radiographs_once():
    vqa = load_yes_no_vlm("phantom:vqa", dtype="float32")
    size = vqa.config.image.image_size
    images = np.random.default_rng(0).integers(0, 256, (3, size, size), dtype=np.uint8)
    prepared = vqa.prepare_images(list(images))
    assert vqa.image_mode == "L" and not vqa.states_depend_on_image
    assert bool((prepared == vqa.embed_images(images)).all())
    with pytest.raises(DataError, match=rf"image 1 is uint8 \[{size}, 7\]"):
        vqa.prepare_images([images[0], images[1][:, :7]])
    with pytest.raises(DataError, match="image 0 is float64"):
        vqa.prepare_images([images[0].astype(float)])
