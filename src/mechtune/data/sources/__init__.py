"""Imaging-study sources: one protocol (:class:`ImageStudySource`), several layouts."""

from mechtune.data.sources.base import (
    DEFAULT_MAX_MISSING,
    IMAGE_MODES,
    ImageStudySource,
    SourceReport,
    read_image_file,
    to_uint8,
)

__all__ = [
    "DEFAULT_MAX_MISSING",
    "IMAGE_MODES",
    "ImageStudySource",
    "SourceReport",
    "read_image_file",
    "to_uint8",
]
