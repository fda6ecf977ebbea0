"""What the commands share: the checks of an output path made before any work (as usage errors), and the options
several commands take (``--overwrite``, a saved policy, a target dataset).

The commands are in ``commands.py`` (the pipeline) and ``experiments.py`` (``demo`` and ``compare``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from latent_residual.errors import OutputPathError
from latent_residual.workflow import paths

PATH = click.Path(path_type=Path)
COUNT = click.IntRange(min=1)
SEED = click.IntRange(min=0)


@contextmanager
def usage_error() -> Iterator[None]:
    """An unusable output path, found before any work, as a usage error naming its flag (exit code 2)."""
    try:
        yield
    except OutputPathError as exc:
        raise click.BadParameter(exc.detail, param_hint=exc.option) from exc


def check_output_directory(path: Path, **options: Any) -> None:
    """:func:`latent_residual.workflow.paths.check_output_directory` as a usage error (exit code 2)."""
    with usage_error():
        paths.check_output_directory(path, **options)


def check_output_file(path: Path, **options: Any) -> None:
    """:func:`latent_residual.workflow.paths.check_output_file` as a usage error (exit code 2)."""
    with usage_error():
        paths.check_output_file(path, **options)


def overwrite_option(what: str) -> Callable:
    return click.option("--overwrite", is_flag=True, help=f"Replace {what} already at --out.")


def saved_policy_options(*, required: bool) -> Callable:
    """--world-model and --policy: a policy saved as a checkpoint plus an actor-critic file."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--policy", type=PATH, required=required, help="actor_critic.safetensors of the saved policy."
        )(command)
        return click.option(
            "--world-model",
            type=PATH,
            required=required,
            help="World-model checkpoint of the saved policy (its encoder).",
        )(command)

    return decorate


def data_options(command: Callable) -> Callable:
    """--data, --max-transitions and --sequence-length: the target data a step fits on."""
    command = click.option(
        "--sequence-length", type=COUNT, default=32, show_default=True, help="Steps per training sequence."
    )(command)
    command = click.option("--max-transitions", type=COUNT, default=None, help="Use at most this many transitions.")(
        command
    )
    return click.option("--data", type=PATH, required=True, help="Target dataset directory (from `collect`).")(command)
