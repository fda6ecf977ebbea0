"""Training a world model on its own loss: the optimiser step (averaged over torchrun's processes, in
bf16 autocast or compiled when asked), and offline training from recorded episodes, resumable.

Online pretraining with exploration, which takes the same steps, is ``pretraining.py``; process groups
and collectives are ``distributed.py``.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from latent_residual.checkpoints import load_weights, read_world_model, save_world_model
from latent_residual.contract import WorldModel
from latent_residual.errors import CheckpointError, ConfigError, TrainingDivergedError
from latent_residual.progress import RunLogger
from latent_residual.registry.lookup import backbone_preset, make_backbone, source_backbone
from latent_residual.serialization import (
    load_optimizer_tensors,
    optimizer_tensors,
    read_json_object,
    read_safetensors,
    write_safetensors,
    write_text,
)
from latent_residual.workflow.data.datasets import load_dataset
from latent_residual.workflow.training.distributed import (
    Ranks,
    average_scalars,
    barrier,
    check_cpu_workers,
    check_in_sync,
    check_model_device,
    data_parallel,
    process_group,
    rank_seed,
    ranks_from_environment,
    spawned_group,
)
from latent_residual.workflow.training.replay import ReplayBuffer

WORLD_MODEL_NAME = "world_model"
OPTIMIZERS_NAME = "optimizers.safetensors"
PROGRESS_NAME = "progress.json"
#: Autocast dtype of each ``precision`` setting (None: no autocast, float32 throughout).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
#: The ``compile`` flag's help, shared by the offline and the online pretraining configs.
COMPILE_HELP = (
    "Compile the world model's loss and its backward (torch.compile). The first step takes minutes (the "
    "filter's steps are unrolled into one graph); it pays after a few thousand steps (docs/distributed.md)."
)


def resolve_backbone(env_id: str, backbone: str, preset: str, kwargs: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The backbone id (``backbone``, or the one environment ``env_id`` names) and its kwargs: the named
    ``preset``'s, overridden by ``kwargs``."""
    backbone = backbone or source_backbone(env_id)
    return backbone, {**(backbone_preset(backbone, preset) if preset else {}), **kwargs}


