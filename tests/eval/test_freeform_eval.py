"""Free-form claim accuracy against a hand computation on a fake scorer; the report's
``freeform`` block and items; the study table's free-form columns and paired Δ."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch

from mechtune.data.freeform import load_freeform
from mechtune.data.schema import Finding, Study
from mechtune.eval.metrics import proportion
from mechtune.eval.negation import EvalStudies, evaluate_negation
from mechtune.pipelines.negation_report import paired_cells, results_table

SETS = [
    {
        "id": "a1",
        "half": "test",
        "polarity": "affirmative",
        "kinds": ["side"],
        "conditions": ["pneumothorax"],
        "attributes": ["laterality"],
        "correct": {"text": "AFF", "truth": ["+pneumothorax left"]},
        "foils": [{"text": "AFF-FOIL", "truth": ["-pneumothorax"]}],
    },
    {
        "id": "n1",
        "half": "test",
        "polarity": "negated",
        "kinds": ["plain"],
        "conditions": ["pleural_effusion"],
        "attributes": [],
        "correct": {"text": "NEG", "truth": ["-pleural_effusion"]},
        "foils": [{"text": "NEG-FOIL", "truth": ["+pleural_effusion"]}],
    },
    {
        "id": "v1",
        "half": "val",
        "polarity": "negated",
        "kinds": ["plain"],
        "conditions": ["pleural_effusion"],
        "attributes": [],
        "correct": {"text": "VAL", "truth": ["-pleural_effusion"]},
        "foils": [{"text": "VAL-FOIL", "truth": ["+pleural_effusion"]}],
    },
]
# image s1 = e0, s2 = e1: AFF@s1 right (1 > 0.5), NEG@s1 wrong (0 < 1), NEG@s2 right (1 > 0)
VECTORS = {"AFF": [1.0, 0.0], "AFF-FOIL": [0.5, 0.0], "NEG": [0.0, 1.0], "NEG-FOIL": [1.0, 0.0]}


class FakeScorer:
    """Texts of VECTORS get their vector; any other text a fixed pseudo-random one."""

    def encode_texts(self, texts):
        rows = []
        for t in texts:
            if t in VECTORS:
                rows.append(VECTORS[t])
            else:
                h = hashlib.sha256(t.encode()).digest()
                rows.append([h[0] / 255 - 0.5, h[1] / 255 - 0.5])
        return torch.tensor(rows, dtype=torch.float32)

    def encode_images(self, images):
        raise AssertionError("images are given as embeddings")


@pytest.fixture
def sets(tmp_path):
    path = tmp_path / "sets.jsonl"
    path.write_text("\n".join(json.dumps(s) for s in SETS) + "\n")
    return load_freeform(path)


def studies(split):
    s1 = Study(
        "s1",
        "p1",
        (Finding("pneumothorax", True, "left"), Finding("pleural_effusion", False)),
    )
    s2 = Study("s2", "p2", (Finding("pneumothorax", False), Finding("pleural_effusion", False)))
    return EvalStudies([s1, s2], torch.eye(2), split)


def test_accuracy_matches_a_hand_computation(sets):
    report = evaluate_negation(FakeScorer(), studies("test"), freeform=sets)
    items = report["items"]["freeform"]
    assert items["id"] == ["a1@s1", "n1@s2", "n1@s1"]  # set order; n1's studies by hash
    assert items["correct"] == [True, True, False]
    assert items["patient"] == ["p1", "p2", "p1"]
    assert items["slice"] == ["affirmative", "negated", "negated"]
    assert items["scores"][0] == [1.0, 0.5]
    block = report["freeform"]
    assert block["claim_accuracy"] == proportion([1, 1, 0], clusters=["p1", "p2", "p1"])
    assert block["claim_accuracy"].value == pytest.approx(2 / 3)
    assert block["accuracy_by_polarity"]["affirmative"].value == 1.0
    assert block["accuracy_by_polarity"]["negated"] == proportion([1, 0], clusters=["p2", "p1"])
    assert block["accuracy_by_kind"]["side"].value == 1.0
    assert block["accuracy_by_kind"]["plain"].value == 0.5
    assert block["accuracy_by_kind"]["hedge"] is None
    assert block["sets"] == 2 and block["matched_sets"] == 2 and block["items"] == 3
    assert block["half_hash"] == sets.hashes()["test"]
    assert "freeform" not in report["not_available"]


def test_the_split_picks_its_half_and_the_cap_and_off_switch_apply(sets):
    val = evaluate_negation(FakeScorer(), studies("val"), freeform=sets)
    assert val["items"]["freeform"]["id"] == ["v1@s2", "v1@s1"]
    assert val["freeform"]["half"] == "val"
    capped = evaluate_negation(FakeScorer(), studies("test"), freeform=sets, freeform_max_studies=1)
    assert len(capped["items"]["freeform"]["id"]) == 2 and capped["freeform"]["capped"] == 1
    off = evaluate_negation(FakeScorer(), studies("test"))
    assert "freeform" not in off and "freeform" not in off["items"]
    assert "turned off" in off["not_available"]["freeform"]
    train = evaluate_negation(FakeScorer(), studies("train"), freeform=sets)
    assert "none for the train split" in train["not_available"]["freeform"]


def test_a_source_without_sides_skips_the_sided_set_by_reason(sets):
    from mechtune.data.freeform_match import SourceAttributes

    data = studies("test")
    unsided = [
        Study("x", "px", (Finding("pneumothorax", True), Finding("pleural_effusion", False)))
    ]
    report = evaluate_negation(
        FakeScorer(), data, freeform=sets, freeform_source=SourceAttributes.of(unsided)
    )
    assert report["freeform"]["skipped_sets"] == {"a1": "source_lacks_laterality"}
    assert report["freeform"]["skipped"]["source_lacks_laterality"] == 1
    assert report["freeform"]["accuracy_by_polarity"]["affirmative"] is None


def _run(correct):
    ids = ["a1@s1", "n1@s1", "n1@s2"]
    return {
        "items": {
            "freeform": {
                "id": ids,
                "patient": ["p1", "p1", "p2"],
                "slice": ["affirmative", "negated", "negated"],
                "correct": correct,
            },
            "claims": {
                "id": ["c"],
                "patient": ["p1"],
                "heldout": [True],
                "slice": ["negated"],
                "correct": [True],
            },
            "polarity_mcq": {"id": [], "patient": [], "negated": [], "affirmative": []},
            "retrieval": {"id": [], "patient": [], "R@1": [], "R@5": []},
        },
        "freeform": {
            "accuracy_by_polarity": {
                "affirmative": {"value": correct[0]},
                "negated": {"value": np.mean(correct[1:])},
            }
        },
    }


def test_the_study_reports_free_form_deltas_vs_the_reference():
    nast, lora = _run([False, True, True]), _run([True, False, True])
    cells = paired_cells([nast], [lora])
    assert cells["free-form aff"].value == pytest.approx(-1.0)
    assert cells["free-form neg"].value == pytest.approx(0.5)
    # a run without free-form items (turned off) gives n/a, not an error
    bare = {"items": {k: v for k, v in nast["items"].items() if k != "freeform"}}
    assert paired_cells([bare], [lora])["free-form aff"] is None
    table = results_table({"runs": {"uniform-lora": [lora], "nast": [nast]}})
    assert "free-form aff / neg" in table and "| free-form aff | free-form neg |" in table
    assert "0.0 / 100.0" in table  # nast: affirmative 0, negated 1
