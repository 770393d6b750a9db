"""Consistency training on a real transformers VLM (the tiny random Gemma 3): the answer
loss over the whole vocabulary is not the binary one."""

import numpy as np
import pytest
import torch

from mechtune.models.vlm_spec import load_yes_no_vlm
from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample
from mechtune.train.lora import LoraSettings
from mechtune.train.methods import paraphrase_trainer
from tests.tiny_gemma import tiny_gemma

EXAMPLES = [
    ConsistencyExample(0, "Is there a pleural effusion?", ("Is there any effusion?",), True),
    ConsistencyExample(1, "Is there cardiomegaly?", ("Does the chest show cardiomegaly?",), False),
]


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("tiny_gemma"))


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]


def _first_step(gemma_dir, out, answer_loss):
    """The terms and LoRA gradients of one step from the same start (B factors non-zero)."""
    vlm = load_yes_no_vlm(f"hf:{gemma_dir}")
    config = ConsistencyConfig(
        lora=LoraSettings(layers=(1,), rank=2, alpha=4),
        steps=1,
        batch_size=2,
        answer_loss=answer_loss,
    )
    torch.manual_seed(0)
    trainer = paraphrase_trainer("consistency-lora", vlm, _images(), EXAMPLES, config, out)
    for name, (_, p) in trainer.params.items():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(2))
    terms = {k: float(v) for k, v in trainer.train_step().items()}  # read now
    return terms, {n: p.grad.detach().clone() for n, (_, p) in trainer.params.items()}


def test_vocab_and_binary_answer_losses_train_differently_on_gemma(gemma_dir, tmp_path):
    """Same batch, same start: the KL term is the same, the answer term is not. The
    vocabulary cross-entropy is larger, as it must be: p_V(canonical yes) <= P(any yes)
    <= P(any yes) / (P(any yes) + P(any no)) = sigmoid(margin). The gradients differ, so
    ConsistencyConfig.answer_loss reaches the loss."""
    vocab, grads_vocab = _first_step(gemma_dir, tmp_path / "vocab", "vocab")
    binary, grads_binary = _first_step(gemma_dir, tmp_path / "binary", "binary")
    assert vocab["symmetric_kl"] == pytest.approx(binary["symmetric_kl"], rel=1e-5)
    assert vocab["answer_ce"] > binary["answer_ce"] + 0.1
    assert grads_vocab.keys() == grads_binary.keys()
    differ = [
        n for n in grads_vocab if not torch.allclose(grads_vocab[n], grads_binary[n], rtol=1e-3)
    ]
    assert len(differ) == len(grads_vocab)


FIELD_TESTS = {
    "mechtune.train.consistency.ConsistencyConfig": {
        "answer_loss": "test_vocab_and_binary_answer_losses_train_differently_on_gemma"
    }
}
