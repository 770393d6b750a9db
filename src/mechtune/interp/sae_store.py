"""An activation store on disk: the residual states an SAE trains on, written in shards.

One pass of a yes/no VLM over a list of (image row, text) pairs, ``batch`` texts per
forward pass, captures the output of the chosen blocks at the model's readout positions
(:meth:`~mechtune.models.yes_no.YesNoVLM.readout_positions`). The captured rows are moved
to the CPU as float32 in the hook itself (the ``[B, T, d]`` states are never kept) and
gathered per layer until ``chunk_tokens`` rows are pending, then written as one shard. So
the model runs once, and at most ``chunk_tokens`` + one model batch's readout tokens are
held per layer, however many texts there are.

Layout of a store folder::

    store.json                               # the manifest, written last
    layer_<L>/shard_<iiiii>.safetensors      # {"activations": [rows, d_in] float32}

Every file is written atomically (:func:`mechtune.data.io.atomic_path`); the manifest comes
last and lists each shard's row count, so a store whose writing stopped has no manifest
and is not opened. Rows are stored in the order of the texts, then of the positions.

This follows the design of SAELens's activation cache (``CacheActivationsRunner``: a
model pass writes activations to disk in shards that training reads back); the code is
mechtune's own.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechtune.data.io import atomic_path, write_json
from mechtune.errors import ConfigError, DataError
from mechtune.models.yes_no import YesNoVLM, edit_block_output, take_rows

STORE_MANIFEST = "store.json"
STORE_FORMAT = "mechtune-activation-store/1"
SHARD_KEY = "activations"
DEFAULT_CHUNK_TOKENS = 8192  # 80 MiB per shard at d = 2560 (Gemma 3 4B) in float32
BYTES_PER_VALUE = 4  # shards are float32


def positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def shard_name(layer: int, index: int) -> str:
    """``layer_<L>/shard_<iiiii>.safetensors``, relative to the store folder."""
    return f"layer_{layer}/shard_{index:05d}.safetensors"


@dataclass(frozen=True)
class LayerShards:
    """One layer's part of a store: width, row count and the rows of each shard."""

    d_in: int
    shards: tuple[int, ...]  # rows per shard, in store order

    @property
    def tokens(self) -> int:
        return sum(self.shards)


