"""Data-parallel pretraining: gradients averaged over 2 CPU processes (gloo, loopback) equal one process's
gradients over the whole batch; pretraining under torchrun to the end and resumed; bf16 and compile flags."""

from __future__ import annotations

import copy
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import click
import gymnasium
import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from conftest import TINY_AC, drift_sequences
from lr_testplugin.gru import GRUWorldModel
from safetensors.torch import load_file, save_file

from latent_residual import ConfigError, TrainingDivergedError, make_backbone
from latent_residual.actor_critic import ActorCriticConfig
from latent_residual.errors import WorkerError
from latent_residual.workflow.cli.main import main
from latent_residual.workflow.training.distributed import (
    Ranks,
    average_gradients_at_step,
    check_cpu_workers,
    check_model_device,
    process_group,
    rank_device,
    ranks_from_environment,
)
from latent_residual.workflow.training.model_training import WorldModelLoss, WorldModelTrainer, train_world_model
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_policy
from latent_residual.workflow.training.pretraining import _PretrainRun

OBSERVATIONS = gymnasium.spaces.Dict(
    {
        "orientation": gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32),
        "velocity": gymnasium.spaces.Box(-10.0, 10.0, (1,), np.float32),
    }
)
ACTIONS = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
BACKBONES = ("draw-v0", "rssm-v0")
STEPS, BATCH, LENGTH = 3, 4, 8  # BATCH splits into two halves of equal size: equal-weight means


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _batch(step: int) -> dict[str, torch.Tensor]:
    """A (BATCH, LENGTH) batch of the pendulum's layout, different at every step."""
    generator = torch.Generator().manual_seed(100 + step)
    batch = {
        "orientation": torch.rand(BATCH, LENGTH, 2, generator=generator) * 2 - 1,
        "velocity": torch.randn(BATCH, LENGTH, 1, generator=generator),
        "action": torch.rand(BATCH, LENGTH, 1, generator=generator) * 2 - 1,
        "reward": torch.rand(BATCH, LENGTH, generator=generator),
        "is_first": torch.zeros(BATCH, LENGTH, dtype=torch.bool),
        "is_terminal": torch.zeros(BATCH, LENGTH, dtype=torch.bool),
    }
    batch["is_first"][:, 0] = True
    return batch


