"""How every file of the library is written and read: atomic writes (files and whole directories, with the
leftovers of killed writers cleaned), validated safetensors reads with format and version checks, strict
loading (keys, shapes, dtypes, finite values), fingerprints, spaces as JSON and optimiser moments as tensors.

What goes into each kind of file is decided beside the thing it stores (``adapters.py``,
``checkpoints.py``, ``actor_critic.py``, the workflow's datasets); nothing here is unpickled.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from latent_residual.errors import ConfigError, FileFormatError

# Read once: os.umask can only be read by setting it, which is not safe once threads run.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # pickle protocol >= 2, torch.save zip archives
_DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U64": 8,
    "U32": 4,
    "U16": 2,
    "U8": 1,
    "BOOL": 1,
}


#: The leftovers of a writer killed mid-write: ``.NAME.tmp-PID`` (a file or directory being written)
#: and ``.NAME.old-PID`` (a directory being swapped out).
_ORPHAN = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>[0-9]+)$")


def is_orphan(name: str) -> bool:
    """Whether a file name has the form of a writer's temporary file or directory (``.NAME.tmp-PID``)."""
    return _ORPHAN.match(name) is not None


def _temporary(path: Path, kind: str = "tmp") -> Path:
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}")


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (this one counts; where that cannot be told, assume it does)."""
    if pid == os.getpid() or os.name == "nt":  # Windows' os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def clean_orphans(directory: Path) -> list[Path]:
    """Remove what writers killed mid-write left in ``directory``; return the paths removed.

    Only ``.NAME.tmp-PID`` and ``.NAME.old-PID`` entries of processes that no longer exist are
    touched. A ``.NAME.old-PID`` directory whose ``NAME`` is missing (a kill between the two
    renames of a directory swap) is renamed back to ``NAME`` instead: the previous version returns.
    """
    try:
        entries = list(os.scandir(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        match = _ORPHAN.match(entry.name) if entry.name.startswith(".") else None
        if match is None or _alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        try:
            if match["kind"] == "old" and not os.path.lexists(path.with_name(match["name"])):
                os.rename(path, path.with_name(match["name"]))
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:  # another process cleaned it first, or it is not ours to remove
            continue
        removed.append(path)
    return removed


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never a partial file; the temporary files
    that killed writers left beside ``path`` are removed first (:func:`clean_orphans`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path.parent)
    tmp = _temporary(path)
    try:
        write(tmp)
        # Writers such as safetensors create files private to their owner (0600); give the file
        # the mode a plain open() would, so a robot's service account can read a deployed model.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_RENAME_EXCHANGE = 2  # linux/fs.h


def _exchange(first: Path, second: Path) -> bool:
    """Swap two existing paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system or file system cannot, so the caller falls back to two renames."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, musl < 1.2.3)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    at_cwd = -100  # AT_FDCWD
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


