"""The ReDRAW experiment end to end, as resumable stages: pretrain, collect, adapt, train, evaluate, export.

Each stage's building block lives in its own module; this one only orders them, keeps their
outputs on disk (a re-run skips what is done) and tabulates the comparison.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from latent_residual.adapters import attach_residual
from latent_residual.behavior import ActorCriticConfig
from latent_residual.checkpoints import load_world_model
from latent_residual.config import config_to_dict
from latent_residual.contract import WorldModel
from latent_residual.errors import ConfigError
from latent_residual.evaluation import EvalResult, evaluate
from latent_residual.files import write_text
from latent_residual.fitting import FitConfig, finetune_dynamics, fit_residual
from latent_residual.policy import Policy
from latent_residual.residual import ResidualConfig
from latent_residual.training import (
    ACTOR_CRITIC_NAME,
    PolicyTrainConfig,
    PretrainConfig,
    load_actor_critic,
    pretrain,
    save_actor_critic,
    train_policy,
)

METHODS = ("redraw", "finetune", "replacement")
BEHAVIOURS = ("expert", "random", "sim-policy")
RESULTS_NAME = "results.json"


@dataclass
class ExperimentConfig:
    """One sim-to-target comparison. Flags of ``latent-residual compare`` and ``demo`` map onto it."""

    source: str = field(default="dmc/pendulum-swingup-v0", metadata={"help": "Simulation environment id."})
    target: str = field(default="dmc/pendulum-swingup-reversed-v0", metadata={"help": "Target ('real') environment id."})
    pretrained: str = field(
        default="",
        metadata={"help": "Pretraining directory to start from; empty: the embedded default for the source, else pretrain."},
    )
    transitions: tuple[int, ...] = field(
        default=(40_000,), metadata={"help": "Target-data sizes to compare (reward-free transitions)."}
    )
    behaviour: str = field(
        default="expert",
        metadata={
            "help": "Who collects target data: expert (the target's scripted expert, as the paper's expert "
            "rollouts), random, or sim-policy (the simulation policy)."
        },
    )
    noise: float = field(default=0.3, metadata={"help": "Gaussian action noise of the collecting behaviour."})
    methods: tuple[str, ...] = field(default=("redraw",), metadata={"help": "Methods besides zero-shot: redraw, finetune, replacement."})
    seeds: int = field(default=1, metadata={"help": "Seeds per method (fit and policy training)."})
    eval_episodes: int = field(default=10, metadata={"help": "Evaluation episodes per policy."})
    sequence_length: int = field(default=32, metadata={"help": "Steps per training sequence cut from the target data."})
    episode_steps: int = field(
        default=0, metadata={"help": "Cap on episode length in collection and evaluation; 0 keeps the environment's."}
    )
    export: bool = field(default=True, metadata={"help": "Export the first ReDRAW policy to ONNX and evaluate it there."})

    def __post_init__(self) -> None:
        bad = [m for m in self.methods if m not in METHODS]
        if bad:
            raise ConfigError(f"ExperimentConfig.methods: unknown {bad}; choose from {', '.join(METHODS)}.")
        if self.behaviour not in BEHAVIOURS:
            raise ConfigError(f"ExperimentConfig.behaviour must be one of {', '.join(BEHAVIOURS)}; got {self.behaviour!r}.")
        if not self.transitions or min(self.transitions) < 1:
            raise ConfigError(f"ExperimentConfig.transitions must be positive sizes, got {self.transitions!r}.")
        if self.seeds < 1 or self.eval_episodes < 1:
            raise ConfigError("ExperimentConfig: seeds and eval_episodes must be >= 1.")


def embedded_pretrained(env_id: str) -> Path | None:
    """The pretraining directory shipped for ``env_id``, if the plugin ships one."""
    from latent_residual.registry import env_spec

    spec = env_spec(env_id)
    module = spec.entry_point.split(":")[0] if isinstance(spec.entry_point, str) else spec.entry_point.__module__
    import importlib

    package = Path(importlib.import_module(module.rsplit(".", 1)[0]).__file__).parent
    candidate = package / "pretrained" / spec.name
    return candidate if (candidate / "world_model").is_dir() else None


class _Results:
    """results.json, rewritten atomically after every finished stage so a re-run skips it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def __contains__(self, key: str) -> bool:
        return key in self.data

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        write_text(self.path, json.dumps(self.data, indent=2, sort_keys=True) + "\n")


