"""What the pretraining examples share: collect a simulation data plan, train a world model offline on
it, train the simulation policy in the model's imagination, evaluate it there, record provenance.

The recipes (environment, data, sizes) live in the scripts that call ``main``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import latent_residual as lr
from latent_residual.actor_critic import save_actor_critic
from latent_residual.serialization import write_text
from latent_residual.workflow.model_training import train_world_model
from latent_residual.workflow.policy_training import PolicyTrainConfig
from latent_residual.workflow.pretraining import ACTOR_CRITIC_NAME


@dataclass(frozen=True)
class Recipe:
    """One pretraining: the simulation, its data plan and the sizes that fit a CPU."""

    script: str
    source: str
    what: str
    backbone_kwargs: dict[str, Any]
    ac_config: lr.ActorCriticConfig
    #: (behaviour, noise, transitions in the dataset after this step)
    data_plan: tuple[tuple[str, float, int], ...]
    batch_size: int
    seq_len: int
    model_updates: int
    policy_updates: int
    default_data: str
    backbone: str = "draw-v0"
    extra: dict[str, Any] = field(default_factory=dict)


def main(recipe: Recipe, doc: str) -> None:
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path(recipe.default_data))
    parser.add_argument("--model-updates", type=int, default=recipe.model_updates)
    parser.add_argument("--policy-updates", type=int, default=recipe.policy_updates)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    for behaviour, noise, transitions in recipe.data_plan:
        dataset = lr.collect(recipe.source, behaviour, args.data, transitions=transitions, noise=noise, seed=args.seed)
    env = lr.make_env(recipe.source)
    torch.manual_seed(args.seed)
    model = lr.make_backbone(recipe.backbone, env.observation_space, env.action_space, **recipe.backbone_kwargs)
    env.close()
    train_world_model(
        model, dataset.episodes, updates=args.model_updates, batch_size=recipe.batch_size, seq_len=recipe.seq_len,
        lr=3e-4, seed=args.seed, log_dir=args.out / "logs" / "world_model",
    )
    lr.save_world_model(model, args.out / "world_model", extra={"model_updates": args.model_updates})
    sequences = dataset.sequences(16)
    sequences.pop("reward")
    actor_critic = lr.train_policy(
        model, sequences, PolicyTrainConfig(steps=args.policy_updates, starts=256, seed=args.seed),
        ac_config=recipe.ac_config, log_dir=args.out / "logs" / "policy",
    )
    save_actor_critic(actor_critic, args.out / ACTOR_CRITIC_NAME)
    result = lr.evaluate(lr.Policy(model, actor_critic.actor), recipe.source, episodes=10, seed=10_000)
    provenance = {
        "what": recipe.what,
        "command": f"MUJOCO_GL=egl python examples/{recipe.script} --out {args.out} --model-updates "
        f"{args.model_updates} --policy-updates {args.policy_updates} --seed {args.seed}",
        "date": datetime.date.today().isoformat(),
        "machine": "2-core x86-64 CPU, no GPU, 1 torch thread",
        "backbone": {"id": recipe.backbone, **recipe.backbone_kwargs},
        "world_model_batch": {"sequences": recipe.batch_size, "length": recipe.seq_len},
        "data": [{"behaviour": b, "noise": n, "until_transitions": t} for b, n, t in recipe.data_plan],
        **recipe.extra,
        "seconds": round(time.monotonic() - started),
        "simulation_policy_in_simulation": {"seed": 10_000, **result.to_dict()},
    }
    write_text(args.out / "provenance.json", json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance["simulation_policy_in_simulation"]))
