"""The training changes against the "prefer No" shortcut (issue 18): per-batch polarity
balance, the symmetric pair margin, retention of the frozen tower and NegBench's MCQ
term. Each term against a hand computation on tiny tensors; each setting changes a run;
bad values are refused naming the field; and the defaults train exactly as before."""

from __future__ import annotations

import math
from collections import Counter

import pytest
import torch

from mechtune.errors import ConfigError, DataError
from mechtune.models.spec import load_dual_encoder
from mechtune.train.lora import LoraSettings, lora_parameters
from mechtune.train.losses import NASTLoss, NegationBatch, create_loss
from mechtune.train.methods import NegationData, negation_trainer
from mechtune.train.negation import ClaimExample, LoopConfig, NegationTask
from mechtune.train.negation_terms import (
    MCQTerm,
    NegationObjective,
    PairMarginTerm,
    RetentionTerm,
)
from tests.tiny_models import tiny_clip
from tests.train.test_trainer import CAPTIONS, CLAIMS

# claim sets with their polarity and negation twin, as negation_examples labels them
CLAIMS_P = [
    ClaimExample(("there is no edema .", "there is severe edema ."), 0, "negated", 1),
    ClaimExample(
        ("large pneumothorax .", "small pneumothorax .", "no pneumothorax ."), 1, "affirmative", 2
    ),
    ClaimExample(("negative for cardiomegaly .", "positive for cardiomegaly ."), 2, "negated", 1),
    ClaimExample(("small pleural effusion .", "no pleural effusion ."), 0, "affirmative", 1),
    ClaimExample(("no rib fracture .", "rib fracture ."), 1, "negated", 1),
]
MCQ = [
    ClaimExample(("no edema and no pneumothorax .", "edema .", "pneumothorax .", "rib ."), 0),
    ClaimExample(("no cardiomegaly .", "cardiomegaly .", "edema .", "no edema ."), 1),
    ClaimExample(("rib fracture and no edema .", "no rib fracture .", "edema ."), 2),
]


def _unit(*rows):
    return torch.nn.functional.normalize(torch.tensor(rows, dtype=torch.float32), dim=-1)


# -- hand computations ----------------------------------------------------------------------


def test_pair_margin_by_hand():
    image = _unit([1, 0], [0, 1], [1, 0], [1, 0])
    candidates = torch.stack(
        [
            _unit([1, 0], [0, 1], [0, 1]),  # affirmative, twin 1: gap 1 - 0
            _unit([0.6, 0.8], [1, 0], [0, 1]),  # negated, twin 2: gap 0.8 - 1
            _unit([1, 0], [0, 1], [0, 1]),  # no twin: counted nowhere
            _unit([0.6, 0.8], [0.8, 0.6], [0, 1]),  # affirmative, twin 1: gap 0.6 - 0.8
        ]
    )
    twin = torch.tensor([1, 2, -1, 1])
    affirmative = torch.tensor([True, False, True, True])
    term = PairMarginTerm(margin=3.0)
    # h = max(0, 3 - 2 * gap): 1, 3.4, -, 3.4; affirmative mean 2.2, negated mean 3.4
    out = term(image, candidates, twin, affirmative, 2.0)["margin"]
    assert out.item() == pytest.approx((2.2 + 3.4) / 2)
    # one polarity only: its mean; no twin at all: 0; a large gap: no hinge
    only = term(image[:1], candidates[:1], twin[:1], affirmative[:1], 2.0)["margin"]
    assert only.item() == pytest.approx(1.0)
    none = term(image, candidates, torch.full((4,), -1), affirmative, 2.0)["margin"]
    assert none.item() == 0.0
    assert PairMarginTerm(margin=1.0)(image[:1], candidates[:1], twin[:1], affirmative[:1], 2.0)[
        "margin"
    ].item() == pytest.approx(0.0)
    with pytest.raises(ConfigError, match="margin must be >= 0, got -1"):
        PairMarginTerm(margin=-1)


