"""SAE analysis on a toy yes/no model whose every step can be recomputed by hand."""

from dataclasses import fields, replace

import numpy as np
import pytest
import torch
from torch import nn

from mechtune.data.schema import ImageQuestion, ParaphraseSet
from mechtune.errors import ConfigError
from mechtune.interp.sae import SAE, SAEConfig
from mechtune.interp.sae_analysis import (
    AnalysisConfig,
    analyse,
    attribute_features,
    cross_validated_scores,
    feature_edit,
    layer_window,
    margins,
    paraphrase_pairs,
    readout_features,
    roc_auc,
    token_states,
)
from mechtune.models.yes_no import YesNoVLM, capture_block_outputs
from tests.interp.toy_vlm import D, ToyVLM
from tests.progress_helpers import Recorder


def random_sae(seed: int = 0, d_sae: int = 16) -> SAE:
    torch.manual_seed(seed)
    sae = SAE(SAEConfig(d_in=D, d_sae=d_sae, kind="topk", k=4))
    with torch.no_grad():
        sae.w_enc.normal_()
        sae.w_dec.copy_(nn.functional.normalize(torch.randn(d_sae, D), dim=-1))
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


@pytest.fixture(scope="module")
def toy() -> ToyVLM:
    model = ToyVLM().eval()
    assert isinstance(model, YesNoVLM)
    return model


def sets() -> list[ImageQuestion]:
    qs = [
        ("is there effusion", ("any effusion seen", "effusion present", "can you spot effusion")),
        ("is there edema", ("edema present", "any edema visible", "fluid in lungs")),
        ("is there a mass", ("mass present", "any lump visible", "a nodule")),
        ("is there a fracture", ("broken rib", "fracture present", "any fracture seen")),
    ]
    out = []
    for i in range(12):
        q, ps = qs[i % 4]
        out.append(
            ImageQuestion(
                ParaphraseSet(
                    question_id=f"q{i}",
                    study_id=f"s{i}",
                    patient_id=f"p{i}",
                    condition=None,
                    question=q,
                    paraphrases=ps,
                    strategies=("lexical",) * len(ps),
                    families=(),
                    answer=bool(i % 2),
                ),
                i,
            )
        )
    return out


def images() -> torch.Tensor:
    return torch.randn(12, D, generator=torch.Generator().manual_seed(1))


def test_roc_auc_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 5, 40).astype(float)  # many ties
    labels = rng.random(40) < 0.4
    pos, neg = scores[labels], scores[~labels]
    brute = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(scores, labels) == pytest.approx(brute)
    assert np.isnan(roc_auc(scores, np.zeros(40, dtype=bool)))


def test_layer_window_keeps_its_width() -> None:
    assert layer_window(17, 2, 34) == [15, 16, 17, 18, 19]
    assert layer_window(5, 1, 6) == [3, 4, 5]
    assert layer_window(0, 1, 6) == [0, 1, 2]
    assert layer_window(1, 5, 3) == [0, 1, 2]


def test_cross_validated_scores_separate_separable_data() -> None:
    rng = np.random.default_rng(0)
    y = rng.random(200) < 0.3
    x = torch.from_numpy(rng.normal(size=(200, 5)) + 3.0 * y[:, None]).float()
    groups = np.arange(200) // 4
    assert roc_auc(cross_validated_scores(x, y, groups), y) > 0.95
    noise = torch.from_numpy(rng.normal(size=(200, 5))).float()
    assert abs(roc_auc(cross_validated_scores(noise, y, groups), y) - 0.5) < 0.2


def test_attribute_features_ranks_the_correlated_feature_first() -> None:
    rng = np.random.default_rng(0)
    delta = rng.normal(size=(100, 6))
    shift = 2.0 * delta[:, 4] + 0.1 * rng.normal(size=100)
    top = attribute_features(delta, shift, np.abs(delta), AnalysisConfig(top_features=3))
    assert top[0]["feature"] == 4 and top[0]["correlation"] > 0.95
    assert len(top) == 3