class PolicyBehaviour:
    """A trained policy as a data-collecting behaviour (``collect`` adds the noise)."""

    description = "simulation policy"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return self.policy.act(obs)


# Settings a re-run may change: each only adds or skips runs that are kept under their own names.
_EXTENDABLE = {"experiment": ("seeds", "methods", "export")}


def _check_settings(results: _Results, settings: dict[str, dict[str, Any]]) -> None:
    """Refuse to resume a run whose kept stages were made with other settings, then record these."""
    if "settings" in results:
        kept = results["settings"]
        changed = [
            f"{group}.{key} ({kept.get(group, {}).get(key)!r} -> {value!r})"
            for group, values in settings.items()
            for key, value in values.items()
            if key not in _EXTENDABLE.get(group, ()) and kept.get(group, {}).get(key) != value
        ]
        if changed:
            raise ConfigError(
                f"{results.path} was written with other settings: {', '.join(changed)}. Its finished stages "
                "would be reused as they are; pass a new --out directory (or delete this one) to run with these."
            )
    results.put("settings", settings)


def _evaluation(result: EvalResult, **extra: Any) -> dict[str, Any]:
    return {**result.to_dict(), **extra}


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    pretrain_config: PretrainConfig | None = None,
    residual_config: ResidualConfig | None = None,
    fit_config: FitConfig | None = None,
    finetune_config: FitConfig | None = None,
    policy_config: PolicyTrainConfig | None = None,
    ac_config: ActorCriticConfig | None = None,
    quiet: bool = False,
    say=print,
) -> dict[str, Any]:
    """Run (or resume) every stage and return the results dict (also in ``out_dir/results.json``)."""
    from latent_residual.datasets import collect, load_dataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = _Results(out / RESULTS_NAME)
    residual_config = residual_config or ResidualConfig()
    fit_config = fit_config or FitConfig()
    finetune_config = finetune_config or FitConfig(lr=1e-4)
    policy_config = policy_config or PolicyTrainConfig()
    started = time.monotonic()

    # 1. The simulation-pretrained world model and policy.
    if config.pretrained:
        pre = Path(config.pretrained)
    elif (embedded := embedded_pretrained(config.source)) is not None:
        pre = embedded
    else:
        pre = out / "pretrain"
        say(f"[1/6] pretraining in {config.source} -> {pre}")
        pretrain(pretrain_config or PretrainConfig(env_id=config.source), pre, ac_config=ac_config, quiet=quiet)
    say(f"[1/6] simulation-pretrained model and policy: {pre}")
    base = load_world_model(pre / "world_model")
    sim_actor_critic = load_actor_critic(pre / ACTOR_CRITIC_NAME)
    sim_policy = Policy(base, sim_actor_critic.actor)
    ac_config = ac_config or sim_actor_critic.config
    _check_settings(
        results,
        {
            "experiment": config_to_dict(config),
            "residual": config_to_dict(residual_config),
            "fit": config_to_dict(fit_config),
            "finetune": config_to_dict(finetune_config),
            "policy": config_to_dict(policy_config),
            "actor_critic": config_to_dict(ac_config),
        },
    )
    env_kwargs = {"max_episode_steps": config.episode_steps} if config.episode_steps else {}

    def evaluated(key: str, policy: Any, env_id: str, seed: int, **extra: Any) -> dict[str, Any]:
        if key not in results:
            result = evaluate(policy, env_id, episodes=config.eval_episodes, seed=seed, env_kwargs=env_kwargs)
            results.put(key, _evaluation(result, **extra))
        row = results[key]
        say(f"      {key:<32} return {row['return_mean']:8.1f} ± {row['return_std']:.1f}")
        return row

    # 2. The references: the simulation policy in simulation and, zero-shot, in the target.
    say("[2/6] evaluating the simulation policy in simulation and zero-shot in the target")
    eval_seed = 10_000
    evaluated("sim-policy@source", sim_policy, config.source, eval_seed)
    evaluated("zero-shot", sim_policy, config.target, eval_seed)

    # 3. Reward-free target data.
    data_dir = out / "target_data"
    behaviour: Any = PolicyBehaviour(sim_policy) if config.behaviour == "sim-policy" else config.behaviour
    say(f"[3/6] collecting {max(config.transitions)} reward-free target transitions ({config.behaviour}) -> {data_dir}")
    collect(
        config.target,
        behaviour,
        data_dir,
        transitions=max(config.transitions),
        seed=20_000,
        env_kwargs=env_kwargs,
        noise=config.noise,
        quiet=quiet,
        provenance={"purpose": "target adaptation data", "reward_used": False},
    )

    # 4-5. Adapt and train a policy in imagination, per method, data size and seed.
    say("[4/6] adapting the world model and training policies in imagination")
    first_redraw: tuple[WorldModel, Path] | None = None
    for size in sorted(config.transitions):
        sequences = load_dataset(data_dir, max_transitions=size).sequences(config.sequence_length)
        sequences.pop("reward", None)  # ReDRAW never uses target rewards
        for method in config.methods:
            for seed in range(config.seeds):
                key = f"{method}@{size}/seed{seed}"
                run_dir = out / "runs" / f"{method}-{size}-seed{seed}"
                policy_path = run_dir / ACTOR_CRITIC_NAME
                model, fit_info = _adapted_model(
                    method, base, sequences, run_dir, seed, residual_config, fit_config, finetune_config, quiet
                )
                if not policy_path.exists():
                    torch.manual_seed(seed)
                    actor_critic = train_policy(
                        model,
                        sequences,
                        PolicyTrainConfig(steps=policy_config.steps, starts=policy_config.starts, seed=seed),
                        ac_config=ac_config,
                        log_dir=run_dir / "policy_logs",
                        quiet=quiet,
                    )
                    save_actor_critic(actor_critic, policy_path, extra={"method": method, "transitions": size})
                policy = Policy(base, load_actor_critic(policy_path).actor)
                evaluated(key, policy, config.target, eval_seed, fit=fit_info)
                if method == "redraw" and first_redraw is None:
                    first_redraw = (policy, run_dir)

    # 6. The deployable artefact: ONNX, checked against torch and run in the target.
    if config.export and first_redraw is not None:
        from latent_residual.export import example_observations, export_policy, verify_export
        from latent_residual_integrations.onnxruntime_policy import OnnxPolicy

        policy, run_dir = first_redraw
        onnx_dir = out / "onnx"
        say(f"[6/6] exporting the ReDRAW policy to ONNX -> {onnx_dir}")
        if not (onnx_dir / "policy.onnx").exists():
            export_policy(policy, onnx_dir, env_id=config.target)
        if "onnx" not in results:
            difference = verify_export(onnx_dir, policy, example_observations(base.observation_space, 64))
            results.put("onnx_max_abs_diff", difference)
        evaluated("onnx", OnnxPolicy(onnx_dir), config.target, eval_seed)
    results.put("seconds", results.data.get("seconds", 0.0) + time.monotonic() - started)
    table = comparison_table(results.data)
    write_text(out / "results.md", table + "\n")
    say(table)
    return results.data


