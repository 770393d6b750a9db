"""CUDA paths of the adapters (issue 15): inputs placed on the model's device, bf16
weights with float32 scores, and tracing on the device agreeing with the CPU.

Marked ``gpu``: they skip without CUDA (CI has none). ``MECHTUNE_GPU_TEST_DEVICE=cpu``
runs them on the CPU, to check the tests themselves on a machine without a GPU; the
suite's ``gpu_tests`` part runs them on the device (``pytest -m gpu tests/gpu``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from mechtune.interp.tracing import TracePair, trace_scores
from mechtune.models.spec import load_dual_encoder
from mechtune.models.vlm_spec import load_yes_no_vlm
from tests.tiny_gemma import tiny_gemma
from tests.tiny_models import tiny_clip

DEVICE = os.environ.get("MECHTUNE_GPU_TEST_DEVICE", "cuda")
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(
        DEVICE.startswith("cuda") and not torch.cuda.is_available(), reason="needs CUDA"
    ),
]

TEXTS = ["small left pleural effusion .", "no left pleural effusion ."]


def uint8_images(n: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_dual_encoder_places_host_inputs_and_returns_float32(clip_folder, dtype):
    reference = load_dual_encoder(f"hf:{clip_folder}", device="cpu", dtype="float32")
    on_device = load_dual_encoder(f"hf:{clip_folder}", device=DEVICE, dtype=dtype)
    weight = next(on_device.model.parameters())
    assert weight.device.type == torch.device(DEVICE).type
    assert weight.dtype == getattr(torch, dtype)
    images = uint8_images(3, 32)
    with torch.no_grad():
        ref_t, dev_t = reference.encode_texts(TEXTS), on_device.encode_texts(TEXTS)
        ref_i = reference.encode_images(images)
        dev_i = on_device.encode_images(images)
    for ref, got in ((ref_t, dev_t), (ref_i, dev_i)):
        assert got.dtype == torch.float32  # scores are float32 whatever the weights
        assert got.shape == ref.shape
        cos = torch.nn.functional.cosine_similarity(ref, got.cpu(), dim=-1)
        assert cos.min() > (0.9999 if dtype == "float32" else 0.98)


def test_fast_tracing_on_the_device_matches_the_cpu(clip_folder):
    pairs = [TracePair(TEXTS[0], TEXTS[1], 0), TracePair(TEXTS[1], TEXTS[0], 1)]
    results = []
    for device in ("cpu", DEVICE):
        enc = load_dual_encoder(f"hf:{clip_folder}", device=device, dtype="float32")
        with torch.no_grad():
            images = enc.encode_images(uint8_images(2, 32))
        results.append(trace_scores(enc, pairs, images))
    for cpu, dev in zip(*results, strict=True):
        assert torch.allclose(cpu.cte.cpu(), dev.cte.cpu(), atol=1e-4)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_vlm_margins_on_the_device_match_the_cpu(tmp_path, dtype):
    folder = tiny_gemma(tmp_path / "gemma")
    questions = ["Is there a pleural effusion?", "Is the heart enlarged?"]
    margins = []
    for device, dt in (("cpu", "float32"), (DEVICE, dtype)):
        vlm = load_yes_no_vlm(f"hf:{folder}", device=device, dtype=dt)
        assert next(vlm.module.parameters()).device.type == torch.device(device).type
        images = vlm.prepare_images(uint8_images(2, 32, seed=3))
        with torch.no_grad():
            m = vlm.margin(images, questions)
        assert m.dtype == torch.float32 and m.shape == (2,)
        margins.append(m.cpu())
    tol = 1e-4 if dtype == "float32" else 5e-2
    assert torch.allclose(margins[0], margins[1], atol=tol), margins
