"""The diagnose report on disk: matplotlib PNGs, one self-contained HTML page (pictures inlined as data URIs,
no scripts, no fonts, no links out), ``report.json``, and the same numbers and pictures in TensorBoard.

What the numbers mean and how they are computed is in ``diagnose.py``; this module only draws and writes.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from latent_residual.serialization import atomic_write_directory

REPORT_JSON_NAME = "report.json"
REPORT_HTML_NAME = "report.html"
TENSORBOARD_DIR_NAME = "tensorboard"
_COLOURS = {"recorded": "black", "base": "tab:red", "adapted": "tab:blue"}
#: Columns of an image strip at most (horizons are subsampled evenly).
_STRIP_COLUMNS = 8


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # no display; set before pyplot is imported
    import matplotlib.pyplot as plt

    return plt


def _kl_axes(figure: Any, axis: Any, xlabel: str, *, log_x: bool = False) -> bytes:
    """Finish a plot of KL (log scale) against ``xlabel`` and return it as PNG bytes."""
    if log_x:
        axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel("KL [nats / step]")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    return _png(figure)


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    _pyplot().close(figure)
    return buffer.getvalue()


# ----------------------------------------------------------------------------------------------
# Figures: each returns PNG bytes
# ----------------------------------------------------------------------------------------------


def open_loop_figure(kl: Mapping[str, list[float]]) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3))
    for label, values in kl.items():
        axis.plot(range(1, len(values) + 1), values, marker="o", ms=3, color=_COLOURS.get(label), label=label)
    return _kl_axes(figure, axis, "open-loop horizon k (steps imagined with the recorded actions)")


def image_strip(strips: Mapping[str, Mapping[str, np.ndarray]], key: str, window: int = 0) -> np.ndarray:
    """One window's frames, rows recorded / base / adapted, columns horizons: a uint8 (rows*H, cols*W, 3) array."""
    rows = []
    horizon = strips["recorded"][key].shape[1]
    columns = np.unique(np.linspace(0, horizon - 1, min(horizon, _STRIP_COLUMNS)).round().astype(int))
    for label in ("recorded", "base", "adapted"):
        if label in strips:
            frames = strips[label][key][window, columns]  # (cols, H, W, 3) on [-0.5, 0.5]
            rows.append(np.concatenate(list(frames), axis=1))
    image = np.concatenate(rows, axis=0)
    return (np.clip(image + 0.5, 0.0, 1.0) * 255).round().astype(np.uint8)


def image_strip_figure(strips: Mapping[str, Mapping[str, np.ndarray]], key: str) -> bytes:
    plt = _pyplot()
    windows = strips["recorded"][key].shape[0]
    figure, axes = plt.subplots(windows, 1, figsize=(8, 2.2 * windows), squeeze=False)
    labels = [label for label in ("recorded", "base", "adapted") if label in strips]
    for window, axis in enumerate(axes[:, 0]):
        strip = image_strip(strips, key, window)
        axis.imshow(strip)
        axis.set_yticks([(i + 0.5) * strip.shape[0] / len(labels) for i in range(len(labels))], labels)
        axis.set_xticks([])
        axis.set_title(f"{key}: held-out window {window}, horizons left to right", fontsize=9)
    return _png(figure)


def trajectory_figure(strips: Mapping[str, Mapping[str, np.ndarray]], key: str) -> bytes:
    plt = _pyplot()
    recorded = strips["recorded"][key]  # (windows, H, *shape)
    windows, horizon = recorded.shape[:2]
    dims = int(np.prod(recorded.shape[2:]))
    figure, axes = plt.subplots(dims, windows, figsize=(2.6 * windows, 2.1 * dims), squeeze=False, layout="constrained")
    for window in range(windows):
        for dim in range(dims):
            axis = axes[dim, window]
            for label in ("recorded", "base", "adapted"):
                if label in strips:
                    values = strips[label][key][window].reshape(horizon, dims)[:, dim]
                    axis.plot(range(1, horizon + 1), values, color=_COLOURS[label], label=label, lw=1.5)
            axis.set_title(f"{key}[{dim}], window {window}", fontsize=8)
            axis.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    figure.supxlabel("open-loop horizon k", fontsize=8)
    return _png(figure)


def sensitivity_figure(sensitivity: Mapping[str, Any]) -> bytes:
    plt = _pyplot()
    pairs = sensitivity["pairs"]
    names = list(pairs)
    labels = list(next(iter(pairs.values())))
    figure, axis = plt.subplots(figsize=(5, 0.6 + 0.5 * len(names) * len(labels)))
    width = 0.8 / len(labels)
    for offset, label in enumerate(labels):
        values = [pairs[name][label]["separation"] for name in names]
        axis.barh(np.arange(len(names)) + offset * width, values, height=width, color=_COLOURS.get(label), label=label)
    axis.set_yticks(np.arange(len(names)) + width * (len(labels) - 1) / 2, names, fontsize=8)
    axis.set_xlabel(f"separation after {sensitivity['horizon']} imagined steps [data std]")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3, axis="x")
    return _png(figure)


