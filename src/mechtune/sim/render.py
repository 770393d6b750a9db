"""A deterministic, numpy-vectorised procedural chest radiograph renderer.

Images are composed in *attenuation* space (bone and fluid add, air subtracts) on
anatomical coordinates, then exposed to grey levels. Anatomical coordinates ``(u, v)`` run
from -1 to 1: ``u`` left to right **on the image**, ``v`` top to bottom. Radiological
convention: the patient faces the viewer, so the **patient's left is on the image's right**
(``u > 0``). Every side-bearing finding goes through :func:`side_sign`.

Everything common to all images (anatomy under a per-image pose) is computed on the whole
batch at once; each finding is computed on the sub-batch of images that have it.
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from mechtune.data.schema import Finding, Study
from mechtune.data.splits import record_rng
from mechtune.errors import ConfigError

F32 = np.float32
TEXTURES = 8

# Anatomy (anatomical units). Lungs are mirror images about u = 0 except where noted.
LUNG_CX, LUNG_CY, LUNG_RY = 0.4, -0.1, 0.68
LUNG_RX = {-1: 0.33, 1: 0.31}  # the left lung (u > 0) is narrower: the heart sits there
DOME_BASE = {-1: 0.42, 1: 0.49}  # the right hemidiaphragm (u < 0) is higher
ZONE_V = {"upper": -0.45, "middle": -0.12, "lower": 0.16, "apical": -0.6, "basal": 0.26}
# Heart half-width multipliers: cardiothoracic ratio ~0.42 normal, ~0.5/0.58/0.66 enlarged.
HEART_SCALE = {None: 1.0, "mild": 1.22, "moderate": 1.4, "severe": 1.6}
EFFUSION_HEIGHT = {"small": 0.1, "moderate": 0.28, "large": 0.52}
PNEUMOTHORAX_COLLAPSE = {"small": 0.1, "moderate": 0.22, "large": 0.4}
EXTENT_RADIUS = {
    "small": 0.08,
    "moderate": 0.13,
    "large": 0.19,
    "mild": 0.09,
    "moderate_": 0.13,
    "severe": 0.18,
}
NODULE_RADIUS = {"small": 0.035, "moderate": 0.055, "large": 0.085}
EDEMA_DENSITY = {"mild": 0.09, "moderate": 0.16, "severe": 0.25}
ATELECTASIS_THICKNESS = {"mild": 0.012, "moderate": 0.02, "severe": 0.03}
OPACITY_DENSITY = {"mild": 0.1, "moderate": 0.16, "severe": 0.22}


def side_sign(laterality: str | None) -> int:
    """Patient side -> sign of u on the image: left is +1 (image right), right is -1."""
    return {"left": 1, "right": -1}.get(laterality or "", 0)


@dataclass(frozen=True)
class RenderConfig:
    """Image size and the ranges of acquisition variation.

    Each image draws its acquisition uniformly from these ranges, from a stream owned by
    (``seed``, study id): rotation in degrees (±``max_rotation_deg``), shift in anatomical
    units (±``max_shift``; the thorax spans -1..1), magnification (``scale_range``),
    exposure contrast (``contrast_range``), the standard deviation of Gaussian pixel
    noise as a fraction of full scale (``noise_range``), and the chance of an AP rather
    than PA projection (``ap_fraction``; AP magnifies the heart). Raises ``ConfigError``
    naming the field for a range whose low end exceeds its high end or leaves its domain.
    """

    size: int = 128
    seed: int = 0
    max_rotation_deg: float = 3.0
    max_shift: float = 0.04
    scale_range: tuple[float, float] = (0.94, 1.06)
    noise_range: tuple[float, float] = (0.01, 0.035)
    contrast_range: tuple[float, float] = (0.85, 1.15)
    ap_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.size < 32:
            raise ConfigError(f"size must be >= 32 pixels, got {self.size}")
        for name in ("max_rotation_deg", "max_shift"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.ap_fraction <= 1.0:
            raise ConfigError(f"ap_fraction must be in [0, 1], got {self.ap_fraction}")
        # (field, smallest allowed low end, whether the low end may equal it)
        for name, floor, inclusive in (
            ("scale_range", 0.0, False),
            ("noise_range", 0.0, True),
            ("contrast_range", 0.0, False),
        ):
            values = tuple(getattr(self, name))
            if len(values) != 2 or not values[0] <= values[1]:
                raise ConfigError(f"{name} must be (low, high) with low <= high, got {values}")
            if values[0] < floor or (values[0] == floor and not inclusive):
                bound = ">=" if inclusive else ">"
                raise ConfigError(f"{name} low end must be {bound} {floor}, got {values}")
            object.__setattr__(self, name, values)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Acquisition:
    """How one image was taken: projection, pose, exposure and noise."""

    view: str
    rotation_deg: float
    shift_u: float
    shift_v: float
    scale: float
    contrast: float
    brightness: float
    noise: float
    noise_seed: int
    device_kind: int
    fracture_rib: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sample_acquisition(study_id: str, config: RenderConfig) -> Acquisition:
    """Acquisition parameters owned by one study (independent of batch composition)."""
    rng = record_rng(config.seed, "acquisition", study_id)
    return Acquisition(
        view="AP" if rng.random() < config.ap_fraction else "PA",
        rotation_deg=rng.uniform(-config.max_rotation_deg, config.max_rotation_deg),
        shift_u=rng.uniform(-config.max_shift, config.max_shift),
        shift_v=rng.uniform(-config.max_shift, config.max_shift),
        scale=rng.uniform(*config.scale_range),
        contrast=rng.uniform(*config.contrast_range),
        brightness=rng.uniform(-0.04, 0.04),
        noise=rng.uniform(*config.noise_range),
        noise_seed=rng.getrandbits(63),
        device_kind=rng.randrange(3),  # 0: ET tube, 1: central line, 2: both
        fracture_rib=rng.randrange(3, 7),
    )


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """0 below 0, 1 above width, linear between: a cheap anti-aliased edge.

    ``x`` is a temporary and is overwritten.
    """
    x *= F32(1.0 / width)
    np.maximum(x, F32(0.0), out=x)
    return np.minimum(x, F32(1.0), out=x)


def _segment_distance(
    u: np.ndarray, v: np.ndarray, a: tuple[float, float], b: tuple[float, float]
) -> np.ndarray:
    ax, ay = a
    dx, dy = b[0] - ax, b[1] - ay
    t = np.clip(((u - ax) * dx + (v - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return np.hypot(u - ax - t * dx, v - ay - t * dy)


class Renderer:
    """Render batches of studies to grayscale radiographs, deterministically."""

    def __init__(self, config: RenderConfig | None = None) -> None:
        self.config = config or RenderConfig()
        s = self.config.size
        axis = (np.arange(s, dtype=F32) + F32(0.5)) * F32(2.0 / s) - F32(1.0)
        self._y, self._x = np.meshgrid(axis, axis, indexing="ij")
        # Lung-marking textures: a small bank of smoothed noise fields, one chosen per study.
        trng = np.random.default_rng(12345)
        bank = []
        for _ in range(TEXTURES):
            t = trng.standard_normal((s, s)).astype(F32)
            for _ in range(max(1, s // 64)):  # cheap smoothing, scaled with resolution
                t = (
                    t + np.roll(t, 1, 0) + np.roll(t, -1, 0) + np.roll(t, 1, 1) + np.roll(t, -1, 1)
                ) / 5
            bank.append(np.clip(t / t.std() * 0.5 + 0.5, 0.0, 1.0))
        self._textures = np.stack(bank).astype(F32)

    # -- geometry ------------------------------------------------------------------------

    def _coords(self, acq: Sequence[Acquisition]) -> tuple[np.ndarray, np.ndarray]:
        theta = np.array([math.radians(a.rotation_deg) for a in acq], dtype=F32)[:, None, None]
        su = np.array([a.shift_u for a in acq], dtype=F32)[:, None, None]
        sv = np.array([a.shift_v for a in acq], dtype=F32)[:, None, None]
        scale = np.array([a.scale for a in acq], dtype=F32)[:, None, None]
        c, s = np.cos(theta), np.sin(theta)
        x = self._x[None] - su
        y = self._y[None] - sv
        u = (x * c + y * s) / scale
        v = (y * c - x * s) / scale
        return u, v

    def _tex(self, index: int, scale: int = 1) -> np.ndarray:
        """A texture from the bank, optionally with finer grain (``scale`` > 1)."""
        t = self._textures[index % TEXTURES]
        if scale == 1:
            return t
        s = t.shape[0]
        return np.tile(t[::scale, ::scale], (scale, scale))[:s, :s]

    # -- rendering -----------------------------------------------------------------------

    def render(self, studies: Sequence[Study], workers: int | None = None) -> np.ndarray:
        """``[B, size, size]`` uint8 radiographs for a batch of studies.

        The batch is split across ``workers`` threads (numpy releases the GIL); the output
        does not depend on the split, since every random draw is owned by its study.
        """
        workers = workers or min(2, os.cpu_count() or 1)
        if workers <= 1 or len(studies) < 2 * workers:
            return self._render_chunk(studies)
        bounds = np.linspace(0, len(studies), workers + 1).astype(int)
        chunks = [studies[lo:hi] for lo, hi in itertools.pairwise(bounds)]
        with ThreadPoolExecutor(workers) as pool:
            return np.concatenate(list(pool.map(self._render_chunk, chunks)))

    def _render_chunk(self, studies: Sequence[Study]) -> np.ndarray:
        return self.to_uint8(self.render_float(studies), [self.acquisition(s) for s in studies])

    def acquisition(self, study: Study) -> Acquisition:
        return sample_acquisition(study.study_id, self.config)

    def render_float(self, studies: Sequence[Study]) -> np.ndarray:
        """``[B, size, size]`` float32 attenuation maps (before exposure and noise)."""
        acq = [self.acquisition(s) for s in studies]
        present = [{f.condition: f for f in s.findings if f.present} for s in studies]
        u, v = self._coords(acq)
        au = np.abs(u)
        sign = np.where(u >= 0, F32(1.0), F32(-1.0))

        # Soft tissue of the thorax and abdomen.
        body = _ramp(1.0 - (u * F32(1 / 0.9)) ** 2 - ((v - F32(0.05)) * F32(1 / 1.02)) ** 2, 0.08)
        d = body * F32(0.33)

        # Lungs: an ellipse per side, cut by the diaphragm dome.
        rx = np.where(u >= 0, F32(LUNG_RX[1]), F32(LUNG_RX[-1]))
        lung_e = ((au - F32(LUNG_CX)) / rx) ** 2 + ((v - F32(LUNG_CY)) * F32(1 / LUNG_RY)) ** 2
        dome = np.where(u >= 0, F32(DOME_BASE[1]), F32(DOME_BASE[-1])) + F32(0.8) * (
            (au - F32(0.3)) ** 2
        )
        lung = _ramp(1.0 - lung_e, 0.08) * _ramp(dome - v, 0.025)

        # Heart (enlarged by cardiomegaly, magnified on AP films) and mediastinum.
        hs = np.array(
            [
                HEART_SCALE[p["cardiomegaly"].severity if "cardiomegaly" in p else None]
                * (1.08 if a.view == "AP" else 1.0)
                for p, a in zip(present, acq, strict=True)
            ],
            dtype=F32,
        )[:, None, None]
        hcx = F32(0.11) + F32(0.1) * (hs - 1)
        hry = F32(0.2) * np.sqrt(hs)
        heart = _ramp(
            1.0
            - ((u - hcx) / (F32(0.27) * hs)) ** 2
            - ((v - F32(0.3) + hry - F32(0.2)) / hry) ** 2,
            0.1,
        )
        width = np.array(
            [0.15 if "enlarged_cardiomediastinum" in p else 0.085 for p in present], dtype=F32
        )[:, None, None]
        med = _ramp(width - au, 0.03) * _ramp(F32(0.3) - v, 0.05) * _ramp(v + F32(0.8), 0.05)
        solid = np.maximum(heart, med)
        lung *= 1.0 - solid
        d += solid * F32(0.42)

        # Lung markings, densest near the hila, absent under a pneumothorax rim.
        hilum = np.clip(1.0 - np.hypot(au - F32(0.2), v + F32(0.05)) * F32(1.6), 0.0, 1.0)
        tex = self._textures[[a.noise_seed % TEXTURES for a in acq]]
        markings = lung * (F32(0.03) + F32(0.1) * hilum) * tex

        # Bones: posterior ribs (curved periodic bands), clavicles, spine.
        phase = (v - F32(0.32) * au * au + F32(0.8)) * F32(2 * math.pi / 0.105)
        rib = (F32(0.5) + F32(0.5) * np.cos(phase)) ** 6
        rib_zone = (
            _ramp(F32(0.86) - au, 0.05) * _ramp(F32(0.5) - v, 0.1) * _ramp(v + F32(0.78), 0.05)
        )
        rib_zone *= _ramp(au - F32(0.05), 0.05)
        d += rib * rib_zone * F32(0.09) * body
        top = slice(0, int(self.config.size * 0.42))  # clavicles and trachea live up here
        clav = _segment_distance(au[:, top], v[:, top], (0.07, -0.63), (0.62, -0.76))
        d[:, top] += _ramp(F32(0.028) - clav, 0.012) * F32(0.28)
        d += _ramp(F32(0.055) - au, 0.02) * _ramp(F32(0.5) - v, 0.1) * F32(0.1)
        trachea = _ramp(F32(0.03) - au[:, top], 0.012) * _ramp(F32(-0.36) - v[:, top], 0.04)
        d[:, top] -= trachea * F32(0.16)

        d -= lung * F32(0.28)
        d += markings

        self._findings(d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, present, acq)
        return d

    def _findings(self, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, present, acq):
        """Add every finding to the sub-batch of images that has it (in place on ``d``)."""
        for i, (p, a) in enumerate(zip(present, acq, strict=True)):
            for cond, f in p.items():
                draw = _DRAW.get(cond)
                if draw is not None:
                    draw(
                        self,
                        d[i],
                        u[i],
                        v[i],
                        au[i],
                        sign[i],
                        lung[i],
                        lung_e[i],
                        rib[i],
                        rib_zone[i],
                        markings[i],
                        f,
                        a,
                    )

    def to_uint8(self, d: np.ndarray, acq: Sequence[Acquisition]) -> np.ndarray:
        """Expose attenuation maps to 8-bit grey levels, with per-image noise."""
        contrast = np.array([a.contrast for a in acq], dtype=F32)[:, None, None]
        bright = np.array([a.brightness for a in acq], dtype=F32)[:, None, None]
        img = F32(0.06) + d * F32(1.25) * contrast + bright
        s = self.config.size
        for i, a in enumerate(acq):
            rng = np.random.default_rng(a.noise_seed)
            img[i] += rng.standard_normal((s, s), dtype=F32) * F32(a.noise)
        return (np.clip(img, 0.0, 1.0) * F32(255.0) + F32(0.5)).astype(np.uint8)


# -- findings (each draws into one image, in place) --------------------------------------


def _side_mask(sign: np.ndarray, laterality: str | None) -> np.ndarray | float:
    s = side_sign(laterality)
    return 1.0 if s == 0 else (sign == s).astype(F32)


def _effusion(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f: Finding, a):
    side = _side_mask(sign, f.laterality)
    h = EFFUSION_HEIGHT[f.severity or "small"]
    base = np.where(u >= 0, F32(DOME_BASE[1]), F32(DOME_BASE[-1]))
    # The meniscus: the fluid level rises towards the lateral chest wall, filling the
    # costophrenic angle first and hiding the dome.
    level = base + F32(0.1 - h) - F32(0.18) * np.clip((au - F32(0.32)) * F32(1 / 0.3), 0, 1)
    hemithorax = _ramp(F32(1.0) - lung_e, 0.06) * _ramp(au - F32(0.1), 0.05)
    dome = base + F32(0.8) * (au - F32(0.3)) ** 2
    inside = hemithorax * _ramp(v - level, 0.04) * _ramp(dome + F32(0.03) - v, 0.04)
    d += inside * side * (F32(0.3) - markings)


def _pneumothorax(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f: Finding, a):
    side = _side_mask(sign, f.laterality)
    w = PNEUMOTHORAX_COLLAPSE[f.severity or "small"]
    rx = LUNG_RX[side_sign(f.laterality) or 1]
    # The collapsed lung shrinks towards the hilum; the rim outside it is lucent and has no
    # lung markings, and the visceral pleura shows as a thin white line.
    e_c = ((au - F32(LUNG_CX - 0.12 * w)) / F32(rx * (1 - w))) ** 2 + (
        (v - F32(LUNG_CY + 0.12 * w)) / F32(LUNG_RY * (1 - 0.6 * w))
    ) ** 2
    rim = lung * _ramp(e_c - F32(1.0), 0.04) * side
    d -= rim * (markings + F32(0.07))
    line = _ramp(F32(0.07) - np.abs(e_c - F32(1.0)), 0.035) * lung * side
    d += line * F32(0.14)


def _blob(r, u, v, au, f: Finding, radius: float, a: Acquisition) -> np.ndarray:
    s = side_sign(f.laterality)
    jitter = record_rng(r.config.seed, "blob", f.condition, a.noise_seed)
    cu = LUNG_CX + jitter.uniform(-0.06, 0.06)
    cv = ZONE_V[f.zone or "lower"] + jitter.uniform(-0.05, 0.05)
    uu = au if s == 0 else u * F32(s)
    return _ramp(F32(1.0) - ((uu - F32(cu)) ** 2 + (v - F32(cv)) ** 2) * F32(1 / radius**2), 0.25)


def _consolidation(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    blob = _blob(r, u, v, au, f, EXTENT_RADIUS[f.severity or "moderate"], a)
    d += blob * lung * F32(0.3)


def _pneumonia(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    radius = EXTENT_RADIUS[{"moderate": "moderate_"}.get(f.severity or "", f.severity or "mild")]
    blob = _blob(r, u, v, au, f, radius * 1.15, a)
    d += blob * lung * (F32(0.1) + F32(0.16) * r._tex(a.noise_seed + 1, 2))


def _lung_opacity(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    blob = _blob(r, u, v, au, f, 0.2, a)
    d += blob * lung * F32(OPACITY_DENSITY[f.severity or "mild"])


def _atelectasis(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    side = _side_mask(sign, f.laterality)
    cv = ZONE_V[f.zone or "basal"]
    thick = ATELECTASIS_THICKNESS[f.severity or "mild"]
    # Plate-like: a thin, slightly tilted horizontal band.
    band = _ramp(F32(thick) - np.abs(v - F32(cv) - F32(0.08) * (au - F32(LUNG_CX))), 0.008)
    d += band * _ramp(F32(0.14) - np.abs(au - F32(LUNG_CX)), 0.03) * side * F32(0.4)


def _lung_lesion(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    radius = NODULE_RADIUS[f.severity or "small"]
    s = side_sign(f.laterality) or 1
    jitter = record_rng(r.config.seed, "nodule", a.noise_seed)
    cu, cv = s * (LUNG_CX + jitter.uniform(-0.07, 0.07)), ZONE_V[f.zone or "middle"]
    dist = np.hypot(u - F32(cu), v - F32(cv))
    d += _ramp(F32(radius) - dist, 0.012) * F32(0.34)


def _edema(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    haze = np.exp(-(((au - F32(0.2)) * F32(1 / 0.17)) ** 2) - ((v + F32(0.02)) * F32(1 / 0.3)) ** 2)
    grain = F32(0.7) + F32(0.6) * r._tex(a.noise_seed + 2, 3)
    d += haze * lung * F32(EDEMA_DENSITY[f.severity or "mild"]) * grain


def _support_devices(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    if a.device_kind in (0, 2):  # endotracheal tube, tip above the carina
        tube = _ramp(F32(0.014) - np.abs(u), 0.006) * _ramp(F32(-0.36) - v, 0.01)
        d += tube * F32(0.55)
    if a.device_kind in (1, 2):  # right subclavian central line into the SVC
        dist = np.minimum(
            _segment_distance(u, v, (-0.62, -0.72), (-0.12, -0.5)),
            _segment_distance(u, v, (-0.12, -0.5), (-0.06, -0.18)),
        )
        d += _ramp(F32(0.011) - dist, 0.006) * F32(0.55)


def _fracture(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    side = _side_mask(sign, f.laterality)
    # One lateral rib: a lucent gap, the lateral fragment displaced, and callus at the site.
    x0 = 0.64
    rib_v = -0.8 + 0.105 * a.fracture_rib + 0.32 * x0**2
    window = _ramp(F32(0.06) - np.abs(v - F32(rib_v)), 0.02) * side * rib_zone
    lateral = _ramp(au - F32(x0), 0.01)
    phase = (v - F32(0.32) * au * au + F32(0.8) - F32(0.04)) * F32(2 * math.pi / 0.105)
    shifted = (F32(0.5) + F32(0.5) * np.cos(phase)) ** 6
    d += window * lateral * (shifted - rib) * F32(0.09)
    gap = _ramp(F32(0.018) - np.abs(au - F32(x0)), 0.008) * window
    d -= gap * F32(0.12)
    callus = _ramp(F32(0.03) - np.hypot(au - F32(x0 + 0.035), v - F32(rib_v)), 0.012) * side
    d += callus * F32(0.16)


def _pleural_other(r, d, u, v, au, sign, lung, lung_e, rib, rib_zone, markings, f, a):
    side = _side_mask(sign, f.laterality)
    band = _ramp(lung_e - F32(0.78), 0.05) * _ramp(F32(1.02) - lung_e, 0.03)
    d += band * _ramp(au - F32(LUNG_CX), 0.05) * _ramp(F32(0.3) - v, 0.1) * side * F32(0.3)


_DRAW = {
    "pleural_effusion": _effusion,
    "pneumothorax": _pneumothorax,
    "consolidation": _consolidation,
    "pneumonia": _pneumonia,
    "lung_opacity": _lung_opacity,
    "atelectasis": _atelectasis,
    "lung_lesion": _lung_lesion,
    "edema": _edema,
    "support_devices": _support_devices,
    "fracture": _fracture,
    "pleural_other": _pleural_other,
}
