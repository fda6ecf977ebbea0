"""The ReDRAW experiment end to end, as resumable stages: pretrain, collect, adapt, train, evaluate, export.

Each stage's building block lives in its own module and each adaptation method is a registered entry;
this module only orders them and keeps their outputs on disk (a re-run skips what is done).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import multiprocessing
import os
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from latent_residual.actor_critic import ActorCriticConfig, load_actor_critic, save_actor_critic
from latent_residual.config import config_to_dict
from latent_residual.contract import WorldModel
from latent_residual.errors import CellError, ConfigError
from latent_residual.onnx_policy import ONNX_NAME, OnnxPolicy
from latent_residual.progress import clock
from latent_residual.registry.lookup import (
    demo_env,
    env_pretrained,
    env_spec,
    make_method,
    method_config,
    method_config_class,
    method_spec,
    source_target,
)
from latent_residual.serialization import write_text
from latent_residual.workflow.adaptation.base import RUN_FIT_INFO_NAME, RUN_FIT_LOG_DIR_NAME, AdaptationMethod
from latent_residual.workflow.data.collection import collect
from latent_residual.workflow.data.datasets import reward_free_sequences
from latent_residual.workflow.deployment.export import export_and_verify
from latent_residual.workflow.deployment.loading import load_world_model
from latent_residual.workflow.deployment.policy import Policy
from latent_residual.workflow.experiments.evaluation import evaluate
from latent_residual.workflow.reports.tables import combined_table, comparison_table
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_candidates, train_policy
from latent_residual.workflow.training.pretraining import ACTOR_CRITIC_NAME, PretrainConfig, pretrain
from latent_residual.workflow.training.selection import SelectionConfig

BEHAVIOURS = ("expert", "random", "sim-policy")
RESULTS_NAME = "results.json"
#: A cell that chose its policy among candidates: every candidate's score (``selection.py``).
SELECTION_NAME = "selection.json"
#: The reference every comparison starts from (the simulation policy in the target).
ZERO_SHOT = "zero-shot"
EVAL_SEED = 10_000
DATA_SEED = 20_000
#: A cell's fit k (``fits``) is seeded seed + k x this, so that adding seeds or fits keeps every fit made before.
FIT_SEED_STRIDE = 1_000


@dataclass
class ExperimentConfig:
    """One sim-to-target comparison. Flags of ``latent-residual compare`` and ``demo`` map onto it."""

    source: str = field(default="", metadata={"help": "Simulation environment id; empty: the registered demo source."})
    target: str = field(
        default="", metadata={"help": "Target ('real') environment id; empty: the source's registered target."}
    )
    pretrained: str = field(
        default="",
        metadata={
            "help": "Pretraining directory to start from; empty: the embedded default for the source, else pretrain."
        },
    )
    backbones: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "Backbones to compare, each from its default for the source (shipped, else pretrained here), "
            "in one table; empty: the source's default backbone."
        },
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
    methods: tuple[str, ...] = field(
        default=("redraw",),
        metadata={
            "help": "Adaptation methods besides zero-shot (see `latent-residual plugins`): redraw, finetune, "
            "replacement, ..."
        },
    )
    backbone_methods: tuple[str, ...] = field(
        default=(),
        metadata={
            "help": "BACKBONE=METHOD pairs: a backbone of --backbones named here runs the methods paired with it "
            "instead of --methods, so one run holds each backbone's own rows (a baseline of one backbone only)."
        },
    )
    seeds: int = field(default=1, metadata={"help": "Seeds per method (fit and policy training)."})
    fits: int = field(
        default=1,
        metadata={
            "help": "Fits per (method, data size, seed) cell of a method that trains a fresh policy, fit k seeded "
            "seed + 1000 k; policies are trained in each fit's model and the one whose lowest score over all the "
            "fits' models is highest is kept (a policy that exploits one fit's error scores low in the others')."
        },
    )
    eval_episodes: int = field(default=10, metadata={"help": "Evaluation episodes per policy."})
    sequence_length: int = field(default=32, metadata={"help": "Steps per training sequence cut from the target data."})
    episode_steps: int = field(
        default=0, metadata={"help": "Cap on episode length in collection and evaluation; 0 keeps the environment's."}
    )
    export: bool = field(
        default=True,
        metadata={
            "help": "Export the first policy of the export method (--export-method) to ONNX, checked against torch, "
            "and evaluate it."
        },
    )
    export_method: str = field(
        default="redraw",
        metadata={
            "help": "The method whose policy is exported: its first cell (smallest data size, seed 0); nothing is "
            "exported when it is not among the methods run."
        },
    )
    jobs: int = field(
        default=0,
        metadata={
            "help": "Worker processes for the (method, data size, seed) cells, each with 1 torch thread; 0: one per "
            "core, capped by memory. Every cell is seeded on its own, so any value gives the same results."
        },
    )

    def __post_init__(self) -> None:
        for method in (*self.methods, self.export_method):
            method_spec(method)  # NameNotFound, with the closest match, for an unknown method
        if self.behaviour not in BEHAVIOURS:
            raise ConfigError(
                f"ExperimentConfig.behaviour must be one of {', '.join(BEHAVIOURS)}; got {self.behaviour!r}."
            )
        if not self.transitions or min(self.transitions) < 1:
            raise ConfigError(f"ExperimentConfig.transitions must be positive sizes, got {self.transitions!r}.")
        if self.seeds < 1 or self.eval_episodes < 1 or self.fits < 1:
            raise ConfigError("ExperimentConfig: seeds, fits and eval_episodes must be >= 1.")
        if self.jobs < 0:
            raise ConfigError(f"ExperimentConfig.jobs must be >= 0 (0: one per core), got {self.jobs}.")
        if self.pretrained and len(self.backbones) > 1:
            raise ConfigError(
                "ExperimentConfig: a --pretrained directory holds one backbone; give at most one --backbones."
            )
        for backbone, method in self._pairs():
            if backbone not in self.backbones:
                raise ConfigError(
                    f"ExperimentConfig.backbone_methods: {backbone!r} is not among --backbones "
                    f"{list(self.backbones)}; pair methods only with backbones the run compares."
                )
            method_spec(method)

    def _pairs(self) -> list[tuple[str, str]]:
        pairs = []
        for pair in self.backbone_methods:
            backbone, sep, method = pair.partition("=")
            if not (sep and backbone and method):
                raise ConfigError(f"ExperimentConfig.backbone_methods: expected BACKBONE=METHOD, got {pair!r}.")
            pairs.append((backbone, method))
        return pairs

    @property
    def all_methods(self) -> tuple[str, ...]:
        """Every method some backbone of the run runs: ``methods`` and those of ``backbone_methods``."""
        return tuple(dict.fromkeys((*self.methods, *(method for _, method in self._pairs()))))

    def for_backbone(self, backbone: str) -> ExperimentConfig:
        """The run of one of ``backbones``: that backbone alone, with the methods paired with it (else ``methods``)."""
        paired = tuple(method for name, method in self._pairs() if name == backbone)
        return dataclasses.replace(self, backbones=(backbone,), methods=paired or self.methods, backbone_methods=())

    def resolved(self) -> ExperimentConfig:
        """This config with the registry's choices filled in: the demo source and the source's target; a target
        without the expert that ``behaviour`` asks for is refused here, before any stage runs."""
        source = self.source or demo_env().id
        resolved = dataclasses.replace(self, source=source, target=self.target or source_target(source))
        if resolved.behaviour == "expert" and env_spec(resolved.target).expert is None:
            raise ConfigError(
                f"ExperimentConfig.behaviour is 'expert', but the target {resolved.target!r} has no scripted expert; "
                "record its data with behaviour 'sim-policy' (--behaviour sim-policy) or 'random'."
            )
        return resolved


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


# Settings a re-run may change: each only adds or skips runs that are kept under their own names, or
# (jobs) changes how many run at once, not what they give.
_EXTENDABLE = {"experiment": ("seeds", "methods", "export", "jobs")}


@dataclass
class _Run:
    """One experiment in progress: its settings, outputs and the models and policies shared by its stages."""

    config: ExperimentConfig
    out: Path
    results: _Results
    method_configs: dict[str, Any]
    policy_config: PolicyTrainConfig
    ac_config: ActorCriticConfig | None
    quiet: bool
    say: Callable[[str], Any]
    pretrained: Path | None = None
    base: WorldModel | None = None
    sim_policy: Policy | None = None

    @property
    def env_kwargs(self) -> dict[str, Any]:
        return {"max_episode_steps": self.config.episode_steps} if self.config.episode_steps else {}

    def evaluation(self, policy: Any, env_id: str, **extra: Any) -> dict[str, Any]:
        """``policy``'s results row in ``env_id``: the run's evaluation episodes, always the same seeds."""
        result = evaluate(
            policy, env_id, episodes=self.config.eval_episodes, seed=EVAL_SEED, env_kwargs=self.env_kwargs
        )
        return {**result.to_dict(), **extra}

    def evaluated(self, key: str, policy: Any, env_id: str) -> dict[str, Any]:
        """Evaluate ``policy`` once (a re-run reuses the stored result) and print its line."""
        if key not in self.results:
            self.results.put(key, self.evaluation(policy, env_id))
        row = self.results[key]
        self.say(_row_line(key, row))
        return row


def _row_line(key: str, row: dict[str, Any]) -> str:
    return f"      {key:<32} return {row['return_mean']:8.1f} ± {row['return_std']:.1f}"


def _pretrained(run: _Run, pretrain_config: PretrainConfig | None) -> Path:
    """Stage 1: the simulation-pretrained model and policy: given, shipped with the source, or made here."""
    config = run.config
    if config.pretrained:
        return Path(config.pretrained)
    backbone = config.backbones[0] if config.backbones else None
    embedded = env_pretrained(config.source, backbone)
    if embedded is not None:
        return embedded
    pre = run.out / "pretrain"
    run.say(f"[1/6] pretraining in {config.source} -> {pre}")
    pretrain_config = pretrain_config or PretrainConfig(env_id=config.source)
    if backbone is not None:
        pretrain_config = dataclasses.replace(pretrain_config, backbone=backbone)
    pretrain(pretrain_config, pre, ac_config=run.ac_config, quiet=run.quiet)
    return pre


def _references(run: _Run) -> None:
    """Stage 2: the simulation policy in simulation and, for each method without target data, in the target."""
    run.say("[2/6] evaluating the simulation policy in simulation and zero-shot in the target")
    run.evaluated("sim-policy@source", run.sim_policy, run.config.source)
    for method in dict.fromkeys((ZERO_SHOT, *run.config.methods)):
        if not make_method(method).uses_target_data:
            run.evaluated(method, run.sim_policy, run.config.target)


def _target_data(run: _Run) -> Path:
    """Stage 3: reward-free target data from the chosen behaviour."""
    config = run.config
    data_dir = run.out / "target_data"
    behaviour: Any = run.sim_policy if config.behaviour == "sim-policy" else config.behaviour
    run.say(
        f"[3/6] collecting {max(config.transitions)} reward-free target transitions ({config.behaviour}) -> {data_dir}"
    )
    collect(
        config.target,
        behaviour,
        data_dir,
        transitions=max(config.transitions),
        seed=DATA_SEED,
        env_kwargs=run.env_kwargs,
        noise=config.noise,
        quiet=run.quiet,
        provenance={"purpose": "target adaptation data", "reward_used": False},
    )
    return data_dir


@dataclass(frozen=True)
class _Cell:
    """One (method, data size, seed) of stages 4-5: its own seeds, directory and results key, so cells
    run in any order, in any process, and give the same files."""

    method: str
    size: int
    seed: int

    @property
    def key(self) -> str:
        return f"{self.method}@{self.size}/seed{self.seed}"

    def directory(self, out: Path) -> Path:
        return out / "runs" / f"{self.method}-{self.size}-seed{self.seed}"


def _fit_directory(run_dir: Path, fit: int) -> Path:
    """Where a cell keeps its fit number ``fit``: the first in the cell's own directory, as with one fit."""
    return run_dir if fit == 0 else run_dir / f"fit{fit}"


