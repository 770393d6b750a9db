import pytest
import torch

from mechtune.models.spec import load_dual_encoder
from mechtune.train.lora import LoraSettings, lora_parameters
from mechtune.train.methods import NegationData, negation_trainer
from mechtune.train.negation import CaptionExample, ClaimExample, LoopConfig
from tests.tiny_models import tiny_clip

CAPTIONS = [
    CaptionExample("there is no pleural effusion .", 0),
    CaptionExample("there is small pleural effusion .", 1),
    CaptionExample("no pneumothorax .", 2),
]
CLAIMS = [
    ClaimExample(("there is no edema .", "there is severe edema ."), 0),
    ClaimExample(("large pneumothorax .", "no pneumothorax .", "small pneumothorax ."), 1),
    ClaimExample(("negative for cardiomegaly .", "positive for cardiomegaly ."), 2),
]


def _trainer(folder, out, method="nast", **kw):
    enc = load_dual_encoder(f"hf:{folder}")
    torch.manual_seed(0)
    settings = dict(
        steps=6,
        caption_batch=3,
        claim_batch=2,
        lr=1e-2,
        checkpoint_every=3,
        lora=LoraSettings(rank=2, alpha=4, dropout=0.1),
    )
    config = LoopConfig(**{**settings, **kw})
    data = NegationData(CAPTIONS, CLAIMS)
    trainer = negation_trainer(method, enc, _images(), data, [0.2, 1.0, 0.5], config, out)
    for _, p in lora_parameters(trainer.model).values():
        torch.nn.init.normal_(p, std=0.05)
    return trainer


def _images():
    return torch.nn.functional.normalize(
        torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )


def _weights(trainer):
    return {n: p.detach().clone() for n, (_, p) in lora_parameters(trainer.model).items()}


def test_killed_and_resumed_run_ends_with_the_same_weights(tmp_path):
    folder = tiny_clip(tmp_path / "clip")
    straight = _trainer(folder, tmp_path / "a")
    straight.fit()

    first = _trainer(folder, tmp_path / "b")
    first.fit(stop_after=4)  # killed after step 4; last ckpt: 3
    assert [p.name for p in first.checkpoints()] == ["step_000003"]
    resumed = _trainer(folder, tmp_path / "b")
    resumed.fit(resume=True)
    assert resumed.step == 6
    a, b = _weights(straight), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert [h["step"] for h in resumed.history] == [1, 2, 3, 4, 5, 6]


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    from mechtune.errors import ConfigError

    folder = tiny_clip(tmp_path / "clip")
    _trainer(folder, tmp_path / "run", steps=3).fit()
    longer = _trainer(folder, tmp_path / "run", steps=4, checkpoint_every=2)
    longer.fit(resume=True)  # more steps on the same settings: fine
    assert [h["step"] for h in longer.history] == [1, 2, 3, 4]
    other = _trainer(folder, tmp_path / "run", steps=5, lr=5e-2)
    with pytest.raises(ConfigError, match=r"step_000004 was written with other settings \(lr\)"):
        other.fit(resume=True)


def test_loss_goes_down_and_terms_are_logged(tmp_path):
    trainer = _trainer(
        tiny_clip(tmp_path / "clip"),
        tmp_path / "run",
        beta=0.0,
        steps=30,
        claim_batch=3,
        lr=3e-2,
        checkpoint_every=30,
        lora=LoraSettings(rank=2, alpha=4),
    )
    history = trainer.fit()
    assert set(history[0]) == {"step", "clip", "claim", "loss"}
    first = sum(h["loss"] for h in history[:5]) / 5
    last = sum(h["loss"] for h in history[-5:]) / 5
    assert last < first