def atomic_write_directory(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a new temporary directory beside ``path``, then swap it into place whole.

    A kill leaves either the old directory or the new one at ``path``, never a mix of the two:
    the swap is one atomic exchange where the system offers it (Linux), else two renames, and
    the leftovers of a killed writer (the temporary directory, or the old one if the kill fell
    between the renames, which is then put back) are handled by the next write beside ``path``
    (:func:`clean_orphans`). Whatever ``path`` held before is replaced.
    """
    path = Path(path)
    if path.is_symlink():  # replace what the link points at, and keep the link
        path = path.resolve()
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} is a file; a directory is written here.")
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_orphans(path.parent)
    tmp = _temporary(path)
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        write(tmp)
        if not path.exists():
            os.rename(tmp, path)
        elif _exchange(tmp, path):
            shutil.rmtree(tmp)  # the old directory, now under the temporary name
        else:
            old = _temporary(path, "old")
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: Path, text: str) -> None:
    """Write ``text`` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Write tensors atomically; shared storage is cloned first (safetensors refuses aliases)."""
    owned = {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}
    atomic_write(path, lambda tmp: save_file(owned, str(tmp), metadata=metadata))


def read_safetensors_header(
    path: Path, *, error: type[FileFormatError] = FileFormatError
) -> tuple[dict[str, dict], dict[str, str]]:
    """Validate a safetensors file's framing and return (tensor index, metadata) without loading data.

    Raises ``error`` naming the file and what is wrong: missing, a pickle, a bad header, or data
    shorter than the header promises (a truncated copy).
    """
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: no such file.")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise error(f"{path}: {size} bytes is too short for a safetensors file.")
        (header_len,) = struct.unpack("<Q", head)
        # A safetensors length field can start with 0x80 too, so only a bad frame counts as a pickle.
        if header_len > size - 8 and head.startswith(_PICKLE_MAGIC):
            raise error(
                f"{path}: this looks like a pickle or torch.save file; latent-residual only loads "
                "safetensors and never unpickles. Re-save the weights with safetensors."
            )
        if header_len > size - 8:
            raise error(
                f"{path}: header claims {header_len} bytes but the file has {size - 8} after the length "
                "field; the file is truncated or not safetensors."
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise error(f"{path}: not a safetensors file (header is not JSON: {exc}).") from exc
    if not isinstance(header, dict):
        raise error(f"{path}: not a safetensors file (header is not a JSON object).")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - header_len
    for key, info in header.items():
        try:
            start, end = info["data_offsets"]
            expected = _DTYPE_SIZES.get(info["dtype"], 1)
            for dim in info["shape"]:
                expected *= dim
        except (TypeError, KeyError, ValueError) as exc:
            raise error(f"{path}: tensor {key!r} has a malformed header entry.") from exc
        if end > data_size or end - start != expected:
            raise error(
                f"{path}: tensor {key!r} needs bytes {start}..{end} but the data section has "
                f"{data_size}; the file is truncated or corrupt."
            )
    return header, metadata


def read_safetensors(
    path: Path, *, error: type[FileFormatError] = FileFormatError
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor (on CPU) and the metadata, after validating the framing."""
    _, metadata = read_safetensors_header(path, error=error)
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise error(f"{path}: corrupt safetensors data: {exc}") from exc
    return tensors, metadata


def read_json_object(path: Path, *, error: type[FileFormatError], hint: str = "") -> dict[str, Any]:
    """A JSON file's top-level object; ``error`` names the file when it is not JSON or not an object.

    :param hint: What to do about it, appended to the message ("the run directory is corrupt").
    """
    suffix = f"; {hint}" if hint else ""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: not JSON ({exc}){suffix}.") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: expected a JSON object, got {type(data).__name__}{suffix}.")
    return data


#: What each JSON type is called in messages.
_JSON_TYPES = {dict: "a JSON object", list: "a JSON list", str: "a string", int: "an integer"}
_FINGERPRINT = re.compile(r"^sha256:[0-9a-f]{64}$")


def _quoted(value: Any) -> str:
    """``repr(value)``, cut to fit a one-line message."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def json_or_text(value: str) -> Any:
    """A metadata value decoded as JSON, or the text itself where it is not JSON (free-text keys)."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def check_json_type(path: Path, key: str, value: Any, expected: type, error: type[FileFormatError]) -> Any:
    """``value`` (stored under ``key``) if it has the JSON type ``expected`` (``dict``, ``list``, ``str`` or
    ``int``); else ``error`` naming the file, the key and what it holds."""
    if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise error(f"{path}: key {key!r} is {_quoted(value)}, expected {_JSON_TYPES[expected]}; the file is corrupt.")
    return value


