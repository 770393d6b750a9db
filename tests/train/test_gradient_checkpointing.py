"""ConsistencyConfig.gradient_checkpointing on the toy MedGemma shape: the blocks on the
gradient path are recomputed in the backward pass, the blocks below are not, and the step
is the same as without checkpointing."""

import contextlib
from dataclasses import replace

import numpy as np
import pytest
import torch

from mechtune.bench.gemma_shape import build_medgemma
from mechtune.errors import ConfigError
from mechtune.models.yes_no import edit_block_output
from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample
from mechtune.train.lora import LoraSettings, gradient_checkpointing_enabled
from mechtune.train.methods import paraphrase_trainer

EXAMPLES = [
    ConsistencyExample(0, "Is there a pleural effusion?", ("Is there any effusion?",), True),
    ConsistencyExample(1, "Is there any edema?", ("Does the chest show edema?",), False),
]
LORA_LAYERS = (2, 3)  # of the toy shape's 6 blocks


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(2)]


def _config(checkpointing: bool, **kw) -> ConsistencyConfig:
    lora = LoraSettings(rank=2, alpha=4, dropout=0.1, layers=LORA_LAYERS)
    base = {"steps": 1, "batch_size": 1, "grad_accum": 2, "checkpoint_every": 1}
    return ConsistencyConfig(lora=lora, gradient_checkpointing=checkpointing, **{**base, **kw})


def _step(checkpointing: bool, out):
    """Loss terms, LoRA gradients and per-block forward counts (of each block's MLP) of one step from the same
    start (B factors non-zero, dropout on: checkpointing must replay its random draws)."""
    vlm = build_medgemma("tiny", dtype=torch.float32, seed=0)
    trainer = paraphrase_trainer(
        "consistency-lora", vlm, _images(), EXAMPLES, _config(checkpointing), out
    )
    for name, (_, p) in trainer.params.items():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(2))
    calls = [0] * len(vlm.layers)

    def counter(index):
        def count(_state):
            calls[index] += 1

        return count

    trainer.model.train()
    torch.manual_seed(3)
    with contextlib.ExitStack() as stack:
        for index, block in enumerate(vlm.layers):
            # transformers checkpoints a block's forward, inside its hooks: count its MLP
            stack.enter_context(edit_block_output(block.mlp, counter(index)))
        terms = {k: float(v) for k, v in trainer.train_step().items()}
    grads = {n: p.grad.detach().clone() for n, (_, p) in trainer.params.items()}
    return vlm, terms, grads, calls


def test_gradient_checkpointing_recomputes_blocks_with_the_same_gradients(tmp_path) -> None:
    """Without checkpointing every block runs once per micro-batch (2 micro-batches). With
    it, the blocks from the first LoRA block up run again in the backward pass, and the
    blocks below it run once (the input-embedding hooks that would drag the backward
    pass through them are removed). Loss terms and LoRA gradients agree."""
    plain, terms_plain, grads_plain, calls_plain = _step(False, tmp_path / "plain")
    ckpt, terms_ckpt, grads_ckpt, calls_ckpt = _step(True, tmp_path / "ckpt")
    assert not gradient_checkpointing_enabled(plain.module)
    assert gradient_checkpointing_enabled(ckpt.module)
    assert all(block.gradient_checkpointing for block in ckpt.layers)
    assert ckpt.module.is_activation_checkpointing
    embed = ckpt.module.get_input_embeddings()
    assert not embed._forward_hooks  # no requires-grad hook on the embeddings
    first = min(LORA_LAYERS)
    assert calls_plain == [2] * 6
    assert calls_ckpt == [2] * first + [4] * (6 - first)
    assert terms_ckpt.keys() == terms_plain.keys()
    for key in terms_plain:
        assert terms_ckpt[key] == pytest.approx(terms_plain[key], rel=1e-5, abs=1e-7), key
    assert grads_ckpt.keys() == grads_plain.keys() and grads_plain
    for name in grads_plain:
        assert grads_plain[name].abs().max() > 0, name
        torch.testing.assert_close(grads_ckpt[name], grads_plain[name], rtol=1e-4, atol=1e-6)


def test_resume_may_turn_gradient_checkpointing_on(tmp_path) -> None:
    """Recomputation gives the same gradients, so a run may resume with checkpointing
    toggled (say on a smaller GPU); every other training field is still refused."""
    vlm = build_medgemma("tiny", dtype=torch.float32)
    paraphrase_trainer("consistency-lora", vlm, _images(), EXAMPLES, _config(False), tmp_path).fit()
    again = paraphrase_trainer(
        "consistency-lora",
        build_medgemma("tiny", dtype=torch.float32),
        _images(),
        EXAMPLES,
        _config(True, steps=2),
        tmp_path,
    )
    history = again.fit(resume=True)
    assert again.step == 2 and [h["step"] for h in history] == [1, 2]
    changed = paraphrase_trainer(
        "consistency-lora",
        build_medgemma("tiny", dtype=torch.float32),
        _images(),
        EXAMPLES,
        replace(_config(True, steps=3), lr=1e-1),
        tmp_path,
    )
    with pytest.raises(ConfigError, match=r"other settings \(lr\)"):
        changed.fit(resume=True)


def test_gradient_checkpointing_is_refused_before_lora_on_a_model_without_it(tmp_path) -> None:
    """The phantom VQA model is a plain nn.Module: refused, naming the field and class,
    and no LoRA is left in it."""
    from mechtune.sim.vqa import load_default_vqa

    vqa = load_default_vqa()
    images = vqa.embed_images(np.zeros((2, 128, 128), dtype=np.uint8))
    with pytest.raises(ConfigError, match=r"gradient_checkpointing needs a transformers model"):
        paraphrase_trainer("consistency-lora", vqa, images, EXAMPLES, _config(True), tmp_path)
    assert not any("lora_" in name for name, _ in vqa.module.named_parameters())


def test_gradient_checkpointing_must_be_a_bool() -> None:
    with pytest.raises(ConfigError, match=r"gradient_checkpointing must be true or false, got 'y"):
        ConsistencyConfig(gradient_checkpointing="yes")  # type: ignore[arg-type]
    assert ConsistencyConfig(gradient_checkpointing=True).to_dict()["gradient_checkpointing"]
    assert ConsistencyConfig.from_dict(ConsistencyConfig().to_dict()) == ConsistencyConfig()


def test_recipe_lora_section_reads_gradient_checkpointing(tmp_path) -> None:
    from mechtune.pipelines.paraphrase import load_paraphrase_recipe

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("model: hf:/x\nlora:\n  gradient_checkpointing: true\n", encoding="utf-8")
    assert load_paraphrase_recipe(recipe).config.lora.gradient_checkpointing is True
    recipe.write_text("model: hf:/x\nlora:\n  gradient_checkpointing: 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"recipe.yaml: gradient_checkpointing must be true"):
        load_paraphrase_recipe(recipe)


FIELD_TESTS = {
    "mechtune.train.consistency.ConsistencyConfig": {
        "gradient_checkpointing": "test_gradient_checkpointing_recomputes_blocks_with_the_same_gradients"
    }
}