def _adapted(
    run: _Run, name: str, method: AdaptationMethod, sequences: dict[str, torch.Tensor], run_dir: Path, seed: int
) -> tuple[WorldModel, dict[str, Any]]:
    """A method's corrected world model, fitted once and reloaded on a re-run."""
    info_path = run_dir / RUN_FIT_INFO_NAME
    if info_path.exists():
        return method.load(run.base, run_dir), json.loads(info_path.read_text())
    model, result = method.adapt(
        run.base,
        sequences,
        seed=seed,
        config=run.method_configs[name],
        log_dir=run_dir / RUN_FIT_LOG_DIR_NAME,
        quiet=run.quiet,
    )
    method.save(model, run_dir)
    info = {
        "held_out_kl_base": result.held_out_kl_base,
        "held_out_kl_best": result.held_out_kl_best,
        "best_step": result.best_step,
        "steps": result.steps,
        "seconds": result.seconds,
    }
    write_text(info_path, json.dumps(info, indent=2) + "\n")
    return model, info


def _target_policy(
    run: _Run,
    name: str,
    models: list[WorldModel],
    sequences: dict[str, torch.Tensor],
    run_dir: Path,
    seed: int,
    size: int,
) -> Policy:
    """A policy trained in the imagination of ``models`` (the cell's fits; fresh, or the simulation policy
    further), once; a re-run loads it."""
    policy_path = run_dir / ACTOR_CRITIC_NAME
    if not policy_path.exists():
        torch.manual_seed(seed)
        config = dataclasses.replace(run.policy_config, seed=seed)
        options = {"ac_config": run.ac_config, "log_dir": run_dir / "policy_logs", "quiet": run.quiet}
        if make_method(name).continues_simulation_policy:
            start = load_actor_critic(run.pretrained / ACTOR_CRITIC_NAME)
            actor_critic = train_policy(models[0], sequences, config, actor_critic=start, **options)
        elif config.selects or len(models) > 1:
            selection = train_candidates(models, sequences, config, SelectionConfig(), **options)
            actor_critic = selection.actor_critic
            write_text(run_dir / SELECTION_NAME, json.dumps(selection.to_dict(), indent=2) + "\n")
        else:
            actor_critic = train_policy(models[0], sequences, config, **options)
        save_actor_critic(actor_critic, policy_path, extra={"method": name, "transitions": size})
    return Policy(run.base, load_actor_critic(policy_path).actor)