def test_empty_data_is_refused(tmp_path):
    from mechtune.errors import DataError

    enc = load_dual_encoder(f"hf:{tiny_clip(tmp_path / 'clip')}")
    with pytest.raises(DataError, match="at least one caption and one claim set"):
        negation_trainer(
            "nast", enc, _images(), NegationData([], CLAIMS), [1.0] * 3, LoopConfig(), tmp_path
        )
    bad = NegationData(CAPTIONS, [ClaimExample(("a", "b"), 7)])
    with pytest.raises(DataError, match=r"image rows \[7\] outside the 3 image embeddings"):
        negation_trainer("nast", enc, _images(), bad, [1.0] * 3, LoopConfig(), tmp_path)


def test_checkpoint_adapter_loads_with_peft(tmp_path):
    from peft import PeftModel
    from transformers import CLIPModel

    folder = tiny_clip(tmp_path / "clip")
    trainer = _trainer(folder, tmp_path / "run")
    trainer.fit()
    last = trainer.checkpoints()[-1]
    loaded = PeftModel.from_pretrained(CLIPModel.from_pretrained(folder), last / "peft")
    ours = dict(trainer.model.named_parameters())
    for name, p in loaded.named_parameters():
        if "lora_" in name:
            assert torch.equal(p, ours[name]), name


def test_shards_must_divide_the_batches_at_construction():
    """case19: a shard (DDP rank) with no example crashed deep in the tokenizer."""
    from mechtune.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"caption_batch \(1\) must be a multiple of shards \(2\)"
    ):
        LoopConfig(shards=2, caption_batch=1, claim_batch=1)
    with pytest.raises(ConfigError, match=r"claim_batch \(3\) must be a multiple of shards \(2\)"):
        LoopConfig(shards=2, caption_batch=4, claim_batch=3)
    LoopConfig(shards=2, caption_batch=4, claim_batch=2)  # fine


def test_negclip_loss_is_the_one_trained(tmp_path):
    """The NegCLIP baseline once built NegCLIPLoss and trained with the NAST loss."""
    folder = tiny_clip(tmp_path / "clip")
    neg = _trainer(folder, tmp_path / "neg", method="negclip", steps=2)
    history = neg.fit()
    assert set(history[0]) == {"step", "negclip_i2t", "negclip_t2i", "loss"}
    nast = _trainer(folder, tmp_path / "nast", method="nast", steps=2, lora=None)
    nast.fit()
    moved = [
        n
        for n, (_, p) in neg.params.items()
        if not torch.equal(p.detach(), nast.params[n][1].detach())
    ]
    assert moved  # different losses, different weights


def _fingerprint(tmp_path, name, **kw):
    """Weights after a 4-step run, the logged history and the checkpoints written."""
    trainer = _trainer(
        tiny_clip(tmp_path / "clip"), tmp_path / name, **{"steps": 4, "checkpoint_every": 2, **kw}
    )
    history = trainer.fit()
    weights = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}
    return weights, history, [p.name for p in trainer.checkpoints()]


def _differs(a, b):
    (wa, ha, ca), (wb, hb, cb) = a, b
    if wa.keys() != wb.keys() or ca != cb or len(ha) != len(hb) or ha[0].keys() != hb[0].keys():
        return True
    return any(not torch.equal(wa[n], wb[n]) for n in wa)


# Every LoopConfig field, with a value that must change what a run produces (weights,
# history or checkpoints). The meta-test below keeps this table complete.
LOOP_FIELD_CHANGES = {
    "steps": 3,
    "caption_batch": 2,
    "claim_batch": 3,
    "lr": 2e-2,
    "weight_decay": 0.5,
    "lam": 0.9,
    "beta": 2.0,
    "seed": 1,
    "checkpoint_every": 3,
    "shards": 2,  # with caption_batch 4 / claim_batch 2 below
    "scaling": "lr",
    "optimizer": "sgd",
    "momentum": 0.9,  # under optimizer sgd (below)
    "lora": LoraSettings(rank=3, alpha=4, dropout=0.1),
}
LORA_FIELD_CHANGES = {
    "rank": 3,
    "alpha": 8,
    "dropout": 0.0,
    "layers": (1,),
    "target_modules": ("q_proj", "fc2"),
}


