"""A BiomedCLIP-shape open_clip model in a local folder, random weights, no hub.

BiomedCLIP (``microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``) is an open_clip
``CustomTextCLIP``: a timm ViT-B/16 at 224 px with a linear head, and an ``HFTextEncoder``
over PubMedBERT-base (12 layers, 768 wide, 12 heads, MLP 3072) read at its ``[CLS]``
token (``cls_last_hidden_state_pooler``) and projected to 512 by an MLP, with open_clip's
``HFTokenizer`` padding every text to 256 tokens. Its ``open_clip_config.json`` is
reproduced here, with the two hub names (``hf_model_name``, ``hf_tokenizer_name``) pointing
to a random BERT saved in the folder (``save_pretrained``), so open_clip's own
``local-dir:`` loader builds it offline and without remote code:

    folder/
      open_clip_config.json          {"model_cfg": ..., "preprocess_cfg": ...}
      open_clip_model.safetensors    the whole model's state dict (random; optional)
      tokenizer.json, tokenizer_config.json, ...   read by open_clip's get_tokenizer
      text/config.json, text/model.safetensors, text/tokenizer*   the random BERT

How open_clip reads it (mlfoundations/open_clip ``src/open_clip/factory.py``): for
``local-dir:DIR``, ``create_model`` takes ``model_cfg``/``preprocess_cfg`` from
``DIR/open_clip_config.json`` and the weights from the preferred checkpoint name in
``DIR`` (``open_clip_model.safetensors`` first); with a checkpoint the text tower is
built from the BERT's ``config.json`` alone (``hf_model_pretrained`` false), without one
``HFTextEncoder`` loads ``text/`` with ``AutoModel.from_pretrained``. ``get_tokenizer``
builds an ``HFTokenizer`` from ``DIR`` itself whenever ``hf_tokenizer_name`` is set. The
vision tower is ``timm.create_model(timm_model_name, pretrained=False)``: nothing is
downloaded. (Checked against open_clip 3.3.0, timm 1.0.31.)

The WordPiece tokenizer is built offline with ``tokenizers``, in BERT's layout
(``[PAD]`` 0, ``[UNK]`` 100, ``[CLS]`` 101, ``[SEP]`` 102, ``[MASK]`` 103), with the
real vocabulary size: 30,522, BERT-base-uncased's, *assumed* for PubMedBERT (its own
vocabulary is built from PubMed; the size could not be checked offline). Characters and
``##``-characters make every ASCII text tokenizable; common radiology words are whole
tokens; unused entries fill the rest.

Sizes (:data:`SHAPES`): ``real`` is BiomedCLIP's; ``tiny`` keeps every key and class and
shrinks the towers (a 2-layer, 64-wide BERT; timm's 6-layer, 64-wide ``test_vit`` at
32 px) for smoke tests. open_clip builds models on the CPU, then moves and casts them
(``create_model(device=, precision=)``): that is its loader's behaviour, not this module's.
"""

from __future__ import annotations

import logging
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from mechtune.data.io import write_json
from mechtune.errors import ConfigError, MissingExtraError

PUBMEDBERT_VOCAB_SIZE = 30522  # assumed: BERT-base-uncased's size (see the module doc)
# BiomedCLIP's preprocess_cfg: the OpenAI CLIP mean/std (open_clip constants
# OPENAI_DATASET_MEAN / OPENAI_DATASET_STD).
BIOMEDCLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
BIOMEDCLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "open_clip_config.json"
CHECKPOINT_NAME = "open_clip_model.safetensors"  # the first name open_clip's local-dir looks for
TEXT_DIR = "text"

SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}
WORDS = [
    "a",
    "absent",
    "acute",
    "and",
    "are",
    "atelectasis",
    "bilateral",
    "cardiomegaly",
    "chest",
    "clear",
    "consolidation",
    "decreased",
    "edema",
    "effusion",
    "enlarged",
    "evidence",
    "focal",
    "for",
    "free",
    "has",
    "heart",
    "in",
    "increased",
    "is",
    "large",
    "left",
    "lobe",
    "lower",
    "lung",
    "lungs",
    "mass",
    "mild",
    "moderate",
    "negative",
    "no",
    "nodule",
    "normal",
    "not",
    "of",
    "opacity",
    "pleural",
    "pneumonia",
    "pneumothorax",
    "positive",
    "present",
    "pulmonary",
    "resolved",
    "right",
    "seen",
    "severe",
    "size",
    "small",
    "stable",
    "the",
    "there",
    "trace",
    "upper",
    "with",
    "without",
]


