"""Build the Duckiebot default: a pixel DRAW world model and policy pretrained in duckiebot/lane-following-v0.

Run: MUJOCO_GL=egl python examples/pretrain_duckiebot.py --out plugins/duckiebot/pretrained/lane-following

Simulation data: the pure-pursuit driver with growing action noise (lane exits included) plus
random actions, all in the domain-randomised sim. The world model learns from the 64x64 camera
and the velocity vector offline, at CPU scale (see ``backbone_kwargs``); the simulation policy
then trains in its imagination, as the target policies do later.
"""

from __future__ import annotations

from offline_pretraining import Recipe, main

import latent_residual as lr

RECIPE = Recipe(
    script="pretrain_duckiebot.py",
    source="duckiebot/lane-following-v0",
    what="DRAW world model (camera and velocities) and policy pretrained in duckiebot/lane-following-v0",
    # CPU scale: the 'small' preset with a narrower image encoder and decoder, and 32 x 4 latents.
    backbone_kwargs={"preset": "small", "cnn_depth": 8, "groups": 32, "hidden": 128, "mlp_units": 128, "head_units": 128},
    ac_config=lr.ActorCriticConfig(hidden=128, layers=2, horizon=15, actor_lr=3e-4, critic_lr=3e-4),
    data_plan=(("expert", 0.1, 10_000), ("expert", 0.2, 20_000), ("expert", 0.4, 30_000), ("random", 0.0, 33_000)),
    # DRAW's prior reads only the previous latent and action, so short windows lose nothing, and
    # more of them per batch see more of the track.
    batch_size=32,
    seq_len=8,
    model_updates=6000,
    policy_updates=1500,
    default_data="runs/duckiebot-sim-data",
)

if __name__ == "__main__":
    main(RECIPE, __doc__)
