"""The settings ``demo`` and ``compare`` start from (CPU-sized; ``--quick``'s; ``compare``'s methods and sizes) and
what a source environment's plugin recommends: ``ExperimentDefaults``, checked against the configs they set.

Applying them beneath the flags given is the command line's (``cli/experiments.py``); running is ``experiment.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from latent_residual.actor_critic import ActorCriticConfig
from latent_residual.errors import ConfigError, RegistrationError, did_you_mean
from latent_residual.registry.lookup import demo_env, env_spec
from latent_residual.registry.specs import ExperimentDefaults
from latent_residual.workflow.adaptation.groups import MethodSettingGroups
from latent_residual.workflow.experiments.experiment import ExperimentConfig
from latent_residual.workflow.training.policy_training import PolicyTrainConfig
from latent_residual.workflow.training.pretraining import PretrainConfig

#: The config each field of ``ExperimentDefaults`` sets (``methods`` aside), and the fields the experiment sets itself.
EXPERIMENT_CONFIGS: dict[str, tuple[type, tuple[str, ...]]] = {
    "experiment": (ExperimentConfig, ()),
    "pretrain": (PretrainConfig, ("env_id",)),  # the experiment's source
    "policy": (PolicyTrainConfig, ("seed",)),  # each cell's own seed
    "actor_critic": (ActorCriticConfig, ()),
}

#: What fits a 2-core CPU: the backbone's registered ``cpu`` preset, short sequences, actor-critic at 128 units,
#: horizon 15 (the same as examples/pretrain_pendulum.py, which built the embedded default).
CPU_DEFAULTS = ExperimentDefaults(
    pretrain={
        "backbone_preset": "cpu",
        "env_steps": 40_000,
        "prefill": 1000,
        "expert_steps": 10_000,
        "train_ratio": 32.0,
        "batch_size": 32,
        "seq_len": 16,
        "imagination_starts": 256,
        "model_lr": 3e-4,
        "checkpoint_every": 2500,
    },
    policy={"steps": 1500, "starts": 256},
    actor_critic={"hidden": 128, "horizon": 15, "actor_lr": 3e-4, "critic_lr": 3e-4},
)
#: ``demo``: the CPU settings with the policy stage on two processes, since a lone cell otherwise leaves the second
#: core idle for most of the demo; two on any machine, so that the demo's figures do not depend on its cores. And
#: 1,200 updates instead of 1,500, so that the demo takes 4 minutes: 713.5 / 651.7 / 671.8 over seeds 0-2 (0.85 of
#: the simulation policy; 0.90 at 1,300; docs/results.md, "The README demo, stage by stage").
DEMO_DEFAULTS = CPU_DEFAULTS.merged(ExperimentDefaults(policy={"workers": 2, "steps": 1200}))
#: ``--quick``: every stage runs, on tiny data and few updates (a smoke run, not a result).
QUICK_DEFAULTS = ExperimentDefaults(
    experiment={"transitions": (3000,), "seeds": 1, "eval_episodes": 2},
    methods={"fit": {"steps": 60, "eval_every": 20}},
    policy={"steps": 20, "starts": 256},
)
#: ``compare``: the paper's comparison (zero-shot, ReDRAW, prior finetune, replacement dynamics) at CPU sizes.
COMPARE_DEFAULTS = CPU_DEFAULTS.merged(
    ExperimentDefaults(
        experiment={"methods": ("redraw", "finetune", "replacement"), "transitions": (10_000, 40_000), "seeds": 3}
    )
)


def _settable(config: type, fixed: Sequence[str]) -> list[str]:
    return [item.name for item in dataclasses.fields(config) if item.init and item.name not in fixed]


def _problem(path: tuple[str, ...], groups: MethodSettingGroups) -> str:
    """Why ``path`` names no setting, or ''."""
    if path[0] == "methods":
        group = groups.groups.get(path[1])
        if group is None:
            return f"but no registered method reads settings {path[1]!r}.{did_you_mean(path[1], groups.groups)}"
        names: Sequence[str] = group.fields
        config = group.config_class
    else:
        config, fixed = EXPERIMENT_CONFIGS[path[0]]
        names = _settable(config, fixed)
    if path[-1] not in names:
        return f"which is no field of {config.__name__} to set.{did_you_mean(path[-1], names)}"
    return ""


def check_defaults(
    defaults: ExperimentDefaults,
    groups: MethodSettingGroups,
    who: str,
    error: type[Exception] = ConfigError,
) -> None:
    """Raise ``error``, one line starting with ``who``, for the first setting of ``defaults`` that names no field."""
    for path in defaults.settings():
        problem = _problem(path, groups)
        if problem:
            raise error(f"{who} {'.'.join(path)}, {problem}")


def recommended_defaults(
    source: str, backbones: Sequence[str], groups: MethodSettingGroups, say: Callable[[str], Any]
) -> ExperimentDefaults:
    """What the source environment's plugin recommends (``recommended=``) for the run's backbones (the source's
    default one when none): with several, only what it recommends alike for all of them, the rest noted through
    ``say``. A setting that names no field is a ``RegistrationError`` naming the environment and the setting."""
    spec = env_spec(source) if source else demo_env()
    recommended = [spec.recommended_for(backbone) for backbone in backbones or (None,)]
    for defaults in recommended:
        check_defaults(
            defaults, groups, f"Environment {spec.id!r} (plugin {spec.plugin!r}) recommends", RegistrationError
        )
    settings = [defaults.settings() for defaults in recommended]
    shared = {path: value for path, value in settings[0].items() if all(other.get(path) == value for other in settings)}
    for path in sorted(set().union(*settings) - set(shared)):
        say(
            f"note: {spec.id} recommends {'.'.join(path)} per backbone; with several --backbones it is left at its "
            "default"
        )
    return ExperimentDefaults.from_settings(shared)
