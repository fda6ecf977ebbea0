"""What plugins register: the spec dataclasses of backbones, environments, adaptation methods and importers, the
experiment defaults an environment recommends, the tables that hold them, and the staging that adds one plugin's
registrations all at once or not at all.

Looking specs up and making things from them is ``registry/lookup.py``; discovering plugins is ``registry/plugins.py``.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from latent_residual.errors import ConfigError, RegistrationError

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


#: The key of an environment's ``recommended`` whose settings apply with every backbone.
EVERY_BACKBONE = "*"
_CONFIG_GROUPS = ("experiment", "pretrain", "policy", "actor_critic")


@dataclass(frozen=True)
class ExperimentDefaults:
    """Values that replace the defaults of an experiment's configs in ``demo`` and ``compare``, one dict per config,
    from the config's field names to values (``policy={"steps": 1500}``).

    ``demo`` and ``compare`` start from CPU-sized ones (``workflow/experiments/defaults.py``); an environment's
    ``recommended=`` is one more that ``demo`` applies. The field names are checked against the configs when the
    settings are applied (the configs live above this layer); each value by its config.
    """

    experiment: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "ExperimentConfig fields."})
    pretrain: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "PretrainConfig fields."})
    policy: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "PolicyTrainConfig fields."})
    actor_critic: Mapping[str, Any] = field(default_factory=dict, metadata={"help": "ActorCriticConfig fields."})
    methods: Mapping[str, Mapping[str, Any]] = field(
        default_factory=dict,
        metadata={
            "help": "The adaptation methods' settings, by group: a config nested in methods' configs (residual, "
            "fit: every method whose config has that field) or a method id (that method's own fields)."
        },
    )

    def __post_init__(self) -> None:
        for name in _CONFIG_GROUPS:
            object.__setattr__(self, name, _settings_dict(getattr(self, name), name))
        groups = _settings_dict(self.methods, "methods")
        object.__setattr__(
            self, "methods", {key: _settings_dict(value, f"methods[{key!r}]") for key, value in groups.items()}
        )

    def settings(self) -> dict[tuple[str, ...], Any]:
        """Every value by its path: ``("policy", "steps")``, ``("methods", "residual", "extra_inputs")``."""
        paths: dict[tuple[str, ...], Any] = {}
        for name in _CONFIG_GROUPS:
            paths.update({(name, key): value for key, value in getattr(self, name).items()})
        for group, values in self.methods.items():
            paths.update({("methods", group, key): value for key, value in values.items()})
        return paths

    @classmethod
    def from_settings(cls, settings: Mapping[tuple[str, ...], Any]) -> ExperimentDefaults:
        """The defaults holding ``settings`` (paths as :meth:`settings` gives them)."""
        values: dict[str, dict[str, Any]] = {"methods": {}}
        for path, value in settings.items():
            if path[0] == "methods":
                values["methods"].setdefault(path[1], {})[path[2]] = value
            else:
                values.setdefault(path[0], {})[path[1]] = value
        return cls(**values)

    def merged(self, other: ExperimentDefaults) -> ExperimentDefaults:
        """These settings with ``other``'s on top."""
        return ExperimentDefaults.from_settings({**self.settings(), **other.settings()})


def _settings_dict(value: Any, where: str) -> dict[str, Any]:
    """A copy of one config's settings (a list becomes a tuple, as the configs' sequence fields are)."""
    if not isinstance(value, Mapping) or not all(isinstance(key, str) for key in value):
        raise ConfigError(f"ExperimentDefaults.{where} must be a dict from field names to values, got {value!r}.")
    return {key: tuple(item) if isinstance(item, list) else item for key, item in value.items()}


