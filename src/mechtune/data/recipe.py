"""The recipe of a data build: the exact command line, every option resolved, and the
versions that reproduce it (``mechtune data build ... --print-recipe``)."""

from __future__ import annotations

import enum
import os
import platform
import shlex
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import mechtune

# options that describe how to report, not what is built; never part of a recipe
_NOT_RECIPE = frozenset({"print_recipe", "help"})


def git_commit() -> str | None:
    """The git commit of the mechtune source tree, or ``None`` when it is not a git checkout
    (an installed wheel) or git is absent."""
    root = Path(mechtune.__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def _word(value: Any) -> str:
    if isinstance(value, enum.Enum):
        value = value.value
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return shlex.quote(str(value))


def command_line(ctx: Any) -> str:
    """``ctx`` is the command's click (or typer's vendored click) context.

    ``mechtune <sub-commands> --opt value ...`` with every option of ``ctx``'s command at
    its resolved value (defaults included): a boolean with an ``--x/--no-x`` pair is written
    in the form that holds; a plain flag only when set; an option whose value is ``None``
    (not given, no default) is left out."""
    names: list[str] = []
    node = ctx
    while node.parent is not None:  # the root's name is the program's, not the command's
        names.insert(0, node.info_name)
        node = node.parent
    words = ["mechtune", *names]
    for param in ctx.command.params:
        if getattr(param, "param_type_name", "") != "option" or param.name in _NOT_RECIPE:
            continue
        value = ctx.params.get(param.name or "")
        if value is None:
            continue
        long = max(param.opts, key=len)
        if param.is_flag and param.secondary_opts:
            words.append(long if value else max(param.secondary_opts, key=len))
        elif param.is_flag:
            if value:
                words.append(long)
        else:
            words += [long, _word(value)]
    return " ".join(words)


def versions() -> dict[str, str | None]:
    """mechtune's version and git commit; the python, pyarrow and numpy versions."""
    return {
        "mechtune": mechtune.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
    }


def recipe_text(ctx: Any) -> str:
    """The recipe as shell text: the command, then the versions as ``#`` comment lines."""
    v = versions()
    return "\n".join(
        [
            command_line(ctx),
            f"# mechtune {v['mechtune']}, git commit {v['git_commit'] or 'unknown'}",
            f"# python {v['python']}, pyarrow {v['pyarrow']}, numpy {v['numpy']}",
        ]
    )


__all__ = ["command_line", "git_commit", "recipe_text", "versions"]
