"""Training on CUDA: no step copies anything back to the host until the flush, and bf16
autocast trains (issue 15). Skipped without a CUDA device.

The device-to-host copies are read from the PyTorch profiler's CUDA activity ("Memcpy
DtoH" records), the issue's "the PyTorch profiler shows it on the GPU".
``torch.cuda.set_sync_debug_mode`` cannot tell them apart: it also flags every copy of
pageable host memory *to* the device (pytorch#120996), which each step makes for its token
ids, and which the issue does not count. The CPU counterpart, with every read located, is
``tests/train/test_host_sync.py``.

The tiny CLIP runs with eager attention here: transformers' SDPA path reads the padding
mask once or twice per forward to decide whether it may drop the causal mask
(``tests.host_sync.KNOWN_LIBRARY_SYNCS``), a read of the library, not of mechtune.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _trainer(tmp_path, attention: str, **kw):
    from mechtune.models.spec import load_dual_encoder
    from mechtune.train.lora import LoraSettings, lora_parameters
    from mechtune.train.methods import NegationData, negation_trainer
    from mechtune.train.negation import LoopConfig
    from tests.tiny_models import tiny_clip
    from tests.train.test_trainer import CAPTIONS, CLAIMS, _images

    enc = load_dual_encoder(f"hf:{tiny_clip(tmp_path / 'clip')}", device="cuda")
    torch.manual_seed(0)
    settings = dict(steps=4, caption_batch=4, claim_batch=4, lr=1e-2, checkpoint_every=4)
    config = LoopConfig(shards=2, lora=LoraSettings(rank=2, alpha=4), **{**settings, **kw})
    data = NegationData(CAPTIONS, CLAIMS)
    trainer = negation_trainer(
        "nast", enc, _images(), data, [0.2, 1.0, 0.5], config, tmp_path / "run"
    )
    for _, p in lora_parameters(trainer.model).values():
        torch.nn.init.normal_(p, std=0.05)
    trainer.model.set_attn_implementation(attention)
    return trainer


@contextmanager
def _profiled():
    """The CUDA activity of the block: yields a list filled with the event names on exit."""
    from torch.profiler import ProfilerActivity, profile

    names: list[str] = []
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        yield names
        torch.cuda.synchronize()
    names.extend(e.name for e in prof.events())


def _copies(names: list[str], direction: str) -> int:
    """Memcpy records of ``direction`` ("DtoH" or "HtoD")."""
    return sum(1 for n in names if "memcpy" in n.lower() and direction.lower() in n.lower())


def test_steps_copy_nothing_back_until_the_flush_on_cuda(tmp_path) -> None:
    """Three bf16-autocast steps of two shards: no DtoH copy (the profiler does see the
    HtoD copies of the token ids, so it is recording copies); the flush: exactly one."""
    trainer = _trainer(tmp_path, "eager")
    trainer.model.train()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        trainer.train_step()  # warm-up outside the profile: lazy CUDA and cuBLAS set-up
        torch.cuda.synchronize()
        with _profiled() as steps:
            returned = [trainer.train_step() for _ in range(3)]
    with _profiled() as flush:
        records = trainer.flush()
    assert _copies(steps, "HtoD") > 0, "the profiler recorded no copies at all"
    assert _copies(steps, "DtoH") == 0, [n for n in steps if "DtoH" in n]
    assert _copies(flush, "DtoH") == 1, [n for n in flush if "DtoH" in n]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    for record, terms in zip(records[1:], returned, strict=True):
        assert all(t.device.type == "cuda" for t in terms.values())
        assert all(record[k] == float(v) for k, v in terms.items())
        assert all(math.isfinite(v) for v in record.values())


def test_bf16_autocast_trains_on_cuda(tmp_path) -> None:
    """fit under bf16 autocast (default SDPA attention): the text tower's linear layers
    compute in bf16, the LoRA weights stay float32 on the device and move, the logged
    terms are finite, and the checkpoint is written."""
    trainer = _trainer(tmp_path, "sdpa")
    start = {n: p.detach().clone() for n, (_, p) in trainer.params.items()}
    dtypes: set[torch.dtype] = set()
    linears = [
        m
        for name, m in trainer.model.named_modules()
        if isinstance(m, torch.nn.Linear) and "text_model" in name
    ]
    assert linears
    handles = [m.register_forward_hook(lambda _m, _i, out: dtypes.add(out.dtype)) for m in linears]
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            history = trainer.fit()
    finally:
        for h in handles:
            h.remove()
    assert torch.bfloat16 in dtypes
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    assert all(math.isfinite(v) for h in history for v in h.values())
    for name, (_, p) in trainer.params.items():
        assert p.dtype == torch.float32 and p.device.type == "cuda", name
    assert any(not torch.equal(p.detach(), start[n]) for n, (_, p) in trainer.params.items())
    assert [p.name for p in trainer.checkpoints()] == ["step_000004"]


def test_tracked_steps_add_no_copy_back_on_cuda(tmp_path) -> None:
    """With a TensorBoard tracker the blocks' gradient norms are computed on the GPU and
    ride in the flush's one DtoH copy: still none in the steps, exactly one at the flush,
    and the tracker gets every step's norms."""
    from mechtune.train.tracking import Tracker
    from tests.train.test_tracking import scalars

    trainer = _trainer(tmp_path, "eager")
    tracker = Tracker("tensorboard", tmp_path / "tb")
    trainer.tracker = tracker
    trainer.model.train()
    with tracker.session("run", trainer.settings.to_dict()):
        trainer.train_step()  # warm-up outside the profile
        torch.cuda.synchronize()
        with _profiled() as steps:
            for _ in range(3):
                trainer.train_step()
        with _profiled() as flush:
            trainer.flush()
    assert _copies(steps, "DtoH") == 0, [n for n in steps if "DtoH" in n]
    assert _copies(flush, "DtoH") == 1, [n for n in flush if "DtoH" in n]
    logged = scalars(tmp_path / "tb" / "run")
    assert [s for s, _ in logged["grad_norm/block_1"]] == [1, 2, 3, 4]
    assert all(math.isfinite(v) and v > 0 for _, v in logged["grad_norm/block_0"])
