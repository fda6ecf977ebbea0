"""Data-parallel training across processes: who this process is (rank, world size, device), the lifetime of
torchrun's process group or of one this process spawns on its own cores, and the few collectives training needs.

What is trained and when is ``pretraining.py`` and ``model_training.py``. Without torchrun's variables
in the environment no process group starts and every collective here returns its input unchanged.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.hooks import RemovableHandle

from latent_residual.errors import ConfigError, LatentResidualError, WorkerError

#: The variables torchrun sets for every process it starts (``LOCAL_RANK``: the process's index on its node).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run; the default is a run of one process."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes checkpoints, metrics and progress (rank 0)."""
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        """Whether gradients are averaged with other processes."""
        return self.world_size > 1


def ranks_from_environment(environ: Mapping[str, str] | None = None) -> Ranks:
    """This process's ranks from torchrun's variables; one process when they are absent.

    :raises ConfigError: A variable is set but is no integer, or the ranks do not fit the world size.
    """
    environ = os.environ if environ is None else environ
    if "WORLD_SIZE" not in environ and "RANK" not in environ:
        return Ranks()
    values = {}
    for name in TORCHRUN_VARIABLES:
        text = environ.get(name, "0")
        try:
            values[name] = int(text)
        except ValueError:
            raise ConfigError(
                f"Environment variable {name} must be an integer (torchrun sets it), got {text!r}."
            ) from None
    ranks = Ranks(rank=values["RANK"], world_size=values["WORLD_SIZE"], local_rank=values["LOCAL_RANK"])
    if ranks.world_size < 1 or not 0 <= ranks.rank < ranks.world_size or ranks.local_rank < 0:
        raise ConfigError(
            f"torchrun's variables do not fit together: RANK={ranks.rank}, WORLD_SIZE={ranks.world_size}, "
            f"LOCAL_RANK={ranks.local_rank} (0 <= RANK < WORLD_SIZE expected)."
        )
    return ranks


def rank_device(device: str, ranks: Ranks) -> str:
    """The device this rank trains on: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process).

    :raises ConfigError: A CUDA device with an index was named for a run of several processes
        (they would all share that one GPU).
    """
    parsed = torch.device(device)
    if not ranks.parallel or parsed.type != "cuda":
        return device
    if parsed.index is not None:
        raise ConfigError(
            f"device {device!r} names one GPU, but torchrun started {ranks.world_size} processes; pass "
            "device 'cuda' and each process takes cuda:LOCAL_RANK."
        )
    return f"cuda:{ranks.local_rank}"


def check_model_device(device: torch.device, ranks: Ranks) -> None:
    """Refuse a CUDA model that sits on another process's GPU under torchrun (every rank would train
    on that one GPU, and NCCL fails or hangs on the duplicate).

    :raises ConfigError: Naming the model's device and the one this rank trains on.
    """
    own = rank_device("cuda", ranks)
    if ranks.parallel and device.type == "cuda" and device != torch.device(own):
        raise ConfigError(
            f"the model sits on {device}, but this process (LOCAL_RANK={ranks.local_rank}) trains on {own}; "
            f"move it there first (model.to({own!r}))."
        )


@contextmanager
def process_group(device: str) -> Iterator[tuple[Ranks, str]]:
    """Join torchrun's process group for the block; yields the ranks and the device this rank trains on.
    Without torchrun it yields one process and ``device``.

    On CUDA devices tensors on the GPU go through NCCL and the small CPU ones (flags, metrics)
    through gloo; on the CPU everything goes through gloo.

    A group the caller already started is used and left open; one started here is closed on exit.
    """
    ranks = ranks_from_environment()
    if not ranks.parallel:
        yield ranks, device
        return
    device = rank_device(device, ranks)
    started = not dist.is_initialized()
    if started:
        if torch.device(device).type == "cuda":
            torch.cuda.set_device(device)
            dist.init_process_group("cpu:gloo,cuda:nccl")
        else:
            dist.init_process_group("gloo")
    if dist.get_world_size() != ranks.world_size:
        raise ConfigError(
            f"The running process group has {dist.get_world_size()} processes; WORLD_SIZE says {ranks.world_size}."
        )
    try:
        yield ranks, device
    finally:
        if started:
            dist.destroy_process_group()


#: How long a collective waits for a rank before it fails (a worker that died is noticed sooner, by its socket).
LOCAL_GROUP_TIMEOUT = timedelta(minutes=5)


