"""Early stopping by evaluation (``LoopConfig.keep_best``): the criterion picks the step
by hand-checked rules, the run ends with that step's weights (saved as the adapter), the
kept step is recorded, and a killed and resumed run keeps the same step."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from mechtune.errors import ConfigError, DataError
from mechtune.train.selection import KEEP_BEST, best_evaluation
from tests.train.test_negation_terms import _run

EVALS = [
    {"step": 0, "claim_accuracy": 0.5, "freeform_affirmative": 0.56, "freeform_negated": 0.55},
    {"step": 2, "claim_accuracy": 0.7, "freeform_affirmative": 0.545, "freeform_negated": 0.70},
    {"step": 4, "claim_accuracy": 0.8, "freeform_affirmative": 0.552, "freeform_negated": 0.65},
    {"step": 6, "claim_accuracy": 0.8, "freeform_affirmative": 0.60, "freeform_negated": 0.54},
    {"step": 8, "claim_accuracy": 0.6, "freeform_affirmative": 0.58, "freeform_negated": 0.56},
]


@pytest.mark.parametrize(
    ("criterion", "step"),
    [
        ("claim_accuracy", 4),  # 0.8 at steps 4 and 6: the earlier
        ("freeform_mean", 2),  # (0.545 + 0.70) / 2 = 0.6225 is the highest mean
        ("freeform_affirmative", 8),  # step 6 has 0.60 but its negated 0.54 < 0.55 at step 0
        ("freeform_goal", 4),  # step 2's affirmative 0.545 is > 1 pp below 0.56: out
    ],
)
def test_criteria_pick_the_step_by_hand(criterion, step):
    assert set(KEEP_BEST) == {
        "claim_accuracy",
        "freeform_mean",
        "freeform_affirmative",
        "freeform_goal",
    }
    assert best_evaluation(EVALS, criterion)["step"] == step


def test_criteria_edge_cases():
    nan = [EVALS[0], {**EVALS[1], "claim_accuracy": math.nan}]
    assert best_evaluation(nan, "claim_accuracy")["step"] == 0  # NaN never wins
    worse = [EVALS[0], {**EVALS[1], "freeform_negated": 0.1}]
    assert best_evaluation(worse, "freeform_affirmative")["step"] == 0  # only step 0 eligible
    with pytest.raises(ConfigError, match="keep_best must be one of"):
        best_evaluation(EVALS, "loss")
    with pytest.raises(DataError, match=r"reads \['freeform_affirmative', 'freeform_negated'\]"):
        best_evaluation([{"step": 0, "claim_accuracy": 0.5}], "freeform_mean")
    with pytest.raises(DataError, match="no evaluation of the untrained model"):
        best_evaluation(EVALS[1:], "freeform_goal")


def _scripted(table):
    """An evaluate that returns ``table[step]`` of the trainer it is attached to."""
    holder = {}

    def evaluate():
        return table[holder["trainer"].step]

    return holder, evaluate


TABLE = {r["step"]: {k: v for k, v in r.items() if k != "step"} for r in EVALS[:4]}


def _keeping(clip, out, criterion, **kw):
    holder, evaluate = _scripted(TABLE)
    trainer = _run(clip, out, steps=6, eval_every=2, keep_best=criterion, evaluate=evaluate, **kw)
    holder["trainer"] = trainer
    return trainer


def _params(trainer):
    return {n: p.detach().clone() for n, (_, p) in trainer.params.items()}


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    from tests.tiny_models import tiny_clip

    return tiny_clip(tmp_path_factory.mktemp("selection") / "clip")


def test_the_run_ends_with_the_kept_steps_weights(clip, tmp_path):
    straight = _run(clip, tmp_path / "two", steps=2)  # the same first two steps
    straight.fit()
    trainer = _keeping(clip, tmp_path / "kept", "freeform_mean")  # picks step 2
    trainer.fit()
    kept, want = _params(trainer), _params(straight)
    assert all(torch.equal(kept[n], want[n]) for n in want)
    assert [e["step"] for e in trainer.evals] == [0, 2, 4, 6]
    trainer.save_result("nast")
    info = json.loads((tmp_path / "kept" / "train.json").read_text())
    assert info["kept"]["step"] == 2 and info["kept"]["criterion"] == "freeform_mean"
    assert info["kept"]["metrics"] == TABLE[2]
    assert info["step"] == 6  # trained to the end; the kept step's weights are saved
    saved = load_file(str(tmp_path / "kept" / "adapter" / "adapter_model.safetensors"))
    by_suffix = {n.split("text_model.")[-1]: w for n, w in saved.items()}
    for name, weight in kept.items():
        key = name.split("text_model.")[-1].replace(".default", "")
        assert torch.equal(by_suffix[key], weight), name
    # the last checkpoint holds the last step's weights, for a longer resumed run
    last = load_file(str(trainer.checkpoints()[-1] / "adapter.safetensors"))
    assert any(not torch.equal(last[n], kept[n]) for n in kept)


def test_step_zero_can_be_kept_and_criteria_differ(clip, tmp_path):
    trainer = _keeping(clip, tmp_path / "zero", "freeform_affirmative")  # step 0's 0.56 wins
    initial = None

    original = trainer.run_evaluation

    def first_evaluation():
        nonlocal initial
        if initial is None:
            initial = _params(trainer)
        return original()

    trainer.run_evaluation = first_evaluation
    trainer.fit()
    assert all(torch.equal(p, initial[n]) for n, p in _params(trainer).items())
    other = _keeping(clip, tmp_path / "four", "claim_accuracy")  # 0.8 at steps 4 and 6: 4
    other.fit()
    assert any(
        not torch.equal(a, b)
        for a, b in zip(_params(other).values(), initial.values(), strict=True)
    )


def test_a_killed_and_resumed_run_keeps_the_same_step(clip, tmp_path):
    straight = _keeping(clip, tmp_path / "a", "claim_accuracy")
    straight.fit()
    first = _keeping(clip, tmp_path / "b", "claim_accuracy")
    first.fit(stop_after=5)  # checkpoints at 2 and 4 (best so far: step 4), killed at 5
    resumed = _keeping(clip, tmp_path / "b", "claim_accuracy")
    resumed.fit(resume=True)
    assert resumed.keeper.step == 4
    a, b = _params(straight), _params(resumed)
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_keep_best_needs_evaluations(clip, tmp_path):
    with pytest.raises(ConfigError, match=r"keep_best \('claim_accuracy'\) .* eval_every > 0"):
        _run(clip, tmp_path, keep_best="claim_accuracy")


FIELD_TESTS = {
    "mechtune.train.negation.LoopConfig": {
        "keep_best": "test_step_zero_can_be_kept_and_criteria_differ",
    },
}
