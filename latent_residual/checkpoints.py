"""World-model checkpoints: weights in safetensors, and what it takes to rebuild the model in metadata.

A checkpoint records (backbone id, constructor kwargs, observation and action spaces); rebuilding a model
from them goes through the registry (``workflow/deployment/loading.py``). Adapters are saved by ``adapters.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from latent_residual.contract import WorldModel
from latent_residual.errors import CheckpointError, ConfigError
from latent_residual.serialization import (
    check_fingerprint,
    check_fingerprint_value,
    check_metadata,
    fingerprint,
    json_or_text,
    metadata_json,
    read_safetensors,
    read_safetensors_header,
    space_to_json,
    strict_load,
    write_safetensors,
    write_text,
)
from latent_residual.version import __version__

MODEL_WEIGHTS_NAME = "model.safetensors"
MODEL_CONFIG_NAME = "model_config.json"
FILE_FORMAT = "latent-residual-world-model"
FILE_FORMAT_VERSION = 1
_CHECKS = {
    "file_format": FILE_FORMAT,
    "version": FILE_FORMAT_VERSION,
    "error": CheckpointError,
    "kind": "latent-residual world-model checkpoint",
    "required": ("backbone_id", "backbone_kwargs", "observation_space", "action_space"),
}
#: The JSON type of every key a checkpoint's metadata may hold (beyond its format and version).
_TYPES = {
    "backbone_id": str,
    "backbone_kwargs": dict,
    "observation_space": dict,
    "action_space": dict,
    "library_version": str,
    "extra": dict,
}
#: Appended when the weights do not fit the model the metadata describes (their fingerprint held).
BUILT_FROM = (
    "; the model was built from keys 'backbone_id', 'backbone_kwargs', 'observation_space' and 'action_space', "
    "so one of them does not describe these weights"
)


def save_world_model(
    model: WorldModel,
    directory: str | Path,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory/model.safetensors`` (atomically), with a readable JSON copy of its config.

    :param extra: JSON-ready provenance (training steps, env id, ...) kept in the metadata.
    """
    if model.backbone_id is None or model.observation_space is None or model.action_space is None:
        raise ConfigError(
            "This model has no backbone_id or spaces; build it with latent_residual.make_backbone() so the "
            "checkpoint can rebuild it."
        )
    config = {
        "format": FILE_FORMAT,
        "format_version": FILE_FORMAT_VERSION,
        "backbone_id": model.backbone_id,
        "backbone_kwargs": model.backbone_kwargs,
        "observation_space": space_to_json(model.observation_space),
        "action_space": space_to_json(model.action_space),
        "fingerprint": fingerprint(model),
        "library_version": __version__,
        "extra": extra or {},
    }
    directory = Path(directory)
    metadata = {key: json.dumps(value) for key, value in config.items()}
    write_safetensors(directory / MODEL_WEIGHTS_NAME, model.state_dict(), metadata)
    write_text(directory / MODEL_CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def _parse(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    """Checkpoint metadata values are JSON; decode them, then check format, version and each key's type."""
    # The format first, so that another kind of file is named as such rather than by its first non-JSON value.
    check_metadata(path, {key: json_or_text(value) for key, value in metadata.items()}, **_CHECKS)
    config = {key: metadata_json(path, metadata, key, CheckpointError, _TYPES.get(key)) for key in metadata}
    if "fingerprint" in config:
        check_fingerprint_value(path, "fingerprint", config["fingerprint"], CheckpointError)
    return config


def read_world_model_config(directory: str | Path) -> dict[str, Any]:
    """Return the stored config of a checkpoint (validated framing, no weights loaded)."""
    path = Path(directory) / MODEL_WEIGHTS_NAME
    _, metadata = read_safetensors_header(path, error=CheckpointError)
    return _parse(path, metadata)


def read_world_model(directory: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return a checkpoint's (config, tensors) after checking framing, format, version and fingerprint.

    The weights must have the fingerprint recorded when they were saved (a flipped byte, a
    replaced tensor: :class:`CheckpointError` naming the file and both fingerprints); a file
    written before fingerprints were recorded has none and is read as it is.
    """
    path = Path(directory) / MODEL_WEIGHTS_NAME
    tensors, metadata = read_safetensors(path, error=CheckpointError)
    config = _parse(path, metadata)
    if "fingerprint" in config:
        check_fingerprint(path, tensors, config["fingerprint"], CheckpointError)
    return config, tensors


def load_weights(model: WorldModel, tensors: dict[str, Any], directory: str | Path, *, hint: str = "") -> WorldModel:
    """Load a checkpoint's ``tensors`` into an already built ``model``, checking keys, shapes and dtypes
    strictly and refusing non-finite values (``serialization.strict_load``, which appends ``hint`` to a
    mismatch's message)."""
    strict_load(model, tensors, Path(directory) / MODEL_WEIGHTS_NAME, CheckpointError, hint=hint)
    return model
