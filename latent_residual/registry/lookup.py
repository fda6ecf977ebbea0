"""Looking up and making what plugins registered: backbones, environments, adaptation methods and importers.

The specs and their tables are in ``registry/specs.py``; discovery of plugins is in ``registry/plugins.py``. Every
accessor loads plugins first, so a fresh process sees what is installed.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from latent_residual.errors import ConfigError, NameNotFound, RegistrationError, did_you_mean
from latent_residual.registry import specs
from latent_residual.registry.plugins import list_plugins, load_plugins
from latent_residual.registry.specs import BackboneSpec, EnvSpec, ImporterSpec, MethodSpec

if TYPE_CHECKING:
    import gymnasium

    from latent_residual.contract import WorldModel

_LISTING_HINT = "Run `latent-residual plugins` to list what is registered."


def load_entry_point(entry_point: specs.EntryPoint) -> Callable[..., Any]:
    """The callable an entry point names (a ``"module:attr"`` string is imported now)."""
    if callable(entry_point):
        return entry_point
    module_name, _, attr = entry_point.partition(":")
    return getattr(importlib.import_module(module_name), attr)


def _lookup(table: dict[str, Any], id: str, kind: str) -> Any:
    load_plugins()
    if id not in table:
        raise NameNotFound(f"No {kind} registered as {id!r}.{did_you_mean(id, table)} {_LISTING_HINT}")
    return table[id]


def _listing(table: dict[str, Any]) -> list[Any]:
    load_plugins()
    return [table[key] for key in sorted(table)]


def backbone_spec(id: str) -> BackboneSpec:
    """Return the spec of backbone ``id``; raises NameNotFound with the closest match."""
    return _lookup(specs.backbones, id, "backbone")


def env_spec(id: str) -> EnvSpec:
    """Return the spec of environment ``id``; raises NameNotFound with the closest match."""
    return _lookup(specs.envs, id, "environment")


def method_spec(id: str) -> MethodSpec:
    """Return the spec of adaptation method ``id``; raises NameNotFound with the closest match."""
    return _lookup(specs.methods, id, "adaptation method")


def importer_spec(id: str) -> ImporterSpec:
    """Return the spec of checkpoint importer ``id``; raises NameNotFound with the closest match."""
    return _lookup(specs.importers, id, "checkpoint importer")


def list_importers() -> list[ImporterSpec]:
    """Return every registered checkpoint importer, sorted by id."""
    return _listing(specs.importers)


def list_backbones() -> list[BackboneSpec]:
    """Return every registered backbone, sorted by id."""
    return _listing(specs.backbones)


def list_envs() -> list[EnvSpec]:
    """Return every registered environment, sorted by id."""
    return _listing(specs.envs)


def list_methods() -> list[MethodSpec]:
    """Return every registered adaptation method, sorted by id."""
    return _listing(specs.methods)


def backbone_preset(id: str, preset: str) -> dict[str, Any]:
    """The kwargs of backbone ``id``'s named ``preset``; raises ConfigError listing the presets it has."""
    spec = backbone_spec(id)
    if preset not in spec.presets:
        raise ConfigError(
            f"Backbone {id!r} has no preset {preset!r}.{did_you_mean(preset, spec.presets)} "
            f"Its presets: {sorted(spec.presets) or 'none'}."
        )
    return dict(spec.presets[preset])


def make_backbone(
    id: str,
    observation_space: gymnasium.spaces.Space,
    action_space: gymnasium.spaces.Space,
    **kwargs: Any,
) -> WorldModel:
    """Build backbone ``id`` for the given spaces; ``kwargs`` override the registered defaults.

    The model remembers its id and constructor arguments, so checkpoints can rebuild it.
    """
    from latent_residual.contract import WorldModel

    spec = backbone_spec(id)
    merged = {**spec.kwargs, **kwargs}
    model = load_entry_point(spec.entry_point)(observation_space, action_space, **merged)
    if not isinstance(model, WorldModel):
        raise RegistrationError(
            f"Backbone {id!r} (plugin {spec.plugin!r}) returned {type(model).__name__}, "
            "expected a latent_residual.WorldModel."
        )
    model.backbone_id = id
    model.backbone_kwargs = merged
    model.observation_space = observation_space
    model.action_space = action_space
    return model


