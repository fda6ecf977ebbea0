"""A third-party adaptation method with a hyperparameter of its own: ReDRAW's residual at the width it is given.

This file and one registration line (``__init__.py``) are all it takes: ``compare --methods testplug-narrow`` runs it,
with ``--testplug-narrow-width`` for its width and ReDRAW's ``--fit-*`` flags for the fit its config shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from latent_residual.fitting import FitConfig
from latent_residual.residual import ResidualConfig
from latent_residual.workflow.adaptation.residual import ResidualMethod, ResidualMethodConfig


@dataclass
class NarrowConfig:
    width: int = field(default=32, metadata={"help": "Hidden units of the residual."})
    fit: FitConfig = field(default_factory=FitConfig, metadata={"help": "The residual's fit (ReDRAW's)."})


class NarrowResidual(ResidualMethod):
    def adapt(self, base, sequences, *, seed, config: NarrowConfig, log_dir, quiet):
        redraw = ResidualMethodConfig(residual=ResidualConfig(hidden=config.width), fit=config.fit)
        return super().adapt(base, sequences, seed=seed, config=redraw, log_dir=log_dir, quiet=quiet)
