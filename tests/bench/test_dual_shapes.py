"""Random-weight dual encoders of real shapes: parameter counts on the meta device against
the architectures' closed-form counts and the published sizes, and tiny builds through
mechtune's adapters and tracer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mechtune.bench import clinical_text, dual_shapes
from mechtune.bench.dual_shapes import (
    biomedclip_config,
    biomedclip_shape,
    build_on_device,
    dual_shape,
    medsiglip_config,
    medsiglip_shape,
)
from mechtune.errors import ConfigError
from mechtune.interp.tracing import TracePair, token_length, trace_scores, trace_scores_reference


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def bert_count(vocab: int, positions: int, h: int, mlp: int, layers: int, pooler: bool) -> int:
    """BERT: word/position/type embeddings + LayerNorm; per block Q, K, V, O, two
    LayerNorms and the MLP; the [CLS] pooler (dense)."""
    embeddings = vocab * h + positions * h + 2 * h + 2 * h
    block = 4 * linear(h, h) + 2 * 2 * h + linear(h, mlp) + linear(mlp, h)
    return embeddings + layers * block + (linear(h, h) if pooler else 0)


def vit_count(image: int, patch: int, h: int, mlp: int, layers: int, pooler: bool) -> int:
    """ViT: patch projection, [CLS] and position embeddings, pre-norm blocks, final
    LayerNorm, optional pooler."""
    tokens = (image // patch) ** 2 + 1
    stem = 3 * patch * patch * h + h + h + tokens * h
    block = 4 * linear(h, h) + 2 * 2 * h + linear(h, mlp) + linear(mlp, h)
    return stem + layers * block + 2 * h + (linear(h, h) if pooler else 0)


def siglip_block(h: int, mlp: int) -> int:
    return 4 * linear(h, h) + 2 * 2 * h + linear(h, mlp) + linear(mlp, h)


def test_biomedclip_real_size_on_meta_matches_the_architecture_and_the_published_size():
    config = biomedclip_config("real")
    text, vision = config.text_config, config.vision_config
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads) == (12, 768, 12)
    assert (text.intermediate_size, text.vocab_size) == (3072, 30522)
    assert (vision.num_hidden_layers, vision.hidden_size, vision.num_attention_heads) == (
        12,
        768,
        12,
    )
    assert (vision.intermediate_size, vision.image_size, vision.patch_size) == (3072, 224, 16)
    assert config.projection_dim == 512
    from transformers import VisionTextDualEncoderModel

    model = build_on_device(VisionTextDualEncoderModel, config, "meta", torch.bfloat16)
    bert = bert_count(30522, 512, 768, 3072, 12, pooler=True)
    vit = vit_count(224, 16, 768, 3072, 12, pooler=True)
    assert count(model.text_model) == bert == 109_482_240
    assert count(model.vision_model) == vit == 86_389_248
    assert count(model) == bert + vit + 2 * linear(768, 512, bias=False) + 1  # + logit scale
    # open_clip's BiomedCLIP: the BERT without its pooler, an MLP projection 768-640-512, a
    # timm ViT-B/16 without pooler and a linear projection to 512 (no biases), logit scale.
    open_clip = (
        bert_count(30522, 512, 768, 3072, 12, pooler=False)
        + linear(768, 640, False)
        + linear(640, 512, False)
        + vit_count(224, 16, 768, 3072, 12, pooler=False)
        + linear(768, 512, False)
        + 1
    )
    assert open_clip == 195_902_721
    # The HF packaging differs only by the two poolers against the MLP projection: 0.39%.
    assert abs(count(model) - open_clip) / open_clip < 0.005
    assert abs(count(model) - 196e6) / 196e6 < 0.005


def test_medsiglip_real_size_on_meta_has_so400m_towers_of_about_400m_each():
    config = medsiglip_config("real")
    h, mlp, layers = 1152, 4304, 27
    for tower in (config.text_config, config.vision_config):
        assert (tower.hidden_size, tower.intermediate_size) == (h, mlp)
        assert (tower.num_hidden_layers, tower.num_attention_heads) == (layers, 16)
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (448, 14)
    assert config.text_config.max_position_embeddings == 64
    assert config.text_config.vocab_size == 32000
    from transformers import SiglipModel

    model = build_on_device(SiglipModel, config, "meta", torch.bfloat16)
    text = 32000 * h + 64 * h + layers * siglip_block(h, mlp) + 2 * h + linear(h, h)
    patches = (448 // 14) ** 2
    head = h + (3 * h * h + 3 * h) + linear(h, h) + 2 * h + linear(h, mlp) + linear(mlp, h)
    vision = 3 * 14 * 14 * h + h + patches * h + layers * siglip_block(h, mlp) + 2 * h + head
    assert count(model.text_model) == text
    assert count(model.vision_model) == vision
    assert count(model) == text + vision + 2  # logit scale and bias
    # MedSigLIP's model card: "400M" per tower, rounded; so400m's towers are 429M / 450M.
    for tower in (text, vision):
        assert 380e6 < tower < 470e6


@pytest.mark.parametrize(
    ("name", "layers", "max_length", "image_size", "vocab"),
    [("biomedclip", 12, 256, 224, 30522), ("medsiglip", 27, 64, 448, 32000)],
)
def test_real_build_on_meta_reports_the_device_and_dtype_asked_for(
    name, layers, max_length, image_size, vocab
):
    encoder = dual_shape(name, "real", "meta", "bfloat16")
    assert encoder.device.type == "meta"
    assert encoder.dtype == torch.bfloat16
    assert all(p.dtype == torch.bfloat16 for p in encoder.model.parameters())
    assert len(encoder.text_layers) == layers
    assert encoder.max_length == max_length
    assert encoder.image_size == image_size
    assert len(encoder.tokenizer) == vocab == encoder.model.config.text_config.vocab_size


def test_tokenizers_have_the_real_vocabulary_and_one_token_per_template_word():
    bert = dual_shapes.bert_tokenizer()
    assert len(bert) == 30522
    assert [bert.convert_tokens_to_ids(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]")] == [
        0,
        100,
        101,
        102,
    ]
    ids = bert(" ".join(clinical_text.WORDS))["input_ids"]
    assert ids[0] == 101 and ids[-1] == 102
    assert len(ids) == len(clinical_text.WORDS) + 2 and 100 not in ids
    siglip = dual_shapes.siglip_tokenizer()
    assert len(siglip) == 32000
    out = siglip(" ".join(clinical_text.WORDS))["input_ids"]
    assert len(out) == len(clinical_text.WORDS) + 1 and out[-1] == 1 and 2 not in out
    # the tiny vocabularies: contiguous ids, no filler beyond the specials' range
    tiny = dual_shapes.bert_tokenizer(None)
    assert sorted(tiny.get_vocab().values()) == list(range(len(tiny)))
    with pytest.raises(ConfigError, match="vocab_size 10 is below"):
        dual_shapes.bert_tokenizer(10)


def test_bad_scale_and_name_are_config_errors():
    with pytest.raises(ConfigError, match="scale must be one of"):
        biomedclip_config("huge")
    with pytest.raises(ConfigError, match="unknown dual-encoder shape 'clip'"):
        dual_shape("clip", "tiny")


@pytest.mark.parametrize("build", [biomedclip_shape, medsiglip_shape])
def test_tiny_builds_encode_through_the_adapter_and_trace_as_the_loop(build):
    encoder = build("tiny", "cpu", torch.float32)
    texts = clinical_text.trace_text_pairs(3, seed=1)
    emb = encoder.encode_texts([t for pair in texts for t in pair])
    dim = emb.shape[1]
    assert emb.shape == (6, dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(6), atol=1e-5)
    images = np.random.default_rng(0).integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    img = encoder.encode_images(images)
    assert img.shape == (3, dim)
    pairs = [TracePair(c, f, i) for i, (c, f) in enumerate(texts)]
    for pair in pairs:
        assert token_length(encoder, pair.correct) == token_length(encoder, pair.foil)
    fast = trace_scores(encoder, pairs, img)
    loop = trace_scores_reference(encoder, pairs, img)
    for a, b in zip(fast, loop, strict=True):
        assert a.patched.shape == (len(encoder.text_layers) + 1, len(a.tokens))
        torch.testing.assert_close(a.patched, b.patched, atol=1e-5, rtol=1e-5)
        assert a.s_correct == pytest.approx(b.s_correct, abs=1e-6)


def test_trace_pairs_are_distinct_length_matched_and_alternate_the_negation():
    pairs = clinical_text.trace_text_pairs(1000)
    assert len(set(pairs)) == 1000
    encoder = biomedclip_shape("tiny")
    for correct, foil in pairs[:40]:
        assert token_length(encoder, correct) == token_length(encoder, foil)
    cues = ("no", "not", "negative", "free")
    assert not any(w in cues for w in pairs[0][0].split())  # even: affirmative correct
    assert any(w in cues for w in pairs[1][0].split())  # odd: negated correct
    assert clinical_text.trace_text_pairs(5, seed=0) != clinical_text.trace_text_pairs(5, seed=1)
    with pytest.raises(ConfigError, match=r"pairs must be in 1\.\.3840"):
        clinical_text.trace_text_pairs(3841)


def test_claim_sets_change_one_attribute_per_hard_negative():
    sets = clinical_text.claim_sets()
    assert len(sets) == 960 and len(set(sets)) == 960
    for correct, *negatives in sets:
        assert len(negatives) == 3 and len({correct, *negatives}) == 4
    assert sets[0] == (
        "small left pleural effusion .",
        "no left pleural effusion .",
        "small right pleural effusion .",
        "large left pleural effusion .",
    )
    caps = clinical_text.negated_captions(20)
    assert all(" . no " in c for c in caps)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_real_biomedclip_is_built_on_the_gpu_in_bf16():
    encoder = biomedclip_shape("real", "cuda", torch.bfloat16)
    assert encoder.device.type == "cuda" and encoder.dtype == torch.bfloat16
    emb = encoder.encode_texts(["there is no left pleural effusion ."])
    assert emb.dtype == torch.float32 and emb.shape == (1, 512)