def fit_figure(curves: Mapping[str, list[list[float]]]) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3))
    styles = {
        "train_kl": ("train (batch)", "tab:gray"),
        "held_out_kl": ("held-out", "tab:blue"),
        "held_out_kl_base": ("base, held-out", "tab:red"),
    }
    for metric, (label, colour) in styles.items():
        if metric in curves:
            points = np.asarray(curves[metric])
            if metric == "held_out_kl_base":
                axis.axhline(points[0, 1], color=colour, ls="--", label=label)
            else:
                axis.plot(points[:, 0], points[:, 1], color=colour, label=label, lw=1)
    return _kl_axes(figure, axis, "fit step")


def surprise_figure(coverage: Mapping[str, Any]) -> bytes:
    plt = _pyplot()
    scores = coverage["scores"]
    figure, axes = plt.subplots(len(scores), 1, figsize=(6, 1.7 * len(scores)), squeeze=False, sharex=True)
    for axis, (name, episodes) in zip(axes[:, 0], scores.items()):
        for episode in episodes:
            axis.plot(episode, lw=0.7)
        axis.axhline(coverage["threshold"], color="black", ls="--", lw=1)
        axis.set_yscale("log")
        axis.set_title(f"surprise: {name} (dashed: threshold {coverage['threshold']:.3g})", fontsize=8)
        axis.tick_params(labelsize=7)
    axes[-1, 0].set_xlabel("step in episode")
    return _png(figure)


def data_curve_figure(curve: Mapping[str, Any]) -> bytes:
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(5, 3))
    colours = iter(["tab:blue", "tab:orange", "tab:green", "tab:purple"])
    for method, rows in curve["methods"].items():
        sizes = [row["transitions"] for row in rows]
        means = [np.mean(row["held_out_kl"]) for row in rows]
        colour = next(colours)
        axis.plot(sizes, means, marker="o", color=colour, label=method)
        for row in rows:
            axis.scatter(
                [row["transitions"]] * len(row["held_out_kl"]), row["held_out_kl"], color=colour, s=8, alpha=0.5
            )
    axis.axhline(curve["base_kl"], color="tab:red", ls="--", label="base")
    return _kl_axes(figure, axis, "target transitions used for fitting (scored on held-out episodes)", log_x=True)


def figures(
    report: Mapping[str, Any], strips: Mapping[str, Mapping[str, np.ndarray]] | None
) -> dict[str, tuple[str, bytes]]:
    """Every picture of the report: file name -> (caption, PNG bytes)."""
    out = {
        "open_loop_kl.png": (
            "Open-loop prediction quality per horizon, base vs adapted",
            open_loop_figure(report["open_loop_kl"]),
        )
    }
    if strips is not None:
        for key, value in strips["recorded"].items():
            image = value.ndim == 5 and value.shape[-1] in (1, 3)
            plot = image_strip_figure if image else trajectory_figure
            kind = "frames" if image else "trajectories"
            out[f"predictions_{key}.png"] = (
                f"Decoded open-loop {kind} of {key!r}: recorded / base / adapted",
                plot(strips, key),
            )
    out["action_sensitivity.png"] = (
        "How far predictions separate under opposite actions",
        sensitivity_figure(report["action_sensitivity"]),
    )
    if report.get("fit_curves"):
        out["fit_curves.png"] = ("The fit's training and held-out KL", fit_figure(report["fit_curves"]))
    out["surprise.png"] = ("Per-step surprise against the calibrated threshold", surprise_figure(report["coverage"]))
    if report.get("data_curve"):
        out["data_curve.png"] = (
            "Held-out KL against the amount of target data",
            data_curve_figure(report["data_curve"]),
        )
    return out


# ----------------------------------------------------------------------------------------------
# The page
# ----------------------------------------------------------------------------------------------

_STYLE = (
    "\n"
    "body { font-family: sans-serif; max-width: 60em; margin: 2em auto; color: #222; }\n"
    ".warn { background: #fff3cd; border-left: 4px solid #e0a800; padding: 0.5em 1em; margin: 0.5em 0; }\n"
    ".ok { background: #e8f5e9; border-left: 4px solid #43a047; padding: 0.5em 1em; }\n"
    "table { border-collapse: collapse; margin: 0.5em 0; } "
    "td, th { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }\n"
    "img { max-width: 100%; }\n"
)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return f"{value:.4g}" if isinstance(value, float) else html.escape(str(value))

    head = "".join(f"<th>{html.escape(name)}</th>" for name in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(value)}</td>" for value in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(name: str, caption: str, data: bytes) -> str:
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return (
        f'<figure><img src="{uri}" alt="{html.escape(name)}">'
        f"<figcaption>{html.escape(caption)} ({html.escape(name)})</figcaption></figure>"
    )


