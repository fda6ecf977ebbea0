"""Residual adapters on a frozen world model: attach, switch, save and load (the PEFT idea, stricter).

The residual network and its config are in ``residual.py``; how files are framed and checked is in ``serialization.py``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from latent_residual.checkpoints import MODEL_WEIGHTS_NAME
from latent_residual.config import config_from_dict, config_to_dict
from latent_residual.contract import LatentSpec, State, WorldModel
from latent_residual.errors import AdapterFileError, ConfigError, IncompatibleAdapterError, NameNotFound, did_you_mean
from latent_residual.residual import ResidualConfig, ResidualNet
from latent_residual.serialization import (
    check_fingerprint_value,
    check_metadata,
    fingerprint,
    json_or_text,
    metadata_int,
    metadata_json,
    read_checked,
    read_safetensors_header,
    strict_load,
    write_safetensors,
    write_text,
)
from latent_residual.version import __version__

ADAPTER_WEIGHTS_NAME = "adapter.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
FILE_FORMAT = "latent-residual-adapter"
FILE_FORMAT_VERSION = 1
DEFAULT_ADAPTER_NAME = "default"

logger = logging.getLogger("latent_residual")


class ResidualWorldModel(WorldModel):
    """A frozen base world model plus named residual adapters on its prior logits.

    The base is never modified: its parameters, buffers and ``requires_grad`` flags stay as
    they were, it runs under ``torch.no_grad`` (gradients reach only the adapters; see
    :meth:`base_gradients` for backpropagating through it to its inputs) and keeps its own
    train/eval mode. At most one adapter is active; ``disable_adapters()`` gives the base's
    predictions back.
    """

    def __init__(self, base: WorldModel) -> None:
        super().__init__()
        if isinstance(base, ResidualWorldModel):
            raise ConfigError("The model already carries residual adapters; use its add_adapter() instead.")
        if not isinstance(base, WorldModel):
            raise ConfigError(f"Residuals attach to a latent_residual.WorldModel, got {type(base).__name__}.")
        self.base = base
        self.latent = base.latent
        self.action_size = base.action_size
        self.feature_size = base.feature_size
        self.unimix = base.unimix
        self.posterior_uses_deter = base.posterior_uses_deter
        self.memoryless = base.memoryless
        self.backbone_id = base.backbone_id
        self.backbone_kwargs = base.backbone_kwargs
        self.observation_space = base.observation_space
        self.action_space = base.action_space
        self.base_fingerprint = fingerprint(base)
        self.residuals = nn.ModuleDict()
        self.adapter_configs: dict[str, ResidualConfig] = {}
        self.data_summaries: dict[str, dict[str, Any]] = {}
        self.active_adapter: str | None = None
        self._disabled = False
        self._base_gradients = False
        with torch.no_grad():
            initial = base.initial_state(1)
        self._state_sizes = {key: value[0].numel() for key, value in initial.items()}

    # -- managing adapters ---------------------------------------------------------------

    @property
    def adapters(self) -> list[str]:
        """Names of the attached adapters, in the order they were added."""
        return list(self.residuals)

    def add_adapter(self, name: str, config: ResidualConfig | None = None, *, trainable: bool = True) -> None:
        """Attach a new residual called ``name`` and make it active."""
        config = config or ResidualConfig()
        if name in self.residuals:
            raise ConfigError(f"An adapter named {name!r} is already attached; delete_adapter() it first.")
        if not _valid_name(name):
            raise ConfigError(f"Adapter name {name!r} {_NAME_RULE}.")
        missing = self._unknown_inputs(config)
        if missing:
            raise ConfigError(
                f"ResidualConfig.extra_inputs names {missing}, not in this model's state; "
                f"available: {self._inputs_available()}."
            )
        in_size = self.latent.size + self.action_size + sum(self._state_sizes[k] for k in config.extra_inputs)
        net = ResidualNet(config, in_size, self.latent.groups, self.latent.classes).to(self.base.device())
        net.requires_grad_(trainable)
        self.residuals[name] = net
        self.adapter_configs[name] = config
        self.active_adapter = name

    def set_adapter(self, name: str) -> None:
        """Make adapter ``name`` the active one."""
        self._check_name(name)
        self.active_adapter = name

    def delete_adapter(self, name: str) -> None:
        """Remove adapter ``name``; if it was active, no adapter is active afterwards."""
        self._check_name(name)
        del self.residuals[name]
        del self.adapter_configs[name]
        self.data_summaries.pop(name, None)
        if self.active_adapter == name:
            self.active_adapter = None

    @contextlib.contextmanager
    def disable_adapters(self) -> Iterator[None]:
        """Within the block, the model predicts exactly as the base does."""
        previous, self._disabled = self._disabled, True
        try:
            yield
        finally:
            self._disabled = previous

    @contextlib.contextmanager
    def base_gradients(self) -> Iterator[None]:
        """Within the block, the base's dynamics and heads run with autograd, so gradients reach
        their *inputs* (actions, states): what an actor trained by backpropagation through the
        dynamics needs. Take gradients for your own parameters only (``torch.autograd.grad``),
        or the base's parameters collect ``.grad`` too; their values never change either way."""
        previous, self._base_gradients = self._base_gradients, True
        try:
            yield
        finally:
            self._base_gradients = previous

    def _frozen(self) -> contextlib.AbstractContextManager:  # the base's modules, not its inputs
        return contextlib.nullcontext() if self._base_gradients else torch.no_grad()

    def is_trainable(self, name: str) -> bool:
        """Whether adapter ``name``'s parameters require gradients."""
        self._check_name(name)
        return any(p.requires_grad for p in self.residuals[name].parameters())

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters of the active adapter that require gradients (what an optimiser should get)."""
        if self.active_adapter is None:
            return []
        return [p for p in self.residuals[self.active_adapter].parameters() if p.requires_grad]

    def trainable_parameter_report(self) -> str:
        """One line: trainable parameters, all parameters (base included) and the percentage."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return (
            f"adapter: {self.active_adapter} || trainable params: {trainable:,} || all params: {total:,} "
            f"|| trainable%: {100.0 * trainable / max(total, 1):.4f}"
        )

    def print_trainable_parameters(self) -> None:
        print(self.trainable_parameter_report())

    def train(self, mode: bool = True) -> ResidualWorldModel:
        """Switch the adapters' mode only; the base keeps the mode it had."""
        self.training = mode
        self.residuals.train(mode)
        return self

    def _unknown_inputs(self, config: ResidualConfig) -> list[str]:
        return [key for key in config.extra_inputs if key not in self._state_sizes]

    def _inputs_available(self) -> list[str]:
        return sorted(key for key in self._state_sizes if key != "stoch")

    def _check_name(self, name: str) -> None:
        if name not in self.residuals:
            raise NameNotFound(
                f"No adapter named {name!r}.{did_you_mean(name, self.residuals)} Attached: {self.adapters or 'none'}."
            )

    # -- the contract ------------------------------------------------------------------

    @property
    def _active(self) -> str | None:
        return None if self._disabled else self.active_adapter

    @property
    def prior_unimix(self) -> float:
        name = self._active
        return self.base.prior_unimix if name is None else self.adapter_configs[name].prior_unimix

    @property
    def posterior_unimix(self) -> float:
        return self.base.posterior_unimix

    def corrections(self, state: State, action: Tensor) -> Tensor:
        """Per-member logit offsets (members, B, groups, classes) of the active adapter."""
        name = self._active
        if name is None:
            raise ConfigError("No adapter is active; set_adapter() one first.")
        config = self.adapter_configs[name]
        parts = [state["stoch"].flatten(1), action.clamp(-1.0, 1.0)]
        parts += [state[key].flatten(1) for key in config.extra_inputs]
        return self.residuals[name](torch.cat(parts, -1))

    def member_prior_logits(self, state: State, action: Tensor) -> Tensor:
        """Each ensemble member's corrected prior logits (members, B, groups, classes), away from episode
        starts: what the ensemble's disagreement is measured on."""
        no_reset = torch.zeros(action.shape[0], dtype=torch.bool, device=action.device)
        with self._frozen():
            logits, _ = self.base.dynamics(state, action, no_reset)
        members = self.corrections(state, action)  # (members, B, groups, classes)
        return members if self.adapter_configs[self.active_adapter].mode == "replacement" else logits + members

    def mean_correction(self, state: State, action: Tensor) -> Tensor:
        """The active adapter's logit offset (B, groups, classes): its members' mean (one member's own)."""
        members = self.corrections(state, action)
        return members[0] if members.shape[0] == 1 else members.mean(0)

    def dynamics(self, state: State, action: Tensor, is_first: Tensor) -> tuple[Tensor, State]:
        with self._frozen():
            logits, deter = self.base.dynamics(state, action, is_first)
        name = self._active
        if name is None:
            return logits, deter
        offset = self.mean_correction(state, action)  # (B, groups, classes)
        corrected = offset if self.adapter_configs[name].mode == "replacement" else logits + offset
        # Episode starts come from the base's initial distribution; the residual is never
        # trained there (the KL is masked), so it must not act there either.
        return torch.where(is_first.reshape(-1, 1, 1), logits, corrected), deter

    def initial_state(self, batch_size: int) -> State:
        with torch.no_grad():
            return self.base.initial_state(batch_size)

    def embed(self, obs: Mapping[str, Tensor]) -> Tensor:
        with torch.no_grad():
            return self.base.embed(obs)

    def posterior(self, deter: State, embed: Tensor) -> Tensor:
        with torch.no_grad():
            return self.base.posterior(deter, embed)

    def next_state(self, deter: State, prior_logits: Tensor, stoch: Tensor) -> State:
        with self._frozen():
            return self.base.next_state(deter, prior_logits, stoch)

    def features(self, state: State) -> Tensor:
        with self._frozen():
            return self.base.features(state)

    def reward(self, features: Tensor) -> Tensor:
        with self._frozen():
            return self.base.reward(features)

    def continuation(self, features: Tensor) -> Tensor:
        with self._frozen():
            return self.base.continuation(features)

    def decode(self, features: Tensor) -> dict[str, Tensor]:
        with self._frozen():
            return self.base.decode(features)

    # -- files -----------------------------------------------------------------------------

    def _metadata(self, name: str, data_summary: dict[str, Any] | None) -> dict[str, str]:
        summary = data_summary if data_summary is not None else self.data_summaries.get(name, {})
        return {
            "format": FILE_FORMAT,
            "format_version": str(FILE_FORMAT_VERSION),
            "adapter_name": name,
            "adapter_type": self.adapter_configs[name].adapter_type,
            "config": json.dumps(config_to_dict(self.adapter_configs[name]), sort_keys=True),
            "backbone_id": self.backbone_id or "",
            "backbone_kwargs": json.dumps(self.backbone_kwargs, sort_keys=True),
            "latent_spec": json.dumps(self.latent.to_dict(), sort_keys=True),
            "action_size": str(self.action_size),
            "base_fingerprint": self.base_fingerprint,
            "fingerprint": fingerprint(self.residuals[name]),
            "library_version": __version__,
            "data_summary": json.dumps(summary, sort_keys=True),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    def save_pretrained(
        self,
        directory: str | Path,
        adapter_names: list[str] | None = None,
        *,
        data_summary: dict[str, Any] | None = None,
    ) -> list[Path]:
        """Write adapters: one adapter goes to ``directory`` itself, several to one subdirectory each.

        Each holds ``adapter.safetensors`` (weights; config, backbone id, latent spec, base
        fingerprint, the adapter weights' own fingerprint, library version and data summary in
        its metadata) and a readable
        ``adapter_config.json`` copy of that metadata. Files are written atomically.

        :returns: The directories written.
        """
        names = list(adapter_names) if adapter_names is not None else self.adapters
        if not names:
            raise ConfigError("There is no adapter to save; attach_residual() or add_adapter() first.")
        for name in names:
            self._check_name(name)
        directory = Path(directory)
        written = []
        for name in names:
            target = directory if len(names) == 1 else directory / name
            metadata = self._metadata(name, data_summary)
            write_safetensors(target / ADAPTER_WEIGHTS_NAME, self.residuals[name].state_dict(), metadata)
            readable = {key: json_or_text(value) for key, value in metadata.items()}
            write_text(target / ADAPTER_CONFIG_NAME, json.dumps(readable, indent=2, sort_keys=True) + "\n")
            written.append(target)
        return written

    def load_adapter(self, path: str | Path, *, trainable: bool, adapter_name: str | None = None) -> list[str]:
        """Load the adapter(s) saved at ``path`` onto this model; the last one loaded becomes active.

        :param path: An adapter directory, a directory of adapter subdirectories, or the
            ``adapter.safetensors`` file itself.
        :param trainable: Whether the loaded weights require gradients. Required, so that
            nobody trains a frozen adapter (or freezes a trainable one) by accident.
        :param adapter_name: Name to attach under; defaults to the name stored in the file.
            Only valid when ``path`` holds a single adapter.
        :returns: The names attached.
        """
        files = _adapter_files(Path(path))
        if adapter_name is not None and len(files) > 1:
            raise ConfigError(f"{path} holds {len(files)} adapters; adapter_name= applies to a single one.")
        names = []
        for file in files:
            names.append(self._load_one(file, trainable=trainable, adapter_name=adapter_name))
        logger.info(
            "loaded adapter(s) %s from %s (%s)",
            ", ".join(names),
            path,
            "trainable" if trainable else "frozen; pass trainable=True to train further",
        )
        return names

    def _load_one(self, file: Path, *, trainable: bool, adapter_name: str | None) -> str:
        tensors, meta = _read_adapter(file)
        stored = _parse_metadata(file, meta)
        if stored["base_fingerprint"] != self.base_fingerprint:
            raise IncompatibleAdapterError(
                f"{file}: adapter was made for a base with fingerprint {stored['base_fingerprint']} "
                f"(backbone {meta['backbone_id'] or 'unnamed'}), but this base's fingerprint is "
                f"{self.base_fingerprint} (backbone {self.backbone_id or 'unnamed'}). Load the base "
                "checkpoint the adapter was trained on."
            )
        if stored["latent_spec"] != self.latent.to_dict() or stored["action_size"] != self.action_size:
            raise IncompatibleAdapterError(
                f"{file}: adapter expects latent {stored['latent_spec']} (key 'latent_spec') and action size "
                f"{stored['action_size']} (key 'action_size'); this model has {self.latent.to_dict()} "
                f"and {self.action_size}."
            )
        config = stored["config"]
        # The base's fingerprint matched, so inputs this base lacks mean the stored config is wrong.
        missing = self._unknown_inputs(config)
        if missing:
            raise AdapterFileError(
                f"{file}: key 'config' names extra_inputs {missing}, not in the state of the base it was made for "
                f"(available: {self._inputs_available()}); the file is corrupt."
            )
        summary = stored["data_summary"]
        name = adapter_name or stored["adapter_name"]
        self.add_adapter(name, config, trainable=trainable)
        try:
            # Files written before adapter fingerprints were recorded have none; they load as they are.
            strict_load(
                self.residuals[name],
                tensors,
                file,
                AdapterFileError,
                expected_fingerprint=meta.get("fingerprint"),
                hint="; the network was built from key 'config', which does not describe these weights",
            )
        except AdapterFileError:
            self.delete_adapter(name)
            raise
        self.data_summaries[name] = summary
        return name

    @classmethod
    def from_pretrained(
        cls, base: WorldModel, path: str | Path, *, trainable: bool, adapter_name: str | None = None
    ) -> ResidualWorldModel:
        """Wrap ``base`` and load the adapter(s) at ``path`` (see :meth:`load_adapter`)."""
        model = cls(base)
        model.load_adapter(path, trainable=trainable, adapter_name=adapter_name)
        return model


_REQUIRED_METADATA = (
    "format",
    "format_version",
    "adapter_name",
    "config",
    "backbone_id",
    "latent_spec",
    "action_size",
    "base_fingerprint",
    "data_summary",
)


_CHECKS = {
    "file_format": FILE_FORMAT,
    "version": FILE_FORMAT_VERSION,
    "error": AdapterFileError,
    "kind": "latent-residual adapter",
    "required": _REQUIRED_METADATA,
}


_NAME_RULE = "must be non-empty, without '/', not starting with '.'"


def ensemble_members(model: WorldModel) -> int:
    """How many residual members correct ``model``'s prior: its active adapter's, 1 for any other model."""
    if not isinstance(model, ResidualWorldModel) or model._active is None:
        return 1
    return model.adapter_configs[model._active].members


def fitted_independently(model: WorldModel) -> bool:
    """Whether ``model``'s active adapter is an ensemble whose members were each fitted to the data
    (``ensemble_fit="independent"``), so that where they disagree the data left them free."""
    if ensemble_members(model) < 2:
        return False
    assert isinstance(model, ResidualWorldModel)  # only an adapted model has several members
    return model.adapter_configs[model.active_adapter].ensemble_fit == "independent"


def _valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and not name.startswith(".")


def _read_adapter(file: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    return read_checked(file, **_CHECKS)


def _parse_metadata(file: Path, meta: dict[str, str]) -> dict[str, Any]:
    """An adapter file's metadata decoded and checked key by key; ``AdapterFileError`` names the file and
    the first malformed key. The keys describing provenance only (backbone id, dates) are free text."""
    if not _valid_name(meta["adapter_name"]):
        raise AdapterFileError(f"{file}: key 'adapter_name' is {meta['adapter_name']!r}; an adapter name {_NAME_RULE}.")
    stored_config = metadata_json(file, meta, "config", AdapterFileError, dict)
    config = config_from_dict(ResidualConfig, stored_config, source=f"{file}: key 'config'", error=AdapterFileError)
    if meta.get("adapter_type", config.adapter_type) != config.adapter_type:
        raise AdapterFileError(
            f"{file}: key 'adapter_type' is {meta['adapter_type']!r} but key 'config' says {config.adapter_type!r}; "
            "the file is corrupt."
        )
    latent_spec = metadata_json(file, meta, "latent_spec", AdapterFileError, dict)
    try:
        if sorted(latent_spec) != ["classes", "groups"]:
            raise ConfigError(f"expected the keys 'groups' and 'classes', got {sorted(latent_spec)}")
        LatentSpec(**latent_spec)
    except ConfigError as exc:
        raise AdapterFileError(f"{file}: key 'latent_spec' is {latent_spec}: {exc}") from exc
    if "backbone_kwargs" in meta:
        metadata_json(file, meta, "backbone_kwargs", AdapterFileError, dict)
    if "fingerprint" in meta:  # files written before adapter fingerprints were recorded have none
        check_fingerprint_value(file, "fingerprint", meta["fingerprint"], AdapterFileError)
    return {
        "adapter_name": meta["adapter_name"],
        "config": config,
        "latent_spec": latent_spec,
        "action_size": metadata_int(file, meta, "action_size", AdapterFileError),
        "base_fingerprint": check_fingerprint_value(
            file, "base_fingerprint", meta["base_fingerprint"], AdapterFileError
        ),
        # An empty value means no summary was recorded.
        "data_summary": metadata_json(file, meta, "data_summary", AdapterFileError, dict)
        if meta["data_summary"]
        else {},
    }


def _adapter_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if (path / ADAPTER_WEIGHTS_NAME).exists():
        return [path / ADAPTER_WEIGHTS_NAME]
    nested = sorted(path.glob(f"*/{ADAPTER_WEIGHTS_NAME}")) if path.is_dir() else []
    if not nested:
        # The likeliest mix-up: the base's checkpoint given where its adapter was meant.
        seen = (
            f"this looks like a world_model directory (it holds {MODEL_WEIGHTS_NAME})"
            if (path / MODEL_WEIGHTS_NAME).is_file()
            else (
                f"there is no {ADAPTER_WEIGHTS_NAME} here or in its subdirectories"
                if path.is_dir()
                else "it does not exist"
            )
        )
        raise AdapterFileError(
            f"{path}: expected an adapter directory holding {ADAPTER_WEIGHTS_NAME} "
            f"(written by save_pretrained()); {seen}."
        )
    return nested


def read_adapter_info(path: str | Path) -> list[dict[str, Any]]:
    """Return the metadata of the adapter(s) at ``path`` without loading any weights."""
    infos = []
    for file in _adapter_files(Path(path)):
        header, meta = read_safetensors_header(file, error=AdapterFileError)
        check_metadata(file, meta, **_CHECKS)
        _parse_metadata(file, meta)
        info = {key: json_or_text(value) for key, value in meta.items()}
        info["path"] = str(file)
        info["parameters"] = sum(_numel(entry["shape"]) for entry in header.values())
        infos.append(info)
    return infos


def _numel(shape: list[int]) -> int:
    count = 1
    for dim in shape:
        count *= dim
    return count


def attach_residual(
    model: WorldModel, config: ResidualConfig | None = None, *, adapter_name: str = DEFAULT_ADAPTER_NAME
) -> ResidualWorldModel:
    """Return ``model`` wrapped with a new trainable residual adapter; ``model`` itself is untouched.

    :param config: The residual's settings; the paper's defaults when omitted.
    :param adapter_name: Name of the adapter (used for switching and in saved files).
    """
    adapted = ResidualWorldModel(model)
    adapted.add_adapter(adapter_name, config)
    return adapted


def load_adapter(
    model: WorldModel, path: str | Path, *, trainable: bool, adapter_name: str | None = None
) -> ResidualWorldModel:
    """Load saved adapter(s) onto ``model`` (a base, or an already adapted model to add to).

    :param trainable: Required: whether the loaded weights require gradients.
    """
    if isinstance(model, ResidualWorldModel):
        model.load_adapter(path, trainable=trainable, adapter_name=adapter_name)
        return model
    return ResidualWorldModel.from_pretrained(model, path, trainable=trainable, adapter_name=adapter_name)
