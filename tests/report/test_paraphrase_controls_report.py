"""The report's paraphrase tables show the study's controls: the shuffled-label AUC beside
the real one, and the random-range rows with their Δ against the SAE range (results dicts
built by hand; tests/report/test_report.py renders a whole study)."""

import json

from mechtune.data.io import to_jsonable
from mechtune.pipelines.paraphrase_report import paired_rows
from mechtune.report.render import _headline
from mechtune.report.sections import auc_table, paraphrase_results_table, paraphrase_study_section
from tests.pipelines.test_paraphrase_controls import _results

ANALYSIS = {
    "chosen_layers": [2, 3],
    "peak_layer": 2,
    "auc_by_layer": {"1": 0.58, "2": 0.71},
    "auc_ci_by_layer": {"1": [0.5, 0.66], "2": [0.63, 0.79]},
}
SHUFFLED = {
    "1": {"mean": 0.49, "low": 0.41, "high": 0.57, "p_value": 0.0952, "shuffles": 20},
    "2": {"mean": 0.48, "low": 0.4, "high": 0.58, "p_value": 1 / 21, "shuffles": 20},
}


def test_auc_table_shows_the_shuffled_label_control_beside_the_real_auc() -> None:
    plain = auc_table(ANALYSIS)
    assert plain.columns == ["layer", "flip-prediction AUC [95% interval]"]
    table = auc_table({**ANALYSIS, "auc_shuffled_by_layer": SHUFFLED, "peak_auc_p_value": 0.0476})
    assert table.columns[2:] == ["AUC, shuffled flip labels [95% range]", "permutation p"]
    rows = {r[0].text: [c.text for c in r[1:]] for r in table.rows}
    assert rows["L1"] == ["0.58 [0.50, 0.66]", "0.49 [0.41, 0.57]", "0.0952"]
    assert rows["L2 (chosen)"] == ["0.71 [0.63, 0.79]", "0.48 [0.40, 0.58]", "0.0476"]
    assert "20 shuffles" in table.caption and "(1 + 20)" in table.caption
    assert "best layer: p = 0.0476" in table.caption


def test_the_results_table_and_section_show_the_random_ranges(tmp_path) -> None:
    results = _results()
    results["random_ranges"] = {
        "drawn": {"random-0": [0, 1], "random-1": [3, 4], "random-2": [1, 2]},
        "width": 2,
        "requested": 3,
        "pool": 6,
        "seed": 0,
        "note": None,
    }
    table = paraphrase_results_table(results)
    assert table.columns[-1] == "Δ flip vs SAE range"
    labels = [row[0].text for row in table.rows]
    assert "LoRA random-1 (L3–4)" in labels
    assert "LoRA random ranges, pooled (3 draws of 2 blocks × 2 seeds)" in labels
    cells = {label: c for label, _, c in paired_rows(results)}
    pooled = table.rows[labels.index("LoRA random ranges, pooled (3 draws of 2 blocks × 2 seeds)")]
    want = cells["LoRA random ranges, pooled (3 draws of 2 blocks × 2 seeds)"]["sae"]
    assert want is not None and pooled[-1].text == want.pp()
    assert "Random ranges" in table.caption
    # the study section lists the draws; the headline states the control's answer
    folder = tmp_path / "paraphrase"
    folder.mkdir()
    results.update(config={"ranges": ["all", "sae"], "seeds": [0, 1]}, analysis=ANALYSIS)
    (folder / "results.json").write_text(json.dumps(to_jsonable(results)))
    section = paraphrase_study_section(folder, tmp_path)
    facts = dict(section.facts)
    assert facts["random ranges"].startswith("random-0 (L0–1), random-1 (L3–4), random-2 (L1–2)")
    assert "seed 0 among 6 other windows" in facts["random ranges"]
    lines = _headline([section], tmp_path)
    (line,) = [x for x in lines if "SAE range minus" in x]
    assert line.startswith("Paraphrase study: the SAE range minus the mean of 3 random ranges")
    assert not any("random-0" in x for x in lines)  # the draws one by one stay in the table
