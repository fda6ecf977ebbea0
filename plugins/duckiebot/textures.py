"""Procedural floor texture: black foam tiles, white and yellow tape, the room floor around them.

Which colours an episode uses is decided in ``variants.py``; tile geometry comes from ``track.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from latent_residual_plugins.duckiebot.track import (
    TILE_SIZE,
    WHITE_LINE_WIDTH,
    YELLOW_DASH_GAP,
    YELLOW_DASH_LENGTH,
    YELLOW_LINE_WIDTH,
    Track,
)

# 4 mm texels: the yellow tape is 6 texels wide, enough for clean edges once mipmapped.
TEXELS_PER_METRE = 250
SEAM_WIDTH = 0.004
# Labels of the texel classes, in the order of Palette.colours().
ROOM_FLOOR, MAT, SEAM, WHITE, YELLOW = range(5)

RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Palette:
    """Colours (linear 0-1 RGB) of the floor's parts and how worn they look."""

    mat: RGB
    white: RGB
    yellow: RGB
    room_floor: RGB
    # Relative brightness jitter per texel (grain) and over patches of ~10 cm (wear and dirt).
    grain: float
    wear: float

    def colours(self) -> np.ndarray:
        """The colour of each texel label, [5, 3]."""
        seam = tuple(min(1.0, channel + 0.05) for channel in self.mat)
        return np.array([self.room_floor, self.mat, seam, self.white, self.yellow], dtype=np.float32)


class FloorTexture:
    """Paints the floor of a room around a track; labels and noise are computed once.

    ``extent`` is (x_min, y_min, x_max, y_max) in metres. Row 0 of the image is the room's north
    edge (largest y), which is how MuJoCo maps a 2D texture onto a plane.
    """

    def __init__(self, track: Track, extent: tuple[float, float, float, float], seed: int = 0) -> None:
        x_min, y_min, x_max, y_max = extent
        self.width = round((x_max - x_min) * TEXELS_PER_METRE)
        self.height = round((y_max - y_min) * TEXELS_PER_METRE)
        xs = x_min + (np.arange(self.width) + 0.5) / TEXELS_PER_METRE
        ys = y_max - (np.arange(self.height) + 0.5) / TEXELS_PER_METRE
        grid = np.stack(np.meshgrid(xs, ys), axis=-1)  # [H, W, 2] world x, y of each texel
        self.labels = self._label(track, grid)
        rng = np.random.default_rng(seed)
        self._grain = rng.standard_normal((self.height, self.width)).astype(np.float32)
        self._wear = _smooth_noise(rng, self.height, self.width, cell=25)

    @staticmethod
    def _label(track: Track, grid: np.ndarray) -> np.ndarray:
        width, height = track.size
        labels = np.full(grid.shape[:2], ROOM_FLOOR, dtype=np.uint8)
        inside = (grid[..., 0] >= 0) & (grid[..., 0] < width) & (grid[..., 1] >= 0) & (grid[..., 1] < height)
        labels[inside] = MAT
        # The foam tiles' interlocking edges show as faint seams on every tile boundary.
        near_edge = np.minimum(grid % TILE_SIZE, TILE_SIZE - grid % TILE_SIZE).min(axis=-1) < SEAM_WIDTH / 2
        labels[inside & near_edge] = SEAM
        on_road, lateral, fraction, tile_length = track.road_frame(grid)
        edge = np.abs(lateral)
        labels[on_road & (edge >= TILE_SIZE / 2 - WHITE_LINE_WIDTH) & (edge <= TILE_SIZE / 2)] = WHITE
        # Dashes are spaced evenly on each tile so that every tile starts and ends with half a gap.
        period = YELLOW_DASH_LENGTH + YELLOW_DASH_GAP
        dashes = np.maximum(1, np.round(tile_length / period))
        phase = (fraction * dashes) % 1.0
        in_dash = np.abs(phase - 0.5) <= YELLOW_DASH_LENGTH / period / 2
        labels[on_road & (edge <= YELLOW_LINE_WIDTH / 2) & in_dash] = YELLOW
        return labels

    def paint(self, palette: Palette, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
        """Return the texture as uint8 [H, W, 3]; ``shift`` rolls the noise for a fresh look."""
        grain = np.roll(self._grain, shift, axis=(0, 1))
        wear = np.roll(self._wear, shift[::-1], axis=(0, 1))
        brightness = 1.0 + palette.grain * grain + palette.wear * wear
        image = palette.colours()[self.labels] * brightness[..., None]
        return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Unit-variance noise that varies over about ``cell`` texels (bilinear upsampling of a coarse grid)."""
    coarse = rng.standard_normal((height // cell + 2, width // cell + 2)).astype(np.float32)
    rows = np.arange(height) / cell
    cols = np.arange(width) / cell
    row0, col0 = rows.astype(int), cols.astype(int)
    row_t, col_t = (rows - row0)[:, None], (cols - col0)[None, :]
    top = coarse[row0][:, col0] * (1 - col_t) + coarse[row0][:, col0 + 1] * col_t
    bottom = coarse[row0 + 1][:, col0] * (1 - col_t) + coarse[row0 + 1][:, col0 + 1] * col_t
    blend = top * (1 - row_t) + bottom * row_t
    return (blend / blend.std()).astype(np.float32)
