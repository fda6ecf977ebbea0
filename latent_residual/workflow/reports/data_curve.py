"""Is the target data enough? Short fits of registered adaptation methods on nested subsets of a dataset, each
scored on the same held-out episodes, with a plain-language reading (still improving, flat, overfitting).

The methods are the registry's (``adaptation/``); the score is the one-step KL of ``coverage.surprise``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_residual.contract import WorldModel
from latent_residual.errors import ConfigError, FitError
from latent_residual.fitting import FitConfig
from latent_residual.registry.lookup import make_method, method_config
from latent_residual.residual import ResidualConfig
from latent_residual.workflow.data.datasets import load_dataset, reward_free_sequences
from latent_residual.workflow.reports import coverage

#: A change smaller than this fraction (or than the spread between seeds) reads as flat.
FLAT = 0.05
#: A fit whose held-out KL over its last third is this much above its middle third's overfitted while
#: training (thirds, not single evaluations: at the paper's learning rate the held-out KL is noisy).
OVERFIT = 0.10


@dataclass
class DataCurveConfig:
    """Settings of ``diagnose --data-curve``; flags map one to one (prefix ``curve-``)."""

    sizes: tuple[int, ...] = field(
        default=(1000, 2500, 5000, 10_000, 20_000, 40_000),
        metadata={"help": "Nested subset sizes in transitions (capped by what the dataset holds)."},
    )
    seeds: int = field(default=2, metadata={"help": "Fits per method and size."})
    methods: tuple[str, ...] = field(
        default=("redraw", "finetune"), metadata={"help": "Registered adaptation methods to fit."}
    )
    steps: int = field(default=300, metadata={"help": "Optimiser steps per fit (short fits)."})
    # Short fits at the residual's constant 1e-2 end wherever the noisy held-out KL happens to be; a
    # decayed rate makes the points of the curve comparable.
    lr_final_scale: float = field(
        default=0.1, metadata={"help": "Cosine-decay each fit's learning rate to this fraction."}
    )
    sequence_length: int = field(default=32, metadata={"help": "Steps per training sequence."})

    def __post_init__(self) -> None:
        if not self.sizes or min(self.sizes) < 1:
            raise ConfigError(f"DataCurveConfig.sizes must be positive transition counts, got {self.sizes!r}.")
        if self.seeds < 1 or self.steps < 1:
            raise ConfigError("DataCurveConfig: seeds and steps must be >= 1.")
        if not self.methods:
            raise ConfigError("DataCurveConfig.methods is empty; name at least one registered method, e.g. redraw.")


def held_out_kl(model: WorldModel, episodes: Sequence[dict[str, np.ndarray]]) -> float:
    """Mean one-step KL(posterior || prior) over the non-start steps of whole episodes."""
    return float(np.mean(np.concatenate([score[1:] for score in coverage.episode_surprise(model, episodes)])))


def overfitted(held_out: Sequence[float]) -> bool:
    """Whether a fit's held-out KL curve (one value per evaluation) rose over its last third."""
    third = len(held_out) // 3
    if third < 1:
        return False
    return float(np.mean(held_out[-third:])) > (1 + OVERFIT) * float(np.mean(held_out[third:-third]))


def reading(method: str, rows: list[dict[str, Any]], base_kl: float) -> str:
    """One sentence: how the largest size compares with the best smaller one, beyond the seeds' spread."""
    means = [float(np.mean(row["held_out_kl"])) for row in rows]
    overfit = [row["transitions"] for row in rows if any(overfitted(curve) for curve in row["curves"])]
    note = (
        f" Its fits overfitted while training at {overfit} transitions (the held-out KL rose late in the fit)."
        if overfit
        else ""
    )
    if len(rows) < 2:
        return (
            f"{method}: one size only ({rows[0]['transitions']} transitions), held-out KL {means[0]:.3g}; no trend to "
            f"read.{note}"
        )
    best = int(np.argmin(means[:-1]))
    spread = max(np.ptp(rows[-1]["held_out_kl"]), np.ptp(rows[best]["held_out_kl"]), FLAT * means[best])
    change = (means[-1] - means[best]) / max(means[best], 1e-12)
    span = (
        f"{means[best]:.3g} at {rows[best]['transitions']} -> {means[-1]:.3g} at {rows[-1]['transitions']} transitions"
    )
    if means[-1] >= base_kl:
        verdict = (
            f"no better than the base model ({means[-1]:.3g} against {base_kl:.3g}): the method does not fit this data."
        )
    elif means[-1] < means[best] - spread:
        verdict = f"still improving ({span}, {change:+.0%}): more data of this kind should help."
    elif means[-1] <= means[best] + spread:
        verdict = (
            f"flat ({span}, within the seeds' spread): more of the same data will not help much; record different "
            "behaviour (other states, other actions) if the model is still not good enough."
        )
    else:
        verdict = (
            f"worse with more data ({span}, {change:+.0%}): overfitting, or data that differs from the held-out "
            "episodes; check the added episodes and fit with early stopping."
        )
    return f"{method}: {verdict}{note}"


