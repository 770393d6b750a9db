"""Streaming SAE training: a peak that does not grow with the token count, statistics equal
to the in-memory ones, the quality of in-memory training, and bit-identical reruns."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae import SAE, SAEConfig, reconstruction_stats
from mechtune.interp.sae_analysis import token_states
from mechtune.interp.sae_store import ActivationStore, StoreWriter
from mechtune.interp.sae_stream import (
    ShuffleBuffer,
    gather_rows,
    input_statistics,
    reservoir_positions,
    stream_and_train,
    train_saes_streaming,
)
from mechtune.interp.sae_train import SAETrainConfig, _initialise, _input_scale, train_sae
from tests.interp.test_sae_store import images, texts
from tests.interp.test_sae_train import sparse_dictionary_data
from tests.interp.toy_vlm import D, ToyVLM
from tests.progress_helpers import Recorder


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: see test_sae_train
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def toy() -> ToyVLM:
    return ToyVLM().eval()


def store_of(x: torch.Tensor, folder: Path, chunk_tokens: int, layer: int = 0) -> ActivationStore:
    """A store of ``x [N, d]`` as one layer, added in uneven pieces."""
    writer = StoreWriter(folder, [layer], chunk_tokens)
    for start in range(0, x.shape[0], 97):
        writer.add({layer: x[start : start + 97]}, texts=1)
    return writer.close()


# ---------------------------------------------------------------- the peak


def test_peak_stays_the_same_when_the_token_count_doubles(toy, tmp_path):
    """Twice the texts, same model batch, chunk and buffer: the tokens double, and so does
    what the in-memory path holds, while the training peak stays put, within buffer +
    one shard, and the writing peak within chunk_tokens + one model batch."""
    sae = SAEConfig(d_in=1, d_sae=16, kind="topk", k=2)
    training = SAETrainConfig(steps=30, batch_size=8, stats_rows=16, log_every=10)
    settings = {"batch": 4, "chunk_tokens": 16, "buffer_tokens": 32}
    layers = [0, 2]
    one = texts(40, seed=3)
    runs = {}
    for name, qs in {"single": one, "double": one + one}.items():
        rows = [i % 8 for i in range(len(qs))]
        _, reports = stream_and_train(
            toy, images(), rows, qs, layers, sae, training, store_dir=tmp_path / name, **settings
        )
        held = token_states(toy, images(), rows, qs, layers)
        _, in_memory = train_sae(held[0], replace(sae, d_in=D), training)
        runs[name] = (reports, held, in_memory.memory)
    single, double = runs["single"], runs["double"]
    batch_tokens = 4 * 5  # 4 texts of at most 5 words
    for layer in layers:
        small, large = single[0][layer]["memory"], double[0][layer]["memory"]
        assert large["tokens"] == 2 * small["tokens"] > 2 * 32 + 16
        assert double[1][layer].shape[0] == 2 * single[1][layer].shape[0]  # token_states
        for key in ("peak_tokens", "peak_bytes", "buffer_tokens"):
            assert large[key] == small[key], key
        # what is pending when a shard is cut depends on where the chunk boundaries fall,
        # not on the token count: at most one model batch past chunk_tokens either way
        for memory in (small, large):
            assert 16 <= memory["write_peak_tokens"] <= 16 - 1 + batch_tokens
        assert small["peak_tokens"] <= 32 + 16
        assert small["peak_bytes"] == small["peak_tokens"] * D * 4
    assert double[2]["peak_tokens"] == 2 * single[2]["peak_tokens"]  # train_sae holds all
    assert double[2]["peak_bytes"] == 2 * single[2]["peak_bytes"]


# ---------------------------------------------------------------- statistics


@pytest.fixture(scope="module")
def offset_data() -> torch.Tensor:
    x, _ = sparse_dictionary_data(n=1000, d=16, atoms=32, seed=2)
    return x + 0.3


@pytest.mark.parametrize("b_dec_init", ["mean", "median", "zero"])
def test_statistics_equal_the_in_memory_ones(offset_data, tmp_path, b_dec_init):
    x = offset_data
    store = store_of(x, tmp_path, chunk_tokens=128)
    training = SAETrainConfig(b_dec_init=b_dec_init, stats_rows=5000)
    stats = input_statistics(store, 0, training, torch.Generator().manual_seed(0))
    assert stats.scale == pytest.approx(_input_scale(x), rel=1e-12)
    assert stats.scale == pytest.approx(float(x.double().square().sum(1).mean()) ** -0.5, rel=1e-12)
    reference = SAE(SAEConfig(16, 8, "topk", k=2))
    _initialise(reference, x, stats.scale, training, torch.Generator().manual_seed(0))
    torch.testing.assert_close(stats.b_dec, reference.b_dec.detach(), rtol=1e-6, atol=1e-7)
    if b_dec_init == "median":  # all rows sampled: exactly the median of the data
        assert torch.equal(stats.b_dec, x.median(dim=0).values * stats.scale)
    assert torch.equal(stats.sample, torch.arange(1000))
    unscaled = input_statistics(store, 0, replace(training, normalize=False), torch.Generator())
    assert unscaled.scale == 1.0


def test_the_median_of_a_sample_is_of_the_sampled_rows(offset_data, tmp_path):
    x = offset_data
    store = store_of(x, tmp_path, chunk_tokens=128)
    training = SAETrainConfig(b_dec_init="median", stats_rows=100)
    stats = input_statistics(store, 0, training, torch.Generator().manual_seed(0))
    assert len(stats.sample) == 100 and len(set(stats.sample.tolist())) == 100
    assert torch.equal(stats.sample, stats.sample.sort().values)
    assert torch.equal(stats.b_dec, x[stats.sample].median(dim=0).values * stats.scale)
    rows, peak = gather_rows(store, 0, stats.sample)
    assert torch.equal(rows, x[stats.sample]) and peak == 100 + 128
    assert stats.peak_tokens == 100 + 128  # the sample and one shard, never all 1000 rows
    other = input_statistics(store, 0, training, torch.Generator().manual_seed(1))
    assert not torch.equal(other.sample, stats.sample)


def algorithm_r(n: int, k: int, u: np.ndarray) -> list[int]:
    """Vitter's Algorithm R written as a plain loop over positions k..n-1."""
    reservoir = list(range(k))
    for i in range(k, n):
        j = int(np.floor(u[i - k] * (i + 1)))
        if j < k:
            reservoir[j] = i
    return sorted(reservoir)