@dataclass(frozen=True)
class OpenClipShape:
    """The sizes of a BiomedCLIP-shape open_clip model.

    Text tower (``transformers.BertConfig``): ``text_layers`` blocks of width
    ``text_width``, ``text_heads`` heads, MLP ``text_mlp``, ``vocab_size`` tokens,
    ``max_positions`` position embeddings; open_clip pads texts to ``context_length``.
    Vision tower: the timm model ``timm_model_name`` at ``image_size`` px, whose own sizes
    are ``vision_layers`` blocks of width ``vision_width`` with ``vision_heads`` heads
    (open_clip 3.3 passes no size overrides to timm, so they are timm's, recorded here to
    be checked against the built model). Both towers are projected to ``embed_dim``.
    Raises ConfigError when the context is longer than the position embeddings, a width
    does not divide by its heads, or the vocabulary cannot hold the WordPiece layout.
    """

    embed_dim: int
    text_layers: int
    text_width: int
    text_heads: int
    text_mlp: int
    context_length: int
    max_positions: int
    image_size: int
    vision_layers: int
    vision_width: int
    vision_heads: int
    timm_model_name: str
    vocab_size: int = PUBMEDBERT_VOCAB_SIZE

    def __post_init__(self) -> None:
        if self.context_length > self.max_positions:
            raise ConfigError(
                f"context_length {self.context_length} exceeds max_positions {self.max_positions}"
            )
        if self.text_width % self.text_heads or self.vision_width % self.vision_heads:
            raise ConfigError(
                f"text_width {self.text_width} / text_heads {self.text_heads} and vision_width "
                f"{self.vision_width} / vision_heads {self.vision_heads} must divide"
            )
        wordpiece_vocab(self.vocab_size)  # raises ConfigError when it is too small


def wordpiece_vocab(vocab_size: int) -> dict[str, int]:
    """A BERT-layout WordPiece vocabulary of exactly ``vocab_size`` entries: the specials
    at BERT's ids, ``[unusedN]`` at 1..99 and 104..998, then the printable ASCII
    characters, their ``##`` continuations, :data:`WORDS`, and ``[unusedN]`` to the end.
    Raises ConfigError when ``vocab_size`` is smaller than that layout."""
    vocab = dict(SPECIALS)
    unused = 0

    def add(token: str) -> None:
        vocab.setdefault(token, len(vocab))

    for i in range(1, 999):
        if i not in SPECIALS.values():
            vocab[f"[unused{unused}]"] = i
            unused += 1
    chars = [c for c in string.printable if not c.isspace() and not c.isupper()]
    for token in [*chars, *(f"##{c}" for c in chars), *WORDS]:
        add(token)
    if len(vocab) > vocab_size:
        raise ConfigError(
            f"vocab_size {vocab_size} is too small for the WordPiece layout "
            f"(at least {len(vocab)} entries)"
        )
    while len(vocab) < vocab_size:
        add(f"[unused{unused}]")
        unused += 1
    return vocab


SHAPES: dict[str, OpenClipShape] = {
    # BiomedCLIP: PubMedBERT-base, 256-token context, ViT-B/16 at 224 (timm's own sizes:
    # 12 blocks, 768 wide, 12 heads, MLP 3072), projection 512 (REFERENCE §6).
    "real": OpenClipShape(
        embed_dim=512,
        text_layers=12,
        text_width=768,
        text_heads=12,
        text_mlp=3072,
        context_length=256,
        max_positions=512,
        image_size=224,
        vision_layers=12,
        vision_width=768,
        vision_heads=12,
        timm_model_name="vit_base_patch16_224",
    ),
    "tiny": OpenClipShape(
        embed_dim=32,
        text_layers=2,
        text_width=64,
        text_heads=2,
        text_mlp=128,
        context_length=32,
        max_positions=64,
        image_size=32,
        # timm's test_vit: patch 16, 6 blocks, 64 wide, 2 heads, MLP 3x, dynamic image
        # size (its position embeddings are resampled to the 2x2 grid of a 32 px image).
        vision_layers=6,
        vision_width=64,
        vision_heads=2,
        timm_model_name="test_vit",
    ),
}


def shape_of(scale: str) -> OpenClipShape:
    """The :data:`SHAPES` entry ``scale`` (``"real"`` or ``"tiny"``); ConfigError otherwise."""
    if scale not in SHAPES:
        raise ConfigError(f"scale must be one of {sorted(SHAPES)}, got {scale!r}")
    return SHAPES[scale]


