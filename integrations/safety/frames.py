"""Camera frames: the camera's size (WIDTHxHEIGHT or its calibration YAML) and a JPEG decoded to the policy's input.
No stops here: a frame that does not decode, or not to the camera's size, is refused by checks.FrameDecodes."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

#: The DB21 camera's frames (width, height), from which decode_frame's resize rule makes the policy's
#: square input: the size the target data were recorded at, so the only size the policy has seen.
CAMERA_SIZE = "640x480"
#: Where a Duckiebot keeps its camera's intrinsic calibration (image_width, image_height among its keys):
#: the ROS 1 node reads the expected frame size from it when ``--camera-size`` is not given.
CAMERA_INTRINSICS = "/data/config/calibrations/camera_intrinsic/{robot}.yaml"


class FrameSizeError(ValueError):
    """A camera frame decodes, but not to the camera's size: resized, it would not be the pixels the policy knows."""


def load_camera_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from a camera's intrinsic calibration YAML (ROS camera_info: ``image_width``,
    ``image_height``), as a Duckiebot keeps it in :data:`CAMERA_INTRINSICS`."""
    import yaml  # on the robot: part of every ROS install

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such camera calibration file.")
    try:
        values = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ValueError(f"{path}: not a YAML camera calibration ({type(exc).__name__}).") from None
    if not isinstance(values, dict):
        raise ValueError(
            f"{path}: expected a YAML mapping with image_width and image_height, got {type(values).__name__}."
        )
    size = []
    for key in ("image_width", "image_height"):
        value = values.get(key)
        if type(value) is not int or value < 1:
            raise ValueError(f"{path}: key {key!r} is {value!r}, expected a positive number of pixels.")
        size.append(value)
    return size[0], size[1]


def parse_camera_size(value: str | Path | Sequence[int]) -> tuple[int, int]:
    """(width, height) from ``"640x480"``, a pair of positive integers, or the path of a camera calibration
    YAML (``.yaml``/``.yml``, read by :func:`load_camera_size`)."""
    if isinstance(value, (str, Path)) and str(value).lower().endswith((".yaml", ".yml")):
        return load_camera_size(value)
    try:
        parts = [int(part) for part in value.lower().split("x")] if isinstance(value, str) else list(value)
    except (AttributeError, TypeError, ValueError):
        parts = []
    if len(parts) == 2 and all(type(part) is int and part > 0 for part in parts):
        return parts[0], parts[1]
    raise ValueError(
        f"camera_size must be WIDTHxHEIGHT in pixels, like {CAMERA_SIZE!r}, or a camera calibration .yaml, "
        f"got {value!r}."
    )


def decode_frame(
    data: bytes, size: int = 64, *, crop_square: bool = False, camera_size: tuple[int, int] | None = None
) -> np.ndarray:
    """Decode a JPEG (or PNG) camera frame to a uint8 (size, size, 3) RGB array.

    The whole frame is resized (antialiased bilinear), squashing 640x480 to a square; with
    ``crop_square`` the centre square is cut out first. Whatever is chosen must also be used
    when recording the robot's target dataset, so that data and deployment see the same pixels.

    :param camera_size: The (width, height) the frame must have; another raises ``FrameSizeError``
        (any size resizes to ``size``, so only the size before the resize tells a wrong frame).
    """
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as image:
        if camera_size is not None and image.size != tuple(camera_size):
            width, height = image.size
            expected = f"{camera_size[0]}x{camera_size[1]}"
            raise FrameSizeError(f"frame is {width}x{height}, expected {expected} (camera_size)")
        image = image.convert("RGB")
        if crop_square:
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()