def _recommended(env_id: str, value: Any) -> dict[str, ExperimentDefaults]:
    """An environment's ``recommended`` as a dict from a backbone id (or ``"*"``) to its defaults."""
    if isinstance(value, ExperimentDefaults):
        return {EVERY_BACKBONE: value}
    if not isinstance(value, Mapping):
        raise RegistrationError(
            f"Environment {env_id!r}: recommended={value!r} must be an ExperimentDefaults, or a dict from a backbone "
            "id (or '*', every backbone) to one."
        )
    for key, item in value.items():
        if key != EVERY_BACKBONE and not (isinstance(key, str) and _BACKBONE_ID.match(key)):
            raise RegistrationError(
                f"Environment {env_id!r}: recommended[{key!r}] names no backbone id ('name-vN') nor '*' "
                "(every backbone)."
            )
        if not isinstance(item, ExperimentDefaults):
            raise RegistrationError(
                f"Environment {env_id!r}: recommended[{key!r}] must be an ExperimentDefaults, got {item!r}."
            )
    return dict(value)


@dataclass
class EnvSpec:
    """A registered environment; the same id is registered with Gymnasium.

    The fields after ``expert`` describe a simulation (source) environment's place in an
    experiment: its usual ``target``, a shipped ``pretrained`` directory, the ``backbone`` that
    pretraining uses by default, the settings ``demo`` takes from it (``recommended``: an
    :class:`ExperimentDefaults`, or a dict from a backbone id, or ``"*"`` for every backbone, to one), the
    source ``recipe`` that builds its model offline (fields of
    ``latent_residual.workflow.training.recipes.SourceRecipe``, or a dict from a backbone id to them, as
    ``pretrained``), and whether it is the ``demo`` source.
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
    recommended: ExperimentDefaults | dict[str, ExperimentDefaults] = field(default_factory=dict)
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
        self.recommended = _recommended(self.id, self.recommended)
        recipes = self.recipe if isinstance(self.recipe, dict) and "data_plan" not in self.recipe else {"": self.recipe}
        if any(not isinstance(recipe, dict) or "data_plan" not in recipe for recipe in recipes.values()):
            raise RegistrationError(
                f"Environment {self.id!r}: recipe={self.recipe!r} must be a dict of SourceRecipe fields with a "
                "'data_plan', or a dict from backbone id to one."
            )
        self.namespace = match["namespace"]
        self.name = match["name"]
        self.id_version = int(match["version"])

    def recommended_for(self, backbone: str | None) -> ExperimentDefaults:
        """The settings recommended with ``backbone`` (the default backbone when ``None``): those for every
        backbone (``"*"``), then those under the backbone's id on top."""
        backbone = backbone or self.backbone
        every = self.recommended.get(EVERY_BACKBONE, ExperimentDefaults())
        return every.merged(self.recommended.get(backbone or "", ExperimentDefaults()))


@dataclass
class _NamedSpec:
    """What every registration by a short lowercase name has: the name, the entry point and where it came from."""

    id: str
    entry_point: EntryPoint
    description: str = ""
    plugin: str = ""
    package: str = ""
    version: str = ""
    #: What the id names and an example of one, for the malformed-id message.
    _kind: ClassVar[tuple[str, str]] = ("Name", "name")

    def __post_init__(self) -> None:
        if not _METHOD_ID.match(self.id):
            kind, example = self._kind
            raise RegistrationError(
                f"{kind} id {self.id!r} is malformed: expected a lowercase name such as {example!r}."
            )


@dataclass
class MethodSpec(_NamedSpec):
    """A registered adaptation method (ReDRAW's residual, a baseline, yours) and its ``config``: the dataclass of
    its hyperparameters (a class, or a ``"module:attr"`` string imported only when it is needed), or None."""

    config: type | str | None = None
    _kind: ClassVar[tuple[str, str]] = ("Method", "redraw")

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.config, str) and ":" not in self.config:
            raise RegistrationError(f"Method {self.id!r}: config={self.config!r} must be a class or 'module:attr'.")
        if self.config is not None and not isinstance(self.config, str) and not _is_dataclass_class(self.config):
            raise RegistrationError(f"Method {self.id!r}: config={self.config!r} must be a dataclass.")


@dataclass
class ImporterSpec(_NamedSpec):
    """A registered importer of another codebase's checkpoints (``latent-residual import ID``)."""

    _kind: ClassVar[tuple[str, str]] = ("Importer", "sheeprl")


def _is_dataclass_class(value: Any) -> bool:
    return isinstance(value, type) and dataclasses.is_dataclass(value)


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
