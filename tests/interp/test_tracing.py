import json

import numpy as np
import pytest
import torch

from mechtune.interp.pairs import ROLES, build_trace_pairs, infer_roles, pairs_from_records
from mechtune.interp.result import TENSOR_FIELDS, TraceConfig, TraceResult, aggregate, trace
from mechtune.interp.tracing import (
    PairScores,
    TraceError,
    TracePair,
    patch_state,
    trace_scores,
    trace_scores_reference,
)
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import WorldConfig, make_world
from tests.tiny_models import tiny_clip

CLIP_PAIRS = [
    TracePair("there is no pleural effusion .", "there is small pleural effusion .", 0),
    TracePair("there is severe pulmonary edema .", "there is no pulmonary edema .", 1),
    TracePair("no pneumothorax .", "large pneumothorax .", 2),
    TracePair("negative for cardiomegaly .", "positive for cardiomegaly .", 0),
    TracePair("there is no left pleural effusion .", "there is mild left pleural effusion .", 1),
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return load_dual_encoder(f"hf:{tiny_clip(tmp_path_factory.mktemp('clip'))}")


@pytest.fixture(scope="module")
def phantom():
    return load_dual_encoder("phantom:default")


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(n_studies=40, seed=1))


def _images(encoder, images):
    with torch.no_grad():
        return encoder.encode_images(images)


def test_fast_equals_reference_on_tiny_clip(clip, world):
    # A random tiny model barely separates the texts (S_corr - S_foil ~ 1e-3), which
    # amplifies float32 rounding in the CTE ratio; compare in float64.
    images = _images(clip, world.images[:3]).double()
    clip.model.double()
    try:
        fast = trace_scores(clip, CLIP_PAIRS, images, batch_pairs=2)
        ref = trace_scores_reference(clip, CLIP_PAIRS, images)
    finally:
        clip.model.float()
    for a, b in zip(fast, ref, strict=True):
        assert a.tokens == b.tokens
        assert abs(a.s_correct - b.s_correct) < 1e-9
        assert torch.allclose(a.cte, b.cte, atol=1e-5, rtol=0)
    # The NAST-style loop (image encoder + both texts each pass) gives the same scores.
    images32 = _images(clip, world.images[:3])
    fast32 = trace_scores(clip, CLIP_PAIRS[:2], images32)
    nast = trace_scores_reference(clip, CLIP_PAIRS[:2], images32, raw_images=world.images[:3])
    for a, c in zip(fast32, nast, strict=True):
        assert torch.allclose(a.patched, c.patched, atol=1e-6)


def test_fast_equals_reference_on_minilm(phantom, world):
    images = _images(phantom, world.images[:3])
    pairs = [
        TracePair("There is small left pleural effusion.", "There is no left pleural effusion.", 0),
        TracePair("No pneumothorax.", "Large pneumothorax.", 1),
    ]
    fast = trace_scores(phantom, pairs, images)
    ref = trace_scores_reference(phantom, pairs, images)
    for a, b in zip(fast, ref, strict=True):
        assert torch.allclose(a.cte, b.cte, atol=1e-5)
        # The negator slot carries the whole effect at the embedding output.
        slot = a.tokens.index("small") if "small" in a.tokens else a.tokens.index("no")
        assert a.cte[0, slot] == pytest.approx(1.0, abs=1e-5)


def test_patch_everything_reproduces_the_foil(clip, world):
    images = _images(clip, world.images[:1])
    pair = CLIP_PAIRS[0]
    tok_c, tok_f = clip.tokenize([pair.correct]), clip.tokenize([pair.foil])
    foil_states, _ = clip.capture(tok_f)
    last = len(clip.text_layers)
    with torch.no_grad():
        handles = [
            patch_state(clip, last, p, foil_states[last][:, p])
            for p in range(tok_c["input_ids"].shape[1])
        ]
        for h in handles:
            h.__enter__()
        try:
            patched = clip.encode_tokens(tok_c)[0] @ images[0]
        finally:
            for h in reversed(handles):
                h.__exit__(None, None, None)
        foil = clip.encode_tokens(tok_f)[0] @ images[0]
    assert torch.allclose(patched, foil, atol=1e-6)
    assert not any(layer._forward_pre_hooks or layer._forward_hooks for layer in clip.text_layers)


def test_hooks_are_removed_after_an_error(clip):
    with pytest.raises(RuntimeError, match="boom"), patch_state(clip, 1, 0, torch.zeros(1, 32)):
        raise RuntimeError("boom")
    assert not any(layer._forward_pre_hooks for layer in clip.text_layers)


def test_bad_inputs(clip, world):
    images = _images(clip, world.images[:2])
    with pytest.raises(TraceError, match="token lengths differ"):
        trace_scores(clip, [TracePair("no edema .", "there is severe edema .", 0)], images)
    with pytest.raises(TraceError, match="image index 5 out of range"):
        trace_scores(clip, [TracePair("no edema .", "mild edema .", 5)], images)
    with pytest.raises(TraceError, match=r"layer 3 out of range: this text tower has layers 0..2"):
        trace_scores(clip, CLIP_PAIRS[:1], images, layers=[3])


def _scores(s_corr, s_foil, t=4, layers=3):
    patched = torch.full((layers, t), s_corr)
    patched[:, 1] = s_foil  # position 1 carries everything
    return PairScores(s_corr, s_foil, patched, ["[CLS]", "no", "x", "[SEP]"])


