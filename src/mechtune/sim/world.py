"""The phantom world: synthetic studies, their radiographs and their reports, on disk.

A world folder holds

- ``images.npy``: ``uint8 [N, size, size]``, memory-mappable;
- ``studies.jsonl``: one ``Study`` per line, with ``image_ref = "images.npy#<row>"`` and the
  report;
- ``acquisition.jsonl``: the acquisition parameters of each image, same order;
- ``manifest.json``: config, seed, counts, content hash.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mechtune.data.io import atomic_path, dumps_json, read_manifest, write_manifest
from mechtune.data.schema import Study
from mechtune.data.splits import DEFAULT_FRACTIONS, check_fractions, patient_split
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import ConfigError, DataError
from mechtune.sim.render import RenderConfig, Renderer
from mechtune.sim.reports import ReportConfig, write_report

IMAGES = "images.npy"
STUDIES = "studies.jsonl"
ACQUISITION = "acquisition.jsonl"
CHUNK = 512


@dataclass(frozen=True)
class WorldConfig:
    """How many studies from which seed; how they are rendered, reported and split.

    ``seed`` draws the studies (``SyntheticConfig``) and the patient splits; ``render`` and
    ``report`` carry their own seeds (acquisition and report wording).
    """

    n_studies: int = 20000
    seed: int = 0
    render: RenderConfig = field(default_factory=RenderConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS

    def __post_init__(self) -> None:
        if self.n_studies < 1:
            raise ConfigError(f"n_studies must be >= 1, got {self.n_studies}")
        object.__setattr__(self, "split_fractions", check_fractions(self.split_fractions))

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_studies": self.n_studies,
            "seed": self.seed,
            "render": self.render.to_dict(),
            "report": self.report.to_dict(),
            "split_fractions": list(self.split_fractions),
        }

    @classmethod
    def seeded(cls, n_studies: int, seed: int) -> WorldConfig:
        """``n_studies`` studies whose sampling, splits, acquisition and report wording all
        follow ``seed`` (as ``mechtune sim build --seed`` makes them): the world every
        ``--seed`` / ``world_seed`` option means. At seed 0 it is ``WorldConfig(n_studies)``.
        """
        return cls(
            n_studies=n_studies,
            seed=seed,
            render=RenderConfig(seed=seed),
            report=ReportConfig(seed=seed),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> WorldConfig:
        return cls(
            n_studies=d["n_studies"],
            seed=d["seed"],
            render=RenderConfig(**d["render"]),
            report=ReportConfig(**d["report"]),
            split_fractions=tuple(d["split_fractions"]),
        )


@dataclass
class World:
    """Studies (with reports), images and splits, in memory."""

    config: WorldConfig
    studies: list[Study]
    images: np.ndarray
    acquisitions: list[dict[str, Any]]

    def split_of(self, study: Study) -> str:
        return patient_split(study.patient_id, self.config.seed, self.config.split_fractions)

    def indices(self, split: str) -> np.ndarray:
        return np.array(
            [i for i, s in enumerate(self.studies) if self.split_of(s) == split], dtype=np.int64
        )

    def eval_set(self, model: Any, split: str) -> Any:
        """The split's studies with ``model``'s embeddings of their images, for
        :func:`mechtune.eval.negation.evaluate_negation` (seed it with ``config.seed``)."""
        from mechtune.eval.negation import EvalStudies, embed_images

        idx = self.indices(split)
        return EvalStudies(
            [self.studies[i] for i in idx], embed_images(model, self.images[idx]), split
        )


def world_studies(config: WorldConfig) -> list[Study]:
    """The world's studies with their reports and image references (no pixels)."""
    studies = sample_studies(SyntheticConfig(n_studies=config.n_studies, seed=config.seed))
    return [
        dataclasses.replace(s, image_ref=f"{IMAGES}#{i}", report=write_report(s, config.report))
        for i, s in enumerate(studies)
    ]


