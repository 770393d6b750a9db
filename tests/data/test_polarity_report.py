"""The polarity report's counting and gate logic, on hand-built counts (no medspacy)."""

import pytest

from mechtune.data.polarity_check import (
    DEFAULT_MAX_UNCERTAIN,
    Mention,
    PolarityReport,
    _judge,
)


def _report(agree, disagree, uncertain, unmatched=0):
    return PolarityReport(
        n_mentions=agree + disagree + uncertain + unmatched,
        agree=agree,
        disagree=disagree,
        uncertain=uncertain,
        unmatched=unmatched,
        by_family={
            "neg.no": {"agree": 40, "disagree": 1, "uncertain": 9},
            "aff.bare": {"agree": agree - 40, "disagree": disagree - 1, "unmatched": unmatched},
        },
        by_polarity={"negated": {"agree": 40, "disagree": 1, "uncertain": 9}},
    )


def test_uncertain_mentions_are_counted_apart_from_disagreements():
    report = _report(agree=90, disagree=1, uncertain=9, unmatched=3)
    # disagreement over decided mentions (90 + 1); uncertain over matched (90 + 1 + 9)
    assert report.disagreement_rate == pytest.approx(1 / 91)
    assert report.uncertain_rate == pytest.approx(9 / 100)
    assert report.rates_by_family()["neg.no"] == {
        "disagreement_rate": pytest.approx(1 / 41),
        "uncertain_rate": pytest.approx(9 / 50),
    }
    assert report.rates_by_family()["aff.bare"] == {
        "disagreement_rate": 0.0,
        "uncertain_rate": 0.0,
    }
    assert report.rates_by_polarity()["negated"]["uncertain_rate"] == pytest.approx(9 / 50)
    d = report.to_dict()
    assert d["uncertain"] == 9 and d["uncertain_rate"] == pytest.approx(0.09)
    assert d["disagreement_rate"] == pytest.approx(1 / 91)
    assert d["rates_by_family"]["neg.no"]["uncertain_rate"] == pytest.approx(0.18)
    assert d["rates_by_polarity"]["negated"]["disagreement_rate"] == pytest.approx(1 / 41)


def test_the_uncertain_limit_gates_and_is_configurable():
    report = _report(agree=90, disagree=1, uncertain=9)
    assert DEFAULT_MAX_UNCERTAIN == 0.05
    # 1.1% disagreement passes 2%, but 9% uncertain fails the default 5% ...
    assert not report.passes(0.02)
    assert report.failures(0.02) == ["uncertain rate 9.00% > 5.00% (9 of 100 matched mentions)"]
    # ... and passes a 10% limit; the disagreement limit still applies on its own.
    assert report.passes(0.02, max_uncertain=0.10)
    assert not report.passes(0.01, max_uncertain=0.10)
    assert report.failures(0.01, 0.10) == [
        "disagreement rate 1.10% > 1.00% (1 of 91 decided mentions)"
    ]
    assert len(report.failures(0.01, 0.05)) == 2


def test_an_empty_report_passes_any_limit():
    report = PolarityReport()
    assert report.disagreement_rate == report.uncertain_rate == 0.0
    assert report.passes(0.0, 0.0)


@pytest.mark.parametrize(
    ("polarity", "found", "outcome", "detected"),
    [
        ("negated", {"edema": ["negated"]}, "agree", "negated"),
        ("negated", {"edema": ["affirmed"]}, "disagree", "affirmed"),
        ("negated", {"edema": ["uncertain"]}, "uncertain", "uncertain"),
        ("affirmed", {"edema": ["uncertain", "affirmed"]}, "uncertain", "mixed"),
        # a wrong definite verdict is a disagreement even beside an uncertain one
        ("affirmed", {"edema": ["uncertain", "negated"]}, "disagree", "mixed"),
        ("affirmed", {"pneumothorax": ["affirmed"]}, "unmatched", "not found"),
        # an absence in affirmative words: only a negation anywhere disagrees
        ("absence_affirmative", {"pneumothorax": ["uncertain"]}, "agree", "no negation"),
        ("absence_affirmative", {"pneumothorax": ["negated"]}, "disagree", "negation cue"),
    ],
)
def test_judge(polarity, found, outcome, detected):
    assert _judge(Mention("edema", polarity), found) == (outcome, detected)