def check_precision(precision: str, owner: str = "") -> None:
    """Refuse a ``precision`` that is not one of ``PRECISIONS``; ``owner`` prefixes the field's name."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{owner}precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")


def check_step_options(precision: str, compile: bool, device: str | torch.device) -> None:
    """Refuse, before any work, a precision or compilation that ``device`` cannot run.

    :raises ConfigError: Naming the setting, what is allowed and why it cannot run here.
    """
    check_precision(precision)
    device = torch.device(device)
    if precision == "bf16":
        if not torch.amp.is_autocast_available(device.type):
            raise ConfigError(f"precision 'bf16' needs autocast, which torch has no support for on {device.type!r}.")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(
                f"precision 'bf16' needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} has none."
            )
    if compile and not torch._dynamo.is_dynamo_supported():
        raise ConfigError(
            "compile needs torch.compile, which this Python or platform does not support; drop --compile."
        )


class WorldModelLoss(nn.Module):
    """A backbone's own loss as a module's forward, so that DistributedDataParallel (whose backward
    averages gradients only after a pass through its forward) and ``torch.compile`` can wrap it."""

    def __init__(self, model: WorldModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return self.model.loss(batch)


class WorldModelTrainer:
    """Optimiser steps on a backbone's own loss.

    Under torchrun (``ranks.parallel``) the loss runs through DDP, so each step applies the
    gradient averaged over every rank's batch: the same step one process would take on all the
    batches at once. ``precision="bf16"`` runs the loss in bfloat16 autocast (the weights, their
    gradients and Adam stay float32); ``compile=True`` compiles the loss's forward and backward.

    :raises ConfigError: A precision or compilation the model's device cannot run.
    """

    def __init__(
        self,
        model: WorldModel,
        optimiser: torch.optim.Optimizer,
        grad_clip: float,
        *,
        precision: str = "fp32",
        compile: bool = False,
        ranks: Ranks | None = None,
    ) -> None:
        check_step_options(precision, compile, model.device())
        self.model, self.optimiser, self.grad_clip, self.ranks = model, optimiser, grad_clip, ranks or Ranks()
        self.autocast_dtype = PRECISIONS[precision]
        loss = data_parallel(WorldModelLoss(model), self.ranks)
        self.loss = torch.compile(loss) if compile else loss

    def step(self, batch: Mapping[str, Tensor]) -> dict[str, float]:
        """One gradient step on ``batch``; returns the loss's metrics (``loss`` included), averaged over the ranks.

        :raises TrainingDivergedError: The loss is NaN or infinite (on any rank); the weights are
            left as they were before this step.
        """
        model = self.model
        model.train()
        dtype = self.autocast_dtype
        with torch.autocast(model.device().type, dtype=dtype, enabled=dtype is not None):
            loss, metrics = self.loss(batch)
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        values = average_scalars({"loss": loss.detach(), **metrics}, self.ranks)
        if not math.isfinite(values["loss"]):
            model.eval()
            bad = ", ".join(f"{key}={value}" for key, value in values.items() if not math.isfinite(value))
            raise TrainingDivergedError(
                f"The world model's loss is not finite ({bad}); training stopped before applying the step. "
                "Lower the learning rate, or check the data for extreme values."
            )
        torch.nn.utils.clip_grad_norm_(model.parameters(), self.grad_clip)
        self.optimiser.step()
        model.eval()
        return values


def train_world_model(
    model: WorldModel,
    episodes: list[Mapping[str, np.ndarray]],
    *,
    updates: int,
    batch_size: int = 16,
    seq_len: int = 64,
    lr: float = 1e-4,
    grad_clip: float = 1000.0,
    seed: int = 0,
    log_dir: str | Path | None = None,
    quiet: bool = False,
    precision: str = "fp32",
    compile: bool = False,
    out_dir: str | Path | None = None,
    checkpoint_every: int = 1000,
    workers: int = 1,
) -> WorldModel:
    """Train ``model`` offline on recorded episodes (for example a dataset's), in place.

    Offline pretraining from a fixed, diverse simulation dataset is far cheaper on a CPU than
    interaction: every second goes into updates. Defaults are the paper's (batch 16 x 64,
    Adam 1e-4, clip 1000).

    Under torchrun every process passes the same ``episodes`` and samples its own ``batch_size``
    windows from them (its seed derived from ``seed`` and its rank); the gradients are averaged,
    so the model ends equal on every rank, and only rank 0 logs to ``log_dir``. A CUDA model must
    sit on the process's own GPU (``cuda:LOCAL_RANK``).

    :param precision: ``fp32``, or ``bf16`` for the loss in bfloat16 autocast.
    :param compile: Compile the loss's forward and backward with ``torch.compile``.
    :param out_dir: Where rank 0 writes a checkpoint every ``checkpoint_every`` updates and at the
        end (``world_model/``, ``optimizers.safetensors``, ``progress.json``); a directory that
        holds one is resumed from it: its weights and optimiser moments are loaded into ``model``
        and training continues up to ``updates``.
    :param workers: Processes on this machine's cores that share each update's ``batch_size`` windows
        (spawned here, one torch thread each, gradients averaged as under torchrun); the result depends
        on this number, not on the cores. A script calling this with ``workers`` > 1 needs Python's
        ``if __name__ == "__main__":`` guard.
    :raises ConfigError: A CUDA model on another process's GPU under torchrun; ``workers`` > 1 under torchrun,
        or ``batch_size`` that does not divide evenly among them.
    :raises TrainingDivergedError: The loss became NaN or infinite.
    """
    options = dict(
        updates=updates, seq_len=seq_len, lr=lr, grad_clip=grad_clip, seed=seed, precision=precision,
        compile=compile, out_dir=out_dir, checkpoint_every=checkpoint_every,
    )  # fmt: skip
    check_cpu_workers(model.device(), workers, "train_world_model")
    if workers > 1:
        if batch_size % workers:
            raise ConfigError(f"batch_size ({batch_size}) must divide evenly among {workers} workers.")
        if ranks_from_environment().parallel:
            raise ConfigError(f"workers={workers} cannot start under torchrun, whose processes train together already.")
        options["batch_size"] = batch_size // workers
        with spawned_group(workers, _model_worker, (model, episodes, options)) as ranks:
            return _train_on_ranks(model, episodes, ranks, log_dir=log_dir, quiet=quiet, **options)
    check_model_device(model.device(), ranks_from_environment())
    with process_group(model.device().type) as (ranks, _):
        return _train_on_ranks(model, episodes, ranks, batch_size=batch_size, log_dir=log_dir, quiet=quiet, **options)


def _model_worker(
    ranks: Ranks, model: WorldModel, episodes: list[Mapping[str, np.ndarray]], options: dict[str, Any]
) -> None:
    """A spawned worker of :func:`train_world_model` with ``workers`` > 1; it trains its own copy of ``model``."""
    _train_on_ranks(copy.deepcopy(model), episodes, ranks, log_dir=None, quiet=True, **options)


def _train_on_ranks(
    model: WorldModel,
    episodes: list[Mapping[str, np.ndarray]],
    ranks: Ranks,
    *,
    updates: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    grad_clip: float,
    seed: int,
    log_dir: str | Path | None,
    quiet: bool,
    precision: str,
    compile: bool,
    out_dir: str | Path | None,
    checkpoint_every: int,
) -> WorldModel:
    """:func:`train_world_model`'s loop on this rank (every rank of a group runs it together)."""
    replay = ReplayBuffer(seq_len)
    for episode in episodes:
        replay.add(episode)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
    out = Path(out_dir) if out_dir is not None else None
    done = _resume(model, optimiser, out) if out is not None else 0
    stream = rank_seed(seed, ranks)
    if done:  # a resumed run draws fresh batches, not the first run's again
        stream = int(np.random.SeedSequence([stream, done]).generate_state(1)[0])
    rng = np.random.default_rng(stream)
    torch.manual_seed(stream)
    trainer = WorldModelTrainer(model, optimiser, grad_clip, precision=precision, compile=compile, ranks=ranks)
    main = ranks.is_main
    log_dir = log_dir if main else None
    with RunLogger(log_dir, updates, "train world model", quiet=quiet or not main, initial=min(done, updates)) as run:
        for update in range(done + 1, updates + 1):
            metrics = trainer.step(replay.sample(batch_size, rng, model.device()))
            run.advance()
            if update % 100 == 1 or update == updates:
                run.log(update, **metrics)
            if out is not None and update % checkpoint_every == 0 and update < updates:
                _checkpoint(model, optimiser, out, update, False, ranks)
    if out is not None and updates > done:
        _checkpoint(model, optimiser, out, updates, True, ranks)
    check_in_sync(model, "world model", ranks)
    return model


