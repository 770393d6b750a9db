"""The phantom world is a plugin beside the library, not a foundation: nothing in
``data``, ``models``, ``interp``, ``train``, ``eval``, ``pipelines``, ``cli`` or ``bench`` imports
``mechtune.sim``. Only the CLI's ``sim`` commands and the demo (``cli/main.py``) may; the
phantom models and world reach the rest through entry points (``mechtune.model_schemes``,
``mechtune.vlm_schemes``) and the data layer's lazy reader table.

Two checks: a static scan of every import statement (lazy imports inside functions
included), and importing every module in a fresh interpreter, which catches imports made
by anything those modules import at load time.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import mechtune

PACKAGES = ("data", "models", "interp", "train", "eval", "pipelines", "cli", "bench")
SRC = Path(mechtune.__file__).parent

# May import mechtune.sim: the CLI's sim commands and the demo.
ALLOWED = {"cli/sim.py", "cli/main.py"}


def modules() -> dict[str, str]:
    """``{"eval/metrics.py": "mechtune.eval.metrics"}`` for every module of PACKAGES."""
    found = {}
    for package in PACKAGES:
        for path in sorted((SRC / package).rglob("*.py")):
            rel = path.relative_to(SRC).as_posix()
            parts = path.relative_to(SRC.parent).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[rel] = name
    return found


def sim_imports(path: Path) -> list[str]:
    """``"line N: <module>"`` for each import of mechtune.sim in a file, at any depth."""
    hits = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name == "mechtune.sim" or name.startswith("mechtune.sim."):
                hits.append(f"line {node.lineno}: {name}")
                break
    return hits


def test_the_scan_sees_lazy_imports(tmp_path):
    file = tmp_path / "m.py"
    file.write_text(
        "import os\n\ndef f():\n    from mechtune.sim.world import make_world\n\n"
        "def g():\n    from mechtune import sim\n    import mechtune.sim.vqa as v\n"
    )
    assert sim_imports(file) == [
        "line 4: mechtune.sim.world",
        "line 7: mechtune.sim",
        "line 8: mechtune.sim.vqa",
    ]


def test_no_library_module_imports_sim_even_lazily():
    found = {rel: sim_imports(SRC / rel) for rel in modules()}
    offenders = {rel: hits for rel, hits in found.items() if hits}
    assert set(offenders) - ALLOWED == set(), offenders


CHECK = """
import importlib, json, sys

for name in NAMES:
    importlib.import_module(name)
    if "mechtune.sim" in sys.modules:
        print(json.dumps(name))
        break
else:
    print(json.dumps(None))
"""


def test_importing_every_library_module_leaves_sim_unloaded():
    """Import each module in turn in a fresh interpreter; name the first that loads sim."""
    found = modules()
    names = [n for rel, n in found.items() if rel not in ALLOWED]
    script = f"NAMES = {names!r}\n" + CHECK
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=600
    )
    assert len(names) > 40
    assert json.loads(done.stdout.strip().splitlines()[-1]) is None
