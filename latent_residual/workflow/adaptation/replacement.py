"""The replacement-dynamics ablation (``replacement``): ReDRAW's network outputs the prior logits itself.

It takes ReDRAW's config (``residual.py``), so the same ``--residual-*`` and ``--fit-*`` flags.
"""

from __future__ import annotations

from latent_residual.workflow.adaptation.residual import ResidualMethod


class ReplacementMethod(ResidualMethod):
    """The paper's ablation: the same small network outputs the prior logits itself, ignoring the prior."""

    mode = "replacement"
