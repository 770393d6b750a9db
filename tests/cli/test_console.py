"""The CLI console: tables and long lines whole when the output is not a terminal."""

from __future__ import annotations

import io

from rich.table import Table

from mechtune.cli._common import LOG_WIDTH, make_console


def render(is_terminal: bool) -> str:
    console = make_console(is_terminal=is_terminal)
    console.file = io.StringIO()
    table = Table("method", *(f"held-out claim accuracy, seed {i} [95% CI]" for i in range(4)))
    table.add_row("nast", *("57.6 [55.1, 60.2]" for _ in range(4)))
    console.print(table)
    console.print("done in 321.8 s: 2000 studies -> 837 MCQ pairs, " + "x" * 120)
    return console.file.getvalue()


def test_a_log_gets_every_table_row_and_line_whole():
    text = render(is_terminal=False)
    row = next(line for line in text.splitlines() if "nast" in line)
    assert row.count("57.6 [55.1, 60.2]") == 4  # one line: not cut or wrapped at 80
    assert len(row) > 80
    assert any(line.endswith("x" * 120) for line in text.splitlines())
    assert make_console(is_terminal=False).width == LOG_WIDTH


def test_a_terminal_keeps_its_width():
    console = make_console(is_terminal=True)
    assert console.width != LOG_WIDTH
