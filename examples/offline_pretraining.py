"""What the pretraining examples share: the command line of a source recipe built by
``latent_residual.workflow.training.recipes.build_source`` (collect the data plan, train the world model offline,
train the simulation policy in its imagination, score it, record provenance).

The recipes themselves are registered by the environment plugins; ``latent-residual build-source`` runs
the same thing for any source that registers one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import torch

from latent_residual.workflow.training.recipes import SourceRecipe, build_source


def main(
    source: str,
    recipe: SourceRecipe,
    script: str,
    default_data: str,
    doc: str,
    prepare: Callable[[Path, int], object] | None = None,
) -> None:
    """Parse the example's command line and build ``source`` by ``recipe``; ``prepare(data, seed)``, when given,
    fills the data directory first (a plan the registered behaviours cannot collect)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(default_data))
    parser.add_argument("--model-updates", type=int, default=recipe.model_updates)
    parser.add_argument("--policy-updates", type=int, default=recipe.policy_updates)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    recipe = dataclasses.replace(recipe, model_updates=args.model_updates, policy_updates=args.policy_updates)
    if prepare is not None:
        prepare(args.data, args.seed)
    command = (
        f"MUJOCO_GL=egl python examples/{script} --out {args.out} --model-updates {args.model_updates} "
        f"--policy-updates {args.policy_updates} --seed {args.seed}"
    )
    provenance = build_source(source, args.out, recipe=recipe, data_dir=args.data, seed=args.seed, command=command)
    print(json.dumps(provenance["simulation_policy_in_simulation"]))
