"""Launched by test_ddp.py under torchrun: train the tiny CLIP with one shard per rank.

The test puts the repository root on PYTHONPATH so that ``tests`` imports.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from mechtune.models.spec import load_dual_encoder
from mechtune.train.lora import LoraSettings, lora_parameters
from mechtune.train.methods import NegationData, negation_trainer
from mechtune.train.negation import LoopConfig
from mechtune.train.trainer import Trainer
from tests.train.test_trainer import CAPTIONS, CLAIMS


def build(folder: str, out: str, accelerator: Accelerator | None) -> Trainer:
    enc = load_dual_encoder(f"hf:{folder}")
    torch.manual_seed(0)
    config = LoopConfig(
        steps=3,
        caption_batch=4,
        claim_batch=4,
        lr=1e-2,
        checkpoint_every=3,
        shards=2,
        lora=LoraSettings(rank=2, alpha=4),
    )
    trainer = negation_trainer(
        "nast",
        enc,
        images(),
        NegationData(CAPTIONS, CLAIMS),
        [0.2, 1.0, 0.5],
        config,
        out,
        accelerator=accelerator,
    )
    for _, p in lora_parameters(trainer.model).values():
        torch.nn.init.normal_(p, std=0.05)
    return trainer


def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.nn.functional.normalize(torch.randn(3, 16, generator=g), dim=-1)


def main() -> None:
    folder, out = sys.argv[1], sys.argv[2]
    accelerator = Accelerator(cpu=True)
    trainer = build(folder, out, accelerator)
    trainer.model.eval()  # no dropout: ranks must not depend on RNG consumption
    trainer.fit()
    if accelerator.is_main_process:
        weights = {
            n: p.detach().contiguous() for n, (_, p) in lora_parameters(trainer.model).items()
        }
        save_file(weights, str(Path(out) / "ddp_weights.safetensors"))
    accelerator.wait_for_everyone()
    # leave the process group before exit: gloo's threads torn down at interpreter exit
    # can abort a rank ("terminate called without an active exception", SIGABRT)
    accelerator.end_training()


if __name__ == "__main__":
    main()
