import json
import math

import numpy as np
import pytest
import torch
from peft import PeftModel
from torch.nn import functional as F

from mechtune.sim.vqa import PhantomVQA, load_default_vqa
from mechtune.train.consistency import ConsistencyConfig, ConsistencyExample
from mechtune.train.lora import LoraSettings, active_layers, lm_lora_site
from mechtune.train.losses import (
    BinaryConsistencyLoss,
    ConsistencyBatch,
    VocabConsistencyLoss,
    symmetric_kl,
)
from mechtune.train.methods import paraphrase_trainer


def _trainer(vlm, config, out):
    return paraphrase_trainer("consistency-lora", vlm, _images(vlm), EXAMPLES, config, out)


def bernoulli_kl(p: float, q: float) -> float:
    return p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))


def test_symmetric_kl_matches_the_definition() -> None:
    a = torch.tensor([2.0, -1.0, 0.3, 0.0])
    b = torch.tensor([-0.5, -1.0, 1.7, 4.0])
    got = symmetric_kl(a, b)
    for i in range(4):
        p, q = 1 / (1 + math.exp(-a[i].item())), 1 / (1 + math.exp(-b[i].item()))
        want = bernoulli_kl(p, q) + bernoulli_kl(q, p)
        assert got[i].item() == pytest.approx(want, rel=1e-5, abs=1e-7)
    assert got[1].item() == 0.0  # same margin, same distribution


def test_symmetric_kl_equals_softmax_kl_over_yes_no_logits() -> None:
    # The VLM's yes/no distribution is a softmax over two logits; only their difference
    # (the margin) matters.
    yes_a, no_a, yes_b, no_b = 1.3, -0.2, 0.1, 0.9
    p = torch.softmax(torch.tensor([yes_a, no_a]), 0)
    q = torch.softmax(torch.tensor([yes_b, no_b]), 0)
    want = float((p * (p / q).log()).sum() + (q * (q / p).log()).sum())
    got = symmetric_kl(torch.tensor([yes_a - no_a]), torch.tensor([yes_b - no_b]))
    assert got.item() == pytest.approx(want, rel=1e-5)


def _batch(orig_logits, para_logits, orig_margin, para_margin, answer, ids=(0, 1)):
    return ConsistencyBatch(
        torch.as_tensor(orig_logits, dtype=torch.float32),
        torch.as_tensor(para_logits, dtype=torch.float32),
        torch.as_tensor(orig_margin, dtype=torch.float32),
        torch.as_tensor(para_margin, dtype=torch.float32),
        torch.as_tensor(answer),
        ids,
    )


