"""Build the Duckiebot default: a pixel DRAW world model and policy pretrained in duckiebot/lane-following-v0.

Run: MUJOCO_GL=egl python examples/pretrain_duckiebot.py --out plugins/duckiebot/pretrained/lane-following

Simulation data: the pure-pursuit driver with growing action noise (lane exits included) plus
random actions, all in the domain-randomised sim. The world model learns from the 64x64 camera
and the velocity vector offline, at CPU scale (see ``BACKBONE_KWARGS``); the simulation policy
then trains in its imagination, as the target policies do later.
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

SOURCE = "duckiebot/lane-following-v0"
# CPU scale: the 'small' preset with a narrower image encoder and decoder, and 32 x 4 latents.
BACKBONE_KWARGS = {"preset": "small", "cnn_depth": 8, "groups": 32, "hidden": 128, "mlp_units": 128, "head_units": 128}
AC_CONFIG = lr.ActorCriticConfig(hidden=128, layers=2, horizon=15, actor_lr=3e-4, critic_lr=3e-4)
# (behaviour, noise, transitions in the dataset after this step)
DATA_PLAN = (("expert", 0.1, 10_000), ("expert", 0.2, 20_000), ("expert", 0.4, 30_000), ("random", 0.0, 33_000))
# DRAW's prior reads only the previous latent and action, so short windows lose nothing and
# more of them per batch see more of the track.
BATCH, WINDOW = 32, 8


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--data", type=Path, default=Path("runs/duckiebot-sim-data"))
    parser.add_argument("--model-updates", type=int, default=5000)
    parser.add_argument("--policy-updates", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.monotonic()
    for behaviour, noise, transitions in DATA_PLAN:
        dataset = lr.collect(SOURCE, behaviour, args.data, transitions=transitions, noise=noise, seed=args.seed)
    env = lr.make_env(SOURCE)
    torch.manual_seed(args.seed)
    model = lr.make_backbone("draw-v0", env.observation_space, env.action_space, **BACKBONE_KWARGS)
    env.close()
    train_world_model(
        model, dataset.episodes, updates=args.model_updates, batch_size=BATCH, seq_len=WINDOW, lr=3e-4,
        seed=args.seed, log_dir=args.out / "logs" / "world_model",
    )
    lr.save_world_model(model, args.out / "world_model", extra={"model_updates": args.model_updates})
    sequences = dataset.sequences(16)
    sequences.pop("reward")
    actor_critic = lr.train_policy(
        model, sequences, PolicyTrainConfig(steps=args.policy_updates, starts=256, seed=args.seed),
        ac_config=AC_CONFIG, log_dir=args.out / "logs" / "policy",
    )
    save_actor_critic(actor_critic, args.out / ACTOR_CRITIC_NAME)
    result = lr.evaluate(lr.Policy(model, actor_critic.actor), SOURCE, episodes=10, seed=10_000)
    provenance = {
        "what": f"DRAW world model (pixels) and policy pretrained in {SOURCE}",
        "command": f"MUJOCO_GL=egl python examples/pretrain_duckiebot.py --out {args.out} --model-updates "
        f"{args.model_updates} --policy-updates {args.policy_updates} --seed {args.seed}",
        "date": datetime.date.today().isoformat(),
        "machine": "2-core x86-64 CPU, no GPU, 1 torch thread",
        "backbone": BACKBONE_KWARGS,
        "world_model_batch": {"sequences": BATCH, "length": WINDOW},
        "data": [{"behaviour": b, "noise": n, "until_transitions": t} for b, n, t in DATA_PLAN],
        "seconds": round(time.monotonic() - started),
        "simulation_policy_in_simulation": {"seed": 10_000, **result.to_dict()},
    }
    write_text(args.out / "provenance.json", json.dumps(provenance, indent=2) + "\n")
    print(json.dumps(provenance["simulation_policy_in_simulation"]))


if __name__ == "__main__":
    main()
