"""The pipeline's subcommands of ``latent-residual``: pretrain, collect, adapt, finetune, train-policy,
evaluate, export, import, compare and demo. Each maps its flags one to one onto the config dataclasses.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from latent_residual.errors import ExportError, OutputPathError
from latent_residual.workflow import paths
from latent_residual.workflow.cli.options import config_from_options, config_options, json_object

_PATH = click.Path(path_type=Path)
_COUNT = click.IntRange(min=1)
_SEED = click.IntRange(min=0)

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


# -- checks made before any work ------------------------------------------------------------


@contextmanager
def _usage_error() -> Iterator[None]:
    """An unusable output path, found before any work, as a usage error naming its flag (exit code 2)."""
    try:
        yield
    except OutputPathError as exc:
        raise click.BadParameter(exc.detail, param_hint=exc.option) from exc


def check_output_directory(path: Path, **options: Any) -> None:
    """:func:`latent_residual.workflow.paths.check_output_directory` as a usage error (exit code 2)."""
    with _usage_error():
        paths.check_output_directory(path, **options)


def check_output_file(path: Path, **options: Any) -> None:
    """:func:`latent_residual.workflow.paths.check_output_file` as a usage error (exit code 2)."""
    with _usage_error():
        paths.check_output_file(path, **options)


@contextmanager
def _written_only_on_success(directory: Path) -> Iterator[None]:
    """Remove what the block created under ``directory`` (logs) if it fails, so a failed command
    leaves nothing behind: the directory itself if it did not exist, else the entries it added."""
    existed = directory.exists()
    before = set(directory.iterdir()) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(directory, ignore_errors=True)
        elif directory.is_dir():
            for entry in set(directory.iterdir()) - before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise


def _overwrite_option(what: str) -> Callable:
    return click.option("--overwrite", is_flag=True, help=f"Replace {what} already at --out.")


def _sequences(data: Path, max_transitions: int | None, length: int) -> dict[str, Any]:
    from latent_residual.workflow.data.datasets import load_dataset

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
            "--world-model",
            type=_PATH,
            required=required,
            help="World-model checkpoint of the saved policy (its encoder).",
        )(command)

    return decorate


def _data_options(command):
    command = click.option(
        "--sequence-length", type=_COUNT, default=32, show_default=True, help="Steps per training sequence."
    )(command)
    command = click.option("--max-transitions", type=_COUNT, default=None, help="Use at most this many transitions.")(
        command
    )
    return click.option("--data", type=_PATH, required=True, help="Target dataset directory (from `collect`).")(command)


def _pretrain_configs(options: dict[str, Any]):
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.workflow.training.pretraining import PretrainConfig

    return config_from_options(PretrainConfig, options), config_from_options(ActorCriticConfig, options, prefix="ac-")


# -- commands ----------------------------------------------------------------------------


def _pretrain_command(group: click.Group) -> None:
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.workflow.training.pretraining import PretrainConfig

    @group.command(name="pretrain")
    @click.option("--out", type=_PATH, required=True, help="Run directory (re-run to resume).")
    @config_options(PretrainConfig)
    @config_options(ActorCriticConfig, prefix="ac-")
    def pretrain_command(out: Path, **options: Any) -> None:
        """Pretrain a world model and a simulation policy (resumable; data-parallel under torchrun,
        see docs/distributed.md)."""
        from latent_residual.workflow.training.distributed import ranks_from_environment
        from latent_residual.workflow.training.pretraining import pretrain

        check_output_directory(out)
        config, ac_config = _pretrain_configs(options)
        result = pretrain(config, out, ac_config=ac_config)
        if ranks_from_environment().is_main:
            click.echo(
                f"{result.env_steps} env steps, {result.updates} updates; last returns {result.episode_returns[-5:]}"
            )


def _pretrain_offline_command(group: click.Group) -> None:
    from latent_residual.workflow.training.model_training import OfflinePretrainConfig

    @group.command(name="pretrain-offline")
    @click.option("--data", type=_PATH, required=True, help="Simulation dataset directory (from `collect`).")
    @click.option("--out", type=_PATH, required=True, help="Run directory (re-run to resume).")
    @config_options(OfflinePretrainConfig)
    def pretrain_offline_command(data: Path, out: Path, **options: Any) -> None:
        """Pretrain a world model offline on a simulation dataset (resumable; data-parallel under torchrun,
        see docs/distributed.md)."""
        from latent_residual.workflow.training.distributed import ranks_from_environment
        from latent_residual.workflow.training.model_training import WORLD_MODEL_NAME, pretrain_offline

        check_output_directory(out)
        config = config_from_options(OfflinePretrainConfig, options)
        pretrain_offline(config, data, out)
        if ranks_from_environment().is_main:
            click.echo(f"{config.updates} updates; the world model is in {out / WORLD_MODEL_NAME}")


def _build_source_command(group: click.Group) -> None:
    @group.command(name="build-source")
    @click.argument("env_id")
    @click.option(
        "--out", type=_PATH, required=True, help="Directory for world_model/, the policy and provenance.json."
    )
    @click.option(
        "--data",
        type=_PATH,
        default=None,
        help="Simulation dataset directory (re-run to resume)  [default: OUT/sim_data]",
    )
    @click.option("--seed", type=_SEED, default=0, show_default=True, help="Seed of collection, model and policy.")
    @click.option("--model-updates", type=_COUNT, default=None, help="World-model updates  [default: the recipe's]")
    @click.option(
        "--policy-updates", type=_COUNT, default=None, help="Policy updates in imagination  [default: the recipe's]"
    )
    def build_source_command(
        env_id: str, out: Path, data: Path | None, seed: int, model_updates, policy_updates
    ) -> None:
        """Build a simulation's world model and policy offline by the recipe its plugin registered: collect
        the recipe's data plan, train the world model, train the policy in its imagination, score it."""
        from latent_residual.workflow.training.recipes import build_source, source_recipe

        given = {"model_updates": model_updates, "policy_updates": policy_updates}
        recipe = source_recipe(env_id, **{key: value for key, value in given.items() if value is not None})
        check_output_directory(out)
        flags = {
            "--data": data,
            "--seed": seed,
            **{f"--{key.replace('_', '-')}": value for key, value in given.items()},
        }
        command = f"latent-residual build-source {env_id} --out {out}" + "".join(
            f" {flag} {value}" for flag, value in flags.items() if value is not None
        )
        provenance = build_source(env_id, out, recipe=recipe, data_dir=data, seed=seed, command=command, say=click.echo)
        score = provenance["simulation_policy_in_simulation"]
        click.echo(
            f"{out}: simulation policy {score['return_mean']:.1f} ± {score['return_std']:.1f} over {score['episodes']} "
            f"episodes in {env_id}; built in {provenance['seconds']} s"
        )


