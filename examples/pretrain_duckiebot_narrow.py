"""The Duckiebot DRAW from reward-seeking sim data only: the ablation of the poster's "diverse sim data helps".

Run: MUJOCO_GL=egl python examples/pretrain_duckiebot_narrow.py --out runs/duckiebot-narrow
The plain pure-pursuit driver (no calibration manoeuvres) at action noise 0.1 for all 33,000 transitions;
everything else is the shipped DRAW's recipe (examples/pretrain_duckiebot.py), whose data had the driver at
noise 0.1, 0.2 and 0.4 and random actions. docs/results.md compares ReDRAW from the two.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from offline_pretraining import main

from latent_residual import collect
from latent_residual.workflow.training.recipes import source_recipe
from latent_residual_plugins.duckiebot.driver import LaneExpert

SOURCE = "duckiebot/lane-following-v0"
TRANSITIONS = 33_000


def reward_seeking_data(data: Path, seed: int) -> None:
    """The driver on its own (the registered expert adds manoeuvres), resumable like any collection."""
    collect(SOURCE, LaneExpert("sim", manoeuvres=0.0), data, transitions=TRANSITIONS, seed=seed, noise=0.1)


if __name__ == "__main__":
    recipe = dataclasses.replace(source_recipe(SOURCE), data_plan=(("expert", 0.1, TRANSITIONS),))
    main(
        SOURCE,
        recipe,
        "pretrain_duckiebot_narrow.py",
        "runs/duckiebot-narrow-sim-data",
        __doc__,
        prepare=reward_seeking_data,
    )