@contextmanager
def _joined_group(init_method: str, rank: int, world_size: int) -> Iterator[Ranks]:
    """Join the gloo group at ``init_method`` as ``rank`` of ``world_size`` for the block."""
    dist.init_process_group(
        "gloo", init_method=init_method, rank=rank, world_size=world_size, timeout=LOCAL_GROUP_TIMEOUT
    )
    try:
        yield Ranks(rank=rank, world_size=world_size, local_rank=rank)
    finally:
        dist.destroy_process_group()


@contextmanager
def spawned_group(world_size: int, worker: Callable[..., None], args: tuple[Any, ...]) -> Iterator[Ranks]:
    """Run the block as rank 0 of a gloo group of ``world_size`` processes on this machine: the others are
    spawned, each with one torch thread, and run ``worker(ranks, *args)`` as ranks 1, 2, ...

    ``args`` travel to the workers by pickling between this process and its children (no file is read);
    their tensors arrive in memory shared with this process's, so a worker copies what it trains. When a
    worker fails, its error is raised here instead of the broken collective it causes.

    :raises ConfigError: A process group is already running (torchrun's): its ranks train alone.
    """
    if dist.is_initialized():
        raise ConfigError(
            f"{world_size} local workers cannot start inside a running process group (torchrun): use 1 there."
        )
    with tempfile.TemporaryDirectory(prefix="latent-residual-group-") as tmp:
        init_method = (Path(tmp) / "store").as_uri()
        workers = mp.start_processes(
            _run_worker,
            args=(init_method, world_size, worker, args),
            nprocs=world_size - 1,
            join=False,
            start_method="spawn",
        )
        try:
            with _joined_group(init_method, 0, world_size) as ranks:
                yield ranks
            workers.join()
        except BaseException as exc:
            failure = _stop_workers(workers)
            # Our own error (a diverged loss every rank sees) stays; a broken collective is the worker's doing.
            if failure and not isinstance(exc, LatentResidualError):
                raise WorkerError(failure) from exc
            raise


def _run_worker(
    index: int, init_method: str, world_size: int, worker: Callable[..., None], args: tuple[Any, ...]
) -> None:
    """A spawned process of :func:`spawned_group`: join as rank ``index + 1``, run ``worker``, and end at once.

    Ending with ``os._exit`` skips Python's shutdown, during which gloo's threads, alive past the group's
    end, abort the process ("terminate called without an active exception", pytorch/pytorch#38228; the
    same reason as ``cli.main._leave_torchrun_worker``). A worker's error is raised normally: torch
    records it for the parent before the process ends.
    """
    torch.set_num_threads(1)
    with _joined_group(init_method, index + 1, world_size) as ranks:
        worker(ranks, *args)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _stop_workers(workers: mp.ProcessContext) -> str:
    """Stop the workers; returns what the first failed one said (its error's last line), or ''."""
    try:
        workers.join(timeout=10)
    except mp.ProcessRaisedException as failed:
        return f"training worker {failed.error_index + 1} failed: {failed.msg.strip().splitlines()[-1]}"
    except mp.ProcessExitedException as exited:
        return f"training worker {exited.error_index + 1} exited with code {exited.exit_code}"
    finally:
        for process in workers.processes:
            if process.is_alive():
                process.terminate()
    return ""


def rank_seed(seed: int, ranks: Ranks) -> int:
    """The seed of this rank's environment and sampling: ``seed`` itself on rank 0 (a run of one process
    is unchanged), a distinct stream derived from ``(seed, rank)`` on the others."""
    if ranks.rank == 0:
        return seed
    return int(np.random.SeedSequence([seed, ranks.rank]).generate_state(1)[0] % 2**31)


def data_parallel(module: nn.Module, ranks: Ranks) -> nn.Module:
    """``module`` wrapped in DistributedDataParallel when several processes train, else ``module``.

    DDP copies rank 0's parameters and buffers to every rank here, and averages gradients during
    each backward through the wrapper's forward. A backbone's loss may leave parameters unused
    (a head its loss never reaches): with ``static_graph`` DDP finds them in the first step and
    skips them from then on, without searching the graph at every step as
    ``find_unused_parameters`` would. That holds while every step's loss uses the same
    parameters, which a world model's loss over batches of one layout does.
    """
    if not ranks.parallel:
        return module
    device = next(module.parameters()).device
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, static_graph=True)


def broadcast_from_main(module: nn.Module, ranks: Ranks) -> None:
    """Copy rank 0's parameters and buffers into ``module`` on every rank (networks seeded per rank
    start equal)."""
    if not ranks.parallel:
        return
    with torch.no_grad():
        for tensor in [*module.parameters(), *module.buffers()]:
            dist.broadcast(tensor, src=0)


