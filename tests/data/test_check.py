import json

import pytest

from mechtune.data.builders.contextual import build_contextual
from mechtune.data.builders.paraphrase import build_paraphrase
from mechtune.data.builders.polarity import build_polarity
from mechtune.data.check import labelled_texts
from mechtune.data.synthetic import SyntheticConfig, sample_studies


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


def test_polarity_check_on_a_sample_passes_and_is_recorded(built):
    pytest.importorskip("medspacy")
    from mechtune.data.check import check_dataset

    for kind in ("polarity", "contextual", "paraphrase"):
        report = check_dataset(built / kind, sample_rows=150)
        assert report.passes(0.02), report.examples
        manifest = json.loads((built / kind / "manifest.json").read_text())
        assert manifest["polarity_check"]["passed"] is True
        assert manifest["polarity_check"]["sample_rows"] == 150


def test_polarity_check_fails_a_wrong_template(tmp_path, built):
    pytest.importorskip("medspacy")
    # Corrupt the data: swap every correct claim for its first negative.
    import shutil

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mechtune.data.check import PolarityCheckFailed, check_dataset
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
