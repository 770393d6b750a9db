"""Launched by test_ddp.py under torchrun: consistency LoRA on ``phantom:vqa``, the
``grad_accum`` micro-batches spread over the ranks (rank r takes r, r + P, ...).

The test puts the repository root on PYTHONPATH so that ``tests`` imports.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from mechtune.models.vlm_spec import load_yes_no_vlm
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.lora import LoraSettings
from mechtune.train.methods import paraphrase_trainer
from mechtune.train.trainer import Trainer
from tests.train.test_consistency import EXAMPLES, no_dropout

# 4 micro-batches of 1 question: 2 per rank on 2 processes.
CONFIG = ConsistencyConfig(
    lora=LoraSettings(layers=(5,), rank=2, alpha=4),
    steps=2,
    batch_size=1,
    grad_accum=4,
    lr=1e-2,
    checkpoint_every=2,
)


def build(out: str, accelerator: Accelerator | None) -> Trainer:
    vlm = load_yes_no_vlm("phantom:vqa")
    no_dropout(vlm.module)  # ranks must not depend on how each consumes the random stream
    pixels = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    images = vlm.prepare_images(list(pixels))
    torch.manual_seed(0)
    trainer = paraphrase_trainer(
        "consistency-lora", vlm, images, EXAMPLES, CONFIG, out, accelerator=accelerator
    )
    for name, (_, p) in trainer.params.items():  # peft starts B at 0
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(2))
    return trainer


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous() for n, (_, p) in trainer.params.items()}


def main() -> None:
    out = sys.argv[1]
    accelerator = Accelerator(cpu=True)
    trainer = build(out, accelerator)
    history = trainer.fit()
    if accelerator.is_main_process:
        save_file(weights(trainer), str(Path(out) / "ddp_weights.safetensors"))
        (Path(out) / "ddp_history.json").write_text(json.dumps(history))
    accelerator.wait_for_everyone()
    # leave the process group before exit: gloo's threads torn down at interpreter exit
    # can abort a rank ("terminate called without an active exception", SIGABRT)
    accelerator.end_training()


if __name__ == "__main__":
    main()
