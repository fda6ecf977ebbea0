"""Build the demo's embedded default: a DRAW world model and policy pretrained in dmc/pendulum-swingup-v0.

Run: MUJOCO_GL=egl python examples/pretrain_pendulum.py --out plugins/dmc/pretrained/pendulum-swingup

Simulation data: the source's scripted expert with action noise 0.3 and 1.0, plus random actions
(diverse, as the paper recommends). The world model then trains offline on it, which on a CPU
buys far more updates per second than interaction, and the simulation policy trains in its
imagination exactly as the target policies do later.
"""

from __future__ import annotations

from offline_pretraining import Recipe, main

import latent_residual as lr

RECIPE = Recipe(
    script="pretrain_pendulum.py",
    source="dmc/pendulum-swingup-v0",
    what="DRAW world model and policy pretrained in dmc/pendulum-swingup-v0; the demo's embedded default",
    backbone_kwargs={"preset": "small", "groups": 32, "hidden": 128, "mlp_units": 128, "head_units": 128},
    ac_config=lr.ActorCriticConfig(hidden=128, layers=2, horizon=15, actor_lr=3e-4, critic_lr=3e-4),
    data_plan=(("expert", 0.3, 30_000), ("expert", 1.0, 45_000), ("random", 0.0, 55_000)),
    batch_size=32,
    seq_len=16,
    model_updates=14_000,
    policy_updates=1500,
    default_data="runs/pendulum-sim-data",
)

if __name__ == "__main__":
    main(RECIPE, __doc__)