def test_binary_consistency_loss_terms_by_hand() -> None:
    orig = torch.tensor([1.0, -2.0])
    para = torch.tensor([-0.5, -1.0])
    answer = torch.tensor([True, False])
    # logits the binary loss must not read: only the margins count
    noise = torch.randn(2, 5)
    terms = BinaryConsistencyLoss(consistency_weight=0.7)(_batch(noise, noise, orig, para, answer))

    def nll(m: float, y: bool) -> float:
        p = 1 / (1 + math.exp(-m))
        return -math.log(p if y else 1 - p)

    ce = (nll(1.0, True) + nll(-2.0, False) + nll(-0.5, True) + nll(-1.0, False)) / 4
    kl = float(symmetric_kl(orig, para).mean())
    assert terms["answer_ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["symmetric_kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(ce + 0.7 * kl, rel=1e-6)


def test_vocab_consistency_loss_is_first_token_cross_entropy_plus_weighted_kl() -> None:
    """The released adapter's answer term: cross-entropy over the whole vocabulary towards
    the canonical yes (id 3) or no (id 7) token, averaged over original and paraphrase;
    the KL term reads the margins it is given."""
    g = torch.Generator().manual_seed(0)
    orig, para = torch.randn(3, 11, generator=g), torch.randn(3, 11, generator=g)
    margin_o, margin_p = torch.tensor([0.5, -1.0, 2.0]), torch.tensor([0.1, 1.0, 2.5])
    answer = torch.tensor([True, False, True])
    batch = _batch(orig, para, margin_o, margin_p, answer, ids=(3, 7))
    terms = VocabConsistencyLoss(consistency_weight=0.4)(batch)
    target = torch.tensor([3, 7, 3])
    ce = (F.cross_entropy(orig, target) + F.cross_entropy(para, target)) / 2
    by_hand = (
        -sum(
            math.log(math.exp(x[i][t]) / sum(math.exp(v) for v in x[i]))
            for x in (orig.tolist(), para.tolist())
            for i, t in enumerate(target.tolist())
        )
        / 6
    )
    assert terms["answer_ce"].item() == pytest.approx(float(ce), rel=1e-6)
    assert terms["answer_ce"].item() == pytest.approx(by_hand, rel=1e-5)
    kl = float(symmetric_kl(margin_o, margin_p).mean())
    assert terms["symmetric_kl"].item() == pytest.approx(kl, rel=1e-6)
    assert terms["loss"].item() == pytest.approx(float(ce) + 0.4 * kl, rel=1e-6)


def test_create_loss_picks_the_answer_loss_of_the_config() -> None:
    from mechtune.errors import ConfigError
    from mechtune.train.losses import create_loss

    vocab = create_loss("consistency", ConsistencyConfig(consistency_weight=2.0))
    assert type(vocab) is VocabConsistencyLoss and vocab.weight == 2.0
    binary = create_loss("consistency", ConsistencyConfig(answer_loss="binary"))
    assert type(binary) is BinaryConsistencyLoss

    class Duck:
        answer_loss, consistency_weight = "focal", 1.0

    with pytest.raises(ConfigError, match=r"answer_loss must be one of \('vocab', 'binary'\)"):
        create_loss("consistency", Duck())


def test_config_validates() -> None:
    with pytest.raises(ValueError, match="steps must be >= 1"):
        ConsistencyConfig(steps=0)
    with pytest.raises(ValueError, match="at least one block"):
        ConsistencyConfig(lora=LoraSettings(layers=()))
    config = ConsistencyConfig(lora=LoraSettings(layers=(1, 2)))
    assert ConsistencyConfig.from_dict(config.to_dict()) == config


EXAMPLES = [
    ConsistencyExample(0, "Is there a pleural effusion?", ("Is pleural fluid visible?",), True),
    ConsistencyExample(
        1, "Is there a pneumothorax?", ("Is air in the pleural space seen?",), False
    ),
    ConsistencyExample(
        2, "Is there cardiomegaly?", ("Does the image show an enlarged heart?",), True
    ),
]


@pytest.fixture(scope="module")
def examples() -> list[ConsistencyExample]:
    return EXAMPLES


def _vqa() -> PhantomVQA:
    torch.manual_seed(0)
    return load_default_vqa()


def _images(model: PhantomVQA) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return model.embed_images(rng.integers(0, 255, (3, 128, 128), dtype=np.uint8))


def test_lora_only_on_chosen_layers_and_nothing_else_changes(tmp_path, examples) -> None:
    model = _vqa()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = ConsistencyConfig(lora=LoraSettings(layers=(1, 2)), steps=3, batch_size=4, lr=1e-2)
    trainer = _trainer(model, config, tmp_path)
    assert isinstance(trainer.model, PeftModel)
    assert active_layers(trainer.model, lm_lora_site(model)) == [1, 2]
    trainer.fit()
    after = trainer.model.get_base_model().state_dict()
    changed = []
    for name, value in after.items():
        base = name.replace(".base_layer", "")
        if "lora_" in name:
            assert any(f"question.bert.encoder.layer.{i}." in name for i in (1, 2)), name
            continue
        assert torch.equal(value, before[base]), f"{name} changed"
    lora_b = [v for n, v in after.items() if "lora_B" in n]
    changed = [v for v in lora_b if v.abs().sum() > 0]
    assert lora_b and len(changed) == len(lora_b)  # every adapter trained


def test_resume_gives_the_same_weights(tmp_path, examples) -> None:
    config = ConsistencyConfig(
        lora=LoraSettings(layers=(5,), dropout=0.1),
        steps=4,
        batch_size=4,
        lr=1e-2,
        checkpoint_every=2,
    )
    torch.manual_seed(0)
    straight = _trainer(_vqa(), config, tmp_path / "a")
    straight.fit()

    torch.manual_seed(0)
    first = _trainer(_vqa(), config, tmp_path / "b")
    first.fit(stop_after=3)  # killed after step 3; the last checkpoint is step 2
    torch.manual_seed(0)
    second = _trainer(_vqa(), config, tmp_path / "b")
    second.fit(resume=True)
    assert second.step == 4
    for name, (_, p) in straight.params.items():
        assert torch.equal(p, second.params[name][1]), name
    assert [h["step"] for h in second.history] == [1, 2, 3, 4]
    assert (tmp_path / "b" / "step_000004" / "peft" / "adapter_config.json").is_file()


# Every ConsistencyConfig field, with a value that must change what a run produces.
CONSISTENCY_FIELD_CHANGES = {
    "lora": LoraSettings(layers=(4,), rank=4, alpha=8),
    "lr": 2e-2,
    "weight_decay": 0.5,
    "steps": 3,
    "batch_size": 3,
    "consistency_weight": 5.0,
    "seed": 1,
    "checkpoint_every": 1,
    "grad_accum": 2,
    "optimizer": "sgd",
    "momentum": 0.9,  # under optimizer sgd (FIELD_BASES)
}
# Settings a field's change needs to be read at all.
FIELD_BASES = {"momentum": {"optimizer": "sgd"}}
# On the phantom model's 2-way head the two answer losses are the same objective (see
# tests/sim/test_vqa.py), so answer_loss is proven on the tiny Gemma instead
# (tests/train/test_consistency_hf.py declares it); gradient_checkpointing needs a
# transformers model (tests/train/test_gradient_checkpointing.py declares it); eval_every
# evaluates without changing the run (tests/train/test_tracking.py declares it).
ELSEWHERE = {"answer_loss", "gradient_checkpointing", "eval_every"}


def test_every_consistency_field_has_a_change_test() -> None:
    import dataclasses

    fields = {f.name for f in dataclasses.fields(ConsistencyConfig)}
    assert fields == set(CONSISTENCY_FIELD_CHANGES) | ELSEWHERE


def _consistency_run(tmp_path, examples, **kw):
    base = {"steps": 2, "batch_size": 4, "lr": 1e-2, "checkpoint_every": 2}
    config = ConsistencyConfig(**{"lora": LoraSettings(layers=(5,)), **base, **kw})
    trainer = _trainer(_vqa(), config, tmp_path)
    for name, (_, p) in trainer.params.items():  # peft starts B at 0: give every factor a value
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(2))
    history = trainer.fit()
    weights = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}
    folders = sorted(p.name for p in tmp_path.glob("step_*"))
    return weights, history, folders


