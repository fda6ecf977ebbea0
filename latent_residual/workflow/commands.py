"""The pipeline's subcommands of ``latent-residual``: pretrain, collect, adapt, finetune, train-policy,
evaluate, export, compare and demo. Each maps its flags one to one onto the config dataclasses.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from latent_residual.workflow.options import config_from_options, config_options

_PATH = click.Path(path_type=Path)

# What fits a 2-core CPU: the backbone's registered 'cpu' preset, short sequences, actor-critic at
# 128 units, horizon 15 (the same as examples/pretrain_pendulum.py, which built the embedded default).
CPU_DEFAULTS: dict[str, Any] = {
    "pretrain_backbone_preset": "cpu",
    "pretrain_env_steps": 40_000,
    "pretrain_prefill": 1000,
    "pretrain_expert_steps": 10_000,
    "pretrain_train_ratio": 32.0,
    "pretrain_batch_size": 32,
    "pretrain_seq_len": 16,
    "pretrain_imagination_starts": 256,
    "pretrain_model_lr": 3e-4,
    "pretrain_checkpoint_every": 2500,
    "policy_steps": 1500,
    "policy_starts": 256,
    "ac_hidden": 128,
    "ac_horizon": 15,
    "ac_actor_lr": 3e-4,
    "ac_critic_lr": 3e-4,
}

# --quick: every stage runs, on tiny data and few updates (a smoke run, not a result).
QUICK_OVERRIDES: dict[str, Any] = {
    "transitions": (3000,),
    "seeds": 1,
    "eval_episodes": 2,
    "fit_steps": 60,
    "fit_eval_every": 20,
    "policy_steps": 20,
    "policy_starts": 256,
}


def _sequences(data: Path, max_transitions: int | None, length: int) -> dict[str, Any]:
    from latent_residual.workflow.datasets import load_dataset

    sequences = load_dataset(data, max_transitions=max_transitions).sequences(length)
    sequences.pop("reward", None)
    return sequences


def _saved_policy_options(*, required: bool):
    """--world-model and --policy: a policy saved as a checkpoint plus an actor-critic file."""

    def decorate(command):
        command = click.option(
            "--policy", type=_PATH, required=required, help="actor_critic.safetensors of the saved policy."
        )(command)
        return click.option(
            "--world-model", type=_PATH, required=required, help="World-model checkpoint of the saved policy (its encoder)."
        )(command)

    return decorate


def _data_options(command):
    command = click.option("--sequence-length", default=32, show_default=True, help="Steps per training sequence.")(command)
    command = click.option("--max-transitions", type=int, default=None, help="Use at most this many transitions.")(command)
    return click.option("--data", type=_PATH, required=True, help="Target dataset directory (from `collect`).")(command)


def _pretrain_configs(options: dict[str, Any]):
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.workflow.pretraining import PretrainConfig

    return config_from_options(PretrainConfig, options), config_from_options(ActorCriticConfig, options, prefix="ac-")


# -- commands ----------------------------------------------------------------------------


def _pretrain_command(group: click.Group) -> None:
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.workflow.pretraining import PretrainConfig

    @group.command(name="pretrain")
    @click.option("--out", type=_PATH, required=True, help="Run directory (re-run to resume).")
    @config_options(PretrainConfig)
    @config_options(ActorCriticConfig, prefix="ac-")
    def pretrain_command(out: Path, **options: Any) -> None:
        """Pretrain a world model and a simulation policy (resumable)."""
        from latent_residual.workflow.pretraining import pretrain

        config, ac_config = _pretrain_configs(options)
        result = pretrain(config, out, ac_config=ac_config)
        click.echo(f"{result.env_steps} env steps, {result.updates} updates; last returns {result.episode_returns[-5:]}")


def _collect_command(group: click.Group) -> None:
    @group.command(name="collect")
    @click.argument("env_id")
    @click.option("--out", type=_PATH, required=True, help="Dataset directory (re-run to resume).")
    @click.option("--transitions", type=int, required=True, help="Transitions to store in total.")
    @click.option(
        "--behaviour",
        type=click.Choice(["random", "expert", "policy"]),
        default="random",
        show_default=True,
        help="random; the environment's scripted expert; or a saved policy (--world-model, --policy).",
    )
    @_saved_policy_options(required=False)
    @click.option("--noise", default=0.0, show_default=True, help="Gaussian action noise (std).")
    @click.option("--seed", default=0, show_default=True, help="Seed of episodes and noise.")
    @click.option("--env-kwargs", default="{}", show_default=True, help="Environment kwargs (JSON).")
    def collect_command(env_id: str, out: Path, transitions: int, behaviour: str, world_model, policy, noise, seed, env_kwargs) -> None:
        """Record reward-free target data with a behaviour policy."""
        from latent_residual.workflow.collection import collect
        from latent_residual.workflow.loading import load_policy

        actor: Any = behaviour
        if behaviour == "policy":
            if world_model is None or policy is None:
                raise click.UsageError("--behaviour policy needs --world-model and --policy.")
            actor = load_policy(world_model, policy)
        dataset = collect(env_id, actor, out, transitions=transitions, seed=seed, noise=noise, env_kwargs=json.loads(env_kwargs))
        click.echo(f"{out}: {len(dataset.episodes)} episodes, {dataset.transitions} transitions")


def _adapt_command(group: click.Group) -> None:
    from latent_residual.fitting import FitConfig
    from latent_residual.residual import ResidualConfig

    @group.command(name="adapt")
    @click.option("--world-model", type=_PATH, required=True, help="Frozen world-model checkpoint.")
    @click.option("--out", type=_PATH, required=True, help="Adapter directory to write.")
    @_data_options
    @config_options(ResidualConfig)
    @config_options(FitConfig, prefix="fit-")
    def adapt_command(world_model: Path, out: Path, data: Path, max_transitions, sequence_length, **options: Any) -> None:
        """Fit a latent dynamics residual (ReDRAW) on reward-free target data."""
        from latent_residual.adapters import attach_residual
        from latent_residual.workflow.loading import load_world_model
        from latent_residual.fitting import fit_residual

        adapted = attach_residual(load_world_model(world_model), config_from_options(ResidualConfig, options))
        adapted.print_trainable_parameters()
        result = fit_residual(
            adapted,
            _sequences(data, max_transitions, sequence_length),
            config_from_options(FitConfig, options, prefix="fit-"),
            log_dir=out / "logs",
            data_summary={"dataset": str(data), "world_model": str(world_model)},
        )
        adapted.save_pretrained(out)
        click.echo(
            f"held-out KL {result.held_out_kl_base:.4f} (base) -> {result.held_out_kl_best:.4f} at step "
            f"{result.best_step} in {result.seconds:.1f} s; adapter written to {out}"
        )


def _finetune_command(group: click.Group) -> None:
    from latent_residual.fitting import FitConfig

    @group.command(name="finetune")
    @click.option("--world-model", type=_PATH, required=True, help="World-model checkpoint to start from.")
    @click.option("--out", type=_PATH, required=True, help="Directory for the finetuned checkpoint.")
    @_data_options
    @click.option("--fit-lr", default=1e-4, show_default=True, help="Adam learning rate of the prior (the world model's own, in the paper).")
    @config_options(FitConfig, prefix="fit-", exclude=("lr",))
    def finetune_command(world_model: Path, out: Path, data: Path, max_transitions, sequence_length, **options: Any) -> None:
        """The baseline: finetune only the prior network on target data (encoder and heads frozen)."""
        from latent_residual.checkpoints import save_world_model
        from latent_residual.workflow.loading import load_world_model
        from latent_residual.fitting import finetune_dynamics

        tuned, result = finetune_dynamics(
            load_world_model(world_model),
            _sequences(data, max_transitions, sequence_length),
            config_from_options(FitConfig, options, prefix="fit-"),
            log_dir=out / "logs",
        )
        save_world_model(tuned, out, extra={"method": "finetune", "dataset": str(data)})
        click.echo(f"held-out KL {result.held_out_kl_base:.4f} -> {result.held_out_kl_best:.4f}; written to {out}")


def _train_policy_command(group: click.Group) -> None:
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.workflow.policy_training import PolicyTrainConfig

    @group.command(name="train-policy")
    @click.option("--world-model", type=_PATH, required=True, help="World-model checkpoint.")
    @click.option("--adapter", type=_PATH, default=None, help="Adapter directory; omit for the plain model.")
    @click.option("--out", type=_PATH, required=True, help="File to write (actor_critic.safetensors).")
    @_data_options
    @config_options(PolicyTrainConfig)
    @config_options(ActorCriticConfig, prefix="ac-")
    def train_policy_command(world_model: Path, adapter, out: Path, data: Path, max_transitions, sequence_length, **options: Any) -> None:
        """Train a fresh actor-critic in the (adapted) world model's imagination."""
        from latent_residual.adapters import load_adapter
        from latent_residual.workflow.loading import load_world_model
        from latent_residual.actor_critic import save_actor_critic
        from latent_residual.workflow.policy_training import train_policy

        model = load_world_model(world_model)
        if adapter is not None:
            model = load_adapter(model, adapter, trainable=False)
        actor_critic = train_policy(
            model,
            _sequences(data, max_transitions, sequence_length),
            config_from_options(PolicyTrainConfig, options),
            ac_config=config_from_options(ActorCriticConfig, options, prefix="ac-"),
            log_dir=out.parent / "policy_logs",
        )
        save_actor_critic(actor_critic, out, extra={"world_model": str(world_model), "adapter": str(adapter or "")})
        click.echo(f"policy written to {out}")


