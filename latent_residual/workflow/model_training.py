"""Training a world model on its own loss: the optimiser step (averaged over torchrun's processes, in
bf16 autocast or compiled when asked), and offline training from recorded episodes.

Online pretraining with exploration, which takes the same steps, is ``pretraining.py``; process groups
and collectives are ``distributed.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from latent_residual.contract import WorldModel
from latent_residual.errors import ConfigError, TrainingDivergedError
from latent_residual.progress import RunLogger
from latent_residual.workflow.distributed import Ranks, average_scalars, data_parallel, process_group, rank_seed
from latent_residual.workflow.replay import ReplayBuffer

#: Autocast dtype of each ``precision`` setting (None: no autocast, float32 throughout).
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def check_step_options(precision: str, compile: bool, device: str | torch.device) -> None:
    """Refuse, before any work, a precision or compilation that ``device`` cannot run.

    :raises ConfigError: Naming the setting, what is allowed and why it cannot run here.
    """
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}.")
    device = torch.device(device)
    if precision == "bf16":
        if not torch.amp.is_autocast_available(device.type):
            raise ConfigError(f"precision 'bf16' needs autocast, which torch has no support for on {device.type!r}.")
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"precision 'bf16' needs a GPU with bfloat16 support; {torch.cuda.get_device_name(device)} has none.")
    if compile and not torch._dynamo.is_dynamo_supported():
        raise ConfigError("compile needs torch.compile, which this Python or platform does not support; drop --compile.")


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
        ranks: Ranks = Ranks(),
    ) -> None:
        check_step_options(precision, compile, model.device())
        self.model, self.optimiser, self.grad_clip, self.ranks = model, optimiser, grad_clip, ranks
        self.autocast_dtype = PRECISIONS[precision]
        loss = data_parallel(WorldModelLoss(model), ranks)
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


def world_model_step(
    model: WorldModel, optimiser: torch.optim.Optimizer, batch: Mapping[str, Tensor], grad_clip: float
) -> dict[str, float]:
    """One fp32 gradient step on the backbone's own loss in this process alone; returns its metrics
    (``loss`` included). See :class:`WorldModelTrainer` for many steps, torchrun, bf16 or compilation."""
    return WorldModelTrainer(model, optimiser, grad_clip).step(batch)


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
    :raises TrainingDivergedError: The loss became NaN or infinite.
    """
    with process_group(model.device().type) as (ranks, _):
        replay = ReplayBuffer(seq_len)
        for episode in episodes:
            replay.add(episode)
        rng = np.random.default_rng(rank_seed(seed, ranks))
        torch.manual_seed(rank_seed(seed, ranks))
        optimiser = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
        trainer = WorldModelTrainer(model, optimiser, grad_clip, precision=precision, compile=compile, ranks=ranks)
        main = ranks.is_main
        with RunLogger(log_dir if main else None, updates, "train world model", quiet=quiet or not main) as run:
            for update in range(1, updates + 1):
                metrics = trainer.step(replay.sample(batch_size, rng, model.device()))
                run.advance()
                if update % 100 == 1 or update == updates:
                    run.log(update, **metrics)
    return model
