"""The negation study's controls (issue 17): random-alpha permutes the traced alpha
across blocks, effective-lr trains uniform LoRA at NAST's mean per-block rate, the alpha
source and normalisation reach training, and a small phantom study runs them all and
reports NAST minus each control on the same items."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import pytest
import torch

from mechtune.data.sources import open_source
from mechtune.errors import ConfigError, DataError
from mechtune.interp.alpha import alpha_from_trace
from mechtune.interp.result import TraceResult
from mechtune.models.spec import load_dual_encoder
from mechtune.pipelines.negation import RunOptions
from mechtune.pipelines.negation_config import NegationStudyConfig
from mechtune.pipelines.negation_controls import (
    StudyRun,
    alpha_permutations,
    control_comparisons,
    control_table,
    run_plan,
)
from mechtune.pipelines.negation_study import run_negation_study, study_alpha
from mechtune.train.methods import METHODS, NegationData, negation_trainer, reads_alpha
from mechtune.train.negation import LoopConfig
from mechtune.train.scaling import effective_lr
from tests.interp.test_alpha import TRACE
from tests.pipelines.test_negation_report import NAST, UNIFORM, _report
from tests.tiny_models import tiny_clip
from tests.train.test_trainer import CAPTIONS, CLAIMS

ALPHA = torch.tensor([0.3, 0.0, 0.2, 1.0, 0.7, 0.5], dtype=torch.float64)


def test_random_alpha_permutes_the_blocks_and_keeps_their_values():
    perms = alpha_permutations(ALPHA, 5, seed=0)
    assert len(perms) == 5
    for p in perms:
        assert p[0] == ALPHA[0]  # the embedding output's entry, read by no block, stays
        assert Counter(p[1:].tolist()) == Counter(ALPHA[1:].tolist())  # the same multiset
        assert not torch.equal(p, ALPHA)  # really permuted
    assert len({tuple(p.tolist()) for p in perms}) == 5  # distinct permutations
    # deterministic, and the first j of k are those of any larger k
    again = alpha_permutations(ALPHA, 2, seed=0)
    assert all(torch.equal(a, b) for a, b in zip(again, perms[:2], strict=True))
    other = alpha_permutations(ALPHA, 5, seed=1)
    assert any(not torch.equal(a, b) for a, b in zip(other, perms, strict=True))


def test_random_alpha_with_few_or_equal_blocks():
    # two blocks: the swap is the only permutation that changes anything, so repeats
    two = alpha_permutations(torch.tensor([0.5, 0.0, 1.0]), 3, seed=0)
    assert [p.tolist() for p in two] == [[0.5, 1.0, 0.0]] * 3
    # tied values: a permutation that only swaps equal values is not a permutation of alpha
    tied = torch.tensor([0.1, 1.0, 1.0, 0.0])
    assert all(not torch.equal(p, tied) for p in alpha_permutations(tied, 4, seed=3))
    # every block alike: nothing to permute, every copy is alpha
    flat = torch.tensor([0.0, 1.0, 1.0, 1.0])
    assert all(torch.equal(p, flat.double()) for p in alpha_permutations(flat, 2, seed=0))
    with pytest.raises(ConfigError, match="random_alpha_permutations must be >= 1, got 0"):
        alpha_permutations(ALPHA, 0, seed=0)
    with pytest.raises(DataError, match="no blocks to permute"):
        alpha_permutations(torch.tensor([1.0]), 1, seed=0)


def test_random_alpha_permutations_make_the_run_plan():
    recipe = NegationStudyConfig(
        methods=("zero-shot", "nast", "random-alpha"), seeds=(1, 2), random_alpha_permutations=2
    )
    assert run_plan(recipe) == [
        StudyRun("zero-shot", 1),
        StudyRun("nast", 1),
        StudyRun("nast", 2),
        StudyRun("random-alpha", 1, 0),
        StudyRun("random-alpha", 1, 1),
        StudyRun("random-alpha", 2, 0),
        StudyRun("random-alpha", 2, 1),
    ]
    assert [r.name for r in run_plan(replace(recipe, random_alpha_permutations=1))][-2:] == [
        "seed1-p0",
        "seed2-p0",
    ]
    with pytest.raises(ConfigError, match="random_alpha_permutations must be >= 1"):
        replace(recipe, random_alpha_permutations=0)


def test_effective_lr_is_the_mean_block_rate_by_hand(tmp_path):
    # blocks' alpha 0, 0.5, 1 with beta 2: rates lr * (0, 0.25, 1), mean lr * 1.25 / 3
    alpha = [0.9, 0.0, 0.5, 1.0]
    assert effective_lr(alpha, 2.0, 1e-3) == pytest.approx(1e-3 * 1.25 / 3)
    assert effective_lr(alpha, 0.0, 1e-3) == pytest.approx(1e-3)  # 0 ** 0 = 1: uniform
    # the trainer of effective-lr: one rate, that mean, every block's factor 1
    folder = tiny_clip(tmp_path / "clip")  # 2 text blocks: alpha has 3 entries
    images = torch.nn.functional.normalize(torch.randn(3, 16), dim=-1)
    data = NegationData(CAPTIONS, CLAIMS)
    config = LoopConfig(steps=1, caption_batch=2, claim_batch=2, lr=1e-3, beta=2.0, scaling="lr")
    alpha = [0.9, 0.5, 1.0]
    trainer = negation_trainer(
        "effective-lr", load_dual_encoder(f"hf:{folder}"), images, data, alpha, config, tmp_path
    )
    rates = [g["lr"] for g in trainer.optim.param_groups]
    assert rates == pytest.approx([1e-3 * (0.25 + 1.0) / 2] * 2)
    assert trainer.settings.beta == 0.0 and torch.equal(trainer.scales, torch.ones(2))
    nast = negation_trainer(
        "nast", load_dual_encoder(f"hf:{folder}"), images, data, alpha, config, tmp_path / "n"
    )
    assert [g["lr"] for g in nast.optim.param_groups] == pytest.approx([2.5e-4, 1e-3])
    assert reads_alpha("effective-lr", 2.0) and not reads_alpha("effective-lr", 0.0)
    assert reads_alpha("random-alpha", 1.0) and not reads_alpha("uniform-lora", 1.0)
    assert METHODS["random-alpha"].loss == METHODS["nast"].loss == "nast"


def test_alpha_source_norm_and_tau_decide_the_studys_alpha():
    base = NegationStudyConfig()
    assert study_alpha(TRACE, base).tolist() == alpha_from_trace(TRACE).tolist()
    negator = study_alpha(TRACE, replace(base, alpha_source="negator"))
    assert (
        negator.tolist()
        == alpha_from_trace(TRACE, "negator").tolist()
        != (study_alpha(TRACE, base).tolist())
    )
    ranked = study_alpha(TRACE, replace(base, alpha_norm="rank"))
    assert ranked.tolist() == alpha_from_trace(TRACE, "mean", "rank").tolist()
    soft = replace(base, alpha_norm="softmax", alpha_tau=0.1)
    assert (
        study_alpha(TRACE, soft).tolist()
        == alpha_from_trace(TRACE, "mean", "softmax", 0.1).tolist()
    )
    sharper = study_alpha(TRACE, replace(soft, alpha_tau=0.01))
    assert float(sharper.max()) > float(study_alpha(TRACE, soft).max())
    for change, message in (
        ({"alpha_source": "median"}, "alpha_source must be one of"),
        ({"alpha_norm": "zscore"}, "alpha_norm must be one of"),
        ({"alpha_tau": 0.0}, "alpha_tau must be a finite number > 0"),
    ):
        with pytest.raises(ConfigError, match=message):
            replace(base, **change)


def test_nast_minus_each_control_on_the_same_items():
    permuted = [{**r, "permutation": j} for j, r in enumerate((NAST[1], UNIFORM[0]))]
    results = {
        "runs": {
            "uniform-lora": list(UNIFORM),
            "nast": list(NAST),
            "random-alpha": permuted,
            "effective-lr": [UNIFORM[1]],
        }
    }
    paired = control_comparisons(results)
    assert set(paired) == {"random-alpha", "effective-lr"}
    claim = paired["random-alpha"]["claim acc"]
    # held-out sets: NAST averages [.5, 1, 1, 0]; random-alpha's two runs [.5, 1, .5, .5]
    assert claim.value == pytest.approx((0 + 0 + 0.5 - 0.5) / 4)
    assert (claim.seeds_a, claim.seeds_b) == (2, 2)
    table = control_table(results)
    assert (
        "| nast − random-alpha | 2 vs 2 |" in table and "| nast − effective-lr | 2 vs 1 |" in table
    )
    assert claim.pp() in table
    assert control_comparisons({"runs": {"nast": list(NAST)}}) == {}
    assert control_table({"runs": {"random-alpha": permuted}}) == ""
    no_items = {k: v for k, v in _report([1] * 6, [1] * 3, [1] * 3).items() if k != "items"}
    assert control_comparisons({"runs": {"nast": list(NAST), "effective-lr": [no_items]}}) == {}


@pytest.fixture(scope="module")
def world_and_model(tmp_path_factory):
    """A small saved phantom world and a tiny random CLIP of 4 text blocks."""
    from mechtune.sim.world import WorldConfig, make_world, save_world

    root = tmp_path_factory.mktemp("controls")
    save_world(make_world(WorldConfig.seeded(60, 0)), root / "world")
    return root / "world", f"hf:{tiny_clip(root / 'clip', text_layers=4)}"


def test_a_study_trains_both_controls_with_the_chosen_alpha(tmp_path, world_and_model, monkeypatch):
    """random-alpha trains its permutations of the study's alpha (rank-normalised here),
    effective-lr its mean rate; both rows and NAST minus each reach the tables."""
    world_dir, model = world_and_model
    config = NegationStudyConfig(
        model=model,
        methods=("uniform-lora", "nast", "random-alpha", "effective-lr"),
        seeds=(0,),
        trace_max_pairs=20,
        eval_split="val",
        alpha_norm="rank",
        random_alpha_permutations=2,
        loop=LoopConfig(
            steps=2, caption_batch=4, claim_batch=4, checkpoint_every=2, lr=1e-3, scaling="lr"
        ),
    )
    results = run_negation_study(config, open_source(world_dir), tmp_path, RunOptions())
    traced = TraceResult.load(tmp_path / "trace")
    alpha = alpha_from_trace(traced, "mean", "rank")
    assert not torch.equal(alpha, traced.alpha)  # rank, not the trace's min-max

    def identity(folder):
        return json.loads((tmp_path / "runs" / folder / "run.json").read_text())["alpha"]

    def rounded(values):
        return [round(float(v), 6) for v in values]

    assert results["trace"]["alpha"] == alpha.tolist()
    assert (results["trace"]["alpha_source"], results["trace"]["alpha_norm"]) == ("mean", "rank")
    assert results["trace"]["variants"]["alpha"]["mean"]["rank"] == alpha.tolist()
    assert results["trace"]["cte_layer_low"] == traced.cte_layer_low.tolist()
    assert identity("nast/seed0") == rounded(alpha)
    # random-alpha: two permutations of the blocks' alpha, one run each, recorded
    permutations = results["controls"]["random-alpha"]["alpha"]
    assert permutations == [p.tolist() for p in alpha_permutations(alpha, 2, config.data_seed)]
    reports = results["runs"]["random-alpha"]
    assert [(r["seed"], r["permutation"]) for r in reports] == [(0, 0), (0, 1)]
    for j, permuted in enumerate(permutations):
        assert identity(f"random-alpha/seed0-p{j}") == rounded(permuted)
        assert sorted(permuted[1:]) == sorted(alpha[1:].tolist()) and permuted != alpha.tolist()
    assert permutations[0] != permutations[1]
    # effective-lr: uniform LoRA at the mean of lr * alpha ** beta over the blocks
    trained = json.loads((tmp_path / "runs/effective-lr/seed0/train.json").read_text())
    rate = effective_lr(alpha, 1.0, 1e-3)
    assert (
        trained["config"]["lr"] == pytest.approx(rate) == results["controls"]["effective-lr"]["lr"]
    )
    assert trained["config"]["beta"] == 0.0 and rate < 1e-3
    # the tables: the rows, the paired differences against uniform LoRA and NAST's controls
    assert set(results["paired"]) == {"nast", "random-alpha", "effective-lr"}
    assert results["paired"]["random-alpha"]["claim acc"]["seeds_a"] == 2
    assert results["paired_controls"]["random-alpha"]["claim acc"]["seeds_b"] == 2
    table = (tmp_path / "table.md").read_text()
    assert "| random-alpha | 1 × 2 α |" in table and "| effective-lr | 1 |" in table
    assert "| nast − random-alpha | 1 vs 2 |" in table
    # the update-share figure ranks the blocks by the study's alpha_source, as the table did
    from mechtune.cli import negation as negation_cli
    from mechtune.eval import figures
    from mechtune.interp.alpha import cte_profile

    drawn, bars = [], []
    monkeypatch.setattr(
        figures, "update_share_chart", lambda norms, cte, path, label: drawn.append((cte, label))
    )
    monkeypatch.setattr(figures, "alpha_bars", lambda *args: bars.append(args))
    # the alpha bars show the study's alpha (rank-normalised here), not the trace's min-max
    negation_cli.study_figures(results, tmp_path)
    assert bars[-1][3].tolist() == alpha.tolist() != traced.alpha.tolist()
    assert bars[-1][5] == "alpha_l = rank of the mean CTE"
    for source in ("mean", "negator", "max"):
        results["trace"]["alpha_source"] = source
        negation_cli.study_figures(results, tmp_path)
        want = cte_profile(traced.cte_layer, traced.cte, traced.roles, source)[1:].tolist()
        assert drawn[-1] == (want, f"CTE at block output ({source} over roles)")
    assert len({tuple(cte) for cte, _ in drawn[-3:]}) > 1  # the sources' profiles differ


FIELDS = {
    "alpha_source": "test_alpha_source_norm_and_tau_decide_the_studys_alpha",
    "alpha_norm": "test_a_study_trains_both_controls_with_the_chosen_alpha",
    "alpha_tau": "test_alpha_source_norm_and_tau_decide_the_studys_alpha",
    "random_alpha_permutations": "test_random_alpha_permutations_make_the_run_plan",
}
FIELD_TESTS = {"mechtune.pipelines.negation_config.NegationStudyConfig": FIELDS}
