"""The DRAW backbone plugin: registers ``draw-v0`` (the ReDRAW paper's latent-state world model).

Only registration lives here, so listing plugins never imports torch; the model is in ``model.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latent_residual import hookimpl


@hookimpl
def register_backbones(register: Callable[..., Any]) -> None:
    register(
        "draw-v0",
        "latent_residual_plugins.draw.model:DRAW",
        description="DRAW: latent-state autoregressive world model without recurrent state (ReDRAW paper).",
        kwargs={"preset": "small"},
        # What fits a 2-core CPU (the shipped pendulum model's sizes): `demo` and `compare` pretrain with it.
        presets={"cpu": {"preset": "small", "groups": 32, "hidden": 128, "mlp_units": 128, "head_units": 128}},
    )
