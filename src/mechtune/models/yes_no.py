"""The yes/no VLM interface: what paraphrase measurement, SAE analysis and training need.

A yes/no model answers a question about an image. Everything downstream reads one number
per (image, question): the **margin**, logit(yes) − logit(no) at the first answer token
(PSF-Med's definition). Positive means "yes".

Adapters (the phantom VQA model in ``mechtune.sim.vqa``, Hugging Face image-text-to-text
models in ``mechtune.models.hf_vqa``) implement :class:`YesNoVLM`:

- ``margin(images, questions)``: ``[B]`` margins, differentiable when grad is enabled;
- ``first_token_logits(images, questions)``: ``[B, V]`` float32 next-token logits at the
  first answer position over the model's whole answer vocabulary (``V`` tokens: the
  language model's vocabulary for a generative VLM, the 2-way answer head for a
  classifier), differentiable when grad is enabled; ``answer_ids``: the canonical
  (yes, no) token ids in that vocabulary; ``margin_from_logits(logits)``: the margin
  from those logits, so ``margin(x, q) == margin_from_logits(first_token_logits(x, q))``
  and a trainer gets the answer cross-entropy over the vocabulary and the margins from
  ONE forward pass;
- ``layers``: the language-model blocks, in order (hooks, SAEs, LoRA);
- ``layers_pattern`` / ``lora_targets``: what peft needs to put LoRA on those blocks only;
- ``readout_positions(images, questions)``: ``[B, T]`` bool, the token positions whose
  residual states the SAE analysis reads and patches (the last position for a decoder, all
  real question tokens for a mean-pooled encoder);
- ``blank_images(images)``: the same batch with every image blanked (text-only agreement);
- ``image_mode``: ``"L"`` or ``"RGB"``, the pixels the model wants from an image-study
  source (:meth:`mechtune.data.sources.base.ImageStudySource.load_image`);
- ``prepare_images(images)``: decoded ``uint8`` images, one per row, to the batch that
  ``margin`` takes by row (the phantom VQA embeds them once, its image tower being frozen;
  a Hugging Face model keeps the arrays, its processor reads them per batch);
- ``states_depend_on_image``: whether the residual states at question positions change
  with the image (False for a question encoder that never sees it, so SAE training reads
  each distinct text once).

Block outputs follow the transformers convention: a tensor ``[B, T, d]`` or a tuple whose
first item is. :func:`edit_block_output` rewrites them inside a context manager, so no hook
outlives an error.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn


def take_rows(images: Any, rows: Sequence[int]) -> Any:
    """Rows of an image batch in its own container: a tensor or array is indexed, a list or
    tuple is picked from (so PIL images and precomputed embeddings both work)."""
    if isinstance(images, list | tuple):
        return [images[i] for i in rows]
    return images[list(rows)]


@runtime_checkable
class YesNoVLM(Protocol):
    """A model that answers yes/no questions about images."""

    @property
    def layers(self) -> nn.ModuleList:
        """The language-model blocks, input to output."""
        ...

    @property
    def layers_pattern(self) -> str:
        """Dotted path of the block list inside ``module`` (peft's ``layers_pattern``)."""
        ...

    @property
    def lora_targets(self) -> tuple[str, ...]:
        """Linear-layer names inside a block that LoRA may adapt."""
        ...

    @property
    def module(self) -> nn.Module:
        """The trainable ``nn.Module`` (what peft wraps)."""
        ...

    def margin(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B]`` logit(yes) − logit(no) for each (image, question) pair."""
        ...

    def first_token_logits(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, V]`` float32 next-token logits at the first answer position."""
        ...

    @property
    def answer_ids(self) -> tuple[int, int]:
        """The canonical (yes, no) token ids, columns of :meth:`first_token_logits`."""
        ...

    def margin_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``[B, V] -> [B]``: the margin :meth:`margin` gives, from those logits."""
        ...

    def readout_positions(self, images: Any, questions: Sequence[str]) -> torch.Tensor:
        """``[B, T]`` bool mask of the positions the SAE analysis reads."""
        ...

    def blank_images(self, images: Any) -> Any:
        """The same batch with each image replaced by a blank one."""
        ...

    @property
    def image_mode(self) -> str:
        """``"L"`` (8-bit grey) or ``"RGB"``: the pixels to load for this model."""
        ...

    def prepare_images(self, images: Sequence[Any]) -> Any:
        """``uint8`` images (``[H, W]`` or ``[H, W, 3]``, one per row, sizes may differ) to
        the image batch ``margin`` takes by row (:func:`take_rows`)."""
        ...

    @property
    def states_depend_on_image(self) -> bool:
        """Whether block outputs at the question positions depend on the image."""
        ...


def block_state(output: Any) -> torch.Tensor:
    """A block's residual state: the output itself, or its first item when a tuple."""
    return output[0] if isinstance(output, tuple) else output


@contextlib.contextmanager
def edit_block_output(
    block: nn.Module, edit: Callable[[torch.Tensor], torch.Tensor | None]
) -> Iterator[None]:
    """Run ``edit`` on ``block``'s output state ``[B, T, d]`` while the context is open.

    ``edit`` returns a replacement state, or None to leave it (a read-only capture).
    """

    def hook(_module: nn.Module, _inputs: Any, output: Any) -> Any:
        new = edit(block_state(output))
        if new is None:
            return None
        if isinstance(output, tuple):
            return (new, *output[1:])
        return new

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def capture_block_outputs(
    model: YesNoVLM, layer_ids: Sequence[int]
) -> Iterator[dict[int, torch.Tensor]]:
    """Collect ``{layer: [B, T, d]}`` block outputs (detached) during forward passes in the
    context. A later forward pass overwrites the earlier one's entries."""
    store: dict[int, torch.Tensor] = {}
    with contextlib.ExitStack() as stack:
        for index in layer_ids:

            def keep(state: torch.Tensor, index: int = index) -> None:
                store[index] = state.detach()

            stack.enter_context(edit_block_output(model.layers[index], keep))
        yield store


_LAYER_NUMBER = re.compile(r"\.(\d+)\.")


def layer_of_parameter(name: str, layers_pattern: str) -> int | None:
    """The block index in a parameter name such as
    ``base_model.model.language_model.layers.7.self_attn.q_proj.lora_A.default.weight``
    (``layers_pattern="language_model.layers"``), or None outside the blocks."""
    marker = layers_pattern + "."
    at = name.find(marker)
    if at < 0:
        return None
    match = _LAYER_NUMBER.match(name, at + len(marker) - 1)
    return int(match.group(1)) if match else None