def metadata_json(
    path: Path, metadata: Mapping[str, str], key: str, error: type[FileFormatError], expected: type | None = None
) -> Any:
    """Safetensors metadata value ``key`` decoded as JSON, of JSON type ``expected`` when given
    (:func:`check_json_type`); ``error`` names the file and the key when it is not."""
    try:
        value = json.loads(metadata[key])
    except json.JSONDecodeError as exc:
        raise error(f"{path}: metadata key {key!r} is not valid JSON ({exc}); the file is corrupt.") from exc
    return value if expected is None else check_json_type(path, key, value, expected, error)


def check_fingerprint_value(path: Path, key: str, value: Any, error: type[FileFormatError]) -> str:
    """``value`` (stored under ``key``) if it has the form of a :func:`fingerprint`; else ``error`` naming both."""
    if not isinstance(value, str) or not _FINGERPRINT.match(value):
        raise error(
            f"{path}: key {key!r} is {_quoted(value)}, expected 'sha256:' and 64 hex digits; the metadata is corrupt."
        )
    return value


def metadata_int(path: Path, metadata: Mapping[str, str], key: str, error: type[FileFormatError]) -> int:
    """Safetensors metadata value ``key`` as a non-negative integer; ``error`` names the file and the key otherwise."""
    if not metadata[key].isdigit():
        raise error(f"{path}: metadata key {key!r} is {metadata[key]!r}, expected an integer.")
    return int(metadata[key])


def check_metadata(
    path: Path,
    metadata: Mapping[str, Any],
    *,
    file_format: str,
    version: int,
    error: type[FileFormatError],
    kind: str,
    required: Iterable[str] = (),
) -> None:
    """Check a file's ``format`` and ``format_version`` keys and that ``required`` keys exist.

    :param metadata: A safetensors file's metadata, or a JSON file's top-level object.
    :param kind: What the file should be, for messages ("latent-residual adapter", ...).

    A file without ``format_version`` counts as version 1 (files written before it was recorded).
    """
    if not isinstance(metadata, Mapping) or metadata.get("format") != file_format:
        found = metadata.get("format") if isinstance(metadata, Mapping) else type(metadata).__name__
        raise error(f"{path}: key 'format' is {found!r}, expected {file_format!r}; this is not a {kind}.")
    stored = metadata.get("format_version", 1)
    if isinstance(stored, bool) or not str(stored).isdigit() or int(stored) > version:
        raise error(
            f"{path}: key 'format_version' is {stored!r}; this library reads {kind} files up to version {version}. "
            "Upgrade latent-residual to read it."
        )
    missing = [key for key in required if key not in metadata]
    if missing:
        raise error(f"{path}: key {missing[0]!r} is missing; a {kind} holds {', '.join(required)}.")


