"""Causal tracing of negation in a dual encoder's text tower (NAST, arXiv 2602.12498).

For a length-matched pair (correct text, foil text) and an image embedding, S is the
image-text cosine similarity. Recording the foil's hidden states, then running the correct
text with its state at (layer l, position p) replaced by the foil's gives S^{l,p}, and

    CTE(l, p) = (S_corr - S^{l,p}) / (S_corr - S_foil).

Layer 0 is the embedding output; layer l is the output of block l-1. (NAST's released code
reports d*/d = 1 - CTE; we report CTE.) 1 means the patch alone moves the score all the way
to the foil's; 0 means it changes nothing.

Positions are those whose state can reach the text embedding
(``DualEncoder.traced_positions``): the real tokens (attention mask 1) and the positions
the model pools. Padding, such as open_clip's fixed-length padding to 256, is never
patched, except where the model reads it: SigLIP pools the last column of text padded to
64 tokens, a padding token, which is therefore traced. Pairs are length-matched by their
traced lengths. Scores are the model's own text embedding, pooled where the model pools
(``DualEncoder.pooling``): at the last layer only the pooled positions can move the
embedding, so only they are patched there (the others keep the clean score, exactly).

Hidden states stay in the model's dtype (bf16 when loaded so); embeddings are upcast to
float32 before they are normalised and scored (:mod:`mechtune.models.precision`), so
S and every CTE ratio are float32 (float64 for a float64 model).

``trace_scores`` is fast: per group of equal-length pairs it runs the clean and foil texts
once, then for each layer l one batched pass of blocks l..L-1 over every (pair, position)
patch, re-using the clean prefix. ``trace_scores_reference`` is the plain loop (one full
forward per (l, p), as the NAST code does); tests hold the two equal.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mechtune.errors import DataError
from mechtune.models.dual_encoder import DualEncoder


class TraceError(DataError):
    """Bad tracing input: length-mismatched pair, bad layer or image index."""


@dataclass(frozen=True)
class TracePair:
    """A correct text, its foil (same token length), and the row of its image embedding.

    ``roles`` names each token position (specials included), when known.
    """

    correct: str
    foil: str
    image: int
    roles: tuple[str, ...] | None = None
    family: str = ""
    condition: str = ""
    orientation: str = "negation_in_foil"


@dataclass
class PairScores:
    """Raw scores of one pair: ``patched[l, k]`` is S^{l,p} at the k-th real token."""

    s_correct: float
    s_foil: float
    patched: torch.Tensor  # [L+1, T_real]
    tokens: list[str]  # the real tokens' strings (for reports)

    @property
    def cte(self) -> torch.Tensor:
        return (self.s_correct - self.patched) / (self.s_correct - self.s_foil)


def _check_pair(
    encoder: DualEncoder,
    pair: TracePair,
    n_images: int,
    tok_c: dict[str, torch.Tensor],
    tok_f: dict[str, torch.Tensor],
) -> None:
    if not 0 <= pair.image < n_images:
        raise TraceError(
            f"pair {pair.correct!r}: image index {pair.image} out of range [0, {n_images})"
        )
    mask_c, mask_f = encoder.traced_positions(tok_c), encoder.traced_positions(tok_f)
    if mask_c.shape != mask_f.shape or not torch.equal(mask_c, mask_f):
        raise TraceError(
            f"pair {pair.correct!r} / {pair.foil!r}: token lengths differ "
            f"({int(mask_c.sum())} vs {int(mask_f.sum())} real tokens); causal tracing "
            "needs length-matched pairs"
        )


def token_length(encoder: DualEncoder, text: str) -> int:
    """Traced token length: the number of positions tracing patches (the real tokens,
    plus a pooled padding position where the model reads one), not the padded width."""
    return int(encoder.traced_positions(encoder.tokenize([text])).sum())


def _groups(
    encoder: DualEncoder, pairs: Sequence[TracePair], batch_pairs: int
) -> Iterator[list[int]]:
    """Indices of pairs grouped by token length, in chunks of ``batch_pairs``."""
    by_length: dict[int, list[int]] = {}
    for i, pair in enumerate(pairs):
        by_length.setdefault(token_length(encoder, pair.correct), []).append(i)
    for length in sorted(by_length):
        group = by_length[length]
        for lo in range(0, len(group), batch_pairs):
            yield group[lo : lo + batch_pairs]


@torch.no_grad()
def trace_scores(
    encoder: DualEncoder,
    pairs: Sequence[TracePair],
    images: torch.Tensor,
    *,
    batch_pairs: int = 16,
    layers: Sequence[int] | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[PairScores]:
    """S_corr, S_foil and S^{l,p} for every pair, batched with clean-prefix reuse.

    ``images``: ``[N, D]`` normalised image embeddings; ``layers``: which l in 0..L to
    patch (default all; others are NaN). ``patched`` has one column per real token
    (attention mask 1), in order. The patched *text* embeddings do not depend on
    the image, so each distinct (correct, foil) text pair is traced once and scored
    against every image it comes with. ``progress`` is called with the number of distinct
    text pairs done after each group. Returns one ``PairScores`` per pair, in order.
    """
    n_layers = len(encoder.text_layers)
    wanted = _layers(layers, n_layers)
    for pair in pairs:
        _check_pair(
            encoder,
            pair,
            len(images),
            encoder.tokenize([pair.correct]),
            encoder.tokenize([pair.foil]),
        )
    texts: dict[tuple[str, str], int] = {}
    for pair in pairs:
        texts.setdefault((pair.correct, pair.foil), len(texts))
    distinct = [TracePair(c, f, 0) for c, f in texts]
    traced: list[_TracedText | None] = [None] * len(distinct)
    for idx in _groups(encoder, distinct, batch_pairs):
        for i, item in zip(
            idx, _trace_texts(encoder, [distinct[i] for i in idx], wanted), strict=True
        ):
            traced[i] = item
        if progress is not None:
            progress(len(idx))
    out = []
    for pair in pairs:
        entry = traced[texts[(pair.correct, pair.foil)]]
        assert entry is not None
        img = images[pair.image].to(device=entry.correct.device, dtype=entry.correct.dtype)
        patched = (entry.patched @ img).cpu()  # [L+1, T]
        out.append(
            PairScores(float(entry.correct @ img), float(entry.foil @ img), patched, entry.tokens)
        )
    return out


@dataclass
class _TracedText:
    """Text embeddings of one (correct, foil) pair: clean, foil, and every patch."""

    correct: torch.Tensor  # [D]
    foil: torch.Tensor  # [D]
    patched: torch.Tensor  # [L+1, T, D] (NaN for layers not traced)
    tokens: list[str]


def _trace_texts(
    encoder: DualEncoder, group: list[TracePair], wanted: list[int]
) -> list[_TracedText]:
    """Patched text embeddings for a group of pairs with the same real-token layout."""
    n_layers = len(encoder.text_layers)
    tok_c = encoder.tokenize([p.correct for p in group])
    tok_f = encoder.tokenize([p.foil for p in group])
    mask = encoder.traced_positions(tok_c)
    if not (torch.equal(encoder.traced_positions(tok_f), mask) and (mask == mask[:1]).all()):
        raise TraceError("a group of equal-length pairs tokenised to different masks")
    device = mask.device
    real = torch.nonzero(mask[0]).view(-1)  # [R] input columns of the traced tokens
    clean, call = encoder.capture(tok_c)
    foil, _ = encoder.capture(tok_f)
    e_corr = encoder.head(clean[-1], tok_c)
    e_foil = encoder.head(foil[-1], tok_f)
    n, r = len(group), len(real)
    rows = torch.arange(n, device=device).repeat_interleave(r)  # patch j: pair rows[j] ...
    slot = torch.arange(r, device=device).repeat(n)  # ... and its traced token slot[j]
    pos = real[slot]  # ... at input column pos[j]
    patched = torch.full(
        (n, n_layers + 1, r, e_corr.shape[1]), float("nan"), dtype=e_corr.dtype, device=device
    )
    # At the embedding output, a position whose token is the same in both texts has the
    # same state: patching it changes nothing, so its patched embedding is the clean one.
    same_token = (tok_c["input_ids"] == tok_f["input_ids"])[rows, pos]
    # After the last block only the positions the model pools reach the embedding.
    pooled = encoder.pooled_positions(tok_c)[rows, pos]
    for layer in wanted:
        if layer == 0:
            todo = torch.nonzero(~same_token).view(-1)
        elif layer == n_layers:
            todo = torch.nonzero(pooled).view(-1)
        else:
            todo = torch.arange(n * r, device=device)
        if layer == 0 or layer == n_layers:
            patched[:, layer] = e_corr[:, None, :]
        if len(todo) == 0:
            continue
        sub_rows, sub_pos = rows[todo], pos[todo]
        x = clean[layer].index_select(0, sub_rows).clone()
        x[torch.arange(len(todo), device=device), sub_pos] = foil[layer][sub_rows, sub_pos]
        h = encoder.run_layers(x, layer, call, sub_rows)
        sub_tokens = {k: v.index_select(0, sub_rows) for k, v in tok_c.items()}
        patched[sub_rows, layer, slot[todo]] = encoder.head(h, sub_tokens)
    ids = tok_c["input_ids"][:, real].cpu()
    return [
        _TracedText(e_corr[j], e_foil[j], patched[j], encoder.token_strings(ids[j].tolist()))
        for j in range(n)
    ]


def _layers(layers: Sequence[int] | None, n_layers: int) -> list[int]:
    wanted = list(range(n_layers + 1)) if layers is None else list(layers)
    for layer in wanted:
        if not 0 <= layer <= n_layers:
            raise TraceError(
                f"layer {layer} out of range: this text tower has layers 0..{n_layers} "
                "(0 = embedding output)"
            )
    return wanted


@contextlib.contextmanager
def patch_state(
    encoder: DualEncoder,
    layer: int,
    position: int,
    value: torch.Tensor,
    rows: Sequence[int] | None = None,
) -> Iterator[None]:
    """Within the block, replace hidden state (layer, position) by ``value`` ``[B, H]``
    (only in batch ``rows``, when given). The hook is removed on exit, even after an error.
    """
    sel = slice(None) if rows is None else list(rows)
    layers = encoder.text_layers
    n = len(layers)
    _layers([layer], n)

    def pre(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
        h = args[0].clone()
        h[sel, position] = value[sel]
        return (h, *args[1:]), kwargs

    def post(module: nn.Module, args: tuple, output: object) -> object:
        h = output[0] if isinstance(output, tuple) else output
        h = h.clone()  # type: ignore[union-attr]
        h[sel, position] = value[sel]
        return (h, *output[1:]) if isinstance(output, tuple) else h

    handle = (
        layers[layer].register_forward_pre_hook(pre, with_kwargs=True)
        if layer < n
        else layers[n - 1].register_forward_hook(post)
    )
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def trace_scores_reference(
    encoder: DualEncoder,
    pairs: Sequence[TracePair],
    images: torch.Tensor,
    raw_images: object | None = None,
) -> list[PairScores]:
    """The plain loop: one full forward pass per (layer, real-token position).

    With ``raw_images`` (indexable by ``pair.image``) each pass is what the NAST code runs:
    the image encoder plus the text tower on (correct, foil); without, only the text
    tower on the correct text, against the cached ``images`` embeddings.
    """
    n_layers = len(encoder.text_layers)
    out = []
    for pair in pairs:
        tok_c, tok_f = encoder.tokenize([pair.correct]), encoder.tokenize([pair.foil])
        _check_pair(encoder, pair, len(images), tok_c, tok_f)
        both = encoder.tokenize([pair.correct, pair.foil])
        foil, _ = encoder.capture(tok_f)
        image = images[pair.image].to(encoder.device)
        s_corr = float(encoder.encode_tokens(tok_c)[0] @ image)
        s_foil = float(encoder.encode_tokens(tok_f)[0] @ image)
        real = torch.nonzero(encoder.traced_positions(tok_c)[0]).view(-1).tolist()
        patched = torch.empty(n_layers + 1, len(real), dtype=images.dtype)
        for layer in range(n_layers + 1):
            for k, p in enumerate(real):
                if raw_images is None:
                    with patch_state(encoder, layer, p, foil[layer][:, p]):
                        patched[layer, k] = encoder.encode_tokens(tok_c)[0] @ image
                    continue
                img = encoder.encode_images(raw_images[pair.image : pair.image + 1])[0]  # type: ignore[index]
                img = img.to(device=encoder.device, dtype=image.dtype)
                value = torch.stack([foil[layer][0, p], foil[layer][0, p]])
                with patch_state(encoder, layer, p, value, rows=[0]):
                    patched[layer, k] = encoder.encode_tokens(both)[0] @ img
        tokens = encoder.token_strings(tok_c["input_ids"][0, real].tolist())
        out.append(PairScores(s_corr, s_foil, patched, tokens))
    return out
