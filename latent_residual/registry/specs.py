"""What plugins register: the spec dataclasses of backbones, environments, adaptation methods and importers, the
tables that hold them, and the staging that adds one plugin's registrations all at once or not at all.

Looking specs up and making things from them is ``registry/lookup.py``; discovering plugins is ``registry/plugins.py``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from latent_residual.errors import RegistrationError

_BACKBONE_ID = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+?)-v(?P<version>\d+)$")
_ENV_ID = re.compile(r"^(?P<namespace>[A-Za-z0-9_.\-]+)/(?P<name>[A-Za-z0-9_.\-]+?)-v(?P<version>\d+)$")
_METHOD_ID = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")

EntryPoint = Callable[..., Any] | str
"""A callable, or a ``"module:attr"`` string imported only when the thing is made."""


@dataclass
class BackboneSpec:
    """A registered world-model backbone (modelled on Gymnasium's ``EnvSpec``)."""

    id: str
    entry_point: EntryPoint
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    plugin: str = ""
    package: str = ""
    version: str = ""
    name: str = field(init=False)
    id_version: int = field(init=False)

    def __post_init__(self) -> None:
        match = _BACKBONE_ID.match(self.id)
        if match is None:
            raise RegistrationError(f"Backbone id {self.id!r} is malformed: expected 'name-vN', for example 'rssm-v1'.")
        self.name = match["name"]
        self.id_version = int(match["version"])


@dataclass
class EnvSpec:
    """A registered environment; the same id is registered with Gymnasium.

    The fields after ``expert`` describe a simulation (source) environment's place in an
    experiment: its usual ``target``, a shipped ``pretrained`` directory, the ``backbone`` that
    pretraining uses by default, ``recommended`` experiment settings (for every backbone, or under a
    backbone id for that backbone only), the source ``recipe`` that builds its model offline (fields of
    ``latent_residual.workflow.training.recipes.SourceRecipe``), and whether it is the ``demo`` source.
    """

    id: str
    entry_point: EntryPoint
    description: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    max_episode_steps: int | None = None
    metrics: EntryPoint | None = None
    expert: EntryPoint | None = None
    target: str | None = None
    pretrained: str | dict[str, str] | None = None
    backbone: str | None = None
    recommended: dict[str, Any] = field(default_factory=dict)
    recipe: dict[str, Any] = field(default_factory=dict)
    demo: bool = False
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
                "for example 'mylab/arm-reach-v0'."
            )
        shipped = self.pretrained if isinstance(self.pretrained, dict) else {"": self.pretrained or ":"}
        if any(not isinstance(place, str) or ":" not in place for place in shipped.values()):
            raise RegistrationError(
                f"Environment {self.id!r}: pretrained={self.pretrained!r} must be 'package:relative/dir', or a "
                "dict from backbone id to one."
            )
        for key, value in self.recommended.items():
            if _BACKBONE_ID.match(key) and not isinstance(value, dict):
                raise RegistrationError(
                    f"Environment {self.id!r}: recommended[{key!r}] must be a dict of settings for backbone {key!r}, "
                    f"got {value!r}."
                )
        if not isinstance(self.recipe, dict) or (self.recipe and "data_plan" not in self.recipe):
            raise RegistrationError(
                f"Environment {self.id!r}: recipe={self.recipe!r} must be a dict of SourceRecipe fields with a 'data_plan'."
            )
        self.namespace = match["namespace"]
        self.name = match["name"]
        self.id_version = int(match["version"])

    def recommended_for(self, backbone: str | None) -> dict[str, Any]:
        """The settings recommended with ``backbone`` (the default backbone when ``None``): the settings
        for every backbone, then those under the backbone's id (``{"draw-v0": {...}}``) on top."""
        backbone = backbone or self.backbone
        common = {key: value for key, value in self.recommended.items() if not _BACKBONE_ID.match(key)}
        return {**common, **self.recommended.get(backbone or "", {})}


