"""One DDP training step at world size 1, through mechtune's Trainer with an
``accelerate.Accelerator``: the launch path of a multi-GPU run, checked on one device.

Launch it with PyTorch's launcher (it refuses to run without one):

    python -m torch.distributed.run --nproc_per_node 1 benchmarks/ddp_step.py \\
        --scale tiny|real --device cuda|cpu --out FILE

Under the launcher ``Accelerator(cpu=...)`` joins a process group of one process: NCCL on
CUDA, gloo on the CPU. The model is a random-weight transformers ``CLIPModel`` built from
its config directly on the device in the dtype: at ``--scale real`` a BiomedCLIP-shape
text tower (12 layers, hidden 768, 12 heads, MLP 3072, a 256-token context, BERT-base's
30,522-token vocabulary, assumed for PubMedBERT) beside a ViT-B/16 at 224 and a 512-d
projection (``../shared/REFERENCE.md`` §6); at ``--scale tiny`` a 2-layer, 32-wide one.
Its tokenizer is a ``tokenizers`` WordLevel model of the same vocabulary size.

Two trainers start from the same weights and the same LoRA initialisation: one with the
accelerator (its gradients all-reduced over the process group), one without. The record
gives the backend, the world size, the first step of each (warm-up included), the median
of the next steps of each, their ratio, and the max |difference| of the LoRA weights
after one step, which must be 0 up to rounding at world size 1 (the all-reduce of one
process is the identity). The step is uniform LoRA (the NAST loss, beta 0) at the
recipe's batch of 32 captions and 32 claim sets (4 and 4 at tiny scale), image embeddings
cached (random unit vectors). Multi-GPU scaling is not measured: one GPU at most is lent.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from typing import Any

import torch

from mechtune.bench.record import (
    add_common_options,
    goal,
    peak_memory_gib,
    reset_peak_memory,
    resolve_options,
    timed,
    write_record,
)
from mechtune.errors import ConfigError

VOCAB_SIZE = {"tiny": 64, "real": 30522}
TEXT = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
             "num_attention_heads": 2, "max_position_embeddings": 32},
    "real": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "max_position_embeddings": 256},
}  # fmt: skip
VISION = {
    "tiny": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "image_size": 32, "patch_size": 16},
    "real": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
             "num_attention_heads": 12, "image_size": 224, "patch_size": 16},
}  # fmt: skip
PROJECTION = {"tiny": 16, "real": 512}
BATCH = {"tiny": 4, "real": 32}  # captions and claim sets per step
TIMED_STEPS = {"tiny": 2, "real": 5}  # after the first (warm-up) step
WORDS = [
    "no",
    "left",
    "right",
    "small",
    "large",
    "pleural",
    "effusion",
    "pneumothorax",
    "edema",
    "consolidation",
    "cardiomegaly",
    "atelectasis",
    "there",
    "is",
    "evidence",
    "of",
    "mild",
    "moderate",
    "severe",
    "seen",
]


def tokenizer(vocab_size: int) -> Any:
    """A fast tokenizer of exactly ``vocab_size`` tokens (WordLevel over :data:`WORDS`
    and filler tokens, ``<bos> ... <eos>`` around each text), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<unk>": 2}
    for word in WORDS:
        vocab[word] = len(vocab)
    while len(vocab) < vocab_size - 1:
        vocab[f"tok{len(vocab)}"] = len(vocab)
    vocab["<eos>"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", vocab["<eos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
        unk_token="<unk>",
    )  # fmt: skip


def build_encoder(scale: str, device: torch.device, dtype: torch.dtype, seed: int) -> Any:
    """The random-weight CLIP dual encoder of ``scale``, built on ``device`` in ``dtype``
    (``seed`` fixes its weights), wrapped in mechtune's transformers adapter."""
    from transformers import CLIPConfig, CLIPModel

    from mechtune.models.hf_dual import HFCLIPDualEncoder

    tok = tokenizer(VOCAB_SIZE[scale])
    eos = tok.convert_tokens_to_ids("<eos>")
    config = CLIPConfig(
        text_config={**TEXT[scale], "vocab_size": VOCAB_SIZE[scale], "bos_token_id": 1,
                     "eos_token_id": eos, "pad_token_id": 0},
        vision_config=VISION[scale],
        projection_dim=PROJECTION[scale],
    )  # fmt: skip
    torch.manual_seed(seed)
    with torch.device(device):
        # eager attention: SDPA's fused backward on CUDA is not deterministic, and the
        # goal compares two runs of the same step to 1e-6
        model = CLIPModel._from_config(config, dtype=dtype, attn_implementation="eager")
    return HFCLIPDualEncoder(model.eval(), tok)