@pytest.mark.parametrize("field", sorted(CONSISTENCY_FIELD_CHANGES))
def test_changing_a_consistency_field_changes_the_run(tmp_path, examples, field) -> None:
    base = FIELD_BASES.get(field, {})
    wa, ha, fa = _consistency_run(tmp_path / "a", examples, **base)
    wb, hb, fb = _consistency_run(
        tmp_path / "b", examples, **{**base, field: CONSISTENCY_FIELD_CHANGES[field]}
    )
    differs = (
        wa.keys() != wb.keys()
        or fa != fb
        or ha != hb
        or any(not torch.equal(wa[n], wb[n]) for n in wa)
    )
    assert differs, field


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lora": {"layers": (1, 1)}}, r"layers must be distinct block indices >= 0, got \[1, 1\]"),
        ({"lora": {"layers": (-1,)}}, r"layers must be distinct block indices >= 0"),
        ({"lora": {"alpha": 0}}, "alpha must be > 0"),
        ({"lora": 8}, "lora must be LoRA settings, got 8"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"weight_decay": -1.0}, "weight_decay must be >= 0"),
        ({"consistency_weight": -1.0}, "consistency_weight must be >= 0"),
        ({"grad_accum": 0}, "grad_accum must be >= 1, got 0"),
        ({"answer_loss": "ce"}, r"answer_loss must be one of \('vocab', 'binary'\), got 'ce'"),
        ({"optimizer": "lbfgs"}, r"optimizer must be one of \('adamw', 'sgd'\), got 'lbfgs'"),
        ({"optimizer": "sgd", "momentum": -0.1}, r"momentum must be in \[0, 1\), got -0.1"),
        ({"momentum": 0.5}, r"momentum \(0.5\) is read by optimizer 'sgd' only"),
    ],
)
def test_config_refuses_bad_values_at_construction(kw, message) -> None:
    from mechtune.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        ConsistencyConfig(**kw)


FIELD_TESTS = {
    "mechtune.train.consistency.ConsistencyConfig": {
        f: "test_changing_a_consistency_field_changes_the_run" for f in CONSISTENCY_FIELD_CHANGES
    }
}


def test_run_paraphrase_method_saves_an_adapter_that_reloads_exactly(tmp_path) -> None:
    from mechtune.train.checkpoint import load_trained
    from mechtune.train.methods import run_paraphrase_method

    config = ConsistencyConfig(lora=LoraSettings(layers=(2,)), steps=2, batch_size=4, lr=1e-2)
    trained = _vqa()
    images = _images(trained)
    run_paraphrase_method("consistency-lora", trained, images, EXAMPLES, config, tmp_path)
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    info = json.loads((tmp_path / "train.json").read_text())
    assert info["method"] == "consistency-lora" and info["step"] == 2
    assert info["config"] == config.to_dict() and len(info["history"]) == 2
    texts = [e.question for e in EXAMPLES]
    fresh = load_trained(_vqa(), tmp_path)
    with torch.no_grad():
        want = trained.margin(images, texts)
        got = fresh.margin(images, texts)
        untrained = _vqa().margin(images, texts)
    assert torch.equal(got, want)
    assert not torch.equal(untrained, want)  # the adapter changed the model


def no_dropout(module: torch.nn.Module) -> torch.nn.Module:
    """Every dropout of ``module`` at p = 0 (MiniLM's BERT drops 10% in train mode), so a
    step depends on the batch only, not on how the random stream is consumed."""
    for m in module.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    return module


