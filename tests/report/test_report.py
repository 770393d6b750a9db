"""`mechtune report` and the report every study and eval command writes: provenance in
provenance.json, tables whose cells are the JSON's numbers with their intervals, the paired Δ
and the papers' rows, the figures and examples, determinism, self-containment, and what
happens with unreadable inputs."""

from __future__ import annotations

import base64
import json
import re
from importlib.metadata import version
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechtune
from mechtune.errors import DataError
from mechtune.report import collect, render, write_report
from mechtune.report.model import Cell, delta_cell, interval_text, seeds_cell
from mechtune.report.provenance import manifest_hashes
from tests.report.conftest import run_cli

OPTION_TESTS = {
    "mechtune report": {
        "run_dir": "test_the_run_report_gathers_every_part",
        "--out": "test_report_out_option_writes_elsewhere",
    }
}
COMMANDS = {
    "zero-shot": "mechtune negation eval",
    "negation": "mechtune negation study",
    "paraphrase": "mechtune paraphrase study",
}


def html(folder: Path) -> str:
    return (folder / "report.html").read_text(encoding="utf-8")


def svg_texts(page: str) -> str:
    """Every SVG figure of the page, decoded."""
    return "".join(
        base64.b64decode(m).decode()
        for m in re.findall(r'src="data:image/svg\+xml;base64,([^"]+)"', page)
    )


@pytest.mark.parametrize("part", sorted(COMMANDS))
def test_each_command_records_its_run_and_writes_a_report(tiny_run, part):
    folder = tiny_run / part
    run = json.loads((folder / "provenance.json").read_text())
    assert run["command"].startswith(COMMANDS[part] + " ")
    assert f"--out {folder}" in run["command"]
    env = run["environment"]
    assert env["mechtune"] == mechtune.__version__
    assert env["packages"]["torch"] == version("torch")
    assert env["packages"]["peft"] == version("peft")
    assert env["device"] == "cpu"
    # the data's manifest: the export's canonical content hash, as data verify checks it
    export = json.loads((tiny_run.parent / "mimic" / "manifest.json").read_text())
    assert [m["canonical_hash"] for m in run["manifests"]] == [export.get("canonical_hash")]
    page = html(folder)
    assert run["command"].replace("'", "&#39;") in page
    assert "research use, not for clinical use" in page


def test_negation_study_report_holds_the_json_numbers(tiny_run):
    from mechtune.pipelines.negation_controls import control_comparisons
    from mechtune.pipelines.negation_report import paired_comparisons

    folder = tiny_run / "negation"
    results = json.loads((folder / "results.json").read_text())
    page = html(folder)
    for method, reports in results["runs"].items():
        claim = reports[0]["claims"]["heldout"]["claim_accuracy"]
        assert f"<td>{method}</td>" in page
        assert interval_text(claim) in page  # value [low, high], one seed
    delta = paired_comparisons(results)["nast"]["claim acc"]
    assert delta.pp() in page
    # the random-alpha control: its row (1 seed x 1 permutation), its paired difference
    # from uniform LoRA, and NAST minus it
    assert "<td>1 × 1 α</td>" in page
    assert paired_comparisons(results)["random-alpha"]["claim acc"].pp() in page
    control = control_comparisons(results)["random-alpha"]["claim acc"]
    assert "NAST minus its controls" in page and "<td>nast − random-alpha</td>" in page
    assert control.pp() in page
    # both paired tables name the patients the study evaluated on
    split = {"val": "validation"}.get(results["config"]["eval_split"], "test")
    assert page.count(f"on the same {split} items") == 2
    assert "minmax-normalised mean CTE profile" in page
    assert "paper: NAST" in page and ">49.5<" in page and ">52.6<" in page  # R@1, top-3 share
    # figures: CTE heatmap, alpha bars, update share, and the training curves
    assert page.count('data-check="figure"') == 4
    curves = svg_texts(page)
    for term in ("clip", "claim", "loss", "uniform-lora", "nast"):
        assert f">{term}<" in curves, term
    # examples: the study's claim sets, with each method's score
    assert results["examples"]
    for example in results["examples"]:
        assert example["id"] in page
        assert set(example["scores"]) == set(results["runs"])
    seconds = results["runs"]["nast"][0]["train_seconds"]
    assert f'<td>negation: train nast seed 0</td><td class="num">{seconds:.1f} s</td>' in page
    headline = re.search(r'<section class="headline".*?</section>', page, re.S)
    assert headline is not None and "nast minus uniform LoRA" in headline.group(0)


def test_paraphrase_study_report_holds_the_json_numbers(tiny_run):
    folder = tiny_run / "paraphrase"
    results = json.loads((folder / "results.json").read_text())
    page = html(folder)
    view = "heldout" if "heldout" in results["baseline"] else "all"
    assert interval_text(results["baseline"][view]["flip_rate"]) in page
    margin = results["baseline"][view]["margin_difference"]
    assert interval_text(margin, 1.0, 2) in page
    assert "paper: targeted LoRA (L15–19)" in page and ">4.4<" in page
    assert "Flip-AUC by layer" in page and "Flip rate before and after" in page
    assert ">symmetric_kl<" in svg_texts(page)
    for example in results["examples"]:
        assert example["id"] in page


def test_the_run_report_gathers_every_part(tiny_run):
    out = run_cli("report", tiny_run)
    assert "wrote" in out and "report.html" in out
    report = collect(tiny_run)
    kinds = [s.id for s in report.sections]
    assert kinds[:3] == ["negation-eval-zero-shot", "negation-study", "paraphrase-study"]
    assert report.problems == []
    commands = [dict(s.facts).get("command", "") for s in report.sections[:3]]
    assert [c.split(" --")[0] for c in commands] == [
        COMMANDS["zero-shot"],
        COMMANDS["negation"],
        COMMANDS["paraphrase"],
    ]
    assert "has no provenance.json" in html(tiny_run)  # the root itself was not one command


