"""A :class:`~mechtune.progress.Tracker` that records what library code reports."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Stage:
    description: str
    total: int | None
    completed: int
    counts: list[int] = field(default_factory=list)
    fields: list[dict[str, Any]] = field(default_factory=list)
    closed: bool = False

    @property
    def done(self) -> int:
        """Units done at the end: the start plus every count."""
        return self.completed + sum(self.counts)


class Recorder:
    """Records each stage opened, its counts and its fields, in order."""

    def __init__(self) -> None:
        self.stages: list[Stage] = []

    @contextlib.contextmanager
    def __call__(self, description: str, total: int | None, *, completed: int = 0) -> Iterator[Any]:
        stage = Stage(description, total, completed)
        self.stages.append(stage)

        def advance(n: int = 1, /, **fields: Any) -> None:
            assert n >= 0, (description, n)
            stage.counts.append(n)
            if fields:
                stage.fields.append(fields)

        yield advance
        stage.closed = True

    def named(self, prefix: str) -> list[Stage]:
        return [s for s in self.stages if s.description.startswith(prefix)]

    def check_complete(self) -> None:
        """Every stage closed, and every stage of known size counted to its total."""
        for s in self.stages:
            assert s.closed, s.description
            if s.total is not None:
                assert s.done == s.total, (s.description, s.done, s.total)