def _half(batch: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    size = BATCH // 2
    return {key: value[rank * size : (rank + 1) * size] for key, value in batch.items()}


def _model(backbone: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model = make_backbone(backbone, OBSERVATIONS, ACTIONS, preset="tiny")
    # A head the loss never reaches: DDP must step over it, and it must stay as it was.
    model.unused_head = torch.nn.Linear(3, 3)
    return model


def _policy_net() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """Stands for an actor-critic or the disagreement ensemble: a network updated outside DDP."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Linear(3, 8), torch.nn.SiLU(), torch.nn.Linear(8, 1))
    return net, torch.optim.Adam(net.parameters(), lr=1e-2)


def _policy_loss(net: torch.nn.Module, step: int, rank: int) -> torch.Tensor:
    inputs = torch.randn(BATCH, 3, generator=torch.Generator().manual_seed(200 + step))
    return net(inputs[rank * BATCH // 2 : (rank + 1) * BATCH // 2]).square().mean()


def _rank_seed(step: int, rank: int) -> int:
    """The seed of the latents each half samples: the 2-process run and the reference draw the same ones."""
    return 1000 * step + rank


def _offline_config(updates: int):
    from latent_residual.workflow.training.model_training import OfflinePretrainConfig

    return OfflinePretrainConfig(
        backbone_kwargs={"preset": "tiny"}, updates=updates, batch_size=2, seq_len=8, checkpoint_every=2, lr=1e-3
    )


def _worker(rank: int, port: int, out: str, data: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    from latent_residual.registry.plugins import load_plugins

    load_plugins()
    with process_group("cpu") as (ranks, device):
        assert ranks == Ranks(rank=rank, world_size=2, local_rank=rank) and device == "cpu"
        tensors = {}
        for backbone in BACKBONES:
            model = _model(backbone)
            optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
            trainer = WorldModelTrainer(model, optimiser, grad_clip=1.0, ranks=ranks)
            for step in range(STEPS):
                torch.manual_seed(_rank_seed(step, rank))
                metrics = trainer.step(_half(_batch(step), rank))
            tensors.update({f"{backbone}/{key}": value for key, value in model.state_dict().items()})
            tensors[f"{backbone}/last_loss"] = torch.tensor(metrics["loss"])
        net, optimiser = _policy_net()
        average_gradients_at_step(optimiser, ranks)
        for step in range(STEPS):
            optimiser.zero_grad()
            _policy_loss(net, step, rank).backward()
            optimiser.step()
        tensors.update({f"policy/{key}": value for key, value in net.state_dict().items()})
        from latent_residual.workflow.training.model_training import pretrain_offline

        pretrain_offline(_offline_config(2), data, f"{out}/offline", quiet=True)
        model = pretrain_offline(_offline_config(4), data, f"{out}/offline", quiet=True)  # resumed
        tensors.update({f"offline/{key}": value for key, value in model.state_dict().items()})
        save_file({key: value.contiguous() for key, value in tensors.items()}, f"{out}/rank{rank}.safetensors")


def _reference(backbone: str) -> tuple[dict[str, torch.Tensor], float]:
    """One process, whole batches: the loss is the mean of the two halves' (each with its rank's latent
    samples), which for a batch-mean loss over equal halves is the whole batch's."""
    model = _model(backbone)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    for step in range(STEPS):
        model.train()
        losses = []
        for rank in range(2):
            torch.manual_seed(_rank_seed(step, rank))
            losses.append(model.loss(_half(_batch(step), rank))[0])
        loss = (losses[0] + losses[1]) / 2
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
    return model.state_dict(), loss.item()


def test_two_processes_average_gradients_as_one_process_on_the_whole_batch(tmp_path, registry):
    from latent_residual import collect, load_world_model

    data = tmp_path / "data"
    collect(
        "dmc/pendulum-swingup-v0", "random", data, transitions=100, env_kwargs={"max_episode_steps": 50}, quiet=True
    )
    mp.spawn(_worker, args=(_free_port(), str(tmp_path), str(data)), nprocs=2, join=True)
    ranks = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(2)]
    assert ranks[0].keys() == ranks[1].keys()
    for key in ranks[0]:  # the copies stay equal
        torch.testing.assert_close(ranks[0][key], ranks[1][key], rtol=0, atol=0, msg=key)
    for backbone in BACKBONES:
        reference, last_loss = _reference(backbone)
        initial = _model(backbone).state_dict()
        moved = 0
        for key, value in reference.items():
            torch.testing.assert_close(
                ranks[0][f"{backbone}/{key}"], value, rtol=1e-5, atol=1e-6, msg=f"{backbone} {key}"
            )
            moved += not torch.equal(value, initial[key])
        assert moved > 10  # the steps changed the weights (the comparison is not between untouched copies)
        assert torch.equal(ranks[0][f"{backbone}/unused_head.weight"], initial["unused_head.weight"])
        assert ranks[0][f"{backbone}/last_loss"].item() == pytest.approx(last_loss, rel=1e-5)
    net, optimiser = _policy_net()
    for step in range(STEPS):
        optimiser.zero_grad()
        ((_policy_loss(net, step, 0) + _policy_loss(net, step, 1)) / 2).backward()
        optimiser.step()
    for key, value in net.state_dict().items():
        torch.testing.assert_close(ranks[0][f"policy/{key}"], value, rtol=1e-5, atol=1e-6, msg=key)
    # Offline pretraining on 2 processes, resumed: rank 0 wrote the checkpoint the ranks ended equal on.
    offline = tmp_path / "offline"
    assert json.loads((offline / "progress.json").read_text()) == {"updates": 4, "done": True}
    saved = load_world_model(offline / "world_model").state_dict()
    for key, value in saved.items():
        torch.testing.assert_close(ranks[0][f"offline/{key}"], value, rtol=0, atol=0, msg=key)
    assert len(list((offline / "tensorboard").glob("events.*"))) == 2  # rank 0's, one per run


def test_offline_pretraining_resumes_from_its_checkpoint(tmp_path, registry, capsys):
    from latent_residual import collect

    data, out = tmp_path / "data", tmp_path / "out"
    collect(
        "dmc/pendulum-swingup-v0", "random", data, transitions=100, env_kwargs={"max_episode_steps": 50}, quiet=True
    )
    flags = ["pretrain-offline", "--data", str(data), "--out", str(out), "--backbone-kwargs", '{"preset": "tiny"}',
             "--batch-size", "2", "--seq-len", "8", "--checkpoint-every", "2"]  # fmt: skip
    assert main([*flags, "--updates", "3"]) == 0
    assert json.loads((out / "progress.json").read_text()) == {"updates": 3, "done": True}
    first = (out / "world_model" / "model.safetensors").read_bytes()
    assert main([*flags, "--updates", "3"]) == 0  # finished: nothing more to do
    assert (out / "world_model" / "model.safetensors").read_bytes() == first
    assert main([*flags, "--updates", "5"]) == 0
    assert json.loads((out / "progress.json").read_text()) == {"updates": 5, "done": True}
    rows = [row.split(",") for row in (out / "metrics.csv").read_text().splitlines()[1:]]
    assert sorted({int(row[0]) for row in rows if row[2] == "loss"}) == [1, 3, 5]
    assert "5 updates; the world model is in" in capsys.readouterr().out


