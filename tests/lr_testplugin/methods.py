"""A third-party adaptation method: ReDRAW's residual, started at zero (the adapted model begins as the base)."""

from __future__ import annotations

import dataclasses

from latent_residual.workflow.adaptation.methods import ResidualMethod


class ZeroStartResidual(ResidualMethod):
    def adapt(self, base, sequences, *, seed, settings, log_dir, quiet):
        settings = dataclasses.replace(settings, residual=dataclasses.replace(settings.residual, zero_init=True))
        return super().adapt(base, sequences, seed=seed, settings=settings, log_dir=log_dir, quiet=quiet)
