"""World-model checkpoints: weights in safetensors, and what it takes to rebuild the model in metadata.

A model is rebuilt from (backbone id, constructor kwargs, observation and action spaces); adapters are saved by ``adapters.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

from latent_residual.contract import WorldModel
from latent_residual.errors import AdapterFileError, ConfigError
from latent_residual.files import read_safetensors, write_safetensors, write_text

MODEL_WEIGHTS_NAME = "model.safetensors"
MODEL_CONFIG_NAME = "model_config.json"
FILE_FORMAT = "latent-residual-world-model"
FILE_FORMAT_VERSION = 1


def space_to_json(space: gymnasium.spaces.Space) -> dict[str, Any]:
    """Describe a Dict-of-Box (or Box) space as JSON-ready data."""
    if isinstance(space, gymnasium.spaces.Dict):
        return {"type": "Dict", "spaces": {key: space_to_json(sub) for key, sub in space.spaces.items()}}
    if isinstance(space, gymnasium.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": _bound(space.low),
            "high": _bound(space.high),
        }
    raise ConfigError(f"Only Dict and Box spaces can be stored, got {type(space).__name__}.")


def _bound(values: np.ndarray) -> Any:
    """A Box bound as one number when every element is the same (a 64x64x3 image's bounds would
    otherwise take 12,288 numbers each), else as nested lists."""
    flat = values.reshape(-1)
    return flat[0].item() if flat.size and (flat == flat[0]).all() else values.tolist()


def space_from_json(data: dict[str, Any]) -> gymnasium.spaces.Space:
    """The inverse of :func:`space_to_json` (a bound may be one number or nested lists)."""
    if data.get("type") == "Dict":
        return gymnasium.spaces.Dict({key: space_from_json(sub) for key, sub in data["spaces"].items()})
    if data.get("type") == "Box":
        dtype, shape = np.dtype(data["dtype"]), tuple(data["shape"])
        low, high = (np.broadcast_to(np.asarray(data[key], dtype=dtype), shape) for key in ("low", "high"))
        return gymnasium.spaces.Box(low, high, shape, dtype)
    raise ConfigError(f"Unknown space description {data.get('type')!r}; expected 'Dict' or 'Box'.")


def save_world_model(
    model: WorldModel,
    directory: str | Path,
    *,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` to ``directory/model.safetensors`` (atomically), with a readable JSON copy of its config.

    :param extra: JSON-ready provenance (training steps, env id, ...) kept in the metadata.
    """
    from latent_residual import __version__
    from latent_residual.adapters import fingerprint

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


def read_world_model_config(directory: str | Path) -> dict[str, Any]:
    """Return the stored config of a checkpoint (validated framing, no weights loaded)."""
    from latent_residual.files import read_safetensors_header

    path = Path(directory) / MODEL_WEIGHTS_NAME
    _, metadata = read_safetensors_header(path)
    return _parse(path, metadata)


def _parse(path: Path, metadata: dict[str, str]) -> dict[str, Any]:
    try:
        config = {key: json.loads(value) for key, value in metadata.items()}
    except json.JSONDecodeError as exc:
        raise AdapterFileError(f"{path}: checkpoint metadata is not JSON: {exc}") from exc
    if config.get("format") != FILE_FORMAT:
        raise AdapterFileError(
            f"{path}: not a latent-residual world-model checkpoint (format {config.get('format')!r})."
        )
    if int(config.get("format_version", 0)) > FILE_FORMAT_VERSION:
        raise AdapterFileError(f"{path}: checkpoint format is newer than this library reads; upgrade latent-residual.")
    return config


def load_world_model(directory: str | Path, *, device: str | torch.device = "cpu") -> WorldModel:
    """Rebuild a world model through the registry and load its weights, checking keys strictly."""
    from latent_residual.registry import make_backbone

    path = Path(directory) / MODEL_WEIGHTS_NAME
    tensors, metadata = read_safetensors(path)
    config = _parse(path, metadata)
    model = make_backbone(
        config["backbone_id"],
        space_from_json(config["observation_space"]),
        space_from_json(config["action_space"]),
        **config["backbone_kwargs"],
    )
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise AdapterFileError(f"{path}: weights do not fit {config['backbone_id']}: missing {missing}, unexpected {unexpected}.")
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise AdapterFileError(f"{path}: weights do not fit {config['backbone_id']}: {exc}") from exc
    return model.to(device)
