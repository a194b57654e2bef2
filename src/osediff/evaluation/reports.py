"""The comparison table (terminal and Markdown), per-image CSV and summary JSON."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from ..fileio import write_text_atomic
from .runner import EvalResult

DIGITS = 4  # the authors' log and the paper's table


def _heading(result: EvalResult) -> list[str]:
    return ["Method"] + [f"{m.label}{'↓' if m.lower_better else '↑'}" for m in result.metrics]


def _cell(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{DIGITS}f}"


def _rows(result: EvalResult) -> list[list[str]]:
    return [[method.name] + [_cell(method.mean(m.name)) for m in result.metrics] for method in result.methods]


def terminal_table(result: EvalResult) -> str:
    rows = [_heading(result), *_rows(result)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(result: EvalResult) -> str:
    """Methods as rows, the best value of each column in bold when there are several methods."""
    rows = _rows(result)
    if len(result.methods) > 1:
        for col, metric in enumerate(result.metrics, start=1):
            values = [m.mean(metric.name) for m in result.methods]
            present = [v for v in values if v is not None and not math.isnan(v)]
            if not present:
                continue
            best = min(present) if metric.lower_better else max(present)
            for row, value in zip(rows, values, strict=True):
                if value is not None and f"{value:.{DIGITS}f}" == f"{best:.{DIGITS}f}":
                    row[col] = f"**{row[col]}**"
    heading = _heading(result)
    lines = ["| " + " | ".join(heading) + " |", "|" + "|".join(["---"] + ["---:"] * (len(heading) - 1)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def per_image_csv(result: EvalResult) -> str:
    """One row per method and image; full precision so nothing is lost to rounding."""
    names = [m.name for m in result.metrics if not m.per_folder]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["method", "image", *names])
    for method in result.methods:
        for image, row in method.per_image.items():
            writer.writerow([method.name, image, *(repr(row[n]) if n in row else "" for n in names)])
    return buffer.getvalue()


def summary(result: EvalResult) -> dict:
    import pyiqa

    return {
        "gt": str(result.gt) if result.gt else None,
        "pyiqa_version": getattr(pyiqa, "__version__", "unknown"),
        "metrics": {m.name: {"label": m.label, "lower_better": m.lower_better, "pyiqa": m.pyiqa_name,
                             "options": m.options, "per_folder": m.per_folder,
                             "source": result.sources.get(m.name, "pyiqa")} for m in result.metrics},
        "skipped": result.skipped,
        "methods": {method.name: {"folder": str(method.folder), "images": len(method.per_image),
                                  "mean": {m.name: method.mean(m.name) for m in result.metrics}}
                    for method in result.methods},
    }


def write_reports(result: EvalResult, out_dir: Path) -> list[Path]:
    """summary.json, per_image.csv and table.md in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    return [
        write_text_atomic(json.dumps(summary(result), indent=2) + "\n", out_dir / "summary.json"),
        write_text_atomic(per_image_csv(result), out_dir / "per_image.csv"),
        write_text_atomic(markdown_table(result), out_dir / "table.md"),
    ]
