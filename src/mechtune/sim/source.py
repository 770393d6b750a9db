"""The phantom world as an image-study source (:class:`~mechtune.data.sources.base.ImageStudySource`).

A saved world folder (``images.npy``, ``studies.jsonl``, ``manifest.json`` of kind
``world``; :func:`~mechtune.sim.world.save_world`) read through the same protocol as the
real-data readers: one item per study, ``image_ref = "images.npy#<row>"``, the world's
patient split, the row of ``images.npy`` as the image, the study's report as its text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from mechtune.data.schema import Study
from mechtune.data.sources.base import ImageStudySource, SourceReport
from mechtune.data.splits import patient_split
from mechtune.errors import DataError
from mechtune.sim.world import IMAGES, load_world

_REF = re.compile(re.escape(IMAGES) + r"#(\d+)")


class PhantomWorldSource(ImageStudySource):
    """A saved phantom world, read lazily (``images.npy`` is memory-mapped).

    ``root``: the world folder. ``split_seed``: the seed of the patient-hash split;
    ``None`` keeps the world's own split (:meth:`~mechtune.sim.world.World.split_of`,
    seeded by the world's seed with its ``split_fractions``). Images are ``uint8 [S, S]``
    grey, or ``[S, S, 3]`` RGB by repeating the grey channel. Raises ``DataError`` (via
    :func:`~mechtune.sim.world.load_world`) for a folder that is not a world, or whose
    studies do not reference their own rows of ``images.npy``.
    """

    layout = "phantom-world"

    def __init__(self, root: str | Path, *, split_seed: int | None = None) -> None:
        self.root = Path(root)
        world = load_world(self.root)
        self.config = world.config
        self.split_seed = world.config.seed if split_seed is None else split_seed
        self._images = world.images
        self._rows: dict[str, int] = {}
        for i, study in enumerate(world.studies):
            match = _REF.fullmatch(study.image_ref or "")
            if match is None or int(match.group(1)) != i:
                raise DataError(
                    f"{self.root / 'studies.jsonl'}, line {i + 1}: image_ref "
                    f"{study.image_ref!r} is not '{IMAGES}#{i}'"
                )
            self._rows[study.study_id] = i
        self.items = list(world.studies)
        n = len(self.items)
        self.report = SourceReport(
            source=str(self.root),
            layout=self.layout,
            rows_read=n,
            items=n,
            notes={
                "reports": sum(1 for s in self.items if s.report),
                "image_shape": list(self._images.shape[1:]),
                "split_seed": self.split_seed,
            },
        )

    def split_of(self, study: Study) -> str:
        return patient_split(study.patient_id, self.split_seed, self.config.split_fractions)

    def row_of(self, study: Study) -> int:
        """The study's row of ``images.npy``. Raises ``DataError`` for a foreign study."""
        try:
            return self._rows[study.study_id]
        except KeyError:
            raise DataError(f"{self.root}: study {study.study_id!r} is not in this world") from None

    def image_file(self, study: Study) -> Path | None:
        """None: an item's image is a row of the shared ``images.npy``, not a file of its
        own, so its identity is the hash of its decoded pixels."""
        return None

    def _load(self, study: Study, mode: str) -> np.ndarray:
        grey = np.array(self._images[self.row_of(study)], dtype=np.uint8)  # a copy, off the mmap
        return grey if mode == "L" else np.repeat(grey[..., None], 3, axis=-1)

    @property
    def description(self) -> dict[str, Any]:
        return {**super().description, "world_config": self.config.to_dict()}


__all__ = ["PhantomWorldSource"]
