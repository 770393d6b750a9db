"""Train SAEs from an activation store through a fixed-size shuffle buffer.

:func:`stream_and_train` is the whole path: one model pass writes the readout states of
the chosen layers to an on-disk store (:mod:`mechtune.interp.sae_store`), then
:func:`train_saes_streaming` trains one SAE per layer from it, layer after layer. No
``[N, d]`` tensor of all tokens of a layer is ever held: memory depends on
``chunk_tokens``, ``buffer_tokens`` and ``stats_rows``, not on N (each figure is measured
and reported as ``memory`` in the :class:`~mechtune.interp.sae_train.TrainReport`).

Per layer, with one ``torch.Generator`` seeded with ``training.seed`` (as
:func:`~mechtune.interp.sae_train.train_sae` does; each draw below comes from it, in
this order, so the same seed, store and ``buffer_tokens`` give bit-identical SAEs):

1. **Initial weights**: :func:`~mechtune.interp.sae_train.init_weights`.
2. **Statistics**, one streaming pass over the layer's shards: the input scale
   ``c = (mean ||x||²)^(-1/2)`` from a float64 sum of squares; the b_dec init ``c · mean``
   from a float64 sum, or ``c · median`` over a row sample. The sample is
   ``min(N, stats_rows)`` row positions drawn uniformly without replacement by reservoir
   sampling (Vitter's Algorithm R, 1985, over the positions 0..N-1: no table of N
   entries), then read from the shards; the same rows give the final reconstruction
   statistics (``train_sae`` draws a second sample for those).
3. **Training** (:func:`~mechtune.interp.sae_train.fit`, the loss terms, projection and
   scale folding of the in-memory trainer) on batches from a :class:`ShuffleBuffer` of
   ``min(buffer_tokens, N)`` rows on the training device. Shards enter it in a new
   random order each epoch; each round fills the free slots from the shard stream,
   shuffles all slots and serves half of them (SAELens's ``mixing_buffer``: the other half
   mixes with the next round's rows). Rows of the shard being read wait on the CPU.

Memory, in rows (tokens) of one layer: writing holds at most ``chunk_tokens`` + one model
batch's readout tokens per layer; training holds the buffer plus one shard (at most
``buffer_tokens + chunk_tokens``); the statistics pass and the final statistics hold the
sample plus one shard (``stats_rows + chunk_tokens``). Layers are trained one after the
other, so one layer's buffer exists at a time.

This follows SAELens's activation store and mixing buffer in design; the code is
mechtune's own.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechtune.errors import ConfigError, DataError
from mechtune.interp.sae import SAE, SAEConfig
from mechtune.interp.sae_store import (
    BYTES_PER_VALUE,
    DEFAULT_CHUNK_TOKENS,
    ActivationStore,
    positive_int,
    write_activation_store,
)
from mechtune.interp.sae_train import (
    SAETrainConfig,
    TrainReport,
    finish,
    fit,
    init_weights,
    resolve_training,
)
from mechtune.models.yes_no import YesNoVLM
from mechtune.progress import Advance, Tracker, stage

DEFAULT_BUFFER_TOKENS = 65536  # 640 MiB at d = 2560 (Gemma 3 4B) in float32
_FLOAT64_ROWS = 4096  # rows of a shard converted to float64 at a time for the sums
LayerProgress = Callable[[int, int, dict[str, float]], None]  # (layer, step, loss terms)


def reservoir_positions(
    n: int, k: int, generator: torch.Generator, chunk: int = 1 << 20
) -> torch.Tensor:
    """``[min(n, k)]`` distinct positions of ``range(n)``, ascending, each set of k equally
    likely: Algorithm R (Vitter 1985), position i >= k replacing a uniform slot j when
    ``j = floor(u · (i + 1)) < k``. Memory O(k + chunk); ``u`` from ``generator`` (float64).
    """
    if n <= k:
        return torch.arange(n)
    reservoir = np.arange(k, dtype=np.int64)
    for start in range(k, n, chunk):
        position = np.arange(start, min(n, start + chunk), dtype=np.int64)
        u = torch.rand(len(position), generator=generator, dtype=torch.float64).numpy()
        slot = np.floor(u * (position + 1)).astype(np.int64)
        hit = slot < k
        slot, position = slot[hit], position[hit]
        # Within a chunk a later position replaces an earlier one in the same slot.
        _, last = np.unique(slot[::-1], return_index=True)
        reservoir[slot[::-1][last]] = position[::-1][last]
    return torch.from_numpy(np.sort(reservoir))


@dataclass(frozen=True)
class InputStatistics:
    """What training needs to know of a layer's activations before the first step."""

    tokens: int  # N
    scale: float  # c, so that mean ||c·x||² = 1 (1.0 when normalize=False)
    b_dec: torch.Tensor  # [d_in] float32: the b_dec init, in normalised units
    sample: torch.Tensor  # [min(N, stats_rows)] int64 row positions, ascending
    peak_tokens: int  # most rows held at once by the statistics pass


