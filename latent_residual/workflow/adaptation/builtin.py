"""Registers the built-in adaptation methods, each with its config class, through ``register_methods``, exactly
as a plugin would.

Kept light (no torch import: entry points and configs are ``"module:attr"`` strings) so listing plugins stays fast;
each method is a module of its own beside this one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latent_residual.registry.hookspecs import hookimpl

_PACKAGE = "latent_residual.workflow.adaptation"
_RESIDUAL_CONFIG = f"{_PACKAGE}.residual:ResidualMethodConfig"
_FINETUNE_CONFIG = "latent_residual.fitting:FinetuneConfig"


@hookimpl
def register_methods(register: Callable[..., Any]) -> None:
    """Register ReDRAW, its baselines from the paper and the poster, and the zero-shot reference."""
    register(
        "redraw",
        f"{_PACKAGE}.residual:ResidualMethod",
        config=_RESIDUAL_CONFIG,
        description="ReDRAW: a latent dynamics residual on the frozen prior.",
    )
    register(
        "replacement",
        f"{_PACKAGE}.replacement:ReplacementMethod",
        config=_RESIDUAL_CONFIG,
        description="Replacement dynamics: the residual's network predicts the prior logits alone (ablation).",
    )
    register(
        "finetune",
        f"{_PACKAGE}.finetune:PriorFinetuneMethod",
        config=_FINETUNE_CONFIG,
        description="Prior finetune: only the prior network trains.",
    )
    register(
        "dreamer-finetune",
        f"{_PACKAGE}.dreamer_finetune:DreamerFinetune",
        config=_FINETUNE_CONFIG,
        description="Dreamer finetune: the dynamics train with the world-model loss (no reward); "
        "the sim policy keeps training.",
    )
    register(
        "zero-shot", f"{_PACKAGE}.zero_shot:ZeroShot", description="The simulation policy in the target, unchanged."
    )