def _collect_command(group: click.Group) -> None:
    @group.command(name="collect")
    @click.argument("env_id")
    @click.option("--out", type=_PATH, required=True, help="Dataset directory (re-run to resume).")
    @click.option("--transitions", type=_COUNT, required=True, help="Transitions to store in total.")
    @click.option(
        "--behaviour",
        type=click.Choice(["random", "expert", "policy"]),
        default="random",
        show_default=True,
        help="random; the environment's scripted expert; or a saved policy (--world-model, --policy).",
    )
    @_saved_policy_options(required=False)
    @click.option(
        "--noise", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="Gaussian action noise (std)."
    )
    @click.option("--seed", type=_SEED, default=0, show_default=True, help="Seed of episodes and noise.")
    @click.option("--env-kwargs", default="{}", show_default=True, help="Environment kwargs (JSON).")
    def collect_command(
        env_id: str, out: Path, transitions: int, behaviour: str, world_model, policy, noise, seed, env_kwargs
    ) -> None:
        """Record reward-free target data with a behaviour policy."""
        from latent_residual.workflow.data.collection import collect
        from latent_residual.workflow.deployment.loading import load_policy

        kwargs = json_object(env_kwargs, "--env-kwargs")
        check_output_directory(out)
        actor: Any = behaviour
        if behaviour == "policy":
            if world_model is None or policy is None:
                raise click.UsageError("--behaviour policy needs --world-model and --policy.")
            actor = load_policy(world_model, policy)
        dataset = collect(env_id, actor, out, transitions=transitions, seed=seed, noise=noise, env_kwargs=kwargs)
        click.echo(f"{out}: {len(dataset.episodes)} episodes, {dataset.transitions} transitions")


