"""Registers the built-in adaptation methods through ``register_methods``, exactly as a plugin would.

Kept light (no torch import) so listing plugins stays fast; the methods are in ``adaptation.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from latent_residual.registry.hookspecs import hookimpl

_MODULE = "latent_residual.workflow.adaptation.methods"


@hookimpl
def register_methods(register: Callable[..., Any]) -> None:
    """Register ReDRAW, its two baselines from the paper, and the zero-shot reference."""
    register(
        "redraw", f"{_MODULE}:ResidualMethod", description="ReDRAW: a latent dynamics residual on the frozen prior."
    )
    register(
        "replacement",
        f"{_MODULE}:ReplacementMethod",
        description="Replacement dynamics: the residual's network predicts the prior logits alone (ablation).",
    )
    register("finetune", f"{_MODULE}:PriorFinetuneMethod", description="Prior finetune: only the prior network trains.")
    register(
        "dreamer-finetune",
        f"{_MODULE}:DreamerFinetune",
        description="Dreamer finetune: the dynamics train with the world-model loss (no reward); the sim policy keeps training.",
    )
    register("zero-shot", f"{_MODULE}:ZeroShot", description="The simulation policy in the target, unchanged.")
