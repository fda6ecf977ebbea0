"""The pipeline's subcommands of ``latent-residual``: pretrain, pretrain-offline, build-source, collect, adapt,
finetune, train-policy, evaluate, export, diagnose and import. Each maps its flags onto config dataclasses, calls one
library function and prints what it returned; ``demo`` and ``compare`` are in ``experiments.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from latent_residual.actor_critic import ActorCriticConfig
from latent_residual.adapters import ADAPTER_WEIGHTS_NAME
from latent_residual.checkpoints import MODEL_WEIGHTS_NAME
from latent_residual.fitting import FinetuneConfig, FitConfig
from latent_residual.onnx_policy import ONNX_NAME, POLICY_CONFIG_NAME, OnnxPolicy
from latent_residual.registry.lookup import importer_spec, load_entry_point
from latent_residual.residual import ResidualConfig
from latent_residual.serialization import write_text
from latent_residual.workflow.adaptation.finetune import finetune_checkpoint
from latent_residual.workflow.adaptation.residual import fit_adapter
from latent_residual.workflow.cli import experiments
from latent_residual.workflow.cli.common import (
    COUNT,
    PATH,
    SEED,
    check_output_directory,
    check_output_file,
    data_options,
    overwrite_option,
    saved_policy_options,
    usage_error,
)
from latent_residual.workflow.cli.options import config_from_options, config_options, json_object
from latent_residual.workflow.data.collection import collect
from latent_residual.workflow.deployment.export import (
    check_export_target,
    example_observations,
    export_and_verify,
    verify_episodes,
    verify_export,
)
from latent_residual.workflow.deployment.loading import load_policy
from latent_residual.workflow.deployment.onnx_graph import PRECISIONS
from latent_residual.workflow.experiments.evaluation import evaluate
from latent_residual.workflow.reports.data_curve import DataCurveConfig
from latent_residual.workflow.reports.diagnose import DiagnoseConfig, diagnose_saved
from latent_residual.workflow.reports.html import REPORT_HTML_NAME
from latent_residual.workflow.training.distributed import ranks_from_environment
from latent_residual.workflow.training.model_training import WORLD_MODEL_NAME, OfflinePretrainConfig, pretrain_offline
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_saved_policy
from latent_residual.workflow.training.pretraining import PretrainConfig, pretrain
from latent_residual.workflow.training.recipes import build_source, source_recipe
from latent_residual.workflow.training.selection import SelectionConfig


def _pretrain_configs(options: dict[str, Any]) -> tuple[PretrainConfig, ActorCriticConfig]:
    return config_from_options(PretrainConfig, options), config_from_options(ActorCriticConfig, options, prefix="ac-")


# -- simulation ------------------------------------------------------------------------------


def _pretrain_command(group: click.Group) -> None:
    @group.command(name="pretrain")
    @click.option("--out", type=PATH, required=True, help="Run directory (re-run to resume).")
    @config_options(PretrainConfig)
    @config_options(ActorCriticConfig, prefix="ac-")
    def pretrain_command(out: Path, **options: Any) -> None:
        """Pretrain a world model and a simulation policy (resumable; data-parallel under torchrun,
        see docs/distributed.md)."""
        check_output_directory(out)
        config, ac_config = _pretrain_configs(options)
        result = pretrain(config, out, ac_config=ac_config)
        if ranks_from_environment().is_main:
            click.echo(
                f"{result.env_steps} env steps, {result.updates} updates; last returns {result.episode_returns[-5:]}"
            )


def _pretrain_offline_command(group: click.Group) -> None:
    @group.command(name="pretrain-offline")
    @click.option("--data", type=PATH, required=True, help="Simulation dataset directory (from `collect`).")
    @click.option("--out", type=PATH, required=True, help="Run directory (re-run to resume).")
    @config_options(OfflinePretrainConfig)
    def pretrain_offline_command(data: Path, out: Path, **options: Any) -> None:
        """Pretrain a world model offline on a simulation dataset (resumable; data-parallel under torchrun,
        see docs/distributed.md)."""
        check_output_directory(out)
        config = config_from_options(OfflinePretrainConfig, options)
        pretrain_offline(config, data, out)
        if ranks_from_environment().is_main:
            click.echo(f"{config.updates} updates; the world model is in {out / WORLD_MODEL_NAME}")


def _build_source_command(group: click.Group) -> None:
    @group.command(name="build-source")
    @click.argument("env_id")
    @click.option("--out", type=PATH, required=True, help="Directory for world_model/, the policy and provenance.json.")
    @click.option(
        "--data",
        type=PATH,
        default=None,
        help="Simulation dataset directory (re-run to resume)  [default: OUT/sim_data]",
    )
    @click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of collection, model and policy.")
    @click.option(
        "--backbone",
        default=None,
        help="Whose recipe, where the plugin registers one per backbone  [default: the environment's backbone]",
    )
    @click.option(
        "--recipe-of",
        default=None,
        help="Build ENV_ID by the recipe another environment registered, e.g. a source's recipe in its target, "
        "with the target's own reward: what this learner reaches there  [default: ENV_ID's own]",
    )
    @click.option("--model-updates", type=COUNT, default=None, help="World-model updates  [default: the recipe's]")
    @click.option(
        "--policy-updates", type=COUNT, default=None, help="Policy updates in imagination  [default: the recipe's]"
    )
    @click.option(
        "--workers",
        type=COUNT,
        default=None,
        help="Processes that share every world-model and policy update, one torch thread each (the result "
        "depends on this number, which provenance.json records)  [default: the recipe's]",
    )
    def build_source_command(
        env_id: str,
        out: Path,
        data: Path | None,
        seed: int,
        backbone,
        recipe_of,
        model_updates,
        policy_updates,
        workers,
    ) -> None:
        """Build a simulation's world model and policy offline by the recipe its plugin registered: collect
        the recipe's data plan, train the world model, train the policy in its imagination, score it."""
        given = {"model_updates": model_updates, "policy_updates": policy_updates, "workers": workers}
        recipe = source_recipe(
            recipe_of or env_id, backbone, **{key: value for key, value in given.items() if value is not None}
        )
        check_output_directory(out)
        flags = {
            "--data": data,
            "--seed": seed,
            "--backbone": backbone,
            "--recipe-of": recipe_of,
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


# -- the target: data, adaptation, policy, evaluation -------------------------------------------


def _collect_command(group: click.Group) -> None:
    @group.command(name="collect")
    @click.argument("env_id")
    @click.option("--out", type=PATH, required=True, help="Dataset directory (re-run to resume).")
    @click.option("--transitions", type=COUNT, required=True, help="Transitions to store in total.")
    @click.option(
        "--behaviour",
        type=click.Choice(["random", "expert", "policy"]),
        default="random",
        show_default=True,
        help="random; the environment's scripted expert; or a saved policy (--world-model, --policy).",
    )
    @saved_policy_options(required=False)
    @click.option(
        "--noise", type=click.FloatRange(min=0.0), default=0.0, show_default=True, help="Gaussian action noise (std)."
    )
    @click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of episodes and noise.")
    @click.option("--env-kwargs", default="{}", show_default=True, help="Environment kwargs (JSON).")
    def collect_command(
        env_id: str, out: Path, transitions: int, behaviour: str, world_model, policy, noise, seed, env_kwargs
    ) -> None:
        """Record reward-free target data with a behaviour policy."""
        kwargs = json_object(env_kwargs, "--env-kwargs")
        check_output_directory(out)
        if behaviour == "policy" and (world_model is None or policy is None):
            raise click.UsageError("--behaviour policy needs --world-model and --policy.")
        actor: Any = load_policy(world_model, policy) if behaviour == "policy" else behaviour
        dataset = collect(env_id, actor, out, transitions=transitions, seed=seed, noise=noise, env_kwargs=kwargs)
        click.echo(f"{out}: {len(dataset.episodes)} episodes, {dataset.transitions} transitions")


def _adapt_command(group: click.Group) -> None:
    @group.command(name="adapt")
    @click.option("--world-model", type=PATH, required=True, help="Frozen world-model checkpoint.")
    @click.option("--out", type=PATH, required=True, help="Adapter directory to write.")
    @overwrite_option("an adapter")
    @data_options
    @config_options(ResidualConfig)
    @config_options(FitConfig, prefix="fit-")
    def adapt_command(
        world_model: Path, out: Path, overwrite: bool, data: Path, max_transitions, sequence_length, **options: Any
    ) -> None:
        """Fit a latent dynamics residual (ReDRAW) on reward-free target data.

        A fit whose best held-out KL is worse than the base model's writes nothing and fails."""
        check_output_directory(out, finished=(ADAPTER_WEIGHTS_NAME,), overwrite=overwrite)
        residual = config_from_options(ResidualConfig, options)
        fit = config_from_options(FitConfig, options, prefix="fit-")
        result = fit_adapter(
            world_model, data, out, residual, fit, max_transitions=max_transitions, sequence_length=sequence_length
        )
        click.echo(
            f"held-out KL {result.held_out_kl_base:.4f} (base) -> {result.held_out_kl_best:.4f} at step "
            f"{result.best_step} in {result.seconds:.1f} s; adapter written to {out}"
        )


def _finetune_command(group: click.Group) -> None:
    @group.command(name="finetune")
    @click.option("--world-model", type=PATH, required=True, help="World-model checkpoint to start from.")
    @click.option("--out", type=PATH, required=True, help="Directory for the finetuned checkpoint.")
    @overwrite_option("a checkpoint")
    @data_options
    @config_options(FinetuneConfig, prefix="fit-")
    def finetune_command(
        world_model: Path, out: Path, overwrite: bool, data: Path, max_transitions, sequence_length, **options: Any
    ) -> None:
        """The baseline: finetune only the prior network on target data (encoder and heads frozen)."""
        check_output_directory(out, finished=(MODEL_WEIGHTS_NAME,), overwrite=overwrite)
        config = config_from_options(FinetuneConfig, options, prefix="fit-")
        result = finetune_checkpoint(
            world_model, data, out, config, max_transitions=max_transitions, sequence_length=sequence_length
        )
        click.echo(f"held-out KL {result.held_out_kl_base:.4f} -> {result.held_out_kl_best:.4f}; written to {out}")


def _train_policy_command(group: click.Group) -> None:
    @group.command(name="train-policy")
    @click.option("--world-model", type=PATH, required=True, help="World-model checkpoint.")
    @click.option(
        "--adapter",
        "adapters",
        type=PATH,
        multiple=True,
        help="Adapter directory; omit for the plain model. Given more than once (fits of one residual, e.g. `adapt "
        "--fit-seed`), candidates are trained in each and scored in all, the lowest score counting.",
    )
    @click.option("--out", type=PATH, required=True, help="File to write (actor_critic.safetensors).")
    @overwrite_option("a policy file")
    @data_options
    @config_options(PolicyTrainConfig)
    @config_options(SelectionConfig)
    @config_options(ActorCriticConfig, prefix="ac-")
    def train_policy_command(
        world_model: Path,
        adapters: tuple[Path, ...],
        out: Path,
        overwrite: bool,
        data: Path,
        max_transitions,
        sequence_length,
        **options: Any,
    ) -> None:
        """Train a fresh actor-critic in the (adapted) world model's imagination; with --candidates or
        --snapshots or several --adapter, several, one chosen without real reward (scores in OUT's .selection.json)."""
        check_output_file(out, overwrite=overwrite)
        train_saved_policy(
            world_model,
            data,
            out,
            config_from_options(PolicyTrainConfig, options),
            ac_config=config_from_options(ActorCriticConfig, options, prefix="ac-"),
            adapters=adapters,
            max_transitions=max_transitions,
            sequence_length=sequence_length,
            selection=config_from_options(SelectionConfig, options),
        )
        click.echo(f"policy written to {out}")


def _evaluate_command(group: click.Group) -> None:
    @group.command(name="evaluate")
    @click.argument("env_id")
    @saved_policy_options(required=False)
    @click.option("--onnx", type=PATH, help="An exported ONNX policy directory instead.")
    @click.option("--episodes", type=COUNT, default=10, show_default=True, help="Episodes to run.")
    @click.option("--seed", type=SEED, default=10_000, show_default=True, help="Seed of the first episode.")
    @click.option(
        "--env-kwargs",
        default="{}",
        show_default=True,
        help="Environment kwargs (JSON), e.g. '{\"max_episode_steps\": 400}' as compare --episode-steps 400.",
    )
    @click.option("--out", type=PATH, default=None, help="JSON file for the results.")
    @overwrite_option("a results file")
    def evaluate_command(
        env_id: str, world_model, policy, onnx, episodes: int, seed: int, env_kwargs: str, out, overwrite: bool
    ) -> None:
        """Run a policy for N episodes; print mean ± std return and task metrics."""
        kwargs = json_object(env_kwargs, "--env-kwargs")
        if out is not None:
            check_output_file(out, overwrite=overwrite)
        if onnx is None and (world_model is None or policy is None):
            raise click.UsageError("give --onnx DIR, or --world-model DIR and --policy FILE.")
        actor: Any = OnnxPolicy(onnx) if onnx is not None else load_policy(world_model, policy)
        result = evaluate(actor, env_id, episodes=episodes, seed=seed, env_kwargs=kwargs, quiet=False)
        if out is not None:
            write_text(out, json.dumps(result.to_dict(), indent=2) + "\n")
        click.echo(f"{env_id}: return {result.mean:.1f} ± {result.std:.1f} over {episodes} episodes")
        for key, value in result.metrics.items():
            click.echo(f"  {key}: {value}")


# -- deployment and diagnosis -----------------------------------------------------------------


def _export_command(group: click.Group) -> None:
    @group.command(name="export")
    @saved_policy_options(required=True)
    @click.option("--out", type=PATH, required=True, help="Directory for policy.onnx and policy.json.")
    @overwrite_option("an export")
    @click.option("--env-id", default=None, help="Environment id recorded in policy.json.")
    @click.option(
        "--surprise-threshold",
        type=click.FloatRange(min=0.0),
        default=None,
        help="Add the coverage alarm: a surprise output and this threshold (coverage.threshold in diagnose's "
        "report.json).",
    )
    @click.option(
        "--adapter", type=PATH, default=None, help="Adapter whose corrected prior the surprise output compares with."
    )
    @click.option(
        "--precision",
        type=click.Choice(PRECISIONS),
        default="fp32",
        show_default=True,
        help="fp16 or int8: a smaller (fp16) or faster (int8) graph that gives up the 1e-4 parity; the check runs on "
        "the float32 graph it is made from and its own difference is printed. Measure its returns (evaluate --onnx).",
    )
    def export_command(
        world_model: Path, policy: Path, out: Path, overwrite: bool, env_id, surprise_threshold, adapter, precision
    ) -> None:
        """Export the deployable policy (encoder + posterior + actor) to ONNX and check it.

        The directory is written whole (swapped into place), so a kill leaves the previous export
        or the new one. The new one is checked against torch before the swap: above 1e-4 the command
        fails and OUT keeps what it held. With --env-id the check also runs 200 steps of whole episodes
        there, torch and ONNX Runtime side by side. With --surprise-threshold (and --adapter) the graph
        also returns the coverage alarm's per-step surprise, which the check compares too (docs/diagnose.md).
        With --precision fp16 or int8 the check runs on the float32 graph, which the reduced one then replaces;
        the reduced graph's own difference from torch is printed (docs/deployment.md)."""
        check_output_directory(out, finished=(ONNX_NAME, POLICY_CONFIG_NAME), overwrite=overwrite, beside=True)
        check_export_target(out)
        if adapter is not None and surprise_threshold is None:
            raise click.UsageError("--adapter only matters for the coverage alarm; give --surprise-threshold too.")
        surprise = (
            {"surprise": True, "surprise_threshold": surprise_threshold} if surprise_threshold is not None else {}
        )
        loaded = load_policy(world_model, policy, adapter=adapter)
        export_and_verify(loaded, out, env_id=env_id, say=click.echo, precision=precision, **surprise)
        if precision != "fp32":
            observations = example_observations(loaded.model.observation_space, 64)
            click.echo(f"the {precision} graph: max |onnx - torch| = {verify_export(out, loaded, observations):.2e}")
            if env_id is not None:
                click.echo(f"  over 200 steps of {env_id} episodes: {verify_episodes(out, loaded, env_id):.2e}")
        click.echo(f"wrote {out / ONNX_NAME}" + (f" ({precision})" if precision != "fp32" else ""))


def _diagnose_command(group: click.Group) -> None:
    @group.command(name="diagnose")
    @click.option("--world-model", type=PATH, required=True, help="Frozen world-model checkpoint (the base).")
    @click.option(
        "--adapter", type=PATH, default=None, help="Adapter directory (from `adapt`); omit to diagnose the base alone."
    )
    @click.option(
        "--data",
        type=PATH,
        required=True,
        help="Held-out target data (from `collect`); the adapter's own fit data is cut to its held-out tail.",
    )
    @click.option(
        "--check-data",
        type=PATH,
        multiple=True,
        help="Another dataset whose episodes the coverage alarm checks (repeat).",
    )
    @click.option(
        "--out", type=PATH, required=True, help="Report directory: report.html, its PNGs, report.json, tensorboard/."
    )
    @overwrite_option("a report")
    @click.option(
        "--data-curve", is_flag=True, help="Also fit on nested subsets and plot held-out KL against data size (slow)."
    )
    @click.option(
        "--curve-data",
        type=PATH,
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
        check_output_directory(out, finished=(REPORT_HTML_NAME,), overwrite=overwrite, beside=True)
        report = diagnose_saved(
            world_model,
            data,
            out,
            adapter=adapter,
            check_data=check_data,
            config=config_from_options(DiagnoseConfig, options),
            data_curve=config_from_options(DataCurveConfig, options, prefix="curve-") if data_curve else None,
            curve_data=curve_data,
            say=click.echo,
        )
        _echo_report(report, out)


def _echo_report(report: dict[str, Any], out: Path) -> None:
    """The diagnosis in a few lines: open-loop KL, the coverage alarm, the warnings, where the report is."""
    for label, values in report["open_loop_kl"].items():
        click.echo(f"open-loop KL {label}: k=1 {values[0]:.3f}, k={len(values)} {values[-1]:.3f}")
    threshold, over = report["coverage"]["threshold"], report["coverage"]["held_out"]["over_rate"]
    click.echo(f"surprise threshold {threshold:.4g}; held-out steps above it: {over:.1%}")
    for text in report["warnings"]:
        click.echo(f"WARNING: {text}")
    click.echo(f"report written to {out / REPORT_HTML_NAME} in {report['seconds']:.1f} s")


def _import_command(group: click.Group) -> None:
    @group.command(name="import")
    @click.argument("source")
    @click.argument("checkpoint", type=PATH)
    @click.option("--out", type=PATH, required=True, help="Directory for world_model/ and actor_critic.safetensors.")
    @overwrite_option("an import")
    @click.option("--config", type=PATH, default=None, help="The run's config, when the importer cannot find it.")
    @click.option(
        "--env", "env_id", default=None, help="Environment id the model is for, when the importer cannot tell."
    )
    def import_command(source: str, checkpoint: Path, out: Path, overwrite: bool, config, env_id) -> None:
        """Convert another codebase's checkpoint (SOURCE: a registered importer, see `plugins`) into a world
        model and an actor-critic that load, evaluate, adapt and export like this library's own."""
        importer = load_entry_point(importer_spec(source).entry_point)
        with usage_error():  # importers check --out themselves: only they know their finished artefacts
            written = importer(checkpoint, out, config=config, env_id=env_id, overwrite=overwrite)
        for name, path in written.items():
            click.echo(f"{name}: {path}")


def add_commands(group: click.Group) -> None:
    """Add the pipeline's subcommands, ``demo`` and ``compare`` to ``group`` (the ``latent-residual`` command)."""
    for add in (
        _pretrain_command,
        _pretrain_offline_command,
        _build_source_command,
        _collect_command,
        _adapt_command,
        _finetune_command,
        _train_policy_command,
        _evaluate_command,
        _export_command,
        _diagnose_command,
        _import_command,
    ):
        add(group)
    experiments.add_experiment_commands(group)