# eval_every evaluates without changing the run (tests/train/test_tracking.py declares it);
# the settings against the "prefer No" shortcut need labelled claim sets and MCQs
# (tests/train/test_negation_terms.py and test_selection.py declare them).
ELSEWHERE = {
    "eval_every",
    "batch_polarity",
    "margin_weight",
    "margin",
    "retention_weight",
    "retention_kind",
    "retention_batch",
    "mcq_weight",
    "mcq_batch",
    "keep_best",
}


def test_every_loop_field_has_a_change_test():
    import dataclasses

    assert {f.name for f in dataclasses.fields(LoopConfig)} == set(LOOP_FIELD_CHANGES) | ELSEWHERE
    assert {f.name for f in dataclasses.fields(LoraSettings)} == set(LORA_FIELD_CHANGES)


@pytest.mark.parametrize("field", sorted(LOOP_FIELD_CHANGES))
def test_changing_a_loop_field_changes_the_run(tmp_path, field):
    base = {"caption_batch": 4, "claim_batch": 2, "scaling": "lr"} if field == "shards" else {}
    if field == "beta":
        base = {"scaling": "lr"}  # AdamW undoes constant gradient factors (see test below)
    if field == "scaling":
        base = {"beta": 1.0}
    if field == "momentum":
        base = {"optimizer": "sgd"}  # AdamW refuses a momentum (its betas are its own)
    before = _fingerprint(tmp_path, "a", **base)
    after = _fingerprint(tmp_path, "b", **{**base, field: LOOP_FIELD_CHANGES[field]})
    assert _differs(before, after), field


@pytest.mark.parametrize("field", sorted(LORA_FIELD_CHANGES))
def test_changing_a_lora_field_changes_the_run(tmp_path, field):
    base = LoraSettings(rank=2, alpha=4, dropout=0.1)
    changed = dataclasses_replace(base, **{field: LORA_FIELD_CHANGES[field]})
    before = _fingerprint(tmp_path, "a", lora=base)
    after = _fingerprint(tmp_path, "b", lora=changed)
    assert _differs(before, after), field


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"lam": 1.5}, r"lam must be in \[0, 1\]"),
        ({"beta": -1.0}, "beta must be >= 0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0"),
        ({"scaling": "grad"}, "scaling must be 'gradient' or 'lr'"),
        ({"optimizer": "adam"}, r"optimizer must be one of \('adamw', 'sgd'\), got 'adam'"),
        ({"optimizer": "sgd", "momentum": 1.0}, r"momentum must be in \[0, 1\), got 1.0"),
        ({"momentum": 0.9}, r"momentum \(0.9\) is read by optimizer 'sgd' only"),
        ({"lora": LoraSettings(layers=None)}, None),
    ],
)
def test_loop_config_refuses_bad_values_at_construction(kw, message):
    from mechtune.errors import ConfigError

    if message is None:
        LoopConfig(**kw)
        return
    with pytest.raises(ConfigError, match=message):
        LoopConfig(**kw)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"layers": ()}, "name at least one block"),
        ({"layers": (0, 0)}, r"distinct block indices >= 0, got \[0, 0\]"),
        ({"alpha": 0}, "alpha must be > 0"),
        ({"rank": 0}, "rank must be >= 1"),
        ({"target_modules": ()}, r"target_modules must be None .* got \[\]"),
        ({"target_modules": ("fc1", "fc1")}, r"distinct module names, got \['fc1', 'fc1'\]"),
        ({"target_modules": "q_proj"}, "target_modules must be a list of module names"),
    ],
)
def test_lora_settings_refuse_bad_values(kw, message):
    from mechtune.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        LoraSettings(**kw)


