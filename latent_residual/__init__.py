"""latent-residual: adapt simulation-pretrained latent world models with latent-state dynamics residuals.

The public API is re-exported here; torch-backed names load on first use so importing stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from latent_residual.errors import (
    AdapterFileError,
    ConfigError,
    DatasetError,
    IncompatibleAdapterError,
    LatentResidualError,
    NameNotFound,
    RegistrationError,
)
from latent_residual.hookspecs import hookimpl
from latent_residual.plugins import list_plugins, load_plugins
from latent_residual.registry import (
    backbone_spec,
    env_spec,
    list_backbones,
    list_envs,
    make_backbone,
    make_env,
)

__version__ = "0.1.0"

# name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "LatentSpec": "latent_residual.contract",
    "WorldModel": "latent_residual.contract",
    "ResidualConfig": "latent_residual.residual",
    "ResidualWorldModel": "latent_residual.adapters",
    "attach_residual": "latent_residual.adapters",
    "load_adapter": "latent_residual.adapters",
    "read_adapter_info": "latent_residual.adapters",
    "fingerprint": "latent_residual.adapters",
    "observe": "latent_residual.rollout",
    "imagine": "latent_residual.rollout",
    "FitConfig": "latent_residual.fitting",
    "fit_residual": "latent_residual.fitting",
    "save_world_model": "latent_residual.checkpoints",
    "load_world_model": "latent_residual.checkpoints",
}

__all__ = [
    "AdapterFileError",
    "ConfigError",
    "DatasetError",
    "IncompatibleAdapterError",
    "LatentResidualError",
    "NameNotFound",
    "RegistrationError",
    "__version__",
    "backbone_spec",
    "env_spec",
    "hookimpl",
    "list_backbones",
    "list_envs",
    "list_plugins",
    "load_plugins",
    "make_backbone",
    "make_env",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'latent_residual' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:
    from latent_residual.adapters import (
        ResidualWorldModel,
        attach_residual,
        fingerprint,
        load_adapter,
        read_adapter_info,
    )
    from latent_residual.checkpoints import load_world_model, save_world_model
    from latent_residual.contract import LatentSpec, WorldModel
    from latent_residual.fitting import FitConfig, fit_residual
    from latent_residual.residual import ResidualConfig
    from latent_residual.rollout import imagine, observe

# Plugin registrations are tiny modules (implementations load at make time), so loading them
# here is cheap and lets `gymnasium.make("dmc/...")` work right after `import latent_residual`.
load_plugins()