def read_checked(
    path: Path,
    *,
    file_format: str,
    version: int,
    error: type[FileFormatError],
    kind: str,
    required: Iterable[str] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a safetensors file after checking its framing, format, version and required metadata."""
    _, metadata = read_safetensors_header(path, error=error)
    check_metadata(path, metadata, file_format=file_format, version=version, error=error, kind=kind, required=required)
    return read_safetensors(path, error=error)


def strict_load(
    module: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    path: Path,
    error: type[FileFormatError],
    *,
    expected_fingerprint: str | None = None,
    hint: str = "",
) -> None:
    """Load ``tensors`` into ``module`` only if they fit it exactly; else raise ``error`` naming the file.

    :param hint: Appended to the message when keys, shapes or dtypes differ: where the module's
        layout came from ("the keys that built it ...").

    Keys, shapes and dtypes must match the module's state dict (nothing is cast: int32 or bool
    tensors never load into float parameters), every floating-point value must be finite, and,
    when ``expected_fingerprint`` is given (the one recorded when the file was written), the
    tensors' :func:`tensors_fingerprint` must equal it. The module is untouched when any check fails.
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    common = sorted(set(expected) & set(tensors))
    wrong = [k for k in common if expected[k].shape != tensors[k].shape]
    casts = [k for k in common if expected[k].dtype != tensors[k].dtype]
    if missing or unexpected or wrong or casts:
        details = []
        if missing:
            details.append(f"missing keys {missing}")
        if unexpected:
            details.append(f"unexpected keys {unexpected}")
        if wrong:
            details.append(
                "shape mismatch "
                + ", ".join(f"{k}: file {tuple(tensors[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong)
            )
        if casts:
            details.append(
                "dtype mismatch "
                + ", ".join(f"{k}: file {_dtype_name(tensors[k])} vs {_dtype_name(expected[k])}" for k in casts)
            )
        raise error(f"{path}: weights do not fit {type(module).__name__}: {'; '.join(details)}{hint}.")
    for key in common:
        value = tensors[key]
        if (value.is_floating_point() or value.is_complex()) and not bool(torch.isfinite(value).all()):
            nan, inf = int(torch.isnan(value).sum()), int(torch.isinf(value).sum())
            raise error(
                f"{path}: tensor {key!r} holds non-finite values ({nan} NaN, {inf} infinite); the file is "
                "corrupt, or the model had diverged when it was saved."
            )
    if expected_fingerprint is not None:
        check_fingerprint(path, tensors, expected_fingerprint, error)
    module.load_state_dict(tensors, strict=True)


def check_fingerprint(
    path: Path, tensors: Mapping[str, torch.Tensor], expected: Any, error: type[FileFormatError]
) -> None:
    """Raise ``error`` naming the file and both fingerprints unless ``tensors`` have the recorded one."""
    check_fingerprint_value(path, "fingerprint", expected, error)
    found = tensors_fingerprint(tensors)
    if found != expected:
        raise error(
            f"{path}: the weights' fingerprint is {found} but the file records {expected}; the file was "
            "altered or corrupted after it was written. Restore it from its source."
        )


def _dtype_name(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def tensors_fingerprint(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of named tensors (names, dtypes, shapes and bytes), as ``sha256:<hex>``: what
    :func:`fingerprint` computes from a state dict, here from tensors read from a file."""
    digest = hashlib.sha256()
    for key, value in sorted(tensors.items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), as ``sha256:<hex>``.

    Two models share a fingerprint only if every parameter and buffer is bitwise equal, so an
    adapter trained on one base is refused by any other.
    """
    return tensors_fingerprint(model.state_dict())


def space_to_json(space: Any) -> dict[str, Any]:
    """Describe a Dict-of-Box (or Box) space as JSON-ready data.

    Duck-typed (``spaces`` for a Dict; ``shape``, ``dtype``, ``low``, ``high`` for a Box), so
    Gymnasium spaces and look-alikes both work without importing Gymnasium.
    """
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, Mapping):
        return {"type": "Dict", "spaces": {key: space_to_json(sub) for key, sub in spaces.items()}}
    if all(hasattr(space, name) for name in ("shape", "dtype", "low", "high")):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "dtype": str(space.dtype),
            "low": compact_bound(np.asarray(space.low)),
            "high": compact_bound(np.asarray(space.high)),
        }
    raise ConfigError(f"Only Dict and Box spaces can be stored, got {type(space).__name__}.")


def compact_bound(values: np.ndarray) -> Any:
    """A Box bound as one number when every element is the same (a 64x64x3 image's bounds would
    otherwise take 12,288 numbers each), else as nested lists."""
    flat = values.reshape(-1)
    return flat[0].item() if flat.size and (flat == flat[0]).all() else values.tolist()


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> dict[str, torch.Tensor]:
    """An optimiser's per-parameter state (Adam's moments and step) as flat named tensors."""
    tensors = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"{prefix}.{index}.{key}"] = torch.as_tensor(value)
    return tensors


def load_optimizer_tensors(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], prefix: str) -> None:
    """The inverse of :func:`optimizer_tensors`; the optimiser keeps its own hyperparameters."""
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix + "."):
            _, index, key = name.rsplit(".", 2)
            state.setdefault(int(index), {})[key] = value
    if state:
        optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