FIELD_TESTS = {
    "mechtune.train.negation.LoopConfig": {
        f: "test_changing_a_loop_field_changes_the_run" for f in LOOP_FIELD_CHANGES
    },
    "mechtune.train.lora.LoraSettings": {
        f: "test_changing_a_lora_field_changes_the_run" for f in LORA_FIELD_CHANGES
    },
}


def _adapted(model) -> set[str]:
    """The names (last part) of the linear layers that hold LoRA factors."""
    return {
        n.split(".lora_")[0].rsplit(".", 1)[-1]
        for n, _ in model.named_parameters()
        if ".lora_A." in n
    }


def test_target_modules_choose_which_linears_get_adapters(tmp_path):
    from mechtune.errors import ConfigError
    from mechtune.models.sites import CLIP_LORA
    from mechtune.train.lora import apply_text_lora

    folder = tiny_clip(tmp_path / "clip")
    every = apply_text_lora(load_dual_encoder(f"hf:{folder}").model, LoraSettings())
    assert _adapted(every) == set(CLIP_LORA)
    chosen = LoraSettings(layers=(1,), target_modules=("q_proj", "fc2"))
    some = apply_text_lora(load_dual_encoder(f"hf:{folder}").model, chosen)
    assert _adapted(some) == {"q_proj", "fc2"}
    assert {
        n.split(".layers.")[1].split(".")[0] for n, _ in some.named_parameters() if "lora_" in n
    } == {"1"}
    with pytest.raises(
        ConfigError,
        match=r"target_modules \['o_proj'\] are not LoRA targets .*allowed: "
        r"\['q_proj', 'k_proj', 'v_proj', 'out_proj', 'fc1', 'fc2'\]",
    ):
        apply_text_lora(
            load_dual_encoder(f"hf:{folder}").model,
            LoraSettings(target_modules=("q_proj", "o_proj")),
        )


def test_lora_settings_round_trip_through_dicts_and_yaml_lists():
    settings = LoraSettings(rank=4, layers=(2, 0), target_modules=("fc1", "q_proj"))
    d = settings.to_dict()
    assert d["target_modules"] == ["fc1", "q_proj"] and d["layers"] == [2, 0]
    assert LoraSettings.from_dict(d) == settings
    assert LoraSettings(target_modules=["fc1", "q_proj"]).target_modules == ("fc1", "q_proj")
    assert LoraSettings.from_dict(LoraSettings().to_dict()) == LoraSettings()


def test_fit_reporting_counts_steps_and_shows_each_interval_mean_loss(tmp_path):
    from mechtune.train.methods import fit_reporting
    from tests.progress_helpers import Recorder

    folder = tiny_clip(tmp_path / "clip")
    track = Recorder()
    trainer = _trainer(folder, tmp_path / "run")  # 6 steps, a flush every 3
    fit_reporting(trainer, track, "train nast")
    track.check_complete()
    (stage,) = track.stages
    assert (stage.description, stage.total, stage.completed) == ("train nast", 6, 0)
    assert stage.counts.count(1) == 6 and sum(stage.counts) == 6
    losses = [h["loss"] for h in trainer.history]
    assert stage.fields == [
        {"loss": pytest.approx(sum(losses[:3]) / 3)},
        {"loss": pytest.approx(sum(losses[3:]) / 3)},
    ]

    # a killed run resumes at its checkpoint: the stage starts there
    killed = _trainer(folder, tmp_path / "killed")
    killed.fit(stop_after=4)  # last checkpoint: step 3
    track = Recorder()
    resumed = _trainer(folder, tmp_path / "killed")
    fit_reporting(resumed, track, "train nast")
    track.check_complete()
    (stage,) = track.stages
    assert (stage.total, stage.completed, sum(stage.counts)) == (6, 3, 3)
    losses = [h["loss"] for h in resumed.history[3:]]
    assert stage.fields == [{"loss": pytest.approx(sum(losses) / 3)}]
