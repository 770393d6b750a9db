"""Tracking while training (mechtune.train.tracking): what the trainer logs to TensorBoard
(read back from its event files) and W&B (read back from the offline run's records), the
per-block rates and gradient norms against hand computations, the periodic read-only
evaluation, and the missing-extra error."""

from __future__ import annotations

import json
import math
import struct
import sys
import time

import numpy as np
import pytest
import torch

from mechtune.errors import ConfigError, MissingExtraError
from mechtune.train.lora import LoraSettings
from mechtune.train.tracking import Tracker, check_report_to, hyperparameters, layer_sessions
from tests.tiny_models import tiny_clip
from tests.train.test_trainer import CAPTIONS, CLAIMS, _images

ALPHA = [0.2, 1.0, 0.5]  # _trainer's: block 0 weighted alpha[1] ** beta, block 1 alpha[2] ** beta


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return tiny_clip(tmp_path_factory.mktemp("clip"))


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` of the TensorBoard event files in ``folder``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def f32(value: float) -> float:
    """``value`` as TensorBoard stores a scalar (float32)."""
    return float(np.float32(value))


def _trainer(folder, out, *, tracker=None, evaluate=None, **kw):
    """tests/train/test_trainer.py's tiny-CLIP NAST trainer (2 text blocks, LoRA dropout
    0.1), with a tracker and a validation metric."""
    from mechtune.models.spec import load_dual_encoder
    from mechtune.train.lora import lora_parameters
    from mechtune.train.methods import NegationData, negation_trainer
    from mechtune.train.negation import LoopConfig

    enc = load_dual_encoder(f"hf:{folder}")
    torch.manual_seed(0)
    settings = dict(
        steps=6, caption_batch=3, claim_batch=2, lr=1e-2, checkpoint_every=3,
        lora=LoraSettings(rank=2, alpha=4, dropout=0.1),
    )  # fmt: skip
    config = LoopConfig(**{**settings, **kw})
    data = NegationData(CAPTIONS, CLAIMS)
    trainer = negation_trainer(
        "nast", enc, _images(), data, ALPHA, config, out, tracker=tracker, evaluate=evaluate
    )
    for _, p in lora_parameters(trainer.model).values():
        torch.nn.init.normal_(p, std=0.05)
    return trainer


def tracked(clip_dir, tmp_path, name="run", evaluate=None, **kw):
    """A tiny-CLIP negation trainer that logs to TensorBoard under ``tmp_path/tb``, and
    its tracker."""
    tracker = Tracker("tensorboard", tmp_path / "tb")
    return _trainer(clip_dir, tmp_path / name, tracker=tracker, evaluate=evaluate, **kw), tracker


def _hand_grad_norms(trainer) -> list[list[float]]:
    """Wrap the optimiser step: before each, per trained block, sqrt(sum of squared
    gradient entries) of its trainable parameters, in float64 from the gradients."""
    seen: list[list[float]] = []
    step = trainer.optim.step

    def recorded(*args, **kwargs):
        per_block = {}
        for layer, p in trainer.params.values():
            g = p.grad.detach().double().numpy() if p.grad is not None else np.zeros(1)
            per_block[layer] = per_block.get(layer, 0.0) + float((g**2).sum())
        seen.append([math.sqrt(per_block[b]) for b in sorted(per_block)])
        return step(*args, **kwargs)

    trainer.optim.step = recorded
    return seen


@pytest.mark.parametrize(
    ("scaling", "beta"), [("lr", 1.0), ("gradient", 2.0), ("lr", 0.0)], ids=["lr", "grad", "uni"]
)
def test_tensorboard_events_hold_the_history_rates_and_grad_norms(
    clip_dir, tmp_path, scaling, beta
):
    """Every step's loss terms equal train.json's history; the rates are lr * alpha^beta
    per block (per-block learning rates), lr and alpha^beta (gradient scaling) or lr
    alone (uniform); the gradient norms are the hand-computed norms of each block's
    gradients just before the optimiser step (after the gradient scaling)."""
    trainer, tracker = tracked(
        clip_dir, tmp_path, steps=3, checkpoint_every=2, scaling=scaling, beta=beta
    )
    hand = _hand_grad_norms(trainer)
    with tracker.session("nast/seed0", trainer.settings.to_dict()):
        trainer.fit()
    trainer.save_result("nast")
    history = json.loads((tmp_path / "run" / "train.json").read_text())["history"]
    logged = scalars(tmp_path / "tb" / "nast" / "seed0")
    for term in ("loss", "clip", "claim"):
        assert logged[f"train/{term}"] == [(h["step"], f32(h[term])) for h in history], term
    lr = trainer.settings.lr
    factors = [ALPHA[1] ** beta, ALPHA[2] ** beta]
    if beta == 0:
        rates = {"lr": lr}
    elif scaling == "lr":
        rates = {"lr/block_0": lr * factors[0], "lr/block_1": lr * factors[1]}
    else:
        rates = {"lr": lr, "grad_scale/block_0": factors[0], "grad_scale/block_1": factors[1]}
    norms = {f"grad_norm/block_{b}" for b in (0, 1)}
    assert set(logged) == {"train/loss", "train/clip", "train/claim", *rates, *norms}
    for tag, value in rates.items():
        assert logged[tag] == [(s, f32(value)) for s in (1, 2, 3)], tag
    assert len(hand) == 3
    for b in (0, 1):
        got = logged[f"grad_norm/block_{b}"]
        assert [s for s, _ in got] == [1, 2, 3]
        assert [v for _, v in got] == pytest.approx([h[b] for h in hand], rel=1e-5)
    assert all(v > 0 for h in hand for v in h)


def test_tracking_leaves_the_run_byte_identical(clip_dir, tmp_path):
    """run_method with a TensorBoard tracker (an Accelerator made for tracking in this
    plain process) writes the same adapter and train.json, byte for byte, as without."""
    from mechtune.models.spec import load_dual_encoder
    from mechtune.train.methods import NegationData, run_method
    from mechtune.train.negation import LoopConfig

    config = LoopConfig(
        steps=3, caption_batch=2, claim_batch=2, lr=1e-2, checkpoint_every=2, scaling="lr",
        lora=LoraSettings(rank=2, alpha=4, dropout=0.1),
    )  # fmt: skip
    data = NegationData(CAPTIONS, CLAIMS)
    for name, report_to in (("plain", "none"), ("tracked", "tensorboard")):
        tracker = Tracker(report_to, tmp_path / name / "tb")
        encoder = load_dual_encoder(f"hf:{clip_dir}")
        with tracker.session("nast", config.to_dict()):
            run_method("nast", encoder, _images(), data, ALPHA, config, tmp_path / name,
                       tracker=tracker)  # fmt: skip
    for file in ("adapter/adapter_model.safetensors", "train.json"):
        assert (tmp_path / "plain" / file).read_bytes() == (
            tmp_path / "tracked" / file
        ).read_bytes()
    assert not (tmp_path / "plain" / "tb").exists()
    assert scalars(tmp_path / "tracked" / "tb" / "nast")["train/loss"]


def test_eval_every_evaluates_read_only_and_is_logged(clip_dir, tmp_path):
    """eval_every 2 over 5 steps: evaluations after steps 2 and 4, in eval mode and back
    in train mode after, the random streams untouched (the metric here draws from torch's
    generator, and LoRA dropout 0.1 draws from it while training): the weights and
    history equal those of a run without evaluations. The last evaluation is the claim
    accuracy of the model as it was; train.json and TensorBoard hold the evaluations, and
    a resumed run keeps those before its checkpoint."""
    from mechtune.train.validation import claim_accuracy

    def fingerprint(trainer):
        return {n: p.detach().clone() for n, (_, p) in trainer.params.items()}

    plain = _trainer(clip_dir, tmp_path / "plain", steps=5, checkpoint_every=2)
    plain.fit()
    plain.save_result("nast")
    modes, at_step4 = [], {}

    def metric():
        modes.append((trainer.model.training, torch.is_grad_enabled()))
        torch.rand(3)  # a metric that draws random numbers must not shift training's
        value = claim_accuracy(trainer.task.encoder, trainer.task.images, CLAIMS)
        if trainer.step == 4:
            at_step4.update({n: p.detach().clone() for n, (_, p) in trainer.params.items()})
        return {"claim_accuracy": value}

    trainer, tracker = tracked(clip_dir, tmp_path, "eval", metric, steps=5, checkpoint_every=2,
                               eval_every=2)  # fmt: skip
    loss_terms = trainer.task.loss_terms
    training_modes = []

    def spy(*args):
        training_modes.append(trainer.model.training)
        return loss_terms(*args)

    trainer.task.loss_terms = spy
    with tracker.session("eval", trainer.settings.to_dict()):
        trainer.fit()
    trainer.save_result("nast")
    assert modes == [(False, False), (False, False)]
    assert all(training_modes) and len(training_modes) == 5
    a, b = fingerprint(plain), fingerprint(trainer)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert trainer.history == plain.history
    assert [e["step"] for e in trainer.evals] == [2, 4]
    saved = json.loads((tmp_path / "eval" / "train.json").read_text())
    assert saved["eval"] == trainer.evals and saved["config"]["eval_every"] == 2
    assert "eval" not in json.loads((tmp_path / "plain" / "train.json").read_text())
    logged = scalars(tmp_path / "tb" / "eval")["eval/claim_accuracy"]
    assert logged == [(e["step"], f32(e["claim_accuracy"])) for e in trainer.evals]
    # the step-4 evaluation scored the step-4 weights: recompute it on them by hand
    probe = _trainer(clip_dir, tmp_path / "probe", steps=5)
    with torch.no_grad():
        for n, (_, p) in probe.params.items():
            p.copy_(at_step4[n])
    probe.model.eval()
    encoder = probe.task.encoder
    hits = []
    for claim in CLAIMS:
        text = encoder.encode_tokens(encoder.tokenize(list(claim.candidates))).float()
        scores = (text @ probe.task.images[claim.image]).tolist()
        hits.append(scores[0] > max(scores[1:]))
    assert trainer.evals[1]["claim_accuracy"] == pytest.approx(sum(hits) / len(hits))

    # killed after step 3 (checkpoint at 2), resumed: the step-2 evaluation is kept
    def half():
        return {"claim_accuracy": 0.5}

    resumed = dict(steps=5, checkpoint_every=2, eval_every=2, evaluate=half)
    _trainer(clip_dir, tmp_path / "resumed", **resumed).fit(stop_after=3)
    again = _trainer(clip_dir, tmp_path / "resumed", **resumed)
    again.fit(resume=True)
    assert [e["step"] for e in again.evals] == [2, 4]


def test_eval_every_needs_validation_data(clip_dir, tmp_path):
    from mechtune.train.consistency import ConsistencyConfig
    from mechtune.train.negation import LoopConfig
    from mechtune.train.validation import negation_validation, paraphrase_validation

    with pytest.raises(ConfigError, match="eval_every is 2, but no validation data"):
        _trainer(clip_dir, tmp_path, eval_every=2)
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        LoopConfig(eval_every=-1)
    with pytest.raises(ConfigError, match="eval_every must be >= 0"):
        ConsistencyConfig(eval_every=-1)
    with pytest.raises(ConfigError, match=r"loop\.eval_every > 0 .* set loop\.eval_every to 0"):
        negation_validation(None, torch.zeros(1, 2), [], setting="loop.eval_every")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="eval_every > 0 evaluates on validation-split ques"):
        paraphrase_validation(None, None, [])  # type: ignore[arg-type]


def test_paraphrase_scores_match_a_hand_computation():
    """Flip rate: groups where a paraphrase's answer differs from the original's; accuracy:
    all answers (originals and paraphrases) against the truth; answers from margins > 0."""
    from mechtune.data.schema import ImageQuestion, ParaphraseSet
    from mechtune.models.yes_no import take_rows
    from mechtune.train.validation import paraphrase_scores
    from tests.train.test_consistency import EXAMPLES, _vqa
    from tests.train.test_consistency import _images as vqa_images

    vlm = _vqa()
    images = vqa_images(vlm)
    questions = [
        ImageQuestion(
            ParaphraseSet(
                question_id=f"q{i}", study_id=f"s{i}", patient_id=f"p{i}", condition=None,
                question=e.question, paraphrases=e.paraphrases, strategies=("lexical",),
                families=(), answer=e.answer, split="val",
            ),
            e.image,
        )
        for i, e in enumerate(EXAMPLES)
    ]  # fmt: skip
    flips, right, answers = 0, 0, 0
    for q in questions:
        texts = [q.record.question, *q.record.paraphrases]
        with torch.no_grad():
            m = [float(vlm.margin(take_rows(images, [q.image]), [t])[0]) for t in texts]
        said = [v > 0 for v in m]
        flips += any(s != said[0] for s in said[1:])
        right += sum(s == q.record.answer for s in said)
        answers += len(said)
    got = paraphrase_scores(vlm, images, questions)
    assert got["flip_rate"] == pytest.approx(flips / len(questions))
    assert got["accuracy"] == pytest.approx(right / answers)


def test_sae_layer_sessions_log_the_training_history(tmp_path):
    """One session per layer, each log interval's mean terms at its step count: the
    events equal the SAE's TrainReport history."""
    from mechtune.interp.sae import SAEConfig
    from mechtune.interp.sae_train import SAETrainConfig, train_sae

    tracker = Tracker("tensorboard", tmp_path)
    acts = torch.randn(256, 8, generator=torch.Generator().manual_seed(0))
    training = SAETrainConfig(steps=6, batch_size=32, log_every=2)
    reports = {}
    with layer_sessions(tracker, "saes/", {"width": 16}) as progress:
        for layer in (1, 3):
            _, reports[layer] = train_sae(
                acts, SAEConfig(d_in=8, d_sae=16, kind="topk", k=2), training,
                progress=lambda step, terms, layer=layer: progress(layer, step, terms),
            )  # fmt: skip
    assert not tracker.active  # the last layer's session ended with the block
    for layer, report in reports.items():
        logged = scalars(tmp_path / "saes" / f"layer_{layer}")
        assert set(logged) == {f"sae/{term}" for term in report.history}
        for term, values in report.history.items():
            steps = [s + 1 for s in report.logged_steps]
            assert logged[f"sae/{term}"] == [
                (s, f32(v)) for s, v in zip(steps, values, strict=True)
            ]
    assert [s + 1 for s in reports[1].logged_steps] == [2, 4, 6]


def read_wandb_records(path) -> list:
    """The protobuf records of an offline W&B run file (``run-<id>.wandb``): a LevelDB
    log (32 KiB blocks of ``crc32, length, type`` headed chunks, FULL/FIRST/MIDDLE/LAST)
    after a 7-byte ``:W&B`` header."""
    from wandb.proto import wandb_internal_pb2

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    block, at, chunks, records = 32768, 7, b"", []
    while at + 7 <= len(raw):
        left = block - at % block
        if left < 7:  # the rest of a block too short for a header is padding
            at += left
            continue
        _, length, kind = struct.unpack("<IHB", raw[at : at + 7])
        if kind == 0:
            at += left
            continue
        data, at = raw[at + 7 : at + 7 + length], at + 7 + length
        chunks = data if kind in (1, 2) else chunks + data
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunks)
            records.append(record)
    return records


def test_wandb_offline_run_holds_the_logged_values(clip_dir, tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="the tracking extra's wandb is not installed")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    tracker = Tracker("wandb", tmp_path / "logs")
    trainer = _trainer(
        clip_dir, tmp_path / "run", tracker=tracker, steps=2, checkpoint_every=2, scaling="lr"
    )
    with tracker.session("nast/seed0", trainer.settings.to_dict()):
        history = trainer.fit()
    (run_file,) = (tmp_path / "logs" / "wandb").glob("offline-run-*/run-*.wandb")
    # wandb's service process completes the file after finish() returns: wait for it
    deadline = time.monotonic() + 60
    records = read_wandb_records(run_file)
    while not any(r.WhichOneof("record_type") == "exit" for r in records):
        assert time.monotonic() < deadline, f"{run_file} was never completed"
        time.sleep(0.2)
        records = read_wandb_records(run_file)
    rows = [
        {
            item.key or "/".join(item.nested_key): json.loads(item.value_json)
            for item in r.history.item
        }
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]
    assert [r["_step"] for r in rows] == [1, 2]
    for row, h in zip(rows, history, strict=True):
        assert row["train/loss"] == pytest.approx(h["loss"], rel=1e-6)
        assert row["lr/block_1"] == pytest.approx(trainer.settings.lr * ALPHA[2])
        assert row["grad_norm/block_0"] > 0
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert run.display_name == "nast/seed0" and run.project == "mechtune"
    config = [r.config for r in records if r.WhichOneof("record_type") == "config"]
    keys = {item.key for c in config for item in c.update}
    assert {"lr", "lora.rank", "scaling"} <= keys


def test_report_to_is_checked_before_anything(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="--report-to must be one of none, tensorboard, wandb"):
        check_report_to("mlflow")
    with pytest.raises(ConfigError, match="needs a logging folder"):
        Tracker("tensorboard")
    for backend in ("tensorboard", "wandb"):
        monkeypatch.setitem(sys.modules, backend, None)  # as if not installed
        with pytest.raises(MissingExtraError, match=r"pip install 'mechtune\[tracking\]'"):
            Tracker(backend, tmp_path)
    off = Tracker("none", tmp_path / "never")
    with off.session("run", {"lr": 1.0}):
        off.log({"train/loss": 1.0}, 1)
    assert not off.enabled and not (tmp_path / "never").exists()


def test_hyperparameters_are_flat_scalars():
    got = hyperparameters({"lr": 1e-3, "lora": {"rank": 2, "layers": [1, 2]}, "x": None})
    assert got == {"lr": 1e-3, "lora.rank": 2, "lora.layers": "[1, 2]", "x": "None"}


def test_consistency_eval_every_logs_flip_rate_and_accuracy(tmp_path):
    """consistency LoRA on the phantom VQA with eval_every 1 over 2 steps: the flip rate
    and accuracy of the validation questions after each step, the last equal to those
    of the trained model; the weights and history are those of a run without."""
    from mechtune.data.schema import ImageQuestion, ParaphraseSet
    from mechtune.train.consistency import ConsistencyConfig
    from mechtune.train.methods import paraphrase_trainer
    from mechtune.train.validation import paraphrase_scores, paraphrase_validation
    from tests.train.test_consistency import EXAMPLES, _vqa
    from tests.train.test_consistency import _images as vqa_images

    held = [
        ImageQuestion(
            ParaphraseSet(
                question_id=f"v{i}", study_id=f"s{i}", patient_id=f"p{i}", condition=None,
                question=e.question, paraphrases=e.paraphrases, strategies=("lexical",),
                families=(), answer=not e.answer, split="val",
            ),
            e.image,
        )
        for i, e in enumerate(EXAMPLES)
    ]  # fmt: skip
    runs = {}
    for every in (0, 1):
        config = ConsistencyConfig(
            lora=LoraSettings(layers=(5,), dropout=0.1), steps=2, batch_size=4, lr=5e-2,
            checkpoint_every=2, eval_every=every,
        )  # fmt: skip
        vlm = _vqa()
        images = vqa_images(vlm)
        evaluate = paraphrase_validation(vlm, images, held) if every else None
        tracker = Tracker("tensorboard", tmp_path / "tb")
        trainer = paraphrase_trainer("consistency-lora", vlm, images, EXAMPLES, config,
                                     tmp_path / str(every), tracker=tracker, evaluate=evaluate)  # fmt: skip
        with tracker.session(f"run{every}", config.to_dict()):
            trainer.fit()
        runs[every] = trainer, vlm, images
    (plain, _, _), (evaluated, vlm, images) = runs[0], runs[1]
    assert evaluated.history == plain.history
    assert all(torch.equal(p, plain.params[n][1]) for n, (_, p) in evaluated.params.items())
    assert [e["step"] for e in evaluated.evals] == [1, 2]
    vlm.module.eval()
    with torch.no_grad():
        final = paraphrase_scores(vlm, images, held)
    assert evaluated.evals[-1] == {"step": 2, **final}
    logged = scalars(tmp_path / "tb" / "run1")
    assert logged["eval/flip_rate"] == [(e["step"], f32(e["flip_rate"])) for e in evaluated.evals]
    assert logged["eval/accuracy"][-1] == (2, f32(final["accuracy"]))
    assert {"train/answer_ce", "train/symmetric_kl", "lr", "grad_norm/block_5"} <= set(logged)
    assert not any(t.startswith("eval/") for t in scalars(tmp_path / "tb" / "run0"))


FIELD_TESTS = {
    "mechtune.train.negation.LoopConfig": {
        "eval_every": "test_eval_every_evaluates_read_only_and_is_logged"
    },
    "mechtune.train.consistency.ConsistencyConfig": {
        "eval_every": "test_consistency_eval_every_logs_flip_rate_and_accuracy"
    },
}


def test_a_launch_creates_its_accelerator_with_log_with(tmp_path, monkeypatch):
    """Under a launch, start_launch passes log_with and project_dir to the one Accelerator
    it creates, and the launch's tracker logs through it; without --report-to it passes
    neither. A tracker given an accelerator that does not log with its backend is
    refused."""
    import types

    from mechtune.train.distributed import start_launch

    made = []

    class Fake:
        def __init__(self, cpu=False, log_with=None, project_dir=None):
            made.append({"cpu": cpu, "log_with": log_with, "project_dir": project_dir})
            self.device, self.num_processes, self.process_index = torch.device("cpu"), 2, 0
            self.is_main_process = True
            self.log_with = [] if log_with is None else [log_with]

    monkeypatch.setitem(sys.modules, "accelerate", types.SimpleNamespace(Accelerator=Fake))
    env = {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0"}
    launch = start_launch("cpu", env, report_to="tensorboard", tracking_dir=tmp_path)
    assert made == [{"cpu": True, "log_with": "tensorboard", "project_dir": tmp_path}]
    assert launch.tracker.enabled and launch.tracker._tracking_accelerator() is launch.accelerator
    plain = start_launch("cpu", env)
    assert made[-1] == {"cpu": True, "log_with": None, "project_dir": None}
    assert not plain.tracker.enabled
    with pytest.raises(ConfigError, match="the launch's accelerator logs with nothing"):
        Tracker("wandb", tmp_path, accelerator=plain.accelerator)
    one = start_launch("cpu", {"WORLD_SIZE": "1"}, report_to="tensorboard", tracking_dir=tmp_path)
    assert one.accelerator is None and one.tracker.enabled and len(made) == 2
