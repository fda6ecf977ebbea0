"""A third-party adaptation method: ReDRAW's residual, started at zero (the adapted model begins as the base)."""

from __future__ import annotations

import dataclasses

from latent_residual.workflow.adaptation.residual import ResidualMethod


class ZeroStartResidual(ResidualMethod):
    def adapt(self, base, sequences, *, seed, config, log_dir, quiet):
        config = dataclasses.replace(config, residual=dataclasses.replace(config.residual, zero_init=True))
        return super().adapt(base, sequences, seed=seed, config=config, log_dir=log_dir, quiet=quiet)
