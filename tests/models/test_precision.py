"""--device/--dtype at the library level: weights in the asked dtype, scores in float32."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechtune.errors import ConfigError
from mechtune.interp.tracing import TracePair, trace_scores
from mechtune.models.precision import resolve_dtype
from mechtune.models.spec import load_dual_encoder
from tests.tiny_models import tiny_clip, tiny_siglip

TEXTS = ["there is no pleural effusion .", "there is a small pleural effusion ."]
IMAGES = np.random.default_rng(0).integers(0, 256, (2, 32, 32), dtype=np.uint8)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize(
    "value,expected",
    [
        (None, None),
        ("auto", None),
        ("float32", torch.float32),
        ("bfloat16", torch.bfloat16),
        ("float16", torch.float16),
        (torch.bfloat16, torch.bfloat16),
    ],
)
def test_dtype_names(value, expected):
    assert resolve_dtype(value) == expected


@pytest.mark.parametrize("value", ["float64", "bf16", "int8", torch.float64])
def test_bad_dtypes_are_config_errors(value, clip_dir):
    with pytest.raises(ConfigError, match="dtype must be one of auto, float32, bfloat16, float16"):
        load_dual_encoder(f"hf:{clip_dir}", dtype=value)


def test_bad_devices_are_config_errors(clip_dir):
    with pytest.raises(ConfigError, match="device 'gpu0' is not a torch device name"):
        load_dual_encoder(f"hf:{clip_dir}", device="gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available here"):
            load_dual_encoder(f"hf:{clip_dir}", device="cuda")


@pytest.mark.parametrize("builder", [tiny_clip, tiny_siglip])
def test_bf16_weights_float32_embeddings(builder, tmp_path):
    folder = builder(tmp_path)
    full = load_dual_encoder(f"hf:{folder}")
    half = load_dual_encoder(f"hf:{folder}", dtype="bfloat16")
    assert full.dtype == torch.float32 and half.dtype == torch.bfloat16
    assert {p.dtype for p in half.model.parameters()} == {torch.bfloat16}
    assert half.device == torch.device("cpu")
    for a, b in [
        (full.encode_texts(TEXTS), half.encode_texts(TEXTS)),
        (full.encode_images(IMAGES), half.encode_images(IMAGES)),
    ]:
        assert b.dtype == torch.float32 and b.device.type == "cpu"
        assert torch.allclose(b.norm(dim=-1), torch.ones(len(b)), atol=1e-6)  # normalised in f32
        # bf16 rounds each weight and activation to 2**-9 ≈ 2e-3 relative; a few such
        # roundings through 1-2 blocks of width 32 gave at most 0.005 per unit-vector entry
        # here (measured), so 0.02 leaves 4x room and still fails a float32/bf16 mix-up
        # of scale (e.g. unnormalised or twice-normalised outputs).
        assert (a - b).abs().max() < 0.02
        assert torch.nn.functional.cosine_similarity(a, b).min() > 0.999
    tokens = half.tokenize(TEXTS)
    emb = half.encode_tokens(tokens)
    assert emb.dtype == torch.float32 and emb.device == half.device
    assert tokens["input_ids"].device == half.device


def test_bf16_tracing_scores_in_float32(clip_dir):
    enc = load_dual_encoder(f"hf:{clip_dir}", dtype="bfloat16")
    tokens = enc.tokenize(TEXTS)
    with torch.no_grad():
        states, _ = enc.capture(tokens)
        assert states[1].dtype == torch.bfloat16  # hidden states stay in the model's dtype
        assert enc.head(states[-1], tokens).dtype == torch.float32
    images = enc.encode_images(IMAGES)
    pairs = [TracePair("there is no pleural effusion .", "there is a pleural effusion .", 0)]
    (scores,) = trace_scores(enc, pairs, images)
    assert scores.patched.dtype == torch.float32 and torch.isfinite(scores.patched).all()
    assert scores.cte.dtype == torch.float32
    # The clean score equals encode_tokens' (float32) score exactly.
    with torch.no_grad():
        clean = enc.encode_tokens(enc.tokenize([pairs[0].correct]))[0] @ images[0]
    assert scores.s_correct == pytest.approx(float(clean), abs=1e-6)


def test_phantom_loads_in_bf16():
    enc = load_dual_encoder("phantom:default", dtype="bfloat16")
    assert enc.dtype == torch.bfloat16
    full = load_dual_encoder("phantom:default")
    world = np.random.default_rng(3).integers(0, 256, (2, 128, 128), dtype=np.uint8)
    a, b = full.encode_images(world), enc.encode_images(world)
    assert b.dtype == torch.float32 and torch.nn.functional.cosine_similarity(a, b).min() > 0.99
    t = enc.encode_texts(TEXTS)
    assert t.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(full.encode_texts(TEXTS), t).min() > 0.99
