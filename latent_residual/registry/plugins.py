"""The plugin manager: entry-point discovery, the run-once ``load_plugins()`` and the broken-plugin list.

Hook specs are in ``registry/hookspecs.py``; what plugins register lands in the tables of ``registry/specs.py``.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
import traceback
from dataclasses import dataclass

import pluggy

from latent_residual.registry import hookspecs, specs

ENTRY_POINT_GROUP = "latent_residual"
LOAD_PLUGINS_ENV = "LATENT_RESIDUAL_LOAD_PLUGINS"
FIRST_PARTY_DISTRIBUTION = "latent-residual"
#: Registration hooks and the Staging method each one's ``register`` callback is.
_REGISTRATION_HOOKS = {
    "register_backbones": "backbone",
    "register_envs": "env",
    "register_methods": "method",
    "register_importers": "importer",
}


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as the manager saw it: where it came from and whether it works."""

    name: str
    package: str
    version: str
    builtin: bool
    error: str | None = None

    @property
    def broken(self) -> bool:
        return self.error is not None


pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
pm.add_hookspecs(hookspecs)

_loaded = False
_infos: dict[str, PluginInfo] = {}
_pending: set[str] = set()


def _normalise(distribution: str) -> str:
    return distribution.lower().replace("_", "-").replace(".", "-")


def _allowed_distributions() -> set[str] | None:
    """Distributions allowed by LATENT_RESIDUAL_LOAD_PLUGINS: None means all, empty means none."""
    value = os.environ.get(LOAD_PLUGINS_ENV)
    if value is None:
        return None
    return {_normalise(item) for item in value.split(",") if item.strip()}


def _error_text(exc: BaseException) -> str:
    frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
    where = f" ({frame.filename}:{frame.lineno})" if frame else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _report_broken(info: PluginInfo) -> None:
    print(
        f"latent-residual: plugin {info.name!r} from {info.package} {info.version} is broken "
        f"and was skipped: {info.error}",
        file=sys.stderr,
    )


def _run_registration(name: str, plugin: object) -> str | None:
    """Call one plugin's registration hooks; keep what it registered only if none raised."""
    info = _infos[name]
    staged = specs.Staging(plugin=name, package=info.package, version=info.version)
    for hook_name, method in _REGISTRATION_HOOKS.items():
        for impl in getattr(pm.hook, hook_name).get_hookimpls():
            if impl.plugin is not plugin:
                continue
            register = getattr(staged, method)
            try:
                impl.function(**{arg: register for arg in impl.argnames})
            except Exception as exc:  # a broken plugin must not take the others down
                return _error_text(exc)
    try:
        staged.commit()
    except Exception as exc:
        return _error_text(exc)
    return None


def register(plugin: object, name: str, *, package: str = "(runtime)", version: str = "") -> PluginInfo:
    """Register a plugin object (a module or an instance with hook implementations) by hand.

    Useful in notebooks and tests; installed plugins come from the ``latent_residual``
    entry-point group instead. Returns the plugin's info; a plugin whose hooks raise is
    reported as broken, not raised.
    """
    load_plugins()
    return _add(plugin, name, package=package, version=version, builtin=False)


def _add(plugin: object, name: str, *, package: str, version: str, builtin: bool) -> PluginInfo:
    if name in _infos:
        info = PluginInfo(name, package, version, builtin, f"a plugin named {name!r} is already loaded")
        _report_broken(info)
        return info
    _infos[name] = PluginInfo(name, package, version, builtin)
    pm.register(plugin, name=name)
    error = _run_registration(name, plugin)
    if error is not None:
        pm.unregister(name=name)
        _infos[name] = PluginInfo(name, package, version, builtin, error)
        _report_broken(_infos[name])
    return _infos[name]


def load_plugins() -> None:
    """Discover and register installed plugins, once per process.

    First-party plugins (this distribution's own entry points) always load. Third-party ones
    load unless ``LATENT_RESIDUAL_LOAD_PLUGINS`` is set: then only the distributions it lists
    (comma separated) load, and an empty value loads none, which rescues a broken install.

    A plugin module that is still being imported when this runs (its package imported
    ``latent_residual``, which loads plugins) is registered on the next call instead, once
    its hooks exist; every registry accessor calls this function.
    """
    global _loaded
    if _loaded and not _pending:
        return
    _loaded = True
    allowed = _allowed_distributions()
    for entry_point in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        if entry_point.name in _infos:
            continue
        dist = entry_point.dist
        package = dist.metadata["Name"] if dist is not None else "(unknown)"
        version = dist.version if dist is not None else ""
        builtin = _normalise(package) == FIRST_PARTY_DISTRIBUTION
        if not builtin and allowed is not None and _normalise(package) not in allowed:
            continue
        try:
            module = entry_point.load()
        except Exception as exc:
            info = PluginInfo(entry_point.name, package, version, builtin, _error_text(exc))
            _infos[entry_point.name] = info
            _report_broken(info)
            continue
        if getattr(getattr(module, "__spec__", None), "_initializing", False):
            _pending.add(entry_point.name)
            continue
        _pending.discard(entry_point.name)
        _add(module, entry_point.name, package=package, version=version, builtin=builtin)


def list_plugins() -> list[PluginInfo]:
    """Return every plugin seen, working or broken, built-ins first."""
    load_plugins()
    return sorted(_infos.values(), key=lambda info: (not info.builtin, info.name))


def unload_plugins() -> None:
    """Forget every plugin and registration; the next accessor discovers and loads them again.

    For a running session that installed or removed a plugin (a notebook), and for tests.
    """
    global _loaded

    for name in list(_infos):
        if pm.has_plugin(name):
            pm.unregister(name=name)
    _infos.clear()
    _pending.clear()
    specs.clear()
    _loaded = False