def make_env(id: str, **kwargs: Any) -> gymnasium.Env:
    """Make environment ``id`` through Gymnasium after loading plugins; kwargs override defaults."""
    import gymnasium

    env_spec(id)
    return gymnasium.make(id, **kwargs)


def make_method(id: str) -> Any:
    """Build adaptation method ``id`` (see ``latent_residual.workflow.adaptation.base``)."""
    return load_entry_point(method_spec(id).entry_point)()


def method_config_class(id: str) -> type | None:
    """The config dataclass adaptation method ``id`` was registered with (imported now), or None if it has none."""
    spec = method_spec(id)
    if spec.config is None:
        return None
    config = load_entry_point(spec.config)
    if not (isinstance(config, type) and dataclasses.is_dataclass(config)):
        raise RegistrationError(
            f"Method {id!r} (plugin {spec.plugin!r}): config {spec.config!r} is {config!r}, not a dataclass."
        )
    return config


def method_config(id: str) -> Any:
    """Adaptation method ``id``'s config at its defaults (None for a method registered without one)."""
    config = method_config_class(id)
    return None if config is None else config()


def env_metrics(id: str) -> Callable[..., Any] | None:
    """Return environment ``id``'s task-metrics function (episodes of step infos -> metrics), if any."""
    spec = env_spec(id)
    return None if spec.metrics is None else load_entry_point(spec.metrics)


def env_expert(id: str, **kwargs: Any) -> Callable[[Any], Any]:
    """Build environment ``id``'s scripted expert (observation -> action) for its registered kwargs.

    Raises NameNotFound when the environment's plugin registered no expert.
    """
    spec = env_spec(id)
    if spec.expert is None:
        experts = [s.id for s in specs.envs.values() if s.expert is not None]
        raise NameNotFound(
            f"Environment {id!r} has no expert (plugin {spec.plugin!r} registered none); "
            f"environments with one: {experts or 'none'}."
        )
    return load_entry_point(spec.expert)(**{**spec.kwargs, **kwargs})


def env_pretrained(id: str, backbone: str | None = None) -> Path | None:
    """The pretraining directory shipped for environment ``id`` (holding ``world_model/``), if any.

    :param backbone: Whose default; the environment's own default backbone when omitted.
    """
    spec = env_spec(id)
    backbone = backbone or spec.backbone
    shipped = spec.pretrained if isinstance(spec.pretrained, dict) else {spec.backbone: spec.pretrained}
    place = shipped.get(backbone)
    if place is None:
        return None
    package, _, relative = place.partition(":")
    directory = Path(importlib.import_module(package).__file__).parent / relative
    return directory if (directory / "world_model").is_dir() else None


def demo_env() -> EnvSpec:
    """The source environment that ``demo`` and ``compare`` run when none is given.

    A built-in plugin's choice comes first; among several, the first id in order.
    """
    load_plugins()
    builtin = {info.name for info in list_plugins() if info.builtin}
    candidates = sorted((spec.plugin not in builtin, spec.id) for spec in specs.envs.values() if spec.demo)
    if not candidates:
        raise NameNotFound(f"No environment is registered as the demo source; give one with --source. {_LISTING_HINT}")
    return specs.envs[candidates[0][1]]


def source_target(source: str) -> str:
    """The registered target ("real") environment of simulation environment ``source``."""
    spec = env_spec(source)
    if spec.target is None:
        raise ConfigError(f"Environment {source!r} registers no target; give one with --target.")
    return spec.target


def source_backbone(source: str) -> str:
    """The backbone pretraining in ``source`` uses by default; the only registered one if it names none."""
    spec = env_spec(source)
    if spec.backbone is not None:
        return spec.backbone
    available = [backbone.id for backbone in list_backbones()]
    if len(available) == 1:
        return available[0]
    raise ConfigError(
        f"Environment {source!r} names no default backbone and {len(available)} are registered; "
        f"choose one of {available} (PretrainConfig.backbone, --backbone)."
    )
