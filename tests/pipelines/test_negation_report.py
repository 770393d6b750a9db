"""The negation study's tables, from small synthetic per-item results (no training)."""

import numpy as np
import pytest

from mechtune.eval.metrics import paired_difference
from mechtune.pipelines.negation_report import (
    PAIRED_METRICS,
    paired_comparisons,
    paired_table,
    results_table,
)

CLAIM_IDS = ["s1-c0-h", "s1-c1-h", "s2-c0-h", "s3-c0-h", "s1-c0-i", "s3-c0-i"]
CLAIM_PATIENTS = ["p1", "p1", "p2", "p1", "p1", "p1"]
HELDOUT = [True, True, True, True, False, False]
SLICES = ["affirmative", "negated", "contralateral", "negated", "affirmative", "negated"]


def _report(claims: list[int], mcq: list[int], r1: list[int], value: float = 0.5) -> dict:
    def est(v: float) -> dict:
        return {"value": v, "low": v - 0.1, "high": v + 0.1, "n": 3}

    return {
        "retrieval": {"R@1": est(value), "R@5": est(value)},
        "claims": {"heldout": {"claim_accuracy": est(value)}},
        "retention": est(0.9),
        "items": {
            "claims": {
                "id": CLAIM_IDS,
                "patient": CLAIM_PATIENTS,
                "heldout": HELDOUT,
                "slice": SLICES,
                "correct": [bool(c) for c in claims],
            },
            "polarity_mcq": {
                "id": ["s1", "s2", "s3"],
                "patient": ["p1", "p2", "p1"],
                "negated": [bool(c) for c in mcq],
                "affirmative": [bool(c) for c in mcq],
            },
            "retrieval": {
                "id": ["s1", "s2", "s3"],
                "patient": ["p1", "p2", "p1"],
                "R@1": [bool(c) for c in r1],
                "R@5": [True, True, True],
            },
        },
    }


UNIFORM = (
    _report([1, 1, 0, 1, 1, 1], [1, 0, 0], [0, 1, 0]),
    _report([1, 0, 0, 1, 1, 0], [1, 1, 0], [0, 1, 1]),
)
NAST = (
    _report([1, 1, 1, 0, 1, 1], [1, 1, 1], [1, 1, 0]),
    _report([0, 1, 1, 0, 1, 1], [1, 1, 1], [1, 1, 0]),
)
ZERO = (_report([0, 0, 0, 0, 1, 0], [0, 0, 0], [1, 1, 1]),)


def _results() -> dict:
    return {"runs": {"zero-shot": list(ZERO), "uniform-lora": list(UNIFORM), "nast": list(NAST)}}


def test_paired_comparisons_average_seeds_per_item():
    paired = paired_comparisons(_results())
    assert set(paired) == {"zero-shot", "nast"}
    assert set(paired["nast"]) == {c for c, *_ in PAIRED_METRICS}
    # held-out claim sets (first four): NAST averages [.5, 1, 1, 0], uniform [1, .5, 0, 1]
    claim = paired["nast"]["claim acc"]
    assert claim.value == pytest.approx((-0.5 + 0.5 + 1 - 1) / 4)
    assert (claim.n_items, claim.n_clusters, claim.seeds_a, claim.seeds_b) == (4, 2, 2, 2)
    a = np.array([[1, 1, 1, 0], [0, 1, 1, 0]], dtype=float)
    b = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], dtype=float)
    assert claim == paired_difference(a, b, ["p1", "p1", "p2", "p1"])
    # the negated slice: claim sets 1 and 3; the contralateral slice: set 2 alone
    negated = paired["nast"]["negated acc"]
    assert negated.value == pytest.approx(((1 - 0.5) + (0 - 1)) / 2)
    assert paired["nast"]["contralateral"].value == pytest.approx(1.0)
    # in-distribution sets 4 and 5: NAST [1, 1], uniform [1, .5]
    assert paired["nast"]["claim acc, in-dist"].value == pytest.approx(0.25)
    assert paired["nast"]["R@1"].value == pytest.approx((1 + 0 - 0.5) / 3)
    # one seed against two: no McNemar test
    assert paired["zero-shot"]["claim acc"].mcnemar_p is None


