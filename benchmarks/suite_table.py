"""Merge the GPU suite's part records into one JSON, and turn that JSON into the
``docs/benchmarks.md`` table.

    python benchmarks/suite_table.py merge WORKDIR --out FILE --scale real --wall-ms N
    python benchmarks/suite_table.py table FILE                      # print the markdown
    python benchmarks/suite_table.py table FILE --write docs/benchmarks.md

``merge`` (called by ``benchmarks/gpu_suite.sh``) reads, per part, ``NAME.status`` (exit
code, milliseconds, limit), ``NAME.json`` (the part's record, :mod:`mechtune.bench.record`)
and ``NAME.log``; the ``gpu_tests`` part's JUnit XML gives its test counts. A part that
exited non-zero or wrote no record keeps the tail of its output. ``merge`` exits 1 when a
part failed, after writing the file.

``table --write`` replaces the text between ``<!-- gpu-suite:begin -->`` and
``<!-- gpu-suite:end -->`` in the given file (atomically); the markers must be there.
"""

from __future__ import annotations

import argparse
import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from mechtune.data.io import atomic_write_text, write_json

PARTS = ("trace", "nast", "medgemma", "ddp", "openclip", "gpu_tests")
HOST_KEYS = ("device", "device_name", "torch", "cuda", "threads", "python", "packages")
SKIP_KEYS = {*HOST_KEYS, "benchmark", "scale", "goals"}
BEGIN, END = "<!-- gpu-suite:begin -->", "<!-- gpu-suite:end -->"
TAIL = 3000


def junit_counts(path: Path) -> dict[str, int]:
    """Test counts of a pytest JUnit XML file: tests, failures, errors, skipped, passed."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {
        k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")
    }
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def merge(work: Path, scale: str, wall_ms: int) -> tuple[dict[str, Any], bool]:
    """The suite's record from a work folder, and whether every part that ran succeeded."""
    parts: dict[str, Any] = {}
    host: dict[str, Any] = {}
    goals: dict[str, Any] = {}
    ok = True
    for name in PARTS:
        status = work / f"{name}.status"
        if not status.exists():
            continue  # not run (--only)
        rc, ms, limit = (int(v) for v in status.read_text(encoding="utf-8").split())
        part: dict[str, Any] = {"exit_code": rc, "seconds": ms / 1000, "limit_s": limit}
        if rc in (124, 137):
            part["timed_out"] = True
        record_path = work / f"{name}.json"
        if record_path.exists():
            record = json.loads(record_path.read_text(encoding="utf-8"))
            part["record"] = record
            host = host or {k: record[k] for k in HOST_KEYS if k in record}
            for goal_name, value in record.get("goals", {}).items():
                goals[f"{name}.{goal_name}"] = value
        if name == "gpu_tests" and (work / "gpu_tests.xml").exists():
            part["tests"] = junit_counts(work / "gpu_tests.xml")
        failed = rc != 0 or (name != "gpu_tests" and "record" not in part)
        if failed:
            ok = False
            log = work / f"{name}.log"
            part["output_tail"] = (
                log.read_text(encoding="utf-8", errors="replace")[-TAIL:] if log.exists() else ""
            )
        part["ok"] = not failed
        parts[name] = part
    suite = {
        "suite": "gpu_suite",
        "scale": scale,
        "wall_s": wall_ms / 1000,
        "host": host,
        "parts": parts,
        "goals": goals,
    }
    return suite, ok


def _value(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.4g}" if abs(v) < 1e6 else f"{v:,.0f}"
    if v is None:
        return "n/a"
    return str(v).replace("|", "\\|").replace("\n", " ")


def _flat(record: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in record.items():
        if not prefix and key in SKIP_KEYS:
            continue
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flat(value, name + "."))
        elif isinstance(value, list):
            rows.append((name, ", ".join(_value(v) for v in value)))
        else:
            rows.append((name, value))
    return rows


def table(suite: dict[str, Any]) -> str:
    """The markdown of a merged suite record: hardware, goals, then every figure."""
    host = suite.get("host") or {}
    lines = [
        f"Hardware: **{host.get('device_name', 'unknown')}** (`{host.get('device', '?')}`), "
        f"torch {host.get('torch', '?')}, CUDA {host.get('cuda') or 'none'}, Python "
        f"{host.get('python', '?')}"
        + "".join(f", {k} {v}" for k, v in (host.get("packages") or {}).items() if v)
        + f"; scale `{suite['scale']}`; the suite took {suite['wall_s']:.0f} s.",
        "",
        "| goal | target | measured | met |",
        "|---|---:|---:|---|",
    ]
    for name, g in suite["goals"].items():
        lines.append(
            f"| {name} | {_value(g.get('target'))} | {_value(g.get('value'))} | {_value(g.get('met'))} |"
        )
    lines += ["", "| part | status | seconds | figure | value |", "|---|---|---:|---|---:|"]
    for name, part in suite["parts"].items():
        status = (
            "ok"
            if part["ok"]
            else ("timed out" if part.get("timed_out") else f"failed (exit {part['exit_code']})")
        )
        rows = _flat(part.get("record", {}))
        if "tests" in part:
            rows = [(k, v) for k, v in part["tests"].items()]
        if not rows:
            rows = [("", "")]
        for i, (key, value) in enumerate(rows):
            head = (name, status, f"{part['seconds']:.1f}") if i == 0 else ("", "", "")
            lines.append(
                f"| {head[0]} | {head[1]} | {head[2]} | {key} | {_value(value) if key else ''} |"
            )
    return "\n".join(lines) + "\n"


def write_between_markers(path: Path, text: str) -> None:
    """Replace the text between the suite markers of ``path``; exits naming the file when
    a marker is missing."""
    doc = path.read_text(encoding="utf-8")
    if BEGIN not in doc or END not in doc or doc.index(BEGIN) > doc.index(END):
        raise SystemExit(f"{path}: needs the markers {BEGIN} and {END}, in that order")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    atomic_write_text(path, f"{head}{BEGIN}\n{text}{END}{tail}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("merge", help="merge a suite work folder into one JSON")
    m.add_argument("work", type=Path)
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--scale", required=True)
    m.add_argument("--wall-ms", type=int, required=True)
    t = sub.add_parser("table", help="markdown table of a merged JSON")
    t.add_argument("file", type=Path)
    t.add_argument("--write", type=Path, default=None, help="replace the marked block of this file")
    args = parser.parse_args(argv)
    if args.command == "merge":
        suite, ok = merge(args.work, args.scale, args.wall_ms)
        write_json(args.out, suite)
        print(
            f"wrote {args.out} ({len(suite['parts'])} parts, {suite['wall_s']:.0f} s)",
            file=sys.stderr,
        )
        return 0 if ok else 1
    text = table(json.loads(args.file.read_text(encoding="utf-8")))
    if args.write is None:
        print(text, end="")
    else:
        write_between_markers(args.write, text)
        print(f"updated {args.write}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