def test_aggregation_excludes_small_gaps_and_normalises():
    roles = ("start", "negator", "subject_first", "end")
    pairs = [TracePair("a", "b", 0, roles)] * 3
    scores = [_scores(0.5, 0.2), _scores(0.3, 0.3 + 1e-6), _scores(0.6, 0.1)]
    result = aggregate(pairs, scores, TraceConfig(min_gap_share=0.1, n_boot=50))
    # median |gap| = 0.3, floor 0.03: the 1e-6 gap is excluded and counted, not dropped
    assert result.counts["excluded_small_gap"] == 1 and result.counts["aggregated"] == 2
    assert [p["status"] for p in result.pairs] == ["kept", "excluded_small_gap", "kept"]
    assert result.pair_weight.tolist() == pytest.approx([0.3 / 0.8, 0.0, 0.5 / 0.8])
    neg = ROLES.index("negator")
    assert torch.allclose(result.cte[:, neg], torch.ones(3, dtype=torch.float64))
    assert torch.isnan(result.cte[:, ROLES.index("period")]).all()
    assert torch.isfinite(result.cte_layer).all() and torch.isfinite(result.alpha).all()
    assert float(result.alpha.min()) >= 0 and float(result.alpha.max()) <= 1


def test_all_pairs_excluded_is_a_clear_error():
    pairs = [TracePair("a", "b", 0, ("start", "negator", "subject_first", "end"))]
    with pytest.raises(ValueError, match="no pair left to aggregate: 1 pairs, 1 with a zero gap"):
        aggregate(pairs, [_scores(0.3, 0.3)], TraceConfig())


def test_pairs_without_roles_are_an_error_not_a_guess():
    pairs = [TracePair("a", "b", 0)]
    with pytest.raises(ValueError, match="token roles missing, but 4 positions were traced"):
        aggregate(pairs, [_scores(0.5, 0.2)], TraceConfig(n_boot=5))
    short = [TracePair("a", "b", 0, ("start", "end"))]
    with pytest.raises(ValueError, match="token roles for 2 tokens, but 4 positions"):
        aggregate(short, [_scores(0.5, 0.2)], TraceConfig(n_boot=5))


def test_trace_result_round_trip(tmp_path, phantom, world):
    images = _images(phantom, world.images)
    build = build_trace_pairs([(i, s) for i, s in enumerate(world.studies[:6])], phantom)
    result = trace(phantom, build.pairs, images, TraceConfig(n_boot=50), counts=build.to_dict())
    result.save(tmp_path)
    again = TraceResult.load(tmp_path)
    for name in TENSOR_FIELDS:
        torch.testing.assert_close(
            getattr(again, name), getattr(result, name), rtol=0, atol=0, equal_nan=True
        )
    assert again.pairs == result.pairs and again.counts == result.counts
    assert again.aggregation == result.aggregation and again.aggregation["pooling"] == "mean"
    assert again.cte.shape == (7, len(ROLES)) and again.top5_share.shape == (7,)
    meta = json.loads((tmp_path / "trace.json").read_text())
    assert meta["peak_layer"] == result.peak_layer()
    assert meta["per_layer"]["top5_share"] == pytest.approx(result.top5_share.tolist())
    assert meta["per_layer"]["cte_layer_median"] == pytest.approx(result.cte_layer_median.tolist())
    assert "ratio of sums" in meta["aggregation"]["cte_layer"]


def test_loading_an_old_trace_folder_names_what_is_missing(tmp_path):
    from safetensors.torch import save_file

    save_file({"cte": torch.zeros(2, 8)}, str(tmp_path / "trace.safetensors"))
    (tmp_path / "trace.json").write_text("{}")
    with pytest.raises(ValueError, match=r"missing \['alpha', .*older mechtune"):
        TraceResult.load(tmp_path)


def test_pair_builder_roles_and_rejections(clip, phantom, world):
    studies = [(i, s) for i, s in enumerate(world.studies[:10])]
    build = build_trace_pairs(studies, phantom, seed=0)
    assert build.candidates == len(build.pairs) + sum(build.rejected.values())
    for pair in build.pairs:
        assert pair.roles[0] == "start" and pair.roles[-1] == "end" and "negator" in pair.roles
        assert pair.roles[-2] == "period" and pair.roles.count("subject_first") == 1
        assert len(pair.roles) == len(phantom.token_layouts([pair.correct])[0])
        study = world.studies[pair.image]
        assert study.label(pair.condition) is (pair.orientation == "negation_in_foil")
    # The tiny CLIP vocabulary lacks some words (<unk>); offsets still place every token,
    # and nothing is lost without a count.
    tiny = build_trace_pairs(studies, clip, seed=0)
    assert tiny.candidates == len(tiny.pairs) + sum(tiny.rejected.values())
    assert tiny.pairs


def test_user_pairs_get_inferred_roles(clip):
    records = [
        {"correct": "there is no edema .", "foil": "there is mild edema .", "image": 0},
        {"correct": "no edema .", "foil": "there is mild edema .", "image": 0},
    ]
    build = pairs_from_records(records, clip, int)
    assert build.rejected["token_length_mismatch"] == 1
    assert build.pairs[0].roles == (
        "start",
        "context",
        "context",
        "negator",
        "subject_first",
        "period",
        "end",
    )
    # Identical texts: no differing span, so no negator and no positional subject; a named
    # condition still marks its own span.
    same = clip.token_layouts(["edema .", "edema ."])
    assert infer_roles(*same) == ("start", "context", "period", "end")
    assert infer_roles(*same, condition="edema") == ("start", "subject_first", "period", "end")


def test_minilm_trace_is_deterministic(phantom, world):
    images = _images(phantom, world.images)
    build = build_trace_pairs([(i, s) for i, s in enumerate(world.studies[:3])], phantom, seed=4)
    a = trace(phantom, build.pairs, images, TraceConfig(n_boot=20))
    b = trace(phantom, build.pairs, images, TraceConfig(n_boot=20))
    assert np.array_equal(a.cte_layer.numpy(), b.cte_layer.numpy())
