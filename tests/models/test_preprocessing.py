"""Adapters own their preprocessing: paths, PIL images and uint8 arrays of any size go
through the model's own processing, checked against an independent computation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from mechtune.errors import DataError
from mechtune.models.spec import load_dual_encoder
from tests.tiny_models import tiny_clip, tiny_siglip

GREY = np.random.default_rng(0).integers(0, 256, (40, 50), dtype=np.uint8)  # H=40, W=50


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return load_dual_encoder(f"hf:{tiny_clip(tmp_path_factory.mktemp('clip'))}")


@pytest.fixture(scope="module")
def siglip(tmp_path_factory):
    return load_dual_encoder(f"hf:{tiny_siglip(tmp_path_factory.mktemp('siglip'))}")


@pytest.fixture(scope="module")
def phantom():
    return load_dual_encoder("phantom:default")


@pytest.fixture(scope="module")
def png(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "grey.png"
    Image.fromarray(GREY).save(path)
    return path


def _normalised(rgb: np.ndarray, mean, std) -> torch.Tensor:
    x = torch.from_numpy(rgb.astype(np.float32) / 255.0).permute(2, 0, 1)
    return (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)


def test_clip_pixels_are_clips_own_rule(clip):
    """CLIP (openai/CLIP ``_transform``): shortest edge to 32 (bicubic), centre crop
    32x32, CLIP mean/std; grey as three equal channels."""
    rgb = Image.fromarray(GREY).convert("RGB")
    resized = rgb.resize((40, 32), Image.Resampling.BICUBIC)  # 50 * 32 / 40 = 40 wide
    cropped = np.asarray(resized.crop((4, 0, 36, 32)))
    ref = _normalised(cropped, clip.image_processor.image_mean, clip.image_processor.image_std)
    ours = clip.pixel_values([GREY])
    assert ours.shape == (1, 3, 32, 32)
    assert torch.allclose(ours[0], ref, atol=1e-5)
    raw = ours[0] * torch.tensor(clip.image_processor.image_std).view(3, 1, 1)
    raw = raw + torch.tensor(clip.image_processor.image_mean).view(3, 1, 1)
    assert torch.allclose(raw[0], raw[1], atol=1e-6) and torch.allclose(raw[1], raw[2], atol=1e-6)


def test_siglip_pixels_are_siglips_own_rule(siglip):
    """SigLIP: resize to 32x32 (bicubic, aspect not kept), mean = std = 0.5."""
    rgb = np.asarray(
        Image.fromarray(GREY).convert("RGB").resize((32, 32), Image.Resampling.BICUBIC)
    )
    ref = _normalised(rgb, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert torch.allclose(siglip.pixel_values([GREY])[0], ref, atol=1e-5)


@pytest.mark.parametrize("name", ["clip", "siglip", "phantom"])
def test_path_pil_and_array_embed_equally(name, clip, siglip, phantom, png):
    enc = {"clip": clip, "siglip": siglip, "phantom": phantom}[name]
    rgb = np.repeat(GREY[..., None], 3, axis=-1)
    forms = {
        "path": [png],
        "str": [str(png)],
        "pil": [Image.fromarray(GREY)],
        "pil_rgb": [Image.fromarray(rgb)],
        "array": [GREY],
        "array_rgb": [rgb],
        "batch": GREY[None],
        "tensor_batch": torch.from_numpy(GREY[None]),
    }
    out = {k: enc.encode_images(v) for k, v in forms.items()}
    for k, v in out.items():
        assert v.dtype == torch.float32 and v.shape[0] == 1, k
        assert torch.equal(v, out["array"]), (name, k)


def test_mixed_sizes_in_one_call_equal_separate_calls(clip):
    other = np.random.default_rng(1).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    both = clip.encode_images([GREY, other], batch_size=2)
    assert torch.allclose(both[0], clip.encode_images([GREY])[0], atol=1e-6)
    assert torch.allclose(both[1], clip.encode_images([other])[0], atol=1e-6)


def test_phantom_passes_its_own_size_unchanged_and_resizes_others(phantom):
    world = np.random.default_rng(2).integers(0, 256, (3, 128, 128), dtype=np.uint8)
    with torch.no_grad():
        direct = torch.nn.functional.normalize(
            phantom.model.image_encoder(torch.from_numpy(world)), dim=-1
        )
    assert torch.equal(phantom.encode_images(world), direct)  # today's numbers do not move
    resized = np.asarray(Image.fromarray(GREY).resize((128, 128), Image.Resampling.BILINEAR))
    assert torch.equal(phantom.encode_images([GREY]), phantom.encode_images(resized[None]))
    assert phantom.preprocess_config() == {
        "adapter": "PhantomDualEncoder",
        "mode": "L",
        "image_size": 128,
        "resample": "bilinear",
    }


def test_bad_pixels_are_refused(clip):
    with pytest.raises(DataError, match="images must be uint8 pixels, got dtype float32"):
        clip.encode_images(np.zeros((1, 8, 8), dtype=np.float32))
    with pytest.raises(DataError, match=r"expected uint8 \[B, H, W\] or \[B, H, W, 3\]"):
        clip.encode_images(np.zeros((1, 8, 8, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="image file not found"):
        clip.encode_images(["/nonexistent/x.png"])
