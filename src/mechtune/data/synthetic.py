"""A synthetic study sampler with clinically plausible prevalence and co-occurrence.

Findings arise from a few latent clinical processes rather than independently, as they do
in real chest radiographs:

- **heart failure**: cardiomegaly, pulmonary edema, bilateral (or right) effusions,
  sometimes an enlarged cardiomediastinum;
- **pneumonia**: pneumonia with consolidation and opacity in the same side and zone,
  sometimes an ipsilateral effusion;
- **critical care**: support devices, basal atelectasis, and iatrogenic pneumothorax;
- **trauma**: rib fractures with an ipsilateral pneumothorax;
- background findings: nodules, pleural thickening, spontaneous pneumothorax, atelectasis.

Marginal rates come out close to MIMIC-CXR-JPG's CheXpert labels (Johnson et al. 2019):
support devices ≈ 30%, effusion ≈ 24%, opacity ≈ 23%, cardiomegaly ≈ 20%, atelectasis
≈ 20%, edema ≈ 12%, pneumonia ≈ 7%, consolidation ≈ 5%, pneumothorax ≈ 4%, lesion ≈ 3%,
fracture ≈ 2%, enlarged cardiomediastinum ≈ 3%, pleural other ≈ 1%. A test checks them.

Every study states every condition explicitly (the simulated truth is complete), and
"No Finding" is present exactly when nothing but support devices is.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding, Study
from mechtune.data.splits import record_rng
from mechtune.errors import ConfigError


@dataclass(frozen=True)
class SyntheticConfig:
    """How many studies, for how many patients, from which seed."""

    n_studies: int = 2000
    seed: int = 0
    max_studies_per_patient: int = 4

    def __post_init__(self) -> None:
        if self.n_studies < 0:
            raise ConfigError(f"n_studies must be >= 0, got {self.n_studies}")
        if self.max_studies_per_patient < 1:
            raise ConfigError(
                f"max_studies_per_patient must be >= 1, got {self.max_studies_per_patient}"
            )

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class _Profile:
    heart_failure: bool
    pneumonia_risk: float
    critical_care: bool
    trauma: bool
    nodule_side: str | None
    nodule_zone: str
    nodule_size: str
    pleural_side: str | None


def _side(rng: random.Random) -> str:
    return "left" if rng.random() < 0.5 else "right"


def _other(side: str) -> str:
    return "right" if side == "left" else "left"


def _grade(rng: random.Random, weights: tuple[float, float, float] = (0.5, 0.35, 0.15)) -> str:
    return rng.choices(("mild", "moderate", "severe"), weights=weights)[0]


def _size(rng: random.Random, weights: tuple[float, float, float] = (0.5, 0.35, 0.15)) -> str:
    return rng.choices(("small", "moderate", "large"), weights=weights)[0]


def _patient_profile(rng: random.Random) -> _Profile:
    return _Profile(
        heart_failure=rng.random() < 0.22,
        pneumonia_risk=rng.choice((0.04, 0.08, 0.2)),
        critical_care=rng.random() < 0.28,
        trauma=rng.random() < 0.03,
        nodule_side=_side(rng) if rng.random() < 0.035 else None,
        nodule_zone=rng.choice(("upper", "middle", "lower", "apical")),
        nodule_size=_size(rng, (0.6, 0.3, 0.1)),
        pleural_side=_side(rng) if rng.random() < 0.012 else None,
    )


def _study_findings(profile: _Profile, rng: random.Random) -> dict[str, Finding]:
    found: dict[str, Finding] = {}

    def add(condition: str, **attrs: str | None) -> None:
        if condition not in found:
            found[condition] = Finding(condition, True, **attrs)

    if profile.heart_failure:
        if rng.random() < 0.75:
            add("cardiomegaly", severity=_grade(rng))
        if rng.random() < 0.45:
            add("edema", severity=_grade(rng))
        if rng.random() < 0.5:
            side = "bilateral" if rng.random() < 0.6 else "right"
            add("pleural_effusion", laterality=side, severity=_size(rng, (0.55, 0.35, 0.1)))
        if rng.random() < 0.1:
            add("enlarged_cardiomediastinum")
    if rng.random() < profile.pneumonia_risk:
        side, zone = _side(rng), rng.choices(("lower", "middle", "upper"), (0.6, 0.25, 0.15))[0]
        add("pneumonia", laterality=side, zone=zone, severity=_grade(rng))
        if rng.random() < 0.6:
            add("consolidation", laterality=side, zone=zone, severity=_size(rng))
        if rng.random() < 0.75:
            add("lung_opacity", laterality=side, zone=zone, severity=_grade(rng))
        if rng.random() < 0.25:
            add("pleural_effusion", laterality=side, severity="small")
    if profile.critical_care:
        if rng.random() < 0.95:
            add("support_devices")
        if rng.random() < 0.45:
            side = rng.choice(("left", "right", "bilateral"))
            add("atelectasis", laterality=side, zone="basal", severity=_grade(rng, (0.6, 0.3, 0.1)))
        if rng.random() < 0.05:
            add("pneumothorax", laterality=_side(rng), severity="small")
        if rng.random() < 0.2:
            add(
                "pleural_effusion",
                laterality=rng.choice(("left", "right", "bilateral")),
                severity=_size(rng, (0.6, 0.3, 0.1)),
            )
    if profile.trauma:
        side = _side(rng)
        if rng.random() < 0.7:
            add("fracture", laterality=side)
        if rng.random() < 0.4:
            add("pneumothorax", laterality=side, severity=_size(rng))
    if profile.nodule_side and rng.random() < 0.9:
        add(
            "lung_lesion",
            laterality=profile.nodule_side,
            zone=profile.nodule_zone,
            severity=profile.nodule_size,
        )
    if profile.pleural_side and rng.random() < 0.9:
        add("pleural_other", laterality=profile.pleural_side)
    # Background findings, independent of the processes above.
    if rng.random() < 0.012:
        add("pneumothorax", laterality=_side(rng), severity=_size(rng, (0.4, 0.4, 0.2)))
    if rng.random() < 0.09:
        add(
            "atelectasis",
            laterality=rng.choice(("left", "right", "bilateral")),
            zone=rng.choice(("lower", "basal", "middle")),
            severity="mild",
        )
    if rng.random() < 0.09:
        add(
            "lung_opacity",
            laterality=_side(rng),
            zone=rng.choice(("lower", "middle", "upper")),
            severity="mild",
        )
    if rng.random() < 0.06:
        add("cardiomegaly", severity="mild")
    if rng.random() < 0.05:
        add("pleural_effusion", laterality=_side(rng), severity="small")
    if rng.random() < 0.012:
        add(
            "consolidation",
            laterality=_side(rng),
            zone=rng.choice(("lower", "middle", "upper")),
            severity="small",
        )
    if rng.random() < 0.015:
        add("enlarged_cardiomediastinum")
    if rng.random() < 0.006:
        add("fracture", laterality=_side(rng))
    return found


def sample_study(study_index: int, patient_index: int, profile: _Profile, seed: int) -> Study:
    rng = record_rng(seed, "study", study_index)
    present = _study_findings(profile, rng)
    pathology = [c for c in present if c != "support_devices"]
    findings: list[Finding] = []
    for cond in load_ontology().conditions:
        if cond.summary:
            findings.append(Finding(cond.id, not pathology))
        elif cond.id in present:
            findings.append(present[cond.id])
        else:
            findings.append(Finding(cond.id, False))
    return Study(
        study_id=f"s{study_index:08d}",
        patient_id=f"p{patient_index:07d}",
        findings=tuple(findings),
    )


def sample_studies(config: SyntheticConfig) -> Iterator[Study]:
    """Yield ``config.n_studies`` studies, grouped by patient, deterministic by seed."""
    study_index = 0
    patient_index = 0
    while study_index < config.n_studies:
        prng = record_rng(config.seed, "patient", patient_index)
        profile = _patient_profile(prng)
        n = prng.randint(1, config.max_studies_per_patient)
        for _ in range(min(n, config.n_studies - study_index)):
            yield sample_study(study_index, patient_index, profile, config.seed)
            study_index += 1
        patient_index += 1


def iter_unbounded(seed: int = 0, max_studies_per_patient: int = 4) -> Iterator[Study]:
    """An endless stream of studies (for benchmarks that stop at a row count)."""
    yield from sample_studies(
        SyntheticConfig(n_studies=2**62, seed=seed, max_studies_per_patient=max_studies_per_patient)
    )
