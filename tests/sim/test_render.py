import numpy as np
import pytest

from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding, Study
from mechtune.sim.render import RenderConfig, Renderer, side_sign

BASE = [Finding(c.id, False) for c in load_ontology().pathologies]


def study(*findings, sid="s1"):
    conds = {f.condition for f in findings}
    return Study(sid, "p1", tuple([*findings, *(b for b in BASE if b.condition not in conds)]))


@pytest.fixture(scope="module")
def renderer():
    return Renderer(RenderConfig(size=128))


def diff(renderer, *findings):
    """Attenuation change a finding causes on the same pose (same study id)."""
    normal, abnormal = renderer.render_float([study(), study(*findings)])
    return abnormal - normal


def halves(d):
    """(image-left half, image-right half) of the lower lung zones."""
    s = d.shape[0]
    rows = slice(int(0.55 * s), int(0.8 * s))
    return d[rows, : s // 2], d[rows, s // 2 :]


def test_deterministic_and_independent_of_batch(renderer):
    studies = [study(sid=f"s{i}") for i in range(6)]
    a = renderer.render(studies)
    assert np.array_equal(a, renderer.render(studies))
    assert np.array_equal(a[3], renderer.render(studies[3:4])[0])
    assert np.array_equal(a, renderer.render(studies, workers=2))
    assert a.dtype == np.uint8 and a.shape == (6, 128, 128)
    assert not np.array_equal(a[0], a[1])  # acquisition varies by study


def test_radiological_convention():
    assert side_sign("left") == 1  # the patient's left is on the image's right
    assert side_sign("right") == -1


@pytest.mark.parametrize("side,brighter", [("left", "right"), ("right", "left")])
def test_effusion_brightens_the_correct_base(renderer, side, brighter):
    d = diff(renderer, Finding("pleural_effusion", True, side, None, "large"))
    image_left, image_right = halves(d)
    hit, miss = (image_right, image_left) if brighter == "right" else (image_left, image_right)
    assert hit.mean() > 0.05
    assert abs(miss.mean()) < 1e-6


def test_effusion_size_is_visible(renderer):
    small = diff(renderer, Finding("pleural_effusion", True, "left", None, "small")).sum()
    large = diff(renderer, Finding("pleural_effusion", True, "left", None, "large")).sum()
    assert large > 3 * small > 0


def test_pneumothorax_darkens_its_side_and_removes_markings(renderer):
    d = diff(renderer, Finding("pneumothorax", True, "right", None, "large"))
    s = d.shape[0]
    assert d[:, : s // 2].min() < -0.05  # image left = patient right
    assert np.abs(d[:, s // 2 + 4 :]).max() < 1e-6


def test_cardiomegaly_widens_the_heart(renderer):
    base = renderer.render_float([study()])[0]
    big = renderer.render_float([study(Finding("cardiomegaly", True, severity="severe"))])[0]
    row = int(base.shape[0] * (1 + 0.25) / 2)  # v = 0.25, through the heart
    assert (big[row] > 0.6).sum() > (base[row] > 0.6).sum() + 8


@pytest.mark.parametrize(
    "finding",
    [
        Finding("consolidation", True, "left", "lower", "large"),
        Finding("lung_lesion", True, "left", "upper", "large"),
        Finding("atelectasis", True, "left", "basal", "severe"),
        Finding("fracture", True, "left"),
        Finding("pleural_other", True, "left"),
        Finding("pneumonia", True, "left", "middle", "severe"),
        Finding("lung_opacity", True, "left", "upper", "severe"),
    ],
)
def test_lateral_findings_change_only_their_side(renderer, finding):
    d = diff(renderer, finding)
    s = d.shape[0]
    right_half, left_half = np.abs(d[:, s // 2 + 2 :]), np.abs(d[:, : s // 2 - 2])
    assert right_half.sum() > 0.5  # patient left -> image right
    assert left_half.sum() < 1e-3 * right_half.sum()


@pytest.mark.parametrize(
    "condition,severity",
    [("edema", "severe"), ("support_devices", None), ("enlarged_cardiomediastinum", None)],
)
def test_central_findings_change_pixels(renderer, condition, severity):
    assert np.abs(diff(renderer, Finding(condition, True, severity=severity))).sum() > 1.0


def test_severity_orders_edema(renderer):
    amounts = [
        diff(renderer, Finding("edema", True, severity=s)).sum()
        for s in ("mild", "moderate", "severe")
    ]
    assert amounts[0] < amounts[1] < amounts[2]


def test_size_is_configurable():
    img = Renderer(RenderConfig(size=64)).render([study()])
    assert img.shape == (1, 64, 64)
    with pytest.raises(ValueError, match="size must be >= 32"):
        RenderConfig(size=16)


# Every RenderConfig field, with a value that must change the rendered images. The
# meta-test (tests/test_settings_sweep.py) reads FIELD_TESTS below.
RENDER_FIELD_CHANGES = {
    "size": 64,
    "seed": 1,
    "max_rotation_deg": 0.0,
    "max_shift": 0.0,
    "scale_range": (1.0, 1.0),
    "noise_range": (0.0, 0.0),
    "contrast_range": (1.0, 1.0),
    "ap_fraction": 1.0,
}


def _render_fingerprint(**changes):
    """Pixels of a few studies with findings (so the per-finding jitter shows too)."""
    studies = [
        study(sid="s1"),
        study(Finding("pleural_effusion", True, "left", None, "moderate"), sid="s2"),
        study(Finding("cardiomegaly", True, severity="moderate"), sid="s3"),
        study(Finding("lung_lesion", True, "right", "upper", "large"), sid="s4"),
    ]
    return Renderer(RenderConfig(**changes)).render(studies).tobytes()


def test_every_render_field_has_a_change_test():
    import dataclasses

    assert {f.name for f in dataclasses.fields(RenderConfig)} == set(RENDER_FIELD_CHANGES)


@pytest.mark.parametrize("field", sorted(RENDER_FIELD_CHANGES))
def test_changing_a_render_field_changes_the_images(field):
    assert _render_fingerprint() != _render_fingerprint(**{field: RENDER_FIELD_CHANGES[field]})


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"max_rotation_deg": -1.0}, "max_rotation_deg must be >= 0"),
        ({"max_shift": -0.1}, "max_shift must be >= 0"),
        ({"ap_fraction": 1.5}, r"ap_fraction must be in \[0, 1\]"),
        ({"scale_range": (1.1, 0.9)}, r"scale_range must be \(low, high\) with low <= high"),
        ({"scale_range": (0.0, 1.0)}, "scale_range low end must be > 0.0"),
        ({"noise_range": (0.05, 0.01)}, "noise_range must be"),
        ({"noise_range": (-0.01, 0.01)}, "noise_range low end must be >= 0.0"),
        ({"contrast_range": (1.2, 0.8)}, "contrast_range must be"),
        ({"contrast_range": (1.0,)}, "contrast_range must be"),
    ],
)
def test_render_config_refuses_bad_ranges_at_construction(kw, message):
    from mechtune.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        RenderConfig(**kw)


def test_render_config_round_trips_with_lists():
    config = RenderConfig(scale_range=[0.9, 1.1])  # JSON gives lists
    assert config.scale_range == (0.9, 1.1)
    assert RenderConfig(**config.to_dict()) == config


FIELD_TESTS = {
    "mechtune.sim.render.RenderConfig": {
        f: "test_changing_a_render_field_changes_the_images" for f in RENDER_FIELD_CHANGES
    },
}
