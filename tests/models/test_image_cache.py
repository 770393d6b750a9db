"""The on-disk image-embedding cache: reused on a second run, re-embedded when a file
changes, keyed by everything the embedding depends on, exact."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from mechtune.data.sources.manifest import Manifest
from mechtune.models.image_cache import CacheStats, cache_key, embed_study_images, key_digest
from mechtune.models.spec import load_dual_encoder
from tests.tiny_models import tiny_clip


def _images(n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (24 + 4 * i, 30), dtype=np.uint8) for i in range(n)]


@pytest.fixture()
def manifest(tmp_path):
    rows = ["image,patient_id,study_id,Pleural Effusion"]
    for i, img in enumerate(_images(5, 0)):
        Image.fromarray(img).save(tmp_path / f"img{i}.png")
        rows.append(f"img{i}.png,p{i},s{i},{i % 2}")
    rows.append("img0.png,p9,s9,1")  # the same file twice: one embedding
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "manifest.csv"


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


class Counting:
    """Wraps an encoder and counts the images it is asked to embed."""

    def __init__(self, encoder):
        self.encoder, self.embedded = encoder, 0

    def __getattr__(self, name):
        return getattr(self.encoder, name)

    def encode_images(self, images, batch_size=64):
        self.embedded += len(images)
        return self.encoder.encode_images(images, batch_size)


def test_second_run_reuses_and_changed_file_is_reembedded(clip_dir, manifest, tmp_path):
    spec = f"hf:{clip_dir}"
    enc = Counting(load_dual_encoder(spec))
    source = Manifest(manifest)
    studies = source.studies()
    cache = tmp_path / "cache"
    first_stats = CacheStats()
    first = embed_study_images(
        enc, source, studies, cache_dir=cache, spec=spec, batch_size=2, stats=first_stats
    )
    assert first.shape == (6, 16) and first.dtype == torch.float32
    assert (first_stats.hits, first_stats.misses, enc.embedded) == (0, 6, 5)  # 5 distinct files
    assert torch.equal(first[0], first[5])
    fresh = enc.encoder.encode_images([source.load_image(s, "RGB") for s in studies])
    assert torch.allclose(first, fresh, atol=1e-6)
    key = json.loads((first_stats.folder / "key.json").read_text())
    assert key["spec"] == spec and key["dtype"] == "float32" and key["image_mode"] == "RGB"

    enc.embedded = 0
    again_stats = CacheStats()
    done = []
    again = embed_study_images(
        enc, source, studies, cache_dir=cache, spec=spec, stats=again_stats, progress=done.append
    )
    assert (again_stats.hits, again_stats.misses, enc.embedded) == (6, 0, 0)
    assert torch.equal(again, first) and sum(done) == 6  # cached values are exact

    Image.fromarray(_images(1, 7)[0]).save(manifest.parent / "img2.png")  # change one file
    changed_stats = CacheStats()
    changed = embed_study_images(
        enc, Manifest(manifest), studies, cache_dir=cache, spec=spec, stats=changed_stats
    )
    assert (changed_stats.hits, changed_stats.misses, enc.embedded) == (5, 1, 1)
    assert not torch.allclose(changed[2], first[2])
    assert torch.equal(changed[[0, 1, 3, 4, 5]], first[[0, 1, 3, 4, 5]])
    assert len(list(first_stats.folder.glob("shard-*.safetensors"))) == 2


def test_key_changes_with_dtype_preprocessing_weights_and_spec(clip_dir, tmp_path):
    spec = f"hf:{clip_dir}"
    base = load_dual_encoder(spec)
    digest = key_digest(cache_key(base, spec))
    assert key_digest(cache_key(load_dual_encoder(spec), spec)) == digest  # stable
    half = load_dual_encoder(spec, dtype="bfloat16")
    assert key_digest(cache_key(half, spec)) != digest
    assert key_digest(cache_key(base, spec + "/")) != digest
    other = load_dual_encoder(spec)
    other.image_processor.image_mean = [0.5, 0.5, 0.5]
    assert key_digest(cache_key(other, spec)) != digest
    reseeded = tiny_clip(tmp_path / "reseeded", seed=1)
    assert load_dual_encoder(f"hf:{reseeded}").weights_fingerprint() != base.weights_fingerprint()


def test_in_memory_fingerprint_follows_the_state_dict():
    from tests.tiny_models import clip_bpe_tokenizer, clip_with_tokenizer

    a = clip_with_tokenizer(clip_bpe_tokenizer(), seed=0)
    b = clip_with_tokenizer(clip_bpe_tokenizer(), seed=0)
    assert a.weights_fingerprint() == b.weights_fingerprint()
    with torch.no_grad():
        b.model.vision_model.post_layernorm.bias.add_(1e-3)
    assert a.weights_fingerprint() != b.weights_fingerprint()


def test_phantom_world_hashes_pixels(tmp_path):
    from mechtune.sim.source import PhantomWorldSource
    from mechtune.sim.world import WorldConfig, make_world, save_world

    save_world(make_world(WorldConfig(n_studies=6, seed=3)), tmp_path / "world")
    source = PhantomWorldSource(tmp_path / "world")
    studies = source.studies()
    assert source.image_file(studies[0]) is None
    enc = Counting(load_dual_encoder("phantom:default"))
    stats = CacheStats()
    first = embed_study_images(
        enc, source, studies, cache_dir=tmp_path / "c", spec="phantom:default", stats=stats
    )
    world = np.stack([source.load_image(s, "L") for s in studies])
    assert torch.equal(first, enc.encoder.encode_images(world))
    again = embed_study_images(
        enc, source, studies, cache_dir=tmp_path / "c", spec="phantom:default", stats=stats
    )
    assert stats.hits == 6 and stats.misses == 0 and enc.embedded == 6
    assert torch.equal(again, first)
    uncached = embed_study_images(enc, source, studies, cache_dir=None, spec="phantom:default")
    assert torch.equal(uncached, first)
