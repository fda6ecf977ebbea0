"""``diagnose``: does the adapted model predict the held-out target data better than the base, does it respond
to actions, how big is the residual, and where does the data leave its coverage. Numbers, warnings and arrays.

The pictures and the HTML page are drawn in ``report_html.py``, the surprise score in ``coverage.py`` and the
data-sufficiency curve in ``data_curve.py``; this module computes and orchestrates.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from latent_residual import distributions
from latent_residual.adapters import ResidualWorldModel, fitted_independently, load_adapter
from latent_residual.contract import State, WorldModel
from latent_residual.errors import ConfigError, DatasetError
from latent_residual.observations import image_to_float
from latent_residual.progress import METRICS_CSV_NAME
from latent_residual.rollout import embed_sequences, imagine, observation_keys, observe, prev_actions
from latent_residual.serialization import read_json_object
from latent_residual.workflow.adaptation.base import (
    ADAPTER_DIR_NAME,
    FIT_LOG_DIR_NAME,
    RUN_FIT_INFO_NAME,
    RUN_FIT_LOG_DIR_NAME,
)
from latent_residual.workflow.data.datasets import Dataset, load_dataset
from latent_residual.workflow.deployment.loading import load_world_model
from latent_residual.workflow.reports import coverage
from latent_residual.workflow.reports.data_curve import DataCurveConfig
from latent_residual.workflow.reports.data_curve import data_curve as fit_data_curve
from latent_residual.workflow.reports.html import REPORT_JSON_NAME, write_report

#: The models a report compares, in this order.
MODELS = ("base", "adapted")


@dataclass
class DiagnoseConfig:
    """Settings of ``latent-residual diagnose``; flags map one to one."""

    horizon: int = field(
        default=15, metadata={"help": "Open-loop horizon H: steps imagined with the recorded actions."}
    )
    warmup: int = field(
        default=8, metadata={"help": "Steps filtered before each open-loop start (the model's context)."}
    )
    max_windows: int = field(
        default=256, metadata={"help": "Held-out windows (warmup + H steps each) evaluated at most."}
    )
    sensitivity_horizon: int = field(
        default=5, metadata={"help": "Imagined steps before the action-sensitivity check compares."}
    )
    sensitivity_action: float = field(
        default=0.6, metadata={"help": "Size of the constant commands +a and -a the check imagines."}
    )
    sensitivity_ratio: float = field(
        default=0.25,
        metadata={
            "help": "Warn when the adapted model's response to an action, on any observation key, is below this "
            "fraction of the base's."
        },
    )
    sensitivity_floor: float = field(
        default=0.02,
        metadata={"help": "Warn when a response is below this many data standard deviations, whatever the base does."},
    )
    quantile: float = field(
        default=coverage.DEFAULT_QUANTILE,
        metadata={"help": "Quantile of held-out surprise the alarm threshold sits at."},
    )
    consecutive: int = field(
        default=coverage.DEFAULT_CONSECUTIVE,
        metadata={"help": "Consecutive steps above the threshold before the alarm fires."},
    )
    strips: int = field(
        default=3, metadata={"help": "Held-out windows shown as decoded predictions beside the recordings."}
    )
    strip_samples: int = field(
        default=8, metadata={"help": "Imagined latent paths averaged into each shown prediction."}
    )
    holdout: float = field(
        default=0.1,
        metadata={
            "help": "When --data is the adapter's own fit data, diagnose its last fraction of episodes (the fit's "
            "held-out split)."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the imagined samples."})

    def __post_init__(self) -> None:
        for name in (
            "horizon",
            "warmup",
            "max_windows",
            "sensitivity_horizon",
            "consecutive",
            "strips",
            "strip_samples",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"DiagnoseConfig.{name} must be an integer >= 1, got {value!r}.")
        if not 0.0 < self.sensitivity_action <= 1.0:
            raise ConfigError(f"DiagnoseConfig.sensitivity_action must be in (0, 1], got {self.sensitivity_action!r}.")
        if not 0.0 < self.quantile < 1.0 or not 0.0 < self.holdout < 1.0:
            raise ConfigError("DiagnoseConfig.quantile and holdout must be in (0, 1).")

    @property
    def window(self) -> int:
        return self.warmup + self.horizon


# ----------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------


def held_out_episodes(
    dataset: Dataset, adapted: WorldModel | None, data_path: Path | None, holdout: float
) -> tuple[Dataset, str]:
    """The episodes to diagnose on: the fit's held-out tail when ``data_path`` is the adapter's own
    fit data (recorded in its data summary), else all of them; and a sentence saying which."""
    fitted_on = None
    if isinstance(adapted, ResidualWorldModel) and adapted.active_adapter is not None:
        fitted_on = adapted.data_summaries.get(adapted.active_adapter, {}).get("dataset")
    if data_path is not None and fitted_on and Path(fitted_on).resolve() == data_path.resolve():
        keep = max(1, int(round(len(dataset.episodes) * holdout)))
        if keep >= len(dataset.episodes):
            raise DatasetError(f"{data_path}: {len(dataset.episodes)} episodes are too few to hold out {holdout:.0%}.")
        subset = dataclasses.replace(dataset, episodes=dataset.episodes[-keep:])
        return (
            subset,
            f"the last {keep} of {len(dataset.episodes)} episodes of the adapter's own fit data (its held-out split)",
        )
    return dataset, f"all {len(dataset.episodes)} episodes of {data_path or 'the given data'} (not seen by the fit)"


def _windows(dataset: Dataset, config: DiagnoseConfig) -> dict[str, Tensor]:
    windows = dataset.sequences(config.window)
    windows.pop("reward", None)
    count = windows["is_first"].shape[0]
    if count > config.max_windows:  # evenly spread over the data, not just its first episodes
        index = torch.linspace(0, count - 1, config.max_windows).round().long()
        windows = {key: value[index] for key, value in windows.items()}
    return windows


def _scales(windows: Mapping[str, Tensor]) -> dict[str, float]:
    """Each observation key's standard deviation in the data (images on the decoder's [-0.5, 0.5] scale)."""
    scales = {}
    for key in observation_keys(windows):
        value = windows[key]
        value = image_to_float(value, torch.float32) if value.dtype == torch.uint8 else value.float()
        scales[key] = max(float(value.std()), 1e-6)
    return scales


# ----------------------------------------------------------------------------------------------
# Open-loop prediction
# ----------------------------------------------------------------------------------------------


def _filtered(model: WorldModel, windows: Mapping[str, Tensor]) -> dict[str, Any]:
    """Posterior-mode filtering of the windows (as the deployed policy filters)."""
    embed = embed_sequences(model, windows)
    with torch.no_grad():
        return observe(
            model, prev_actions(windows["action"].float()), windows["is_first"].bool(), embed=embed, sample=False
        )


def _state_at(filtered: Mapping[str, Any], t: int) -> State:
    return {key: value[:, t] for key, value in filtered["states"].items()}


def _replay(actions: Tensor) -> Any:
    """A policy for ``imagine`` that plays back (B, H, A) actions step by step."""
    steps = iter(actions.unbind(1))
    return lambda _features: next(steps)


def _imagine(model: WorldModel, start: State, actions: Tensor, seed: int) -> dict[str, Tensor]:
    generator = torch.Generator().manual_seed(seed)  # the same samples for every model and action sequence
    with torch.no_grad():
        return imagine(model, start, _replay(actions), actions.shape[1], generator=generator)


def open_loop(model: WorldModel, windows: Mapping[str, Tensor], config: DiagnoseConfig) -> dict[str, Any]:
    """KL(posterior of the recorded observation || prior after k imagined steps with the recorded actions),
    k = 1..H, averaged over windows; and the imagined features (W, H + 1, F) for decoding."""
    t0 = config.warmup - 1
    filtered = _filtered(model, windows)
    actions = windows["action"][:, t0 : t0 + config.horizon].float()
    dreamt = _imagine(model, _state_at(filtered, t0), actions, config.seed)
    post_log = distributions.log_probs(filtered["post_logits"][:, t0 + 1 :], model.posterior_unimix)
    prior_log = distributions.log_probs(dreamt["prior_logits"], model.prior_unimix)
    kl = distributions.kl(post_log, prior_log)  # (W, H)
    return {"kl": kl.mean(0).numpy(), "features": dreamt["features"], "filtered": filtered}


def decoded(model: WorldModel, features: Tensor) -> dict[str, np.ndarray] | None:
    """``model.decode`` as NumPy arrays, images on [-0.5, 0.5]; None when the backbone has no decoder."""
    try:
        with torch.no_grad():
            return {key: value.float().numpy() for key, value in model.decode(features).items()}
    except NotImplementedError:
        return None


def mean_prediction(
    model: WorldModel, windows: Mapping[str, Tensor], start: State, config: DiagnoseConfig
) -> dict[str, np.ndarray] | None:
    """The first ``strips`` windows' decoded open-loop predictions (strips, H, *shape), averaged over
    ``strip_samples`` imagined latent paths (one path alone is mostly sampling noise)."""
    count, t0, repeat = config.strips, config.warmup - 1, config.strip_samples
    starts = {key: value[:count].repeat_interleave(repeat, 0) for key, value in start.items()}
    actions = windows["action"][:count, t0 : t0 + config.horizon].float().repeat_interleave(repeat, 0)
    out = decoded(model, _imagine(model, starts, actions, config.seed)["features"][:, 1:])
    if out is None:
        return None
    return {key: value.reshape(-1, repeat, *value.shape[1:]).mean(1) for key, value in out.items()}


def recorded(windows: Mapping[str, Tensor]) -> dict[str, np.ndarray]:
    """The windows' observations on the decoder's scale (images [-0.5, 0.5], vectors as they are)."""
    return {
        key: (image_to_float(value, torch.float32) if value.dtype == torch.uint8 else value.float()).numpy()
        for key, value in ((key, windows[key]) for key in observation_keys(windows))
    }


# ----------------------------------------------------------------------------------------------
# Action sensitivity
# ----------------------------------------------------------------------------------------------


def _action_pairs(
    windows: Mapping[str, Tensor], action_size: int, config: DiagnoseConfig
) -> dict[str, tuple[Tensor, Tensor]]:
    """Opposite action sequences (W, h, A): +a / -a on each action dimension alone, and the recorded ones against
    their negation."""
    W, h, t0 = windows["action"].shape[0], config.sensitivity_horizon, config.warmup - 1
    pairs = {}
    for dim in range(action_size):
        plus = torch.zeros(W, h, action_size)
        plus[..., dim] = config.sensitivity_action
        pairs[f"action[{dim}] +{config.sensitivity_action:g} vs -{config.sensitivity_action:g}"] = (plus, -plus)
    recorded_actions = windows["action"][:, t0 : t0 + h].float()
    if recorded_actions.shape[1] == h:
        pairs["recorded vs negated"] = (recorded_actions, -recorded_actions)
    return pairs


def _outcome(model: WorldModel, start: State, actions: Tensor, seed: int) -> dict[str, np.ndarray]:
    """What the model predicts after the imagined steps: decoded observations, else the features."""
    features = _imagine(model, start, actions, seed)["features"][:, -1]
    out = decoded(model, features)
    return out if out is not None else {"features": features.float().numpy()}


def action_sensitivity(
    models: Mapping[str, WorldModel], windows: Mapping[str, Tensor], starts: Mapping[str, State], config: DiagnoseConfig
) -> dict[str, Any]:
    """How far each model's predictions separate under opposite actions, in data standard deviations.

    :returns: ``pairs``: per pair and model the mean separation (averaged over keys), per key too;
        ``warnings``: one sentence per action dimension the adapted model barely responds to, judged
        key by key (a model can move the image and still predict the same speed for opposite commands).
    """
    scales = _scales(windows)
    first = next(iter(models.values()))
    pairs, rows = _action_pairs(windows, first.action_size, config), {}
    for name, (plus, minus) in pairs.items():
        rows[name] = {}
        for label, model in models.items():
            a, b = _outcome(model, starts[label], plus, config.seed), _outcome(model, starts[label], minus, config.seed)
            if "features" in a:  # no decoder: features in units of their own spread over the starts
                spread = float(np.concatenate([a["features"], b["features"]]).std()) or 1.0
                per_key = {"features": float(np.abs(a["features"] - b["features"]).mean() / spread)}
            else:
                per_key = {key: float(np.abs(a[key] - b[key]).mean() / scales[key]) for key in a}
            rows[name][label] = {"separation": float(np.mean(list(per_key.values()))), "per_key": per_key}
    warnings = []
    if "adapted" in models:
        for name, row in rows.items():
            if not name.startswith("action["):
                continue
            adapted, base = row["adapted"]["per_key"], row["base"]["per_key"]
            blind = [
                key
                for key in adapted
                if adapted[key] < max(config.sensitivity_ratio * base[key], config.sensitivity_floor)
            ]
            if blind:
                detail = ", ".join(f"{key!r} by {adapted[key]:.3f} (base {base[key]:.3f})" for key in blind)
                warnings.append(
                    f"The adapted model barely responds to {name.split(' ')[0]}: after {config.sensitivity_horizon} "
                    f"imagined steps of {name} its predictions separate, in data standard deviations, {detail}. The "
                    "target data probably never shows what this action does (for example a driver that always moves "
                    "forward). Record data that varies it: manoeuvres, reversing, holding commands of both signs "
                    "for several steps, or more action noise held over time; then fit again."
                )
    return {"pairs": rows, "warnings": warnings, "horizon": config.sensitivity_horizon}


# ----------------------------------------------------------------------------------------------
# The residual and the fit
# ----------------------------------------------------------------------------------------------


def residual_size(
    adapted: WorldModel, windows: Mapping[str, Tensor], filtered: Mapping[str, Any]
) -> dict[str, float] | None:
    """RMS of the residual's logit offsets over the RMS of the frozen prior's logits (both centred per
    group, since softmax ignores a shift), on the held-out steps; None without a residual adapter."""
    if not isinstance(adapted, ResidualWorldModel) or adapted.active_adapter is None:
        return None
    T = windows["is_first"].shape[1]
    previous = {key: value[:, : T - 1].flatten(0, 1) for key, value in filtered["states"].items()}  # (W * (T - 1), ...)
    action = windows["action"][:, : T - 1].float().flatten(0, 1)
    no_reset = torch.zeros(action.shape[0], dtype=torch.bool)
    with torch.no_grad(), adapted.disable_adapters():
        logits, _ = adapted.dynamics(previous, action, no_reset)
    with torch.no_grad():
        offset = adapted.mean_correction(previous, action)

    def rms(value: Tensor) -> float:
        return float((value - value.mean(-1, keepdim=True)).pow(2).mean().sqrt())

    return {"offset_rms": rms(offset), "prior_rms": rms(logits), "ratio": rms(offset) / max(rms(logits), 1e-12)}


def fit_curves(adapter_dir: Path | None) -> dict[str, list[list[float]]] | None:
    """The fit's logged curves (metric -> [[step, value], ...]) from its metrics CSV, if it is there:
    inside the adapter directory as ``adapt`` leaves it, or beside it as an experiment run does."""
    if adapter_dir is None:
        return None
    adapter_dir = Path(adapter_dir)
    candidates = [adapter_dir / FIT_LOG_DIR_NAME / METRICS_CSV_NAME]
    if adapter_dir.name == ADAPTER_DIR_NAME and (adapter_dir.parent / RUN_FIT_INFO_NAME).is_file():
        candidates.append(adapter_dir.parent / RUN_FIT_LOG_DIR_NAME / METRICS_CSV_NAME)
    path = next((candidate for candidate in candidates if candidate.is_file()), None)
    if path is None:
        return None
    curves: dict[str, list[list[float]]] = {}
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            try:
                curves.setdefault(row["metric"], []).append([float(row["step"]), float(row["value"])])
            except (KeyError, TypeError, ValueError) as exc:
                raise DatasetError(f"{path}: a row {row} is not step,seconds,metric,value ({exc}).") from exc
    return curves


# ----------------------------------------------------------------------------------------------
# Coverage
# ----------------------------------------------------------------------------------------------


def coverage_check(
    model: WorldModel, held_out: Dataset, others: Mapping[str, Dataset], config: DiagnoseConfig
) -> dict[str, Any]:
    """Calibrate the surprise threshold on the first half of the held-out episodes, check it on the
    second half (its false-alarm rate) and on each other dataset (the episodes it flags); with a
    residual ensemble whose members were fitted independently, the same for their disagreement (under
    ``"disagreement"``)."""
    result = _calibrated_check(coverage.surprise, model, held_out, others, config)
    if fitted_independently(model):  # the residual members' disagreement, alarmed the same way
        result["disagreement"] = _calibrated_check(coverage.disagreement, model, held_out, others, config)
    return result


def _calibrated_check(
    score: Any, model: WorldModel, held_out: Dataset, others: Mapping[str, Dataset], config: DiagnoseConfig
) -> dict[str, Any]:
    """Calibrate ``score``'s threshold on the first half of the held-out episodes and check it on the rest and on
    ``others``."""
    episodes = held_out.episodes
    if len(episodes) < 2:
        raise DatasetError(
            "The coverage check needs at least 2 held-out episodes (half to calibrate, half to check); got "
            f"{len(episodes)}."
        )
    half = len(episodes) // 2
    scores = coverage.per_episode(score, model, episodes)
    threshold = coverage.calibrate_threshold(scores[:half], config.quantile)
    _, own = coverage.coverage(scores[half:], threshold, config.consecutive)
    result: dict[str, Any] = {
        "threshold": threshold,
        "quantile": config.quantile,
        "consecutive": config.consecutive,
        "calibration_episodes": half,
        "held_out": {**own, "episodes": len(episodes) - half},
        "scores": {"held_out": [score.tolist() for score in scores[half:][:3]]},
        "others": {},
    }
    for name, dataset in others.items():
        other_scores = coverage.per_episode(score, model, dataset.episodes)
        rows, totals = coverage.coverage(other_scores, threshold, config.consecutive)
        result["others"][name] = {
            **totals,
            "episodes": len(rows),
            "flagged_episodes": [dataclasses.asdict(row) for row in rows if row.flagged],
        }
        result["scores"][name] = [score.tolist() for score in other_scores[:3]]
    return result


# ----------------------------------------------------------------------------------------------
# The whole report
# ----------------------------------------------------------------------------------------------


def _reading(kl: Mapping[str, np.ndarray]) -> list[str]:
    """Warnings about open-loop prediction: horizons where the adapted model is not better than the base."""
    if "adapted" not in kl:
        return []
    worse = [k + 1 for k, (a, b) in enumerate(zip(kl["adapted"], kl["base"])) if not a < b]
    if not worse:
        return []
    return [
        f"The adapted model's open-loop KL is not below the base's at horizon(s) {worse}: the residual does not "
        "improve multi-step predictions there. Fit longer or on more varied data, or check that the data really "
        "comes from the target the adapter was fitted for."
    ]


def diagnose(
    base: WorldModel,
    data: Dataset,
    out_dir: str | Path,
    *,
    adapted: WorldModel | None = None,
    config: DiagnoseConfig | None = None,
    adapter_dir: str | Path | None = None,
    data_path: str | Path | None = None,
    check_data: Mapping[str, Dataset] | None = None,
    data_curve: Mapping[str, Any] | DataCurveConfig | None = None,
    curve_data: str | Path | None = None,
    say: Any = None,
) -> dict[str, Any]:
    """Compare ``base`` and ``adapted`` on held-out target ``data`` and write the report to ``out_dir``.

    ``out_dir`` gets ``report.html`` (self-contained: the pictures inlined as PNG data URIs), the
    same PNGs as files, ``report.json`` (every number and warning) and TensorBoard event files
    in ``tensorboard/``.

    :param adapted: The adapted model (a ``ResidualWorldModel``, or a finetuned checkpoint); None
        diagnoses the base alone.
    :param adapter_dir: Where the adapter was saved: its fit curves are read from ``logs/``.
    :param data_path: Where ``data`` was loaded from: when it is the adapter's own fit data, only
        the held-out tail of its episodes is used.
    :param check_data: Other datasets (name -> dataset) whose episodes the coverage alarm checks.
    :param data_curve: A data-sufficiency result from :func:`data_curve.data_curve` to include, or the
        :class:`DataCurveConfig` to fit one with, first: on ``curve_data`` (default: the adapter's own fit data, else
        ``data_path``), scored on the episodes diagnosed here (fitting on those very data, it stops before them).
    :returns: The report as written to ``report.json``.
    """
    say = say or (lambda _text: None)
    config = config or DiagnoseConfig()
    started = time.monotonic()
    out = Path(out_dir)
    held_out, source = held_out_episodes(data, adapted, Path(data_path) if data_path else None, config.holdout)
    if isinstance(data_curve, DataCurveConfig):
        data_curve = _fitted_curve(base, adapted, data, data_path, held_out, data_curve, curve_data, say)
    windows = _windows(held_out, config)
    models = {"base": base} if adapted is None else {"base": base, "adapted": adapted}
    say(f"diagnosing on {windows['is_first'].shape[0]} windows of {config.window} steps from {source}")
    runs, kl, predictions, sensitivity = _predictions(models, windows, config, say)
    say("coverage")
    covered = coverage_check(models.get("adapted", base), held_out, dict(check_data or {}), config)
    report: dict[str, Any] = {
        "data": {"source": source, "windows": int(windows["is_first"].shape[0]), "window": config.window},
        "config": dataclasses.asdict(config),
        "open_loop_kl": {label: value.tolist() for label, value in kl.items()},
        "action_sensitivity": sensitivity,
        "residual_size": residual_size(adapted, windows, runs["adapted"]["filtered"]) if adapted is not None else None,
        "fit_curves": fit_curves(Path(adapter_dir) if adapter_dir else None),
        "coverage": covered,
        "decoder": predictions["base"] is not None,
        "data_curve": dict(data_curve) if data_curve else None,
    }
    report["warnings"] = _reading(kl) + sensitivity["warnings"] + (data_curve or {}).get("warnings", [])
    _check_finite(report)
    report["seconds"] = time.monotonic() - started
    write_report(out, report, _strips(windows, predictions, config))
    return report


def _strips(windows: dict[str, Tensor], predictions: dict[str, Any], config: DiagnoseConfig) -> dict[str, Any] | None:
    """The report's picture strips: recorded observations beside each model's predictions (none without a decoder)."""
    if predictions["base"] is None:
        return None
    return {
        "recorded": {key: value[: config.strips, config.warmup :] for key, value in recorded(windows).items()},
        **{label: pred for label, pred in predictions.items() if pred},
    }


def _predictions(
    models: dict[str, WorldModel], windows: dict[str, Tensor], config: DiagnoseConfig, say: Any
) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Any], dict[str, Any]]:
    """Each model's open-loop run and KL, its mean decoded prediction, and their action sensitivity."""
    for model in models.values():
        model.eval()
    runs = {label: open_loop(model, windows, config) for label, model in models.items()}
    kl = {label: run["kl"] for label, run in runs.items()}
    starts = {label: _state_at(run["filtered"], config.warmup - 1) for label, run in runs.items()}
    predictions = {label: mean_prediction(model, windows, starts[label], config) for label, model in models.items()}
    say("action sensitivity")
    return runs, kl, predictions, action_sensitivity(models, windows, starts, config)