def test_readout_features_and_token_states_follow_the_mask(toy) -> None:
    sae = random_sae()
    qs = ["is there effusion", "effusion present"]
    imgs = images()[:2]
    feats = readout_features(toy, imgs, [0, 1], qs, {1: sae})[1]
    states = token_states(toy, imgs, [0, 1], qs, [1])[1]
    assert states.shape == (3 + 2, D)  # 3 + 2 real tokens
    with torch.no_grad():
        x, mask = toy.states(imgs, qs, upto=2)  # block 1's output
        f = sae.encode(x)
        want = torch.stack([f[i][mask[i]].mean(0) for i in range(2)])
    torch.testing.assert_close(feats, want)


class Recording(SAE):
    """An SAE that records the shape of every input it encodes."""

    def __init__(self, sae: SAE) -> None:
        super().__init__(sae.config)
        self.load_state_dict(sae.state_dict())
        self.shapes: list[tuple[int, ...]] = []

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        self.shapes.append(tuple(x.shape))
        return super().encode(x)


def test_only_readout_positions_are_encoded(toy) -> None:
    """Features of the readout positions alone, one row per text: the SAE never sees
    ``[B, T, d]`` states (a decoder reads 1 of hundreds of positions)."""
    sae = Recording(random_sae())
    qs = ["is there effusion", "effusion present", "any lump visible here"]
    imgs = images()[:3]
    feats = readout_features(toy, imgs, [0, 1, 2], qs, {1: sae}, batch=2)[1]
    assert sae.shapes == [(3 + 2, D), (4, D)]  # readout tokens of each batch, as rows
    x, mask = toy.states(imgs, qs, upto=2)
    want = torch.stack([sae.encode(x[i][mask[i]]).mean(0) for i in range(3)])
    torch.testing.assert_close(feats, want.detach())
    sae.shapes.clear()
    mask = toy.readout_positions(imgs, qs)
    mask[:, 1:] = False  # one position per text, as a decoder's last token
    with torch.no_grad(), feature_edit(toy, sae, 1, 3, None, mask):
        toy.margin(imgs, qs)
    assert sae.shapes == [(3, D)]


def test_feature_patch_equals_manual_edit(toy) -> None:
    sae = random_sae()
    qs = ["any effusion seen", "a nodule"]
    imgs = images()[:2]
    k, layer = 3, 1
    mask = toy.readout_positions(imgs, qs)
    with torch.no_grad(), feature_edit(toy, sae, layer, k, None, mask):
        patched = toy.margin(imgs, qs)
    with torch.no_grad():
        x, m = toy.states(imgs, qs, upto=layer + 1)
        x = x - (sae.encode(x)[..., k] * m).unsqueeze(-1) * sae.w_dec[k]
        for block in toy.blocks[layer + 1 :]:
            x = block(x)
        manual = toy.head(x, m)
        clamped_value = 0.7
    torch.testing.assert_close(patched, manual)
    with torch.no_grad(), feature_edit(toy, sae, layer, k, clamped_value):
        with capture_block_outputs(toy, [layer]) as st:
            toy.margin(imgs, qs)
        captured = st[layer]
    before = toy.states(imgs, qs, upto=layer + 1)[0].detach()
    f_before = sae.encode(before)[..., k]
    expect = before + (clamped_value - f_before).unsqueeze(-1) * sae.w_dec[k]
    torch.testing.assert_close(captured, expect.detach())
    # hooks are gone afterwards
    with torch.no_grad():
        torch.testing.assert_close(toy.margin(imgs, qs), toy.margin(imgs, qs))
    assert not toy.blocks[layer]._forward_hooks