def _evaluate_command(group: click.Group) -> None:
    @group.command(name="evaluate")
    @click.argument("env_id")
    @_saved_policy_options(required=False)
    @click.option("--onnx", type=_PATH, help="An exported ONNX policy directory instead.")
    @click.option("--episodes", default=10, show_default=True, help="Episodes to run.")
    @click.option("--seed", default=10_000, show_default=True, help="Seed of the first episode.")
    @click.option("--out", type=_PATH, default=None, help="JSON file for the results.")
    def evaluate_command(env_id: str, world_model, policy, onnx, episodes: int, seed: int, out) -> None:
        """Run a policy for N episodes; print mean ± std return and task metrics."""
        from latent_residual.serialization import write_text
        from latent_residual.workflow.evaluation import evaluate
        from latent_residual.workflow.loading import load_policy

        if onnx is not None:
            from latent_residual.onnx_policy import OnnxPolicy

            actor: Any = OnnxPolicy(onnx)
        elif world_model is not None and policy is not None:
            actor = load_policy(world_model, policy)
        else:
            raise click.UsageError("give --onnx DIR, or --world-model DIR and --policy FILE.")
        result = evaluate(actor, env_id, episodes=episodes, seed=seed, quiet=False)
        text = json.dumps(result.to_dict(), indent=2)
        if out is not None:
            write_text(out, text + "\n")
        click.echo(f"{env_id}: return {result.mean:.1f} ± {result.std:.1f} over {episodes} episodes")
        for key, value in result.metrics.items():
            click.echo(f"  {key}: {value}")