def read_progress(out: Path) -> dict[str, Any]:
    """The ``progress.json`` of the run directory ``out``; empty when no checkpoint was written yet.

    :raises CheckpointError: The file is not a JSON object.
    """
    path = out / PROGRESS_NAME
    if not path.exists():
        return {}
    return read_json_object(path, error=CheckpointError, hint="the run directory is corrupt")


def read_optimiser_state(out: Path) -> dict[str, Tensor]:
    """The tensors :func:`write_run_state` wrote to ``out``'s optimiser file (moments, and any extra state).

    :raises CheckpointError: The file is missing, truncated or no safetensors file.
    """
    tensors, _ = read_safetensors(out / OPTIMIZERS_NAME, error=CheckpointError)
    return tensors


def write_run_state(
    out: Path,
    model: WorldModel,
    model_extra: Mapping[str, Any],
    optimiser_state: dict[str, Tensor],
    progress: Mapping[str, Any],
) -> None:
    """Write a training run's checkpoint into ``out``: the world model, the optimiser state and, last
    (its presence marks a checkpoint to resume from), ``progress.json``; each file atomically."""
    save_world_model(model, out / WORLD_MODEL_NAME, extra=dict(model_extra))
    write_safetensors(out / OPTIMIZERS_NAME, optimiser_state, {"format": "latent-residual-optimizers"})
    write_text(out / PROGRESS_NAME, json.dumps(progress, indent=2) + "\n")


