"""Patient-level splits and per-record random streams, both independent of row order."""

from __future__ import annotations

import hashlib
import random

from mechtune.data.schema import SPLITS
from mechtune.errors import ConfigError, DataError

DEFAULT_FRACTIONS: tuple[float, float, float] = (0.8, 0.1, 0.1)


def check_fractions(
    fractions: tuple[float, ...], name: str = "split_fractions"
) -> tuple[float, float, float]:
    """``fractions`` as a (train, val, test) tuple, each in [0, 1] and summing to 1.

    Raises ``ConfigError`` naming the field ``name`` and the value otherwise; config
    dataclasses call this in ``__post_init__`` so a bad split fails at construction.
    """
    values = tuple(fractions)
    if (
        len(values) != 3
        or any(not 0.0 <= float(f) <= 1.0 for f in values)
        or abs(sum(values) - 1.0) > 1e-9
    ):
        raise ConfigError(
            f"{name} must be 3 numbers (train, val, test), each in [0, 1], summing to 1; "
            f"got {values}"
        )
    return values


def _unit_interval(*parts: object) -> float:
    digest = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def patient_split(
    patient_id: str, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> str:
    """Assign a patient to train/val/test by a seeded hash of the id.

    Every study of a patient lands in the same split, whatever order rows arrive in.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-9:
        raise DataError(
            f"split fractions must be 3 non-negative numbers summing to 1, got {fractions}"
        )
    u = _unit_interval("split", seed, patient_id)
    if u < fractions[0]:
        return SPLITS[0]
    if u < fractions[0] + fractions[1]:
        return SPLITS[1]
    return SPLITS[2]


def record_rng(seed: int, *key: object) -> random.Random:
    """A random stream owned by one record, so outputs do not depend on iteration order."""
    digest = hashlib.blake2b(":".join(map(str, (seed, *key))).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))