def _export_command(group: click.Group) -> None:
    @group.command(name="export")
    @_saved_policy_options(required=True)
    @click.option("--out", type=_PATH, required=True, help="Directory for policy.onnx and policy.json.")
    @click.option("--env-id", default=None, help="Environment id recorded in policy.json.")
    def export_command(world_model: Path, policy: Path, out: Path, env_id) -> None:
        """Export the deployable policy (encoder + posterior + actor) to ONNX and check it.

        With --env-id the check also runs 200 steps of whole episodes there, torch and ONNX Runtime
        side by side."""
        from latent_residual.workflow.export import example_observations, export_policy, verify_episodes, verify_export
        from latent_residual.workflow.loading import load_policy

        loaded = load_policy(world_model, policy)
        export_policy(loaded, out, env_id=env_id)
        difference = verify_export(out, loaded, example_observations(loaded.model.observation_space, 64))
        click.echo(f"wrote {out / 'policy.onnx'}; max |onnx - torch| = {difference:.2e}")
        if env_id is not None:
            difference = verify_episodes(out, loaded, env_id, steps=200)
            click.echo(f"over 200 steps of {env_id} episodes: max |onnx - torch| = {difference:.2e}")


def _experiment_command(group: click.Group, name: str, help_text: str, defaults: dict[str, Any], *, recommended: bool) -> None:
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.fitting import FitConfig
    from latent_residual.residual import ResidualConfig
    from latent_residual.workflow.experiments import ExperimentConfig
    from latent_residual.workflow.policy_training import PolicyTrainConfig
    from latent_residual.workflow.pretraining import PretrainConfig

    @group.command(name=name, help=help_text, context_settings={"default_map": defaults})
    @click.option("--out", type=_PATH, default=Path("runs") / name, show_default=True, help="Run directory (re-run to resume).")
    @click.option("--quick", is_flag=True, help="Tiny settings: a smoke run of every stage in about a minute.")
    @config_options(ExperimentConfig)
    @config_options(ResidualConfig, prefix="residual-", exclude=("mode",))
    @config_options(FitConfig, prefix="fit-")
    @config_options(PolicyTrainConfig, prefix="policy-", exclude=("seed",))
    @config_options(PretrainConfig, prefix="pretrain-", exclude=("env_id",))
    @config_options(ActorCriticConfig, prefix="ac-")
    @click.pass_context
    def command(ctx: click.Context, out: Path, quick: bool, **options: Any) -> None:
        from latent_residual.workflow.experiments import run_experiment

        given = {key for key in options if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE}
        if quick:  # flags given on the command line still win over --quick's settings
            options.update({key: value for key, value in QUICK_OVERRIDES.items() if key not in given})
        if recommended:
            options.update({key: value for key, value in _recommended(options["source"], options).items() if key not in given})
        experiment = config_from_options(ExperimentConfig, options).resolved()
        options["pretrain_env_id"] = experiment.source
        run_experiment(
            experiment,
            out,
            pretrain_config=config_from_options(PretrainConfig, options, prefix="pretrain-"),
            ac_config=config_from_options(ActorCriticConfig, options, prefix="ac-"),
            residual_config=config_from_options(ResidualConfig, options, prefix="residual-"),
            fit_config=config_from_options(FitConfig, options, prefix="fit-"),
            policy_config=config_from_options(PolicyTrainConfig, options, prefix="policy-"),
            say=click.echo,
        )

    return command


