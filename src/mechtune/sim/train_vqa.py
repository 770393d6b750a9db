"""Train the phantom VQA head on one narrow question register, and its paraphrase sets.

Only the fusion head trains: the image tower (phantom CLIP) and MiniLM are frozen, so
image and question embeddings are computed once. Questions come from the benchmark's
three question families only (``q.is_there``, ``q.evidence_of``, ``q.does_show``); each
step draws half present and half absent (study, condition) pairs, so "yes" and "no" are
balanced although most conditions are absent in most studies. Deterministic by seed on
a fixed thread count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from mechtune.data.builders.paraphrase import image_paraphrase_sets
from mechtune.data.ontology import load_ontology
from mechtune.data.schema import ImageQuestion
from mechtune.data.text import realise_question
from mechtune.errors import ConfigError, DataError
from mechtune.models.minilm import MiniLMTower
from mechtune.sim.clip import default_checkpoint
from mechtune.sim.train_clip import torch_threads
from mechtune.sim.vqa import PhantomVQA, PhantomVQAConfig
from mechtune.sim.world import World, WorldConfig, make_world

QUESTION_FAMILIES = ("q.is_there", "q.evidence_of", "q.does_show")


@dataclass(frozen=True)
class TrainVQAConfig:
    """One phantom VQA head training run.

    ``seed`` fixes the world, the initial weights and the batches; the world has
    ``n_studies`` studies; ``steps`` AdamW steps (``lr``, ``weight_decay``) of
    ``batch_size`` questions, half about present and half about absent conditions, each
    worded in one of ``families`` (question families); ``hidden`` is the fusion head's
    width; ``threads`` torch threads (bit-identical for a fixed thread count).
    """

    seed: int = 0
    n_studies: int = 6000
    steps: int = 600
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    hidden: int = 256
    families: tuple[str, ...] = QUESTION_FAMILIES
    threads: int = 2

    def __post_init__(self) -> None:
        for name in ("n_studies", "steps", "threads", "hidden"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ConfigError(
                f"batch_size must be >= 2 (half yes, half no questions), got {self.batch_size}"
            )
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay must be >= 0, got {self.weight_decay}")
        object.__setattr__(self, "families", tuple(self.families))
        if not self.families:
            raise ConfigError("families must name at least one question family, got ()")
        questions = {f.id for f in load_ontology().families_of("question")}
        for fam in self.families:
            if fam not in questions:
                raise ConfigError(
                    f"families: {fam!r} is not a question family (one of {sorted(questions)})"
                )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["families"] = list(self.families)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainVQAConfig:
        return cls(**d)


@dataclass(frozen=True)
class QuestionTable:
    """(study, condition, label) rows of a split, with every training question's text."""

    study_rows: np.ndarray  # [N] row into the split's image embeddings
    condition_ids: np.ndarray  # [N] index into ``conditions``
    labels: np.ndarray  # [N] bool, condition present
    conditions: tuple[str, ...]
    skipped_uncertain: int


def question_table(world: World, indices: np.ndarray) -> QuestionTable:
    """Every (study, condition) pair of the given studies with a definite label."""
    conditions = tuple(c.id for c in load_ontology().pathologies)
    rows, conds, labels = [], [], []
    skipped = 0
    for row, i in enumerate(indices):
        study = world.studies[int(i)]
        for c, condition in enumerate(conditions):
            label = study.label(condition)
            if label is None:
                skipped += 1
                continue
            rows.append(row)
            conds.append(c)
            labels.append(bool(label))
    return QuestionTable(
        np.asarray(rows, dtype=np.int64),
        np.asarray(conds, dtype=np.int64),
        np.asarray(labels, dtype=bool),
        conditions,
        skipped,
    )


