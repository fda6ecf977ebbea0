"""The sheeprl integration: registers the ``sheeprl`` checkpoint importer (``latent-residual import sheeprl``).

Only registration lives here, so listing plugins imports no torch; the conversion is in ``convert.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latent_residual import hookimpl

__all__ = ["import_checkpoint"]


@hookimpl
def register_importers(register: Callable[..., Any]) -> None:
    register(
        "sheeprl",
        "latent_residual_integrations.sheeprl.convert:import_checkpoint",
        description=(
            "sheeprl DreamerV3 / P2E-DV3 checkpoint (ckpt_<step>_<rank>.ckpt) into an rssm-v0 model and actor-critic."
        ),
    )


def import_checkpoint(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """:func:`latent_residual_integrations.sheeprl.convert.import_checkpoint`, imported on first use."""
    from latent_residual_integrations.sheeprl.convert import import_checkpoint as convert

    return convert(*args, **kwargs)
