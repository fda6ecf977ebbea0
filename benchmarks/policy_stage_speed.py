"""Benchmark: the demo's slowest stage, the policy update in imagination, at the demo's settings.

``train_policy`` over the shipped pendulum DRAW with a ReDRAW adapter, 256 starts, horizon 15, actor-critic
width 128 (``CPU_DEFAULTS`` in ``workflow/experiments/defaults.py``); it times updates and prints a checksum of the
trained actor, so two code versions can be compared for speed and for results on the same inputs.

Usage (the adapter and data of a demo run, e.g. ``runs/demo/runs/redraw-40000-seed0/adapter`` and
``runs/demo/target_data``)::

    OMP_NUM_THREADS=1 python benchmarks/policy_stage_speed.py --adapter DIR --data DIR [--steps 100]
    OMP_NUM_THREADS=1 python benchmarks/policy_stage_speed.py --adapter DIR --data DIR --steps 1500 --evaluate
    OMP_NUM_THREADS=1 python benchmarks/policy_stage_speed.py --adapter DIR --data DIR --workers 1 2   # side by side

With several ``--workers`` values each is run in turn (``PolicyTrainConfig.workers``: processes sharing each
update's starts); CPU time is this process's only, so it is left out for runs of more than one worker.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import latent_residual as lr
from latent_residual.actor_critic import ActorCriticConfig
from latent_residual.registry.lookup import demo_env, env_pretrained, source_target
from latent_residual.workflow.deployment.policy import Policy
from latent_residual.workflow.experiments.defaults import CPU_DEFAULTS
from latent_residual.workflow.experiments.evaluation import evaluate
from latent_residual.workflow.experiments.experiment import EVAL_SEED
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_policy


def demo_ac_config() -> ActorCriticConfig:
    """The actor-critic settings the demo passes (its CPU defaults over the config's)."""
    return ActorCriticConfig(**CPU_DEFAULTS.actor_critic)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--adapter", required=True, help="A fitted adapter directory (the demo's redraw run).")
    parser.add_argument("--data", required=True, help="The demo's target_data directory.")
    parser.add_argument("--transitions", type=int, default=40_000)
    parser.add_argument("--steps", type=int, default=100, help="Policy updates to time (the demo runs 1500).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workers", type=int, nargs="+", default=[1], help="Policy workers; several: one run each.")
    parser.add_argument(
        "--evaluate", action="store_true", help="Evaluate the trained policy in the target (10 episodes)."
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = demo_env().id
    base = lr.load_world_model(env_pretrained(source) / "world_model")
    model = lr.ResidualWorldModel(base)
    model.load_adapter(args.adapter, trainable=False)
    sequences = lr.load_dataset(args.data, max_transitions=args.transitions).sequences(32)
    print(f"library: {lr.__file__}")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads")
    for workers in args.workers:
        policy_config = PolicyTrainConfig(
            steps=args.steps, starts=CPU_DEFAULTS.policy["starts"], seed=args.seed, workers=workers
        )
        ac_config = demo_ac_config()
        torch.manual_seed(args.seed)
        started, cpu_started = time.perf_counter(), time.process_time()
        actor_critic = train_policy(model, sequences, policy_config, ac_config=ac_config, quiet=True)
        seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
        checksum = sum(float(p.detach().double().abs().sum()) for p in actor_critic.actor.parameters())
        cpu = f"; CPU time {cpu_seconds:.1f} s" if workers == 1 else ""
        print(
            f"policy stage, {workers} worker(s): {args.steps} updates in {seconds:.1f} s "
            f"({args.steps / seconds:.2f} updates/s, start bank and worker start included){cpu}; "
            f"actor checksum {checksum:.6f}"
        )
        if args.evaluate:
            result = evaluate(Policy(base, actor_critic.actor), source_target(source), episodes=10, seed=EVAL_SEED)
            print(f"  return in the target: {result.to_dict()['return_mean']:.1f}")


if __name__ == "__main__":
    main()
