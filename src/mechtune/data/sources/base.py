"""One protocol for a set of imaging studies, whatever layout they sit in on disk.

An :class:`ImageStudySource` gives

- the items, as :class:`~mechtune.data.schema.Study` records (``image_ref`` names the image
  relative to the source's root; ``report`` is the report text a reader extracted, or None);
- patient-level splits (:meth:`ImageStudySource.split_of`);
- lazy image loading by item, as 8-bit grey or RGB arrays or PIL images;
- a :class:`SourceReport`: what was read, kept, and skipped, by reason.

An *item* is one image with its study's findings: by default one per study (the readers
choose one frontal image), optionally one per frontal image, whose ``study_id`` is then
``"<study_id>/<image_id>"`` so that ids stay unique.

Readers build their items when constructed, so a bad table fails at once, naming the file,
row and value; pixels are read only when asked for.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, cast

import numpy as np

from mechtune.data.importers import MAX_ERRORS_KEPT, DataFormatError
from mechtune.data.schema import SPLITS, Study
from mechtune.errors import ConfigError, DataError

IMAGE_MODES: tuple[str, ...] = ("L", "RGB")
DEFAULT_MAX_MISSING: float = 0.01


@dataclass
class SourceReport:
    """What a reader read, kept and skipped.

    ``rows_read`` counts the rows of the table that defines the items (a label CSV, a
    manifest); ``items`` the items kept; ``skipped`` maps a reason (``bad_label``,
    ``duplicate_id``, ``missing_image``, ``lateral_only``, ...) to a count;
    ``first_errors`` keeps the first ten messages. ``notes`` holds counts that are not
    skips (images per study, reports found, uncertain labels).
    """

    source: str
    layout: str
    rows_read: int = 0
    items: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    uncertain_labels: int = 0
    uncertain_policy: str | None = None
    first_errors: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)

    def skip(self, error: DataFormatError | str, message: str | None = None) -> None:
        """Count one skipped row or study under its reason and keep its message."""
        if isinstance(error, DataFormatError):
            reason, text = error.reason, str(error)
        else:
            reason, text = error, message or error
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.first_errors) < MAX_ERRORS_KEPT:
            self.first_errors.append(text)

    @property
    def n_skipped(self) -> int:
        return sum(self.skipped.values())

    def summary(self) -> str:
        """One line for a console: kept, skipped by reason."""
        skipped = ", ".join(f"{k} {v}" for k, v in sorted(self.skipped.items())) or "none"
        return (
            f"{self.source} ({self.layout}): {self.items} items from {self.rows_read} rows; "
            f"skipped: {skipped}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_missing(report: SourceReport, missing: int, total: int, max_missing: float) -> None:
    """Fail when more than ``max_missing`` (a fraction) of ``total`` images are missing.

    Raises ``DataError`` naming the source, the count and the first missing files.
    """
    if total and missing / total > max_missing:
        shown = "; ".join(e for e in report.first_errors if "image" in e)[:600]
        raise DataError(
            f"{report.source}: {missing} of {total} images are missing or unreadable "
            f"({missing / total:.1%}, limit {max_missing:.1%}): {shown}"
        )


def to_uint8(array: np.ndarray, where: str) -> np.ndarray:
    """8-bit pixels from any integer or float image, windowed by its own range.

    ``uint8`` passes through unchanged. Wider types (16-bit PNGs such as PadChest's,
    32-bit integer or float) are windowed linearly from the image's own minimum to its
    maximum onto 0..255, so that nothing is clipped; a constant image becomes all zeros.
    Raises ``DataError`` naming ``where`` for an empty or non-finite image.
    """
    if array.size == 0:
        raise DataError(f"{where}: empty image")
    if array.dtype == np.uint8:
        return array
    values = array.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{where}: image has non-finite pixels")
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(array.shape, dtype=np.uint8)
    return np.rint((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def read_image_file(path: Path, mode: str = "L") -> np.ndarray:
    """Decode an image file to ``uint8 [H, W]`` (``mode="L"``) or ``[H, W, 3]`` (``"RGB"``).

    Uses Pillow; 16-bit and 32-bit images are windowed by :func:`to_uint8` before any
    conversion. Raises ``DataError`` naming the file when it is missing or unreadable.
    """
    if mode not in IMAGE_MODES:
        raise ConfigError(f"image mode must be one of {IMAGE_MODES}, got {mode!r}")
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                grey = to_uint8(np.asarray(img), str(path))
                return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(img.convert(mode), dtype=np.uint8)
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DataError(f"{path}: unreadable image ({exc})") from None


def open_table(path: Path) -> IO[bytes]:
    """Open a table for reading as bytes, gunzipping ``*.gz`` transparently."""
    if path.suffix == ".gz":
        return cast(IO[bytes], gzip.open(path, "rb"))
    return open(path, "rb")


def find_table(root: Path, name: str) -> Path | None:
    """``root/name`` or ``root/name.gz``, whichever exists (plain first), else None."""
    for candidate in (root / name, root / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


class ImageStudySource(ABC):
    """A set of imaging studies: items, patient splits, images and reports.

    Subclasses set ``layout``, fill ``self.items`` (a list of Study) and ``self.report``
    in ``__init__``, and implement :meth:`split_of` and :meth:`_load`.
    """

    layout: ClassVar[str] = ""
    root: Path
    items: list[Study]
    report: SourceReport

    # -- the items ----------------------------------------------------------------------

    def studies(self) -> list[Study]:
        """The items, in a fixed order (the order of the defining table)."""
        return list(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[Study]:
        return iter(self.items)

    @abstractmethod
    def split_of(self, study: Study) -> str:
        """``train``, ``val`` or ``test`` for an item; every item of a patient agrees."""

    def split(self, name: str) -> list[Study]:
        """The items of one split, in order. Raises ``ConfigError`` for an unknown name."""
        if name not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS}, got {name!r}")
        return [s for s in self.items if self.split_of(s) == name]

    def report_text(self, study: Study) -> str | None:
        """The report of an item (FINDINGS and IMPRESSION where a reader split sections)."""
        return study.report

    def with_report_facts(
        self,
        uncertain: str = "skip",
        extractor: Any = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        """Add the structured facts of each item's report to its findings, in place.

        Report facts come from :class:`mechtune.data.report_facts.FactExtractor` (the
        ``clinical`` extra); labels win for existence
        (:func:`mechtune.data.report_facts.merge_findings`), and an uncertain mention
        follows ``uncertain`` (skip, present, absent), as uncertain labels do. Items
        without a report keep their label findings. ``report.notes["report_facts"]``
        counts the items read, those whose findings changed, the findings that gained a
        side, zone or severity, and the items left with no finding at all.
        ``progress(1)`` after each report read. Raises ``MissingExtraError`` when medspacy
        is not installed.
        """
        from mechtune.data.report_facts import FactExtractor, merge_findings

        extractor = extractor or FactExtractor()
        counts = {"reports": 0, "changed": 0, "attributed": 0, "no_findings": 0}
        items: list[Study] = []
        for study in self.items:
            if study.report:
                counts["reports"] += 1
                facts = extractor.findings(study.report, uncertain=uncertain)
                merged = merge_findings(study.findings, facts)
                if merged != study.findings:
                    counts["changed"] += 1
                    study = dataclasses.replace(study, findings=merged)
                counts["attributed"] += sum(
                    f.laterality is not None or f.zone is not None or f.severity is not None
                    for f in merged
                )
                if progress is not None:
                    progress(1)
            if not study.findings:
                counts["no_findings"] += 1
            items.append(study)
        self.items = items
        self.report.notes["report_facts"] = {"uncertain_policy": uncertain, **counts}

    # -- pixels -------------------------------------------------------------------------

    @abstractmethod
    def _load(self, study: Study, mode: str) -> np.ndarray:
        """Decode one item's image (``mode`` already validated)."""

    def load_image(self, study: Study, mode: str = "L") -> np.ndarray:
        """The item's image as ``uint8 [H, W]`` (``"L"``) or ``uint8 [H, W, 3]`` (``"RGB"``).

        Raises ``ConfigError`` for an unknown mode and ``DataError`` naming the file when
        the image is missing or unreadable.
        """
        if mode not in IMAGE_MODES:
            raise ConfigError(f"image mode must be one of {IMAGE_MODES}, got {mode!r}")
        return self._load(study, mode)

    def image_file(self, study: Study) -> Path | None:
        """The file an item's image is decoded from, whose bytes identify it (the
        image-embedding cache hashes them); None when the image is not a file of its own,
        and callers then hash the decoded pixels. Default: ``root / image_ref`` (or an
        absolute ``image_ref``) when that is an existing file."""
        if not study.image_ref:
            return None
        path = Path(study.image_ref)
        path = path if path.is_absolute() else self.root / path
        return path if path.is_file() else None

    def load_images(self, studies: Sequence[Study], mode: str = "L") -> list[np.ndarray]:
        """:meth:`load_image` for several items (images may differ in size)."""
        return [self.load_image(s, mode) for s in studies]

    def load_pil(self, study: Study, mode: str = "RGB") -> Any:
        """The item's image as a ``PIL.Image.Image`` in ``mode`` (``"L"`` or ``"RGB"``)."""
        from PIL import Image

        return Image.fromarray(self.load_image(study, mode))  # 2-D -> L, [H, W, 3] -> RGB

    # -- provenance ---------------------------------------------------------------------

    @property
    def description(self) -> dict[str, Any]:
        """What a build manifest records about its source."""
        return {"layout": self.layout, "root": str(self.root), "read": self.report.to_dict()}

    def split_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(SPLITS, 0)
        for s in self.items:
            counts[self.split_of(s)] += 1
        return counts


def png_bytes(image: np.ndarray) -> bytes:
    """Encode a ``uint8`` grey or RGB array as PNG bytes (deterministic; Pillow)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=False)
    return buf.getvalue()


__all__ = [
    "DEFAULT_MAX_MISSING",
    "IMAGE_MODES",
    "ImageStudySource",
    "SourceReport",
    "check_missing",
    "find_table",
    "open_table",
    "png_bytes",
    "read_image_file",
    "to_uint8",
]