PRETRAIN_FLAGS = [
    "--env-id", "dmc/pendulum-swingup-v0", "--env-kwargs", '{"max_episode_steps": 60}',
    "--backbone-kwargs", '{"preset": "tiny"}', "--prefill", "70", "--train-ratio", "16", "--batch-size", "4",
    "--seq-len", "8", "--imagination-starts", "16", "--disagreement-members", "2", "--checkpoint-every", "80",
    "--ac-hidden", "16", "--ac-layers", "1", "--ac-horizon", "4",
]  # fmt: skip


def _torchrun(out: Path, env_steps: int) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
        "--master-port", str(_free_port()), "-m", "latent_residual.workflow.cli.main", "pretrain", "--out", str(out),
        "--env-steps", str(env_steps), *PRETRAIN_FLAGS,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)


def test_pretrain_under_torchrun_runs_to_the_end_resumes_and_rank_0_writes(tmp_path, capsys):
    out = tmp_path / "run"
    first = _torchrun(out, 160)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("160 env steps") == 1  # the summary line comes from rank 0 alone
    progress = json.loads((out / "progress.json").read_text())
    assert progress["env_steps"] == 160 and progress["done"] and progress["updates"] > 0
    assert progress["world_size"] == 2 and progress["rank_episodes"] == [1, 1]  # 80 steps each, 60-step episodes
    # Each rank kept its own replay shard; the ranks' seeds differ, so their episodes do.
    from latent_residual import load_dataset, load_world_model

    shards = [load_dataset(out / name).episodes for name in ("replay", "replay-rank1")]
    assert [len(shard) for shard in shards] == [1, 1]
    assert not np.array_equal(shards[0][0]["orientation"], shards[1][0]["orientation"])
    assert load_world_model(out / "world_model").backbone_id == "draw-v0"
    # Rank 0 alone logged: one TensorBoard writer, no metric recorded twice at a step.
    assert len(list((out / "tensorboard").glob("events.*"))) == 1
    rows = (out / "metrics.csv").read_text().splitlines()[1:]
    keys = [(row.split(",")[0], row.split(",")[2]) for row in rows]
    assert len(keys) == len(set(keys))
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]
    # Resumed under torchrun: continues from the checkpoint, each rank from its own shard.
    second = _torchrun(out, 300)
    assert second.returncode == 0, second.stderr[-3000:]
    progress = json.loads((out / "progress.json").read_text())
    assert progress["env_steps"] == 300 and progress["rank_episodes"] == [2, 2]
    # A run of 2 processes cannot go on as 1: rank 1's replay shard would be lost.
    assert main(["pretrain", "--out", str(out), "--env-steps", "400", *PRETRAIN_FLAGS]) == 1
    assert "written by a run of 2 process(es)" in capsys.readouterr().err