def short_fit_config(config: Any, curve: DataCurveConfig, residual: ResidualConfig | None = None) -> Any:
    """A method's config for the curve's short fits: every fit in it (a ``FitConfig``, nested or the config itself)
    cut to ``curve.steps`` steps with a decayed rate, and every residual in it ``residual`` when given."""
    if isinstance(config, FitConfig):
        return dataclasses.replace(
            config, steps=curve.steps, eval_every=max(1, curve.steps // 10), lr_final_scale=curve.lr_final_scale
        )
    if isinstance(config, ResidualConfig):
        return residual or config
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        fields = [item.name for item in dataclasses.fields(config) if item.init]
        return dataclasses.replace(
            config, **{name: short_fit_config(getattr(config, name), curve, residual) for name in fields}
        )
    return config


def _short_fit(
    method: Any,
    base: WorldModel,
    sequences: dict[str, torch.Tensor],
    held_out: Sequence[dict[str, np.ndarray]],
    seed: int,
    config: Any,
    log_dir: Path,
    base_kl: float,
) -> tuple[float, list[float] | None]:
    """One fit's held-out KL on ``held_out`` and its curve on its own split; a fit that never beat the base on its
    own held-out split (``FitError``) scores as the base, with no curve."""
    try:
        model, result = method.adapt(base, sequences, seed=seed, config=config, log_dir=log_dir, quiet=True)
    except FitError:
        return base_kl, None
    model.eval()
    return held_out_kl(model, held_out), [row["held_out_kl"] for row in result.history]


def data_curve(
    base: WorldModel,
    data: str | Path,
    held_out: Sequence[dict[str, np.ndarray]],
    config: DataCurveConfig | None = None,
    *,
    residual: ResidualConfig | None = None,
    limit: int | None = None,
    say: Any = None,
) -> dict[str, Any]:
    """Fit each method on the first n transitions of ``data`` (n from ``config.sizes``) and score it on ``held_out``.

    :param held_out: Episodes none of the fits see (``Dataset.episodes``).
    :param residual: The residual's settings for residual methods (the adapter's own, to match it).
    :param limit: Use at most the first ``limit`` transitions (when ``held_out`` is the tail of ``data``).
    A fit that never beats the base (``FitError``) scores as the base.

    :returns: ``methods`` (name -> rows of ``transitions``, ``held_out_kl`` per seed, each fit's
        held-out KL ``curves`` on its own split),
        ``base_kl``, ``readings`` (one sentence per method) and ``warnings`` (the worrying readings).
    """
    config = config or DataCurveConfig()
    say = say or (lambda _text: None)
    total = min(load_dataset(data).transitions, limit or np.inf)
    sizes = sorted({int(min(size, total)) for size in config.sizes})
    configs = {name: short_fit_config(method_config(name), config, residual) for name in config.methods}
    base_kl = held_out_kl(base, held_out)
    methods: dict[str, list[dict[str, Any]]] = {name: [] for name in config.methods}
    methods_made = {name: make_method(name) for name in config.methods}
    with tempfile.TemporaryDirectory(prefix="data-curve-") as scratch:
        for size in sizes:
            sequences = reward_free_sequences(data, config.sequence_length, max_transitions=size)
            for name, method in methods_made.items():
                kls, curves = [], []
                for seed in range(config.seeds):
                    say(f"data curve: {name} on {size} transitions, seed {seed}")
                    log_dir = Path(scratch) / f"{name}-{size}-{seed}"
                    kl, curve = _short_fit(method, base, sequences, held_out, seed, configs[name], log_dir, base_kl)
                    kls.append(kl)
                    curves.extend([curve] if curve is not None else [])
                methods[name].append({"transitions": size, "held_out_kl": kls, "curves": curves})
    readings = [reading(name, rows, base_kl) for name, rows in methods.items()]
    worrying = ("no better", "worse with more", "overfitted")
    return {
        "methods": methods,
        "base_kl": base_kl,
        "readings": readings,
        "warnings": [text for text in readings if any(word in text for word in worrying)],
        "config": dataclasses.asdict(config),
        "torch_threads": torch.get_num_threads(),
    }
