"""The random-range control of the paraphrase study: the draws, and the table rows and
paired statistics that answer "does the SAE-chosen range beat random ranges of its width?"
(no model: results dicts built by hand)."""

import numpy as np
import pytest

from mechtune.errors import ConfigError
from mechtune.eval.metrics import paired_difference
from mechtune.pipelines.paraphrase_controls import is_random_range, random_layer_ranges
from mechtune.pipelines.paraphrase_report import (
    PAIRED_REFERENCES,
    POOLED_RANDOM,
    conditions,
    paired_references,
    paired_rows,
    results_table,
    sae_minus_random,
)
from tests.pipelines.test_paraphrase import PATIENTS, _report


def test_random_ranges_are_contiguous_distinct_and_never_the_sae_range() -> None:
    drawn = random_layer_ranges([5, 6, 7], 12, 4, seed=0)
    assert list(drawn.ranges) == ["random-0", "random-1", "random-2", "random-3"]
    windows = list(drawn.ranges.values())
    assert all(w == tuple(range(w[0], w[0] + 3)) and 0 <= w[0] <= 9 for w in windows)
    assert len(set(windows)) == 4 and (5, 6, 7) not in windows
    assert (drawn.width, drawn.requested, drawn.pool, drawn.note) == (3, 4, 9, None)
    # seeded: the same seed draws the same ranges, another seed others
    assert random_layer_ranges([5, 6, 7], 12, 4, seed=0) == drawn
    assert random_layer_ranges([5, 6, 7], 12, 4, seed=1).ranges != drawn.ranges
    # every window other than the SAE range can be drawn
    seen = {w for s in range(40) for w in random_layer_ranges([5, 6, 7], 12, 1, s).ranges.values()}
    assert seen == {tuple(range(s, s + 3)) for s in range(10)} - {(5, 6, 7)}


def test_random_ranges_say_when_the_model_has_too_few_blocks() -> None:
    few = random_layer_ranges([2, 3, 4], 6, 5, seed=0)
    assert sorted(few.ranges.values()) == [(0, 1, 2), (1, 2, 3), (3, 4, 5)]
    assert few.pool == 3 and few.note is not None
    assert "5 random ranges asked" in few.note and "all 3 drawn, none twice" in few.note
    none = random_layer_ranges([0, 1, 2], 3, 2, seed=0)
    assert none.ranges == {} and none.pool == 0
    assert none.note is not None and "no random-range control" in none.note
    saved = few.to_dict()
    assert saved["drawn"]["random-0"] == list(few.ranges["random-0"])
    assert (saved["width"], saved["requested"], saved["pool"], saved["seed"]) == (3, 5, 3, 0)
    with pytest.raises(ConfigError, match=r"the SAE range \[7\] is not a range of blocks 0..5"):
        random_layer_ranges([7], 6, 1, seed=0)
    assert (
        is_random_range("random-12")
        and not is_random_range("random")
        and not is_random_range("sae")
    )


SAE = ([0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 0])
RANDOM = {
    "random-0": (([1, 0, 1, 0, 0, 0], [1, 1, 0, 0, 0, 0]), [0, 1]),
    "random-1": (([0, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1]), [3, 4]),
    "random-2": (([1, 1, 1, 0, 0, 0], [0, 0, 1, 0, 0, 0]), [1, 2]),
}
BASE = [1, 1, 1, 1, 0, 0]
ALL = ([0, 0, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1])


def _results(draws: tuple[str, ...] = tuple(RANDOM)) -> dict:
    def runs(flips, layers):
        return [{**_report(f), "seed": s, "layers": layers} for s, f in enumerate(flips)]

    out = {
        "baseline": _report(BASE),
        "runs": {"all": runs(ALL, None), "sae": runs(SAE, [2, 3])},
    }
    for name in draws:
        out["runs"][name] = runs(*RANDOM[name])
    return out


def test_the_table_shows_each_random_range_their_pooled_row_and_delta_vs_sae() -> None:
    results = _results()
    lines = results_table(results).splitlines()
    assert "Δ flip vs SAE range [95% interval]" in lines[0]
    assert lines[0].count("|") == 12  # 11 columns
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ") for line in lines[2:]}
    assert {"LoRA random-0 (L0–1)", "LoRA random-1 (L3–4)", "LoRA random-2 (L1–2)"} < set(rows)
    pooled = "LoRA random ranges, pooled (3 draws of 2 blocks × 2 seeds)"
    assert list(rows)[-1] == pooled
    assert rows[pooled][1] == "6"  # runs pooled: 3 draws x 2 seeds
    # per question: random flips averaged over 3 draws x 2 seeds, minus the SAE's over 2
    random = np.array([f for flips, _ in RANDOM.values() for f in flips], dtype=float)
    want = paired_difference(random, np.array(SAE, dtype=float), PATIENTS)
    assert want.value == pytest.approx((random.mean(0) - np.mean(SAE, 0)).mean())
    assert rows[pooled][10].rstrip(" |") == want.pp()
    # one draw against the SAE range, and the SAE range's own cell
    one = paired_difference(
        np.array(RANDOM["random-1"][0], dtype=float), np.array(SAE, dtype=float), PATIENTS
    )
    assert rows["LoRA random-1 (L3–4)"][10].rstrip(" |") == one.pp()
    assert rows["LoRA sae (L2–3)"][10].rstrip(" |") == "–"
    labels = [label for label, _, _ in conditions(results)]
    assert labels[-1] == pooled and [k for _, k, _ in conditions(results)][-1] == POOLED_RANDOM


def test_sae_minus_random_is_the_pooled_difference_with_the_sign_of_the_question() -> None:
    results = _results()
    control = sae_minus_random(results)
    random = np.array([f for flips, _ in RANDOM.values() for f in flips], dtype=float)
    want = paired_difference(np.array(SAE, dtype=float), random, PATIENTS)
    assert control == want
    assert control.value < 0  # the hand-made SAE range flips less than the random ones
    assert (control.seeds_a, control.seeds_b, control.n_clusters) == (2, 6, 3)
    pooled = {key: cells for _, key, cells in paired_rows(results)}[POOLED_RANDOM]["sae"]
    assert pooled is not None and pooled.value == pytest.approx(-control.value)
    # without the control: no SAE column, no pooled row, no summary
    plain = _results(draws=())
    assert paired_references(plain) == PAIRED_REFERENCES and sae_minus_random(plain) is None
    assert POOLED_RANDOM not in [k for _, k, _ in conditions(plain)]
    # one draw: its own row is the comparison, no pooled row
    single = _results(draws=("random-0",))
    assert POOLED_RANDOM not in [k for _, k, _ in conditions(single)]
    one = sae_minus_random(single)
    assert one is not None and one.seeds_b == 2


def test_the_view_without_items_gives_no_paired_control() -> None:
    results = _results()
    for reports in results["runs"].values():
        for r in reports:
            del r["heldout"]["items"]
    assert sae_minus_random(results) is None
