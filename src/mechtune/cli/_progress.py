"""The command line's progress output: a :class:`~mechtune.progress.Tracker` on a rich
console.

- **Terminal** (``console.is_terminal``): a rich bar per stage with its description, the
  bar, done/total, elapsed time, the estimated time left and the latest fields (the
  loss while training). Stages opened while another runs share one live display, one row
  each; a finished inner stage leaves a plain summary line above it.
- **Not a terminal** (CI, a log file, a pipe): plain lines, no ANSI escapes, such as
  ``train nast: 120/1000 (12%) 14.2 s elapsed, ETA 1m43s, loss 0.412``: one when the stage
  starts, then at most one every :data:`INTERVAL_ENV` seconds (default
  :data:`DEFAULT_INTERVAL`), and one when it ends; never one per step.

Nothing is printed while the console is quiet (the non-main processes of a launch), nor
for a stage with nothing to do (a total of 0).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from mechtune.errors import ConfigError
from mechtune.progress import Advance, FieldValue, ignore

INTERVAL_ENV = "MECHTUNE_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0  # seconds between plain progress lines of one stage


def progress_interval() -> float:
    """Seconds between two plain progress lines of a stage: ``$MECHTUNE_PROGRESS_INTERVAL``
    (a number >= 0; 0 prints every update), else :data:`DEFAULT_INTERVAL`. Raises
    ConfigError naming the variable and its value for anything else."""
    text = os.environ.get(INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise ConfigError(
            f"{INTERVAL_ENV}={text!r}: expected seconds between progress lines, a number >= 0"
        )
    return value


def duration(seconds: float) -> str:
    """``14.2 s``, ``1m43s`` or ``2h05m``."""
    if seconds < 59.95:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def shown_fields(fields: dict[str, FieldValue]) -> str:
    """``loss 0.412, kl 0.0031``: floats to 4 significant digits."""
    return ", ".join(
        f"{name} {value:.4g}" if isinstance(value, float) else f"{name} {value}"
        for name, value in fields.items()
    )


@dataclass
class _Stage:
    """What a plain line says about one stage."""

    description: str
    total: int | None
    completed: int
    started: float
    fields: dict[str, FieldValue] = field(default_factory=dict)
    first: int = field(init=False)  # units done when the stage opened (a resumed run's)

    def __post_init__(self) -> None:
        self.first = self.completed

    def line(self, now: float, outcome: str | None = None) -> str:
        elapsed = now - self.started
        count = f"{self.completed}/{self.total}" if self.total is not None else f"{self.completed}"
        parts = [count]
        if self.total:
            parts[0] += f" ({100 * self.completed // self.total}%)"
        if outcome is None:
            parts.append(f"{duration(elapsed)} elapsed")
            eta = self.eta(elapsed)
            if eta is not None:
                parts[-1] += f", ETA {duration(eta)}"
        else:
            parts.append(f"{outcome} {duration(elapsed)}")
        text = f"{self.description}: " + " ".join(parts)
        extra = shown_fields(self.fields)
        return f"{text}, {extra}" if extra else text

    def eta(self, elapsed: float) -> float | None:
        """Seconds left at this stage's rate so far (None until a unit is done here, and
        once every unit is done)."""
        done = self.completed - self.first
        if self.total is None or done <= 0 or elapsed <= 0 or self.completed >= self.total:
            return None
        return max(self.total - self.completed, 0) * elapsed / done


class ConsoleTracker:
    """A :class:`~mechtune.progress.Tracker` that reports on ``console`` (module
    docstring). ``interval``: seconds between plain lines (default
    :func:`progress_interval`, read when a stage opens); ``clock``: seconds, monotonic."""

    def __init__(
        self,
        console: Console,
        *,
        interval: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = console
        self.interval = interval
        self.clock = clock
        self._live: Progress | None = None
        self._open = 0

    @contextlib.contextmanager
    def __call__(
        self, description: str, total: int | None, *, completed: int = 0
    ) -> Iterator[Advance]:
        if self.console.quiet or total == 0:  # nothing to show: a stage with nothing to do
            yield ignore
        elif self.console.is_terminal:
            with self._bar(description, total, completed) as advance:
                yield advance
        else:
            with self._lines(description, total, completed) as advance:
                yield advance

    # -- not a terminal ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lines(self, description: str, total: int | None, completed: int) -> Iterator[Advance]:
        interval = progress_interval() if self.interval is None else self.interval
        state = _Stage(description, total, completed, self.clock())
        last = [state.started]

        def say(text: str) -> None:
            self.console.print(text, markup=False, highlight=False, soft_wrap=True)

        def advance(n: int = 1, /, **fields: FieldValue) -> None:
            state.completed += n
            state.fields.update(fields)
            now = self.clock()
            # the last unit's line is the final one, printed when the stage closes
            finished = state.total is not None and state.completed >= state.total
            if n and not finished and now - last[0] >= interval:
                say(state.line(now))
                last[0] = now

        say(state.line(state.started))
        try:
            yield advance
        except BaseException:
            say(state.line(self.clock(), outcome="stopped after"))
            raise
        say(state.line(self.clock(), outcome="done in"))

    # -- a terminal ------------------------------------------------------------------------------

    def _progress(self) -> Progress:
        if self._live is None:
            self._live = Progress(
                SpinnerColumn(),
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[shown]}"),
                console=self.console,
                transient=False,
            )
            self._live.start()
        return self._live

    @contextlib.contextmanager
    def _bar(self, description: str, total: int | None, completed: int) -> Iterator[Advance]:
        progress = self._progress()
        self._open += 1
        state = _Stage(description, total, completed, self.clock())
        task: TaskID = progress.add_task(
            escape(description), total=total, completed=completed, shown=""
        )
        stopped = False

        def advance(n: int = 1, /, **fields: FieldValue) -> None:
            state.completed += n
            state.fields.update(fields)
            progress.update(task, advance=n, shown=escape(shown_fields(state.fields)))

        try:
            yield advance
        except BaseException:
            stopped = True
            raise
        finally:
            self._open -= 1
            if self._open:
                # an inner stage: its row goes, a line above the live rows keeps its record
                outcome = "stopped after" if stopped else "done in"
                progress.remove_task(task)
                self.console.print(
                    state.line(self.clock(), outcome=outcome),
                    markup=False,
                    highlight=False,
                    soft_wrap=True,
                )
            else:
                progress.stop()
                self._live = None
