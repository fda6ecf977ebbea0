"""Reports of an experiment: the Markdown comparison table of methods, references and the ONNX policy.

The experiment that produces the results is ``experiments.py``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _groups(results: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Evaluated rows grouped by method and data size (seeds together)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for key, row in results.items():
        if isinstance(row, dict) and "return_mean" in row:
            groups.setdefault(key.split("/seed")[0], []).append(row)
    return groups


def _metric_names(groups: dict[str, list[dict[str, Any]]]) -> list[str]:
    return list(
        dict.fromkeys(
            name
            for rows in groups.values()
            for row in rows
            for name in row.get("metrics", {})
            if not name.endswith("_std") and name != "episodes"
        )
    )


def _rank(name: str) -> tuple[int, str, int]:
    """References first, then methods by name and data size, the exported policy last."""
    order = {"sim-policy@source": (0, "", 0), "zero-shot": (1, "", 0), "onnx": (3, "", 0)}
    method, _, size = name.partition("@")
    return order.get(name, (2, method, int(size) if size.isdigit() else 0))


def _metric(rows: list[dict[str, Any]], name: str) -> str:
    """The metric's mean over the seeds that have one, ± its std over them with two or more; counts also
    per seed; and how many seeds had one where some had none (a lap time without a valid lap)."""
    values = [row.get("metrics", {}).get(name) for row in rows]
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    counts = all(isinstance(value, int) for value in present)
    mean = float(np.mean(present))
    cell = f"{mean:.0f}" if counts and mean.is_integer() and len(present) == 1 else f"{mean:.2f}"
    if len(present) > 1:
        cell += f" ± {float(np.std(present)):.2f}"
        if counts:
            cell += " (" + " / ".join(str(value) for value in present) + ")"
    if len(present) < len(values):
        cell += f" ({len(present)} of {len(values)} seeds)"
    return cell


def _rows(results: dict[str, Any], metric_names: list[str]) -> list[list[str]]:
    """One row of cells per method and data size, in table order."""
    reference = results.get("sim-policy@source", {}).get("return_mean", math.nan)
    groups = _groups(results)
    rows = []
    for name in sorted(groups, key=_rank):
        values = [row["return_mean"] for row in groups[name]]
        method, _, size = name.partition("@")
        if not size.isdigit():  # a reference, such as the simulation policy evaluated @source
            method, size = name, ""
        mean, std = float(np.mean(values)), float(np.std(values))
        ratio = mean / reference if reference and not math.isnan(reference) else math.nan
        cells = [method, size or "-", str(len(values)), f"{mean:.1f} ± {std:.1f}", f"{ratio:.2f}"]
        rows.append(cells + [_metric(groups[name], metric_name) for metric_name in metric_names])
    return rows


_HEADER = ["method", "target data", "seeds", "return (mean ± std over seeds)", "/ sim policy in sim"]


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(cells) + " |" for cells in rows])


def comparison_table(results: dict[str, Any]) -> str:
    """A Markdown table: each method's mean return over seeds (± std over seeds), its ratio to
    the simulation policy's return in simulation, and the environment's task metrics (mean ± std over
    seeds; '-' where no seed has one, such as a lap time without a valid lap)."""
    metric_names = _metric_names(_groups(results))
    return _markdown([*_HEADER, *metric_names], _rows(results, metric_names))


def combined_table(runs: dict[str, dict[str, Any]]) -> str:
    """One :func:`comparison_table` for several backbones' runs, with a backbone column, as the
    poster puts DRAW and Dreamer rows together; each ratio is to its own backbone's simulation policy."""
    metric_names = list(dict.fromkeys(name for results in runs.values() for name in _metric_names(_groups(results))))
    rows = [[backbone, *cells] for backbone, results in runs.items() for cells in _rows(results, metric_names)]
    return _markdown(["backbone", *_HEADER, *metric_names], rows)
