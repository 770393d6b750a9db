"""The CLI's progress output: a rich bar in a terminal; elsewhere plain lines at a limited
rate (first, at most one per interval, final), with ETA and loss and no ANSI escapes."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console

from mechtune.cli._progress import (
    DEFAULT_INTERVAL,
    INTERVAL_ENV,
    ConsoleTracker,
    duration,
    progress_interval,
)
from mechtune.errors import ConfigError
from mechtune.progress import stage

ANSI = re.compile(r"\x1b\[")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def log_console() -> Console:
    return Console(file=io.StringIO(), force_terminal=False, width=1000, soft_wrap=True)


def lines(console: Console) -> list[str]:
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return text.splitlines()


def test_plain_lines_first_rate_limited_and_final_with_eta_and_loss():
    console, clock = log_console(), Clock()
    track = ConsoleTracker(console, interval=10.0, clock=clock)
    with track("train nast", 400) as advance:
        for step in range(1, 401):
            clock.now += 0.25  # 4 steps a second: 100 s in all
            if step % 20 == 0:  # a flush: the latest loss, before the step's count
                advance(0, loss=1.0 / step)
            advance(1)
    out = lines(console)
    assert out[0] == "train nast: 0/400 (0%) 0.0 s elapsed"
    # one line per 10 s of the 100 s (the one at 100 s is the final), not one per step
    assert len(out) == 1 + 9 + 1
    assert out[1] == "train nast: 40/400 (10%) 10.0 s elapsed, ETA 1m30s, loss 0.025"
    assert out[5] == "train nast: 200/400 (50%) 50.0 s elapsed, ETA 50.0 s, loss 0.005"
    assert out[-1] == "train nast: 400/400 (100%) done in 1m40s, loss 0.0025"
    assert not any(ANSI.search(line) for line in out)


def test_plain_lines_never_one_per_step_by_default():
    console, clock = log_console(), Clock()
    with ConsoleTracker(console, clock=clock)("embed images", 500) as advance:
        for _ in range(500):
            clock.now += DEFAULT_INTERVAL / 80  # 6.25 intervals in all
            advance(1)
    assert len(lines(console)) == 2 + 6


def test_plain_resumed_stage_counts_eta_from_this_run_only():
    console, clock = log_console(), Clock()
    with ConsoleTracker(console, interval=0.0, clock=clock)("train", 100, completed=60) as advance:
        clock.now += 4.0
        advance(10)  # 10 steps in 4 s here: 30 left take 12 s
    assert lines(console)[1] == "train: 70/100 (70%) 4.0 s elapsed, ETA 12.0 s"


def test_plain_unknown_total_and_a_stopped_stage():
    console, clock = log_console(), Clock()
    track = ConsoleTracker(console, interval=5.0, clock=clock)
    with pytest.raises(KeyError), track("read [rows]", None) as advance:
        clock.now += 6
        advance(3, kept=2)
        raise KeyError("x")
    assert lines(console) == [
        "read [rows]: 0 0.0 s elapsed",
        "read [rows]: 3 6.0 s elapsed, kept 2",
        "read [rows]: 3 stopped after 6.0 s, kept 2",
    ]


def test_a_quiet_console_or_an_empty_stage_prints_nothing():
    console = log_console()
    with ConsoleTracker(console, interval=0.0)("patch features", 0) as advance:
        advance(0)
    console.quiet = True
    with ConsoleTracker(console, interval=0.0)("train", 5) as advance:
        advance(5, loss=0.5)
    assert console.file.getvalue() == ""  # type: ignore[attr-defined]


def test_terminal_draws_a_rich_bar_with_eta_and_loss():
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    with ConsoleTracker(console)("train nast", 40) as advance:
        advance(20, loss=0.4123)
        advance(20)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
    assert ANSI.search(text)  # a live display: colours and cursor moves
    assert "━" in plain  # the bar
    assert "40/40" in plain
    assert "ETA" in plain
    assert "loss 0.4123" in plain


def test_terminal_stages_nest_in_one_live_display():
    console = Console(file=io.StringIO(), force_terminal=True, width=160)
    track = ConsoleTracker(console)
    with track("study", 2) as outer:
        for run in range(2):
            with track(f"train run {run}", 3) as inner:
                inner(3, loss=0.25)
            outer(1)
    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", console.file.getvalue())  # type: ignore[attr-defined]
    # each finished inner stage leaves a summary line; the outer bar ends at 2/2
    assert "train run 0: 3/3 (100%) done in" in plain
    assert "train run 1: 3/3 (100%) done in" in plain
    assert "2/2" in plain
    assert track._live is None


def test_stage_without_a_tracker_is_silent():
    with stage(None, "anything", 3) as advance:
        advance(3, loss=1.0)


def test_interval_env(monkeypatch):
    monkeypatch.delenv(INTERVAL_ENV, raising=False)
    assert progress_interval() == DEFAULT_INTERVAL
    monkeypatch.setenv(INTERVAL_ENV, "2.5")
    assert progress_interval() == 2.5
    for bad in ("soon", "-1", "nan", "inf"):
        monkeypatch.setenv(INTERVAL_ENV, bad)
        with pytest.raises(ConfigError, match=f"{INTERVAL_ENV}='{bad}'"):
            progress_interval()


def test_interval_env_changes_the_rate(monkeypatch):
    def count(interval: str) -> int:
        monkeypatch.setenv(INTERVAL_ENV, interval)
        console, clock = log_console(), Clock()
        with ConsoleTracker(console, clock=clock)("s", 60) as advance:
            for _ in range(60):
                clock.now += 1.0
                advance(1)
        return len(lines(console))

    # lines at 10, 20, ... s; the one at the last step is the final line
    assert count("10") == 2 + 5
    assert count("30") == 2 + 1
    assert count("0") == 2 + 59


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.04, "0.0 s"), (14.24, "14.2 s"), (59.9, "59.9 s"), (103, "1m43s"), (7500, "2h05m")],
)
def test_duration(seconds, text):
    assert duration(seconds) == text


@pytest.fixture
def hf_bars(monkeypatch):
    """transformers' and huggingface_hub's bar switches, restored after the test."""
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    from mechtune.cli._common import HF_BARS_ENV

    monkeypatch.delenv(HF_BARS_ENV, raising=False)
    hub_off, tf_on = are_progress_bars_disabled(), hf_logging.is_progress_bar_enabled()
    enable_progress_bars()
    hf_logging.enable_progress_bar()
    yield are_progress_bars_disabled, hf_logging.is_progress_bar_enabled
    (disable_progress_bars if hub_off else enable_progress_bars)()
    (hf_logging.enable_progress_bar if tf_on else hf_logging.disable_progress_bar)()


def test_library_bars_are_turned_off_in_a_log_only(hf_bars, monkeypatch):
    import os

    from mechtune.cli._common import HF_BARS_ENV, quiet_library_bars

    hub_disabled, tf_enabled = hf_bars
    assert not quiet_library_bars(Console(file=io.StringIO(), force_terminal=True))
    assert HF_BARS_ENV not in os.environ and tf_enabled() and not hub_disabled()

    monkeypatch.setenv(HF_BARS_ENV, "0")  # the user's choice wins
    assert not quiet_library_bars(log_console())
    assert tf_enabled() and not hub_disabled()

    monkeypatch.delenv(HF_BARS_ENV)
    assert quiet_library_bars(log_console())
    assert os.environ[HF_BARS_ENV] == "1"
    assert not tf_enabled() and hub_disabled()