def page(report: Mapping[str, Any], pictures: Mapping[str, tuple[str, bytes]]) -> str:
    """The HTML page: warnings first, then each section's numbers and picture."""
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>latent-residual diagnose</title>"
        f"<style>{_STYLE}</style></head><body>"
    ]
    parts.append("<h1>latent-residual diagnose</h1>")
    parts.append(
        f"<p>Data: {html.escape(report['data']['source'])}; "
        f"{report['data']['windows']} windows of {report['data']['window']} steps.</p>"
    )
    warnings = report["warnings"]
    parts += [f"<div class='warn'>{html.escape(text)}</div>" for text in warnings] or [
        "<div class='ok'>No warnings.</div>"
    ]
    kl = report["open_loop_kl"]
    parts.append("<h2>Open-loop prediction</h2>")
    parts.append(
        _table(["k", *kl], [[k + 1, *(kl[label][k] for label in kl)] for k in range(len(next(iter(kl.values()))))])
    )
    for name, (caption, data) in pictures.items():
        if name.startswith(("open_loop", "predictions_")):
            parts.append(_figure(name, caption, data))
    if not report["decoder"]:
        parts.append("<p>The backbone has no decoder (decode() is optional): no decoded predictions are shown.</p>")
    parts.append("<h2>Action sensitivity</h2>")
    pairs = report["action_sensitivity"]["pairs"]
    labels = list(next(iter(pairs.values())))
    parts.append(
        _table(
            ["actions", *labels],
            [[name, *(row[label]["separation"] for label in labels)] for name, row in pairs.items()],
        )
    )
    parts.append(_figure("action_sensitivity.png", *pictures["action_sensitivity.png"]))
    parts.append("<h2>The fit and the residual</h2>")
    size = report.get("residual_size")
    if size:
        parts.append(
            f"<p>Residual offsets: RMS {size['offset_rms']:.3g} against the frozen prior logits' "
            f"{size['prior_rms']:.3g} (ratio {size['ratio']:.3g}).</p>"
        )
    if "fit_curves.png" in pictures:
        parts.append(_figure("fit_curves.png", *pictures["fit_curves.png"]))
    else:
        parts.append("<p>No fit log found beside the adapter (adapt writes logs/metrics.csv).</p>")
    cover = report["coverage"]
    parts.append("<h2>Coverage alarm</h2>")
    parts.append(
        f"<p>Threshold {cover['threshold']:.4g} (the {cover['quantile']:.0%} quantile of held-out surprise over "
        f"{cover['calibration_episodes']} episodes); "
        f"the alarm fires after {cover['consecutive']} consecutive steps above it.</p>"
    )
    rows = [
        [
            "held-out (own target)",
            cover["held_out"]["episodes"],
            cover["held_out"]["over_rate"],
            cover["held_out"]["alarm_rate"],
            cover["held_out"]["flagged"],
        ]
    ]
    rows += [
        [name, other["episodes"], other["over_rate"], other["alarm_rate"], other["flagged"]]
        for name, other in cover["others"].items()
    ]
    parts.append(_table(["data", "episodes", "steps above", "steps alarmed", "episodes flagged"], rows))
    parts.append(_figure("surprise.png", *pictures["surprise.png"]))
    if "data_curve.png" in pictures:
        curve = report["data_curve"]
        parts.append("<h2>Is the data enough?</h2>")
        parts += [f"<p>{html.escape(text)}</p>" for text in curve["readings"]]
        parts.append(_figure("data_curve.png", *pictures["data_curve.png"]))
    parts.append("</body></html>")
    return "\n".join(parts)


def _tensorboard(directory: Path, report: Mapping[str, Any], pictures: Mapping[str, tuple[str, bytes]]) -> None:
    """The report's scalars (open-loop KL by horizon, separations, coverage rates) and pictures as
    TensorBoard events."""
    import matplotlib.image
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(directory))
    try:
        for label, values in report["open_loop_kl"].items():
            for k, value in enumerate(values, 1):
                writer.add_scalar(f"open_loop_kl/{label}", value, k)
        for name, row in report["action_sensitivity"]["pairs"].items():
            for label, entry in row.items():
                writer.add_scalar(f"action_sensitivity/{label}/{name}", entry["separation"], 0)
        cover = report["coverage"]
        writer.add_scalar("coverage/threshold", cover["threshold"], 0)
        for name, totals in [("held_out", cover["held_out"]), *cover["others"].items()]:
            writer.add_scalar(f"coverage/{name}/over_rate", totals["over_rate"], 0)
        for name, (_, data) in pictures.items():
            image = matplotlib.image.imread(io.BytesIO(data), format="png")[..., :3]  # (H, W, 3) floats
            writer.add_image(name.removesuffix(".png"), image, 0, dataformats="HWC")
    finally:
        writer.close()


def write_report(
    out_dir: Path, report: Mapping[str, Any], strips: Mapping[str, Mapping[str, np.ndarray]] | None
) -> None:
    """Write the report directory whole (a directory already there is replaced)."""
    pictures = figures(report, strips)
    text = page(report, pictures)

    def write(tmp: Path) -> None:
        for name, (_, data) in pictures.items():
            (tmp / name).write_bytes(data)
        (tmp / REPORT_HTML_NAME).write_text(text, encoding="utf-8")
        (tmp / REPORT_JSON_NAME).write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _tensorboard(tmp / TENSORBOARD_DIR_NAME, report, pictures)

    atomic_write_directory(Path(out_dir), write)