def test_retention_by_hand():
    tuned = _unit([1, 0], [0.6, 0.8])
    frozen = _unit([0.8, 0.6], [0.6, 0.8])
    image = _unit([1, 0], [0, 1])
    cosine = RetentionTerm("cosine")(tuned, frozen, image, 1.0)["retention"]
    assert cosine.item() == pytest.approx(((1 - 0.8) + (1 - 1.0)) / 2)

    def softmax(xs):
        z = sum(math.exp(x) for x in xs)
        return [math.exp(x) / z for x in xs]

    p = softmax([2 * 0.8, 2 * 0.6])  # frozen sentence 0 against the two images, scale 2
    q = softmax([2 * 1.0, 2 * 0.0])  # tuned
    kl0 = sum(a * math.log(a / b) for a, b in zip(p, q, strict=True))
    kl = RetentionTerm("kl")(tuned, frozen, image, 2.0)["retention"]
    assert kl.item() == pytest.approx(kl0 / 2)  # sentence 1 is unchanged: KL 0
    with pytest.raises(ConfigError, match=r"retention_kind must be one of \('cosine', 'kl'\)"):
        RetentionTerm("l2")


def test_mcq_term_by_hand():
    image = _unit([1, 0])
    options = _unit([1, 0], [0, 1], [0.6, 0.8], [0, 1])[None]
    mask = torch.tensor([[True, True, True, False]])
    ce = MCQTerm()(image, options, mask, 1.0)["mcq"]
    assert ce.item() == pytest.approx(-math.log(math.e / (math.e + 1 + math.exp(0.6))))


def test_objective_adds_each_weighted_term_to_the_methods_loss():
    image = _unit([1, 0], [0, 1])
    candidates = torch.stack([_unit([1, 0], [0, 1]), _unit([0.6, 0.8], [0.8, 0.6])])
    batch = NegationBatch(
        caption_image=image,
        caption_text=_unit([0.8, 0.6], [0, 1]),
        claim_image=image,
        candidates=candidates,
        mask=torch.ones(2, 2, dtype=torch.bool),
        scale=2.0,
        twin=torch.tensor([1, 1]),
        affirmative=torch.tensor([True, False]),
        retention_text=_unit([1, 0]),
        retention_frozen=_unit([0.8, 0.6]),
        retention_image=_unit([1, 0]),
        mcq_image=image[:1],
        mcq_options=candidates[:1],
        mcq_mask=torch.ones(1, 2, dtype=torch.bool),
    )
    config = LoopConfig(margin_weight=0.5, retention_weight=2.0, mcq_weight=0.25, margin=3.0)
    loss = create_loss("nast", config)
    assert isinstance(loss, NegationObjective)
    terms = loss(batch)
    base = NASTLoss(config.lam)(batch)
    margin = PairMarginTerm(3.0)(image, candidates, batch.twin, batch.affirmative, 2.0)["margin"]
    want = base["loss"] + 0.5 * margin + 2.0 * (1 - 0.8) + 0.25 * terms["mcq"]
    assert terms["loss"].item() == pytest.approx(want.item())
    assert set(terms) == {"clip", "claim", "loss", "margin", "retention", "mcq"}
    assert terms["margin"].item() == pytest.approx(margin.item())
    # off: the method's own loss module, untouched
    assert type(create_loss("nast", LoopConfig())) is NASTLoss
    with pytest.raises(DataError, match="margin_weight > 0 needs"):
        loss(NegationBatch(image, image, image, candidates, batch.mask, 2.0))


# -- the defaults train as before -----------------------------------------------------------

# Frozen from main before issue 18's changes (commit 1df67c2's main, tests/train/
# test_trainer.py's data and settings, 4 steps): the history and the weights' sum.
GOLDEN = {
    "nast": (
        [
            (2.981241464614868, 0.794059157371521, 1.8876502513885498),
            (1.8936433792114258, 0.6479107141494751, 1.2707769870758057),
            (1.4322348833084106, 0.4602493941783905, 0.9462421536445618),
            (1.2005538940429688, 1.1245238780975342, 1.1625388860702515),
        ],
        -4.765902554208878,
    ),
    "negclip": (
        [
            (3.81819486618042, 3.122584104537964, 3.4703893661499023),
            (1.9499479532241821, 3.88472318649292, 2.9173355102539062),
            (1.5797510147094727, 3.8248062133789062, 2.7022786140441895),
            (1.5170233249664307, 1.6372661590576172, 1.577144742012024),
        ],
        122.29170537478058,
    ),
}


