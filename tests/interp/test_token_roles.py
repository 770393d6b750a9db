"""Token roles, real lengths and pooled positions on one tokenizer of each family.

- CLIP byte-level BPE with ``</w>`` word ends (the period is ``.</w>``), in a CLIPModel;
- BERT WordPiece padded to a fixed length (open_clip's BiomedCLIP tokenizer call), in an
  open_clip-shaped BERT tower;
- SentencePiece-style byte-fallback BPE (Gemma's, left padding), in a CLIPModel.
"""

import pytest
import torch

from mechtune.errors import DataError, UnsupportedModelError
from mechtune.interp.pairs import (
    ROLES,
    build_trace_pairs,
    infer_roles,
    pairs_from_records,
    roles_from_spans,
)
from mechtune.interp.result import TraceConfig, trace
from mechtune.interp.tracing import TracePair, trace_scores, trace_scores_reference
from mechtune.models.dual_encoder import TokenLayout
from mechtune.models.spec import load_dual_encoder
from mechtune.sim.world import WorldConfig, make_world
from tests.tiny_models import (
    HFTokenizerStandIn,
    clip_bpe_tokenizer,
    clip_with_tokenizer,
    gemma_tokenizer,
    tiny_openclip,
    wordpiece_tokenizer,
)

CORRECT, FOIL = "There is no pleural effusion.", "There is a pleural effusion."
# Length-matched under every family here (Gemma's tiny vocabulary spells most words out).
PAIRS = [
    TracePair(CORRECT, FOIL, 0),
    TracePair("No edema.", "a edema.", 1),
    TracePair("There is no pneumothorax.", "There is a pneumothorax.", 0),
]


@pytest.fixture(scope="module")
def encoders():
    return {
        "clip_bpe": clip_with_tokenizer(clip_bpe_tokenizer()),
        "wordpiece_fixed": tiny_openclip("cls", context_length=48),
        "gemma_bpe": clip_with_tokenizer(gemma_tokenizer()),
    }


@pytest.fixture(scope="module")
def world():
    return make_world(WorldConfig(n_studies=12, seed=3))


CLIP_TOKENS = ["there</w>", "is</w>", "no</w>", "pleural</w>", "effusion</w>", ".</w>"]
BERT_TOKENS = ["there", "is", "no", "pl", "##eur", "##al", "e", "##ff", "##usion", "."]
GEMMA_TOKENS = ["T", "h", "e", "r", "e", "▁is", "▁no", "▁pleural", "▁effusion", "."]
SUBJECT = ["negator", "subject_first", "subject_rest"]
EXPECTED = {
    "clip_bpe": (
        ["<|startoftext|>", *CLIP_TOKENS, "<|endoftext|>"],
        ["start", "context", "context", *SUBJECT, "period", "end"],
    ),
    "wordpiece_fixed": (
        ["[CLS]", *BERT_TOKENS, "[SEP]"],
        ["start", "context", "context", *SUBJECT, *["subject_rest"] * 4, "period", "end"],
    ),
    "gemma_bpe": (
        ["<bos>", *GEMMA_TOKENS, "<eos>"],
        ["start", *["context"] * 6, *SUBJECT, "period", "end"],
    ),
}


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_user_pair_roles_come_from_offsets(encoders, family):
    enc = encoders[family]
    tokens, roles = EXPECTED[family]
    build = pairs_from_records([{"correct": CORRECT, "foil": FOIL, "image": 0}], enc, int)
    (layout,) = enc.token_layouts([CORRECT])
    assert enc.token_strings(list(layout.ids)) == tokens
    assert list(build.pairs[0].roles) == roles


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_real_lengths_decide_length_matching(encoders, family):
    enc = encoders[family]
    records = [
        {"correct": CORRECT, "foil": "There is a large left pleural effusion.", "image": 0},
        {"correct": CORRECT, "foil": FOIL, "image": 0},
    ]
    build = pairs_from_records(records, enc, int)
    assert build.to_dict() == {"candidates": 2, "kept": 1, "rejected": {"token_length_mismatch": 1}}
    layouts = enc.token_layouts([CORRECT, "No edema."])
    assert [len(x) for x in layouts] == [len(EXPECTED[family][0]), len(layouts[1].ids)]
    assert all(layout.width >= len(layout) for layout in layouts)