def test_analyse_end_to_end(toy) -> None:
    data = sets()
    pairs = paraphrase_pairs(data)
    assert len(pairs) == sum(len(q.record.paraphrases) for q in data)
    saes = {i: random_sae(i) for i in range(3)}
    track = Recorder()
    result = analyse(toy, images(), pairs, saes, AnalysisConfig(folds=3, bootstrap=50), track=track)
    assert set(result.auc_by_layer) == {0, 1, 2}
    # the texts read: margins and features of each original and paraphrase, then the
    # flip pairs' paraphrases once per patched feature
    track.check_complete()
    read, patched = track.stages
    assert (read.description, read.total) == ("SAE analysis: margins and features", 4 * len(pairs))
    assert patched.description == f"SAE analysis: patch features at layer {result.peak_layer}"
    assert patched.total == len(result.patches) * result.flip_pairs
    assert result.chosen_layers == layer_window(result.peak_layer, 1, 3)
    m_orig = margins(toy, images(), pairs.rows, pairs.originals)
    m_para = margins(toy, images(), pairs.rows, pairs.paraphrases)
    assert result.flip_pairs == int(((m_orig > 0) != (m_para > 0)).sum())
    assert result.flip_pairs and result.top_features  # the toy has flips to patch
    assert result.patch["flip_pairs"] == result.flip_pairs
    # every patched feature is an attributed one; the reported patch recovers most
    tried = [p["feature"] for p in result.patches]
    assert tried == [f["feature"] for f in result.top_features[:5]]
    best = max(p["recovered_mean"] for p in result.patches)
    assert result.patch["recovered_mean"] == best
    # the clamp value is the chosen feature's mean on the originals
    f_orig = readout_features(toy, images(), pairs.rows, pairs.originals, saes)
    expected = float(f_orig[result.peak_layer][:, result.patch["feature"]].mean())
    assert result.clamp_value == pytest.approx(expected, abs=1e-6)
    d = result.to_dict()
    assert set(d["auc_by_layer"]) == {"0", "1", "2"}


# -- every AnalysisConfig field changes the analysis -----------------------------------------

ANALYSIS_BASE = AnalysisConfig(folds=3, bootstrap=40)
ANALYSIS_SWEEP = {
    "folds": 4,
    "l2": 10.0,
    "top_features": 2,
    "min_active_share": 0.9,
    "half_width": 0,
    "patch_features": 1,
    "bootstrap": 25,
    "shuffles": 3,
    "seed": 1,
    "min_gap_share": 0.9,
}


@pytest.fixture(scope="module")
def analysis_inputs(toy):
    pairs = paraphrase_pairs(sets())
    return pairs, {i: random_sae(i) for i in range(3)}


@pytest.fixture(scope="module")
def base_analysis(toy, analysis_inputs):
    pairs, saes = analysis_inputs
    return analyse(toy, images(), pairs, saes, ANALYSIS_BASE).to_dict()


def test_the_analysis_sweep_covers_every_field() -> None:
    assert set(ANALYSIS_SWEEP) == {f.name for f in fields(AnalysisConfig)}


@pytest.mark.parametrize("name", sorted(ANALYSIS_SWEEP))
def test_every_analysis_config_field_changes_the_analysis(
    toy, analysis_inputs, base_analysis, name
) -> None:
    pairs, saes = analysis_inputs
    config = replace(ANALYSIS_BASE, **{name: ANALYSIS_SWEEP[name]})
    assert analyse(toy, images(), pairs, saes, config).to_dict() != base_analysis


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"folds": 1}, "folds must be an int >= 2, got 1"),
        ({"top_features": 0}, "top_features must be an int >= 1"),
        ({"half_width": -1}, "half_width must be an int >= 0"),
        ({"patch_features": 0}, "patch_features must be an int >= 1"),
        ({"bootstrap": 0}, "bootstrap must be an int >= 1"),
        ({"shuffles": -1}, "shuffles must be an int >= 0, got -1"),
        ({"seed": 1.5}, "seed must be an int >= 0"),
        ({"l2": -1.0}, "l2 must be a finite number >= 0"),
        ({"min_active_share": 1.5}, r"min_active_share must be in \[0, 1\]"),
        ({"min_gap_share": 2.0}, r"min_gap_share must be in \[0, 1\]"),
    ],
)
def test_analysis_config_rejects_bad_values(change, message) -> None:
    with pytest.raises(ConfigError, match=message):
        AnalysisConfig(**change)


FIELD_TESTS = {
    "mechtune.interp.sae_analysis.AnalysisConfig": {
        name: "test_every_analysis_config_field_changes_the_analysis" for name in ANALYSIS_SWEEP
    }
}
