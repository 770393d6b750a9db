"""Every setting does what it says: a meta-test over config fields and CLI options.

A setting that nothing reads is a defect (a NegCLIP loss was once configured and never
called). So every field of every config dataclass in mechtune (classes named ``*Config``
or ``*Settings``) and every option of every CLI command must be declared, by the test
module that proves it, in a module-level table:

    FIELD_TESTS = {"mechtune.train.negation.LoopConfig": {"steps": "test_changing_...", ...}}
    OPTION_TESTS = {"mechtune sim render": {"--n": "test_sim_render_options", ...}}

naming a test function of that module which fails when the setting stops changing what it
should (outputs, written files, or what reaches the code that uses it). This test finds
every config class and CLI option, and fails when one is undeclared or a declared test
function does not exist.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
from pathlib import Path

import typer

import mechtune
from mechtune.cli.main import app

TESTS = Path(__file__).parent


def config_classes() -> dict[str, type]:
    """``{"module.Class": class}`` for every config dataclass defined in mechtune."""
    found = {}
    for info in pkgutil.walk_packages(mechtune.__path__, "mechtune."):
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if (
                inspect.isclass(obj)
                and dataclasses.is_dataclass(obj)
                and obj.__module__ == module.__name__
                and name.endswith(("Config", "Settings"))
            ):
                found[f"{module.__name__}.{name}"] = obj
    return found


def cli_options() -> dict[str, set[str]]:
    """``{"mechtune data build polarity": {"--n", ...}}``: every command (and every group
    that runs on its own) with its options and arguments (``--help`` aside)."""
    out: dict[str, set[str]] = {}

    def walk(command: object, path: str) -> None:
        params = {(p.opts[0] if p.opts else p.name) for p in command.params if p.name != "help"}  # type: ignore[attr-defined]
        if params:
            out[path] = params
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(sub, f"{path} {name}")

    walk(typer.main.get_command(app), "mechtune")
    return out


def declared() -> tuple[dict[str, dict[str, str]], dict[str, dict[str, str]], list[str]]:
    """The FIELD_TESTS and OPTION_TESTS of every test module, and declared tests that do
    not exist (``module::function``)."""
    fields: dict[str, dict[str, str]] = {}
    options: dict[str, dict[str, str]] = {}
    missing = []
    for path in sorted(TESTS.rglob("test_*.py")):
        name = ".".join(path.relative_to(TESTS.parent).with_suffix("").parts)
        module = importlib.import_module(name)
        for table, into in (("FIELD_TESTS", fields), ("OPTION_TESTS", options)):
            for owner, entries in getattr(module, table, {}).items():
                for setting, test in entries.items():
                    if not callable(getattr(module, test, None)):
                        missing.append(f"{name}::{test} (for {owner} {setting})")
                    into.setdefault(owner, {})[setting] = f"{name}::{test}"
    return fields, options, missing


def test_every_setting_is_declared_by_a_test_that_exists() -> None:
    fields, options, missing = declared()
    assert not missing, f"declared tests that do not exist: {missing}"
    gaps = set()
    for owner, cls in config_classes().items():
        for f in dataclasses.fields(cls):
            if f.name not in fields.get(owner, {}):
                gaps.add(f"{owner}.{f.name}")
    for command, params in cli_options().items():
        for param in params:
            if param not in options.get(command, {}):
                gaps.add(f"{command} {param}")
    assert not gaps, f"settings without a test proving they change behaviour: {sorted(gaps)}"


def test_declarations_name_real_settings() -> None:
    """A declaration for a field or option that no longer exists is stale."""
    fields, options, _ = declared()
    classes = config_classes()
    commands = cli_options()
    stale = [
        f"{owner}.{name}"
        for owner, entries in fields.items()
        for name in entries
        if owner not in classes or name not in {f.name for f in dataclasses.fields(classes[owner])}
    ]
    stale += [
        f"{command} {name}"
        for command, entries in options.items()
        for name in entries
        if name not in commands.get(command, set())
    ]
    assert not stale, stale