def average_buffers(module: nn.Module, ranks: Ranks) -> None:
    """Average ``module``'s floating-point buffers over the ranks (running statistics each rank
    updated from its own batch), so every rank holds the same values again."""
    for buffer in module.buffers():
        if buffer.is_floating_point():
            average_in_place(buffer, ranks)


def average_in_place(tensor: Tensor, ranks: Ranks) -> None:
    """Replace ``tensor`` by its mean over the ranks (one all-reduce)."""
    if not ranks.parallel:
        return
    with torch.no_grad():
        dist.all_reduce(tensor)
        tensor.div_(ranks.world_size)


def check_cpu_workers(device: torch.device, workers: int, owner: str) -> None:
    """Refuse ``workers`` > 1 for a model that is not on the CPU: the workers are this machine's cores
    (gloo, shared memory); GPUs train together under torchrun.

    :raises ConfigError: Naming ``owner`` and the device.
    """
    if workers > 1 and device.type != "cpu":
        raise ConfigError(
            f"{owner}: workers={workers} run on this machine's CPU cores, but the model is on {device}; use "
            "workers=1 there, or torchrun for several GPUs (docs/distributed.md)."
        )


def _average_gradients(params: list[Tensor], world_size: int) -> None:
    """Average the gradients of ``params`` in one collective; a parameter without one counts as zero."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([grad.reshape(-1) for grad in grads])
    dist.all_reduce(flat)
    flat.div_(world_size)
    offset = 0
    for param, grad in zip(params, grads):
        param.grad = flat[offset : offset + grad.numel()].view_as(param)
        offset += grad.numel()


def average_gradients_at_step(optimiser: torch.optim.Optimizer, ranks: Ranks) -> RemovableHandle | None:
    """Make ``optimiser.step()`` average its parameters' gradients over the ranks first; returns the hook's
    handle (None for one process), to remove it when the group ends before the optimiser does.

    For networks updated outside DDP (the actor-critics and the disagreement ensemble): each rank's
    step applies the same averaged gradient to the same weights, so the networks stay equal. The
    gradients are averaged as the step finds them, after any clipping the caller did.
    """
    if not ranks.parallel:
        return None
    params = [p for group in optimiser.param_groups for p in group["params"] if p.requires_grad]
    return optimiser.register_step_pre_hook(lambda *_: _average_gradients(params, ranks.world_size))


def all_true(flag: bool, ranks: Ranks) -> bool:
    """Whether ``flag`` holds on every rank (all ranks must ask together)."""
    if not ranks.parallel:
        return flag
    value = torch.tensor([int(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def average_scalars(values: Mapping[str, float | Tensor], ranks: Ranks) -> dict[str, float]:
    """``values`` as floats, averaged over the ranks (every rank must hold the same keys).

    A NaN or infinity on any rank makes the average non-finite on all of them, so every rank sees
    a diverged loss at the same step.
    """
    keys = list(values)
    floats = [float(values[key]) for key in keys]
    if ranks.parallel:
        tensor = torch.tensor(floats, dtype=torch.float64)
        dist.all_reduce(tensor)
        floats = (tensor / ranks.world_size).tolist()
    return dict(zip(keys, floats))


def gather_ints(value: int, ranks: Ranks) -> list[int]:
    """Every rank's ``value``, in rank order."""
    if not ranks.parallel:
        return [value]
    values = [torch.zeros((), dtype=torch.int64) for _ in range(ranks.world_size)]
    dist.all_gather(values, torch.tensor(value, dtype=torch.int64))
    return [int(v) for v in values]


def check_in_sync(module: nn.Module, name: str, ranks: Ranks) -> None:
    """Refuse to go on when the ranks' copies of ``module`` differ (equal updates from equal weights must
    keep them equal; a difference means a rank trained on something the others did not see).

    :raises WorkerError: Naming ``name`` and how many of its values differ.
    """
    if not ranks.parallel:
        return
    values = [t.detach().reshape(-1).double() for t in module.state_dict().values() if t.is_floating_point()]
    flat = torch.cat(values)
    low, high = flat.clone(), flat.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    differ = int((low != high).sum())
    if differ:
        raise WorkerError(
            f"the {ranks.world_size} workers' copies of the {name} differ after training in {differ} of "
            f"{flat.numel()} values; the result is not one model."
        )


def barrier(ranks: Ranks) -> None:
    """Wait until every rank arrives here (readers of rank 0's files wait for its writes)."""
    if ranks.parallel:
        dist.barrier()
