"""Figures that must render whatever the analysis found."""

import math

from PIL import Image

from mechtune.eval.figures import auc_by_layer_chart


def test_auc_chart_renders_undefined_aucs(tmp_path):
    """No flip among the analysis pairs makes every AUC undefined (None in results.json,
    NaN in memory): the chart still renders, marking those layers n/a, instead of failing
    on None - None as the quick demo once did."""
    undefined = auc_by_layer_chart(
        {0: None, 1: math.nan, 2: None},
        {0: (None, None), 1: (math.nan, math.nan), 2: (None, None)},
        [1],
        tmp_path / "none.png",
    )
    mixed = auc_by_layer_chart(
        {0: 0.6, 1: None, 2: 0.8}, {0: (0.5, 0.7), 1: (None, None), 2: (0.7, 0.9)}, [2],
        tmp_path / "mixed.png",
    )  # fmt: skip
    for path in (undefined, mixed):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.size[0] > 100
    assert undefined.read_bytes() != mixed.read_bytes()


def test_auc_chart_draws_the_shuffled_label_band(tmp_path):
    auc, ci = {0: 0.6, 1: 0.8}, {0: (0.5, 0.7), 1: (0.7, 0.9)}
    plain = auc_by_layer_chart(auc, ci, [1], tmp_path / "plain.png")
    band = auc_by_layer_chart(
        auc, ci, [1], tmp_path / "band.png", shuffled={0: (0.42, 0.55), 1: (None, None)}
    )
    with Image.open(plain) as a, Image.open(band) as b:
        assert a.size == b.size
        assert a.tobytes() != b.tobytes()


def test_one_bar_charts_raise_no_numpy_deprecation(tmp_path):
    """A chart with one bar per series (a tiny study's single polarity slice, one traced
    layer) passed matplotlib a (2, 1) error array, which it read element-wise into NumPy's
    "array to scalar" DeprecationWarning (an error in a future NumPy): every bar chart
    with intervals renders one bar cleanly."""
    import warnings
    from types import SimpleNamespace

    import numpy as np

    from mechtune.eval.figures import alpha_bars, blind_spot_chart

    one = {"a": SimpleNamespace(value=0.5, low=0.4, high=0.6)}
    claims = {"heldout": {"accuracy_by_polarity": one, "pairwise_by_attribute": one}}
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        paths = [
            blind_spot_chart(claims, tmp_path / "blind.png"),
            alpha_bars(*(np.array([v]) for v in (0.5, 0.4, 0.6, 1.0)), tmp_path / "alpha.png"),
            auc_by_layer_chart({0: 0.7}, {0: (0.6, 0.8)}, [0], tmp_path / "auc.png"),
        ]
    for path in paths:
        with Image.open(path) as image:
            assert image.format == "PNG"
