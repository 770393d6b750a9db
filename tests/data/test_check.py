import json

import pytest

from mechtune.data.builders.contextual import build_contextual
from mechtune.data.builders.paraphrase import build_paraphrase
from mechtune.data.builders.polarity import build_polarity
from mechtune.data.check import (
    DEFAULT_MAX_UNCERTAIN,
    PolarityCheckFailed,
    check_dataset,
    labelled_texts,
)
from mechtune.data.polarity_check import PolarityReport
from mechtune.data.synthetic import SyntheticConfig, sample_studies
from mechtune.errors import ConfigError
from tests.progress_helpers import Recorder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("built")
    studies = list(sample_studies(SyntheticConfig(n_studies=300)))
    build_polarity(studies, root / "polarity")
    build_contextual(studies, root / "contextual")
    build_paraphrase(studies, root / "paraphrase")
    return root


def test_labelled_texts_cover_every_candidate(built):
    items = labelled_texts(built / "contextual")
    pos = [m.polarity for it in items for m in it.mentions]
    assert "negated" in pos and "affirmed" in pos
    mcq = labelled_texts(built / "polarity")
    kinds = {m.polarity for it in mcq for m in it.mentions}
    assert kinds == {"affirmed", "negated", "absence_affirmative"}


def test_sampling_is_even_and_deterministic(built):
    a = labelled_texts(built / "paraphrase", sample_rows=10)
    b = labelled_texts(built / "paraphrase", sample_rows=10)
    assert a == b and 10 * 5 <= len(a) <= 10 * 7


@pytest.mark.clinical
def test_generated_data_reads_as_labelled_with_nothing_uncertain(built):
    # The gate for mechtune's own data: every generated sentence, every table, no
    # disagreement and no uncertain mention (the default limits are 2% and 5%).
    pytest.importorskip("medspacy")

    for kind in ("polarity", "contextual", "paraphrase"):
        track = Recorder()
        report = check_dataset(built / kind, sample_rows=None, track=track)
        track.check_complete()  # one count per sentence checked
        assert [(s.description, s.total) for s in track.stages] == [
            (f"polarity check: {built / kind}", report.n_texts)
        ]
        assert (report.disagree, report.uncertain, report.unmatched) == (0, 0, 0), (
            report.examples,
            report.uncertain_examples,
        )
        assert report.n_mentions > 1000
        check = json.loads((built / kind / "manifest.json").read_text())["polarity_check"]
        assert check["passed"] is True and check["sample_rows"] is None
        assert (check["max_disagreement"], check["max_uncertain"]) == (0.02, 0.05)
        assert check["uncertain_rate"] == 0.0


class _FixedChecker:
    """A stand-in for PolarityChecker that returns a hand-built report."""

    def __init__(self, report):
        self.report = report

    def check(self, items, progress=None):
        return self.report


def _hedged_report():
    return PolarityReport(
        n_texts=100,
        n_mentions=100,
        agree=93,
        disagree=1,
        uncertain=6,
        by_family={"neg.no": {"agree": 93, "disagree": 1, "uncertain": 6}},
        uncertain_examples=[
            {
                "text": "Possible pneumothorax.",
                "condition": "pneumothorax",
                "expected": "affirmed",
                "detected": "uncertain",
                "family": "neg.no",
            }
        ],
    )


def test_the_uncertain_rate_gates_a_dataset_and_its_limit_is_configurable(built):
    # 6 of 100 matched mentions uncertain (6%), 1 of 94 decided disagree (1.06%).
    target = built / "paraphrase"
    checker = _FixedChecker(_hedged_report())
    with pytest.raises(PolarityCheckFailed, match=r"uncertain rate 6\.00% > 5\.00%") as exc:
        check_dataset(target, checker=checker, sample_rows=5)
    assert "Possible pneumothorax." in str(exc.value)
    assert "disagreement rate" not in str(exc.value)
    check = json.loads((target / "manifest.json").read_text())["polarity_check"]
    assert check["passed"] is False and check["max_uncertain"] == DEFAULT_MAX_UNCERTAIN == 0.05
    assert check["uncertain"] == 6 and check["uncertain_rate"] == pytest.approx(0.06)
    assert check["rates_by_family"]["neg.no"]["uncertain_rate"] == pytest.approx(0.06)

    report = check_dataset(target, checker=checker, sample_rows=5, max_uncertain=0.07)
    assert report.uncertain == 6
    assert json.loads((target / "manifest.json").read_text())["polarity_check"]["passed"]

    with pytest.raises(PolarityCheckFailed, match=r"disagreement rate 1\.06% > 1\.00%"):
        check_dataset(target, checker=checker, max_disagreement=0.01, max_uncertain=0.07)


@pytest.mark.parametrize("field", ["max_disagreement", "max_uncertain"])
def test_gate_limits_must_be_rates(built, field):
    with pytest.raises(ConfigError, match=rf"{field} must be a rate in \[0, 1\], got 1.5"):
        check_dataset(built / "paraphrase", checker=_FixedChecker(PolarityReport()), **{field: 1.5})


@pytest.mark.clinical
def test_polarity_check_fails_a_wrong_template(tmp_path, built):
    pytest.importorskip("medspacy")
    # Corrupt the data: swap every correct claim for its first negative.
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mechtune.data.io import read_table

    target = tmp_path / "bad"
    shutil.copytree(built / "contextual", target)
    rows = read_table(target / "claims.parquet")
    for r in rows:
        if r["flipped"][0] == "existence":
            r["correct"], r["negatives"][0] = r["negatives"][0], r["correct"]
    pq.write_table(pa.Table.from_pylist(rows), target / "claims.parquet")
    with pytest.raises(PolarityCheckFailed, match="polarity check failed"):
        check_dataset(target, sample_rows=100)
    manifest = json.loads((target / "manifest.json").read_text())
    assert manifest["polarity_check"]["passed"] is False