def test_fixed_length_padding_counts_real_tokens_only(encoders):
    enc = encoders["wordpiece_fixed"]
    assert enc.tokenize([CORRECT])["input_ids"].shape == (1, 48)
    (layout,) = enc.token_layouts([CORRECT])
    assert layout.width == 48 and len(layout) == 12 and layout.positions == tuple(range(12))
    assert enc.tokenize([CORRECT])["attention_mask"].sum() == 12


def test_fixed_length_builds_the_pairs_dynamic_padding_builds(encoders, world):
    studies = list(enumerate(world.studies))
    fixed = build_trace_pairs(studies, encoders["wordpiece_fixed"], seed=2)
    phantom = load_dual_encoder("phantom:default")  # the same WordPiece, dynamic padding
    assert phantom.tokenizer.vocab == wordpiece_tokenizer().vocab
    dynamic = build_trace_pairs(studies, phantom, seed=2)
    assert fixed.to_dict() == dynamic.to_dict() and fixed.pairs
    assert fixed.pairs == dynamic.pairs  # same texts, images and roles


def test_left_padding_keeps_real_positions(encoders):
    enc = encoders["gemma_bpe"]
    short, long = enc.token_layouts(["No edema.", CORRECT])
    assert enc.offsets_tokenizer.padding_side == "left"
    assert short.positions[0] == short.width - len(short) > 0 and long.positions[0] == 0
    assert enc.token_strings(list(short.ids)) == ["<bos>", "No", "▁edema", ".", "<eos>"]
    roles = infer_roles(short, enc.token_layouts(["Mild edema."])[0])
    assert roles == ("start", "negator", "subject_first", "period", "end")


@pytest.mark.parametrize("family", sorted(EXPECTED))
def test_fast_equals_reference_and_patches_real_tokens_only(encoders, family):
    enc = encoders[family]
    images = torch.nn.functional.normalize(
        torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), dim=-1
    )
    enc.model.double()
    try:
        fast = trace_scores(enc, PAIRS, images.double(), batch_pairs=2)
        ref = trace_scores_reference(enc, PAIRS, images.double())
    finally:
        enc.model.float()
    for pair, a, b in zip(PAIRS, fast, ref, strict=True):
        (layout,) = enc.token_layouts([pair.correct])
        assert a.patched.shape == b.patched.shape == (3, len(layout))
        assert a.tokens == b.tokens == enc.token_strings(list(layout.ids))
        assert abs(a.s_correct - b.s_correct) < 1e-12
        torch.testing.assert_close(a.patched, b.patched, atol=1e-10, rtol=0)


@pytest.mark.parametrize("pooler", ["mean", "cls_pooler"])
def test_fast_equals_reference_for_other_open_clip_poolers(pooler):
    enc = tiny_openclip(pooler, context_length=32)
    images = torch.nn.functional.normalize(
        torch.randn(2, 16, generator=torch.Generator().manual_seed(1)), dim=-1
    )
    enc.model.double()
    fast = trace_scores(enc, PAIRS[:2], images.double())
    ref = trace_scores_reference(enc, PAIRS[:2], images.double())
    for a, b in zip(fast, ref, strict=True):
        torch.testing.assert_close(a.patched, b.patched, atol=1e-10, rtol=0)