def _one_step(tmp_path, **kw):
    """Gradients and weights after one step from the same start (B factors non-zero)."""
    config = ConsistencyConfig(lora=LoraSettings(layers=(4, 5)), steps=1, lr=1e-2, **kw)
    torch.manual_seed(0)
    trainer = _trainer(no_dropout(_vqa()), config, tmp_path)
    for name, (_, p) in trainer.params.items():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05, generator=torch.Generator().manual_seed(2))
    terms = {k: float(v) for k, v in trainer.train_step().items()}  # read now
    grads = {n: p.grad.detach().clone() for n, (_, p) in trainer.params.items()}
    weights = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}
    return grads, weights, terms


def test_grad_accum_gives_the_step_of_the_whole_batch(tmp_path) -> None:
    """batch 1 x grad_accum 4 draws the same 4 questions as batch 4 x grad_accum 1 (one
    draw of batch_size * grad_accum from the sampler), and the mean of 4 micro-batch
    gradients is the gradient of the mean loss: same gradients, same logged terms, up to
    float rounding (the MiniLM pads a batch of 4 to its longest question).

    The weights after the step agree wherever the gradient is not tiny. AdamW's first step
    is lr * g / (|g| + eps) with eps = 1e-8, whose slope at g = 0 is lr / eps: a 1e-7
    rounding difference in a 1e-7 gradient entry moves that weight by up to lr, in either
    run. So the exact invariant is the gradient; the step is compared where |g| is well
    above eps and rounding."""
    ga, wa, ta = _one_step(tmp_path / "accum", batch_size=1, grad_accum=4)
    gb, wb, tb = _one_step(tmp_path / "whole", batch_size=4, grad_accum=1)
    assert ga.keys() == gb.keys()
    scale = max(float(g.abs().max()) for g in gb.values())
    assert scale > 0
    for name in ga:
        assert torch.allclose(ga[name], gb[name], rtol=1e-4, atol=1e-5 * scale), name
        clear = gb[name].abs() > 1e-3 * scale
        assert clear.float().mean() > 0.5, name  # most entries are compared
        assert torch.allclose(wa[name][clear], wb[name][clear], rtol=0, atol=1e-6), name
    for key in ta:
        assert ta[key] == pytest.approx(tb[key], rel=1e-5)
    # The micro-batches differ, so one micro-batch alone, or their sum, would not match.
    config = ConsistencyConfig(batch_size=1, grad_accum=4)
    task = _trainer(_vqa(), config, tmp_path / "sample").task
    drawn = task.sample(torch.Generator().manual_seed(config.seed))
    assert len({(e.question, p) for e, p in drawn}) > 1


def test_resume_refuses_a_checkpoint_of_another_answer_loss_or_accumulation(tmp_path) -> None:
    from mechtune.errors import ConfigError

    base = {"lora": LoraSettings(layers=(5,)), "steps": 1, "batch_size": 2, "lr": 1e-2}
    _trainer(_vqa(), ConsistencyConfig(**base), tmp_path).fit()
    for change, field in (
        ({"answer_loss": "binary"}, "answer_loss"),
        ({"grad_accum": 2}, "grad_accum"),
        ({"lora": LoraSettings(layers=(5,), target_modules=("query",))}, "lora"),
    ):
        other = _trainer(_vqa(), ConsistencyConfig(**{**base, "steps": 2, **change}), tmp_path)
        with pytest.raises(ConfigError, match=rf"written with other settings \({field}\)"):
            other.fit(resume=True)


class _Ranks:
    """What the Trainer reads of an ``accelerate.Accelerator`` before training."""

    def __init__(self, processes: int) -> None:
        self.num_processes = processes


@pytest.mark.parametrize(("grad_accum", "processes"), [(1, 2), (3, 2), (4, 3)])
def test_ddp_refuses_shards_the_ranks_cannot_share(tmp_path, grad_accum, processes) -> None:
    """case19's kind: a rank with no micro-batch, or ranks with unequal counts, is a
    ConfigError up front naming both numbers (batch 1 x grad_accum 1 on 2 processes: the
    effective batch is smaller than the number of ranks)."""
    from mechtune.errors import ConfigError
    from mechtune.train.lora import lm_lora_site
    from mechtune.train.trainer import Trainer

    config = ConsistencyConfig(lora=LoraSettings(layers=(5,)), batch_size=1, grad_accum=grad_accum)
    vqa = _vqa()
    trainer = _trainer(vqa, config, tmp_path)
    message = rf"shards \({grad_accum}: .*multiple of the number of processes \({processes}\)"
    with pytest.raises(ConfigError, match=message):
        Trainer(
            vqa, lm_lora_site(vqa), trainer.task, config, tmp_path, accelerator=_Ranks(processes)
        )
