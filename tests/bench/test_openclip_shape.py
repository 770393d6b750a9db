"""The BiomedCLIP-shape open_clip builder and benchmarks/openclip_path.py.

The folder's config, BERT and tokenizer need no open_clip; loading it and the benchmark's
full path do (open_clip imports torchvision, absent here), and skip without it.
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from mechtune.bench.openclip_shape import (
    BIOMEDCLIP_MEAN,
    BIOMEDCLIP_STD,
    CHECKPOINT_NAME,
    CONFIG_NAME,
    PUBMEDBERT_VOCAB_SIZE,
    SHAPES,
    OpenClipShape,
    bert_config,
    open_clip_config,
    openclip_spec,
    shape_of,
    wordpiece_vocab,
    write_openclip_shape,
)
from mechtune.errors import ConfigError, MissingExtraError

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "openclip_path.py"


@functools.cache
def open_clip_error() -> str | None:
    """The error importing open_clip (and torchvision) raises, as the script words it, or
    None. Asked in a subprocess: importing open_clip here would import torchvision into the
    test session, which other tests check mechtune itself never does."""
    code = (
        "try:\n    import open_clip, torchvision\n"
        "except Exception as exc:\n    print(f'{type(exc).__name__}: {exc}')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return out.stdout.strip() or None


needs_open_clip = pytest.mark.skipif(
    "open_clip_error() is not None", reason="open_clip cannot be imported"
)


def run_script(tmp_path: Path, *extra: str) -> tuple[int, dict]:
    out = tmp_path / "record.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--scale",
            "tiny",
            "--device",
            "cpu",
            "--out",
            str(out),
            *list(extra),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.exists(), proc.stderr[-3000:]
    return proc.returncode, json.loads(out.read_text())


def check_biomedclip_config(config: dict, text_dir: Path, shape: OpenClipShape) -> None:
    model_cfg = config["model_cfg"]
    assert model_cfg["embed_dim"] == shape.embed_dim
    assert model_cfg["vision_cfg"] == {
        "timm_model_name": shape.timm_model_name,
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": shape.image_size,
    }
    assert model_cfg["text_cfg"] == {
        "hf_model_name": str(text_dir.resolve()),
        "hf_tokenizer_name": str(text_dir.resolve()),
        "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler",
        "context_length": shape.context_length,
    }
    assert config["preprocess_cfg"] == {"mean": list(BIOMEDCLIP_MEAN), "std": list(BIOMEDCLIP_STD)}


def test_real_shape_is_biomedclips():
    real = SHAPES["real"]
    # REFERENCE §6: PubMedBERT-base 12 x 768, 12 heads, MLP 3072, 256 tokens; ViT-B/16 at
    # 224 (12 x 768, 12 heads); projection 512.
    assert (real.text_layers, real.text_width, real.text_heads, real.text_mlp) == (
        12,
        768,
        12,
        3072,
    )
    assert (real.context_length, real.embed_dim, real.vocab_size) == (256, 512, 30522)
    assert (real.vision_layers, real.vision_width, real.vision_heads) == (12, 768, 12)
    assert (real.timm_model_name, real.image_size) == ("vit_base_patch16_224", 224)
    cfg = bert_config(real)
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads) == (12, 768, 12)
    assert (cfg.intermediate_size, cfg.vocab_size, cfg.pad_token_id) == (3072, 30522, 0)
    assert cfg.max_position_embeddings >= real.context_length
    check_biomedclip_config(open_clip_config(real, Path("/x/text")), Path("/x/text"), real)


@pytest.mark.slow
def test_written_real_folder_has_the_biomedclip_shape(tmp_path):
    from safetensors import safe_open
    from transformers import AutoTokenizer, BertConfig

    folder = write_openclip_shape(tmp_path / "m", "real", checkpoint=False)
    config = json.loads((folder / CONFIG_NAME).read_text())
    check_biomedclip_config(config, folder / "text", SHAPES["real"])
    bert = BertConfig.from_pretrained(folder / "text")
    assert (bert.num_hidden_layers, bert.hidden_size, bert.num_attention_heads) == (12, 768, 12)
    assert (bert.intermediate_size, bert.vocab_size) == (3072, PUBMEDBERT_VOCAB_SIZE)
    with safe_open(str(folder / "text" / "model.safetensors"), "pt") as f:
        shapes = {k: f.get_slice(k).get_shape() for k in f.keys()}  # noqa: SIM118
    assert shapes["embeddings.word_embeddings.weight"] == [30522, 768]
    assert shapes["encoder.layer.11.intermediate.dense.weight"] == [3072, 768]
    assert "encoder.layer.12.output.dense.weight" not in shapes
    assert len(AutoTokenizer.from_pretrained(str(folder))) == PUBMEDBERT_VOCAB_SIZE
    assert not (folder / CHECKPOINT_NAME).exists()


def test_tiny_folder_is_written_offline_with_the_real_vocabulary(tmp_path):
    from transformers import AutoTokenizer, BertConfig

    folder = write_openclip_shape(tmp_path / "m", "tiny", checkpoint=False)
    tiny = SHAPES["tiny"]
    config = json.loads((folder / CONFIG_NAME).read_text())
    check_biomedclip_config(config, folder / "text", tiny)
    bert = BertConfig.from_pretrained(folder / "text")
    assert (bert.num_hidden_layers, bert.hidden_size, bert.vocab_size) == (2, 64, 30522)
    assert (folder / "text" / "model.safetensors").exists()
    # open_clip's get_tokenizer reads the tokenizer from the folder itself
    tok = AutoTokenizer.from_pretrained(str(folder))
    assert len(tok) == PUBMEDBERT_VOCAB_SIZE
    ids = tok(["There is no left pleural effusion.", "There is small left pleural effusion."])
    no, small = ids["input_ids"]
    assert len(no) == len(small) == 9  # [CLS], 6 words, ".", [SEP]: one token a word
    assert no[0] == 101 and no[-1] == 102 and tok.pad_token_id == 0
    assert [a == b for a, b in zip(no, small, strict=True)].count(False) == 1
    assert tok.convert_ids_to_tokens(tok("Cardiomegaly")["input_ids"])[1] == "cardiomegaly"
    assert "[UNK]" not in tok.tokenize("unseen-word 42")  # characters cover any ASCII text


def test_wordpiece_vocab_has_berts_layout():
    vocab = wordpiece_vocab(30522)
    assert len(vocab) == 30522 and sorted(vocab.values()) == list(range(30522))
    assert [vocab[t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [
        0,
        100,
        101,
        102,
        103,
    ]
    assert vocab["[unused0]"] == 1 and vocab["0"] == 999  # characters from 999, as in BERT
    assert len(wordpiece_vocab(2000)) == 2000


@pytest.mark.parametrize(
    "change,match",
    [
        ({"context_length": 1024}, "context_length 1024 exceeds max_positions 512"),
        ({"text_heads": 7}, "text_heads 7"),
        ({"vocab_size": 300}, "vocab_size 300 is too small"),
    ],
)
def test_shape_validation_names_the_field(change, match):
    from dataclasses import asdict

    with pytest.raises(ConfigError, match=match):
        OpenClipShape(**{**asdict(SHAPES["real"]), **change})


def test_unknown_scale_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=r"scale must be one of \['real', 'tiny'\], got 'huge'"):
        shape_of("huge")
    with pytest.raises(ConfigError, match="huge"):
        write_openclip_shape(tmp_path, "huge", checkpoint=False)


def test_spec_names_the_folder(tmp_path):
    assert openclip_spec(tmp_path) == f"openclip:local-dir:{tmp_path.resolve()}"


def test_checkpoint_without_open_clip_is_a_clear_error(tmp_path):
    if open_clip_error() is None:
        pytest.skip("open_clip is installed")
    with pytest.raises(MissingExtraError, match=r"checkpoint=False"):
        write_openclip_shape(tmp_path / "m", "tiny")
    assert (tmp_path / "m" / CONFIG_NAME).exists()  # the config and BERT are written first


def test_script_records_the_skip_without_open_clip(tmp_path):
    error = open_clip_error()
    if error is None:
        pytest.skip("open_clip is installed: the full path runs instead")
    code, record = run_script(tmp_path)
    assert code == 0
    assert record["benchmark"] == "openclip_path" and record["scale"] == "tiny"
    assert record["skipped"] == error
    assert "stages" not in record


LOADED_FACTS = """
import json, sys, torch
from safetensors.torch import load_file
from mechtune.models.spec import load_dual_encoder
from mechtune.bench.openclip_shape import CHECKPOINT_NAME, openclip_spec
folder = sys.argv[1]
enc = load_dual_encoder(openclip_spec(folder))
model, trunk = enc.model, enc.model.visual.trunk
saved, state = load_file(f"{folder}/{CHECKPOINT_NAME}"), model.state_dict()
print(json.dumps({
    "model": type(model).__name__,
    "pooler": type(model.text.pooler).__name__,
    "pooling": enc.pooling,
    "context": enc.max_length,
    "text_layers": len(enc.text_layers),
    "vision": [len(trunk.blocks), trunk.embed_dim, trunk.blocks[0].attn.num_heads],
    "image_size": list(model.visual.image_size),
    "proj": [list(m.weight.shape) for m in model.text.proj if hasattr(m, "weight")],
    "same_keys": sorted(saved) == sorted(state),
    "checkpoint_read": all(torch.equal(saved[k], state[k]) for k in saved),
}))
"""


@needs_open_clip
def test_loaded_model_has_the_written_shape_and_weights(tmp_path):
    folder = write_openclip_shape(tmp_path / "m", "tiny")
    proc = subprocess.run(
        [sys.executable, "-c", LOADED_FACTS, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    tiny = SHAPES["tiny"]
    assert facts["model"] == "CustomTextCLIP"
    assert facts["pooler"] == "ClsLastHiddenStatePooler" and facts["pooling"] == "cls"
    assert (facts["context"], facts["text_layers"]) == (tiny.context_length, tiny.text_layers)
    assert facts["vision"] == [tiny.vision_layers, tiny.vision_width, tiny.vision_heads]
    assert facts["image_size"] == [tiny.image_size, tiny.image_size]
    hidden = (tiny.text_width + tiny.embed_dim) // 2  # open_clip's "mlp" projection
    assert facts["proj"] == [[hidden, tiny.text_width], [tiny.embed_dim, hidden]]
    assert facts["same_keys"] and facts["checkpoint_read"]


@needs_open_clip
def test_script_runs_the_full_path(tmp_path):
    code, record = run_script(tmp_path, "--pairs", "3", "--reference-pairs", "1")
    assert code == 0 and record["ok"] is True, record
    stages = record["stages"]
    assert list(stages) == ["build", "load", "preprocess", "encode_images", "trace", "lora_step"]
    assert all(s["ok"] and s["seconds"] >= 0 for s in stages.values())
    assert (stages["trace"]["pairs"], stages["trace"]["reference_pairs"]) == (3, 1)
    assert stages["trace"]["max_abs_score_diff"] <= 1e-4
    assert stages["encode_images"]["embedding_shape"] == [4, SHAPES["tiny"].embed_dim]
    assert stages["lora_step"]["lora_layers"] == [0, 1]
    assert record["goals"]["stages_ok"] == {"target": 6, "value": 6, "met": True}


def test_script_pairs_are_length_matched_under_the_builders_tokenizer():
    import importlib.util

    from mechtune.bench.openclip_shape import wordpiece_tokenizer

    spec = importlib.util.spec_from_file_location("openclip_path", SCRIPT)
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    tok = wordpiece_tokenizer()
    for correct, foil in script.TEMPLATES:
        a, b = tok([correct, foil])["input_ids"]
        assert len(a) == len(b), (correct, foil)
        assert 100 not in a + b  # no [UNK]
        assert len(a) == len(correct.split()) + 3  # one token a word, ".", [CLS], [SEP]