def make_world(config: WorldConfig, progress: Callable[[int], None] | None = None) -> World:
    """Sample, write reports and render, in memory."""
    studies = world_studies(config)
    renderer = Renderer(config.render)
    size = config.render.size
    images = np.empty((len(studies), size, size), dtype=np.uint8)
    for lo in range(0, len(studies), CHUNK):
        batch = studies[lo : lo + CHUNK]
        images[lo : lo + len(batch)] = renderer.render(batch)
        if progress is not None:
            progress(len(batch))
    acquisitions = [renderer.acquisition(s).to_dict() for s in studies]
    return World(config, studies, images, acquisitions)


def _write_jsonl(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps_json(row, indent=None, ensure_ascii=False) + "\n")


def save_world(world: World, out_dir: str | Path) -> Path:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / IMAGES) as tmp, open(tmp, "wb") as fh:
        np.save(fh, world.images, allow_pickle=False)
    _write_jsonl(out / STUDIES, [s.to_dict() for s in world.studies])
    _write_jsonl(out / ACQUISITION, world.acquisitions)
    splits: dict[str, int] = {}
    for s in world.studies:
        splits[world.split_of(s)] = splits.get(world.split_of(s), 0) + 1
    counts = {
        "studies": len(world.studies),
        "patients": len({s.patient_id for s in world.studies}),
        "by_split": dict(sorted(splits.items())),
        "image_shape": list(world.images.shape),
    }
    return write_manifest(
        out,
        kind="world",
        config=world.config.to_dict(),
        counts=counts,
        files=[IMAGES, STUDIES, ACQUISITION],
    )


def load_world(out_dir: str | Path, *, mmap: bool = True) -> World:
    """Load a saved world; images are memory-mapped unless ``mmap=False``."""
    out = Path(out_dir)
    manifest = read_manifest(out)
    if manifest.get("kind") != "world":
        raise DataError(f"{out}: manifest kind is {manifest.get('kind')!r}, not 'world'")
    config = WorldConfig.from_dict(manifest["config"])
    images = np.load(out / IMAGES, mmap_mode="r" if mmap else None, allow_pickle=False)
    with open(out / STUDIES, encoding="utf-8") as fh:
        studies = [Study.from_dict(json.loads(line)) for line in fh if line.strip()]
    with open(out / ACQUISITION, encoding="utf-8") as fh:
        acquisitions = [json.loads(line) for line in fh if line.strip()]
    if not len(studies) == len(acquisitions) == images.shape[0]:
        raise DataError(
            f"{out}: {len(studies)} studies, {len(acquisitions)} acquisitions and "
            f"{images.shape[0]} images do not match"
        )
    return World(config, studies, images, acquisitions)


def _novelty(study: Study, seen: set[tuple]) -> float:
    """Share of a study's (condition, side, severity) combinations not yet seen."""
    combos = {
        (f.condition, f.laterality, f.severity)
        for f in study.present()
        if f.condition != "no_finding"
    }
    return len(combos - seen) / max(1, len(combos))


def showcase_studies(n: int, seed: int = 0) -> list[Study]:
    """n studies chosen so that every condition, side and severity shows up early.

    Greedy: from a large sampled pool, repeatedly take the study whose findings are most
    purely unseen (condition, side, severity) combinations, so that simple single-finding
    studies come first; then fill with the rest in order.
    """
    pool = list(sample_studies(SyntheticConfig(n_studies=max(4000, 4 * n), seed=seed)))
    seen: set[tuple] = set()
    chosen: list[Study] = []
    remaining = list(pool)
    normal = next((s for s in pool if s.label("no_finding")), None)
    if normal is not None and n > 0:
        chosen.append(normal)
        remaining.remove(normal)
    while len(chosen) < n and remaining:
        best = max(remaining, key=lambda s: _novelty(s, seen))
        if _novelty(best, seen) == 0:
            break
        chosen.append(best)
        remaining.remove(best)
        seen |= {(f.condition, f.laterality, f.severity) for f in best.present()}
    chosen.extend(remaining[: n - len(chosen)])
    return chosen
