"""The interface every adaptation method implements (``AdaptationMethod``) and the layout of its run directory.

The built-in methods are one module each beside this one (registered by ``builtin.py``); running them is
``experiments/``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor

from latent_residual.contract import WorldModel
from latent_residual.fitting import FitResult

#: Where ``latent-residual adapt`` leaves the fit's metrics, inside the adapter directory.
FIT_LOG_DIR_NAME = "logs"
#: An experiment run's layout: a residual method's adapter, the fit's metrics and its summary beside it.
ADAPTER_DIR_NAME = "adapter"
RUN_FIT_LOG_DIR_NAME = "fit_logs"
RUN_FIT_INFO_NAME = "fit.json"


class AdaptationMethod:
    """One way to turn a simulation-pretrained world model and policy into a policy for the target.

    A method that uses target data implements :meth:`adapt` (fit a corrected model on reward-free
    sequences), :meth:`save` and :meth:`load` (so a re-run reuses the fit); a policy is then
    trained in the corrected model's imagination unless ``trains_policy`` is false. A method that
    uses no target data (``uses_target_data`` false) is a reference: the simulation policy is
    evaluated in the target as it is.

    Its hyperparameters are a dataclass registered with it (``register(id, entry_point, config=...)``):
    :meth:`adapt` receives an instance, the command line has a flag per field, ``results.json`` records it.
    """

    uses_target_data: bool = True
    trains_policy: bool = True
    #: Train the simulation policy further in the corrected model instead of a fresh one.
    continues_simulation_policy: bool = False

    def adapt(
        self,
        base: WorldModel,
        sequences: Mapping[str, Tensor],
        *,
        seed: int,
        config: Any,
        log_dir: Path,
        quiet: bool,
    ) -> tuple[WorldModel, FitResult]:
        """Return the corrected model fitted on ``sequences`` (N, T, ...) and how the fit went; ``base`` is unchanged.

        :param config: An instance of the config class the method was registered with (None without one).
        """
        raise NotImplementedError(f"{type(self).__name__} uses no target data; it has nothing to fit.")

    def save(self, model: WorldModel, directory: Path) -> None:
        """Write what :meth:`adapt` returned under ``directory``."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to save.")

    def load(self, base: WorldModel, directory: Path) -> WorldModel:
        """Rebuild the corrected model that :meth:`save` wrote, on ``base``."""
        raise NotImplementedError(f"{type(self).__name__} has nothing to load.")