def _run(folder, out, claims=CLAIMS, mcq=(), method="nast", evaluate=None, **kw):
    enc = load_dual_encoder(f"hf:{folder}")
    torch.manual_seed(0)
    settings = dict(
        steps=4,
        caption_batch=3,
        claim_batch=2,
        lr=1e-2,
        checkpoint_every=2,
        lora=LoraSettings(rank=2, alpha=4, dropout=0.1),
    )
    config = LoopConfig(**{**settings, **kw})
    images = torch.nn.functional.normalize(
        torch.randn(3, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    data = NegationData(CAPTIONS, list(claims), list(mcq))
    trainer = negation_trainer(
        method, enc, images, data, [0.2, 1.0, 0.5], config, out, evaluate=evaluate
    )
    for _, p in lora_parameters(trainer.model).values():
        torch.nn.init.normal_(p, std=0.05)
    return trainer


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("terms") / "clip")


@pytest.mark.parametrize("method", sorted(GOLDEN))
def test_the_default_settings_train_exactly_as_before(clip, tmp_path, method):
    trainer = _run(clip, tmp_path / method, method=method)
    history = trainer.fit()
    steps, weights = GOLDEN[method]
    got = [tuple(v for k, v in h.items() if k != "step") for h in history]
    # The values were recorded before the new settings existed, in another install of the
    # same pinned torch (other transformers/peft/numpy builds, other thread counts): float
    # summation order moves the last digits. An extra random draw or term would move the
    # losses by far more than 1e-5; NegCLIP's full fine-tuning at lr 1e-2 compounds the
    # last-digit differences into its weights (up to about 1e-3 here), hence its wider rtol.
    assert got == [pytest.approx(s, rel=1e-5) for s in steps]
    total = float(sum(p.detach().double().sum() for _, p in trainer.params.values()))
    assert total == pytest.approx(weights, rel=5e-3 if method == "negclip" else 1e-5)


# -- each setting changes a run -------------------------------------------------------------


def _fingerprint(clip, out, **kw):
    trainer = _run(clip, out, claims=CLAIMS_P, mcq=MCQ, **kw)
    history = trainer.fit()
    weights = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}
    return weights, history


def _differs(a, b):
    (wa, ha), (wb, hb) = a, b
    return ha != hb and any(not torch.equal(wa[n], wb[n]) for n in wa)


# setting -> (the run it changes, the changed value)
TERM_CHANGES = {
    "batch_polarity": ({}, True),
    "margin_weight": ({}, 1.0),
    "margin": ({"margin_weight": 1.0, "margin": 0.0}, 5.0),
    "retention_weight": ({}, 1.0),
    "retention_kind": ({"retention_weight": 1.0}, "kl"),
    "retention_batch": ({"retention_weight": 1.0, "retention_batch": 2}, 3),
    "mcq_weight": ({}, 1.0),
    "mcq_batch": ({"mcq_weight": 1.0, "mcq_batch": 2}, 3),
}


@pytest.mark.parametrize("field", sorted(TERM_CHANGES))
def test_changing_a_shortcut_setting_changes_the_run(clip, tmp_path, field):
    base, value = TERM_CHANGES[field]
    before = _fingerprint(clip, tmp_path / "a", **base)
    after = _fingerprint(clip, tmp_path / "b", **{**base, field: value})
    assert _differs(before, after), field
    assert set(after[1][0]) >= {"loss"}


def test_terms_are_logged_by_name(clip, tmp_path):
    _, history = _fingerprint(clip, tmp_path, margin_weight=1.0, retention_weight=1.0, mcq_weight=1)
    assert set(history[0]) == {"step", "clip", "claim", "margin", "retention", "mcq", "loss"}