def test_reservoir_positions_follow_algorithm_r_and_are_uniform():
    n, k = 30, 4
    for seed in range(20):
        u = torch.rand(n - k, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        got = reservoir_positions(n, k, torch.Generator().manual_seed(seed))
        assert got.tolist() == algorithm_r(n, k, u.numpy())
    assert torch.equal(reservoir_positions(3, 5, torch.Generator()), torch.arange(3))
    generator = torch.Generator().manual_seed(0)
    counts = np.zeros(12)
    draws = 3000
    for _ in range(draws):
        counts[reservoir_positions(12, 4, generator, chunk=3).numpy()] += 1
    # each position is in the sample with probability 4/12; 3 standard errors is 0.026
    assert np.abs(counts / draws - 1 / 3).max() < 0.03


def test_all_zero_activations_are_refused_naming_the_layer(tmp_path):
    store = store_of(torch.zeros(10, 4), tmp_path, chunk_tokens=4, layer=6)
    with pytest.raises(DataError, match="layer 6: the activations are all zero"):
        input_statistics(store, 6, SAETrainConfig(), torch.Generator())


# ---------------------------------------------------------------- training

FAST = SAETrainConfig(steps=300, batch_size=256, lr=3e-3, seed=0, log_every=50)


def test_streaming_trains_as_well_as_in_memory(tmp_path):
    x, _ = sparse_dictionary_data(n=4096)
    config = SAEConfig(64, 256, "topk", k=3)
    in_memory, _ = train_sae(x, config, FAST)
    store = store_of(x, tmp_path, chunk_tokens=700)
    r2 = {"in memory": reconstruction_stats(in_memory, x).r2}
    for buffer_tokens in (4096, 512):
        saes, reports = train_saes_streaming(store, {0: config}, FAST, buffer_tokens=buffer_tokens)
        r2[buffer_tokens] = reconstruction_stats(saes[0], x).r2
        assert reports[0].final.r2 == pytest.approx(r2[buffer_tokens])  # all rows sampled
        assert reports[0].memory["buffer_tokens"] == buffer_tokens
        assert reports[0].logged_steps == [49, 99, 149, 199, 249, 299]
        torch.testing.assert_close(saes[0].w_dec.norm(dim=1), torch.ones(256))
    assert r2["in memory"] > 0.95
    assert abs(r2[4096] - r2["in memory"]) < 0.01
    assert abs(r2[512] - r2["in memory"]) < 0.02


def test_streaming_is_bit_identical_for_a_seed_and_buffer(tmp_path):
    x, _ = sparse_dictionary_data(n=1200, d=16, atoms=32)
    store = store_of(x + 0.3, tmp_path, chunk_tokens=100)
    configs = {0: SAEConfig(16, 32, "jumprelu")}
    training = SAETrainConfig(steps=40, batch_size=64, stats_rows=300, sparsity_coefficient=1e-2)

    def weights(buffer_tokens: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
        saes, _ = train_saes_streaming(
            store, configs, replace(training, seed=seed), buffer_tokens=buffer_tokens
        )
        return saes[0].tensors()

    first, second = weights(), weights()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert not torch.equal(first["w_dec"], weights(seed=1)["w_dec"])
    assert not torch.equal(first["w_dec"], weights(buffer_tokens=512)["w_dec"])


def test_the_buffer_serves_each_row_once_per_epoch(tmp_path):
    """Rows enter once per epoch and leave once: no row is served twice before the shard
    stream wraps, and over many epochs every row is served about equally often."""
    x = torch.arange(40, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    store = store_of(x, tmp_path, chunk_tokens=7)
    buffer = ShuffleBuffer(store, 0, 16, 4, torch.Generator().manual_seed(0), "cpu")
    # a round serves max(1, 16 // 8) * 4 = 8 rows; 3 rounds read 16 + 8 + 8 = 32 of 40 rows
    served = torch.cat([buffer.next_batch()[:, 0] for _ in range(6)]).long().tolist()
    assert len(served) == len(set(served)) == 24 and buffer.epochs == 1
    assert buffer.capacity == 16 and buffer.peak_tokens == 16 + 7  # buffer + one shard
    served += torch.cat([buffer.next_batch()[:, 0] for _ in range(94)]).long().tolist()
    # 50 rounds read 16 + 49 * 8 = 408 rows: 10 whole epochs and 8 rows of an eleventh
    assert buffer.epochs == 11
    counts = np.bincount(served, minlength=40)
    assert counts.sum() == 400 and counts.min() >= 9 and counts.max() <= 11


def test_stream_and_train_fills_in_the_configs_and_cleans_up(toy, tmp_path, monkeypatch):
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    qs = texts(24)
    shape = SAEConfig(d_in=1, d_sae=12, kind="topk", k=2, model="toy")
    training = SAETrainConfig(steps=12, batch_size=8, log_every=4)
    seen, terms_seen, track = [], [], Recorder()

    def progress(layer, step, terms):
        seen.append((layer, step))
        terms_seen.append(terms["loss"])

    saes, reports = stream_and_train(
        toy,
        images(),
        [i % 8 for i in range(24)],
        qs,
        [2, 1],
        shape,
        training,
        batch=5,
        chunk_tokens=9,
        buffer_tokens=20,
        progress=progress,
        track=track,
    )
    assert list(scratch.iterdir()) == []  # the temporary store is gone
    assert sorted(saes) == [1, 2] and seen == [(1, 3), (1, 7), (1, 11), (2, 3), (2, 7), (2, 11)]
    # the capture counts the texts (5 a batch); each layer's stage its steps, with the loss
    track.check_complete()
    capture, first, second = track.stages
    assert (capture.description, capture.total, capture.counts) == (
        "capture activations at 2 layers",
        24,
        [5, 5, 5, 5, 4],
    )
    for stage, layer in ((first, 1), (second, 2)):
        assert (stage.description, stage.total) == (f"train SAE at layer {layer}", 12)
        assert stage.counts == [4, 4, 4]
    assert [f["loss"] for f in first.fields + second.fields] == terms_seen
    for layer, sae in saes.items():
        assert sae.config == replace(shape, d_in=D, layer=layer, hook=f"blocks.{layer}")
        assert not sae.training
        report = reports[layer]
        assert report["tokens"] == sum(len(q.split()) for q in qs) == report["n_rows"]
        assert {"r2", "fvu", "mse", "l0", "dead_fraction", "scale", "memory"} <= set(report)
        assert report["memory"]["chunk_tokens"] == 9 and report["memory"]["buffer_tokens"] == 20
    kept, kept_reports = stream_and_train(
        toy, images(), [i % 8 for i in range(24)], qs, [2, 1], shape, training,
        batch=5, chunk_tokens=9, buffer_tokens=20, store_dir=tmp_path / "kept",
    )  # fmt: skip
    store = ActivationStore.open(tmp_path / "kept")
    assert store.texts == 24 and store.layers[1].shards[0] == 9
    assert kept_reports == reports and torch.equal(kept[2].w_dec, saes[2].w_dec)


def test_streaming_settings_are_checked(toy, tmp_path):
    topk = SAEConfig(d_in=1, d_sae=12, kind="topk", k=2)
    with pytest.raises(ConfigError, match=r"buffer_tokens \(100\) must be >= the SAE batch_size"):
        stream_and_train(toy, images(), [0], ["a b"], [0], topk, buffer_tokens=100)
    with pytest.raises(ConfigError, match="bandwidth only act on jumprelu SAEs, not 'topk'"):
        stream_and_train(toy, images(), [0], ["a b"], [0], topk, SAETrainConfig(bandwidth=0.5))
    with pytest.raises(ConfigError, match="buffer_tokens must be an int >= 1, got 0"):
        stream_and_train(toy, images(), [0], ["a b"], [0], topk, buffer_tokens=0)
    store = store_of(torch.randn(20, 4), tmp_path, chunk_tokens=8, layer=3)
    small = SAETrainConfig(batch_size=4)
    with pytest.raises(ConfigError, match="layer 3: the SAE config has d_in=5, the store's"):
        train_saes_streaming(store, {3: SAEConfig(5, 8, "topk", k=2)}, small, buffer_tokens=8)
    with pytest.raises(ConfigError, match=r"layer 2 is not in the store"):
        train_saes_streaming(store, {2: SAEConfig(4, 8, "topk", k=2)}, small, buffer_tokens=8)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_the_sae_and_buffer_train_on_the_given_device(tmp_path):
    x, _ = sparse_dictionary_data(n=2048, d=32, atoms=64)
    store = store_of(x, tmp_path, chunk_tokens=300)
    import gc

    gc.collect()  # models of earlier gpu tests, kept alive by reference cycles
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    config = replace(FAST, stats_rows=256)  # the final statistics on a 256-row sample
    saes, reports = train_saes_streaming(
        store, {0: SAEConfig(32, 64, "topk", k=3)}, config, buffer_tokens=512, device="cuda"
    )
    assert saes[0].w_dec.device.type == "cuda" and reports[0].final.r2 > 0.9
    # the buffer, SAE, Adam state and statistics sample: less than the 2,048-row data
    assert torch.cuda.max_memory_allocated() - base < 2048 * 32 * 4
