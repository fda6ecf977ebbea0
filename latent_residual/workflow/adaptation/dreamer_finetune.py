"""The poster's Dreamer-finetune baseline (``dreamer-finetune``): the dynamics train with the world model's own loss.

It takes the prior finetune's config (``finetune.py``); the interface is ``base.py``.
"""

from __future__ import annotations

from latent_residual.workflow.adaptation.finetune import PriorFinetuneMethod


class DreamerFinetune(PriorFinetuneMethod):
    """The world model's dynamics train on the target data with its own loss, reward term off (encoder, posterior
    and heads frozen), and the simulation policy keeps training in the finetuned model."""

    objective = "world_model"
    continues_simulation_policy = True
