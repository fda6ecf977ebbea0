"""latent-residual: adapt simulation-pretrained latent world models with latent-state dynamics residuals.

The public API is re-exported here; torch-backed names load on first use so importing stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from latent_residual.errors import (
    AdapterFileError,
    CheckpointError,
    ConfigError,
    DatasetError,
    ExportError,
    FileFormatError,
    FitError,
    IncompatibleAdapterError,
    LatentResidualError,
    NameNotFound,
    NonFiniteObservationError,
    RegistrationError,
    TrainingDivergedError,
)
from latent_residual.registry.hookspecs import hookimpl
from latent_residual.registry.lookup import (
    backbone_spec,
    env_spec,
    list_backbones,
    list_envs,
    list_methods,
    make_backbone,
    make_env,
    make_method,
    method_config,
)
from latent_residual.registry.plugins import list_plugins, load_plugins
from latent_residual.registry.specs import ExperimentDefaults
from latent_residual.version import __version__

# name -> module that defines it; imported on first attribute access (PEP 562).
_LAZY = {
    "LatentSpec": "latent_residual.contract",
    "WorldModel": "latent_residual.contract",
    "ResidualConfig": "latent_residual.residual",
    "ResidualWorldModel": "latent_residual.adapters",
    "attach_residual": "latent_residual.adapters",
    "load_adapter": "latent_residual.adapters",
    "read_adapter_info": "latent_residual.adapters",
    "fingerprint": "latent_residual.serialization",
    "ActorCritic": "latent_residual.actor_critic",
    "ActorCriticConfig": "latent_residual.actor_critic",
    "Policy": "latent_residual.workflow.deployment.policy",
    "observe": "latent_residual.rollout",
    "imagine": "latent_residual.rollout",
    "FitConfig": "latent_residual.fitting",
    "FinetuneConfig": "latent_residual.fitting",
    "fit_residual": "latent_residual.fitting",
    "finetune_dynamics": "latent_residual.fitting",
    "save_world_model": "latent_residual.checkpoints",
    "Dataset": "latent_residual.workflow.data.datasets",
    "DatasetWriter": "latent_residual.workflow.data.datasets",
    "EpisodeRecorder": "latent_residual.workflow.data.recording",
    "collect": "latent_residual.workflow.data.collection",
    "load_dataset": "latent_residual.workflow.data.datasets",
    "evaluate": "latent_residual.workflow.experiments.evaluation",
    "PretrainConfig": "latent_residual.workflow.training.pretraining",
    "PolicyTrainConfig": "latent_residual.workflow.training.policy_training",
    "pretrain": "latent_residual.workflow.training.pretraining",
    "train_policy": "latent_residual.workflow.training.policy_training",
    "load_world_model": "latent_residual.workflow.deployment.loading",
    "OnnxPolicy": "latent_residual.onnx_policy",
    "export_policy": "latent_residual.workflow.deployment.export",
    "DiagnoseConfig": "latent_residual.workflow.reports.diagnose",
    "diagnose": "latent_residual.workflow.reports.diagnose",
    "DataCurveConfig": "latent_residual.workflow.reports.data_curve",
    "data_curve": "latent_residual.workflow.reports.data_curve",
}

__all__ = [
    "AdapterFileError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "ExperimentDefaults",
    "ExportError",
    "FileFormatError",
    "FitError",
    "IncompatibleAdapterError",
    "LatentResidualError",
    "NameNotFound",
    "NonFiniteObservationError",
    "RegistrationError",
    "TrainingDivergedError",
    "__version__",
    "backbone_spec",
    "env_spec",
    "hookimpl",
    "list_backbones",
    "list_envs",
    "list_methods",
    "list_plugins",
    "load_plugins",
    "make_backbone",
    "make_env",
    "make_method",
    "method_config",
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
    from latent_residual.actor_critic import ActorCritic, ActorCriticConfig
    from latent_residual.adapters import ResidualWorldModel, attach_residual, load_adapter, read_adapter_info
    from latent_residual.checkpoints import save_world_model
    from latent_residual.contract import LatentSpec, WorldModel
    from latent_residual.fitting import FinetuneConfig, FitConfig, finetune_dynamics, fit_residual
    from latent_residual.onnx_policy import OnnxPolicy
    from latent_residual.residual import ResidualConfig
    from latent_residual.rollout import imagine, observe
    from latent_residual.serialization import fingerprint
    from latent_residual.workflow.data.collection import collect
    from latent_residual.workflow.data.datasets import Dataset, DatasetWriter, load_dataset
    from latent_residual.workflow.data.recording import EpisodeRecorder
    from latent_residual.workflow.deployment.export import export_policy
    from latent_residual.workflow.deployment.loading import load_world_model
    from latent_residual.workflow.deployment.policy import Policy
    from latent_residual.workflow.experiments.evaluation import evaluate
    from latent_residual.workflow.reports.data_curve import DataCurveConfig, data_curve
    from latent_residual.workflow.reports.diagnose import DiagnoseConfig, diagnose
    from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_policy
    from latent_residual.workflow.training.pretraining import PretrainConfig, pretrain

# Plugin registrations are tiny modules (implementations load at make time), so loading them
# here is cheap and lets `gymnasium.make(<any registered id>)` work right after `import latent_residual`.
load_plugins()
