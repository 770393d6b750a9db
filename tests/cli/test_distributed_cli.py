"""`negation train` and `paraphrase train` launched as 2 CPU processes by torchrun and by
`accelerate launch`: each process takes half of every step's shards, the adapter is the
single process's, only rank 0 writes, and shards the processes cannot share are refused
with the setting and the process count named. The studies refuse a launch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from mechtune.cli.main import app
from tests.cli import distributed_cli_worker
from tests.tiny_gemma import tiny_gemma
from tests.tiny_models import tiny_clip

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]
WORKER = Path(distributed_cli_worker.__file__)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 40-study phantom world exported as MIMIC-CXR-JPG with its questions, the tiny
    CLIP and Gemma, and recipes of 2 steps whose shards / micro-batches split over 2
    processes (LoRA dropout 0: the ranks draw no random numbers of their own)."""
    from mechtune.sim.export import export_mimic
    from mechtune.sim.world import WorldConfig, make_world

    root = tmp_path_factory.mktemp("distributed_cli")
    export_mimic(make_world(WorldConfig.seeded(40, 0)), root / "mimic", seed=0)
    negation = root / "negation.yaml"
    negation.write_text(
        "methods: [uniform-lora]\nloop: {steps: 2, caption_batch: 4, claim_batch: 4, "
        "checkpoint_every: 2, shards: 2, lr: 0.01, lora: {rank: 2, alpha: 4, dropout: 0.0}}\n"
    )
    paraphrase = root / "paraphrase.yaml"
    paraphrase.write_text(
        "lora:\n  lora: {rank: 2, alpha: 4, dropout: 0.0}\n  lr: 0.01\n  steps: 2\n"
        "  batch_size: 2\n  grad_accum: 2\n  checkpoint_every: 2\n"
    )
    return {
        "root": root,
        "data": root / "mimic",
        "clip": tiny_clip(root / "clip"),
        "gemma": tiny_gemma(root / "gemma"),
        "negation": negation,
        "paraphrase": paraphrase,
    }


def negation_args(inputs, out: Path) -> list[str]:
    return ["negation", "train", "--method", "uniform-lora", "--model", f"hf:{inputs['clip']}",
            "--data", str(inputs["data"]), "--no-report-facts", "--recipe",
            str(inputs["negation"]), "--cache-dir", str(out.parent / f"{out.name}-cache"),
            "--out", str(out)]  # fmt: skip


def paraphrase_args(inputs, out: Path) -> list[str]:
    return ["paraphrase", "train", "--model", f"hf:{inputs['gemma']}", "--questions",
            str(inputs["data"] / "questions.jsonl"), "--data", str(inputs["data"]),
            "--recipe", str(inputs["paraphrase"]), "--layers", "0-1", "--seed", "0",
            "--out", str(out)]  # fmt: skip


def launch(launcher: str, args: list[str], record: Path) -> subprocess.CompletedProcess[str]:
    """Run the CLI (through the recording worker) as 2 CPU processes."""
    record.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": path,
        "MECHTUNE_TEST_RECORD": str(record),
    }
    port = str(free_port())
    if launcher == "torchrun":
        head = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    else:  # `accelerate launch`, as its console script runs it
        head = ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--main_process_port", port]  # fmt: skip
    cmd = [sys.executable, *head, str(WORKER), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)


def launched(launcher: str, args: list[str], record: Path) -> tuple[str, dict, dict]:
    result = launch(launcher, args, record)
    assert result.returncode == 0, f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    return result.stdout + result.stderr, ranks[0], ranks[1]


def single(args: list[str]) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output


def assert_same_adapter(ddp: Path, one: Path) -> None:
    mine = load_file(str(one / "adapter" / "adapter_model.safetensors"))
    theirs = load_file(str(ddp / "adapter" / "adapter_model.safetensors"))
    assert mine.keys() == theirs.keys() and mine
    trained = [k for k in mine if "lora_B" in k]
    assert trained and all(mine[k].abs().max() > 1e-3 for k in trained)  # B starts at 0
    for key in mine:
        assert torch.allclose(mine[key], theirs[key], atol=1e-5, rtol=0), key


def assert_rank0_wrote(out: Path, rank0: dict, rank1: dict, files: tuple[str, ...]) -> None:
    """Rank 0 moved each shared output into place; rank 1 wrote nothing at all (not even
    to the image cache, which rank 0 filled before it read)."""
    assert rank1["writes"] == []
    written = {Path(w) for w in rank0["writes"]}
    for name in files:
        assert out / name in written, name


@pytest.fixture(scope="module")
def negation_one(inputs):
    """The single-process run both launchers are compared with."""
    out = inputs["root"] / "negation-one"
    single(negation_args(inputs, out))
    return out