def _fitted_curve(
    base: WorldModel,
    adapted: WorldModel | None,
    data: Dataset,
    data_path: str | Path | None,
    held_out: Dataset,
    config: DataCurveConfig,
    curve_data: str | Path | None,
    say: Any,
) -> dict[str, Any]:
    """The data curve of :func:`diagnose` (see its ``data_curve``), with the adapter's residual settings."""
    residual = isinstance(adapted, ResidualWorldModel) and adapted.active_adapter is not None
    summary = adapted.data_summaries.get(adapted.active_adapter, {}) if residual else {}
    curve_data = Path(curve_data or summary.get("dataset") or data_path)
    # Fitting on the diagnosed data itself: stop before its held-out tail.
    same = data_path is not None and curve_data.resolve() == Path(data_path).resolve()
    limit = data.transitions - held_out.transitions if same else None
    return fit_data_curve(
        base,
        curve_data,
        held_out.episodes,
        config,
        residual=adapted.adapter_configs[adapted.active_adapter] if residual else None,
        limit=limit or None,
        say=say,
    )


def diagnose_saved(
    world_model: str | Path,
    data: str | Path,
    out_dir: str | Path,
    *,
    adapter: str | Path | None = None,
    check_data: tuple[str | Path, ...] = (),
    config: DiagnoseConfig | None = None,
    data_curve: DataCurveConfig | None = None,
    curve_data: str | Path | None = None,
    say: Any = None,
) -> dict[str, Any]:
    """:func:`diagnose` on files: a world-model checkpoint, its adapter (or none), held-out target data, and the
    datasets the coverage alarm checks (named after their directories)."""
    base = load_world_model(world_model)
    adapted = load_adapter(base, adapter, trainable=False) if adapter is not None else None
    return diagnose(
        base,
        load_dataset(data),
        out_dir,
        adapted=adapted,
        config=config,
        adapter_dir=adapter,
        data_path=data,
        check_data={Path(path).name: load_dataset(path) for path in check_data},
        data_curve=data_curve,
        curve_data=curve_data,
        say=say,
    )


def _check_finite(value: Any, where: str = "report") -> None:
    """Refuse a report with a non-finite number: it would hide a broken model behind a plot."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"diagnose: {where} is {value}; the model or the data produce non-finite predictions.")
    if isinstance(value, Mapping):
        for key, item in value.items():
            _check_finite(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            _check_finite(item, f"{where}[{index}]")


def read_report(out_dir: str | Path) -> dict[str, Any]:
    """The numbers of a written report (``report.json``)."""
    return read_json_object(Path(out_dir) / REPORT_JSON_NAME, error=DatasetError, hint="run diagnose again")
