"""Checks, made before any work, that an output directory or file can be written: one plain error
(``OutputPathError``) for the Python API, which the command line turns into a usage error.

Writing itself (atomic files and directories) is ``latent_residual.serialization``'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from latent_residual.errors import OutputPathError


def _existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of ``path`` that exists (what creating it would write into)."""
    ancestor = path.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    return ancestor


def _check_writable(path: Path, option: str) -> None:
    """``path`` (missing) can be created: its nearest existing ancestor is a writable directory."""
    ancestor = _existing_ancestor(path)
    if not ancestor.is_dir():
        raise OutputPathError(option, f"{ancestor} is a file, so {path} cannot be created under it.")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(option, f"{ancestor} is not writable, so {path} cannot be created.")


def check_output_directory(
    path: Path,
    *,
    option: str = "--out",
    finished: tuple[str, ...] = (),
    overwrite: bool = False,
    beside: bool = False,
) -> None:
    """Check that the directory ``path`` can be written.

    :param option: The flag or argument that named ``path``, for the error.
    :param finished: Files whose presence in ``path`` means a finished artefact is there; it is
        refused unless ``overwrite`` (resumable commands give none).
    :param beside: The directory is replaced whole (a temporary directory beside it is swapped
        in), so its parent must be writable too.
    :raises OutputPathError: Naming ``option`` and the path.
    """
    if path.exists() and not path.is_dir():
        raise OutputPathError(option, f"{path} is a file; a directory is written here.")
    if path.is_dir():
        present = [name for name in finished if (path / name).exists()]
        if present and not overwrite:
            raise OutputPathError(
                option,
                f"{path} already holds {present[0]} from a finished run; choose another directory, delete it, "
                "or pass --overwrite.",
            )
        if not os.access(path, os.W_OK | os.X_OK):
            raise OutputPathError(option, f"{path} is not writable.")
        if beside:
            _check_writable(path, option)
    else:
        _check_writable(path, option)


def check_output_file(path: Path, *, option: str = "--out", overwrite: bool = False) -> None:
    """Check that the file ``path`` can be written (and would not replace an existing one unless ``overwrite``).

    :raises OutputPathError: Naming ``option`` and the path.
    """
    if path.is_dir():
        raise OutputPathError(option, f"{path} is a directory; {option} names the file to write.")
    if path.exists() and not overwrite:
        raise OutputPathError(option, f"{path} already exists; choose another file, delete it, or pass --overwrite.")
    _check_writable(path, option)
