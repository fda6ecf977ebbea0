"""How every file of the library is written and read: atomic writes, validated safetensors reads with
format and version checks, fingerprints, spaces as JSON and optimiser moments as tensors.

What goes into each kind of file is decided beside the thing it stores (``adapters.py``,
``checkpoints.py``, ``actor_critic.py``, the workflow's datasets); nothing here is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
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
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1, "F8_E5M2": 1,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1,
}


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp)`` on a temporary file beside ``path``, then rename it into place.

    A crash leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        # Writers such as safetensors create files private to their owner (0600); give the file
        # the mode a plain open() would, so a robot's service account can read a deployed model.
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


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


def strict_load(module: nn.Module, tensors: Mapping[str, torch.Tensor], path: Path, error: type[FileFormatError]) -> None:
    """Load ``tensors`` into ``module`` only if keys and shapes match exactly; else raise ``error`` listing them."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
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
        raise error(f"{path}: weights do not fit {type(module).__name__}: {'; '.join(details)}.")
    module.load_state_dict(tensors, strict=True)


def fingerprint(model: nn.Module) -> str:
    """SHA-256 of a model's state dict (names, dtypes, shapes and bytes), as ``sha256:<hex>``.

    Two models share a fingerprint only if every parameter and buffer is bitwise equal, so an
    adapter trained on one base is refused by any other.
    """
    digest = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return f"sha256:{digest.hexdigest()}"


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
            "low": _bound(np.asarray(space.low)),
            "high": _bound(np.asarray(space.high)),
        }
    raise ConfigError(f"Only Dict and Box spaces can be stored, got {type(space).__name__}.")


def _bound(values: np.ndarray) -> Any:
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