def _adapt_command(group: click.Group) -> None:
    from latent_residual.fitting import FitConfig
    from latent_residual.residual import ResidualConfig

    @group.command(name="adapt")
    @click.option("--world-model", type=_PATH, required=True, help="Frozen world-model checkpoint.")
    @click.option("--out", type=_PATH, required=True, help="Adapter directory to write.")
    @_overwrite_option("an adapter")
    @_data_options
    @config_options(ResidualConfig)
    @config_options(FitConfig, prefix="fit-")
    def adapt_command(
        world_model: Path, out: Path, overwrite: bool, data: Path, max_transitions, sequence_length, **options: Any
    ) -> None:
        """Fit a latent dynamics residual (ReDRAW) on reward-free target data.

        A fit whose best held-out KL is worse than the base model's writes nothing and fails."""
        from latent_residual.adapters import ADAPTER_WEIGHTS_NAME, attach_residual
        from latent_residual.fitting import fit_residual
        from latent_residual.workflow.adaptation.methods import FIT_LOG_DIR_NAME
        from latent_residual.workflow.deployment.loading import load_world_model

        check_output_directory(out, finished=(ADAPTER_WEIGHTS_NAME,), overwrite=overwrite)
        residual_config = config_from_options(ResidualConfig, options)
        fit_config = config_from_options(FitConfig, options, prefix="fit-")
        adapted = attach_residual(load_world_model(world_model), residual_config)
        sequences = _sequences(data, max_transitions, sequence_length)
        adapted.print_trainable_parameters()
        with _written_only_on_success(out):
            result = fit_residual(
                adapted,
                sequences,
                fit_config,
                log_dir=out / FIT_LOG_DIR_NAME,
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
    @_overwrite_option("a checkpoint")
    @_data_options
    @click.option(
        "--fit-lr",
        default=1e-4,
        show_default=True,
        help="Adam learning rate of the prior (the world model's own, in the paper).",
    )
    @config_options(FitConfig, prefix="fit-", exclude=("lr",))
    def finetune_command(
        world_model: Path, out: Path, overwrite: bool, data: Path, max_transitions, sequence_length, **options: Any
    ) -> None:
        """The baseline: finetune only the prior network on target data (encoder and heads frozen)."""
        from latent_residual.checkpoints import MODEL_WEIGHTS_NAME, save_world_model
        from latent_residual.fitting import finetune_dynamics
        from latent_residual.workflow.deployment.loading import load_world_model

        check_output_directory(out, finished=(MODEL_WEIGHTS_NAME,), overwrite=overwrite)
        fit_config = config_from_options(FitConfig, options, prefix="fit-")
        base = load_world_model(world_model)
        sequences = _sequences(data, max_transitions, sequence_length)
        with _written_only_on_success(out):
            tuned, result = finetune_dynamics(base, sequences, fit_config, log_dir=out / "logs")
            save_world_model(tuned, out, extra={"method": "finetune", "dataset": str(data)})
        click.echo(f"held-out KL {result.held_out_kl_base:.4f} -> {result.held_out_kl_best:.4f}; written to {out}")


def _train_policy_command(group: click.Group) -> None:
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.workflow.training.policy_training import PolicyTrainConfig

    @group.command(name="train-policy")
    @click.option("--world-model", type=_PATH, required=True, help="World-model checkpoint.")
    @click.option("--adapter", type=_PATH, default=None, help="Adapter directory; omit for the plain model.")
    @click.option("--out", type=_PATH, required=True, help="File to write (actor_critic.safetensors).")
    @_overwrite_option("a policy file")
    @_data_options
    @config_options(PolicyTrainConfig)
    @config_options(ActorCriticConfig, prefix="ac-")
    def train_policy_command(
        world_model: Path,
        adapter,
        out: Path,
        overwrite: bool,
        data: Path,
        max_transitions,
        sequence_length,
        **options: Any,
    ) -> None:
        """Train a fresh actor-critic in the (adapted) world model's imagination."""
        from latent_residual.actor_critic import save_actor_critic
        from latent_residual.adapters import load_adapter
        from latent_residual.workflow.deployment.loading import load_world_model
        from latent_residual.workflow.training.policy_training import train_policy

        check_output_file(out, overwrite=overwrite)
        policy_config = config_from_options(PolicyTrainConfig, options)
        ac_config = config_from_options(ActorCriticConfig, options, prefix="ac-")
        model = load_world_model(world_model)
        if adapter is not None:
            model = load_adapter(model, adapter, trainable=False)
        actor_critic = train_policy(
            model,
            _sequences(data, max_transitions, sequence_length),
            policy_config,
            ac_config=ac_config,
            log_dir=out.parent / "policy_logs",
        )
        save_actor_critic(actor_critic, out, extra={"world_model": str(world_model), "adapter": str(adapter or "")})
        click.echo(f"policy written to {out}")


def _evaluate_command(group: click.Group) -> None:
    @group.command(name="evaluate")
    @click.argument("env_id")
    @_saved_policy_options(required=False)
    @click.option("--onnx", type=_PATH, help="An exported ONNX policy directory instead.")
    @click.option("--episodes", type=_COUNT, default=10, show_default=True, help="Episodes to run.")
    @click.option("--seed", type=_SEED, default=10_000, show_default=True, help="Seed of the first episode.")
    @click.option("--out", type=_PATH, default=None, help="JSON file for the results.")
    @_overwrite_option("a results file")
    def evaluate_command(
        env_id: str, world_model, policy, onnx, episodes: int, seed: int, out, overwrite: bool
    ) -> None:
        """Run a policy for N episodes; print mean ± std return and task metrics."""
        from latent_residual.serialization import write_text
        from latent_residual.workflow.deployment.loading import load_policy
        from latent_residual.workflow.experiments.evaluation import evaluate

        if out is not None:
            check_output_file(out, overwrite=overwrite)
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
    @_overwrite_option("an export")
    @click.option("--env-id", default=None, help="Environment id recorded in policy.json.")
    @click.option(
        "--surprise-threshold",
        type=click.FloatRange(min=0.0),
        default=None,
        help="Add the coverage alarm: a surprise output and this threshold (coverage.threshold in diagnose's report.json).",
    )
    @click.option(
        "--adapter", type=_PATH, default=None, help="Adapter whose corrected prior the surprise output compares with."
    )
    def export_command(
        world_model: Path, policy: Path, out: Path, overwrite: bool, env_id, surprise_threshold, adapter
    ) -> None:
        """Export the deployable policy (encoder + posterior + actor) to ONNX and check it.

        The directory is written whole (swapped into place), so a kill leaves the previous export
        or the new one. The new one is checked against torch before the swap: above 1e-4 the command
        fails and OUT keeps what it held. With --env-id the check also runs 200 steps of whole episodes
        there, torch and ONNX Runtime side by side. With --surprise-threshold (and --adapter) the graph
        also returns the coverage alarm's per-step surprise, which the check compares too (docs/diagnose.md)."""
        from latent_residual.onnx_policy import ONNX_NAME, POLICY_CONFIG_NAME
        from latent_residual.workflow.deployment.export import (
            PARITY_TOLERANCE,
            check_export_target,
            example_observations,
            export_policy,
            verify_episodes,
            verify_export,
        )
        from latent_residual.workflow.deployment.loading import load_policy

        check_output_directory(out, finished=(ONNX_NAME, POLICY_CONFIG_NAME), overwrite=overwrite, beside=True)
        check_export_target(out)
        if adapter is not None and surprise_threshold is None:
            raise click.UsageError("--adapter only matters for the coverage alarm; give --surprise-threshold too.")
        loaded = load_policy(world_model, policy)
        if adapter is not None:
            from latent_residual.adapters import load_adapter
            from latent_residual.workflow.deployment.policy import Policy

            loaded = Policy(load_adapter(loaded.model, adapter, trainable=False), loaded.actor)
        surprise = (
            {"surprise": True, "surprise_threshold": surprise_threshold} if surprise_threshold is not None else {}
        )
        label = "max difference (action, surprise)" if surprise else "max |onnx - torch|"

        def check(written: Path) -> None:
            difference = verify_export(written, loaded, example_observations(loaded.model.observation_space, 64))
            click.echo(f"checked the export: {label} = {difference:.2e}")
            if env_id is not None:
                in_episodes = verify_episodes(written, loaded, env_id, steps=200)
                click.echo(f"over 200 steps of {env_id} episodes: {label} = {in_episodes:.2e}")
                difference = max(difference, in_episodes)
            if difference > PARITY_TOLERANCE:
                raise ExportError(
                    f"{out}: ONNX Runtime differs from torch by {difference:.2e}, more than {PARITY_TOLERANCE}; the export "
                    "is not faithful to the policy, so it was not written."
                )

        click.echo(f"wrote {export_policy(loaded, out, env_id=env_id, check=check, **surprise)}")


def _import_command(group: click.Group) -> None:
    @group.command(name="import")
    @click.argument("source")
    @click.argument("checkpoint", type=_PATH)
    @click.option("--out", type=_PATH, required=True, help="Directory for world_model/ and actor_critic.safetensors.")
    @_overwrite_option("an import")
    @click.option("--config", type=_PATH, default=None, help="The run's config, when the importer cannot find it.")
    @click.option(
        "--env", "env_id", default=None, help="Environment id the model is for, when the importer cannot tell."
    )
    def import_command(source: str, checkpoint: Path, out: Path, overwrite: bool, config, env_id) -> None:
        """Convert another codebase's checkpoint (SOURCE: a registered importer, see `plugins`) into a world
        model and an actor-critic that load, evaluate, adapt and export like this library's own."""
        from latent_residual.registry.lookup import importer_spec, load_entry_point

        importer = load_entry_point(importer_spec(source).entry_point)
        with _usage_error():  # importers check --out themselves: only they know their finished artefacts
            written = importer(checkpoint, out, config=config, env_id=env_id, overwrite=overwrite)
        for name, path in written.items():
            click.echo(f"{name}: {path}")


def _diagnose_command(group: click.Group) -> None:
    from latent_residual.workflow.reports.data_curve import DataCurveConfig
    from latent_residual.workflow.reports.diagnose import DiagnoseConfig

    @group.command(name="diagnose")
    @click.option("--world-model", type=_PATH, required=True, help="Frozen world-model checkpoint (the base).")
    @click.option(
        "--adapter", type=_PATH, default=None, help="Adapter directory (from `adapt`); omit to diagnose the base alone."
    )
    @click.option(
        "--data",
        type=_PATH,
        required=True,
        help="Held-out target data (from `collect`); the adapter's own fit data is cut to its held-out tail.",
    )
    @click.option(
        "--check-data",
        type=_PATH,
        multiple=True,
        help="Another dataset whose episodes the coverage alarm checks (repeat).",
    )
    @click.option(
        "--out", type=_PATH, required=True, help="Report directory: report.html, its PNGs, report.json, tensorboard/."
    )
    @_overwrite_option("a report")
    @click.option(
        "--data-curve", is_flag=True, help="Also fit on nested subsets and plot held-out KL against data size (slow)."
    )
    @click.option(
        "--curve-data",
        type=_PATH,
        default=None,
        help="Data the curve fits on; default: the adapter's fit data, else --data.",
    )
    @config_options(DiagnoseConfig)
    @config_options(DataCurveConfig, prefix="curve-")
    def diagnose_command(
        world_model: Path,
        adapter,
        data: Path,
        check_data,
        out: Path,
        overwrite: bool,
        data_curve: bool,
        curve_data,
        **options: Any,
    ) -> None:
        """Compare the base and adapted model on held-out target data: open-loop prediction, decoded
        predictions, action sensitivity, the fit, and the coverage alarm's threshold; an HTML report."""
        from latent_residual.adapters import load_adapter
        from latent_residual.workflow.data.datasets import load_dataset
        from latent_residual.workflow.deployment.loading import load_world_model
        from latent_residual.workflow.reports.diagnose import diagnose, held_out_episodes
        from latent_residual.workflow.reports.html import REPORT_HTML_NAME

        check_output_directory(out, finished=(REPORT_HTML_NAME,), overwrite=overwrite, beside=True)
        config = config_from_options(DiagnoseConfig, options)
        curve_config = config_from_options(DataCurveConfig, options, prefix="curve-")
        base = load_world_model(world_model)
        adapted = load_adapter(base, adapter, trainable=False) if adapter is not None else None
        dataset = load_dataset(data)
        others = {path.name: load_dataset(path) for path in check_data}
        curve = None
        if data_curve:
            from latent_residual.workflow.reports.data_curve import data_curve as fit_curve

            summary = adapted.data_summaries.get(adapted.active_adapter, {}) if adapted is not None else {}
            curve_data = curve_data or Path(summary.get("dataset") or data)
            held_out, _ = held_out_episodes(dataset, adapted, data, config.holdout)
            # Fitting on --data itself: stop before its held-out tail.
            limit = dataset.transitions - held_out.transitions if curve_data.resolve() == data.resolve() else None
            residual = adapted.adapter_configs[adapted.active_adapter] if adapted is not None else None
            curve = fit_curve(
                base,
                curve_data,
                held_out.episodes,
                curve_config,
                residual=residual,
                limit=limit or None,
                say=click.echo,
            )
        report = diagnose(
            base,
            dataset,
            out,
            adapted=adapted,
            config=config,
            adapter_dir=adapter,
            data_path=data,
            check_data=others,
            data_curve=curve,
            say=click.echo,
        )
        for label, values in report["open_loop_kl"].items():
            click.echo(f"open-loop KL {label}: k=1 {values[0]:.3f}, k={len(values)} {values[-1]:.3f}")
        cover = report["coverage"]
        click.echo(
            f"surprise threshold {cover['threshold']:.4g}; held-out steps above it: {cover['held_out']['over_rate']:.1%}"
        )
        for text in report["warnings"]:
            click.echo(f"WARNING: {text}")
        click.echo(f"report written to {out / REPORT_HTML_NAME} in {report['seconds']:.1f} s")


def _experiment_command(
    group: click.Group, name: str, help_text: str, defaults: dict[str, Any], *, recommended: bool
) -> None:
    from latent_residual.actor_critic import ActorCriticConfig
    from latent_residual.fitting import FitConfig
    from latent_residual.residual import ResidualConfig
    from latent_residual.workflow.experiments.experiment import ExperimentConfig
    from latent_residual.workflow.training.policy_training import PolicyTrainConfig
    from latent_residual.workflow.training.pretraining import PretrainConfig

    @group.command(name=name, help=help_text, context_settings={"default_map": defaults})
    @click.option(
        "--out", type=_PATH, default=Path("runs") / name, show_default=True, help="Run directory (re-run to resume)."
    )
    @click.option("--quick", is_flag=True, help="Tiny settings: a smoke run of every stage in about a minute.")
    @config_options(ExperimentConfig)
    @config_options(ResidualConfig, prefix="residual-", exclude=("mode",))
    @config_options(FitConfig, prefix="fit-")
    @config_options(PolicyTrainConfig, prefix="policy-", exclude=("seed",))
    @config_options(PretrainConfig, prefix="pretrain-", exclude=("env_id",))
    @config_options(ActorCriticConfig, prefix="ac-")
    @click.pass_context
    def command(ctx: click.Context, out: Path, quick: bool, **options: Any) -> None:
        from latent_residual.workflow.experiments.experiment import run_experiment

        check_output_directory(out)
        given = {key for key in options if ctx.get_parameter_source(key) == click.core.ParameterSource.COMMANDLINE}
        if quick:  # flags given on the command line still win over --quick's settings
            options.update({key: value for key, value in QUICK_OVERRIDES.items() if key not in given})
        if recommended:
            options.update(
                {key: value for key, value in _recommended(options["source"], options).items() if key not in given}
            )
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
    """The settings the source environment's plugin recommends for the run's backbone, as option values of
    ``demo``; with several backbones, only those it recommends for every backbone."""
    from latent_residual.errors import ConfigError
    from latent_residual.registry.lookup import demo_env, env_spec

    spec = env_spec(source) if source else demo_env()
    backbones = options["backbones"] or (None,)
    recommended = [spec.recommended_for(backbone) for backbone in backbones]
    shared = {
        key: value for key, value in recommended[0].items() if all(other.get(key) == value for other in recommended)
    }
    for key in sorted(set().union(*recommended) - set(shared)):
        click.echo(f"note: {spec.id} recommends {key} per backbone; with several --backbones it is left at its default")
    values = {}
    for key, value in shared.items():
        if key not in options:
            raise ConfigError(
                f"Environment {spec.id!r} (plugin {spec.plugin!r}) recommends {key!r}, which is no demo option."
            )
        values[key] = tuple(value) if isinstance(value, list) else value
    return values


def add_commands(group: click.Group) -> None:
    """Add the pipeline's subcommands to ``group`` (the ``latent-residual`` command)."""
    _pretrain_command(group)
    _pretrain_offline_command(group)
    _build_source_command(group)
    _collect_command(group)
    _adapt_command(group)
    _finetune_command(group)
    _train_policy_command(group)
    _evaluate_command(group)
    _export_command(group)
    _diagnose_command(group)
    _import_command(group)
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