def test_reports_are_deterministic_and_self_contained(tiny_run, tmp_path):
    first, _ = write_report(tiny_run / "negation", tmp_path / "a.html")
    second, _ = write_report(tiny_run / "negation", tmp_path / "b.html")
    assert first.read_bytes() == second.read_bytes()
    page = first.read_text()
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    assert re.findall(r'(?:src|href)="(?!data:|#)', page) == []
    assert "http://" not in page.split("<body", 1)[1].split("<script>")[0].replace(
        "http://www.w3.org", ""
    )


def test_unreadable_inputs_are_listed_not_dropped(tiny_run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(tiny_run / "negation", copy, ignore=shutil.ignore_patterns("step_*"))
    (copy / "figures" / "alpha.png").write_bytes(b"not a png")
    report = collect(copy)
    assert len(report.problems) == 1 and "not a PNG file" in report.problems[0]
    assert "alpha.png" in report.problems[0]
    assert "Could not be read" in render(report)
    (copy / "results.json").write_text("{ broken")
    report = collect(copy)
    assert any("results.json: not JSON" in p for p in report.problems)


def test_a_folder_with_nothing_to_report_is_an_error(tmp_path):
    with pytest.raises(DataError, match="nothing to report"):
        collect(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        collect(tmp_path / "absent")
    result = CliRunner().invoke(mechtune_app(), ["report", str(tmp_path)])
    assert result.exit_code == 2 and "nothing to report" in result.output


def test_report_out_option_writes_elsewhere(tiny_run, tmp_path):
    target = tmp_path / "elsewhere.html"
    run_cli("report", tiny_run / "zero-shot", "--out", target)
    assert target.read_text() == html(tiny_run / "zero-shot")


def mechtune_app():
    from mechtune.cli.main import app

    return app


# -- cells and provenance ----------------------------------------------------------------


def test_cells_show_values_intervals_and_seed_ranges():
    one = {"value": 0.449, "low": 0.379, "high": 0.519}
    assert interval_text(one) == "44.9 [37.9, 51.9]"
    assert interval_text(None) == "n/a" and interval_text({"value": None}) == "n/a"
    assert interval_text({"value": 1.63}, 1.0, 2) == "1.63"
    assert seeds_cell([one]) == Cell("44.9 [37.9, 51.9]", kind="num")
    two = seeds_cell([one, {"value": 0.5, "low": 0.4, "high": 0.6}])
    assert two.text == "47.5 (44.9–50.0)" and "seed 1: 50.0 [40.0, 60.0]" in two.note
    assert seeds_cell([one, None]).kind == "na"


def test_delta_cells_mark_intervals_that_exclude_zero():
    from mechtune.eval.metrics import PairedDifference

    def diff(low, high):
        return PairedDifference(
            value=(low + high) / 2, low=low, high=high, n_items=10, n_clusters=5,
            seeds_a=1, seeds_b=1, method="bootstrap",
        )  # fmt: skip

    assert delta_cell(diff(0.01, 0.05)).kind == "up"
    assert delta_cell(diff(-0.05, -0.01)).kind == "down"
    assert delta_cell(diff(-0.01, 0.05)).kind == ""
    assert delta_cell(None).text == "–"


def test_manifest_hashes_find_each_manifest_once_and_report_bad_ones(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"kind": "k", "canonical_hash": "c0"}))
    (tmp_path / "a" / "manifest.json").write_text(json.dumps({"kind": "a", "content_hash": "b"}))
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "manifest.json").write_text("{")
    found = manifest_hashes([tmp_path, tmp_path / "manifest.json", None])
    assert [m.get("kind") for m in found] == ["k", "a", None]
    assert found[0]["canonical_hash"] == "c0" and found[1]["canonical_hash"] is None
    assert "unreadable manifest" in found[2]["error"]


def test_a_trace_folder_reports_its_per_layer_cte(tiny_run, tmp_path):
    from mechtune.interp.result import TraceResult

    folder = tiny_run / "negation" / "trace"
    path, report = write_report(folder, tmp_path / "trace.html")
    traced = TraceResult.load(folder)
    (section,) = report.sections
    (table,) = section.tables
    assert len(table.rows) == len(traced.cte_layer)
    last = len(traced.cte_layer) - 1
    value = {
        "value": float(traced.cte_layer[last]),
        "low": float(traced.cte_layer_low[last]),
        "high": float(traced.cte_layer_high[last]),
    }
    assert table.rows[last][1].text == interval_text(value, 1.0, 3)
    assert table.rows[last][2].text == f"{float(traced.alpha[last]):.3f}"
    assert "CTE per layer" in path.read_text()
    assert table.columns[2] == "α (min-max)"


def test_training_curves_include_the_periodic_validation(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    history = [{"step": s, "loss": 1.0 / s, "claim": 0.5 / s} for s in (1, 2, 3, 4)]
    info = {"method": "nast", "config": {"lr": 0.001}, "step": 4, "history": history}
    info["eval"] = [{"step": 2, "claim_accuracy": 0.4}, {"step": 4, "claim_accuracy": 0.6}]
    (run / "train.json").write_text(json.dumps(info))
    (section,) = collect(run).sections
    (figure,) = section.figures
    svg = base64.b64decode(figure.data).decode()
    for term in ("loss", "claim", "eval/claim_accuracy"):
        assert f">{term}<" in svg, term
    del info["eval"]
    (run / "train.json").write_text(json.dumps(info))
    (section,) = collect(run).sections
    assert "eval/claim_accuracy" not in base64.b64decode(section.figures[0].data).decode()
