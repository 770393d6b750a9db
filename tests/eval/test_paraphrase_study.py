"""Pieces of the paraphrase study that need no model: layer ranges, swap rows, the table."""

import pytest

from mechtune.data.schema import ParaphraseSet
from mechtune.eval.consistency import two_proportion_z_test
from mechtune.eval.paraphrase_study import image_row, layer_ranges, results_table, swap_rows


def test_layer_ranges_have_the_width_of_the_chosen_range():
    ranges = layer_ranges([2, 3, 4], 6, ("all", "sae", "early", "late"))
    assert ranges == {"all": None, "sae": (2, 3, 4), "early": (0, 1, 2), "late": (3, 4, 5)}
    assert layer_ranges([5], 6, ("late", "sae")) == {"late": (5,), "sae": (5,)}


def _set(i: int, patient: str) -> ParaphraseSet:
    return ParaphraseSet(
        question_id=f"q{i}",
        study_id=f"s{i}",
        patient_id=patient,
        condition=None,
        question="Is there edema?",
        paraphrases=("Any edema?",),
        strategies=("lexical",),
        families=(),
        answer=True,
        image_ref=str(10 + i),
    )


def test_swap_rows_take_the_next_other_patient_cyclically():
    sets = [_set(0, "a"), _set(1, "a"), _set(2, "b"), _set(3, "c")]
    assert [image_row(s) for s in sets] == [10, 11, 12, 13]
    assert swap_rows(sets) == [12, 12, 13, 10]
    with pytest.raises(ValueError, match="two patients"):
        swap_rows([_set(0, "a"), _set(1, "a")])


def _report(flips: int, groups: int = 200) -> dict:
    def est(v: float) -> dict:
        return {"value": v, "low": v, "high": v, "n": groups}

    split = {
        "groups": groups,
        "flips": flips,
        "flip_rate": est(flips / groups),
        "pairwise_flip_rate": est(flips / groups / 4),
        "margin_difference": est(1.5),
        "accuracy": est(0.9),
        "text_only_agreement": est(0.7),
    }
    return {"heldout": split, "in_distribution": split}


def test_results_table_rows_means_and_p_values():
    late = [{**_report(10), "seed": s, "layers": [3, 4, 5]} for s in (0, 1)]
    results = {
        "baseline": _report(40),
        "clamping": {**_report(30), "layer": 4, "feature": 7},
        "runs": {
            "all": [{**_report(f), "seed": s, "layers": None} for s, f in ((0, 8), (1, 12))],
            "late": late,
            "sae": [{**r, "same_as": "late"} for r in late],
        },
    }
    lines = results_table(results).splitlines()
    assert len(lines) == 2 + 5
    assert lines[0].count("|") == 10  # 9 columns: no stray pipes in a header
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:]}
    assert set(rows) == {
        "baseline",
        "clamp L4 f7",
        "LoRA all (all)",
        "LoRA late (L3–5)",
        "LoRA sae (L3–5), same runs as late",
    }
    # two seeds: mean with the min-max range; p is the larger of the two seeds' p-values
    assert rows["LoRA all (all)"][2] == "5.0 (4.0–6.0)"
    worst = max(two_proportion_z_test(40, 200, f, 200)[1] for f in (8, 12))
    assert rows["LoRA all (all)"][-1].rstrip(" |") == f"{worst:.2g}"
    assert rows["baseline"][2] == "20.0" and rows["baseline"][-1].rstrip(" |") == "–"
