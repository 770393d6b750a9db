"""Checks shared by the study configs (negation and paraphrase)."""

from __future__ import annotations

from collections.abc import Sequence

from mechtune.errors import ConfigError

# A study needs validation and test patients; below this a world has too few of them for
# any interval to mean something (the splits hold about a tenth of the patients each).
MIN_STUDIES = 50


def check_seeds(seeds: Sequence[int], name: str = "seeds") -> None:
    """ConfigError unless ``seeds`` is a non-empty list of distinct ints >= 0 (a repeated
    seed would train the same run twice and count it as two)."""
    ok = all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not seeds or not ok or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{name} must be distinct ints >= 0 (at least one), got {list(seeds)}")
