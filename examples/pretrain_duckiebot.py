"""Build the Duckiebot default: a pixel DRAW world model and policy pretrained in duckiebot/lane-following-v0.

Run: MUJOCO_GL=egl python examples/pretrain_duckiebot.py --out plugins/duckiebot/pretrained/lane-following
(the same as `latent-residual build-source duckiebot/lane-following-v0 --out ... --data runs/duckiebot-sim-data`).

Simulation data: the pure-pursuit driver with growing action noise (lane exits included) plus
random actions, all in the domain-randomised sim. The world model learns from the 64x64 camera
and the velocity vector offline, at CPU scale; the simulation policy then trains in its
imagination, as the target policies do later. The recipe is the one the duckiebot plugin registers.
"""

from __future__ import annotations

from offline_pretraining import main

from latent_residual.workflow.training.recipes import source_recipe

SOURCE = "duckiebot/lane-following-v0"

if __name__ == "__main__":
    main(SOURCE, source_recipe(SOURCE), "pretrain_duckiebot.py", "runs/duckiebot-sim-data", __doc__)
