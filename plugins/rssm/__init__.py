"""The RSSM backbone plugin: registers ``rssm-v0`` (DreamerV3's recurrent state-space model, sheeprl's layout).

Only registration lives here, so listing plugins never imports torch; the model is in ``model.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latent_residual import hookimpl
from latent_residual_plugins.rssm.config import CPU_OVERRIDES


@hookimpl
def register_backbones(register: Callable[..., Any]) -> None:
    register(
        "rssm-v0",
        "latent_residual_plugins.rssm.model:RSSM",
        description="DreamerV3 RSSM: LayerNorm-GRU deterministic state h and a categorical latent z.",
        kwargs={"preset": "S"},
        # What fits a 2-core CPU (RSSMConfig's "cpu" preset, spelled out so checkpoints carry the sizes):
        # `demo` and `compare` pretrain with it.
        presets={"cpu": {"preset": "XS", **CPU_OVERRIDES}},
    )
