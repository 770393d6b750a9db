"""The error contract: one base class; the CLI turns it into one message and exit 2."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mechtune
from mechtune.cli.main import app
from mechtune.data.check import PolarityCheckFailed
from mechtune.data.importers import DataFormatError
from mechtune.data.schema import RecordError
from mechtune.errors import ConfigError, DataError, GateFailed, MechtuneError
from mechtune.interp.sae import SAEFormatError
from mechtune.interp.tracing import TraceError
from mechtune.models.spec import ModelSpecError, load_dual_encoder
from mechtune.train.negation import LoopConfig

SRC = Path(mechtune.__file__).parent


@pytest.mark.parametrize(
    "cls", [DataFormatError, RecordError, SAEFormatError, TraceError, ModelSpecError]
)
def test_named_errors_derive_from_the_base_and_value_error(cls: type) -> None:
    assert issubclass(cls, MechtuneError) and issubclass(cls, ValueError)


def test_gate_failures_are_mechtune_errors() -> None:
    assert issubclass(PolarityCheckFailed, GateFailed)
    assert issubclass(GateFailed, MechtuneError) and issubclass(GateFailed, RuntimeError)


def test_config_errors_are_raised_at_construction() -> None:
    with pytest.raises(ConfigError, match="lr must be > 0"):
        LoopConfig(lr=0)
    with pytest.raises(ConfigError, match=r"bad model spec .nonsense.: expected SCHEME:NAME"):
        load_dual_encoder("nonsense")


def _raised_names(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call):
            func = node.exc.func
            if isinstance(func, ast.Name):
                names.add(func.id)
            elif isinstance(func, ast.Attribute):
                names.add(func.attr)
    return names


def test_library_raises_no_bare_builtin_errors_and_never_exits() -> None:
    """Library code raises mechtune errors (so callers can catch them apart from bugs)
    and never ``typer.Exit``: only the CLI entry point turns errors into exit codes."""
    bare = {"ValueError", "TypeError", "RuntimeError", "ImportError"}
    offenders = []
    for path in SRC.rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        raised = _raised_names(tree)
        if raised & bare:
            offenders.append(f"{path.relative_to(SRC)}: {sorted(raised & bare)}")
        if "Exit" in raised and "cli" not in path.relative_to(SRC).parts:
            offenders.append(f"{path.relative_to(SRC)}: typer.Exit outside the CLI")
    assert not offenders, offenders


def test_cli_turns_a_mechtune_error_into_one_message_and_exit_2(tmp_path: Path) -> None:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("methods: [nast]\nloop: {stpes: 3}\n")
    args = ["negation", "study", "--recipe", str(recipe), "--data", str(tmp_path), "--dry-run"]
    result = CliRunner().invoke(app, args, catch_exceptions=False)
    assert result.exit_code == 2
    out = " ".join(result.output.split())
    assert "error:" in out and "recipe.yaml" in out and "loop.stpes" in out
    assert "Traceback" not in result.output


def test_cli_reports_a_missing_file_by_name(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = CliRunner().invoke(
        app, ["negation", "study", "--recipe", str(missing), "--dry-run"], catch_exceptions=False
    )
    assert result.exit_code == 2
    assert "nope.yaml" in " ".join(result.output.split())


def test_data_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        raise DataError("x")