def _recommended(source: str, options: dict[str, Any]) -> dict[str, Any]:
    """The settings the source environment's plugin recommends, as option values of ``demo``."""
    from latent_residual.errors import ConfigError
    from latent_residual.registry import demo_env, env_spec

    spec = env_spec(source) if source else demo_env()
    values = {}
    for key, value in spec.recommended.items():
        if key not in options:
            raise ConfigError(f"Environment {spec.id!r} (plugin {spec.plugin!r}) recommends {key!r}, which is no demo option.")
        values[key] = tuple(value) if isinstance(value, list) else value
    return values


def add_commands(group: click.Group) -> None:
    """Add the pipeline's subcommands to ``group`` (the ``latent-residual`` command)."""
    _pretrain_command(group)
    _collect_command(group)
    _adapt_command(group)
    _finetune_command(group)
    _train_policy_command(group)
    _evaluate_command(group)
    _export_command(group)
    _experiment_command(
        group,
        "compare",
        "Compare zero-shot, ReDRAW, prior finetuning and replacement dynamics on the same data and seeds, "
        "with the paper's settings at CPU sizes.",
        {**CPU_DEFAULTS, "methods": ("redraw", "finetune", "replacement"), "transitions": (10_000, 40_000), "seeds": 3},
        recommended=False,
    )
    # The demo also takes what the source's plugin recommends (for the pendulum, DRAW's belief as a
    # residual input; on the Duckiebot the same input lost, so `compare` keeps the paper's inputs).
    _experiment_command(
        group,
        "demo",
        "The whole ReDRAW story on the registered demo source and its target on a CPU, with the settings "
        "the source's plugin recommends.",
        CPU_DEFAULTS,
        recommended=True,
    )