def wordpiece_tokenizer(vocab_size: int = PUBMEDBERT_VOCAB_SIZE, max_length: int = 512) -> Any:
    """An uncased BERT WordPiece ``PreTrainedTokenizerFast`` (``[CLS] text [SEP]``), built
    offline with ``tokenizers``; ``len(tokenizer) == vocab_size``."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = wordpiece_vocab(vocab_size)
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, clean_text=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", SPECIALS["[CLS]"]), ("[SEP]", SPECIALS["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def bert_config(shape: OpenClipShape) -> Any:
    """The text tower's ``transformers.BertConfig`` (pad id 0, as BERT's)."""
    from transformers import BertConfig

    return BertConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.text_width,
        num_hidden_layers=shape.text_layers,
        num_attention_heads=shape.text_heads,
        intermediate_size=shape.text_mlp,
        max_position_embeddings=shape.max_positions,
        pad_token_id=SPECIALS["[PAD]"],
    )


def open_clip_config(shape: OpenClipShape, text_dir: str | Path) -> dict[str, Any]:
    """BiomedCLIP's ``open_clip_config.json`` with the BERT at ``text_dir``: open_clip's
    ``model_cfg`` (``CLIPVisionCfg`` / ``CLIPTextCfg`` keys of ``src/open_clip/model.py``)
    and ``preprocess_cfg`` (``PreprocessCfg`` of ``transform.py``)."""
    vision_cfg = {
        "timm_model_name": shape.timm_model_name,
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": shape.image_size,
    }
    text = str(Path(text_dir).resolve())
    return {
        "model_cfg": {
            "embed_dim": shape.embed_dim,
            "vision_cfg": vision_cfg,
            "text_cfg": {
                "hf_model_name": text,
                "hf_tokenizer_name": text,
                "hf_proj_type": "mlp",
                "hf_pooler_type": "cls_last_hidden_state_pooler",
                "context_length": shape.context_length,
            },
        },
        "preprocess_cfg": {"mean": list(BIOMEDCLIP_MEAN), "std": list(BIOMEDCLIP_STD)},
    }


def write_openclip_shape(
    folder: str | Path, scale: str = "real", *, seed: int = 0, checkpoint: bool = True
) -> Path:
    """Write a BiomedCLIP-shape open_clip model (:data:`SHAPES` ``scale``) into ``folder``
    (created; existing files of the same names are replaced); returns the folder.

    Load it with ``load_dual_encoder(openclip_spec(folder))``. ``checkpoint``: also build
    the whole model once with open_clip (random ViT, the saved BERT) and write its state
    dict as ``open_clip_model.safetensors``, the file open_clip's ``local-dir:`` loader
    reads; this needs open_clip (MissingExtraError otherwise). Without it the folder holds
    the config and the BERT only (open_clip then loads the BERT's weights and initialises
    the rest at random on each load). Raises ConfigError for an unknown ``scale``.
    """
    shape = shape_of(scale)
    root = Path(folder)
    text_dir = root / TEXT_DIR
    text_dir.mkdir(parents=True, exist_ok=True)
    from transformers import BertModel

    tokenizer = wordpiece_tokenizer(shape.vocab_size, shape.max_positions)
    torch.manual_seed(seed)
    # BiomedCLIP reads the [CLS] state, so open_clip builds BERT without its pooling layer.
    bert = BertModel(bert_config(shape), add_pooling_layer=False)
    bert.save_pretrained(text_dir)
    tokenizer.save_pretrained(text_dir)
    tokenizer.save_pretrained(root)  # get_tokenizer("local-dir:...") reads the folder itself
    config = open_clip_config(shape, text_dir)
    write_json(root / CONFIG_NAME, config)
    (root / CHECKPOINT_NAME).unlink(missing_ok=True)
    if checkpoint:
        _write_checkpoint(root, seed)
    return root


def _write_checkpoint(root: Path, seed: int) -> None:
    try:
        import open_clip
    except Exception as exc:  # open_clip imports torchvision, which may fail to load
        raise MissingExtraError(
            f"writing {CHECKPOINT_NAME} needs open_clip, which could not be imported ({exc}); "
            "pip install 'mechtune[openclip]' or pass checkpoint=False"
        ) from exc
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    # open_clip logs, at WARNING, that this first build finds no checkpoint: that is the point.
    root_logger = logging.getLogger()
    level = root_logger.level
    root_logger.setLevel(logging.ERROR)
    try:
        model = open_clip.create_model(f"local-dir:{root}", device="cpu")
    finally:
        root_logger.setLevel(level)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(root / CHECKPOINT_NAME), metadata={"format": "pt"})


def openclip_spec(folder: str | Path) -> str:
    """The mechtune model spec of a folder written by :func:`write_openclip_shape`."""
    return f"openclip:local-dir:{Path(folder).resolve()}"


__all__ = [
    "BIOMEDCLIP_MEAN",
    "BIOMEDCLIP_STD",
    "CHECKPOINT_NAME",
    "CONFIG_NAME",
    "PUBMEDBERT_VOCAB_SIZE",
    "SHAPES",
    "OpenClipShape",
    "bert_config",
    "open_clip_config",
    "openclip_spec",
    "shape_of",
    "wordpiece_tokenizer",
    "wordpiece_vocab",
    "write_openclip_shape",
]
