"""Pieces of the paraphrase study that need no model: layer ranges, swap rows, the table."""

import numpy as np
import pytest

from mechtune.data.schema import ImageQuestion, ParaphraseSet
from mechtune.eval.metrics import paired_difference
from mechtune.pipelines.paraphrase import layer_ranges
from mechtune.pipelines.paraphrase_eval import swap_rows
from mechtune.pipelines.paraphrase_report import paired_rows, primary_view, results_table


def test_layer_ranges_have_the_width_of_the_chosen_range():
    ranges = layer_ranges([2, 3, 4], 6, ("all", "sae", "early", "late"))
    assert ranges == {"all": None, "sae": (2, 3, 4), "early": (0, 1, 2), "late": (3, 4, 5)}
    assert layer_ranges([5], 6, ("late", "sae")) == {"late": (5,), "sae": (5,)}


def _set(i: int, patient: str) -> ImageQuestion:
    record = ParaphraseSet(
        question_id=f"q{i}",
        study_id=f"s{i}",
        patient_id=patient,
        condition=None,
        question="Is there edema?",
        paraphrases=("Any edema?",),
        strategies=("lexical",),
        families=(),
        answer=True,
        image_ref=f"files/p{i}.jpg",
    )
    return ImageQuestion(record, 10 + i)


def test_swap_rows_take_the_next_other_patient_cyclically():
    sets = [_set(0, "a"), _set(1, "a"), _set(2, "b"), _set(3, "c")]
    assert swap_rows(sets) == [12, 12, 13, 10]
    assert swap_rows([_set(0, "a"), _set(1, "a")]) is None  # one patient: no swap


def test_an_image_row_must_be_a_typed_index():
    """A set without an image was once read as image row 0 (``int(image_ref or 0)``)."""
    from mechtune.errors import DataError

    record = _set(0, "a").record
    for bad in (None, "3", -1, True):
        with pytest.raises(DataError, match="image must be a row index >= 0"):
            ImageQuestion(record, bad)  # type: ignore[arg-type]


PATIENTS = ["p0", "p0", "p1", "p1", "p2", "p2"]


def _report(flips: list[int], order: list[int] | None = None) -> dict:
    """A split report with per-question items; ``order`` permutes how items are stored."""
    groups = len(flips)

    def est(v: float) -> dict:
        return {"value": v, "low": v, "high": v, "n": groups}

    order = order or list(range(groups))
    split = {
        "groups": groups,
        "flips": sum(flips),
        "flip_rate": est(sum(flips) / groups),
        "pairwise_flip_rate": est(sum(flips) / groups / 4),
        "margin_difference": est(1.5),
        "accuracy": est(0.9),
        "text_only_agreement": est(0.7),
        "items": {
            "id": [f"q{i}" for i in order],
            "patient": [PATIENTS[i] for i in order],
            "flip": [bool(flips[i]) for i in order],
        },
    }
    return {"heldout": split, "in_distribution": split}


def _table_results() -> dict:
    late = [{**_report(f), "seed": s, "layers": [3, 4, 5]} for s, f in enumerate(LATE)]
    return {
        "baseline": _report(BASE),
        "clamping": {**_report(CLAMP), "layer": 4, "feature": 7},
        "runs": {
            "all": [
                {**_report(ALL[0]), "seed": 0, "layers": None},
                # stored in another order: items are matched by id, not position
                {**_report(ALL[1], order=[5, 4, 3, 2, 1, 0]), "seed": 1, "layers": None},
            ],
            "late": late,
            "sae": [{**r, "same_as": "late"} for r in late],
        },
    }


BASE = [1, 1, 1, 0, 0, 0]
CLAMP = [1, 0, 1, 0, 0, 0]
ALL = ([0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0])
LATE = ([1, 1, 0, 0, 0, 1], [1, 1, 0, 0, 0, 1])


def test_results_table_rows_means_and_paired_differences():
    lines = results_table(_table_results()).splitlines()
    assert len(lines) == 2 + 5
    assert lines[0].count("|") == 11  # 10 columns: no stray pipes in a header
    assert "Δ flip vs baseline [95% interval]" in lines[0]
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:]}
    assert set(rows) == {
        "baseline",
        "clamp L4 f7",
        "LoRA all (all)",
        "LoRA late (L3–5)",
        "LoRA sae (L3–5), same runs as late",
    }
    # two seeds: mean with the min-max range
    assert rows["LoRA all (all)"][2] == "16.7 (16.7–16.7)"
    assert rows["baseline"][2] == "50.0"
    # all-layer LoRA vs baseline: per question, flips averaged over the two seeds are
    # [0, .5, .5, 0, 0, 0] against [1, 1, 1, 0, 0, 0]: mean difference -2/6
    vs_base = rows["LoRA all (all)"][8]
    expected = paired_difference(
        np.array(ALL, dtype=float), np.array([BASE], dtype=float), PATIENTS
    )
    assert expected.value == pytest.approx(-2 / 6)
    assert vs_base == expected.pp() and vs_base.startswith("-33.3 [")
    assert "McNemar" not in vs_base  # two seeds: no McNemar test
    assert rows["LoRA all (all)"][9].rstrip(" |") == "–"  # the reference itself
    assert rows["baseline"][8] == "–"
    # one seed each: McNemar's exact test on the discordant questions (0 vs 1: p = 1)
    clamp = rows["clamp L4 f7"][8]
    assert clamp.endswith("McNemar p = 1") and clamp.startswith("-16.7 [")
    # baseline vs all-layer LoRA: the opposite sign
    assert rows["baseline"][9].rstrip(" |").startswith("+33.3 [")


def test_paired_rows_report_the_differences_and_refuse_mismatched_items():
    results = _table_results()
    cells = {label: c for label, _, c in paired_rows(results)}
    late = cells["LoRA late (L3–5)"]["baseline"]
    assert late is not None and late.value == pytest.approx((0 + 0 - 1 + 0 + 0 + 1) / 6)
    assert (late.n_items, late.n_clusters, late.seeds_a, late.seeds_b) == (6, 3, 2, 1)
    assert cells["baseline"]["baseline"] is None
    results["runs"]["late"][0]["heldout"]["items"]["id"][0] = "q99"
    with pytest.raises(ValueError, match="'q0' is missing"):
        paired_rows(results)


def test_the_table_reports_all_questions_when_the_file_labels_no_families():
    """A questions file without heldout_family flags has only the "all" view: the table
    and the paired differences use it instead of showing n/a everywhere."""
    results = _table_results()

    def only_all(report: dict) -> dict:
        rest = {k: v for k, v in report.items() if k not in ("heldout", "in_distribution")}
        return {**rest, "all": report["heldout"]}

    plain = {
        "baseline": only_all(results["baseline"]),
        "clamping": only_all(results["clamping"]),
        "runs": {k: [only_all(r) for r in v] for k, v in results["runs"].items()},
    }
    assert primary_view(plain) == "all" and primary_view(results) == "heldout"
    assert [c for _, _, c in paired_rows(plain)] == [c for _, _, c in paired_rows(results)]
    lines = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in results_table(plain).splitlines()[2:]
    }
    assert lines["baseline"][2] == "50.0"
    assert lines["baseline"][6] == "n/a"  # no in-distribution view
