"""An on-disk cache of image embeddings: each image is embedded once per model.

Every negation method keeps the image tower frozen, so an image's embedding depends only
on the model's image path and the image itself. The cache is a folder per *model key*,

    cache_dir/<sha256 of the key>/key.json          the key, for people
    cache_dir/<sha256 of the key>/shard-<id>.safetensors

where the key is the model spec, :meth:`DualEncoder.weights_fingerprint` (the weight
files' hashes), :meth:`DualEncoder.preprocess_config`, the image mode and the weights'
dtype. Each shard holds ``hashes`` (uint8 ``[M, 32]``, sha256 digests of the images'
contents) and ``embeddings`` (float32 ``[M, D]``, L2-normalised), written atomically, so
an interrupted run leaves no half shard and concurrent runs never see one. An image's
content hash is the sha256 of its file's bytes (:meth:`ImageStudySource.image_file`), or of
its decoded pixels (shape and bytes) when it is not a file of its own (the phantom world's
rows of ``images.npy``): a changed file is re-embedded, an unchanged one is reused
whatever its name. Every run that embeds something adds one shard.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mechtune.data.io import atomic_path, dumps_json, write_json
from mechtune.data.schema import Study
from mechtune.data.sources.base import ImageStudySource
from mechtune.errors import DataError
from mechtune.models.dual_encoder import DualEncoder

KEY_FILE = "key.json"
CACHE_FORMAT = 1


@dataclass
class CacheStats:
    """What one :func:`embed_study_images` call did: ``hits`` images found in the cache,
    ``misses`` images embedded (both count studies; two studies with the same image
    content are embedded once), ``folder`` the model key's folder (None without a cache)."""

    hits: int = 0
    misses: int = 0
    folder: Path | None = None


def cache_key(encoder: DualEncoder, spec: str) -> dict[str, Any]:
    """The model key: everything an image embedding depends on besides the image."""
    return {
        "format": CACHE_FORMAT,
        "spec": spec,
        "weights": encoder.weights_fingerprint(),
        "preprocess": encoder.preprocess_config(),
        "image_mode": encoder.image_mode,
        "dtype": str(encoder.dtype).removeprefix("torch."),
    }


def key_digest(key: dict[str, Any]) -> str:
    """sha256 hex of the key's canonical JSON (sorted keys)."""
    return hashlib.sha256(dumps_json(key, sort_keys=True).encode()).hexdigest()


def content_hash(source: ImageStudySource, study: Study, mode: str) -> tuple[bytes, Any]:
    """``(sha256 digest, decoded pixels or None)`` of one item's image: of its file's bytes
    when it has one, else of its decoded pixels in ``mode`` (returned, to be embedded
    without decoding twice). Raises ``DataError`` naming a file that cannot be read."""
    path = source.image_file(study)
    h = hashlib.sha256()
    if path is not None:
        h.update(b"file\0")
        try:
            with open(path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as exc:
            raise DataError(f"{path}: cannot read image file ({exc})") from None
        return h.digest(), None
    pixels = np.ascontiguousarray(source.load_image(study, mode))
    h.update(f"pixels\0{pixels.dtype}\0{pixels.shape}\0".encode())
    h.update(pixels.tobytes())
    return h.digest(), pixels


def _read_shards(folder: Path) -> dict[bytes, torch.Tensor]:
    found: dict[bytes, torch.Tensor] = {}
    for shard in sorted(folder.glob("shard-*.safetensors")):
        try:
            tensors = load_file(str(shard))
            hashes, embeddings = tensors["hashes"], tensors["embeddings"]
        except (OSError, KeyError, RuntimeError) as exc:
            raise DataError(
                f"{shard}: not an image-embedding cache shard ({exc}); delete it"
            ) from None
        for digest, row in zip(hashes.numpy(), embeddings, strict=True):
            found[digest.tobytes()] = row
    return found


def _write_shard(folder: Path, digests: list[bytes], embeddings: torch.Tensor) -> Path:
    name = hashlib.sha256(b"".join(digests)).hexdigest()[:24]
    path = folder / f"shard-{name}.safetensors"
    hashes = torch.frombuffer(bytearray(b"".join(digests)), dtype=torch.uint8).view(-1, 32)
    with atomic_path(path) as tmp:
        save_file(
            {"hashes": hashes, "embeddings": embeddings.contiguous()},
            str(tmp),
            metadata={"format": str(CACHE_FORMAT)},
        )
    return path


def embed_study_images(
    encoder: DualEncoder,
    source: ImageStudySource,
    studies: Sequence[Study],
    *,
    cache_dir: Path | None,
    spec: str,
    batch_size: int = 64,
    progress: Callable[[int], None] | None = None,
    stats: CacheStats | None = None,
) -> torch.Tensor:
    """Image embeddings of ``studies``: float32 ``[len(studies), D]`` on the CPU,
    L2-normalised, rows in ``studies`` order.

    Pixels come from ``source.load_image(study, encoder.image_mode)`` and go through the
    encoder's own preprocessing (``encode_images``, ``batch_size`` images at a time).
    With ``cache_dir``, embeddings found under the model key (see the module docstring)
    are read instead of computed, and the new ones are stored. ``spec`` is the model spec
    the encoder was loaded from (part of the key). ``progress`` is called with the number
    of studies done after each batch (hits at once). ``stats``, when given, is filled with
    the hit and miss counts. Raises ``DataError`` for unreadable images or a corrupt
    shard (named).
    """
    stats = stats if stats is not None else CacheStats()
    stats.hits = stats.misses = 0
    studies = list(studies)
    mode = encoder.image_mode
    if cache_dir is None:
        out = []
        for lo in range(0, len(studies), batch_size):
            chunk = studies[lo : lo + batch_size]
            out.append(encoder.encode_images(source.load_images(chunk, mode), batch_size))
            stats.misses += len(chunk)
            if progress is not None:
                progress(len(chunk))
        return torch.cat(out) if out else torch.empty(0)

    key = cache_key(encoder, spec)
    folder = Path(cache_dir) / key_digest(key)
    stats.folder = folder
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / KEY_FILE).is_file():
        write_json(folder / KEY_FILE, key, sort_keys=True)
    found = _read_shards(folder)
    digests: list[bytes] = []
    todo: dict[bytes, tuple[Study, Any]] = {}  # unique missing contents, first study
    for study in studies:
        digest, pixels = content_hash(source, study, mode)
        digests.append(digest)
        if digest not in found and digest not in todo:
            todo[digest] = (study, pixels)
    stats.misses = sum(d not in found for d in digests)
    stats.hits = len(studies) - stats.misses
    if progress is not None and stats.hits:
        progress(stats.hits)
    new_digests = list(todo)
    uses = Counter(digests)
    new_rows = []
    for lo in range(0, len(new_digests), batch_size):
        pending = [todo[d] for d in new_digests[lo : lo + batch_size]]
        images = [px if px is not None else source.load_image(st, mode) for st, px in pending]
        new_rows.append(encoder.encode_images(images, batch_size))
        if progress is not None:
            progress(sum(uses[d] for d in new_digests[lo : lo + batch_size]))
    if new_rows:
        embeddings = torch.cat(new_rows).to(torch.float32)
        _write_shard(folder, new_digests, embeddings)
        found.update(zip(new_digests, embeddings, strict=True))
    if not digests:
        return torch.empty(0)
    return torch.stack([found[d] for d in digests])


__all__ = ["CacheStats", "cache_key", "content_hash", "embed_study_images", "key_digest"]
