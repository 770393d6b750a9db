import numpy as np
import pytest
import torch

from mechtune.errors import MissingExtraError, UnsupportedModelError
from mechtune.models.dual_encoder import PhantomDualEncoder
from mechtune.models.hf_dual import HFCLIPDualEncoder
from mechtune.models.sites import text_site
from mechtune.models.spec import ModelSpecError, load_dual_encoder, parse_spec
from tests.tiny_models import tiny_clip


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture(scope="module")
def clip(clip_dir):
    return load_dual_encoder(f"hf:{clip_dir}")


def test_tiny_clip_loads_by_spec_and_encodes(clip):
    assert isinstance(clip, HFCLIPDualEncoder)
    texts = clip.encode_texts(
        ["there is no pleural effusion .", "there is small pleural effusion ."]
    )
    assert texts.shape == (2, 16)
    assert torch.allclose(texts.norm(dim=-1), torch.ones(2), atol=1e-5)
    images = np.random.default_rng(0).integers(0, 255, (3, 128, 128), dtype=np.uint8)
    emb = clip.encode_images(images)
    assert emb.shape == (3, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert len(clip.text_layers) == 2 and clip.logit_scale > 1


def test_text_embedding_matches_the_model_and_the_cut_forward(clip):
    tokens = clip.tokenize(["there is no edema .", "there is severe pulmonary edema ."])
    with torch.no_grad():
        ours = clip.encode_tokens(tokens)
        raw = clip.model.get_text_features(**tokens)
        theirs = torch.nn.functional.normalize(raw.pooler_output, dim=-1)
        states, _ = clip.capture(tokens)
        cut = clip.head(states[-1], tokens)
    assert torch.allclose(ours, theirs, atol=1e-6)
    assert torch.allclose(cut, ours, atol=1e-6)
    assert len(states) == 3  # embedding output + 2 blocks


def test_phantom_spec_and_cut_forward():
    enc = load_dual_encoder("phantom:default")
    assert isinstance(enc, PhantomDualEncoder)
    tokens = enc.tokenize(["No left pleural effusion.", "Severe pulmonary edema."])
    with torch.no_grad():
        states, call = enc.capture(tokens)
        rows = torch.arange(2)
        rerun = enc.run_layers(states[2], 2, call, rows)
        assert torch.allclose(rerun, states[-1], atol=1e-5)
        assert torch.allclose(enc.head(states[-1], tokens), enc.encode_tokens(tokens), atol=1e-6)
    assert len(states) == 7


@pytest.mark.parametrize(
    "spec,fragment",
    [
        ("", "bad model spec ''"),
        ("clip-vit", "expected SCHEME:NAME"),
        ("torchhub:foo", "SCHEME one of hf, openclip, phantom"),
        ("hf:", "bad model spec"),
    ],
)
def test_bad_specs(spec, fragment):
    with pytest.raises(ModelSpecError, match=fragment):
        parse_spec(spec)


def test_missing_local_model_and_hub_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSpecError, match="cannot load"):
        load_dual_encoder(f"hf:{tmp_path / 'nothing-here'}")
    with pytest.raises(ModelSpecError, match="HF_HUB_OFFLINE=1"):
        load_dual_encoder("hf:openai/clip-vit-base-patch32")
    with pytest.raises(ModelSpecError, match="cannot load"):
        load_dual_encoder(f"phantom:{tmp_path}")


def test_openclip_missing_folder_is_a_clear_error(tmp_path):
    # With the extra installed (the full open_clip path: tests/bench/test_openclip_shape.py).
    pytest.importorskip("open_clip", exc_type=ImportError)
    missing = tmp_path / "nothing-here"
    with pytest.raises(ModelSpecError, match=rf"cannot load 'openclip:local-dir:{missing}'"):
        load_dual_encoder(f"openclip:local-dir:{missing}")


def test_openclip_missing_extra_is_a_clear_error():
    try:
        import open_clip  # noqa: F401
    except Exception:
        with pytest.raises(MissingExtraError, match=r"mechtune\[openclip\]"):
            load_dual_encoder(
                "openclip:hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
            )
    else:  # pragma: no cover - the extra is installed
        pytest.skip("open_clip is installed")


def test_site_table(clip):
    site = text_site(clip.model)
    assert site.layers_pattern == "text_model.encoder.layers"
    name = (
        "base_model.model.module.text_model.encoder.layers.1.self_attn.q_proj.lora_A.default.weight"
    )
    assert site.layer_index(name) == 1
    assert site.layer_index("vision_model.encoder.layers.1.self_attn.q_proj.weight") is None
    with pytest.raises(TypeError, match="no text site for Linear"):
        text_site(torch.nn.Linear(2, 2))


