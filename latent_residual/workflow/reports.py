"""Reports of an experiment: the Markdown comparison table of methods, references and the ONNX policy.

The experiment that produces the results is ``experiments.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def comparison_table(results: dict[str, Any]) -> str:
    """A Markdown table: each method's mean return over seeds (± std over seeds), its ratio to
    the simulation policy's return in simulation, and the environment's task metrics (means over
    seeds; '-' where no seed has one, such as a lap time without a valid lap)."""
    reference = results.get("sim-policy@source", {}).get("return_mean", math.nan)
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, row in results.items():
        if isinstance(row, dict) and "return_mean" in row:
            groups.setdefault(key.split("/seed")[0], []).append(row)
    metric_names = list(
        dict.fromkeys(
            name
            for rows in groups.values()
            for row in rows
            for name in row.get("metrics", {})
            if not name.endswith("_std") and name != "episodes"
        )
    )
    # References first, then methods by name and data size, the exported policy last.
    order = {"sim-policy@source": (0, "", 0), "zero-shot": (1, "", 0), "onnx": (3, "", 0)}

    def rank(name: str) -> tuple[int, str, int]:
        method, _, size = name.partition("@")
        return order.get(name, (2, method, int(size) if size.isdigit() else 0))

    def metric(rows: list[dict[str, Any]], name: str) -> str:
        values = [row.get("metrics", {}).get(name) for row in rows]
        values = [value for value in values if value is not None]
        if not values:
            return "-"
        mean = float(np.mean(values))
        return f"{mean:.0f}" if mean.is_integer() and all(isinstance(v, int) for v in values) else f"{mean:.2f}"

    header = ["method", "target data", "seeds", "return (mean ± std over seeds)", "/ sim policy in sim", *metric_names]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name in sorted(groups, key=rank):
        rows = groups[name]
        values = [row["return_mean"] for row in rows]
        method, _, size = name.partition("@")
        if not size.isdigit():  # a reference, such as the simulation policy evaluated @source
            method, size = name, ""
        mean, std = float(np.mean(values)), float(np.std(values))
        ratio = mean / reference if reference and not math.isnan(reference) else math.nan
        cells = [method, size or "-", str(len(values)), f"{mean:.1f} ± {std:.1f}", f"{ratio:.2f}"]
        cells += [metric(rows, metric_name) for metric_name in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
