"""Hugging Face image-text-to-text models as yes/no VLMs (:class:`HFYesNoVLM`).

The target is MedGemma-4B, ``google/medgemma-4b-it`` (transformers
``Gemma3ForConditionalGeneration``: a SigLIP vision tower and 34 Gemma 3 language blocks,
hidden size 2560), loaded with ``AutoProcessor`` and ``AutoModelForImageTextToText`` from
a hub id or a local ``save_pretrained`` folder. Remote code is never trusted unless the
caller asks for it.

**Prompt.** One user turn of the processor's own chat template, holding an image item
and the question text (followed by an optional instruction, "Answer yes or no." by
default), with an optional system turn, and ``add_generation_prompt=True``: the next
token is the model's first answer token. Batches are padded on the LEFT, so the last
position is the answer position in every row. ``position_ids`` are counted from each
row's first real token (as ``generate`` does), so a padded row computes what it would
alone; ``token_type_ids`` (image-token marks, which Gemma 3 needs for its bidirectional
image attention) are passed through.

**Margin.** PSF-Med (arXiv 2602.21428) defines the margin as logit(yes) − logit(no) at
the first answer token. A tokenizer has several tokens that spell each answer ("Yes",
"yes", " yes", ...); the variants that are exactly one token are resolved once
(:func:`resolve_answer_tokens`) and the default margin is::

    margin = logsumexp(logits[yes ids]) − logsumexp(logits[no ids])

which is log P(any yes token) − log P(any no token) at that position (the softmax
normaliser cancels), and reduces to PSF-Med's definition when one variant each exists.
``reduce="first"`` uses only the canonical variant of each (the first single-token one
in :func:`answer_variants` order: "Yes", then "yes", ...). Logits are read at the last
position only (``logits_to_keep=1``) and reduced in float32.

**First-token logits.** :meth:`HFYesNoVLM.first_token_logits` returns that position's
logits over the whole vocabulary (``[B, V]``, float32); :meth:`~HFYesNoVLM.margin_from_logits`
reduces them as above and ``answer_ids`` names the canonical (yes, no) tokens, so
consistency training takes the vocabulary cross-entropy (the released MedGemma adapter's
answer loss) and the margins of the KL term from one forward pass.

**Sites.** The language blocks are ``model.model.language_model.layers`` (transformers
5); peft addresses them with ``layers_pattern="language_model.layers"``. Because the
SigLIP tower also has ``q_proj``/``k_proj``/``v_proj``, always pair ``lora_targets`` with
``layers_to_transform`` and ``layers_pattern``, or LoRA reaches the vision tower too.

Images are PIL images or ``uint8`` arrays: a list of ``[H, W]`` (grey) / ``[H, W, 3]``
images, or one stacked ``[B, H, W]`` / ``[B, H, W, 3]`` array (or tensor).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch import nn

from mechtune.errors import ConfigError, DataError, UnsupportedModelError
from mechtune.models.sites import site_for_class

MEDGEMMA_4B_ID = "google/medgemma-4b-it"
DEFAULT_INSTRUCTION = "Answer yes or no."
GEMMA_LORA = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

MarginReduce = Literal["logsumexp", "first"]
REDUCES: tuple[str, ...] = ("logsumexp", "first")


# -- sites ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VLMSite:
    """Where a VLM class keeps its language blocks."""

    layers: str  # dotted path of the block ModuleList from the model
    layers_pattern: str  # peft's ``layers_pattern`` for those blocks (not the vision tower's)
    lora_targets: tuple[str, ...]  # linear layers inside a block that LoRA adapts
    logits_to_keep: bool = True  # forward accepts ``logits_to_keep``

    def block_list(self, model: nn.Module) -> nn.ModuleList:
        module: Any = model
        for part in self.layers.split("."):
            module = getattr(module, part)
        if not isinstance(module, nn.ModuleList):
            raise UnsupportedModelError(
                f"{self.layers} is a {type(module).__name__}, not a ModuleList"
            )
        return module


VLM_SITES: dict[str, VLMSite] = {
    "Gemma3ForConditionalGeneration": VLMSite(
        "model.language_model.layers", "language_model.layers", GEMMA_LORA
    ),
}


def vlm_site(model: nn.Module) -> VLMSite:
    """The site of a model, by class (walking base classes), or a clear error."""
    site = site_for_class(VLM_SITES, model)
    if site is not None:
        return site
    known = ", ".join(sorted(VLM_SITES))
    raise UnsupportedModelError(
        f"no VLM site for {type(model).__name__}; supported classes: {known} "
        "(or pass site=VLMSite(...))"
    )


# -- answer tokens ----------------------------------------------------------------------------


class AnswerTokenError(ConfigError):
    """No spelling of an answer word is a single token of the tokenizer."""


@dataclass(frozen=True)
class AnswerTokens:
    """The single-token spellings of one answer word, canonical first."""

    word: str
    ids: tuple[int, ...]
    variants: tuple[str, ...]  # the spelling that resolved to each id

    @property
    def canonical(self) -> int:
        return self.ids[0]


def answer_variants(word: str) -> tuple[str, ...]:
    """Case and leading-space spellings of ``word``, canonical first: a chat model's answer
    starts a turn, so "Yes" before "yes", and both before " Yes"."""
    cased = (word.capitalize(), word.lower(), word.upper(), word)
    spellings = (*cased, *(" " + w for w in cased))
    return tuple(dict.fromkeys(spellings))


def resolve_answer_tokens(
    tokenizer: Any, word: str, variants: Sequence[str] | None = None
) -> AnswerTokens:
    """Keep the spellings of ``word`` that encode to exactly one token which decodes back
    to the word (not an unknown or special token). Spellings sharing an id count once."""
    spellings = tuple(variants) if variants is not None else answer_variants(word)
    special = set(tokenizer.all_special_ids)
    found: dict[int, str] = {}
    for spelling in spellings:
        ids = tokenizer.encode(spelling, add_special_tokens=False)
        if len(ids) != 1 or ids[0] in special:
            continue
        decoded = tokenizer.decode(ids, skip_special_tokens=False)
        if decoded.strip().lower() != word.strip().lower():
            continue
        found.setdefault(int(ids[0]), spelling)
    if not found:
        raise AnswerTokenError(
            f"no spelling of {word!r} is a single token of {type(tokenizer).__name__} "
            f"(tried {list(spellings)}); the margin needs one token per answer"
        )
    return AnswerTokens(word, tuple(found), tuple(found.values()))


# -- prompt -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class YesNoPrompt:
    """How a question becomes a chat turn: ``question + " " + instruction`` in the user
    turn after the image, with an optional system turn before it."""

    instruction: str | None = DEFAULT_INSTRUCTION
    system: str | None = None

    def __post_init__(self) -> None:
        for name in ("instruction", "system"):
            value = getattr(self, name)
            if value is not None and not value.strip():
                raise ConfigError(f"{name} must be None or non-blank text, got {value!r}")

    def user_text(self, question: str) -> str:
        question = question.strip()
        return f"{question} {self.instruction.strip()}" if self.instruction else question

    def messages(self, question: str, image: Any = None) -> list[dict[str, Any]]:
        """One conversation; ``image`` is put in the image item when given."""
        image_item: dict[str, Any] = {"type": "image"}
        if image is not None:
            image_item["image"] = image
        user = {
            "role": "user",
            "content": [image_item, {"type": "text", "text": self.user_text(question)}],
        }
        if self.system is None:
            return [user]
        system = {"role": "system", "content": [{"type": "text", "text": self.system}]}
        return [system, user]


# -- images -----------------------------------------------------------------------------------


def _to_pil(image: Any) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    array = np.asarray(image.cpu() if torch.is_tensor(image) else image)
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[-1] != 3)
    ):
        raise DataError(
            f"an image must be a PIL image or uint8 [H, W] / [H, W, 3], "
            f"got {array.dtype} {list(array.shape)}"
        )
    return Image.fromarray(array).convert("RGB")


def as_pil_images(images: Any) -> list[Image.Image]:
    """A batch (list of PIL / uint8 arrays, or a stacked uint8 ``[B, H, W(, 3)]`` array or
    tensor) as a list of RGB PIL images."""
    if isinstance(images, np.ndarray | torch.Tensor):
        if images.ndim not in (3, 4):
            raise DataError(
                f"a stacked image batch must be [B, H, W] or [B, H, W, 3], got {list(images.shape)}"
            )
        return [_to_pil(image) for image in images]
    if isinstance(images, Image.Image):
        raise DataError("images must be a batch: wrap a single PIL image in a list")
    return [_to_pil(image) for image in images]


def _blank(image: Any) -> Any:
    if isinstance(image, Image.Image):
        return Image.new(image.mode, image.size)
    if torch.is_tensor(image):
        return torch.zeros_like(image)
    return np.zeros_like(np.asarray(image))


# -- the adapter ------------------------------------------------------------------------------


class HFYesNoVLM:
    """A transformers image-text-to-text model and its processor as a :class:`YesNoVLM`.

    ``margin`` is differentiable when grad is enabled (LoRA training); callers wrap
    evaluation in ``torch.no_grad()``.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        prompt: YesNoPrompt | None = None,
        reduce: MarginReduce = "logsumexp",
        yes_word: str = "yes",
        no_word: str = "no",
        site: VLMSite | None = None,
    ) -> None:
        if reduce not in REDUCES:
            raise ConfigError(f"reduce must be one of {REDUCES}, got {reduce!r}")
        self.model: Any = model.eval()
        self.processor = processor
        self.prompt = prompt or YesNoPrompt()
        self.reduce: MarginReduce = reduce
        self.site = site or vlm_site(model)
        tokenizer = processor.tokenizer
        if tokenizer.pad_token_id is None:
            raise ConfigError(f"{type(tokenizer).__name__} has no pad token; batches need one")
        self.yes = resolve_answer_tokens(tokenizer, yes_word)
        self.no = resolve_answer_tokens(tokenizer, no_word)
        if set(self.yes.ids) & set(self.no.ids):
            raise AnswerTokenError(f"{yes_word!r} and {no_word!r} share token ids")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        dtype: torch.dtype | str = "auto",
        device: str | torch.device = "cpu",
        trust_remote_code: bool = False,
        prompt: YesNoPrompt | None = None,
        reduce: MarginReduce = "logsumexp",
        yes_word: str = "yes",
        no_word: str = "no",
    ) -> HFYesNoVLM:
        """Model + processor from a local folder or hub id (e.g. :data:`MEDGEMMA_4B_ID`),
        the weights loaded in ``dtype`` (transformers' ``from_pretrained(dtype=...)``) and
        moved to ``device``. Inputs follow the model (:meth:`encode`); margins are float32.

        ``dtype="auto"`` keeps the checkpoint's dtype (bfloat16 for MedGemma);
        ``torch.float32`` is the safe choice on CPU. Specs (``hf:...``) resolve through
        :func:`mechtune.models.vlm_spec.load_yes_no_vlm`.
        """
        from transformers import AutoModelForImageTextToText, AutoProcessor

        name = str(path)
        processor = AutoProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
        model: Any = AutoModelForImageTextToText.from_pretrained(
            name, dtype=dtype, trust_remote_code=trust_remote_code
        )
        model.to(device)
        return cls(
            model, processor, prompt=prompt, reduce=reduce, yes_word=yes_word, no_word=no_word
        )

    # -- YesNoVLM -----------------------------------------------------------------------------

    @property
    def layers(self) -> nn.ModuleList:
        return self.site.block_list(self.model)

    @property
    def layers_pattern(self) -> str:
        return self.site.layers_pattern

    @property
    def lora_targets(self) -> tuple[str, ...]:
        return self.site.lora_targets

    @property
    def module(self) -> nn.Module:
        return self.model

    def margin(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B]`` yes-minus-no margin (float32) at the answer position; see the module
        docstring for the reduction over spellings."""
        return self.margin_from_logits(self.first_token_logits(images, questions))

    def first_token_logits(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, V]`` float32 next-token logits at the answer position over the whole
        vocabulary (``V`` = the language model's output size, 262,208 for MedGemma-4B);
        differentiable when grad is enabled. An empty batch gives ``[0, V]``."""
        if len(questions) == 0:
            vocab = self.model.get_output_embeddings().weight.shape[0]
            return torch.zeros(0, vocab, device=self.device)
        return self.last_logits(images, questions)

    @property
    def answer_ids(self) -> tuple[int, int]:
        """The canonical (yes, no) token ids: the first single-token spelling of each
        (:func:`answer_variants` order, "Yes" before "yes"), the tokens the vocabulary
        cross-entropy of consistency training aims at."""
        return self.yes.canonical, self.no.canonical

    def margin_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` first-token logits -> ``[B]`` float32 margin, reduced over the
        spellings as ``reduce`` says (module docstring)."""
        pair = self.answer_from_logits(logits)
        return pair[:, 0] - pair[:, 1]

    def answer_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, V]`` -> ``[B, 2]`` (yes, no) logits, each reduced over its spellings:
        the canonical token's logit (``reduce="first"``) or the logsumexp over every
        single-token spelling."""
        logits = logits.float()
        if self.reduce == "first":
            return logits[:, list(self.answer_ids)]
        yes = logits[:, list(self.yes.ids)].logsumexp(-1)
        no = logits[:, list(self.no.ids)].logsumexp(-1)
        return torch.stack([yes, no], dim=-1)

    def readout_positions(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, T]`` bool, True only at the last (answer) position; ``T`` is the padded
        length of this batch."""
        if len(questions) == 0:
            return torch.zeros(0, 0, dtype=torch.bool)
        ids = self.encode(images, questions)["input_ids"]
        mask = torch.zeros(ids.shape, dtype=torch.bool)
        mask[:, -1] = True
        return mask

    def blank_images(self, images: Any) -> Any:
        """Black images of the same sizes, in the same container: a stacked array or
        tensor stays one, a list or tuple holds blanks of each item's type."""
        if isinstance(images, np.ndarray):
            return np.zeros_like(images)
        if torch.is_tensor(images):
            return torch.zeros_like(images)
        if isinstance(images, tuple):
            return tuple(_blank(image) for image in images)
        return [_blank(image) for image in images]

    @property
    def image_mode(self) -> str:
        """RGB: the processor of an image-text-to-text model takes colour images."""
        return "RGB"

    def prepare_images(self, images: Sequence[Any]) -> list[Any]:
        """The images as a list, unchanged: the processor resizes and normalises each batch
        (:meth:`encode`), so nothing is computed ahead."""
        return list(images)

    @property
    def states_depend_on_image(self) -> bool:
        """True: the language blocks attend to the image tokens."""
        return True

    # -- forward ------------------------------------------------------------------------------

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prompts(self, questions: Sequence[str]) -> list[str]:
        """The chat-template text of each question, ending with the generation prompt."""
        conversations = [self.prompt.messages(q) for q in questions]
        texts = self.processor.apply_chat_template(
            conversations, add_generation_prompt=True, tokenize=False
        )
        return [texts] if isinstance(texts, str) else list(texts)

    def encode(self, images: Any, questions: Sequence[str]) -> dict[str, torch.Tensor]:
        """Processor outputs for the batch, left-padded, on the model's device:
        ``input_ids``/``attention_mask``/``token_type_ids [B, T]``, ``pixel_values``."""
        pil = as_pil_images(images)
        if len(pil) != len(questions):
            raise DataError(f"{len(pil)} images but {len(questions)} questions")
        if not pil:
            raise DataError("empty batch")
        inputs = self.processor(
            text=self.prompts(questions),
            images=[[image] for image in pil],
            padding=True,
            padding_side="left",
            add_special_tokens=False,  # the chat template already starts with BOS
            return_tensors="pt",
        )
        dtype = self.model.dtype
        out: dict[str, torch.Tensor] = {}
        for key, value in inputs.items():
            if not torch.is_tensor(value):
                continue
            value = value.to(self.device)
            out[key] = value.to(dtype) if value.is_floating_point() else value
        return out

    def last_logits(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, V]`` float32 next-token logits at the answer position."""
        inputs: dict[str, Any] = dict(self.encode(images, questions))
        mask = inputs["attention_mask"]
        inputs["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
        if self.site.logits_to_keep:
            inputs["logits_to_keep"] = 1
        output = self.model(**inputs, use_cache=False)
        return output.logits[:, -1].float()

    def answer_logits(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, 2]`` (yes, no) answer logits, each reduced over its spellings."""
        return self.answer_from_logits(self.first_token_logits(images, questions))


__all__ = [
    "DEFAULT_INSTRUCTION",
    "GEMMA_LORA",
    "MEDGEMMA_4B_ID",
    "VLM_SITES",
    "AnswerTokenError",
    "AnswerTokens",
    "HFYesNoVLM",
    "VLMSite",
    "YesNoPrompt",
    "answer_variants",
    "as_pil_images",
    "resolve_answer_tokens",
    "vlm_site",
]
