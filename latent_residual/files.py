"""Atomic writes and validated safetensors reads: nothing half-written, nothing unpickled.

What goes into adapter and checkpoint files is decided in ``adapters.py`` and ``checkpoints.py``.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from latent_residual.errors import AdapterFileError

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


def read_safetensors_header(path: Path) -> tuple[dict[str, dict], dict[str, str]]:
    """Validate a safetensors file's framing and return (tensor index, metadata) without loading data.

    Raises AdapterFileError naming the file and what is wrong: missing, a pickle, a bad header,
    or data shorter than the header promises (a truncated copy).
    """
    path = Path(path)
    if not path.is_file():
        raise AdapterFileError(f"{path}: no such file.")
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise AdapterFileError(f"{path}: {size} bytes is too short for a safetensors file.")
        (header_len,) = struct.unpack("<Q", head)
        # A safetensors length field can start with 0x80 too, so only a bad frame counts as a pickle.
        if header_len > size - 8 and head.startswith(_PICKLE_MAGIC):
            raise AdapterFileError(
                f"{path}: this looks like a pickle or torch.save file; latent-residual only loads "
                "safetensors and never unpickles. Re-save the weights with safetensors."
            )
        if header_len > size - 8:
            raise AdapterFileError(
                f"{path}: header claims {header_len} bytes but the file has {size - 8} after the length "
                "field; the file is truncated or not safetensors."
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise AdapterFileError(f"{path}: not a safetensors file (header is not JSON: {exc}).") from exc
    if not isinstance(header, dict):
        raise AdapterFileError(f"{path}: not a safetensors file (header is not a JSON object).")
    metadata = header.pop("__metadata__", None) or {}
    data_size = size - 8 - header_len
    for key, info in header.items():
        try:
            start, end = info["data_offsets"]
            expected = _DTYPE_SIZES.get(info["dtype"], 1)
            for dim in info["shape"]:
                expected *= dim
        except (TypeError, KeyError, ValueError) as exc:
            raise AdapterFileError(f"{path}: tensor {key!r} has a malformed header entry.") from exc
        if end > data_size or end - start != expected:
            raise AdapterFileError(
                f"{path}: tensor {key!r} needs bytes {start}..{end} but the data section has "
                f"{data_size}; the file is truncated or corrupt."
            )
    return header, metadata


def read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Load every tensor (on CPU) and the metadata, after validating the framing."""
    _, metadata = read_safetensors_header(path)
    try:
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as exc:
        raise AdapterFileError(f"{path}: corrupt safetensors data: {exc}") from exc
    return tensors, metadata
