"""The ``latent-residual`` command: the click group, its listing commands, and one-line errors.

The pipeline's subcommands are in ``commands.py``; plugins add theirs through ``register_commands``.
Every error ends the command with one line on stderr and a non-zero exit code (2 for a usage
error, 1 otherwise); ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import traceback
from pathlib import Path

import click

from latent_residual.errors import LatentResidualError
from latent_residual.registry.lookup import list_backbones, list_envs, list_importers, list_methods
from latent_residual.registry.plugins import list_plugins, load_plugins, pm
from latent_residual.version import __version__
from latent_residual.workflow.cli import commands


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
@click.option("--debug", is_flag=True, help="On an error, print the whole traceback instead of one line.")
def cli(threads: int, debug: bool) -> None:
    """Adapt simulation-pretrained latent world models with latent-state dynamics residuals (ReDRAW)."""
    import torch

    _session["debug"] = debug
    torch.set_num_threads(threads)


# Set by the group's --debug flag; read by main() when a command fails.
_session = {"debug": False}


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
def plugins_command(as_json: bool) -> None:
    """List plugins, the backbones, environments, adaptation methods and importers they provide, and broken plugins."""
    plugins = list_plugins()
    tables = {
        "backbones": list_backbones(),
        "envs": list_envs(),
        "methods": list_methods(),
        "importers": list_importers(),
    }
    if as_json:
        fields = ("id", "plugin", "package", "version", "description")
        data = {"plugins": [dataclasses.asdict(p) for p in plugins]}
        data.update(
            {name: [{key: getattr(spec, key) for key in fields} for spec in specs] for name, specs in tables.items()}
        )
        click.echo(json.dumps(data, indent=2))
        return
    width = max((len(spec.id) for specs in tables.values() for spec in specs), default=0) + 2
    titles = {
        "backbones": "Backbones:",
        "envs": "Environments:",
        "methods": "Adaptation methods:",
        "importers": "Checkpoint importers:",
    }
    for name, specs in tables.items():
        click.echo(titles[name])
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
    from latent_residual.adapters import read_adapter_info
    from latent_residual.checkpoints import MODEL_WEIGHTS_NAME, read_world_model_config

    if (Path(path) / MODEL_WEIGHTS_NAME).exists():
        click.echo(json.dumps(read_world_model_config(path), indent=2, sort_keys=True))
    else:
        click.echo(json.dumps(read_adapter_info(path), indent=2, sort_keys=True))


def _register_plugin_commands() -> None:
    load_plugins()
    for impl in pm.hook.register_commands.get_hookimpls():
        try:
            impl.function(cli=cli)
        except Exception as exc:  # a broken plugin must not take the command down
            click.echo(f"latent-residual: plugin {impl.plugin_name!r} failed to add commands: {exc}", err=True)


def _one_line(text: str) -> str:
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Run the command; errors print one line (the traceback too with ``--debug``) and return a
    non-zero exit code: 2 for a usage error, 1 for any other error, 130 when interrupted.

    Run as a torchrun worker's program (no ``argv``), the process then ends without Python's
    shutdown: see :func:`_leave_torchrun_worker`.
    """
    code = _run(argv)
    if argv is None:
        _leave_torchrun_worker(code)
    return code


def _leave_torchrun_worker(code: int) -> None:
    """Under torchrun, flush the output and end the process at once (``os._exit``) instead of returning.

    Once DDP has wrapped a model, torch keeps the gloo process group, and its worker threads, alive
    past ``destroy_process_group()``. A worker thread that still frees a finished collective's
    tensors needs the GIL; if it asks while Python is shutting down, Python 3.11 ends the thread
    with ``pthread_exit``, which unwinds through a C++ destructor that may not throw: the process
    aborts with "terminate called without an active exception" (pytorch/pytorch#38228). Every file
    is written and closed by the time the command returns, so there is nothing left for the shutdown
    to do.
    """
    from latent_residual.errors import ConfigError
    from latent_residual.workflow.training.distributed import ranks_from_environment

    try:
        parallel = ranks_from_environment().parallel
    except ConfigError:  # malformed torchrun variables: the command has already said so
        return
    if parallel:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _run(argv: list[str] | None) -> int:
    commands.add_commands(cli)
    _register_plugin_commands()
    args = sys.argv[1:] if argv is None else argv
    _session["debug"] = False
    try:
        cli.main(args=args, prog_name="latent-residual", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "latent-residual"
        click.echo(f"latent-residual: error: {_one_line(exc.format_message())} (see '{command} --help')", err=True)
        return 2
    except click.exceptions.Abort:
        click.echo("latent-residual: aborted", err=True)
        return 130
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        click.echo(f"latent-residual: error: {_one_line(exc.format_message())}", err=True)
        return exc.exit_code or 1
    except Exception as exc:  # noqa: BLE001 - every error ends as one line; --debug shows where it came from
        if _session["debug"]:
            traceback.print_exc()
        # The library's errors, and those about files and values the user named, say it all in their
        # message; anything else is named by its class and points at --debug.
        expected = isinstance(exc, (LatentResidualError, OSError, ValueError))
        message = _one_line(str(exc)) if expected else f"{type(exc).__name__}: {_one_line(str(exc))}"
        hint = (
            "" if _session["debug"] or isinstance(exc, LatentResidualError) else " (run with --debug for the traceback)"
        )
        click.echo(f"latent-residual: error: {message or type(exc).__name__}{hint}", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
