"""Build the embedded RSSM default: a DreamerV3 RSSM world model and policy pretrained in dmc/pendulum-swingup-v0.

Run: MUJOCO_GL=egl python examples/pretrain_pendulum_rssm.py --out plugins/dmc/pretrained/pendulum-swingup-rssm

The same simulation data plan and CPU sizes as the DRAW default (examples/pretrain_pendulum.py), with
the RSSM's registered ``cpu`` preset: the two backbones differ only in the world model.
"""

from __future__ import annotations

from offline_pretraining import main

import latent_residual as lr
from latent_residual.workflow.training.recipes import source_recipe

SOURCE = "dmc/pendulum-swingup-v0"

if __name__ == "__main__":
    recipe = source_recipe(SOURCE, backbone="rssm-v0", backbone_kwargs=lr.backbone_spec("rssm-v0").presets["cpu"])
    main(SOURCE, recipe, "pretrain_pendulum_rssm.py", "runs/pendulum-sim-data", __doc__)
