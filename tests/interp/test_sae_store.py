"""The activation store: one model pass, readout states in shards on disk, atomic writes,
and errors that name the layer, the texts or the file."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae_analysis import token_states
from mechtune.interp.sae_store import (
    STORE_MANIFEST,
    ActivationStore,
    StoreWriter,
    capture_readout,
    shard_name,
    write_activation_store,
)
from tests.interp.toy_vlm import D, ToyVLM

WORDS = [
    "is",
    "there",
    "an",
    "effusion",
    "edema",
    "mass",
    "fracture",
    "any",
    "seen",
    "visible",
    "present",
    "in",
    "the",
    "lungs",
]


def texts(n: int, seed: int = 0) -> list[str]:
    """``n`` questions of 2-5 words (so 2-5 readout tokens each for the toy)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(2, 6, (1,), generator=g))
        picks = torch.randint(len(WORDS), (length,), generator=g).tolist()
        out.append(" ".join(WORDS[i] for i in picks))
    return out


def images(n: int = 8) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(1))


@pytest.fixture(scope="module")
def toy() -> ToyVLM:
    return ToyVLM().eval()


def stored_rows(store: ActivationStore, layer: int) -> torch.Tensor:
    parts = [store.read_shard(layer, i) for i in range(len(store.layers[layer].shards))]
    return torch.cat(parts)


@pytest.mark.parametrize("chunk_tokens", [7, 1000])
def test_store_holds_the_readout_states_in_order_and_in_shards(toy, tmp_path, chunk_tokens):
    qs = texts(20)
    rows = [i % 8 for i in range(20)]
    store = write_activation_store(
        toy, images(), rows, qs, [0, 2], tmp_path, batch=3, chunk_tokens=chunk_tokens
    )
    reference = token_states(toy, images(), rows, qs, [0, 2])
    n = sum(len(q.split()) for q in qs)
    for layer in (0, 2):
        assert torch.equal(stored_rows(store, layer), reference[layer])
        shards = store.layers[layer].shards
        assert store.tokens(layer) == n and store.d_in(layer) == D
        # every shard but the last is exactly chunk_tokens rows
        assert all(r == chunk_tokens for r in shards[:-1]) and 0 < shards[-1] <= chunk_tokens
        assert len(shards) == -(-n // chunk_tokens)
        # pending rows reach chunk_tokens at most by one batch (3 texts, <= 15 tokens)
        assert store.write_peak_tokens[layer] <= min(n, chunk_tokens - 1 + 15)
    assert store.write_peak_bytes >= max(store.write_peak_tokens.values()) * D * 4
    assert store.texts == 20
    assert ActivationStore.open(tmp_path) == store
    assert json.loads((tmp_path / STORE_MANIFEST).read_text())["layers"]["2"]["tokens"] == n
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert set(load_file(tmp_path / shard_name(0, 0))) == {"activations"}


def test_capture_readout_keeps_only_the_masked_rows_and_removes_its_hooks(toy):
    qs = ["is there effusion", "edema present"]
    mask = toy.readout_positions(images(2), qs)
    mask[0, 1] = False
    with torch.no_grad(), capture_readout(toy, [1], mask) as found:
        toy.margin(images(2), qs)
    x, _ = toy.states(images(2), qs, upto=2)
    assert torch.equal(found[1], x.detach()[mask])
    assert found[1].shape == (4, D)
    with pytest.raises(KeyError), capture_readout(toy, [0, 1], mask):
        raise KeyError("boom")
    assert not any(block._forward_hooks for block in toy.blocks)


class Failing(ToyVLM):
    """Raises in the third forward pass."""

    calls = 0

    def margin(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("out of memory")
        return super().margin(images, questions)


def test_a_store_whose_writing_failed_cannot_be_opened(tmp_path):
    qs = texts(12)
    write_activation_store(ToyVLM(), images(), [0] * 12, qs, [1], tmp_path, batch=4, chunk_tokens=5)
    failing = Failing().eval()
    with pytest.raises(RuntimeError, match="out of memory"):
        write_activation_store(
            failing, images(), [0] * 12, qs, [1], tmp_path, batch=2, chunk_tokens=5
        )
    assert not any(block._forward_hooks for block in failing.blocks)
    with pytest.raises(
        DataError, match=f"activation store {tmp_path / STORE_MANIFEST}: cannot be read"
    ):
        ActivationStore.open(tmp_path)
    # the earlier store's shards went before the new ones were written: only the failed
    # run's first two batches (4 texts) are on disk
    left = sorted(p.name for p in (tmp_path / "layer_1").iterdir())
    expected = sum(len(q.split()) for q in qs[:4]) // 5
    assert len(left) == expected


def test_nan_activations_are_refused_naming_the_layer_and_texts(toy, tmp_path):
    bad = images()
    bad[5, 0] = float("nan")
    with pytest.raises(DataError, match=r"layer 2 \(texts 3-5\): the activations contain NaN"):
        write_activation_store(toy, bad, list(range(8)), texts(8), [2, 0], tmp_path, batch=3)
    assert not (tmp_path / STORE_MANIFEST).exists()


class Mute(ToyVLM):
    """Reads no position."""

    def readout_positions(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        return torch.zeros_like(super().readout_positions(images, questions))


def test_no_readout_tokens_is_a_data_error(toy, tmp_path):
    with pytest.raises(DataError, match=r"no readout tokens for layer\(s\) \[0, 1\] in 0 texts"):
        write_activation_store(toy, images(), [], [], [0, 1], tmp_path)
    with pytest.raises(DataError, match=r"no readout tokens for layer\(s\) \[1\] in 3 texts"):
        write_activation_store(Mute(), images(), [0, 1, 2], texts(3), [1], tmp_path)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"batch": 0}, ConfigError, "batch must be an int >= 1, got 0"),
        ({"chunk_tokens": True}, ConfigError, "chunk_tokens must be an int >= 1, got True"),
        ({"layers": [0, 3]}, ConfigError, r"layers \[3\] are outside the model's 3 blocks"),
        ({"layers": [1, 1]}, ConfigError, r"layers has duplicates: \[1, 1\]"),
        ({"layers": []}, ConfigError, "layers is empty"),
        ({"rows": [0]}, DataError, "rows has 1 entries but texts has 2"),
    ],
)
def test_bad_store_settings_are_refused(toy, tmp_path, change, error, message):
    args: dict[str, Any] = {"rows": [0, 1], "layers": [0], "batch": 2, "chunk_tokens": 4}
    args |= change
    with pytest.raises(error, match=message):
        write_activation_store(
            toy,
            images(),
            args["rows"],
            texts(2),
            args["layers"],
            tmp_path,
            batch=args["batch"],
            chunk_tokens=args["chunk_tokens"],
        )


