"""Benchmark: our DreamerV3 gradient step against sheeprl's, side by side, at sheeprl's ``dreamer_v3_XS`` sizes.

Ours: the RSSM preset ``XS`` (dense 256, one MLP layer, GRU 256, prior/posterior hidden 256, 32 x 32 latent,
255 reward bins) and an actor-critic of sheeprl's XS actor and critic (256 units, one layer) that imagines as
sheeprl does, on DMC pendulum swing-up from state. One gradient step is what pretraining does
(``workflow/training/pretraining.py``, with ``--ac-continuation mode --ac-detach-actor-input``): a replay batch of
16 x 64, the world-model update (Adam, clip 1000), then one actor and one critic update over horizon 15
imagined from every posterior state of the batch. Right after, sheeprl's own training at the same config and
thread count (``../shared/peers/sheeprl_dreamerv3.sh``, which installs sheeprl into ``$SHEEPRL_VENV`` on first
use). It prints both gradient steps/s, the ratio, the FLOPs of one step and the fraction of the CPU's matmul
peak (89 GFLOP/s per core, measured here on a large fp32 matmul) we reach.

Usage::

    SHEEPRL_VENV=/tmp/sheeprl-venv MUJOCO_GL=egl python benchmarks/rssm_vs_sheeprl.py --threads 1
    SHEEPRL_VENV=/tmp/sheeprl-venv MUJOCO_GL=egl python benchmarks/rssm_vs_sheeprl.py --threads 2 --precision fp32 bf16
    python benchmarks/rssm_vs_sheeprl.py --threads 1 --no-sheeprl --profile   # ours only, with a profile
    # ours, the library's imagination
    python benchmarks/rssm_vs_sheeprl.py --threads 1 --no-sheeprl --library-imagination
    # our world-model loss compiled
    SHEEPRL_VENV=/tmp/sheeprl-venv MUJOCO_GL=egl python benchmarks/rssm_vs_sheeprl.py --threads 1 --compile
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from latent_residual import make_backbone
from latent_residual.actor_critic import ActorCritic, ActorCriticConfig
from latent_residual.registry.lookup import make_env
from latent_residual.rollout import posterior_states
from latent_residual.workflow.data.collection import EpisodeCollector
from latent_residual.workflow.training.model_training import WorldModelTrainer
from latent_residual.workflow.training.replay import ReplayBuffer

ENV_ID = "dmc/pendulum-swingup-v0"
#: sheeprl's dreamer_v3_XS actor and critic (``dense_units: 256``, ``mlp_layers: 1``, bias-free hidden Linears,
#: LayerNorm eps 1e-3, lr 3e-5), ``exp=dreamer_v3``'s horizon, and its imagination (the continuation's mode, the
#: actor on detached states, as the sheeprl importer sets them); the rest are the defaults, DreamerV3's as sheeprl's.
XS_ACTOR_CRITIC = ActorCriticConfig(
    hidden=256,
    layers=1,
    horizon=15,
    actor_lr=3e-5,
    critic_lr=3e-5,
    dense_bias=False,
    norm_eps=1e-3,
    continuation="mode",
    detach_actor_input=True,
)
#: One core's fp32 matmul throughput on this CPU (docs/results.md; REFERENCE.md).
PEAK_GFLOPS_PER_CORE = 89.0
SHEEPRL_SCRIPT = Path(__file__).resolve().parents[2] / "shared" / "peers" / "sheeprl_dreamerv3.sh"


class Trainer:
    """Our side: the world model, its optimiser, the actor-critic and a replay of real pendulum episodes."""

    def __init__(
        self,
        batch_size: int,
        seq_len: int,
        seed: int,
        *,
        bf16: bool = False,
        compile: bool = False,
        actor_critic: ActorCriticConfig = XS_ACTOR_CRITIC,
    ) -> None:
        env = make_env(ENV_ID)
        collector = EpisodeCollector(env, "random", seed=seed)
        self.replay = ReplayBuffer(seq_len)
        for index in range(4):  # 2,000 random steps, as sheeprl's learning_starts fills its buffer
            self.replay.add(collector.episode(index))
        env.close()
        torch.manual_seed(seed)
        self.model = make_backbone("rssm-v0", env.observation_space, env.action_space, preset="XS")
        optimiser = torch.optim.Adam(self.model.parameters(), lr=1e-4, eps=1e-8)
        # Pretraining's own step (the world model's loss under the same autocast as the rest of the step).
        self.trainer = WorldModelTrainer(
            self.model, optimiser, 1000.0, precision="bf16" if bf16 else "fp32", compile=compile
        )
        self.actor_critic = ActorCritic(self.model.feature_size, self.model.action_size, actor_critic)
        self.batch_size = batch_size
        self.bf16 = bf16
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)

    def step(self) -> dict[str, float]:
        """One DreamerV3 gradient step: world model, then actor and critic from the batch's posterior states."""
        batch = self.replay.sample(self.batch_size, self.rng, "cpu")
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return self._step(batch)

    def _step(self, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        metrics = dict(self.trainer.step(batch))
        states = posterior_states(self.model, batch)["states"]
        starts = {key: value.flatten(0, 1) for key, value in states.items()}  # (B*T, ...)
        metrics.update(self.actor_critic.train_step(self.model, starts, generator=self.generator))
        return metrics


def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """This CPU's fp32 matmul throughput now, at the torch thread count set (the best of ``repeats``)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    best = min(_timed(lambda: a @ b) for _ in range(repeats))
    return 2 * size**3 / best / 1e9


def _timed(function: Any) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def loadavg() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def ours(args: argparse.Namespace, precision: str) -> tuple[float, float, float]:
    """Our gradient steps/s (wall clock and per CPU second of this process) and FLOPs per step."""
    config = XS_ACTOR_CRITIC
    if args.library_imagination:
        defaults = ActorCriticConfig()
        config = dataclasses.replace(
            config, continuation=defaults.continuation, detach_actor_input=defaults.detach_actor_input
        )
    trainer = Trainer(
        args.batch_size, args.seq_len, args.seed, bf16=precision == "bf16", compile=args.compile, actor_critic=config
    )
    for _ in range(args.warmup):
        trainer.step()
    with FlopCounterMode(display=False) as counter:
        trainer.step()
    flops = counter.get_total_flops()
    if args.profile:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profiler:
            trainer.step()
        print(profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        metrics = trainer.step()
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    if not all(np.isfinite(value) for value in metrics.values()):
        raise SystemExit(f"non-finite metrics after {args.steps} steps: {metrics}")
    return args.steps / seconds, args.steps / cpu_seconds, flops


def sheeprl(threads: int, precision: str) -> float:
    """sheeprl's gradient steps/s at the same sizes, from its own training run."""
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    overrides = ["fabric.precision=bf16-mixed"] if precision == "bf16" else []
    command = ["bash", str(SHEEPRL_SCRIPT), str(threads), *overrides]
    out = subprocess.run(command, env=env, capture_output=True, text=True)
    match = re.search(r"gradient steps/s: ([0-9.]+)", out.stdout)
    if out.returncode != 0 or match is None:
        raise SystemExit(f"{' '.join(command)} failed (exit {out.returncode}):\n{out.stdout}{out.stderr}")
    print(f"sheeprl {precision}: {out.stdout.strip()}")
    return float(match.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--steps", type=int, default=10, help="Timed gradient steps (after the warm-up).")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--precision",
        nargs="+",
        choices=("fp32", "bf16"),
        default=["fp32"],
        help="fp32, and/or bf16: our step under CPU bf16 autocast (bfloat16 matmuls, on AMX where the CPU has "
        "it) against sheeprl with fabric.precision=bf16-mixed.",
    )
    parser.add_argument(
        "--library-imagination",
        action="store_true",
        help="Imagine with this library's defaults (a differentiable continuation, the actor's inputs attached) "
        "instead of sheeprl's choices: what they cost.",
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="Compile our world-model loss, as pretrain --compile does (the warm-up then takes minutes: it compiles).",
    )
    parser.add_argument("--no-sheeprl", action="store_true", help="Time ours only.")
    parser.add_argument("--profile", action="store_true", help="Print a torch.profiler table of one step.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"load average before: {loadavg()}; {args.threads} torch threads")
    peak = PEAK_GFLOPS_PER_CORE * args.threads
    measured = matmul_gflops()
    print(f"fp32 matmul (2048^3) now: {measured:.0f} GFLOP/s; the reference peak: {peak:.0f} GFLOP/s")
    rates = {}
    for precision in args.precision:
        rate, cpu_rate, flops = ours(args, precision)
        rates[precision] = rate
        achieved = flops * rate / 1e9
        imagination = "library defaults" if args.library_imagination else "sheeprl's"
        compiled = ", compiled world-model loss" if args.compile else ""
        print(
            f"ours {precision}{compiled}, {imagination} imagination: {rate:.3f} gradient steps/s "
            f"({cpu_rate:.3f} per CPU second; {args.steps} steps, "
            f"batch {args.batch_size} x {args.seq_len}, {torch.get_num_threads()} threads)"
        )
        print(
            f"ours {precision}: {flops / 1e9:.2f} GFLOP per gradient step, {achieved:.1f} GFLOP/s = "
            f"{100 * achieved / peak:.0f}% of the {peak:.0f} GFLOP/s reference peak, "
            f"{100 * achieved / measured:.0f}% of the {measured:.0f} measured now; load average {loadavg()}"
        )
        sys.stdout.flush()
    if args.no_sheeprl:
        return
    for precision in args.precision:
        theirs = sheeprl(args.threads, precision)
        print(f"ratio ours / sheeprl, {precision}: {rates[precision] / theirs:.2f}x; load average {loadavg()}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
