"""Reports: the verdict table of a results directory as Markdown (figures and HTML: later).

``write_report(out)`` reads every ``<out>/<sweep>/verdict.json`` written by ``grpo_lab.sweep``
and writes ``<out>/report.md``: the verdict table first (protocol, verdict, the seed's claim,
the evidence in one line), then one section per protocol with its full evidence.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from grpo_lab.store import atomic_write_bytes


def read_verdicts(out: str | Path) -> list[dict[str, Any]]:
    """Every verdict under ``out`` (one per sweep directory), sorted by protocol name."""
    root = Path(out)
    if not root.is_dir():
        raise ValueError(f"results directory {str(root)!r} does not exist")
    found = [
        json.loads(p.read_text()) | {"sweep": p.parent.name} for p in root.glob("*/verdict.json")
    ]
    if not found:
        raise ValueError(
            f"no verdict.json under {str(root)!r}: run `grpo-lab run --out {root}` first"
        )
    return sorted(found, key=lambda v: (v["protocol"], v["sweep"]))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def render_markdown(verdicts: list[dict[str, Any]]) -> str:
    lines = [
        "# grpo_lab report",
        "",
        "| protocol | sweep | verdict | claim (from the seed) | evidence |",
        "|---|---|---|---|---|",
    ]
    for v in verdicts:
        claim = v["claim"].replace("|", "\\|")
        summary = v["summary"].replace("|", "\\|")
        lines.append(
            f"| {v['protocol']} | {v['sweep']} | **{v['status']}** | {claim} | {summary} |"
        )
    for v in verdicts:
        lines += [
            "",
            f"## {v['protocol']} ({v['sweep']}): {v['status']}",
            "",
            f"> {v['claim']}",
            "",
        ]
        lines += [f"- {k}: {_fmt(x)}" for k, x in v["evidence"].items()]
    return "\n".join(lines) + "\n"


def write_report(out: str | Path) -> Path:
    """Write ``<out>/report.md`` from the verdicts under ``out``; returns its path."""
    path = Path(out) / "report.md"
    atomic_write_bytes(path, render_markdown(read_verdicts(out)).encode())
    return path