@dataclass(frozen=True)
class ActivationStore:
    """A written store (see the module docstring); read it with :meth:`read_shard`.

    ``write_peak_tokens``: per layer, the most rows that were held in memory at once while
    writing (pending rows of the layer, at most ``chunk_tokens`` + one model batch's
    readout tokens); ``write_peak_bytes``: the most bytes of pending rows of all layers
    together.
    """

    folder: Path
    layers: dict[int, LayerShards]
    chunk_tokens: int
    texts: int
    write_peak_tokens: dict[int, int]
    write_peak_bytes: int

    def tokens(self, layer: int) -> int:
        """Rows (readout tokens) stored for ``layer``."""
        return self._layer(layer).tokens

    def d_in(self, layer: int) -> int:
        return self._layer(layer).d_in

    def _layer(self, layer: int) -> LayerShards:
        if layer not in self.layers:
            raise ConfigError(
                f"layer {layer} is not in the store {self.folder} ({sorted(self.layers)})"
            )
        return self.layers[layer]

    def read_shard(self, layer: int, index: int) -> torch.Tensor:
        """Shard ``index`` of ``layer``: ``[rows, d_in]`` float32 on the CPU.

        DataError (naming the file) when the file is missing or its tensor's shape or dtype
        is not the manifest's, or when it holds NaN or inf.
        """
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        info = self._layer(layer)
        path = self.folder / shard_name(layer, index)
        try:
            tensor = load_file(str(path)).get(SHARD_KEY)
        except (OSError, SafetensorError) as error:
            raise DataError(f"activation store shard {path}: cannot be read ({error})") from error
        want = (info.shards[index], info.d_in)
        if tensor is None or tuple(tensor.shape) != want or tensor.dtype != torch.float32:
            found = None if tensor is None else (tuple(tensor.shape), str(tensor.dtype))
            raise DataError(
                f"activation store shard {path}: key {SHARD_KEY!r} should be float32 {want}, "
                f"found {found}"
            )
        if not torch.isfinite(tensor).all():
            raise DataError(f"activation store shard {path}: layer {layer} has NaN or inf")
        return tensor

    def to_dict(self) -> dict[str, Any]:
        """The manifest (``store.json``)."""
        return {
            "format": STORE_FORMAT,
            "chunk_tokens": self.chunk_tokens,
            "texts": self.texts,
            "dtype": "float32",
            "layers": {
                str(layer): {"d_in": info.d_in, "tokens": info.tokens, "shards": list(info.shards)}
                for layer, info in sorted(self.layers.items())
            },
            "write_peak_tokens": {str(k): v for k, v in sorted(self.write_peak_tokens.items())},
            "write_peak_bytes": self.write_peak_bytes,
        }

    @classmethod
    def open(cls, folder: str | Path) -> ActivationStore:
        """The store in ``folder``; DataError naming the file when its manifest is missing
        (a store whose writing did not finish) or not one mechtune wrote."""
        folder = Path(folder)
        path = folder / STORE_MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            raise DataError(f"activation store {path}: cannot be read ({error})") from error
        if not isinstance(data, dict) or data.get("format") != STORE_FORMAT:
            found = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise DataError(f"activation store {path}: format {found!r}, expected {STORE_FORMAT!r}")
        try:
            layers = {
                int(k): LayerShards(int(v["d_in"]), tuple(int(r) for r in v["shards"]))
                for k, v in data["layers"].items()
            }
            return cls(
                folder=folder,
                layers=layers,
                chunk_tokens=int(data["chunk_tokens"]),
                texts=int(data["texts"]),
                write_peak_tokens={int(k): int(v) for k, v in data["write_peak_tokens"].items()},
                write_peak_bytes=int(data["write_peak_bytes"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise DataError(f"activation store {path}: malformed manifest ({error!r})") from error


class StoreWriter:
    """Appends rows per layer and writes a shard whenever ``chunk_tokens`` are pending.

    :meth:`close` writes the remainders and the manifest; until then (and so after an
    error) the folder has no manifest. ``folder`` is created; an earlier
    store in it is removed first (its manifest, then its shards).
    """

    def __init__(self, folder: str | Path, layers: Sequence[int], chunk_tokens: int) -> None:
        self.folder = Path(folder)
        self.chunk_tokens = positive_int("chunk_tokens", chunk_tokens)
        if not layers:
            raise ConfigError("layers is empty; name at least one layer to store")
        if len(set(layers)) != len(layers):
            raise ConfigError(f"layers has duplicates: {list(layers)}")
        self.layers = list(layers)
        self.texts = 0
        self._pending: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
        self._pending_rows = dict.fromkeys(layers, 0)
        self._shards: dict[int, list[int]] = {layer: [] for layer in layers}
        self._d_in: dict[int, int] = {}
        self.peak_tokens = dict.fromkeys(layers, 0)
        self.peak_bytes = 0
        self._clear()

    def _clear(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / STORE_MANIFEST).unlink(missing_ok=True)
        for old in self.folder.glob("layer_*/shard_*.safetensors"):
            old.unlink()

    def add(self, rows: Mapping[int, torch.Tensor], texts: int, where: str = "") -> None:
        """Append ``{layer: [n, d_in]}`` rows (of ``texts`` more texts) to every layer.

        DataError naming the layer (and ``where``, e.g. the texts' indices) for NaN or inf,
        or a width that differs from the layer's earlier rows.
        """
        for layer in self.layers:
            part = rows[layer].detach().to("cpu", torch.float32)
            width = self._d_in.setdefault(layer, part.shape[-1]) if part.ndim == 2 else None
            if part.ndim != 2 or part.shape[1] != width:
                raise DataError(
                    f"layer {layer}{where}: rows of shape {tuple(part.shape)}, expected "
                    f"[n, {width or 'd_in'}]"
                )
            if not torch.isfinite(part).all():
                raise DataError(f"layer {layer}{where}: the activations contain NaN or inf")
            self._pending[layer].append(part)
            self._pending_rows[layer] += part.shape[0]
        self.texts += texts
        for layer in self.layers:
            self.peak_tokens[layer] = max(self.peak_tokens[layer], self._pending_rows[layer])
        held = sum(self._pending_rows[layer] * self._d_in[layer] for layer in self.layers)
        self.peak_bytes = max(self.peak_bytes, held * BYTES_PER_VALUE)
        for layer in self.layers:
            while self._pending_rows[layer] >= self.chunk_tokens:
                self._flush(layer, self.chunk_tokens)

    def _flush(self, layer: int, rows: int) -> None:
        from safetensors.torch import save_file

        pending = torch.cat(self._pending[layer])
        shard, rest = pending[:rows].contiguous(), pending[rows:]
        with atomic_path(self.folder / shard_name(layer, len(self._shards[layer]))) as tmp:
            save_file({SHARD_KEY: shard}, str(tmp))
        self._shards[layer].append(rows)
        self._pending[layer] = [rest] if rest.shape[0] else []
        self._pending_rows[layer] = rest.shape[0]

    def close(self) -> ActivationStore:
        """Write the remainders and the manifest; DataError when no row was stored."""
        for layer in self.layers:
            if self._pending_rows[layer]:
                self._flush(layer, self._pending_rows[layer])
        empty = [layer for layer in self.layers if not self._shards[layer]]
        if empty:
            raise DataError(
                f"no readout tokens for layer(s) {empty} in {self.texts} texts; nothing to "
                "train an SAE on"
            )
        store = ActivationStore(
            folder=self.folder,
            layers={
                layer: LayerShards(self._d_in[layer], tuple(self._shards[layer]))
                for layer in self.layers
            },
            chunk_tokens=self.chunk_tokens,
            texts=self.texts,
            write_peak_tokens=dict(self.peak_tokens),
            write_peak_bytes=self.peak_bytes,
        )
        write_json(self.folder / STORE_MANIFEST, store.to_dict())
        return store


@contextlib.contextmanager
def capture_readout(
    vlm: YesNoVLM, layers: Sequence[int], mask: torch.Tensor
) -> Iterator[dict[int, torch.Tensor]]:
    """While open, each forward pass stores ``{layer: [n, d]}``: block ``layer``'s output
    at the positions of ``mask [B, T]`` (n = its True count), float32 on the CPU. Only those
    rows are kept, never the ``[B, T, d]`` states; a later pass overwrites earlier entries.
    Hooks are removed on exit, an error included."""
    found: dict[int, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for layer in layers:

            def keep(state: torch.Tensor, layer: int = layer) -> None:
                found[layer] = state.detach()[mask.to(state.device)].to("cpu", torch.float32)

            stack.enter_context(edit_block_output(vlm.layers[layer], keep))
        yield found


@torch.no_grad()
def write_activation_store(
    vlm: YesNoVLM,
    images: Any,
    rows: Sequence[int],
    texts: Sequence[str],
    layers: Sequence[int],
    folder: str | Path,
    *,
    batch: int = 64,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    progress: Callable[[int], None] | None = None,
) -> ActivationStore:
    """Run ``vlm`` once over ``(images[rows[i]], texts[i])``, ``batch`` texts at a time,
    and store block outputs at the readout positions of ``layers`` in ``folder``
    (``progress(n)`` after each batch of n texts).

    Returns the :class:`ActivationStore` (rows ``[tokens, d_in]`` per layer, float32).
    ConfigError for a bad ``batch``/``chunk_tokens`` or a layer the model lacks; DataError
    when ``rows`` and ``texts`` differ in length, when the texts have no readout token, or
    when a layer's activations hold NaN or inf (naming the layer and the texts' indices).
    """
    batch = positive_int("batch", batch)
    if len(rows) != len(texts):
        raise DataError(f"rows has {len(rows)} entries but texts has {len(texts)}")
    outside = [layer for layer in layers if not 0 <= layer < len(vlm.layers)]
    if outside:
        raise ConfigError(f"layers {outside} are outside the model's {len(vlm.layers)} blocks")
    writer = StoreWriter(folder, layers, chunk_tokens)
    for start in range(0, len(texts), batch):
        imgs = take_rows(images, rows[start : start + batch])
        questions = list(texts[start : start + batch])
        mask = vlm.readout_positions(imgs, questions)
        with capture_readout(vlm, layers, mask) as found:
            vlm.margin(imgs, questions)
        writer.add(found, len(questions), f" (texts {start}-{start + len(questions) - 1})")
        if progress is not None:
            progress(len(questions))
    return writer.close()


__all__ = [
    "DEFAULT_CHUNK_TOKENS",
    "STORE_MANIFEST",
    "ActivationStore",
    "LayerShards",
    "StoreWriter",
    "capture_readout",
    "shard_name",
    "write_activation_store",
]
