"""A tiny run for the report tests, made by the real commands once per session: a
negation evaluation and a 4-method negation study of the phantom CLIP (the random-alpha
control included), and a paraphrase
study of the phantom VQA model, on a 100-study phantom world exported as MIMIC-CXR-JPG."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mechtune.cli.main import app

runner = CliRunner()


def run_cli(*args: object) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    from mechtune.sim.export import export_mimic
    from mechtune.sim.world import WorldConfig, make_world

    root = tmp_path_factory.mktemp("report_run")
    data = root / "mimic"
    export_mimic(make_world(WorldConfig.seeded(100, 0)), data, seed=0)
    run = root / "run"
    common = ["--model", "phantom:default", "--data", data, "--no-report-facts"]
    common += ["--cache-dir", root / "cache"]
    run_cli("negation", "eval", *common, "--out", run / "zero-shot")
    recipe = root / "negation.yaml"
    recipe.write_text(
        "methods: [zero-shot, uniform-lora, nast, random-alpha]\nseeds: [0]\n"
        "trace_max_pairs: 10\nrandom_alpha_permutations: 1\n"
        "loop: {steps: 3, caption_batch: 4, claim_batch: 4, checkpoint_every: 3}\n"
    )
    run_cli("negation", "study", *common, "--recipe", recipe, "--out", run / "negation")
    para = root / "paraphrase.yaml"
    para.write_text(
        "model: phantom:vqa\nseeds: [0]\nsae_width: 32\nsae_k: 4\nsae_steps: 10\n"
        "sae_reports: 20\nanalysis_sets: 30\nhalf_width: 0\nranges: [sae]\n"
        "max_questions: 40\nlora:\n  steps: 2\n  batch_size: 4\n  checkpoint_every: 2\n"
    )
    run_cli(
        "paraphrase", "study", "--recipe", para, "--questions", data / "questions.jsonl",
        "--data", data, "--out", run / "paraphrase",
    )  # fmt: skip
    return run
