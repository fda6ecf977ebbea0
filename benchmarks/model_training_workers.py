"""Benchmark: offline world-model training on this machine's cores, ``train_world_model(workers=N)`` side by side.

A source recipe's model (``source_recipe(ENV)``: its backbone, sizes, batch and window) trained on a dataset from
``latent-residual collect`` or ``build-source``, for a few hundred updates per worker count, in one run on the same
machine; prints updates/s and the ratio to one worker.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/model_training_workers.py --env dmc/reacher-easy-v0 --data OUT/sim_data \\
        --updates 300 --workers 1 2
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import latent_residual as lr
from latent_residual.registry.lookup import make_backbone, make_env, source_backbone
from latent_residual.workflow.training.model_training import train_world_model
from latent_residual.workflow.training.recipes import source_recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", required=True, help="A source environment with a registered recipe.")
    parser.add_argument("--data", required=True, help="Its simulation dataset directory.")
    parser.add_argument("--updates", type=int, default=300)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = source_recipe(args.env)
    env = make_env(args.env)
    episodes = lr.load_dataset(args.data).episodes
    print(f"machine: {platform.machine()}, 1 torch thread a process; batch {recipe.batch_size} x {recipe.seq_len}")
    rates = {}
    for workers in args.workers:
        torch.manual_seed(0)
        spaces = (env.observation_space, env.action_space)
        model = make_backbone(recipe.backbone or source_backbone(args.env), *spaces, **recipe.backbone_kwargs)
        started = time.perf_counter()
        train_world_model(
            model, episodes, updates=args.updates, batch_size=recipe.batch_size, seq_len=recipe.seq_len,
            lr=recipe.model_lr, quiet=True, workers=workers,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        rates[workers] = args.updates / seconds
        print(
            f"{workers} worker(s): {args.updates} updates in {seconds:.1f} s ({rates[workers]:.2f} updates/s, worker "
            f"start included; x{rates[workers] / rates[args.workers[0]]:.2f} against {args.workers[0]})"
        )


if __name__ == "__main__":
    main()