def train_phantom_vqa(
    config: TrainVQAConfig,
    *,
    world: World | None = None,
    text: MiniLMTower | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[PhantomVQA, dict[str, Any]]:
    """Train the head on the world's train split; return the model and a log (with
    validation accuracy on the training register)."""
    started = time.perf_counter()
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        world = world or make_world(WorldConfig.seeded(config.n_studies, config.seed))
        model = PhantomVQA(PhantomVQAConfig(hidden=config.hidden), text=text)
        model.load_image_tower(default_checkpoint())
        model.eval()
        size = model.config.image.image_size
        if tuple(world.images.shape[1:]) != (size, size):
            raise DataError(
                f"world images are {list(world.images.shape[1:])} pixels but the image "
                f"tower takes {size}"
            )
        train_idx, val_idx = world.indices("train"), world.indices("val")
        if progress:
            progress("embed", 0, 1)
        images = model.embed_images(world.images[train_idx])
        table = question_table(world, train_idx)
        # [C, F, D]: every condition's question in every training family.
        texts = [realise_question(c, fam) for c in table.conditions for fam in config.families]
        questions = model.question.encode(texts).view(
            len(table.conditions), len(config.families), -1
        )
        positives = np.flatnonzero(table.labels)
        negatives = np.flatnonzero(~table.labels)
        gen = torch.Generator().manual_seed(config.seed)
        optim = torch.optim.AdamW(
            model.head.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        history: list[dict[str, float]] = []
        half = config.batch_size // 2
        model.head.train()
        for step in range(config.steps):
            pos = positives[torch.randint(len(positives), (half,), generator=gen).numpy()]
            neg = negatives[
                torch.randint(len(negatives), (config.batch_size - half,), generator=gen).numpy()
            ]
            batch = np.concatenate([pos, neg])
            family = torch.randint(len(config.families), (len(batch),), generator=gen)
            q = questions[torch.from_numpy(table.condition_ids[batch]), family]
            logits = model.head(images[torch.from_numpy(table.study_rows[batch])], q)
            target = torch.from_numpy((~table.labels[batch]).astype(np.int64))  # 0 = yes
            loss = torch.nn.functional.cross_entropy(logits, target)
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            if step % 100 == 0 or step == config.steps - 1:
                history.append({"step": step, "loss": float(loss.detach())})
            if progress:
                progress("train", step + 1, config.steps)
        model.head.eval()
        val = register_accuracy(model, world, val_idx, config.families)
    log = {
        "config": config.to_dict(),
        "train_studies": len(train_idx),
        "train_pairs": len(table.labels),
        "train_positive_share": round(float(table.labels.mean()), 4),
        "skipped_uncertain_labels": table.skipped_uncertain,
        "val_register_accuracy": val,
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
    }
    return model, log


@torch.no_grad()
def register_accuracy(
    model: PhantomVQA, world: World, indices: np.ndarray, families: tuple[str, ...]
) -> dict[str, float]:
    """Balanced accuracy (mean of yes- and no-recall) on the training register."""
    images = model.embed_images(world.images[indices])
    table = question_table(world, indices)
    texts = [realise_question(c, fam) for c in table.conditions for fam in families]
    questions = model.question.encode(texts).view(len(table.conditions), len(families), -1)
    correct = np.zeros((len(families), len(table.labels)), dtype=bool)
    for f in range(len(families)):
        q = questions[torch.from_numpy(table.condition_ids), f]
        margin = model.head(images[torch.from_numpy(table.study_rows)], q)
        yes = (margin[:, 0] > margin[:, 1]).numpy()
        correct[f] = yes == table.labels
    acc = correct.mean(0)
    return {
        "balanced_accuracy": round(
            float((acc[table.labels].mean() + acc[~table.labels].mean()) / 2), 4
        ),
        "yes_recall": round(float(acc[table.labels].mean()), 4),
        "no_recall": round(float(acc[~table.labels].mean()), 4),
    }


def world_paraphrase_sets(
    world: World,
    split: str,
    *,
    heldout: bool,
    questions_per_study: int = 2,
    seed: int = 0,
) -> list[ImageQuestion]:
    """PSF-Med style paraphrase sets for a split's studies, balanced yes/no, each bound to
    its study's row of the world (``ImageQuestion.image``):
    :func:`mechtune.data.builders.paraphrase.image_paraphrase_sets` over the world's rows.

    ``heldout`` picks the paraphrase families: held-out ones (never used in training) or
    the training families (in-distribution).
    """
    rows = [(int(i), world.studies[int(i)]) for i in world.indices(split)]
    return image_paraphrase_sets(
        rows, split, heldout=heldout, questions_per_study=questions_per_study, seed=seed
    )
