"""What ``DualEncoder.encode_images`` accepts, turned into what a model's processor takes.

Users have image files, PIL images and uint8 arrays of any size. :func:`image_items` turns
any of them into an indexable batch: either one uint8 array ``[B, H, W]`` / ``[B, H, W, 3]``
(kept as an array, so a model that needs no resizing takes it unchanged) or a list of
single images (paths, PIL images, uint8 arrays ``[H, W]`` / ``[H, W, 3]``, mixed sizes).
:func:`to_pil` decodes one of them to a PIL image in ``"L"`` or ``"RGB"``: grey to RGB
repeats the channel three times (Pillow's ``convert("RGB")``), RGB to grey is Pillow's
ITU-R 601-2 luma, which returns ``v`` for a pixel whose three channels equal ``v``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mechtune.data.sources.base import IMAGE_MODES, read_image_file
from mechtune.errors import ConfigError, DataError

ImageBatch = np.ndarray | list[Any]


def _uint8(array: np.ndarray, where: str) -> np.ndarray:
    if array.dtype != np.uint8:
        raise DataError(
            f"{where}: images must be uint8 pixels, got dtype {array.dtype}; convert with "
            "mechtune.data.sources.base.to_uint8 (windowed by the image's own range)"
        )
    return array


def image_items(images: Any) -> ImageBatch:
    """Any accepted input -> an indexable batch (see module docstring).

    One ``np.ndarray``/``torch.Tensor`` of 3 dimensions is a batch of grey images
    ``[B, H, W]``, of 4 a batch of RGB ``[B, H, W, 3]``; a sequence holds single images.
    Raises ``DataError`` for pixels that are not uint8, or a shape that is neither.
    """
    if torch.is_tensor(images):
        images = images.detach().cpu().numpy()
    if isinstance(images, np.ndarray):
        _uint8(images, "image batch")
        if images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3):
            return images
        raise DataError(
            f"image batch: expected uint8 [B, H, W] or [B, H, W, 3], got shape {images.shape}"
        )
    if isinstance(images, str | os.PathLike) or _is_pil(images):
        return [images]
    if not isinstance(images, Sequence):
        raise DataError(
            f"images: expected paths, PIL images, uint8 arrays or one uint8 batch, got "
            f"{type(images).__name__}"
        )
    return list(images)


def _is_pil(item: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        return False
    return isinstance(item, Image.Image)


def to_array(item: Any, mode: str) -> np.ndarray:
    """One image -> uint8 ``[H, W]`` (``mode="L"``) or ``[H, W, 3]`` (``"RGB"``).

    A path is decoded by :func:`~mechtune.data.sources.base.read_image_file` (16-bit
    images windowed to 8 bits); a uint8 array already in ``mode``'s layout is returned as
    is. Raises ``DataError`` for an unreadable file or a bad array, ``ConfigError`` for an
    unknown mode.
    """
    if mode not in IMAGE_MODES:
        raise ConfigError(f"image mode must be one of {IMAGE_MODES}, got {mode!r}")
    if isinstance(item, str | os.PathLike):
        return read_image_file(Path(item), mode)
    if torch.is_tensor(item):
        item = item.detach().cpu().numpy()
    if isinstance(item, np.ndarray):
        array = _uint8(item, "image")
        if array.ndim == 2 and mode == "L":
            return array
        if array.ndim == 3 and array.shape[-1] == 3 and mode == "RGB":
            return array
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
            raise DataError(f"image: expected uint8 [H, W] or [H, W, 3], got shape {array.shape}")
    return np.asarray(to_pil(item, mode), dtype=np.uint8)


def to_pil(item: Any, mode: str) -> Any:
    """One image -> a ``PIL.Image.Image`` in ``mode`` (``"L"`` or ``"RGB"``)."""
    from PIL import Image

    if isinstance(item, str | os.PathLike) or torch.is_tensor(item):
        item = to_array(item, mode)
    if isinstance(item, np.ndarray):
        array = _uint8(item, "image")
        if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
            raise DataError(f"image: expected uint8 [H, W] or [H, W, 3], got shape {array.shape}")
        item = Image.fromarray(array)  # 2-D -> "L", [H, W, 3] -> "RGB"
    if not isinstance(item, Image.Image):
        raise DataError(f"image: expected a path, PIL image or uint8 array, got {type(item)}")
    return item if item.mode == mode else item.convert(mode)


def pil_images(batch: ImageBatch, mode: str) -> list[Any]:
    """Every image of a batch as a PIL image in ``mode``."""
    return [to_pil(item, mode) for item in batch]


__all__ = ["ImageBatch", "image_items", "pil_images", "to_array", "to_pil"]
