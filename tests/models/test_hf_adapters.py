"""The transformers adapters (CLIPModel, SiglipModel, VisionTextDualEncoderModel), each a
tiny random model saved with ``save_pretrained`` and reloaded through ``hf:``."""

from __future__ import annotations

import pytest
import torch

from mechtune.errors import UnsupportedModelError
from mechtune.interp.tracing import TracePair, trace_scores, trace_scores_reference
from mechtune.models.hf_dual import HFCLIPDualEncoder, SiglipDualEncoder, VisionTextDualEncoder
from mechtune.models.spec import load_dual_encoder
from tests.tiny_models import tiny_clip, tiny_siglip, tiny_vision_text_dual_encoder

TEXTS = ["there is no pleural effusion .", "no edema ."]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {
        "clip": tiny_clip(tmp_path_factory.mktemp("clip")),
        "siglip": tiny_siglip(tmp_path_factory.mktemp("siglip")),
        "vtde": tiny_vision_text_dual_encoder(tmp_path_factory.mktemp("vtde")),
    }


@pytest.fixture(scope="module")
def encoders(folders):
    return {name: load_dual_encoder(f"hf:{folder}") for name, folder in folders.items()}


def test_hf_dispatches_on_model_type(encoders):
    assert type(encoders["clip"]) is HFCLIPDualEncoder
    assert type(encoders["siglip"]) is SiglipDualEncoder
    assert type(encoders["vtde"]) is VisionTextDualEncoder
    assert {k: e.pooling for k, e in encoders.items()} == {
        "clip": "eos",
        "siglip": "last",
        "vtde": "cls",
    }
    assert {k: e.processor_source for k, e in encoders.items()} == dict.fromkeys(
        encoders, "checkpoint"
    )


def test_unsupported_model_type_lists_the_supported(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(
        BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=2)
    ).save_pretrained(tmp_path)
    with pytest.raises(
        UnsupportedModelError,
        match=r"model_type 'bert' is not a supported dual encoder; supported: clip, siglip, "
        r"vision-text-dual-encoder",
    ):
        load_dual_encoder(f"hf:{tmp_path}")


def test_siglip_tokenizes_as_its_processor_pads(encoders, folders):
    """padding="max_length" to 64 (transformers' SigLIP docs), the tokenizer's own mask."""
    from transformers import AutoTokenizer

    enc = encoders["siglip"]
    tokens = enc.tokenize(TEXTS)
    theirs = AutoTokenizer.from_pretrained(folders["siglip"])(
        TEXTS, padding="max_length", max_length=64, truncation=True, return_tensors="pt"
    )
    assert tokens["input_ids"].shape == (2, 64) and enc.max_length == 64
    assert torch.equal(tokens["input_ids"], theirs["input_ids"])
    assert torch.equal(tokens["attention_mask"], theirs["attention_mask"])
    assert int(tokens["input_ids"][1, -1]) == enc.tokenizer.pad_token_id == 1  # </s> pads
    assert enc.pooled_positions(tokens).int().argmax(1).tolist() == [63, 63]


@pytest.mark.parametrize("name", ["clip", "siglip", "vtde"])
def test_text_embedding_is_the_models_own(encoders, name):
    enc = encoders[name]
    tokens = enc.tokenize(TEXTS)
    with torch.no_grad():
        ours = enc.encode_tokens(tokens)
        theirs = torch.nn.functional.normalize(
            enc.model.get_text_features(**tokens).pooler_output, dim=-1
        )
        states, _ = enc.capture(tokens)
        cut = enc.head(states[-1], tokens)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(cut, ours, atol=1e-6)
    assert len(states) == len(enc.text_layers) + 1


@pytest.mark.parametrize("name", ["clip", "siglip", "vtde"])
def test_pooled_position_is_where_transformers_pools(encoders, name):
    """Perturb the last block's output at one position at a time: transformers' own
    ``get_text_features`` changes exactly at the positions the site says it pools."""
    enc = encoders[name]
    tokens = enc.tokenize(TEXTS)
    pooled = enc.pooled_positions(tokens)
    last = enc.text_layers[-1]
    # Not a constant shift: the final LayerNorm would remove one.
    kick = 3.0 * torch.randn(enc.model.config.text_config.hidden_size)
    with torch.no_grad():
        base = enc.model.get_text_features(**tokens).pooler_output
        for row in range(len(TEXTS)):
            for col in range(tokens["input_ids"].shape[1]):

                def bump(module, args, output, row=row, col=col):
                    h = (output[0] if isinstance(output, tuple) else output).clone()
                    h[row, col] += kick
                    return (h, *output[1:]) if isinstance(output, tuple) else h

                handle = last.register_forward_hook(bump)
                try:
                    moved = enc.model.get_text_features(**tokens).pooler_output
                finally:
                    handle.remove()
                changed = not torch.allclose(moved[row], base[row], atol=1e-6)
                assert changed == bool(pooled[row, col]), (name, row, col)


def test_siglip_tracing_patches_and_scores_the_pooled_padding(encoders):
    enc = encoders["siglip"]
    pairs = [
        TracePair("there is no pleural effusion .", "there is a pleural effusion .", 0),
        TracePair("no edema .", "severe edema .", 1),
    ]
    tokens = enc.tokenize([p.correct for p in pairs])
    traced = enc.traced_positions(tokens)
    # The real tokens (text + </s>) and the pooled last column, a padding token.
    assert traced.sum(1).tolist() == [7 + 1, 4 + 1]
    assert bool(traced[:, -1].all()) and not bool(tokens["attention_mask"][:, -1].any())
    layouts = enc.token_layouts([p.correct for p in pairs])
    assert [len(lay) for lay in layouts] == [8, 5]
    assert layouts[1].positions == (0, 1, 2, 3, 63) and layouts[1].special[-2:] == (True, True)
    gen = torch.Generator().manual_seed(0)
    images = torch.nn.functional.normalize(torch.randn(2, 32, generator=gen), dim=-1)
    enc.model.double()
    try:
        fast = trace_scores(enc, pairs, images.double(), batch_pairs=2)
        ref = trace_scores_reference(enc, pairs, images.double())
    finally:
        enc.model.float()
    assert [a.patched.shape[1] for a in fast] == [8, 5]
    for a, b in zip(fast, ref, strict=True):
        assert a.patched.shape == b.patched.shape and a.patched.shape[0] == 3
        assert torch.allclose(a.patched, b.patched, atol=1e-10)
        # After the last block only the pooled column moves the score: it takes the foil's.
        assert torch.allclose(a.patched[-1, :-1], torch.full_like(a.patched[-1, :-1], a.s_correct))
        assert a.patched[-1, -1].item() == pytest.approx(a.s_foil, abs=1e-10)


def test_vision_text_dual_encoder_refuses_a_tower_without_pooler(folders):
    from transformers import VisionTextDualEncoderModel

    model = VisionTextDualEncoderModel.from_pretrained(folders["vtde"])
    model.text_model.pooler = None
    with pytest.raises(UnsupportedModelError, match="BertModel without a pooler"):
        VisionTextDualEncoder(model, None)