def _resume(model: WorldModel, optimiser: torch.optim.Optimizer, out: Path) -> int:
    """Load the checkpoint in ``out`` (if any) into ``model`` and ``optimiser``; returns its updates."""
    progress = read_progress(out)
    if not progress:
        return 0
    _, tensors = read_world_model(out / WORLD_MODEL_NAME)
    load_weights(model, {key: value.to(model.device()) for key, value in tensors.items()}, out / WORLD_MODEL_NAME)
    load_optimizer_tensors(optimiser, read_optimiser_state(out), "model_opt")
    return int(progress["updates"])


def _checkpoint(
    model: WorldModel, optimiser: torch.optim.Optimizer, out: Path, updates: int, done: bool, ranks: Ranks
) -> None:
    """Rank 0 writes the model, its optimiser and the progress; the others wait."""
    if ranks.is_main:
        write_run_state(
            out,
            model,
            {"model_updates": updates},
            optimizer_tensors(optimiser, "model_opt"),
            {"updates": updates, "done": done},
        )
    barrier(ranks)


@dataclass
class OfflinePretrainConfig:
    """Offline world-model pretraining from a simulation dataset (``pretrain-offline``); defaults are the paper's."""

    backbone: str = field(
        default="",
        metadata={
            "help": "Backbone id (see `latent-residual plugins`); empty: the one the dataset's environment names."
        },
    )
    backbone_preset: str = field(
        default="", metadata={"help": "A preset the backbone registers (such as 'cpu'); backbone_kwargs override it."}
    )
    backbone_kwargs: dict[str, Any] = field(default_factory=dict, metadata={"help": "Backbone kwargs (JSON)."})
    updates: int = field(
        default=10_000, metadata={"help": "Gradient steps in total (a resumed run continues up to it)."}
    )
    batch_size: int = field(default=16, metadata={"help": "Sequences per batch (under torchrun: per process)."})
    seq_len: int = field(default=64, metadata={"help": "Steps per sequence."})
    lr: float = field(default=1e-4, metadata={"help": "Adam learning rate."})
    grad_clip: float = field(default=1000.0, metadata={"help": "Gradient norm clip."})
    checkpoint_every: int = field(default=1000, metadata={"help": "Updates between checkpoints."})
    seed: int = field(default=0, metadata={"help": "Seed for the networks and the batches (under torchrun, rank 0's)."})
    device: str = field(
        default="cpu", metadata={"help": "Torch device ('cuda' under torchrun: each process takes cuda:LOCAL_RANK)."}
    )
    precision: str = field(
        default="fp32", metadata={"help": "Loss precision: fp32, or bf16 (bfloat16 autocast; weights stay fp32)."}
    )
    compile: bool = field(default=False, metadata={"help": COMPILE_HELP})

    def __post_init__(self) -> None:
        for name in ("updates", "batch_size", "seq_len", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"OfflinePretrainConfig.{name} must be >= 1, got {getattr(self, name)!r}.")
        if not self.lr > 0 or not self.grad_clip > 0:
            raise ConfigError(
                f"OfflinePretrainConfig.lr and grad_clip must be > 0, got {self.lr!r} and {self.grad_clip!r}."
            )
        check_precision(self.precision, "OfflinePretrainConfig.")


def pretrain_offline(
    config: OfflinePretrainConfig, data: str | Path, out_dir: str | Path, *, quiet: bool = False
) -> WorldModel:
    """Train a world model on the dataset at ``data`` into ``out_dir`` (``world_model/``, metrics, checkpoints);
    re-running with the same ``out_dir`` resumes; data-parallel under torchrun (see :func:`train_world_model`)."""
    dataset = load_dataset(data)
    backbone, kwargs = resolve_backbone(
        str(dataset.info.get("env_id", "")), config.backbone, config.backbone_preset, config.backbone_kwargs
    )
    with process_group(config.device) as (_, device):
        torch.manual_seed(config.seed)
        model = make_backbone(backbone, dataset.observation_space, dataset.action_space, **kwargs).to(device)
        return train_world_model(
            model,
            dataset.episodes,
            updates=config.updates,
            batch_size=config.batch_size,
            seq_len=config.seq_len,
            lr=config.lr,
            grad_clip=config.grad_clip,
            seed=config.seed,
            log_dir=out_dir,
            quiet=quiet,
            precision=config.precision,
            compile=config.compile,
            out_dir=out_dir,
            checkpoint_every=config.checkpoint_every,
        )
