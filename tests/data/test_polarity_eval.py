import math
from pathlib import Path

import pytest

from mechtune.data.polarity_eval import (
    CategoryAccuracy,
    ReferenceSentence,
    accuracy_by_category,
    load_reference_sentences,
    score_reference,
)
from mechtune.errors import DataError

FIXTURE = Path(__file__).parent / "fixtures" / "negation_scope.yaml"
CATEGORIES = {
    "affirmed",
    "preposed",
    "postposed",
    "negative_for",
    "free_of",
    "without",
    "resolved",
    "list_negation",
    "clause_boundary",
    "pseudo_negation",
    "uncertainty",
}


def test_fixture_is_large_enough_and_covers_every_cue_category():
    sentences = load_reference_sentences(FIXTURE)
    assert len(sentences) >= 60
    assert len({s.text for s in sentences}) == len(sentences), "a sentence is listed twice"
    by_category: dict[str, int] = {}
    for s in sentences:
        by_category[s.category] = by_category.get(s.category, 0) + 1
    assert set(by_category) == CATEGORIES
    assert min(by_category.values()) >= 4
    verdicts = {v for s in sentences for v in s.expected.values()}
    assert verdicts == {"affirmed", "negated", "uncertain"}
    texts = {s.text: s for s in sentences}
    # The field cases and the examples are in it, with the right labels.
    assert texts["No pneumothorax, pleural effusion, or consolidation."].expected == {
        "pneumothorax": "negated",
        "pleural_effusion": "negated",
        "consolidation": "negated",
    }
    assert texts["The study is negative for pneumothorax."].expected == {"pneumothorax": "negated"}
    assert texts["No effusion; small left pneumothorax."].expected == {
        "pleural_effusion": "negated",
        "pneumothorax": "affirmed",
    }
    assert texts["No change in the moderate left pleural effusion."].expected == {
        "pleural_effusion": "affirmed"
    }
    assert texts["Pneumothorax cannot be excluded."].expected == {"pneumothorax": "uncertain"}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("- text: x\n", "expected a mapping with a 'sentences' list"),
        (
            "sentences:\n  - {text: 'No edema.', category: preposed}\n",
            "sentence 0: missing key 'expect'",
        ),
        (
            "sentences:\n  - {text: ' ', category: preposed, expect: {edema: negated}}\n",
            "sentence 0: 'text' must be a non-empty string",
        ),
        (
            "sentences:\n  - {text: 'No edema.', category: preposed, expect: {edema: negated}}\n"
            "  - {text: 'No edema.', category: preposed, expect: {oedema: negated}}\n",
            "sentence 1: unknown condition 'oedema'",
        ),
        (
            "sentences:\n  - {text: 'No edema.', category: preposed, expect: {edema: absent}}\n",
            "sentence 0: verdict of 'edema' must be one of .* got 'absent'",
        ),
        ("sentences: [\n", "cannot read reference sentences"),
    ],
)
def test_loader_names_the_file_row_and_value(tmp_path, body, message):
    path = tmp_path / "ref.yaml"
    path.write_text(body)
    with pytest.raises(DataError, match=rf"ref\.yaml.*{message}"):
        load_reference_sentences(path)


class _Reader:
    """A stand-in checker with fixed answers."""

    def __init__(self, answers):
        self.answers = answers

    def read(self, text):
        return self.answers.get(text, {})


def test_scoring_counts_mentions_and_sentences_by_category():
    sentences = [
        ReferenceSentence("A", "list", {"edema": "negated", "pneumothorax": "negated"}),
        ReferenceSentence("B", "list", {"edema": "negated"}),
        ReferenceSentence("C", "hedge", {"edema": "uncertain"}),
        ReferenceSentence("D", "hedge", {"pneumothorax": "affirmed"}),
    ]
    reader = _Reader(
        {
            "A": {"edema": ["negated"], "pneumothorax": ["affirmed"]},
            "B": {"edema": ["negated", "negated"]},
            "C": {"edema": ["uncertain", "negated"]},
        }
    )
    results = score_reference(reader, sentences)
    assert [r.detected for r in results] == ["negated", "affirmed", "negated", "mixed", "not found"]
    table = accuracy_by_category(results)
    assert list(table) == ["list", "hedge", "all"]
    lst, hedge, total = table["list"], table["hedge"], table["all"]
    assert (lst.mentions, lst.mentions_right, lst.sentences, lst.sentences_right) == (3, 2, 2, 1)
    assert (hedge.mentions, hedge.mentions_right, hedge.sentences, hedge.sentences_right) == (
        2,
        0,
        2,
        0,
    )
    assert (total.mentions, total.mentions_right, total.sentences, total.sentences_right) == (
        5,
        2,
        4,
        1,
    )
    assert lst.accuracy == pytest.approx(2 / 3)
    assert [w.condition for w in lst.wrong] == ["pneumothorax"]
    assert lst.to_dict()["wrong"] == [
        {"text": "A", "condition": "pneumothorax", "expected": "negated", "got": "affirmed"}
    ]


@pytest.mark.parametrize(("right", "n"), [(2, 3), (0, 9), (9, 9), (22, 44)])
def test_accuracy_interval_is_the_wilson_score_interval(right, n):
    z = 1.959963984540054
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = CategoryAccuracy("x", mentions=n, mentions_right=right).interval()
    assert low == pytest.approx(max(0.0, centre - half), abs=1e-9)
    assert high == pytest.approx(min(1.0, centre + half), abs=1e-9)
    assert CategoryAccuracy("empty").interval() == (0.0, 1.0)