def _cell_row(run: _Run, cell: _Cell, sequences: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Adapt (``fits`` times), train a policy in imagination and evaluate it in the target, for one cell; returns
    its results row, whose ``fit`` is that of the fit the kept policy was trained in."""
    method, run_dir = make_method(cell.method), cell.directory(run.out)
    fits = run.config.fits if method.trains_policy and not method.continues_simulation_policy else 1
    adapted = [
        _adapted(run, cell.method, method, sequences, _fit_directory(run_dir, k), cell.seed + k * FIT_SEED_STRIDE)
        for k in range(fits)
    ]
    models, infos = [model for model, _ in adapted], [info for _, info in adapted]
    policy = (
        _target_policy(run, cell.method, models, sequences, run_dir, cell.seed, cell.size)
        if method.trains_policy
        else run.sim_policy
    )
    selection = None
    if (run_dir / SELECTION_NAME).exists():  # the candidates' scores, beside the chosen policy's return
        selection = json.loads((run_dir / SELECTION_NAME).read_text())
    fit = 0 if selection is None else selection["candidates"][selection["chosen"]].get("fit", 0)  # older files: none
    row = run.evaluation(policy, run.config.target, fit=infos[fit], **({"fits": infos} if fits > 1 else {}))
    if selection is not None:
        row["selection"] = selection
    return row


def _cells(config: ExperimentConfig) -> list[_Cell]:
    """Every cell of stages 4-5, in the order a single process runs them."""
    uses_data = [name for name in config.methods if make_method(name).uses_target_data]
    return [
        _Cell(name, size, seed)
        for size in sorted(config.transitions)
        for name in uses_data
        for seed in range(config.seeds)
    ]


def _adapt_all(run: _Run, data_dir: Path) -> Policy | None:
    """Stages 4-5: adapt and train a policy in imagination, per method, data size and seed.

    :returns: The policy of ``export_method``'s first cell, the one that is exported (None if it did not run).
    """
    cells = _cells(run.config)
    todo = [cell for cell in cells if cell.key not in run.results]
    jobs = min(resolve_jobs(run.config.jobs, data_dir), len(todo)) or 1
    run.say(
        f"[4/6] adapting the world model and training policies in imagination: {len(cells)} cell"
        f"{'s' if len(cells) != 1 else ''}, {jobs} at a time"
    )
    progress = _CellProgress(run.say, total=len(cells), done=len(cells) - len(todo))
    for cell in cells:
        if cell not in todo:
            progress.show(cell, run.results[cell.key], ran=False)
    rows = _rows_in_workers(run, data_dir, todo, jobs) if jobs > 1 else _rows_here(run, data_dir, todo)
    for cell, row in rows:
        run.results.put(cell.key, row)
        progress.show(cell, row)
    first = next((cell for cell in cells if cell.method == run.config.export_method), None)
    if first is None:
        return None
    return Policy(run.base, load_actor_critic(first.directory(run.out) / ACTOR_CRITIC_NAME).actor)


def _rows_here(run: _Run, data_dir: Path, todo: list[_Cell]) -> Iterator[tuple[_Cell, dict[str, Any]]]:
    """Each cell's row, run one after the other in this process."""
    sequences: dict[int, dict[str, torch.Tensor]] = {}
    for cell in todo:
        if cell.size not in sequences:
            sequences = {
                cell.size: reward_free_sequences(data_dir, run.config.sequence_length, max_transitions=cell.size)
            }
        yield cell, _cell_row(run, cell, sequences[cell.size])


# -- cells in worker processes ------------------------------------------------------------------

#: What one worker of a comparison holds in memory, besides the target data: the interpreter, torch, the
#: plugins and a CPU-sized model (measured at about 0.6 GiB resident on the pendulum; doubled for margin).
_WORKER_MEMORY = 1.2 * 2**30


def resolve_jobs(jobs: int, data_dir: Path | None = None) -> int:
    """``jobs`` itself, or for 0 the cores this process may use, capped so that every worker fits in
    the memory available now (each holds its own copy of the target data in ``data_dir``)."""
    if jobs > 0:
        return jobs
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    data = sum(path.stat().st_size for path in data_dir.rglob("*") if path.is_file()) if data_dir else 0
    try:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf (Windows): cores alone
        return max(1, cores)
    return max(1, min(cores, int(available // (_WORKER_MEMORY + 2 * data))))


@dataclass(frozen=True)
class _WorkerSpec:
    """What a worker needs to rebuild the run's shared state from disk (paths and configs, no tensors)."""

    config: ExperimentConfig
    out: Path
    data_dir: Path
    pretrained: Path
    method_configs: dict[str, Any]
    policy_config: PolicyTrainConfig
    ac_config: ActorCriticConfig


# One worker process's run and target sequences, loaded on its first cell and kept for the next.
_worker_state: dict[str, Any] = {}


def _worker_start() -> None:
    # Several workers share the cores: one thread each, as the command's default.
    torch.set_num_threads(1)


def _worker_cell(spec: _WorkerSpec, cell: _Cell) -> dict[str, Any]:
    """Run one cell in a worker process; any error comes back as one line naming the cell."""
    try:
        if _worker_state.get("spec") != spec:
            base = load_world_model(spec.pretrained / "world_model")
            # No results.json here: the worker returns rows and the parent alone writes them.
            run = _Run(
                spec.config,
                spec.out,
                None,
                spec.method_configs,
                spec.policy_config,
                spec.ac_config,
                True,
                lambda _: None,
            )
            run.pretrained, run.base = spec.pretrained, base
            run.sim_policy = Policy(base, load_actor_critic(spec.pretrained / ACTOR_CRITIC_NAME).actor)
            _worker_state.clear()
            _worker_state.update(spec=spec, run=run, sequences={})
        sequences = _worker_state["sequences"]
        if cell.size not in sequences:
            sequences.clear()
            sequences[cell.size] = reward_free_sequences(
                spec.data_dir, spec.config.sequence_length, max_transitions=cell.size
            )
        return _cell_row(_worker_state["run"], cell, sequences[cell.size])
    except Exception as exc:  # noqa: BLE001 - the parent re-raises it; not every error class survives pickling
        raise CellError(f"{cell.key} failed in a worker process: {type(exc).__name__}: {exc}") from None


def _rows_in_workers(run: _Run, data_dir: Path, todo: list[_Cell], jobs: int) -> Iterator[tuple[_Cell, dict[str, Any]]]:
    """Each cell's row as its worker finishes it; the first failure cancels the cells not yet started."""
    spec = _WorkerSpec(
        run.config, run.out, data_dir, run.pretrained, run.method_configs, run.policy_config, run.ac_config
    )
    # spawn, not fork: a forked child inherits torch's thread pools and locks mid-use.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context, initializer=_worker_start) as pool:
        futures = {pool.submit(_worker_cell, spec, cell): cell for cell in todo}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            # Stop at once rather than wait minutes for the cells in flight; a re-run resumes them.
            # (Python 3.14 has pool.terminate_workers(); before it, the processes themselves.)
            pool.shutdown(wait=False, cancel_futures=True)
            for process in list((pool._processes or {}).values()):
                process.terminate()
            raise


class _CellProgress:
    """One line per finished cell: its return, cells done / total, the time spent and the ETA."""

    def __init__(self, say: Callable[[str], Any], *, total: int, done: int) -> None:
        self.say, self.total, self.done, self.skipped = say, total, done, done
        self.started = time.monotonic()

    def show(self, cell: _Cell, row: dict[str, Any], *, ran: bool = True) -> None:
        line = _row_line(cell.key, row)
        if ran:
            self.done += 1
            spent = time.monotonic() - self.started
            eta = spent / (self.done - self.skipped) * (self.total - self.done)
            line += f"   [{self.done}/{self.total} cells, {clock(spent)} spent, ETA {clock(eta)}]"
        self.say(line)


def _export(run: _Run, policy: Policy) -> None:
    """Stage 6: the deployable artefact: ONNX, checked against torch before it is written, and run in the target."""
    onnx_dir = run.out / "onnx"
    run.say(f"[6/6] exporting the {run.config.export_method} policy to ONNX -> {onnx_dir}")
    if "onnx_episode_max_abs_diff" not in run.results or not (onnx_dir / ONNX_NAME).exists():
        # Whole episodes in the target too, the ONNX runner fed the torch policy's observations step by step.
        check = export_and_verify(policy, onnx_dir, env_id=run.config.target, seed=EVAL_SEED, env_kwargs=run.env_kwargs)
        run.results.put("onnx_max_abs_diff", check["max_abs_diff"])
        run.results.put("onnx_episode_max_abs_diff", check["episode_max_abs_diff"])
    run.evaluated("onnx", OnnxPolicy(onnx_dir), run.config.target)


def run_experiment(
    config: ExperimentConfig,
    out_dir: str | Path,
    *,
    method_configs: Mapping[str, Any] | None = None,
    pretrain_config: PretrainConfig | None = None,
    policy_config: PolicyTrainConfig | None = None,
    ac_config: ActorCriticConfig | None = None,
    quiet: bool = False,
    say=print,
) -> dict[str, Any]:
    """Run (or resume) every stage and return the results dict (also in ``out_dir/results.json``).

    :param method_configs: Method id -> its config, an instance of the class the method was registered with; a
        method run without one takes that class's defaults. ``results.json`` records each method's config.

    With several ``backbones`` each runs in ``out_dir/<backbone>/``, ``out_dir/results.md`` holds
    one table of them all, and the return value maps each backbone to its results.
    """
    config = config.resolved()
    options = {
        "pretrain_config": pretrain_config,
        "method_configs": _method_configs(config, method_configs or {}),
        "policy_config": policy_config or PolicyTrainConfig(),
        "ac_config": ac_config,
        "quiet": quiet,
        "say": say,
    }
    if not config.backbones:
        return _run_one(config, Path(out_dir), **options)
    runs = {}
    for backbone in config.backbones:
        own = config.for_backbone(backbone)
        configs = {name: options["method_configs"][name] for name in (ZERO_SHOT, *own.methods)}
        run = functools.partial(_run_one, own, **{**options, "method_configs": configs})
        if len(config.backbones) == 1:
            return run(Path(out_dir))
        say(f"== {backbone}")
        runs[backbone] = run(Path(out_dir) / backbone)
    table = combined_table(runs)
    write_text(Path(out_dir) / "results.md", table + "\n")
    say(table)
    return runs


def _method_configs(config: ExperimentConfig, given: Mapping[str, Any]) -> dict[str, Any]:
    """The config of every method the run evaluates: the one given, else its registered class's defaults."""
    for name, value in given.items():
        expected = method_config_class(name)  # NameNotFound, with the closest match, for an unknown method
        if expected is None or not isinstance(value, expected):
            wanted = "no config" if expected is None else f"a {expected.__name__}"
            raise ConfigError(f"method_configs[{name!r}] is {type(value).__name__} {value!r}; {name} takes {wanted}.")
    return {
        name: given[name] if name in given else method_config(name)
        for name in dict.fromkeys((ZERO_SHOT, *config.all_methods))
    }


def _run_one(
    config: ExperimentConfig,
    out: Path,
    *,
    pretrain_config: PretrainConfig | None,
    method_configs: dict[str, Any],
    policy_config: PolicyTrainConfig,
    ac_config: ActorCriticConfig | None,
    quiet: bool,
    say: Callable[[str], Any],
) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    run = _Run(config, out, _Results(out / RESULTS_NAME), method_configs, policy_config, ac_config, quiet, say)
    started = time.monotonic()
    run.pretrained = _pretrained(run, pretrain_config)
    say(f"[1/6] simulation-pretrained model and policy: {run.pretrained}")
    run.base = load_world_model(run.pretrained / "world_model")
    sim_actor_critic = load_actor_critic(run.pretrained / ACTOR_CRITIC_NAME)
    run.sim_policy = Policy(run.base, sim_actor_critic.actor)
    run.ac_config = ac_config or sim_actor_critic.config
    _check_settings(run.results, _settings(config, method_configs, policy_config, run.ac_config))
    _references(run)
    exported = _adapt_all(run, _target_data(run))
    if config.export and exported is not None:
        _export(run, exported)
    run.results.put("seconds", run.results.data.get("seconds", 0.0) + time.monotonic() - started)
    table = comparison_table(run.results.data)
    write_text(out / "results.md", table + "\n")
    say(table)
    return run.results.data


# -- the settings a run records and a re-run checks ------------------------------------------------


def _settings(
    config: ExperimentConfig, method_configs: Mapping[str, Any], policy: PolicyTrainConfig, ac: ActorCriticConfig
) -> dict[str, Any]:
    """Every config the kept stages depend on, by group (each method's under ``methods``)."""
    return {
        "experiment": config,
        "methods": {name: value for name, value in method_configs.items() if value is not None},
        "policy": policy,
        "actor_critic": ac,
    }


def _default_settings(methods: Mapping[str, Any]) -> dict[str, Any]:
    """The settings of a run left at every default (what a kept run that lacks a setting had)."""
    return _settings(
        ExperimentConfig(), {name: method_config(name) for name in methods}, PolicyTrainConfig(), ActorCriticConfig()
    )


def _leaves(config: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    """A config's settings by path, as results.json holds them; a nested config's fields one by one."""
    leaves: dict[tuple[str, ...], Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            leaves.update(_leaves(value, (*path, item.name)))
        else:
            leaves[(*path, item.name)] = json.loads(json.dumps(value))
    return leaves


_MISSING = object()


def _at(data: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return _MISSING
        data = data[key]
    return data


def _kept_value(kept: dict[str, Any], where: tuple[str, ...], path: tuple[str, ...], default: Any) -> Any:
    """The kept run's value of setting ``path`` of config ``where``; its default if the run does not record it.

    A run written before methods had configs of their own recorded a method's settings by group at the top
    (``residual``, ``fit``; ``finetune``, a method's own fields, under its id): they are read there.
    """
    value = _at(kept, (*where, *path))
    if value is _MISSING and where[0] == "methods" and "methods" not in kept:
        value = _at(kept, path if len(path) > 1 else (where[1], *path))
    return default if value is _MISSING else value


def _check_settings(results: _Results, settings: dict[str, Any]) -> None:
    """Refuse to resume a run whose kept stages were made with other settings, then record these.

    A setting the kept run does not record (added by a later version) counts as its default; a method it did not
    run is new, not changed.
    """
    if "settings" in results:
        kept = results["settings"]
        defaults = _default_settings(settings["methods"])
        configs = [((group,), config) for group, config in settings.items() if group != "methods"]
        configs += [
            (("methods", name), config)
            for name, config in settings["methods"].items()
            if "methods" not in kept or name in kept["methods"]
        ]
        changed = []
        for where, config in configs:
            default = _leaves(_at(defaults, where))
            for path, value in _leaves(config).items():
                before = _kept_value(kept, where, path, default.get(path))
                if path[0] not in _EXTENDABLE.get(where[0], ()) and before != value:
                    changed.append(f"{'.'.join((*where, *path))} ({before!r} -> {value!r})")
        if changed:
            raise ConfigError(
                f"{results.path} was written with other settings: {', '.join(changed)}. Its finished stages "
                "would be reused as they are; pass a new --out directory (or delete this one) to run with these."
            )
    results.put("settings", _as_json(settings))


def _as_json(settings: dict[str, Any]) -> dict[str, Any]:
    return {
        group: {name: config_to_dict(value) for name, value in config.items()}
        if group == "methods"
        else config_to_dict(config)
        for group, config in settings.items()
    }