def test_a_torchrun_worker_ends_without_pythons_shutdown():
    """Under torchrun the command flushes its output and leaves with os._exit: gloo's worker threads, which
    DDP keeps alive past destroy_process_group(), must not ask for the GIL while Python shuts down (the
    SIGABRT "terminate called without an active exception" seen once at the end of a resumed run).
    An atexit hook stands for that shutdown: it must not run, and the output must still arrive."""
    program = (
        "import atexit, sys; atexit.register(lambda: print('python shut down', flush=True)); "
        "from latent_residual.workflow.cli.main import main; "
        "sys.argv = ['latent-residual', '--version']; sys.exit(main())"
    )
    torchrun = {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    for env, shut_down in ((torchrun, False), ({}, True)):
        clean = {key: value for key, value in os.environ.items() if key not in torchrun}
        done = subprocess.run(
            [sys.executable, "-c", program], capture_output=True, text=True, timeout=120, env={**clean, **env}
        )
        assert done.returncode == 0, done.stderr
        assert "latent-residual, version" in done.stdout
        assert ("python shut down" in done.stdout) is shut_down


def test_torchrun_variables_are_read_and_checked():
    assert ranks_from_environment({}) == Ranks()
    assert ranks_from_environment({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == Ranks(1, 4, 1)
    with pytest.raises(ConfigError, match="WORLD_SIZE must be an integer"):
        ranks_from_environment({"RANK": "0", "WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="RANK=4, WORLD_SIZE=4"):
        ranks_from_environment({"RANK": "4", "WORLD_SIZE": "4"})
    assert rank_device("cuda", Ranks(1, 2, 1)) == "cuda:1" and rank_device("cpu", Ranks(1, 2, 1)) == "cpu"
    with pytest.raises(ConfigError, match="names one GPU"):
        rank_device("cuda:0", Ranks(1, 2, 1))


def test_a_cuda_model_on_another_ranks_gpu_is_refused_before_the_group_starts(registry, monkeypatch):
    check_model_device(torch.device("cuda:1"), Ranks(1, 2, 1))
    check_model_device(torch.device("cuda:0"), Ranks())  # one process may use any GPU
    check_model_device(torch.device("cpu"), Ranks(1, 2, 1))
    # The Python API's run, as rank 1 of 2, with a model every rank left on GPU 0 (only its device is asked).
    model = _model("draw-v0")
    monkeypatch.setattr(model, "device", lambda: torch.device("cuda:0"))
    for variable, value in {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=r"sits on cuda:0, but this process \(LOCAL_RANK=1\) trains on cuda:1"):
        train_world_model(model, [], updates=1)


def test_a_cpu_bf16_step_gives_a_finite_loss(registry):
    for backbone in BACKBONES:
        model = _model(backbone)
        trainer = WorldModelTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-3), 1000.0, precision="bf16")
        before = [p.detach().clone() for p in model.parameters()]
        metrics = trainer.step(_batch(0))
        assert np.isfinite(metrics["loss"]) and metrics["loss"] > 0
        assert all(p.dtype == torch.float32 for p in model.parameters())  # autocast: the weights stay fp32
        assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        # The same model and batch in fp32: the loss differs, so the step did run in bfloat16.
        reference = _model(backbone)
        fp32 = WorldModelTrainer(reference, torch.optim.Adam(reference.parameters(), lr=1e-3), 1000.0).step(_batch(0))
        assert fp32["loss"] != metrics["loss"]


def test_a_non_finite_loss_stops_training_before_the_step(registry):
    model = _model("draw-v0")
    trainer = WorldModelTrainer(model, torch.optim.Adam(model.parameters(), lr=1e-3), 1000.0)
    with torch.no_grad():  # a diverged reward head: its loss is NaN, the latents it reads stay finite
        next(p for name, p in model.named_parameters() if name.startswith("reward_head"))[0, 0] = float("inf")
    before = {key: value.clone() for key, value in model.state_dict().items()}
    with pytest.raises(TrainingDivergedError, match="loss is not finite"):
        trainer.step(_batch(0))
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize("backbone", BACKBONES)
def test_the_compiled_loss_is_one_graph_through_the_time_loop(registry, backbone):
    """A host copy or a data-dependent branch in the filter's time loop left the loop to eager code under
    --compile (the RSSM then trained slower compiled than eager on a GPU); only the metrics' one host copy, at
    the very end of the loss, may split the graph. The traced graph gives the eager loss and gradients."""
    batch = {key: value[:, :4].clone() for key, value in _batch(0).items()}  # 4 steps trace twice as fast as 8
    batch["is_first"][1, 2] = True  # an episode starting inside the window: the resets are traced too
    explanation = torch._dynamo.explain(WorldModelLoss(_model(backbone)))(batch)
    breaks = [(frame.name, frame.line) for reason in explanation.break_reasons for frame in reason.user_stack[-1:]]
    assert explanation.graph_count == 1 and len(breaks) == 1 and breaks[0][0] == "world_model_loss", breaks
    assert "tolist" in breaks[0][1]
    losses, gradients = [], []
    for backend in (
        None,
        "aot_eager",
    ):  # aot_eager traces forward and backward as inductor does, with eager's random draws
        model = _model(backbone)
        loss_module = (
            WorldModelLoss(model) if backend is None else torch.compile(WorldModelLoss(model), backend=backend)
        )
        torch.manual_seed(3)
        loss, _ = loss_module(batch)
        loss.backward()
        losses.append(loss.item())
        gradients.append({name: p.grad for name, p in model.named_parameters() if p.grad is not None})
    torch._dynamo.reset()
    assert losses[1] == losses[0]
    # The traced resets at every step add where-nodes to the backward: the same gradients up to rounding.
    torch.testing.assert_close(gradients[1], gradients[0], rtol=1e-5, atol=1e-6)


def test_precision_and_compile_flags_reach_the_training_step(registry, tmp_path, capsys):
    from latent_residual.workflow.cli.commands import _pretrain_configs, add_commands

    group = click.Group()
    add_commands(group)
    arguments = [
        "--out",
        str(tmp_path),
        "--precision",
        "bf16",
        "--compile",
        "--env-id",
        "dmc/pendulum-swingup-v0",
        "--backbone-kwargs",
        '{"preset": "tiny"}',
    ]
    options = group.commands["pretrain"].make_context("pretrain", arguments).params
    config, _ = _pretrain_configs(options)
    assert config.precision == "bf16" and config.compile is True
    # The trainer the pretraining run builds from them, not one built here.
    trainer = _PretrainRun(config.resolved(), ActorCriticConfig(hidden=16, layers=1), tmp_path / "run", Ranks()).trainer
    assert isinstance(trainer.loss, torch._dynamo.eval_frame.OptimizedModule)  # compiled lazily, at the first step
    assert trainer.autocast_dtype == torch.bfloat16
    assert main(["pretrain", "--out", str(tmp_path), "--precision", "fp16"]) == 1
    assert "precision must be one of fp32, bf16; got 'fp16'" in capsys.readouterr().err


# Policy training on this machine's cores: ``PolicyTrainConfig.workers`` spawns the other ranks itself.


class _RewardFailsInWorker(GRUWorldModel):
    """The GRU test model whose reward head raises on rank 1 only: a worker that breaks mid-run."""

    def reward(self, features):
        if torch.distributed.is_initialized() and torch.distributed.get_rank() == 1:
            raise RuntimeError("reward head broke in the worker")
        return super().reward(features)


def _policy(model, workers: int, steps: int = 4):
    return train_policy(
        model,
        drift_sequences(0.1, episodes=8),
        PolicyTrainConfig(steps=steps, starts=16, seed=3, workers=workers),
        ac_config=TINY_AC,
        quiet=True,
    )


def test_policy_workers_train_one_model_the_same_every_time(gru_model):
    before = {key: value.clone() for key, value in gru_model.state_dict().items()}
    first, again = _policy(gru_model, 2), _policy(gru_model, 2)
    # Every rank ends with the same networks (train_policy checks it; a rank whose gradients were not
    # averaged fails that check), and the run is a function of its seed and worker count.
    for key, value in first.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key
    alone = _policy(gru_model, 1)
    assert any(not torch.equal(a, b) for a, b in zip(first.actor.parameters(), alone.actor.parameters()))
    assert all(torch.equal(before[key], value) for key, value in gru_model.state_dict().items())
    assert float(first.return_scale) != 1.0  # the averaged return scale moved


def test_a_failed_policy_worker_is_one_line_naming_it(gru_model):
    broken = copy.deepcopy(gru_model)
    broken.__class__ = _RewardFailsInWorker
    with pytest.raises(WorkerError, match=r"training worker 1 failed: RuntimeError: reward head broke in the worker"):
        _policy(broken, 2)


def test_policy_workers_must_share_the_starts_evenly():
    with pytest.raises(ConfigError, match=r"starts \(10\) must divide evenly among its 3 workers"):
        PolicyTrainConfig(starts=10, workers=3)


def test_world_model_workers_share_the_batch_and_end_as_one_model(registry):
    episodes = [
        {key: value[i].numpy() for key, value in _batch(step).items()} for step in range(2) for i in range(BATCH)
    ]
    start = _model("draw-v0").state_dict()
    trained = []
    for _ in range(2):
        model = _model("draw-v0")
        # Rank 1 checks at the end that its copy equals rank 0's (a WorkerError otherwise).
        train_world_model(model, episodes, updates=3, batch_size=BATCH, seq_len=LENGTH, lr=1e-3, workers=2, quiet=True)
        trained.append(model.state_dict())
    assert all(torch.equal(value, trained[1][key]) for key, value in trained[0].items())
    assert torch.equal(start["unused_head.weight"], trained[0]["unused_head.weight"])  # no loss reaches it
    assert any(not torch.equal(value, trained[0][key]) for key, value in start.items())
    with pytest.raises(ConfigError, match=r"batch_size \(3\) must divide evenly among 2 workers"):
        train_world_model(_model("draw-v0"), episodes, updates=1, batch_size=3, seq_len=LENGTH, workers=2)


def test_workers_on_this_machines_cores_refuse_a_model_off_the_cpu():
    with pytest.raises(ConfigError, match=r"train_policy: workers=2 run on this machine's CPU cores, but the model"):
        check_cpu_workers(torch.device("cuda", 0), 2, "train_policy")
    check_cpu_workers(torch.device("cuda", 0), 1, "train_policy")  # one process: nothing spawned, nothing refused
    check_cpu_workers(torch.device("cpu"), 2, "train_policy")