def test_shards_that_do_not_match_the_manifest_are_refused(tmp_path):
    writer = StoreWriter(tmp_path, [4], chunk_tokens=3)
    writer.add({4: torch.randn(7, 2)}, texts=1)
    store = writer.close()
    assert store.layers[4].shards == (3, 3, 1)
    save_file({"activations": torch.zeros(2, 2)}, str(tmp_path / shard_name(4, 1)))
    with pytest.raises(DataError, match=r"shard_00001.safetensors: key 'activations' should be"):
        store.read_shard(4, 1)
    (tmp_path / shard_name(4, 2)).unlink()
    with pytest.raises(DataError, match=r"shard_00002.safetensors: cannot be read"):
        store.read_shard(4, 2)
    save_file({"activations": torch.full((3, 2), float("inf"))}, str(tmp_path / shard_name(4, 0)))
    with pytest.raises(DataError, match="layer 4 has NaN or inf"):
        store.read_shard(4, 0)
    with pytest.raises(ConfigError, match=r"layer 5 is not in the store"):
        store.read_shard(5, 0)
    with pytest.raises(DataError, match=r"rows of shape \(2, 3\), expected \[n, 2\]"):
        writer.add({4: torch.zeros(2, 3)}, texts=1)
    (tmp_path / STORE_MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="format 'other', expected 'mechtune-activation-store/1'"):
        ActivationStore.open(tmp_path)
