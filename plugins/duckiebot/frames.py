"""Pictures for the docs: sim and real camera frames side by side, and the track seen from above.

Run ``python -m latent_residual_plugins.duckiebot.frames docs/img``; the env itself is in ``env.py``.
"""

from __future__ import annotations

import argparse
import struct
import zlib
from pathlib import Path

import numpy as np

from latent_residual_plugins.duckiebot.env import IMAGE_KEY, LaneFollowingEnv
from latent_residual_plugins.duckiebot.textures import FloorTexture
from latent_residual_plugins.duckiebot.track import Track
from latent_residual_plugins.duckiebot.variants import REAL_LOOK
from latent_residual_plugins.duckiebot.world import room_extent

FRAMES_NAME = "duckiebot_frames.png"
TRACK_NAME = "duckiebot_track.png"
# Fractions of the loop: a long straight, a left curve ahead, the right curve ahead, a short straight.
TRACK_POSITIONS = (0.12, 0.29, 0.52, 0.72)
SIM_SEEDS = (1, 2, 3)
SCALE = 3
GAP = 4


def write_png(path: Path, image: np.ndarray) -> None:
    """Write an RGB uint8 [H, W, 3] image as a PNG (no imaging library needed)."""
    height, width, _ = image.shape
    rows = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")
    )


def frame_grid() -> np.ndarray:
    """Rows: three sim episodes, then real; columns: the same places on the loop."""
    rows = []
    for variant, seeds in (("sim", SIM_SEEDS), ("real", (0,))):
        env = LaneFollowingEnv(variant)
        for seed in seeds:
            frames = []
            for position in TRACK_POSITIONS:
                # The same seed for every column keeps one episode's look along the row.
                obs, _ = env.reset(seed=seed, options={"track_position": position})
                frames.append(obs[IMAGE_KEY])
            rows.append(frames)
        env.close()
    tile = 64 * SCALE
    grid = np.full((len(rows) * (tile + GAP) - GAP, len(TRACK_POSITIONS) * (tile + GAP) - GAP, 3), 255, dtype=np.uint8)
    for row, frames in enumerate(rows):
        for column, frame in enumerate(frames):
            big = frame.repeat(SCALE, axis=0).repeat(SCALE, axis=1)
            top, left = row * (tile + GAP), column * (tile + GAP)
            grid[top : top + tile, left : left + tile] = big
    return grid


def track_map() -> np.ndarray:
    """The floor texture in the real colours, at half resolution (north up)."""
    track = Track()
    return FloorTexture(track, room_extent(track)).paint(REAL_LOOK.palette)[::2, ::2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="where to write the PNG files")
    directory = parser.parse_args().directory
    directory.mkdir(parents=True, exist_ok=True)
    write_png(directory / FRAMES_NAME, frame_grid())
    write_png(directory / TRACK_NAME, track_map())
    print(f"wrote {directory / FRAMES_NAME} and {directory / TRACK_NAME}")


if __name__ == "__main__":
    main()
