"""Progress of long steps, reported through callbacks so that library code prints nothing.

A :class:`Tracker` opens one stage of known (or unknown) size::

    with stage(track, "train nast", total=1000) as advance:
        for ...:
            advance(1)              # one more unit (step, batch, item) done
            advance(0, loss=0.41)   # update a shown field without counting

``advance(n, **fields)`` counts ``n`` more units and sets fields shown beside the count
(the latest loss while training). ``completed`` starts the count at a unit already done
before this call (a resumed run). Library functions take an optional ``track``; with None
(:func:`stage`) nothing is reported. The command line supplies a tracker that draws a
rich bar in a terminal and prints plain lines at a limited rate otherwise
(:mod:`mechtune.cli._progress`); library code never imports rich.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol

FieldValue = float | int | str


class Advance(Protocol):
    """Count ``n`` more units done and set shown fields (``loss=0.41``)."""

    def __call__(self, n: int = 1, /, **fields: FieldValue) -> None: ...


class Tracker(Protocol):
    """Open a stage: ``track(description, total, completed=0)`` is a context manager that
    yields the stage's :class:`Advance`. ``total`` None: the size is unknown."""

    def __call__(
        self, description: str, total: int | None, *, completed: int = 0
    ) -> AbstractContextManager[Advance]: ...


def ignore(n: int = 1, /, **fields: FieldValue) -> None:
    """The :class:`Advance` of a stage nobody watches."""


@contextlib.contextmanager
def silent(description: str, total: int | None, *, completed: int = 0) -> Iterator[Advance]:
    """The :class:`Tracker` that reports nothing."""
    yield ignore


def stage(
    track: Tracker | None, description: str, total: int | None, *, completed: int = 0
) -> AbstractContextManager[Advance]:
    """``track``'s stage, or a silent one when ``track`` is None."""
    return (track or silent)(description, total, completed=completed)


__all__ = ["Advance", "FieldValue", "Tracker", "ignore", "silent", "stage"]
