"""How the registered methods' configs split into setting groups: the flags of ``compare`` and ``demo``
(``--residual-hidden``, ``--testplug-narrow-width``) and the keys of ``ExperimentDefaults.methods``.

A config field that is itself a dataclass is a group named after the field, shared by every method whose config has it
(ReDRAW's and the replacement ablation's ``residual`` and ``fit``); a method's other fields are a group named after the
method. What a method is: ``base.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from latent_residual.errors import ConfigError
from latent_residual.registry.lookup import list_methods, method_config
from latent_residual.registry.plugins import list_plugins

#: Fields a config keeps for its file format, never set by hand.
_STORED_FIELDS = ("adapter_type", "format_version")


@dataclass(frozen=True)
class SettingGroup:
    """Settings that move together: the fields ``fields`` of ``config_class``, at ``default``'s values by default,
    read by the methods ``methods``."""

    name: str
    config_class: type
    default: Any
    fields: tuple[str, ...]
    methods: tuple[str, ...]

    def same_settings(self, other: SettingGroup) -> bool:
        """Whether ``other`` is these settings: the same class, fields and defaults."""
        return (self.config_class, self.fields, self.default) == (other.config_class, other.fields, other.default)


def _groups_of(method: str, config: Any) -> list[SettingGroup]:
    """``method``'s setting groups: one per nested config, and one named after it for its own fields."""
    groups, own = [], []
    for item in dataclasses.fields(config):
        if not item.init:
            continue
        value = getattr(config, item.name)
        if not dataclasses.is_dataclass(value) or isinstance(value, type):
            own.append(item.name)
            continue
        # A field of the nested config that the method sets itself ("fixed" metadata) gets no setting.
        skipped = (*item.metadata.get("fixed", ()), *_STORED_FIELDS)
        names = tuple(f.name for f in dataclasses.fields(value) if f.init and f.name not in skipped)
        groups.append(SettingGroup(item.name, type(value), value, names, (method,)))
    if own:
        groups.append(SettingGroup(method, type(config), config, tuple(own), (method,)))
    return groups


def _builtins_first() -> list[str]:
    """Every registered method, the built-in plugins' first (so their groups keep their names), then by id."""
    builtin = {info.name for info in list_plugins() if info.builtin}
    return [spec.id for spec in sorted(list_methods(), key=lambda spec: (spec.plugin not in builtin, spec.id))]


class MethodSettingGroups:
    """The setting groups of some registered methods (every one by default), and the methods left out, with why:
    a config that does not load, or one whose group clashes with a group of the same name met before."""

    def __init__(self, methods: Iterable[str] | None = None) -> None:
        self.groups: dict[str, SettingGroup] = {}
        self.problems: dict[str, str] = {}
        for method in _builtins_first() if methods is None else methods:
            self._add(method)

    def _add(self, method: str) -> None:
        try:
            config = method_config(method)
        except Exception as exc:  # noqa: BLE001 - a plugin's broken config must not take the other methods down
            self.problems[method] = f"its config does not load ({type(exc).__name__}: {exc})"
            return
        mine = [] if config is None else _groups_of(method, config)
        for group in mine:
            known = self.groups.get(group.name)
            if known is not None and not known.same_settings(group):
                self.problems[method] = (
                    f"its config's {group.name!r} settings are not those of {', '.join(known.methods)} "
                    f"({group.config_class.__name__}, other fields or defaults), which use the same name"
                )
                return
        for group in mine:
            known = self.groups.get(group.name)
            self.groups[group.name] = (
                group if known is None else dataclasses.replace(known, methods=(*known.methods, method))
            )

    def drop(self, name: str, why: str) -> None:
        """Leave group ``name`` out (``why``: a sentence naming the problem); its methods cannot be configured."""
        for method in self.groups.pop(name).methods:
            self.problems[method] = why

    def of(self, method: str) -> list[SettingGroup]:
        """The groups ``method`` reads."""
        return [group for group in self.groups.values() if method in group.methods]

    def config(self, method: str, values: Mapping[str, Any]) -> Any:
        """``method``'s config from its groups' values (group name -> an instance of the group's class; a group
        missing from ``values`` keeps its defaults); None for a method without a config."""
        if method in self.problems:
            raise ConfigError(f"Method {method!r} cannot be configured: {self.problems[method]}.")
        config = method_config(method)
        if config is None:
            return None
        own = values.get(method, config)
        nested = {
            group.name: values[group.name] for group in self.of(method) if group.name != method and group.name in values
        }
        return dataclasses.replace(own, **nested)