def test_batch_polarity_fills_every_shard_half_and_half(clip):
    enc = load_dual_encoder(f"hf:{clip}")
    images = torch.zeros(3, 16)
    claims = CLAIMS_P + [CLAIMS_P[0]] * 3  # an epoch-level repeat must not skew the pools
    config = LoopConfig(claim_batch=8, caption_batch=4, shards=2, batch_polarity=True)
    task = NegationTask(enc, images, CAPTIONS, claims, NASTLoss(), config)
    generator = torch.Generator().manual_seed(0)
    seen: Counter[ClaimExample] = Counter()
    for _ in range(200):
        step = task.sample(generator)
        assert len(step.claims) == 8 and step.retention == [] and step.mcq == []
        for shard in (step.claims[:4], step.claims[4:]):
            assert [c.polarity for c in shard] == ["affirmative"] * 2 + ["negated"] * 2
            assert all(c.twin is not None for c in shard)
        seen.update(step.claims)
    # within a polarity each distinct set is drawn alike (the repeats of set 0 do not count)
    negated = [seen[c] for c in CLAIMS_P if c.polarity == "negated"]
    assert max(negated) - min(negated) < 0.25 * sum(negated) / len(negated)
    # off: the draws of before (captions, then claim sets, uniformly)
    plain = NegationTask(enc, images, CAPTIONS, claims, NASTLoss(), LoopConfig(claim_batch=8))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    caps = torch.randint(len(CAPTIONS), (32,), generator=g2).tolist()
    clm = torch.randint(len(claims), (8,), generator=g2).tolist()
    drawn = plain.sample(g1)
    assert drawn.captions == [CAPTIONS[i] for i in caps]
    assert drawn.claims == [claims[i] for i in clm]
    with pytest.raises(DataError, match="batch_polarity needs claim sets of both polarities"):
        NegationTask(enc, images, CAPTIONS, CLAIMS, NASTLoss(), LoopConfig(batch_polarity=True))


def test_retention_targets_are_the_frozen_towers(clip, tmp_path):
    trainer = _run(clip, tmp_path, claims=CLAIMS_P, retention_weight=1.0)
    task = trainer.task
    enc = load_dual_encoder(f"hf:{clip}")  # the untrained tower
    for text, frozen in task.frozen.items():
        assert torch.allclose(frozen, enc.encode_texts([text])[0], atol=1e-5)
    assert set(task.frozen) == {c.candidates[0] for c in CLAIMS_P if c.polarity == "affirmative"}


def test_mcq_term_needs_mcqs_and_a_claim_set_method(clip, tmp_path):
    with pytest.raises(DataError, match="mcq_weight > 0 needs MCQ options"):
        _run(clip, tmp_path / "a", claims=CLAIMS_P, mcq_weight=1.0)
    with pytest.raises(ConfigError, match="negbench already trains on the MCQ options"):
        _run(clip, tmp_path / "b", claims=CLAIMS_P, mcq=MCQ, method="negbench", mcq_weight=1.0)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"batch_polarity": "yes"}, "batch_polarity must be true or false, got 'yes'"),
        (
            {"batch_polarity": True, "claim_batch": 6, "caption_batch": 6, "shards": 2},
            r"batch_polarity: claim_batch \(6\) must be a multiple of 2 \* shards \(4\)",
        ),
        ({"margin_weight": -0.1}, "margin_weight must be a finite number >= 0, got -0.1"),
        ({"margin": float("inf")}, "margin must be a finite number >= 0, got inf"),
        ({"retention_weight": True}, "retention_weight must be a finite number >= 0, got True"),
        ({"mcq_weight": float("nan")}, "mcq_weight must be a finite number >= 0, got nan"),
        ({"retention_kind": "l2"}, r"retention_kind must be one of \('cosine', 'kl'\), got 'l2'"),
        ({"retention_batch": 0}, "retention_batch must be >= 1, got 0"),
        ({"mcq_batch": 0}, "mcq_batch must be >= 1, got 0"),
        (
            {"mcq_weight": 1.0, "mcq_batch": 3, "shards": 2, "caption_batch": 2, "claim_batch": 2},
            r"mcq_batch \(3\) must be a multiple of shards \(2\) when mcq_weight > 0",
        ),
        (
            {"retention_weight": 1.0, "retention_kind": "kl", "retention_batch": 1},
            "retention_batch must be >= 2, got 1",
        ),
        (
            {"keep_best": "loss"},
            r"keep_best must be one of \[.*'freeform_goal'.*\] or null, got 'loss'",
        ),
        ({"keep_best": "freeform_mean"}, r"keep_best \('freeform_mean'\) .* set eval_every > 0"),
    ],
)
def test_shortcut_settings_refuse_bad_values_naming_the_field(kw, message):
    with pytest.raises(ConfigError, match=message):
        LoopConfig(**kw)


FIELD_TESTS = {
    "mechtune.train.negation.LoopConfig": {
        f: "test_changing_a_shortcut_setting_changes_the_run" for f in TERM_CHANGES
    },
}
