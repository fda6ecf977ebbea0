"""The zero-shot reference: the simulation policy run in the target, unchanged (no config, no target data).

The interface is ``base.py``; its registration is ``builtin.py``.
"""

from __future__ import annotations

from latent_residual.workflow.adaptation.base import AdaptationMethod


class ZeroShot(AdaptationMethod):
    """The reference: the simulation policy run in the target, unchanged."""

    uses_target_data = False
    trains_policy = False
