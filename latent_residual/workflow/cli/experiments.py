"""``demo`` and ``compare``: every config of an experiment as flags, each registered method's settings included (their
groups: ``adaptation/groups.py``), over the defaults of ``experiments/defaults.py`` and beneath the flags given.

The experiment itself is ``experiments/experiment.py``; the pipeline's single steps are ``commands.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import click

from latent_residual.errors import ConfigError
from latent_residual.registry.specs import ExperimentDefaults
from latent_residual.workflow.adaptation.groups import MethodSettingGroups
from latent_residual.workflow.cli.common import PATH, check_output_directory
from latent_residual.workflow.cli.options import config_from_options, config_options, option_dest
from latent_residual.workflow.experiments import experiment
from latent_residual.workflow.experiments.defaults import (
    COMPARE_DEFAULTS,
    DEMO_DEFAULTS,
    EXPERIMENT_CONFIGS,
    QUICK_DEFAULTS,
    recommended_defaults,
)

#: The flag prefix of each config ``ExperimentDefaults`` names (a method's settings: the group's name and a dash).
CONFIG_PREFIXES = {"experiment": "", "pretrain": "pretrain-", "policy": "policy-", "actor_critic": "ac-"}


def _dest(path: tuple[str, ...]) -> str:
    """The parameter of the setting at ``path`` (as ``ExperimentDefaults.settings()`` names it)."""
    if path[0] == "methods":
        return option_dest(f"{path[1]}-", path[2])
    return option_dest(CONFIG_PREFIXES[path[0]], path[1])


def option_values(defaults: ExperimentDefaults) -> dict[str, Any]:
    """``defaults`` as parameter values of ``demo`` and ``compare``."""
    return {_dest(path): value for path, value in defaults.settings().items()}


def _method_option_sets(groups: MethodSettingGroups) -> list[tuple[type, str, tuple[str, ...], Any]]:
    """(config class, prefix, excluded fields, defaults) of each method setting group; a group with a flag that
    another config has too is left out (its methods then refuse to run from here, saying why)."""
    taken = {"out", "quick"} | {
        option_dest(CONFIG_PREFIXES[name], field)
        for name, (config, fixed) in EXPERIMENT_CONFIGS.items()
        for field in config.__dataclass_fields__
        if field not in fixed
    }
    sets = []
    for group in list(groups.groups.values()):
        dests = {option_dest(f"{group.name}-", field) for field in group.fields}
        if dests & taken:
            groups.drop(
                group.name, f"its settings {group.name!r} take flags other settings have: {sorted(dests & taken)}"
            )
            continue
        taken |= dests
        excluded = tuple(name for name in group.config_class.__dataclass_fields__ if name not in group.fields)
        sets.append((group.config_class, f"{group.name}-", excluded, group.default))
    return sets


def _experiment_options(groups: MethodSettingGroups) -> Callable:
    """Decorate a command with the flags of every config of an experiment, the methods' settings included."""
    sets = [
        (EXPERIMENT_CONFIGS["experiment"][0], "", (), None),
        *_method_option_sets(groups),
        *[
            (config, CONFIG_PREFIXES[name], fixed, None)
            for name, (config, fixed) in EXPERIMENT_CONFIGS.items()
            if name != "experiment"
        ],
    ]

    def decorate(command: Callable) -> Callable:
        for config, prefix, excluded, defaults in reversed(sets):
            command = config_options(config, prefix=prefix, exclude=excluded, defaults=defaults)(command)
        return command

    return decorate


def _apply(options: dict[str, Any], defaults: ExperimentDefaults, given: set[str], command: str) -> None:
    """Set ``defaults``' values in ``options``, except those of flags given on the command line."""
    for key, value in option_values(defaults).items():
        if key not in options:
            raise ConfigError(f"{command}: {key} is set by default but is no option of {command}.")
        if key not in given:
            options[key] = value


def _method_configs(methods: Sequence[str], groups: MethodSettingGroups, options: dict[str, Any]) -> dict[str, Any]:
    """Each method's config, from its groups' flags."""
    values = {
        group.name: config_from_options(group.config_class, options, prefix=f"{group.name}-", defaults=group.default)
        for group in groups.groups.values()
    }
    return {method: groups.config(method, values) for method in methods}


def _experiment_command(
    group: click.Group, name: str, help_text: str, defaults: ExperimentDefaults, *, recommended: tuple[str, ...]
) -> None:
    """Add the experiment command ``name``, starting from ``defaults`` and the settings the source's plugin
    recommends for the configs named in ``recommended`` (``"experiment"``, ``"methods"``, ...), beneath the flags."""
    groups = MethodSettingGroups()

    @group.command(name=name, help=help_text, context_settings={"default_map": option_values(defaults)})
    @click.option(
        "--out", type=PATH, default=Path("runs") / name, show_default=True, help="Run directory (re-run to resume)."
    )
    @click.option("--quick", is_flag=True, help="Tiny settings: a smoke run of every stage in about a minute.")
    @_experiment_options(groups)
    @click.pass_context
    def command(ctx: click.Context, out: Path, quick: bool, **options: Any) -> None:
        check_output_directory(out)
        given = {key for key in options if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE}
        if quick:  # flags given on the command line still win over --quick's settings
            _apply(options, QUICK_DEFAULTS, given, name)
        source_settings = recommended_defaults(options["source"], options["backbones"], groups, click.echo).settings()
        taken = {path: value for path, value in source_settings.items() if path[0] in recommended}
        _apply(options, ExperimentDefaults.from_settings(taken), given, name)
        config = config_from_options(experiment.ExperimentConfig, options).resolved()
        options["pretrain_env_id"] = config.source
        experiment.run_experiment(
            config,
            out,
            method_configs=_method_configs(config.all_methods, groups, options),
            pretrain_config=config_from_options(EXPERIMENT_CONFIGS["pretrain"][0], options, prefix="pretrain-"),
            policy_config=config_from_options(EXPERIMENT_CONFIGS["policy"][0], options, prefix="policy-"),
            ac_config=config_from_options(EXPERIMENT_CONFIGS["actor_critic"][0], options, prefix="ac-"),
            say=click.echo,
        )


def add_experiment_commands(group: click.Group) -> None:
    """Add ``compare`` and ``demo`` to ``group``."""
    _experiment_command(
        group,
        "compare",
        "Compare zero-shot, ReDRAW, prior finetuning and replacement dynamics on the same data and seeds, "
        "with the paper's settings at CPU sizes.",
        COMPARE_DEFAULTS,
        # How the target data is recorded is the environment's (a target without an expert names its behaviour);
        # the methods' and the policy's settings stay the paper's: on the Duckiebot the belief input lost.
        recommended=("experiment",),
    )
    # The demo takes everything the source's plugin recommends (for the pendulum, DRAW's belief as a residual input).
    _experiment_command(
        group,
        "demo",
        "The whole ReDRAW story on the registered demo source and its target on a CPU, with the settings "
        "the source's plugin recommends.",
        DEMO_DEFAULTS,
        recommended=(*EXPERIMENT_CONFIGS, "methods"),
    )
