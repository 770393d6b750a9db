"""A radiology-style report writer for phantom studies.

Like real reports, a phantom report is mostly affirmative statements of what is present,
plus a few *pertinent negatives* ("No pneumothorax."). How often absent conditions are
mentioned is a first-class setting: the phantom feasibility probe found that it decides
the direction of the zero-shot polarity bias (few negatives: the model distrusts "No X";
many: it prefers "No X"). Reports use train phrasing families only, so the held-out
families stay unseen by everything trained on reports.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mechtune.data.ontology import load_ontology
from mechtune.data.schema import Finding, Study
from mechtune.data.splits import record_rng
from mechtune.data.text import realise
from mechtune.errors import ConfigError

# Conditions radiologists most often state as pertinent negatives, most frequent first.
PERTINENT = (
    "pneumothorax",
    "pleural_effusion",
    "consolidation",
    "edema",
    "cardiomegaly",
    "pneumonia",
    "fracture",
    "lung_lesion",
)


@dataclass(frozen=True)
class ReportConfig:
    """How reports are written.

    ``negative_rate``: the chance each pertinent absent condition is mentioned;
    ``max_negatives``: at most this many pertinent negatives per report; ``seed`` (with the
    study id) picks the wording.
    """

    seed: int = 0
    negative_rate: float = 0.2
    max_negatives: int = 3

    def __post_init__(self) -> None:
        if not 0.0 <= self.negative_rate <= 1.0:
            raise ConfigError(f"negative_rate must be in [0, 1], got {self.negative_rate}")
        if self.max_negatives < 0:
            raise ConfigError(f"max_negatives must be >= 0, got {self.max_negatives}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def write_report(study: Study, config: ReportConfig | None = None) -> str:
    """Findings sentences, then pertinent negatives; deterministic by seed and study id."""
    config = config or ReportConfig()
    onto = load_ontology()
    rng = record_rng(config.seed, "report", study.study_id)
    affirmative = onto.families_of("affirmative", heldout=False)
    sentences = []
    present = [f for f in study.present() if not onto.condition(f.condition).summary]
    for f in present:
        sentences.append(realise(f, rng.choice(affirmative)))
    if not present or present == [f for f in present if f.condition == "support_devices"]:
        sentences.append(rng.choice(onto.normal_study))
    absent = {f.condition for f in study.absent()}
    negatives = [c for c in PERTINENT if c in absent and rng.random() < config.negative_rate]
    for condition in negatives[: config.max_negatives]:
        family = rng.choice(onto.families_of("negation", heldout=False, condition=condition))
        sentences.append(realise(Finding(condition, False), family))
    return " ".join(sentences)
