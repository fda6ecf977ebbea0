"""Hook specifications (pluggy markers and specs) for latent-residual plugins.

Only the specs live here; the plugin manager and loading are in ``registry/plugins.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Callable

    import click

PROJECT_NAME = "latent_residual"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Registration hooks: called once per process, by ``load_plugins()``. Every
# ``register`` callback also takes ``override=True``, which lets that one
# registration replace an id another plugin registered; without it a duplicate
# id marks the plugin broken, and nothing it registered is kept.
# ---------------------------------------------------------------------------


@hookspec
def register_backbones(register: Callable[..., Any]) -> None:
    """Register world-model backbones by calling ``register`` once per backbone.

    :param register: Call as ``register(id, entry_point, *, description="", kwargs=None,
        presets=None)``. ``id`` has the form ``name-vN`` (for example ``"draw-v0"``).
        ``entry_point`` is a callable or a ``"module:attr"`` string imported only when the
        backbone is made; it is called as ``entry_point(observation_space, action_space,
        **kwargs)`` and returns a :class:`latent_residual.WorldModel`. ``kwargs`` are defaults
        that ``make_backbone`` overrides. ``presets`` maps preset names to kwargs; ``"cpu"`` is
        the one ``demo`` and ``compare`` pretrain with.

    Every implementation is called, each on its own: one that raises is reported as broken
    and skipped. Keep the module that implements this hook light (no torch or mujoco import at
    module level) so that listing plugins stays fast.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``presets``.
    """


@hookspec
def register_envs(register: Callable[..., Any]) -> None:
    """Register Gymnasium environments by calling ``register`` once per environment.

    :param register: Call as ``register(id, entry_point, *, description="", kwargs=None,
        max_episode_steps=None, metrics=None, expert=None, target=None, pretrained=None,
        backbone=None, recommended=None, recipe=None, demo=False)``. ``id`` has the form ``namespace/name-vN``;
        the environment is also registered with Gymnasium under that id, so ``gymnasium.make(id)``
        works. ``entry_point`` is a callable or a ``"module:attr"`` string imported only at make
        time. ``metrics`` (optional, same forms) maps a list of episodes, each the list of its
        steps' ``info`` dicts, to task metrics (a dataclass or a dict of numbers) for evaluation.
        ``expert`` (optional, same forms) is called with the environment's kwargs and returns a
        scripted behaviour policy (observation -> action) for collecting data. For a simulation
        (source) environment: ``target`` is the id of its usual target ("real") environment;
        ``pretrained`` a ``"package:relative/dir"`` holding a shipped pretraining directory (or a
        dict from backbone id to one, a default per backbone);
        ``backbone`` the backbone id pretraining uses by default; ``recommended`` the experiment
        settings ``demo`` applies (``compare`` does not): a
        :class:`latent_residual.ExperimentDefaults`, whose fields name the configs' fields
        (``ExperimentDefaults(methods={"residual": {"extra_inputs": ("belief",)}})``), or a dict
        from a backbone id (or ``"*"``, every backbone) to one; a field that names no config
        field is a :class:`RegistrationError` naming the environment and the field when
        ``demo`` applies it; ``recipe`` the fields of a
        :class:`latent_residual.workflow.training.recipes.SourceRecipe` (a data plan from the expert and
        random actions, sizes, updates) that ``latent-residual build-source`` follows to build the
        source's world model and policy offline; ``demo`` marks the source that
        ``demo`` and ``compare`` run when none is given.

    Every implementation is called, each on its own: one that raises is reported as broken
    and skipped.

    .. versionadded:: 0.1
    .. versionchanged:: 0.2
        ``target``, ``pretrained``, ``backbone``, ``recommended`` and ``demo``.
    .. versionchanged:: 0.3
        ``recipe``; ``recommended`` is an :class:`ExperimentDefaults` (or one per backbone), keyed by
        config fields, not by ``demo``'s flags.
    """


@hookspec
def register_methods(register: Callable[..., Any]) -> None:
    """Register adaptation methods (ways to turn a simulation model into a target policy).

    :param register: Call as ``register(id, entry_point, *, config=None, description="")``.
        ``id`` is a short lowercase name (``"redraw"``), used by ``compare --methods``.
        ``entry_point`` is a class or a ``"module:attr"`` string imported only when the method
        runs; it is called with no arguments and returns a
        :class:`latent_residual.workflow.adaptation.base.AdaptationMethod`. ``config`` is the
        dataclass of the method's hyperparameters (a class or a ``"module:attr"`` string); its
        ``adapt`` receives an instance, ``run_experiment(method_configs=...)`` takes one, and
        ``compare`` and ``demo`` have a flag per field: ``--ID-FIELD`` for a plain field, and for a
        field that is itself a config, ``--FIELD-SUBFIELD``, shared by every method whose config
        has that field (ReDRAW's ``residual`` and ``fit``: ``--residual-hidden``, ``--fit-lr``).

    Every implementation is called, each on its own: one that raises is reported as broken
    and skipped.

    .. versionadded:: 0.2
    .. versionchanged:: 0.3
        ``config``.
    """


@hookspec
def register_importers(register: Callable[..., Any]) -> None:
    """Register importers of other codebases' checkpoints by calling ``register`` once per format.

    :param register: Call as ``register(id, entry_point, *, description="")``. ``id`` is a short
        lowercase name (``"sheeprl"``), the first argument of ``latent-residual import``.
        ``entry_point`` is a callable or a ``"module:attr"`` string imported only when the importer
        runs; it is called as ``entry_point(checkpoint, out, *, config=None, env_id=None,
        overwrite=False)`` with ``pathlib.Path`` arguments (``config`` and ``env_id`` as the user
        gave them, or None), writes a directory that ``latent_residual.load_world_model`` and
        ``load_actor_critic`` read, and returns a dict from what it wrote to its path.

    Every implementation is called, each on its own: one that raises is reported as broken
    and skipped.

    .. versionadded:: 0.3
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add subcommands to the ``latent-residual`` command.

    :param cli: The top-level click group; decorate functions with ``@cli.command()``.

    Called once, when the command starts. An implementation that raises is reported on
    standard error and skipped.

    .. versionadded:: 0.1
    """
