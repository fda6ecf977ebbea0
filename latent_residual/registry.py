"""The registry of backbones and environments that plugins provide: specs, ``make`` and look-ups.

Discovery of plugins is in ``plugins.py``; the world-model contract itself is in ``contract.py``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from latent_residual.errors import NameNotFound, RegistrationError, did_you_mean

if TYPE_CHECKING:
    import gymnasium

    from latent_residual.contract import WorldModel

_BACKBONE_ID = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+?)-v(?P<version>\d+)$")
_ENV_ID = re.compile(r"^(?P<namespace>[A-Za-z0-9_.\-]+)/(?P<name>[A-Za-z0-9_.\-]+?)-v(?P<version>\d+)$")
_LISTING_HINT = "Run `latent-residual plugins` to list what is registered."


def _load_entry_point(entry_point: Callable[..., Any] | str) -> Callable[..., Any]:
    if callable(entry_point):
        return entry_point
    module_name, _, attr = entry_point.partition(":")
    return getattr(importlib.import_module(module_name), attr)


@dataclass
class BackboneSpec:
    """A registered world-model backbone (modelled on Gymnasium's ``EnvSpec``)."""

    id: str
    entry_point: Callable[..., Any] | str
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    plugin: str = ""
    package: str = ""
    version: str = ""
    name: str = field(init=False)
    id_version: int = field(init=False)

    def __post_init__(self) -> None:
        match = _BACKBONE_ID.match(self.id)
        if match is None:
            raise RegistrationError(
                f"Backbone id {self.id!r} is malformed: expected 'name-vN', for example 'draw-v0'."
            )
        self.name = match["name"]
        self.id_version = int(match["version"])


@dataclass
class EnvSpec:
    """A registered environment; the same id is registered with Gymnasium."""

    id: str
    entry_point: Callable[..., Any] | str
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None
    metrics: Callable[..., Any] | str | None = None
    expert: Callable[..., Any] | str | None = None
    plugin: str = ""
    package: str = ""
    version: str = ""
    namespace: str = field(init=False)
    name: str = field(init=False)
    id_version: int = field(init=False)

    def __post_init__(self) -> None:
        match = _ENV_ID.match(self.id)
        if match is None:
            raise RegistrationError(
                f"Environment id {self.id!r} is malformed: expected 'namespace/name-vN', "
                "for example 'dmc/pendulum-swingup-v0'."
            )
        self.namespace = match["namespace"]
        self.name = match["name"]
        self.id_version = int(match["version"])


_backbones: dict[str, BackboneSpec] = {}
_envs: dict[str, EnvSpec] = {}


class Staging:
    """Collects one plugin's registrations so that a plugin that fails adds nothing."""

    def __init__(self, plugin: str, package: str, version: str) -> None:
        self._origin = {"plugin": plugin, "package": package, "version": version}
        self._backbones: list[BackboneSpec] = []
        self._envs: list[EnvSpec] = []
        self._override = False

    def backbone(
        self,
        id: str,
        entry_point: Callable[..., Any] | str,
        *,
        description: str = "",
        kwargs: dict[str, Any] | None = None,
        override: bool = False,
    ) -> None:
        self._backbones.append(
            BackboneSpec(id, entry_point, description, dict(kwargs or {}), **self._origin)
        )
        self._override |= override

    def env(
        self,
        id: str,
        entry_point: Callable[..., Any] | str,
        *,
        description: str = "",
        kwargs: dict[str, Any] | None = None,
        max_episode_steps: int | None = None,
        metrics: Callable[..., Any] | str | None = None,
        expert: Callable[..., Any] | str | None = None,
        override: bool = False,
    ) -> None:
        self._envs.append(
            EnvSpec(
                id, entry_point, description, dict(kwargs or {}), max_episode_steps, metrics, expert, **self._origin
            )
        )
        self._override |= override

    def commit(self) -> None:
        for table, specs in ((_backbones, self._backbones), (_envs, self._envs)):
            for spec in specs:
                if spec.id in table and not self._override:
                    raise RegistrationError(
                        f"{spec.id!r} is already registered by plugin {table[spec.id].plugin!r}; "
                        "pass override=True to replace it."
                    )
        for spec in self._backbones:
            _backbones[spec.id] = spec
        for spec in self._envs:
            _register_with_gymnasium(spec)
            _envs[spec.id] = spec


def _register_with_gymnasium(spec: EnvSpec) -> None:
    import gymnasium

    gymnasium.envs.registration.registry.pop(spec.id, None)
    gymnasium.register(
        spec.id,
        entry_point=spec.entry_point,
        kwargs=spec.kwargs,
        max_episode_steps=spec.max_episode_steps,
    )


def _clear() -> None:
    import gymnasium

    for env_id in _envs:
        gymnasium.envs.registration.registry.pop(env_id, None)
    _backbones.clear()
    _envs.clear()


def _lookup(table: dict[str, Any], id: str, kind: str) -> Any:
    from latent_residual.plugins import load_plugins

    load_plugins()
    if id not in table:
        raise NameNotFound(f"No {kind} registered as {id!r}.{did_you_mean(id, table)} {_LISTING_HINT}")
    return table[id]


def backbone_spec(id: str) -> BackboneSpec:
    """Return the spec of backbone ``id``; raises NameNotFound with the closest match."""
    return _lookup(_backbones, id, "backbone")


def env_spec(id: str) -> EnvSpec:
    """Return the spec of environment ``id``; raises NameNotFound with the closest match."""
    return _lookup(_envs, id, "environment")


def list_backbones() -> list[BackboneSpec]:
    """Return every registered backbone, sorted by id."""
    from latent_residual.plugins import load_plugins

    load_plugins()
    return [_backbones[key] for key in sorted(_backbones)]


def list_envs() -> list[EnvSpec]:
    """Return every registered environment, sorted by id."""
    from latent_residual.plugins import load_plugins

    load_plugins()
    return [_envs[key] for key in sorted(_envs)]


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
    model = _load_entry_point(spec.entry_point)(observation_space, action_space, **merged)
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


def env_metrics(id: str) -> Callable[..., Any] | None:
    """Return environment ``id``'s task-metrics function (episodes of step infos -> metrics), if any."""
    spec = env_spec(id)
    return None if spec.metrics is None else _load_entry_point(spec.metrics)


def env_expert(id: str, **kwargs: Any) -> Callable[[Any], Any]:
    """Build environment ``id``'s scripted expert (observation -> action) for its registered kwargs.

    Raises NameNotFound when the environment's plugin registered no expert.
    """
    spec = env_spec(id)
    if spec.expert is None:
        experts = [s.id for s in _envs.values() if s.expert is not None]
        raise NameNotFound(
            f"Environment {id!r} has no expert (plugin {spec.plugin!r} registered none); "
            f"environments with one: {experts or 'none'}."
        )
    return _load_entry_point(spec.expert)(**{**spec.kwargs, **kwargs})


def make_env(id: str, **kwargs: Any) -> gymnasium.Env:
    """Make environment ``id`` through Gymnasium after loading plugins; kwargs override defaults."""
    import gymnasium

    env_spec(id)
    return gymnasium.make(id, **kwargs)
