"""No training step reads the device back: the logged loss terms reach the host once per
logging interval (issue 15). Counted on CPU with a fake device (:mod:`tests.host_sync`):
the model's parameters and buffers, and every tensor computed from them or moved to the
model's device, count as device tensors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mechtune.models.spec import load_dual_encoder
from mechtune.models.vlm_spec import load_yes_no_vlm
from mechtune.train.consistency import ConsistencyConfig
from mechtune.train.lora import LoraSettings, lora_parameters
from mechtune.train.methods import NegationData, negation_trainer, paraphrase_trainer
from mechtune.train.negation import LoopConfig
from mechtune.train.trainer import Trainer
from tests.host_sync import HostSyncCounter, library_site, unlisted
from tests.tiny_gemma import tiny_gemma
from tests.tiny_models import tiny_clip
from tests.train.test_consistency_hf import EXAMPLES
from tests.train.test_consistency_hf import _images as gemma_images
from tests.train.test_trainer import CAPTIONS, CLAIMS, _images


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


@pytest.fixture(scope="module")
def gemma_dir(tmp_path_factory):
    return tiny_gemma(tmp_path_factory.mktemp("gemma"))


def _negation(folder, out, method="nast", attention="eager", **kw) -> Trainer:
    """A negation trainer on the tiny CLIP (by default 2 shards), claim sets of 2 and 3 candidates
    (so the candidate tensor is padded). ``attention="eager"`` keeps transformers' SDPA
    mask check out of the count (see test_with_sdpa_...)."""
    enc = load_dual_encoder(f"hf:{folder}")
    torch.manual_seed(0)
    settings = dict(steps=3, caption_batch=4, claim_batch=4, lr=1e-2, checkpoint_every=3, shards=2)
    config = LoopConfig(lora=LoraSettings(rank=2, alpha=4), **{**settings, **kw})
    data = NegationData(CAPTIONS, CLAIMS)
    trainer = negation_trainer(method, enc, _images(), data, [0.2, 1.0, 0.5], config, out)
    for _, p in lora_parameters(trainer.model).values():
        torch.nn.init.normal_(p, std=0.05)
    trainer.model.set_attn_implementation(attention)
    return trainer


def _shown(counter: HostSyncCounter) -> list[str]:
    return [str(t) for t in counter.transfers]


def test_the_counter_counts_each_kind_of_device_read() -> None:
    """The negative control: every kind of read the module docstring lists is counted on
    a device tensor, none on a host tensor, and host-to-device moves make device tensors."""
    weight = torch.nn.Parameter(torch.tensor([0.5, -1.0, 2.0]))
    counter = HostSyncCounter([weight])
    with counter:
        x = (weight * 2).detach()  # computed on the device
        x.sum().item()
        float(x[0])
        if x[1] > 0:  # a tensor in a Python condition
            pass
        x[x > 0]  # boolean-mask indexing
        torch.nonzero(x)
        x.tolist()
        x.cpu()
        np.asarray(x)
        x.to("cpu")
    assert counter.kinds() == [
        "aten._local_scalar_dense.default",
        "aten._local_scalar_dense.default",
        "aten._local_scalar_dense.default",
        "aten.index.Tensor with a boolean mask",
        "aten.nonzero.default (data-dependent shape)",
        "Tensor.tolist()",
        "Tensor.cpu()",
        "Tensor.numpy()",
        'Tensor.to("cpu")',
    ]
    assert all(t.where().split("/")[-1].startswith("test_host_sync.py:") for t in counter.transfers)

    counter.reset()
    host = torch.tensor([1.0, -2.0, 3.0])
    with counter:
        host.sum().item()
        host[host > 0]
        torch.randint(3, (2,), generator=torch.Generator().manual_seed(0)).tolist()
        steps = torch.tensor(0.0, device="cpu")  # a host tensor, as the optimiser keeps
        steps.item()
        moved = host.to(weight.device)  # host -> device: not a read
        made = torch.zeros(2, device=weight.device)
    assert counter.count == 0, _shown(counter)
    with counter:
        moved.sum().item()
        made.tolist()
        host.tolist()  # the source of a move stays on the host
    assert counter.kinds() == ["aten._local_scalar_dense.default", "Tensor.tolist()"]


@pytest.mark.parametrize("method", ["nast", "negclip"])
def test_negation_steps_read_nothing_back_until_the_flush(clip_dir, tmp_path, method) -> None:
    """Three steps (two shards each) make no device read at all; the flush makes one (one
    ``tolist`` of the three steps' terms), and its records are the steps' terms, each
    under its name (the loss is its terms' combination)."""
    trainer = _negation(clip_dir, tmp_path / method, method)
    counter = HostSyncCounter([trainer.model])
    returned = []
    for _ in range(3):
        with counter:
            returned.append(trainer.train_step())
        assert counter.count == 0, _shown(counter)
    assert trainer.history == []
    with counter:
        records = trainer.flush()
    assert counter.kinds() == ["Tensor.tolist()"]
    assert counter.transfers[0].where().endswith("flush")
    assert records == trainer.history
    assert [r["step"] for r in records] == [1, 2, 3]
    for record, terms in zip(records, returned, strict=True):
        assert list(record) == ["step", *terms]
        for name, value in terms.items():
            assert record[name] == float(value)
        if method == "nast":  # lam = 0.5
            assert record["loss"] == pytest.approx((record["clip"] + record["claim"]) / 2)
        else:
            both = record["negclip_i2t"] + record["negclip_t2i"]
            assert record["loss"] == pytest.approx(both / 2)
    assert len({r["loss"] for r in records}) == 3  # three different batches, not one copied
    counter.reset()
    with counter:
        assert trainer.flush() == []
    assert counter.count == 0


def test_a_read_inside_a_step_is_counted(clip_dir, tmp_path) -> None:
    """A step that reads the device (a tensor in an ``if``, a boolean-mask selection, as
    NegCLIP once selected its negatives) is counted, once per shard, where it happens."""
    trainer = _negation(clip_dir, tmp_path)
    loss = trainer.task.loss

    def reading(batch):
        terms = loss(batch)
        if terms["loss"] > 1e6:
            raise AssertionError("unreachable")
        batch.candidates[batch.mask]
        return terms

    trainer.task.loss = reading
    counter = HostSyncCounter([trainer.model])
    with counter:
        trainer.train_step()
    assert (
        counter.kinds()
        == [
            "aten._local_scalar_dense.default",
            "aten.index.Tensor with a boolean mask",
        ]
        * 2
    )
    assert all("test_host_sync.py" in t.where() for t in counter.transfers)


def test_with_sdpa_only_transformers_mask_check_reads_back(clip_dir, tmp_path) -> None:
    """With the default SDPA attention, transformers' CLIP text tower reads its padding
    mask once or twice per forward (can the causal mask be dropped?). That read is the
    library's; nothing else in the step reads the device."""
    trainer = _negation(clip_dir, tmp_path, attention="sdpa")
    counter = HostSyncCounter([trainer.model])
    for _ in range(2):
        with counter:
            trainer.train_step()
    assert unlisted(counter.transfers) == [], _shown(counter)
    sites = {library_site(t) for t in counter.transfers}
    assert sites == {"transformers/masking_utils.py:_ignore_causal_mask_sdpa"}


def test_consistency_steps_on_gemma_read_nothing_back_until_the_flush(gemma_dir, tmp_path):
    """consistency-LoRA on the tiny Gemma 3 (1 x 2 accumulation): nothing in mechtune's
    step reads the device; the only reads are Gemma's own image-token count check, two
    per forward. The flush is one transfer."""
    vlm = load_yes_no_vlm(f"hf:{gemma_dir}")
    config = ConsistencyConfig(
        lora=LoraSettings(layers=(1,), rank=2, alpha=4), steps=2, batch_size=1, grad_accum=2
    )
    torch.manual_seed(0)
    trainer = paraphrase_trainer(
        "consistency-lora", vlm, gemma_images(), EXAMPLES, config, tmp_path
    )
    counter = HostSyncCounter([trainer.model])
    returned = []
    for _ in range(2):
        with counter:
            returned.append(trainer.train_step())
    assert unlisted(counter.transfers) == [], _shown(counter)
    sites = [library_site(t) for t in counter.transfers]
    forwards = 2 * 2  # steps x micro-batches
    assert sites == ["transformers/models/gemma3/modeling_gemma3.py:get_placeholder_mask"] * (
        2 * forwards
    )
    counter.reset()
    with counter:
        records = trainer.flush()
    assert counter.kinds() == ["Tensor.tolist()"]
    assert [list(r) for r in records] == [["step", "answer_ce", "symmetric_kl", "loss"]] * 2
    for record, terms in zip(records, returned, strict=True):
        assert all(record[k] == float(v) for k, v in terms.items())


def test_fit_flushes_at_each_checkpoint_and_at_the_end(clip_dir, tmp_path) -> None:
    """fit with checkpoint_every 2 over 5 steps: the terms reach the host at steps 2, 4
    and 5, three transfers in all besides writing the checkpoints; ``on_log`` gets each
    interval's records, which make up the history; each checkpoint holds the history up to
    its step. ``stop_after`` flushes the steps it ran, between checkpoints."""
    small = dict(shards=1, caption_batch=2, claim_batch=2, checkpoint_every=2)
    trainer = _negation(clip_dir, tmp_path / "run", steps=5, **small)
    counter = HostSyncCounter([trainer.model])
    logged: list[list[dict[str, float]]] = []
    with counter:
        history = trainer.fit(on_log=logged.append)
    outside_saves = [
        t
        for t in counter.transfers
        if not any("mechtune/train/checkpoint.py" in f for f in t.stack)
    ]
    assert [t.kind for t in outside_saves] == ["Tensor.tolist()"] * 3, [
        str(t) for t in outside_saves
    ]
    assert [[r["step"] for r in records] for records in logged] == [[1, 2], [3, 4], [5]]
    assert [r for records in logged for r in records] == history
    for name, steps in (("step_000002", [1, 2]), ("step_000004", [1, 2, 3, 4])):
        state = json.loads((tmp_path / "run" / name / "state.json").read_text())
        assert [h["step"] for h in state["history"]] == steps
        assert state["history"] == history[: len(steps)]

    stopped = _negation(clip_dir, tmp_path / "stopped", steps=5, **small)
    logged = []
    stopped.fit(stop_after=1, on_log=logged.append)
    assert [[r["step"] for r in records] for records in logged] == [[1]]
    assert [h["step"] for h in stopped.history] == [1]
    assert stopped.checkpoints() == []


def test_save_and_save_result_write_the_pending_steps(clip_dir, tmp_path) -> None:
    """Steps run outside fit are flushed before a checkpoint or the result is written, so
    the history on disk has every step."""
    trainer = _negation(clip_dir, tmp_path, shards=1, caption_batch=2, claim_batch=2)
    trainer.train_step()
    trainer.train_step()
    folder = trainer.save()
    state = json.loads((folder / "state.json").read_text())
    assert [h["step"] for h in state["history"]] == [1, 2]
    trainer.train_step()
    trainer.save_result("nast")
    result = json.loads((tmp_path / "train.json").read_text())
    assert [h["step"] for h in result["history"]] == [1, 2, 3]
    assert result["history"] == trainer.history


def test_tracking_adds_the_grad_norms_to_the_one_flush_transfer(clip_dir, tmp_path) -> None:
    """With a TensorBoard tracker, steps still read nothing back: each block's gradient
    norm stays on the device with the step's terms, and the flush moves both in its one
    ``tolist``; the tracker gets each step's terms, norms and rates, the history only
    the terms."""
    from mechtune.train.tracking import Tracker
    from tests.train.test_tracking import scalars

    tracker = Tracker("tensorboard", tmp_path / "tb")
    trainer = _negation(clip_dir, tmp_path / "run", scaling="lr")
    trainer.tracker = tracker
    counter = HostSyncCounter([trainer.model])
    with tracker.session("run", trainer.settings.to_dict()):
        for _ in range(3):
            with counter:
                trainer.train_step()
            assert counter.count == 0, _shown(counter)
        with counter:
            records = trainer.flush()
    assert counter.kinds() == ["Tensor.tolist()"]
    assert [list(r) for r in records] == [["step", "clip", "claim", "loss"]] * 3
    logged = scalars(tmp_path / "tb" / "run")
    assert {"grad_norm/block_0", "grad_norm/block_1", "lr/block_0", "lr/block_1"} <= set(logged)
    assert [s for s, _ in logged["grad_norm/block_1"]] == [1, 2, 3]
    assert [v for _, v in logged["train/loss"]] == pytest.approx([r["loss"] for r in records])