def test_sentence_tower_with_any_image_encoder(tmp_path):
    from mechtune.interp.tracing import TracePair, trace_scores, trace_scores_reference
    from mechtune.models.minilm import minilm_path
    from mechtune.models.sentence_tower import SentenceTowerCLIP, SentenceTowerDualEncoder

    torch.manual_seed(0)
    image_encoder = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(384))
    model = SentenceTowerCLIP(minilm_path(), image_encoder)
    enc = SentenceTowerDualEncoder(model)
    images = enc.encode_images(torch.rand(2, 8, 8))
    assert images.shape == (2, 384)
    pairs = [TracePair("No pneumothorax.", "Large pneumothorax.", 0)]
    fast = trace_scores(enc, pairs, images.detach())
    ref = trace_scores_reference(enc, pairs, images.detach())
    assert torch.allclose(fast[0].cte, ref[0].cte, atol=1e-5)
    with pytest.raises(ValueError, match=r"no 1_Pooling/config\.json"):
        SentenceTowerCLIP(tmp_path, image_encoder)


# -- pooling: a property each adapter declares, and exactly what its head reads ---------------


def _adapters(clip):
    from tests.tiny_models import clip_bpe_tokenizer, clip_with_tokenizer, tiny_openclip

    return {
        "clip_legacy_eos": clip,
        "clip_bpe": clip_with_tokenizer(clip_bpe_tokenizer()),
        "phantom": load_dual_encoder("phantom:default"),
        "openclip_cls": tiny_openclip("cls", context_length=24),
        "openclip_cls_pooler": tiny_openclip("cls_pooler", context_length=24),
        "openclip_mean": tiny_openclip("mean", context_length=24),
    }


def test_each_adapter_declares_its_pooling(clip):
    from tests.tiny_models import tiny_openclip

    declared = {name: enc.pooling for name, enc in _adapters(clip).items()}
    assert declared == {
        "clip_legacy_eos": "eos",
        "clip_bpe": "eos",
        "phantom": "mean",
        "openclip_cls": "cls",
        "openclip_cls_pooler": "cls",
        "openclip_mean": "mean",
    }
    with pytest.raises(UnsupportedModelError, match="pooler MaxPooler is not supported"):
        _ = tiny_openclip("max").pooling


def test_pooled_positions_are_what_the_head_reads(clip):
    texts = ["there is no pleural effusion .", "no edema ."]
    for name, enc in _adapters(clip).items():
        tokens = enc.tokenize(texts)
        pooled = enc.pooled_positions(tokens)
        assert pooled.shape == tokens["input_ids"].shape, name
        with torch.no_grad():
            states, _ = enc.capture(tokens)
            last = states[-1]
            base = enc.head(last, tokens)
            assert torch.allclose(base, enc.encode_tokens(tokens), atol=1e-5), name
            for row in range(len(texts)):
                for col in range(last.shape[1]):
                    moved = last.clone()
                    moved[row, col] += 3.0 * torch.randn(last.shape[-1])
                    changed = not torch.allclose(enc.head(moved, tokens)[row], base[row], atol=1e-6)
                    assert changed == bool(pooled[row, col]), (name, row, col)


def test_clip_pools_the_eos_by_transformers_rule(clip):
    from tests.tiny_models import clip_bpe_tokenizer, clip_with_tokenizer

    # Legacy configs (eos_token_id == 2): the highest id, which the tiny vocabulary gives EOS.
    legacy = clip.tokenize(["no edema .", "there is no pleural effusion ."])
    assert clip.pooled_positions(legacy).int().argmax(1).tolist() == [4, 7]
    # Current configs: the first EOS, even when padding is EOS too (CLIP pads with it).
    bpe = clip_with_tokenizer(clip_bpe_tokenizer())
    tokens = bpe.tokenize(["no edema.", "there is no pleural effusion."])
    assert tokens["input_ids"][0, -1] == bpe.tokenizer.eos_token_id  # padded with EOS
    assert bpe.pooled_positions(tokens).int().argmax(1).tolist() == [4, 7]
    assert bpe.pooled_positions(tokens).sum(1).tolist() == [1, 1]


def test_openclip_adapter_takes_its_context_length_from_the_tokenizer():
    from tests.tiny_models import tiny_openclip

    enc = tiny_openclip("cls", context_length=24)
    assert enc.max_length == 24 and enc.tokenize(["no edema ."])["input_ids"].shape == (1, 24)