@dataclass
class MethodSpec:
    """A registered adaptation method (ReDRAW's residual, a baseline, yours)."""

    id: str
    entry_point: EntryPoint
    description: str = ""
    plugin: str = ""
    package: str = ""
    version: str = ""
    #: What the id names and an example of one, for the malformed-id message.
    _kind = ("Method", "redraw")

    def __post_init__(self) -> None:
        if not _METHOD_ID.match(self.id):
            kind, example = self._kind
            raise RegistrationError(
                f"{kind} id {self.id!r} is malformed: expected a lowercase name such as {example!r}."
            )


@dataclass
class ImporterSpec(MethodSpec):
    """A registered importer of another codebase's checkpoints (``latent-residual import ID``); its fields
    and id rule are a method's."""

    _kind = ("Importer", "sheeprl")


backbones: dict[str, BackboneSpec] = {}
envs: dict[str, EnvSpec] = {}
methods: dict[str, MethodSpec] = {}
importers: dict[str, ImporterSpec] = {}


class Staging:
    """Collects one plugin's registrations so that a plugin that fails adds nothing."""

    def __init__(self, plugin: str, package: str, version: str) -> None:
        self._origin = {"plugin": plugin, "package": package, "version": version}
        self._staged: list[tuple[dict[str, Any], Any, bool]] = []

    def backbone(self, id: str, entry_point: EntryPoint, *, override: bool = False, **fields: Any) -> None:
        """The ``register`` callback of ``register_backbones``."""
        self._stage(backbones, BackboneSpec(id, entry_point, **_copied(fields), **self._origin), override)

    def env(self, id: str, entry_point: EntryPoint, *, override: bool = False, **fields: Any) -> None:
        """The ``register`` callback of ``register_envs``."""
        self._stage(envs, EnvSpec(id, entry_point, **_copied(fields), **self._origin), override)

    def method(self, id: str, entry_point: EntryPoint, *, override: bool = False, **fields: Any) -> None:
        """The ``register`` callback of ``register_methods``."""
        self._stage(methods, MethodSpec(id, entry_point, **fields, **self._origin), override)

    def importer(self, id: str, entry_point: EntryPoint, *, override: bool = False, **fields: Any) -> None:
        """The ``register`` callback of ``register_importers``."""
        self._stage(importers, ImporterSpec(id, entry_point, **fields, **self._origin), override)

    def _stage(self, table: dict[str, Any], spec: Any, override: bool) -> None:
        self._staged.append((table, spec, override))

    def commit(self) -> None:
        """Add every staged spec, or none if one clashes with an earlier registration it does not override."""
        for table, spec, override in self._staged:
            if spec.id in table and not override:
                raise RegistrationError(
                    f"{spec.id!r} is already registered by plugin {table[spec.id].plugin!r}; "
                    "pass override=True to replace it."
                )
        for table, spec, _ in self._staged:
            if table is envs:
                _register_with_gymnasium(spec)
            table[spec.id] = spec


def _copied(fields: dict[str, Any]) -> dict[str, Any]:
    """Registration dicts are copied, so a plugin that changes its own dict later changes nothing."""
    return {
        key: dict(value) if isinstance(value, dict) else value for key, value in fields.items() if value is not None
    }


def _register_with_gymnasium(spec: EnvSpec) -> None:
    import gymnasium

    gymnasium.envs.registration.registry.pop(spec.id, None)
    gymnasium.register(
        spec.id,
        entry_point=spec.entry_point,
        kwargs=spec.kwargs,
        max_episode_steps=spec.max_episode_steps,
    )


def clear() -> None:
    """Forget every registration (and the Gymnasium registrations of the environments)."""
    import gymnasium

    for env_id in envs:
        gymnasium.envs.registration.registry.pop(env_id, None)
    backbones.clear()
    envs.clear()
    methods.clear()
    importers.clear()
