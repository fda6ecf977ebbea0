"""The ``latent-residual`` command: the click group, config-to-flag mapping and one-line errors.

Pipeline subcommands are in ``commands.py``; plugins add theirs through ``register_commands``.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Callable
from typing import Any

import click

from latent_residual import __version__
from latent_residual.errors import LatentResidualError


def _option_name(prefix: str, name: str) -> tuple[str, str]:
    return f"{prefix}{name}".replace("_", "-"), f"{prefix}{name}".replace("-", "_")


def config_options(config_cls: type, *, prefix: str = "", exclude: tuple[str, ...] = ()) -> Callable:
    """Decorate a click command with one option per field of ``config_cls``.

    ``--hidden`` maps to field ``hidden`` (with ``prefix="fit-"``, ``--fit-lr`` to ``lr``); the
    field's ``help`` metadata and default show in ``--help``. Dict fields take JSON, tuple
    fields repeat (``--transitions 10000 --transitions 40000``), and an empty value empties one
    (``--residual-extra-inputs ''``). Build the config back with :func:`config_from_options`.
    """
    hints = typing.get_type_hints(config_cls)

    def decorate(command: Callable) -> Callable:
        for field in reversed(dataclasses.fields(config_cls)):
            if not field.init or field.name in exclude or field.name in ("adapter_type", "format_version"):
                continue
            flag, dest = _option_name(prefix, field.name)
            kind = hints[field.name]
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            common = {"show_default": True, "help": field.metadata.get("help", "")}
            if kind is bool:
                option = click.option(f"--{flag}/--no-{flag}", dest, default=default, **common)
            elif typing.get_origin(kind) is tuple:
                item = typing.get_args(kind)[0]
                option = click.option(f"--{flag}", dest, multiple=True, type=item, default=default, **common)
            elif typing.get_origin(kind) is dict:
                option = click.option(f"--{flag}", dest, type=str, default=json.dumps(default), **common)
            else:
                option = click.option(f"--{flag}", dest, type=kind, default=default, **common)
            command = option(command)
        return command

    return decorate


def config_from_options(config_cls: type, options: dict[str, Any], *, prefix: str = "") -> Any:
    """Build ``config_cls`` from the parsed options that :func:`config_options` added."""
    hints = typing.get_type_hints(config_cls)
    values = {}
    for field in dataclasses.fields(config_cls):
        flag, dest = _option_name(prefix, field.name)
        if dest not in options:
            continue
        value = options[dest]
        if typing.get_origin(hints[field.name]) is dict:
            try:
                value = json.loads(value)
            except json.JSONDecodeError as exc:
                raise click.BadParameter(f"expected JSON, got {value!r} ({exc})", param_hint=f"--{flag}") from exc
        elif isinstance(value, (list, tuple)):
            value = tuple(item for item in value if item != "")
        values[field.name] = value
    return config_cls(**values)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="latent-residual")
@click.option(
    "--threads",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="CPU threads for torch. The default models are small: a second thread gains little, and "
    "OpenMP's spin-waits make every op cost a scheduler slice when another process holds a core.",
)
def cli(threads: int) -> None:
    """Adapt simulation-pretrained latent world models with latent-state dynamics residuals (ReDRAW)."""
    import torch

    torch.set_num_threads(threads)


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def plugins_command(as_json: bool) -> None:
    """List plugins, the backbones and environments they provide, and broken plugins."""
    from latent_residual.plugins import list_plugins
    from latent_residual.registry import list_backbones, list_envs

    plugins = list_plugins()
    backbones = list_backbones()
    envs = list_envs()
    if as_json:
        data = {
            "plugins": [dataclasses.asdict(p) for p in plugins],
            "backbones": [{"id": b.id, "plugin": b.plugin, "package": b.package, "version": b.version,
                           "description": b.description} for b in backbones],
            "envs": [{"id": e.id, "plugin": e.plugin, "package": e.package, "version": e.version,
                      "description": e.description} for e in envs],
        }
        click.echo(json.dumps(data, indent=2))
        return
    width = max((len(spec.id) for spec in [*backbones, *envs]), default=0) + 2
    for title, specs in (("Backbones:", backbones), ("Environments:", envs)):
        click.echo(title)
        for spec in specs:
            click.echo(f"  {spec.id:<{width}}{spec.package} {spec.version} (plugin {spec.plugin})  {spec.description}")
    broken = [p for p in plugins if p.broken]
    click.echo("Plugins:")
    for info in plugins:
        state = "broken" if info.broken else ("built-in" if info.builtin else "ok")
        click.echo(f"  {info.name:<20} {info.package} {info.version} [{state}]")
    for info in broken:
        click.echo(f"Broken plugin {info.name!r} ({info.package} {info.version}) was skipped: {info.error}")


@cli.command(name="inspect")
@click.argument("path", type=click.Path(path_type=str))
def inspect_command(path: str) -> None:
    """Print the metadata of an adapter directory or a world-model checkpoint, without loading weights."""
    from pathlib import Path

    from latent_residual.adapters import read_adapter_info
    from latent_residual.checkpoints import MODEL_WEIGHTS_NAME, read_world_model_config

    if (Path(path) / MODEL_WEIGHTS_NAME).exists():
        click.echo(json.dumps(read_world_model_config(path), indent=2, sort_keys=True))
    else:
        click.echo(json.dumps(read_adapter_info(path), indent=2, sort_keys=True))


def _register_plugin_commands() -> None:
    from latent_residual.plugins import load_plugins, pm

    load_plugins()
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not take the command down
            click.echo(f"latent-residual: plugin {impl.plugin_name!r} failed to add commands: {exc}", err=True)


def main(argv: list[str] | None = None) -> int:
    """Run the command; errors print one line and return a non-zero exit code."""
    import latent_residual.commands  # noqa: F401  (adds the pipeline's subcommands to ``cli``)

    _register_plugin_commands()
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="latent-residual", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "latent-residual"
        click.echo(f"latent-residual: error: {exc.format_message()} (see '{command} --help')", err=True)
        return 2
    except LatentResidualError as exc:
        click.echo(f"latent-residual: error: {exc}", err=True)
        return 1
    except click.exceptions.Abort:
        click.echo("latent-residual: aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
