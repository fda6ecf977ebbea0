"""Build the embedded RSSM default: a DreamerV3 RSSM world model and policy pretrained in dmc/pendulum-swingup-v0.

Run: MUJOCO_GL=egl python examples/pretrain_pendulum_rssm.py --out plugins/dmc/pretrained/pendulum-swingup-rssm

The same simulation data plan and CPU sizes as the DRAW default (examples/pretrain_pendulum.py), with
the RSSM's registered ``cpu`` preset: the two backbones differ only in the world model.
"""

from __future__ import annotations

import dataclasses

from offline_pretraining import main
from pretrain_pendulum import RECIPE as DRAW_RECIPE

import latent_residual as lr

RECIPE = dataclasses.replace(
    DRAW_RECIPE,
    script="pretrain_pendulum_rssm.py",
    what="DreamerV3 RSSM world model and policy pretrained in dmc/pendulum-swingup-v0; the RSSM's embedded default",
    backbone="rssm-v0",
    backbone_kwargs=lr.backbone_spec("rssm-v0").presets["cpu"],
)

if __name__ == "__main__":
    main(RECIPE, __doc__)
