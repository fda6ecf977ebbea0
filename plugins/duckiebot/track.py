"""Geometry of the Duckietown loop: tiles, the right-lane centre path, and where a pose sits on it.

Colours and textures are in ``textures.py``; rewards and lap bookkeeping are in ``env.py``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from latent_residual.errors import ConfigError

TILE_SIZE = 0.585
WHITE_LINE_WIDTH = 0.048
YELLOW_LINE_WIDTH = 0.024
# Two lanes, two white edge lines and one yellow centre line fill a road tile exactly.
LANE_WIDTH = (TILE_SIZE - 2 * WHITE_LINE_WIDTH - YELLOW_LINE_WIDTH) / 2
# The right lane's centre, measured to the right of the road's centre (the yellow line's middle).
LANE_CENTER_OFFSET = YELLOW_LINE_WIDTH / 2 + LANE_WIDTH / 2
# Middles of the two tapes, measured from the right lane's centre (left positive).
YELLOW_LINE_MIDDLE = LANE_CENTER_OFFSET
WHITE_LINE_MIDDLE = -(LANE_WIDTH / 2 + WHITE_LINE_WIDTH / 2)
YELLOW_DASH_LENGTH = 0.05
YELLOW_DASH_GAP = 0.025

# Tiles visited in driving order (counter-clockwise); (column, row) on a 4 x 3 grid. Five left
# curves, one right curve and four straights: the right lane's centre is about 5.9 m long.
DEFAULT_LOOP: tuple[tuple[int, int], ...] = (
    (0, 0),
    (1, 0),
    (2, 0),
    (3, 0),
    (3, 1),
    (2, 1),
    (2, 2),
    (1, 2),
    (0, 2),
    (0, 1),
)


@dataclass(frozen=True)
class TileSegment:
    """One road tile of the loop: its cell and the directions the road enters and leaves it by."""

    cell: tuple[int, int]
    heading_in: tuple[int, int]
    heading_out: tuple[int, int]

    @property
    def turn(self) -> int:
        """+1 for a left curve, -1 for a right curve, 0 for a straight."""
        return self.heading_in[0] * self.heading_out[1] - self.heading_in[1] * self.heading_out[0]

    @property
    def length(self) -> float:
        """Length of the road's centre line (the yellow line) across this tile."""
        return TILE_SIZE if self.turn == 0 else math.pi / 2 * TILE_SIZE / 2


@dataclass(frozen=True)
class LanePosition:
    """Where a point sits relative to the right lane's centre path (offsets: left positive)."""

    arc_length: float
    offset: float