@pytest.mark.parametrize("launcher", ["torchrun", "accelerate"])
def test_negation_train_under_a_launch_matches_one_process(
    inputs, negation_one, tmp_path, launcher
):
    """2 steps of 2 shards: rank r computes shard r of each step; the gradients' mean
    over the ranks is the one process's mean over shards, so the adapters agree."""
    out = tmp_path / "ddp"
    log, rank0, rank1 = launched(launcher, negation_args(inputs, out), tmp_path / "record")
    assert rank0["shards"] == [0, 0] and rank1["shards"] == [1, 1]
    assert_rank0_wrote(
        out, rank0, rank1, ("run.json", "probe_embeddings.safetensors", "train.json", "adapter")
    )
    assert " ".join(log.split()).count(f"wrote {out}") == 1  # the summary, once
    # the progress lines too: only rank 0 prints them
    assert log.count("train uniform-lora (seed 0): 2/2 (100%) done in ") == 1
    assert "1 of 2 shards per process on 2 processes" in " ".join(log.split())
    caches = list((tmp_path / "ddp-cache").glob("*/shard-*.safetensors"))
    assert len(caches) == 1  # the images were embedded once, by rank 0

    assert_same_adapter(out, negation_one)
    ddp_steps = json.loads((out / "train.json").read_text())["history"]
    one_steps = json.loads((negation_one / "train.json").read_text())["history"]
    for mine, theirs in zip(one_steps, ddp_steps, strict=True):
        assert mine == pytest.approx(theirs, rel=1e-5)


def test_paraphrase_train_under_torchrun_matches_one_process(inputs, tmp_path):
    out = tmp_path / "ddp"
    log, rank0, rank1 = launched("torchrun", paraphrase_args(inputs, out), tmp_path / "record")
    assert rank0["shards"] == [0, 0] and rank1["shards"] == [1, 1]
    assert_rank0_wrote(
        out, rank0, rank1, ("run.json", "probe_margins.safetensors", "train.json", "adapter")
    )
    flat = " ".join(log.split())
    assert flat.count("wrote") == 1 and "each of 2 processes takes 1 of the 2 micro-batches" in flat
    assert flat.count("train consistency-lora (seed 0): 2/2 (100%) done in ") == 1  # rank 0's

    single(paraphrase_args(inputs, tmp_path / "one"))
    assert_same_adapter(out, tmp_path / "one")


def test_shards_the_processes_cannot_share_are_refused(inputs, tmp_path):
    """--grad-accum 3 on 2 processes: both ranks stop before loading anything, with the
    option, its value and the process count named; nothing is written."""
    args = [*paraphrase_args(inputs, tmp_path / "bad"), "--grad-accum", "3"]
    result = launch("torchrun", args, tmp_path / "record")
    assert result.returncode != 0
    flat = " ".join((result.stdout + result.stderr).split())
    assert "error: --grad-accum is 3, but 2 processes were launched" in flat
    assert "error: rank 1: --grad-accum is 3" in flat
    assert "set it to a multiple of 2" in flat
    assert not (tmp_path / "bad").exists()


def test_the_setting_is_named_where_the_shards_come_from(inputs, tmp_path, monkeypatch):
    """The check runs before the launch joins its process group, so WORLD_SIZE alone
    shows it: the recipe's grad_accum or loop.shards when no option set it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    recipe = tmp_path / "odd.yaml"
    recipe.write_text(inputs["paraphrase"].read_text().replace("grad_accum: 2", "grad_accum: 1"))
    args = paraphrase_args(inputs, tmp_path / "p")
    args[args.index("--recipe") + 1] = str(recipe)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "the recipe's lora.grad_accum is 1, but 2 processes" in " ".join(result.output.split())

    recipe = tmp_path / "neg.yaml"
    recipe.write_text(inputs["negation"].read_text().replace("shards: 2", "shards: 1"))
    args = negation_args(inputs, tmp_path / "n")
    args[args.index("--recipe") + 1] = str(recipe)
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "the recipe's loop.shards is 1, but 2 processes" in " ".join(result.output.split())
    assert not (tmp_path / "n").exists() and not (tmp_path / "p").exists()


@pytest.mark.parametrize("half", ["negation", "paraphrase"])
def test_the_studies_refuse_a_launch(inputs, tmp_path, monkeypatch, half):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    result = runner.invoke(app, [half, "study", "--out", str(tmp_path / "study")])
    assert result.exit_code == 2
    flat = " ".join(result.output.split())
    assert f"error: rank 1: mechtune {half} study runs in one process" in flat
    assert f"launch `mechtune {half} train`" in flat and "2 processes" in flat
    assert not (tmp_path / "study").exists()