def test_batch_pairs_changes_the_batching_not_the_scores(encoders):
    enc = encoders["clip_bpe"]
    images = torch.nn.functional.normalize(
        torch.randn(2, 16, generator=torch.Generator().manual_seed(2)), dim=-1
    )
    pairs = [
        TracePair(f"There is no {w} effusion.", f"There is a {w} effusion.", 0)
        for w in ("pleural", "small", "left", "large")
    ]
    results = []
    enc.model.double()
    try:
        for batch_pairs, groups in ((1, [1, 1, 1, 1]), (3, [3, 1]), (16, [4])):
            calls: list[int] = []
            config = TraceConfig(batch_pairs=batch_pairs, n_boot=5)
            results.append(trace(enc, pairs, images.double(), config, progress=calls.append))
            assert sorted(calls, reverse=True) == groups
    finally:
        enc.model.float()
    for other in results[1:]:
        torch.testing.assert_close(
            other.pair_cte, results[0].pair_cte, atol=1e-8, rtol=0, equal_nan=True
        )
    # Pairs without roles got them from offsets: "There is no X effusion." has a period.
    assert not torch.isnan(results[0].pair_cte[:, :, ROLES.index("period")]).any()


def test_a_token_across_two_roles_is_rejected_for_templates_and_ranked_for_users():
    # "effusion." as one token: it covers the subject and the period.
    layout = TokenLayout(
        "No effusion.",
        (5, 6, 7, 8),
        (0, 1, 2, 3),
        ((0, 0), (0, 2), (3, 12), (0, 0)),
        (True, False, False, True),
        4,
    )
    spans = [("negator", 0, 2), ("subject", 3, 11), ("period", 11, 12)]
    roles, crossed = roles_from_spans(layout, spans)
    assert crossed and roles == ("start", "negator", "subject_first", "end")
    clean, crossed = roles_from_spans(layout, spans[:2])
    assert not crossed and clean == roles


def test_template_pairs_count_tokens_that_straddle_roles(world):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    # Splitting on whitespace only keeps "edema." as one (unknown) token.
    vocab = {"<pad>": 0, "<unk>": 1, "<bos>": 2, "<eos>": 3}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 2), ("<eos>", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    enc = clip_with_tokenizer(fast)
    build = build_trace_pairs(list(enumerate(world.studies)), enc, seed=0)
    assert build.candidates > 0 and not build.pairs
    assert (
        build.rejected["token_crosses_roles"] + build.rejected["token_length_mismatch"]
        == build.candidates
    )
    assert build.rejected["token_crosses_roles"] > 0


def test_a_named_condition_places_the_subject(encoders):
    enc = encoders["clip_bpe"]
    record = {
        "correct": "Pleural effusion is not seen.",
        "foil": "Pleural effusion is clearly seen.",
        "image": 0,
    }
    named = pairs_from_records([{**record, "condition": "pleural_effusion"}], enc, int)
    assert named.pairs[0].roles == (
        "start",
        "subject_first",
        "subject_rest",
        "context",
        "negator",
        "context",
        "period",
        "end",
    )
    # Without a condition the subject is what follows the negator up to the period.
    plain = pairs_from_records([record], enc, int)
    assert plain.pairs[0].roles == (
        "start",
        "context",
        "context",
        "context",
        "negator",
        "subject_first",
        "period",
        "end",
    )


class _NoOffsets:
    """A tokenizer that, like transformers' slow ones, cannot return offsets."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, texts, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("return_offset_mapping is not available")
        return self.inner(texts, **kwargs)


class _StripSep(HFTokenizerStandIn):
    """open_clip's strip_sep_token mode: [SEP] replaced by padding in the model's ids."""

    def __call__(self, texts, context_length=None):
        ids = super().__call__(texts, context_length)
        return torch.where(ids == self.tokenizer.sep_token_id, torch.zeros_like(ids), ids)


def test_tokenizers_that_cannot_be_aligned_are_refused(encoders):
    base = tiny_openclip("cls", context_length=24)
    base.tokenizer = HFTokenizerStandIn(_NoOffsets(wordpiece_tokenizer()), 24)
    with pytest.raises(UnsupportedModelError, match="_NoOffsets gives no character offsets"):
        base.token_layouts([CORRECT])
    base.tokenizer = _StripSep(wordpiece_tokenizer(), 24)
    with pytest.raises(DataError, match="differ from the tokenizer's own ids"):
        base.token_layouts([CORRECT])


FIELD_TESTS = {
    "mechtune.interp.result.TraceConfig": {
        "batch_pairs": "test_batch_pairs_changes_the_batching_not_the_scores"
    }
}