class Track:
    """A closed loop of Duckietown road tiles and the centre path of its right lane.

    The tile grid's lower-left corner is the world origin; x is east, y is north. The centre
    path is a dense closed polyline (``spacing`` metres apart) that ``locate`` projects onto.
    """

    def __init__(self, tiles: tuple[tuple[int, int], ...] = DEFAULT_LOOP, spacing: float = 0.005) -> None:
        if len(tiles) < 4 or len(set(tiles)) != len(tiles) or min(min(cell) for cell in tiles) < 0:
            raise ConfigError(f"A loop needs at least 4 distinct tiles with (column, row) >= 0, got {tiles!r}.")
        headings = []
        for (col, row), (next_col, next_row) in zip(tiles, tiles[1:] + tiles[:1]):
            step = (next_col - col, next_row - row)
            if abs(step[0]) + abs(step[1]) != 1:
                raise ConfigError(
                    f"Tiles {(col, row)} and {(next_col, next_row)} are not neighbours; "
                    "consecutive tiles (and the last and first) must share an edge."
                )
            headings.append(step)
        self.segments = tuple(
            TileSegment(cell, headings[index - 1], headings[index]) for index, cell in enumerate(tiles)
        )
        self.columns = 1 + max(col for col, _ in tiles)
        self.rows = 1 + max(row for _, row in tiles)
        self._build_path(spacing)

    def _build_path(self, spacing: float) -> None:
        points = []
        for segment in self.segments:
            lane_length = segment.length + segment.turn * math.pi / 2 * LANE_CENTER_OFFSET
            count = max(2, math.ceil(lane_length / spacing))
            fraction = np.arange(count) / count
            centre_points, centre_headings = self._centre_line(segment, fraction)
            right = np.stack([np.sin(centre_headings), -np.cos(centre_headings)], axis=-1)
            points.append(centre_points + LANE_CENTER_OFFSET * right)
        self.points = np.concatenate(points)  # [N, 2] the right lane's centre, driving order
        following = np.roll(self.points, -1, axis=0)
        self._segment_vectors = following - self.points
        self._segment_lengths = np.linalg.norm(self._segment_vectors, axis=-1)
        self.arc_lengths = np.concatenate([[0.0], np.cumsum(self._segment_lengths)[:-1]])
        self.length = float(self._segment_lengths.sum())

    @staticmethod
    def _centre_line(segment: TileSegment, fraction: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Points and headings of the road's centre line at ``fraction`` of the way across a tile."""
        centre = (np.asarray(segment.cell, dtype=float) + 0.5) * TILE_SIZE
        heading_in = np.asarray(segment.heading_in, dtype=float)
        heading_out = np.asarray(segment.heading_out, dtype=float)
        angle_in = math.atan2(heading_in[1], heading_in[0])
        if segment.turn == 0:
            points = centre + np.outer(fraction - 0.5, heading_in) * TILE_SIZE
            return points, np.full(len(fraction), angle_in)
        # A curve is a quarter circle about the tile corner shared by the entry and exit edges.
        pivot = centre + (heading_out - heading_in) * TILE_SIZE / 2
        angles = angle_in + segment.turn * math.pi / 2 * fraction
        radial = -segment.turn * np.stack([-np.sin(angles), np.cos(angles)], axis=-1)
        return pivot + radial * TILE_SIZE / 2, angles

    @property
    def size(self) -> tuple[float, float]:
        """Width and height (metres) of the tile grid's bounding box."""
        return self.columns * TILE_SIZE, self.rows * TILE_SIZE

    def locate(self, xy: np.ndarray) -> LanePosition:
        """Project a point onto the lane's centre path: arc length and signed offset (left +)."""
        arc, offset = self.locate_many(np.asarray(xy, dtype=float)[None])
        return LanePosition(float(arc[0]), float(offset[0]))

    def locate_many(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``locate`` for points [P, 2]: arc lengths [P] and signed offsets [P]."""
        P, N = len(xy), len(self.points)
        squared = ((xy[:, None, :] - self.points[None]) ** 2).sum(axis=-1)  # [P, N]
        closest = np.argmin(squared, axis=1)
        # On a densely sampled smooth path the nearest point lies on a segment next to the
        # nearest vertex: the one ending there or the one starting there.
        index = np.stack([(closest - 1) % N, closest], axis=1)  # [P, 2]
        start = self.points[index]  # [P, 2, 2]
        vector = self._segment_vectors[index]
        relative = xy[:, None, :] - start
        along = np.clip((relative * vector).sum(axis=-1) / self._segment_lengths[index] ** 2, 0.0, 1.0)
        distance = np.linalg.norm(relative - along[..., None] * vector, axis=-1)  # [P, 2]
        pick = np.argmin(distance, axis=1)
        rows = np.arange(P)
        index, vector, relative = index[rows, pick], vector[rows, pick], relative[rows, pick]
        cross = vector[:, 0] * relative[:, 1] - vector[:, 1] * relative[:, 0]
        arc = self.arc_lengths[index] + along[rows, pick] * self._segment_lengths[index]
        return arc, np.copysign(distance[rows, pick], cross)

    def pose_at(self, arc_length: float, offset: float = 0.0) -> tuple[float, float, float]:
        """The pose (x, y, yaw) on the path at ``arc_length``, moved ``offset`` to the left."""
        arc_length %= self.length
        index = int(np.searchsorted(self.arc_lengths, arc_length, side="right")) - 1
        fraction = (arc_length - self.arc_lengths[index]) / self._segment_lengths[index]
        point = self.points[index] + fraction * self._segment_vectors[index]
        yaw = float(math.atan2(self._segment_vectors[index, 1], self._segment_vectors[index, 0]))
        left = np.array([-math.sin(yaw), math.cos(yaw)])
        x, y = point + offset * left
        return float(x), float(y), yaw

    def road_frame(self, xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Road coordinates of points [..., 2] for painting the floor.

        Returns ``on_road`` (the point lies on a tile of the loop), the lateral position from the
        road's centre line (left of the driving direction positive), the fraction of the way
        along that tile's centre line, and that tile's centre-line length; zeros off the loop.
        """
        shape = xy.shape[:-1]
        on_road = np.zeros(shape, dtype=bool)
        lateral = np.zeros(shape)
        fraction = np.zeros(shape)
        tile_length = np.zeros(shape)
        cells = np.floor(xy / TILE_SIZE).astype(int)
        for segment in self.segments:
            mask = (cells[..., 0] == segment.cell[0]) & (cells[..., 1] == segment.cell[1])
            points = xy[mask]
            centre = (np.asarray(segment.cell, dtype=float) + 0.5) * TILE_SIZE
            heading_in = np.asarray(segment.heading_in, dtype=float)
            heading_out = np.asarray(segment.heading_out, dtype=float)
            if segment.turn == 0:
                left = np.array([-heading_in[1], heading_in[0]])
                lateral[mask] = (points - centre) @ left
                fraction[mask] = (points - centre) @ heading_in / TILE_SIZE + 0.5
            else:
                pivot = centre + (heading_out - heading_in) * TILE_SIZE / 2
                relative = points - pivot
                radius = np.linalg.norm(relative, axis=-1)
                lateral[mask] = segment.turn * (TILE_SIZE / 2 - radius)
                # Angle swept from the entry edge's radius, in the turning direction.
                start = -heading_out
                cross = start[0] * relative[:, 1] - start[1] * relative[:, 0]
                swept = np.arctan2(segment.turn * cross, relative @ start)
                fraction[mask] = swept / (math.pi / 2)
            on_road[mask] = True
            tile_length[mask] = segment.length
        return on_road, lateral, fraction, tile_length