def _shards(store: ActivationStore, layer: int) -> Iterator[tuple[int, torch.Tensor]]:
    """``(offset, shard [rows, d_in])`` of each shard of ``layer``, in store order."""
    offset = 0
    for index, rows in enumerate(store.layers[layer].shards):
        yield offset, store.read_shard(layer, index)
        offset += rows


def _pick(out: torch.Tensor, positions: torch.Tensor, offset: int, shard: torch.Tensor) -> None:
    """Copy the rows of ``shard`` (rows ``offset``... of the layer) at ascending
    ``positions`` into their places in ``out``."""
    lo, hi = torch.searchsorted(positions, torch.tensor([offset, offset + shard.shape[0]]))
    out[lo:hi] = shard[positions[lo:hi] - offset]


def gather_rows(
    store: ActivationStore, layer: int, positions: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """``([len(positions), d_in], peak)``: the rows at ascending ``positions`` of a layer,
    read shard by shard, and the most rows held at once (the result plus one shard)."""
    out = torch.empty(len(positions), store.d_in(layer))
    peak = 0
    for offset, shard in _shards(store, layer):
        _pick(out, positions, offset, shard)
        peak = max(peak, len(out) + shard.shape[0])
    return out, peak


@torch.no_grad()
def input_statistics(
    store: ActivationStore, layer: int, training: SAETrainConfig, generator: torch.Generator
) -> InputStatistics:
    """Scale, b_dec init and row sample of ``layer`` in one pass (module docstring, step 2);
    the same numbers :func:`~mechtune.interp.sae_train.train_sae` computes on the full
    tensor, up to float64 summation order (and, for the median when N > stats_rows, the
    rows sampled). DataError (naming the layer) when every activation is zero."""
    n, d = store.tokens(layer), store.d_in(layer)
    sample = reservoir_positions(n, training.stats_rows, generator)
    median = training.b_dec_init == "median"
    picked = torch.empty(len(sample) if median else 0, d)
    squares = torch.zeros((), dtype=torch.float64)
    total = torch.zeros(d, dtype=torch.float64)
    peak = 0
    for offset, shard in _shards(store, layer):
        for start in range(0, shard.shape[0], _FLOAT64_ROWS):
            part = shard[start : start + _FLOAT64_ROWS].to(torch.float64)
            squares += part.square().sum()
            total += part.sum(0)
        if median:
            _pick(picked, sample, offset, shard)
        peak = max(peak, len(picked) + shard.shape[0])
    mean_squared_norm = float(squares) / n
    if training.normalize and not mean_squared_norm > 0:
        raise DataError(f"layer {layer}: the activations are all zero; cannot train an SAE")
    scale = mean_squared_norm**-0.5 if training.normalize else 1.0
    if training.b_dec_init == "mean":
        b_dec = (total / n * scale).to(torch.float32)
    elif median:
        b_dec = picked.median(dim=0).values * scale
    else:
        b_dec = torch.zeros(d)
    return InputStatistics(n, scale, b_dec, sample, peak)


class ShuffleBuffer:
    """A fixed-capacity mixing buffer of one layer's rows, served in random batches.

    ``capacity = min(buffer_tokens, N)`` rows ``[capacity, d_in]`` float32 live on
    ``device``. Each round fills the free slots from the shard stream (shards in a new
    order from ``generator`` each epoch, rows of the shard being read kept on the CPU),
    draws a random order of all slots and serves its first ``max(1, capacity // (2·batch))
    · batch`` slots as batches; those slots are refilled at the next round.
    ``peak_tokens`` is the most rows held at once: the buffer plus the shard being read.
    """

    def __init__(
        self,
        store: ActivationStore,
        layer: int,
        buffer_tokens: int,
        batch_size: int,
        generator: torch.Generator,
        device: str | torch.device,
    ) -> None:
        if buffer_tokens < batch_size:
            raise ConfigError(
                f"buffer_tokens ({buffer_tokens}) must be >= batch_size ({batch_size})"
            )
        self.store, self.layer, self.generator = store, layer, generator
        self.device = torch.device(device)
        tokens = store.tokens(layer)
        self.capacity = min(buffer_tokens, tokens)
        self.batch = min(batch_size, tokens)
        self.data = torch.empty(self.capacity, store.d_in(layer), device=self.device)
        self.free = torch.arange(self.capacity)
        self.serving = torch.zeros(0, dtype=torch.long)
        self.cursor = 0
        self.queue: list[int] = []
        self.shard = torch.zeros(0, store.d_in(layer))
        self.shard_cursor = 0
        self.epochs = 0
        self.peak_tokens = self.capacity

    def _next_shard(self) -> None:
        if not self.queue:
            count = len(self.store.layers[self.layer].shards)
            self.queue = torch.randperm(count, generator=self.generator).tolist()
            self.epochs += 1
        self.shard = torch.zeros(0, self.shard.shape[1])  # let go of the last one first
        self.shard = self.store.read_shard(self.layer, self.queue.pop(0))
        self.shard_cursor = 0
        self.peak_tokens = max(self.peak_tokens, self.capacity + self.shard.shape[0])

    def _round(self) -> None:
        filled = 0
        while filled < len(self.free):
            if self.shard_cursor == self.shard.shape[0]:
                self._next_shard()
            take = min(len(self.free) - filled, self.shard.shape[0] - self.shard_cursor)
            slots = self.free[filled : filled + take].to(self.device)
            rows = self.shard[self.shard_cursor : self.shard_cursor + take]
            self.data[slots] = rows.to(self.device)
            filled += take
            self.shard_cursor += take
            del rows  # a view of the shard, which must not outlive it
        order = torch.randperm(self.capacity, generator=self.generator)
        self.serving = order[: max(1, self.capacity // (2 * self.batch)) * self.batch]
        self.free, self.cursor = self.serving, 0

    def next_batch(self) -> torch.Tensor:
        """``[batch, d_in]`` rows (raw activations) on the buffer's device."""
        if self.cursor + self.batch > len(self.serving):
            self._round()
        slots = self.serving[self.cursor : self.cursor + self.batch]
        self.cursor += self.batch
        return self.data[slots.to(self.device)]


def check_buffer(buffer_tokens: int, training: SAETrainConfig) -> int:
    """``buffer_tokens`` if it is an int >= ``training.batch_size``, else ConfigError."""
    positive_int("buffer_tokens", buffer_tokens)
    if buffer_tokens < training.batch_size:
        raise ConfigError(
            f"buffer_tokens ({buffer_tokens}) must be >= the SAE batch_size "
            f"({training.batch_size}): batches are drawn from the buffer"
        )
    return buffer_tokens


def _reporter(
    layer: int, advance: Advance, progress: LayerProgress | None
) -> Callable[[int, dict[str, float]], None]:
    """The ``fit`` callback of one layer: at each log interval (``step`` 0-based) count the
    steps since the last, show the interval's mean loss and call ``progress``."""
    shown = [0]

    def report_step(step: int, terms: dict[str, float]) -> None:
        advance(step + 1 - shown[0], loss=terms["loss"])
        shown[0] = step + 1
        if progress is not None:
            progress(layer, step, terms)

    return report_step


def train_saes_streaming(
    store: ActivationStore,
    configs: Mapping[int, SAEConfig],
    training: SAETrainConfig | None = None,
    *,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    device: str | torch.device = "cpu",
    progress: LayerProgress | None = None,
    track: Tracker | None = None,
) -> tuple[dict[int, SAE], dict[int, TrainReport]]:
    """One SAE per ``{layer: config}`` trained from ``store`` (module docstring), layer
    after layer, each SAE and its buffer on ``device``.

    Returns ``{layer: SAE}`` (float32, raw activation space, eval mode, on ``device``) and
    ``{layer: TrainReport}`` whose ``memory`` holds, in rows (tokens) of the layer and
    bytes: ``tokens`` (N), ``buffer_tokens`` (the buffer's capacity), ``chunk_tokens``,
    ``peak_tokens`` and ``peak_bytes`` (most activation rows held at once in any phase:
    statistics, buffer plus shard, final sample), ``write_peak_tokens`` (the store's, see
    :class:`~mechtune.interp.sae_store.ActivationStore`) and ``epochs`` (passes over the
    shards begun). ``progress(layer, step, terms)`` at each log interval; ``track`` gets
    one stage per layer counting its steps (updated at each log interval, with the loss).

    ConfigError for a layer not in the store, a ``d_in`` other than the store's, a
    jumprelu-only setting on another kind, or ``buffer_tokens`` < ``training.batch_size``;
    DataError for all-zero activations or a shard that is missing or misshapen.
    """
    training = training or SAETrainConfig()
    check_buffer(buffer_tokens, training)
    for layer, config in configs.items():
        resolve_training(config, training, {})
        if config.d_in != store.d_in(layer):
            raise ConfigError(
                f"layer {layer}: the SAE config has d_in={config.d_in}, the store's "
                f"activations have d={store.d_in(layer)}"
            )
    saes, reports = {}, {}
    for layer, config in sorted(configs.items()):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(training.seed)
        sae = SAE(config)
        init_weights(sae, training, generator)
        stats = input_statistics(store, layer, training, generator)
        with torch.no_grad():
            sae.b_dec.copy_(stats.b_dec)
        sae.to(device)
        buffer = ShuffleBuffer(store, layer, buffer_tokens, training.batch_size, generator, device)
        with stage(track, f"train SAE at layer {layer}", training.steps) as advance:
            report_step = _reporter(layer, advance, progress)
            history, logged = fit(sae, buffer.next_batch, stats.scale, training, report_step)
        train_peak, epochs, capacity = buffer.peak_tokens, buffer.epochs, buffer.capacity
        del buffer  # the buffer goes before the final sample is read
        sample, sample_peak = gather_rows(store, layer, stats.sample)
        peak = max(stats.peak_tokens, train_peak, sample_peak)
        memory = {
            "tokens": stats.tokens,
            "buffer_tokens": capacity,
            "chunk_tokens": store.chunk_tokens,
            "peak_tokens": peak,
            "peak_bytes": peak * config.d_in * BYTES_PER_VALUE,
            "write_peak_tokens": store.write_peak_tokens[layer],
            "epochs": epochs,
        }
        reports[layer] = finish(
            sae, stats.scale, sample, training, started, history, logged, memory
        )
        saes[layer] = sae
    return saes, reports


def _model_device(vlm: YesNoVLM) -> torch.device:
    parameter = next(iter(vlm.module.parameters()), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def stream_and_train(
    vlm: YesNoVLM,
    images: Any,
    rows: Sequence[int],
    texts: Sequence[str],
    layers: Sequence[int],
    sae: SAEConfig,
    training: SAETrainConfig | None = None,
    *,
    batch: int = 64,
    chunk_tokens: int = DEFAULT_CHUNK_TOKENS,
    buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
    store_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    progress: LayerProgress | None = None,
    track: Tracker | None = None,
) -> tuple[dict[int, SAE], dict[int, dict[str, Any]]]:
    """One SAE per layer of ``layers`` on the readout states of ``(images[rows[i]],
    texts[i])``: the model runs once, ``batch`` texts per pass, into a store of shards of
    at most ``chunk_tokens`` rows in ``store_dir`` (kept), or a temporary folder removed
    at the end; then :func:`train_saes_streaming` with ``buffer_tokens`` on ``device``
    (default: the model's). ``track`` gets a stage counting the texts the model reads,
    then one per layer trained (:func:`train_saes_streaming`).

    ``sae`` gives kind and width; ``d_in`` (the model's width), ``layer`` and ``hook``
    (``<layers_pattern>.<layer>``) are filled in per layer. Returns ``{layer: SAE}`` and
    ``{layer: report}``, a report being ``tokens`` (N), the final reconstruction statistics
    (:class:`~mechtune.interp.sae.ReconstructionStats` scalars: ``r2``, ``fvu``, ``mse``,
    ``l0``, ``dead_fraction``, ``n_rows``), ``scale`` and ``memory`` (see
    :func:`train_saes_streaming`).

    ConfigError for a bad ``batch``, ``chunk_tokens`` or ``buffer_tokens`` (checked before
    the model runs) or layers outside the model; DataError when the texts have no readout
    token, or a layer's activations hold NaN or inf (naming the layer and texts).
    """
    training = training or SAETrainConfig()
    check_buffer(buffer_tokens, training)
    resolve_training(sae, training, {})
    device = _model_device(vlm) if device is None else device
    with contextlib.ExitStack() as stack:
        if store_dir is None:
            store_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="mechtune-acts-"))
        with stage(track, f"capture activations at {len(layers)} layers", len(texts)) as advance:
            store = write_activation_store(
                vlm,
                images,
                rows,
                texts,
                layers,
                store_dir,
                batch=batch,
                chunk_tokens=chunk_tokens,
                progress=advance,
            )
        configs = {
            layer: replace(
                sae, d_in=store.d_in(layer), layer=layer, hook=f"{vlm.layers_pattern}.{layer}"
            )
            for layer in layers
        }
        saes, reports = train_saes_streaming(
            store,
            configs,
            training,
            buffer_tokens=buffer_tokens,
            device=device,
            progress=progress,
            track=track,
        )
    summary = {
        layer: {
            "tokens": report.memory["tokens"],
            **report.final.to_dict(),
            "scale": report.scale,
            "memory": report.memory,
        }
        for layer, report in reports.items()
    }
    return saes, summary


__all__ = [
    "DEFAULT_BUFFER_TOKENS",
    "InputStatistics",
    "ShuffleBuffer",
    "check_buffer",
    "gather_rows",
    "input_statistics",
    "reservoir_positions",
    "stream_and_train",
    "train_saes_streaming",
]
