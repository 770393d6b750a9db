"""The data layer: clinical ontology, typed records, importers and benchmark builders.

Nothing here depends on torch: building and checking data is cheap and runs anywhere.
"""

from mechtune.data.ontology import Condition, CueFamily, Ontology, load_ontology
from mechtune.data.schema import (
    Caption,
    ClaimSet,
    Finding,
    MCQPair,
    ParaphraseSet,
    RecordError,
    Study,
)
from mechtune.data.synthetic import SyntheticConfig, sample_studies

__all__ = [
    "Caption",
    "ClaimSet",
    "Condition",
    "CueFamily",
    "Finding",
    "MCQPair",
    "Ontology",
    "ParaphraseSet",
    "RecordError",
    "Study",
    "SyntheticConfig",
    "load_ontology",
    "sample_studies",
]