def test_paired_table_and_results_table():
    table = paired_table(_results())
    lines = table.splitlines()
    assert lines[0].startswith("Δ vs uniform LoRA [95% interval], percentage points")
    header = lines[2]
    assert header.count("|") == 3 + len(PAIRED_METRICS)
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[4:]}
    assert set(rows) == {"zero-shot", "nast"}
    assert rows["nast"][1] == "2"
    assert rows["nast"][2] == paired_comparisons(_results())["nast"]["claim acc"].pp()
    full = results_table(_results())
    assert table in full and "| uniform-lora | 2 |" in full
    # then each method minus zero-shot: uniform LoRA's Δ is the negative of zero-shot's
    versus_zero = paired_table(_results(), "zero-shot")
    assert full.endswith(versus_zero) and versus_zero.startswith("Δ vs zero-shot [95% interval]")
    zero_rows = {
        line.split(" | ")[0].lstrip("| "): line.split(" | ")
        for line in versus_zero.splitlines()[4:]
    }
    assert set(zero_rows) == {"uniform-lora", "nast"}
    back = paired_comparisons(_results(), "zero-shot")["uniform-lora"]["claim acc"]
    assert back.value == pytest.approx(
        -paired_comparisons(_results())["zero-shot"]["claim acc"].value
    )
    # one seed each: McNemar's exact p appears in the cells
    single = {"runs": {"uniform-lora": [UNIFORM[0]], "nast": [NAST[0]]}}
    assert "McNemar p = " in paired_table(single)
    # the caption names the patients the study evaluated on
    assert "on the same test items" in lines[0]
    validation = {**_results(), "config": {"eval_split": "val"}}
    assert "on the same validation items" in paired_table(validation).splitlines()[0]


def test_cross_study_cells_pair_methods_of_two_studies_on_the_same_items():
    from mechtune.errors import DataError
    from mechtune.pipelines.negation_report import cross_study_cells, paired_cells

    config = {"data": "runs/x", "eval_split": "test", "data_seed": 0}
    a = {"config": config, "runs": {"nast": list(NAST)}}
    b = {"config": dict(config), "runs": {"uniform-lora": list(UNIFORM)}}
    cells = cross_study_cells(a, "nast", b, "uniform-lora")
    # the same as within one study
    assert cells == paired_comparisons(_results())["nast"]
    with pytest.raises(DataError, match="differ in eval_split \\('test' vs 'val'\\)"):
        cross_study_cells(
            a, "nast", {**b, "config": {**config, "eval_split": "val"}}, "uniform-lora"
        )
    with pytest.raises(DataError, match="the second study has no runs of 'nast'"):
        cross_study_cells(a, "nast", b, "nast")
    # seeds and a condition narrow both sides: a slice of the claim sets, the rest n/a
    seeded = {"config": config, "runs": {"nast": [{**NAST[0], "seed": 0}, {**NAST[1], "seed": 1}]}}
    ref = {"config": config, "runs": {"uniform-lora": [{**UNIFORM[0], "seed": 0}]}}
    one = cross_study_cells(seeded, "nast", ref, "uniform-lora", seeds=[0])
    assert one["claim acc"] == paired_cells([NAST[0]], [UNIFORM[0]])["claim acc"]
    with pytest.raises(DataError, match=r"no runs of seeds \[5\] in both studies"):
        cross_study_cells(seeded, "nast", ref, "uniform-lora", seeds=[5])
    conditioned = {
        **NAST[0],
        "items": {
            **NAST[0]["items"],
            "claims": {**NAST[0]["items"]["claims"], "condition": ["a", "b", "a", "b", "a", "b"]},
        },
    }
    ref_c = {
        **UNIFORM[0],
        "items": {
            **UNIFORM[0]["items"],
            "claims": {
                **UNIFORM[0]["items"]["claims"],
                "condition": ["a", "b", "a", "b", "a", "b"],
            },
        },
    }
    sliced = cross_study_cells(
        {"config": config, "runs": {"nast": [conditioned]}},
        "nast",
        {"config": config, "runs": {"uniform-lora": [ref_c]}},
        "uniform-lora",
        condition="a",
    )
    # held-out sets about "a": sets 0 and 2; NAST [1, 1], uniform [1, 0]
    assert sliced["claim acc"].value == pytest.approx(0.5) and sliced["claim acc"].n_items == 2
    assert sliced["R@1"] is None and sliced["MCQ neg"] is None
    bare = {k: v for k, v in NAST[0].items() if k != "items"}
    with pytest.raises(DataError, match="the first study's 'nast' runs lack their items"):
        cross_study_cells({**a, "runs": {"nast": [bare]}}, "nast", b, "uniform-lora")


def test_no_paired_table_without_the_reference_or_items():
    assert paired_table({"runs": {"nast": list(NAST)}}) == ""
    old = {k: v for k, v in UNIFORM[0].items() if k != "items"}
    assert paired_table({"runs": {"uniform-lora": [old], "nast": list(NAST)}}) == ""
    # a seed whose value was NaN (written as null) makes the cell n/a, not a smaller mean
    broken = {**NAST[1], "retention": {"value": None, "low": None, "high": None, "n": 0}}
    lines = results_table({"runs": {"nast": [NAST[0], broken]}}).splitlines()
    assert lines[2].rstrip(" |").endswith("n/a")