def examples(scale: str, images: int, seed: int) -> Any:
    """Captions and 4-candidate claim sets of 12-20 words, each naming an image row."""
    from mechtune.train.methods import NegationData
    from mechtune.train.negation import CaptionExample, ClaimExample

    g = torch.Generator().manual_seed(seed)

    def sentence() -> str:
        n = int(torch.randint(12, 21, (1,), generator=g))
        return " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (n,), generator=g))

    count = 4 * BATCH[scale]
    captions = [CaptionExample(sentence(), i % images) for i in range(count)]
    claims = [ClaimExample(tuple(sentence() for _ in range(4)), i % images) for i in range(count)]
    return NegationData(captions, claims)


def trainer(args: argparse.Namespace, device: torch.device, dtype: torch.dtype,
            out: str, accelerator: Any | None) -> Any:  # fmt: skip
    """A uniform-LoRA trainer on a fresh model (weights, images, examples and LoRA
    initialisation seeded the same for every call)."""
    from mechtune.train.lora import LoraSettings
    from mechtune.train.methods import negation_trainer
    from mechtune.train.negation import LoopConfig

    encoder = build_encoder(args.scale, device, dtype, seed=0)
    g = torch.Generator().manual_seed(1)
    images = torch.nn.functional.normalize(torch.randn(64, PROJECTION[args.scale], generator=g))
    config = LoopConfig(
        steps=1 + TIMED_STEPS[args.scale],
        caption_batch=BATCH[args.scale],
        claim_batch=BATCH[args.scale],
        lr=5e-4,
        lora=LoraSettings(rank=16, alpha=32),
    )
    alpha = torch.ones(TEXT[args.scale]["num_hidden_layers"] + 1)
    torch.manual_seed(config.seed)  # the LoRA initialisation, as run_method seeds it
    return negation_trainer(
        "uniform-lora", encoder, images, examples(args.scale, 64, 2), alpha, config, out,
        accelerator=accelerator,
    )  # fmt: skip


def lora_weights(t: Any) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().clone() for n, (_, p) in t.params.items()}


def main() -> None:
    parser = add_common_options(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = parser.parse_args()
    device, dtype = resolve_options(args)
    if "LOCAL_RANK" not in os.environ:
        raise ConfigError(
            "launch with python -m torch.distributed.run --nproc_per_node 1 "
            "benchmarks/ddp_step.py ...: the step under test is the launched one"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) != 1:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']}: this benchmark compares a world of 1 "
            "process with the plain step (--nproc_per_node 1)"
        )
    from accelerate import Accelerator

    if device.type == "cuda":  # cuBLAS's deterministic mode, set before the first call
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    accelerator = Accelerator(cpu=device.type == "cpu")
    if accelerator.device.type != device.type:
        raise ConfigError(f"--device {device}, but accelerate chose {accelerator.device}")
    device = accelerator.device  # cuda:LOCAL_RANK under the launcher
    if not torch.distributed.is_initialized():
        raise ConfigError("accelerate did not join a process group; launch with torchrun")
    steps = TIMED_STEPS[args.scale]
    with tempfile.TemporaryDirectory() as out:
        reset_peak_memory(device)
        ddp = trainer(args, device, dtype, f"{out}/ddp", accelerator)
        _, ddp_first = timed(ddp.train_step, device)  # warm-up included
        after_ddp = lora_weights(ddp)
        ddp_steps = [timed(ddp.train_step, device)[1] for _ in range(steps)]
        peak = peak_memory_gib(device)
        del ddp
        one = trainer(args, device, dtype, f"{out}/one", None)
        _, one_first = timed(one.train_step, device)
        after_one = lora_weights(one)
        one_steps = [timed(one.train_step, device)[1] for _ in range(steps)]
    diff = max(float((after_ddp[n] - after_one[n]).abs().max()) for n in after_one)
    ddp_median, one_median = statistics.median(ddp_steps), statistics.median(one_steps)
    figures = {
        "backend": torch.distributed.get_backend(),
        "world_size": accelerator.num_processes,
        "dtype": str(dtype).removeprefix("torch."),
        "batch": {"captions": BATCH[args.scale], "claim_sets": BATCH[args.scale]},
        "trainable_parameters": sum(p.numel() for p in after_one.values()),
        "ddp_first_step_s": round(ddp_first, 6),
        "single_first_step_s": round(one_first, 6),
        "ddp_step_s": round(ddp_median, 6),
        "single_step_s": round(one_median, 6),
        "timed_steps": steps,
        "ddp_over_single": round(ddp_median / one_median, 3),
        "weights_max_abs_diff_after_one_step": diff,
        "weights_equal": diff <= 1e-6,
        "ddp_peak_memory_gib": round(peak, 3),
        "multi_gpu_scaling": "not measured (one GPU at most is lent)",
        "goals": {
            # the all-reduce of one process must leave the step unchanged
            "weights_equal_at_world_size_1": goal(1e-6, diff, higher_is_better=False),
        },
    }
    write_record(args, "ddp_step", device, figures)
    accelerator.end_training()


if __name__ == "__main__":
    main()
