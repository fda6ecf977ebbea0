"""Build the demo's embedded default: a DRAW world model and policy pretrained in dmc/pendulum-swingup-v0.

Run: MUJOCO_GL=egl python examples/pretrain_pendulum.py --out plugins/dmc/pretrained/pendulum-swingup

Simulation data: the source's scripted expert with action noise 0.3 and 1.0, plus random actions
(diverse, as the paper recommends). The world model then trains offline on it, which on a CPU
buys far more updates per second than interaction, and the simulation policy trains in its
imagination exactly as the target policies do later.
"""

from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import torch

import latent_residual as lr
from latent_residual.files import write_text
from latent_residual.training import ACTOR_CRITIC_NAME, PolicyTrainConfig, save_actor_critic, train_world_model

SOURCE = "dmc/pendulum-swingup-v0"
BACKBONE_KWARGS = {"preset": "small", "groups": 32, "hidden": 128, "mlp_units": 128, "head_units": 128}
AC_CONFIG = lr.ActorCriticConfig(hidden=128, layers=2, horizon=15, actor_lr=3e-4, critic_lr=3e-4)
# (behaviour, noise, transitions in the dataset after this step)
DATA_PLAN = (("expert", 0.3, 30_000), ("expert", 1.0, 45_000), ("random", 0.0, 55_000))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("runs/pendulum-sim-data"))
    parser.add_argument("--model-updates", type=int, default=20_000)
    parser.add_argument("--policy-updates", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    for behaviour, noise, transitions in DATA_PLAN:
        dataset = lr.collect(SOURCE, behaviour, args.data, transitions=transitions, noise=noise, seed=args.seed)
    env = lr.make_env(SOURCE)
    torch.manual_seed(args.seed)
    model = lr.make_backbone("draw-v0", env.observation_space, env.action_space, **BACKBONE_KWARGS)
    train_world_model(
        model, dataset.episodes, updates=args.model_updates, batch_size=32, seq_len=16, lr=3e-4,
        seed=args.seed, log_dir=args.out / "logs" / "world_model",
    )
    sequences = dataset.sequences(16)
    sequences.pop("reward")
    actor_critic = lr.train_policy(
        model, sequences, PolicyTrainConfig(steps=args.policy_updates, starts=256, seed=args.seed),
        ac_config=AC_CONFIG, log_dir=args.out / "logs" / "policy",
    )
    lr.save_world_model(model, args.out / "world_model", extra={"model_updates": args.model_updates})
    save_actor_critic(actor_critic, args.out / ACTOR_CRITIC_NAME)
    result = lr.evaluate(lr.Policy(model, actor_critic.actor), SOURCE, episodes=10, seed=10_000)
    provenance = {
        "what": f"DRAW world model and policy pretrained in {SOURCE}; the demo's embedded default",
        "command": f"MUJOCO_GL=egl python examples/pretrain_pendulum.py --out {args.out} --model-updates "
        f"{args.model_updates} --policy-updates {args.policy_updates} --seed {args.seed}",
        "date": datetime.date.today().isoformat(),
        "machine": "2-core x86-64 CPU, no GPU, 1 torch thread",
        "data": [{"behaviour": b, "noise": n, "until_transitions": t} for b, n, t in DATA_PLAN],
        "seconds": round(time.monotonic() - started),
        "simulation_policy_return_in_simulation": {
            "episodes": 10, "seed": 10_000, "mean": result.mean, "std": result.std, "returns": result.returns,
        },
    }
    write_text(args.out / "provenance.json", json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance["simulation_policy_return_in_simulation"]))


if __name__ == "__main__":
    main()
