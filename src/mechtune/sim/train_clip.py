"""Train the phantom CLIP image tower, LiT-style, against the locked MiniLM text tower.

Report embeddings are computed once (the text tower is frozen). The loss is the symmetric
CLIP contrastive loss with *soft multi-positive* targets: studies whose present findings
are identical are positives of each other, otherwise normal studies would be false
negatives of one another. Deterministic by seed on a fixed thread count.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from mechtune.data.schema import Study
from mechtune.errors import ConfigError, DataError
from mechtune.models.minilm import MiniLMTower
from mechtune.sim.clip import WEIGHTS, PhantomCLIP, PhantomCLIPConfig
from mechtune.sim.render import RenderConfig
from mechtune.sim.reports import ReportConfig
from mechtune.sim.world import World, WorldConfig, make_world


@dataclass(frozen=True)
class TrainCLIPConfig:
    """One phantom CLIP training run.

    ``seed`` fixes the world (studies, splits, report wording), the initial weights and the
    batch order; ``n_studies`` studies are rendered at ``model.image_size`` pixels with reports
    stating pertinent negatives at ``negative_rate``; ``steps`` AdamW steps of
    ``batch_size`` training-split studies, the learning rate ``lr`` rising linearly over
    ``warmup_steps`` then following a cosine to 0; ``threads`` torch threads (results are
    bit-identical for a fixed thread count).
    """

    seed: int = 0
    n_studies: int = 10000
    steps: int = 1000
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    warmup_steps: int = 50
    negative_rate: float = 0.2
    threads: int = 2
    model: PhantomCLIPConfig = field(default_factory=PhantomCLIPConfig)

    def __post_init__(self) -> None:
        for name in ("n_studies", "steps", "batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        for name in ("weight_decay", "warmup_steps"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.model.image_size < 32:
            raise ConfigError(
                f"model.image_size must be >= 32 (the smallest size the world renders), "
                f"got {self.model.image_size}"
            )
        self.world_config()  # checks negative_rate

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model"] = self.model.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainCLIPConfig:
        d = dict(d)
        d["model"] = PhantomCLIPConfig.from_dict(d["model"])
        return cls(**d)

    def world_config(self) -> WorldConfig:
        """The world the run trains on: ``n_studies`` studies from ``seed``, rendered at
        ``model.image_size`` pixels (renderer seed 0, as ``WorldConfig`` defaults), with
        reports stating pertinent negatives at ``negative_rate``."""
        return WorldConfig(
            n_studies=self.n_studies,
            seed=self.seed,
            render=RenderConfig(size=self.model.image_size),
            report=ReportConfig(seed=self.seed, negative_rate=self.negative_rate),
        )


def finding_key(study: Study) -> tuple:
    """Studies with equal keys look alike: same present findings with the same attributes."""
    return tuple(sorted(f.key() for f in study.present() if f.condition != "no_finding"))


def soft_clip_loss(
    image: torch.Tensor, text: torch.Tensor, scale: torch.Tensor, same: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Symmetric contrastive loss with multi-positive soft targets.

    ``image, text: [B, D]`` normalised; ``same: [B, B]`` bool, True where i and j share a
    finding key (the diagonal is always True). Returns the named terms and their sum.
    """
    logits = scale * image @ text.T
    targets = same.to(logits.dtype)
    targets = targets / targets.sum(1, keepdim=True)
    i2t = -(targets * logits.log_softmax(1)).sum(1).mean()
    t2i = -(targets * logits.log_softmax(0)).sum(0).mean()
    return {"image_to_text": i2t, "text_to_image": t2i, "loss": (i2t + t2i) / 2}


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def embed_reports(text: MiniLMTower, reports: Sequence[str]) -> torch.Tensor:
    """Raw MiniLM embeddings of reports, each unique text encoded once. ``-> [N, D]``."""
    unique = sorted(set(reports))
    index = {r: i for i, r in enumerate(unique)}
    table = text.encode(unique)
    return table[torch.tensor([index[r] for r in reports])]


def train_phantom_clip(
    config: TrainCLIPConfig,
    *,
    world: World | None = None,
    text: MiniLMTower | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> tuple[PhantomCLIP, dict[str, Any]]:
    """Build the world (unless given), embed reports, train; return the model and a log."""
    started = time.perf_counter()
    with torch_threads(config.threads):
        torch.manual_seed(config.seed)
        world = world or make_world(config.world_config())
        size = config.model.image_size
        if tuple(world.images.shape[1:]) != (size, size):
            raise DataError(
                f"world images are {list(world.images.shape[1:])} pixels but "
                f"model.image_size is {size}"
            )
        train_idx = world.indices("train")
        model = PhantomCLIP(config.model, text=text)
        model.text.eval()
        if progress:
            progress("embed reports", 0, 1)
        raw = embed_reports(model.text, [world.studies[i].report or "" for i in train_idx])
        model.text_center.copy_(raw.mean(0))
        targets = model.center_text(raw)
        keys = [finding_key(world.studies[i]) for i in train_idx]
        key_ids = torch.tensor(_key_ids(keys))
        images = torch.from_numpy(np.ascontiguousarray(world.images[train_idx]))

        params = [p for p in model.parameters() if p.requires_grad]
        optim = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
        schedule = torch.optim.lr_scheduler.LambdaLR(optim, _cosine(config))
        gen = torch.Generator().manual_seed(config.seed)
        history: list[dict[str, float]] = []
        model.image_encoder.train()
        for step in range(config.steps):
            batch = torch.randperm(len(train_idx), generator=gen)[: config.batch_size]
            emb = model.encode_images(images[batch])
            same = key_ids[batch][:, None] == key_ids[batch][None, :]
            terms = soft_clip_loss(
                emb, targets[batch], model.logit_scale.exp().clamp(max=100), same
            )
            optim.zero_grad(set_to_none=True)
            terms["loss"].backward()
            optim.step()
            schedule.step()
            if step % 50 == 0 or step == config.steps - 1:
                history.append(
                    {
                        "step": step,
                        "loss": float(terms["loss"].detach()),
                        "logit_scale": float(model.logit_scale.detach().exp()),
                    }
                )
            if progress:
                progress("train", step + 1, config.steps)
        model.eval()
    log = {
        "config": config.to_dict(),
        "train_studies": len(train_idx),
        "distinct_reports": len(set(world.studies[i].report for i in train_idx)),
        "history": history,
        "seconds": round(time.perf_counter() - started, 1),
        "torch_version": torch.__version__,
    }
    return model, log


def _key_ids(keys: list[tuple]) -> list[int]:
    ids: dict[tuple, int] = {}
    return [ids.setdefault(k, len(ids)) for k in keys]


def _cosine(config: TrainCLIPConfig) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def image_embeddings(model: PhantomCLIP, images: np.ndarray, batch_size: int = 512) -> torch.Tensor:
    """Embed many images without gradients. ``uint8 [N, H, W] -> [N, D]``."""
    out = []
    with torch.no_grad():
        for lo in range(0, len(images), batch_size):
            out.append(
                model.encode_images(
                    torch.from_numpy(np.ascontiguousarray(images[lo : lo + batch_size]))
                )
            )
    return torch.cat(out) if out else torch.empty(0, model.config.embed_dim)


def compare_checkpoints(a: str | Path, b: str | Path) -> float:
    """Largest absolute difference between two checkpoints (phantom CLIP or VQA head)."""
    sa, sb = load_file(str(Path(a) / WEIGHTS)), load_file(str(Path(b) / WEIGHTS))
    if sa.keys() != sb.keys():
        raise DataError(f"{a} and {b} hold different tensors")
    return max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