def _adapted_model(
    method: str,
    base: WorldModel,
    sequences: dict[str, torch.Tensor],
    run_dir: Path,
    seed: int,
    residual_config: ResidualConfig,
    fit_config: FitConfig,
    finetune_config: FitConfig,
    quiet: bool,
) -> tuple[WorldModel, dict[str, Any]]:
    """The corrected world model of one method, fitted once and reloaded on a re-run."""
    from latent_residual.adapters import load_adapter
    from latent_residual.checkpoints import save_world_model

    info_path = run_dir / "fit.json"
    seeded = FitConfig(**{**config_to_dict(fit_config if method != "finetune" else finetune_config), "seed": seed})
    if method == "finetune":
        if info_path.exists():
            return load_world_model(run_dir / "world_model"), json.loads(info_path.read_text())
        torch.manual_seed(seed)
        tuned, result = finetune_dynamics(base, sequences, seeded, log_dir=run_dir / "fit_logs", quiet=quiet)
        save_world_model(tuned, run_dir / "world_model", extra={"method": "finetune"})
    else:
        if info_path.exists():
            return load_adapter(base, run_dir / "adapter", trainable=False), json.loads(info_path.read_text())
        mode = "replacement" if method == "replacement" else "residual"
        torch.manual_seed(seed)
        adapted = attach_residual(base, ResidualConfig(**{**config_to_dict(residual_config), "mode": mode}))
        result = fit_residual(adapted, sequences, seeded, log_dir=run_dir / "fit_logs", quiet=quiet)
        adapted.save_pretrained(run_dir / "adapter")
        tuned = adapted
    info = {
        "held_out_kl_base": result.held_out_kl_base,
        "held_out_kl_best": result.held_out_kl_best,
        "best_step": result.best_step,
        "steps": result.steps,
        "seconds": result.seconds,
    }
    write_text(info_path, json.dumps(info, indent=2) + "\n")
    return tuned, info


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
