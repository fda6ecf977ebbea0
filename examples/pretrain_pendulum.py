"""Build the demo's embedded default: a DRAW world model and policy pretrained in dmc/pendulum-swingup-v0.

Run: MUJOCO_GL=egl python examples/pretrain_pendulum.py --out plugins/dmc/pretrained/pendulum-swingup
(the same as `latent-residual build-source dmc/pendulum-swingup-v0 --out ... --data runs/pendulum-sim-data`).

Simulation data: the source's scripted expert with action noise 0.3 and 1.0, plus random actions
(diverse, as the paper recommends). The world model then trains offline on it, which on a CPU
buys far more updates per second than interaction, and the simulation policy trains in its
imagination exactly as the target policies do later. The recipe is the one the dmc plugin registers.
"""

from __future__ import annotations

from offline_pretraining import main

from latent_residual.workflow.training.recipes import source_recipe

SOURCE = "dmc/pendulum-swingup-v0"

if __name__ == "__main__":
    main(SOURCE, source_recipe(SOURCE), "pretrain_pendulum.py", "runs/pendulum-sim-data", __doc__)
