"""Checks, made before any work, that an output directory or file can be written: one plain error
(``OutputPathError``) for the Python API, which the command line turns into a usage error; for an
input directory of the wrong kind, what it looks like instead; and removing what a failed step wrote.

Writing itself (atomic files and directories) is ``latent_residual.serialization``'s.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from latent_residual.adapters import ADAPTER_WEIGHTS_NAME
from latent_residual.checkpoints import MODEL_WEIGHTS_NAME
from latent_residual.errors import FileFormatError, OutputPathError
from latent_residual.onnx_policy import POLICY_CONFIG_NAME

DATASET_INFO_NAME = "dataset.json"
#: The file that marks each kind of directory the library writes, and what such a directory is called.
DIRECTORY_KINDS = {
    MODEL_WEIGHTS_NAME: "a world_model directory",
    ADAPTER_WEIGHTS_NAME: "an adapter directory",
    DATASET_INFO_NAME: "a dataset directory",
    POLICY_CONFIG_NAME: "an ONNX export directory",
}


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


def looks_like(path: Path) -> str:
    """What ``path`` is, in the words of :data:`DIRECTORY_KINDS`, for a message about a directory of the wrong kind."""
    if not path.exists():
        return "it does not exist"
    if not path.is_dir():
        return "it is a file"
    for marker, kind in DIRECTORY_KINDS.items():
        if (path / marker).is_file():
            return f"this looks like {kind} (it holds {marker})"
    # A run directory (pretraining, an import) holds its artefacts one level down.
    inside = [
        f"{child.name}/ ({kind})"
        for child in sorted(path.iterdir())
        for marker, kind in DIRECTORY_KINDS.items()
        if (child / marker).is_file()
    ]
    if inside:
        return f"it holds {', '.join(inside[:3])}; name that directory instead"
    return f"it holds none of {', '.join(DIRECTORY_KINDS)}"


def expect_directory(path: Path, marker: str, error: type[FileFormatError]) -> None:
    """Raise ``error`` unless ``path`` holds ``marker``, saying what was expected and what ``path`` looks like."""
    if not (path / marker).is_file():
        raise error(f"{path}: expected {DIRECTORY_KINDS[marker]} holding {marker}; {looks_like(path)}.")


@contextmanager
def removed_on_failure(directory: Path) -> Iterator[None]:
    """Remove what the block created under ``directory`` (logs) if it fails, so a failed step leaves nothing
    behind: the directory itself if it did not exist, else the entries it added."""
    existed = directory.exists()
    before = set(directory.iterdir()) if existed else set()
    try:
        yield
    except BaseException:
        if not existed:
            shutil.rmtree(directory, ignore_errors=True)
        elif directory.is_dir():
            for entry in set(directory.iterdir()) - before:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        raise
