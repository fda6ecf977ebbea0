"""The Gymnasium lane-following environment: commands to motors, physics, frames, reward and laps.

Lane geometry is in ``track.py``, the model in ``world.py``, the sim and real numbers in ``variants.py``.
"""

from __future__ import annotations

import os

# EGL renders without a display; MuJoCo reads the choice when it is first imported.
os.environ.setdefault("MUJOCO_GL", "egl")

import collections  # noqa: E402
import math  # noqa: E402
from typing import Any  # noqa: E402

import gymnasium  # noqa: E402
import mujoco  # noqa: E402
import numpy as np  # noqa: E402
from gymnasium import spaces  # noqa: E402

from latent_residual.errors import ConfigError, did_you_mean  # noqa: E402
from latent_residual_plugins.duckiebot.rendering import Renderer  # noqa: E402
from latent_residual_plugins.duckiebot.robot import (  # noqa: E402
    CAMERA_PITCH_DEG,
    FOOTPRINT,
    MAX_SPEED,
    MAX_YAW_RATE,
    MOTOR_CONSTANT,
    WHEEL_RADIUS,
    Calibration,
    camera_quaternion,
)
from latent_residual_plugins.duckiebot.textures import FloorTexture  # noqa: E402
from latent_residual_plugins.duckiebot.track import (  # noqa: E402
    WHITE_LINE_MIDDLE,
    YELLOW_LINE_MIDDLE,
    Track,
)
from latent_residual_plugins.duckiebot.variants import (  # noqa: E402
    REAL_DYNAMICS,
    REAL_LOOK,
    VARIANTS,
    Dynamics,
    Look,
    sample_sim_dynamics,
    sample_sim_look,
)
from latent_residual_plugins.duckiebot.world import (  # noqa: E402
    CHASE_CAMERA,
    FLOOR_TEXTURE,
    LAMP,
    ONBOARD_CAMERA,
    RENDER_SIZE,
    SUN,
    WALLS,
    build_model,
    room_extent,
)

IMAGE_KEY = "image"
VELOCITY_KEY = "velocity"
IMAGE_SIZE = 64
CONTROL_PERIOD = 0.1
# Speed along the centre path (m/s) that earns the full reward of 1.
REWARD_SPEED = 0.3
CENTER_TOLERANCE = 0.07
OFF_CENTER_REWARD = -1.0
# Subtracted per rad/s of yaw rate while the robot moves faster than MOVING_SPEED (m/s).
YAW_RATE_PENALTY = 0.1
MOVING_SPEED = 0.05
LANE_EXIT_REWARD = -10.0
# A lap on which the centre offset ever exceeds this (metres) does not count as a valid lap.
INVALID_LAP_OFFSET = 0.5
# Random starts: anywhere on the loop, up to this far (m) off the centre and this far (rad) askew.
START_OFFSET = 0.02
START_YAW = 0.15


class LaneFollowingEnv(gymnasium.Env[dict[str, np.ndarray], np.ndarray]):
    """A DB21-like Duckiebot following the right lane of a Duckietown loop, from its camera.

    The action is ``[forward speed, turn]`` in [-1, 1]: 1 commands ``MAX_SPEED`` m/s and
    ``MAX_YAW_RATE`` rad/s (counter-clockwise), turned into wheel duty cycles by Duckietown's
    inverse kinematics. The observation holds ``image`` (64x64x3 uint8, the onboard camera) and
    ``velocity`` (float32 ``[yaw rate / MAX_YAW_RATE, forward speed / MAX_SPEED]``, clipped to
    [-1, 1]). One step is 0.1 s. The reward (at most 1) is the speed along the lane's centre path
    over ``REWARD_SPEED``, clipped to [0, 1], while within ``CENTER_TOLERANCE`` of it and
    ``OFF_CENTER_REWARD`` otherwise, less ``YAW_RATE_PENALTY`` per rad/s of yaw rate while moving.
    A footprint corner past the middle of the white or yellow tape ends the episode with
    ``LANE_EXIT_REWARD``. ``info`` carries the lane metrics that ``metrics.evaluate`` summarises.

    :param variant: ``"sim"`` draws the look and motor gains anew every episode; ``"real"`` is
        the one fixed robot and room of ``variants.REAL_LOOK`` and ``variants.REAL_DYNAMICS``.
    :param reverse_actions: Negate both action components before the robot acts on them.
    :param end_on_lane_exit: End the episode when the robot leaves its lane. Off, the robot may
        wander (scoring ``OFF_CENTER_REWARD``) and laps more than 0.5 m off count as invalid.
    :param render_mode: None or ``"rgb_array"`` (a 256x256 view from behind the robot).
    """

    metadata: dict[str, Any] = {"render_modes": ["rgb_array"], "render_fps": round(1 / CONTROL_PERIOD)}

    def __init__(
        self,
        variant: str = "sim",
        *,
        reverse_actions: bool = False,
        end_on_lane_exit: bool = True,
        render_mode: str | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ConfigError(
                f"variant must be one of {VARIANTS}, got {variant!r}.{did_you_mean(str(variant), VARIANTS)}"
            )
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ConfigError(f"render_mode must be None or 'rgb_array', got {render_mode!r}.")
        self.variant = variant
        self.actions_reversed = reverse_actions
        self.render_mode = render_mode
        self._end_on_lane_exit = end_on_lane_exit
        self.track = Track()
        self._model = build_model(self.track)
        self._data = mujoco.MjData(self._model)
        self._substeps = round(CONTROL_PERIOD / self._model.opt.timestep)
        self._renderer = Renderer(self._model)
        self._floor = FloorTexture(self.track, room_extent(self.track))
        self._calibration = Calibration()
        self._ids = {
            "onboard": mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_CAMERA, ONBOARD_CAMERA),
            "lamp": mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_LIGHT, LAMP),
            "sun": mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_LIGHT, SUN),
            "floor": mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_TEXTURE, FLOOR_TEXTURE),
        }
        self._wall_ids = [mujoco.mj_name2id(self._model, mujoco.mjtObj.mjOBJ_GEOM, name) for name in WALLS]
        self._camera_position = self._model.cam_pos[self._ids["onboard"]].copy()
        # Squared distance from the frame's centre, 1 at the corners' circle: the vignette's shape.
        axis = (np.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * 2 - 1
        self._radius2 = ((axis[:, None] ** 2 + axis[None, :] ** 2) / 2)[..., None].astype(np.float32)
        self.observation_space = spaces.Dict(
            {
                IMAGE_KEY: spaces.Box(0, 255, (IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8),
                VELOCITY_KEY: spaces.Box(-1.0, 1.0, (2,), np.float32),
            }
        )
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        # 'sim' draws new ones at every reset, before anything is rendered.
        self.look: Look = REAL_LOOK
        self.dynamics: Dynamics = REAL_DYNAMICS
        if variant == "real":
            self._paint_floor(REAL_LOOK, (0, 0))
        self._commands: collections.deque[np.ndarray] = collections.deque()
        self._time = 0.0
        self._arc = 0.0
        self._progress = 0.0
        self._laps = 0
        self._valid_laps = 0
        self._lap_start = 0.0
        self._lap_max_offset = 0.0

    # ------------------------------------------------------------------
    # Gymnasium API
    # ------------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Start an episode; ``options={"track_position": f}`` starts on the centre at fraction f."""
        super().reset(seed=seed)
        rng = self.np_random
        if self.variant == "sim":
            self.look = sample_sim_look(rng)
            self.dynamics = sample_sim_dynamics(rng)
            shift = rng.integers(0, [self._floor.height, self._floor.width])
            self._paint_floor(self.look, (int(shift[0]), int(shift[1])))
        self._apply_look(self.look)
        options = options or {}
        if "track_position" in options:
            arc, offset, yaw_error = float(options["track_position"]) % 1.0 * self.track.length, 0.0, 0.0
        else:
            arc = rng.uniform(0.0, self.track.length)
            offset = rng.uniform(-START_OFFSET, START_OFFSET)
            yaw_error = rng.uniform(-START_YAW, START_YAW)
        x, y, yaw = self.track.pose_at(arc, offset)
        yaw += yaw_error
        mujoco.mj_resetData(self._model, self._data)
        self._data.qpos[:7] = (x, y, WHEEL_RADIUS, math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2))
        mujoco.mj_forward(self._model, self._data)
        self._commands = collections.deque(np.zeros(2) for _ in range(self.dynamics.latency_steps))
        lane = self.track.locate(np.array([x, y]))
        self._time = 0.0
        self._arc = lane.arc_length
        self._progress = 0.0
        self._laps = 0
        self._valid_laps = 0
        self._lap_start = 0.0
        self._lap_max_offset = abs(lane.offset)
        info = self._info(0.0, abs(lane.offset), lap_time=0.0, lap_valid=False, lane_exit=False)
        return self._observe(), info

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        command = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
        if self.actions_reversed:
            command = -command
        self._commands.append(command)
        speed_command, turn_command = self._commands.popleft()
        duties = np.array(self._calibration.duty_cycles(speed_command * MAX_SPEED, turn_command * MAX_YAW_RATE))
        duties[np.abs(duties) < self.dynamics.deadzone] = 0.0
        self._data.ctrl[:] = duties * MOTOR_CONSTANT * np.asarray(self.dynamics.motor_gains)
        mujoco.mj_step(self._model, self._data, nstep=self._substeps)
        self._time += CONTROL_PERIOD

        x, y, yaw = self.pose()
        rotation = np.array([[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
        points = np.vstack([[x, y], FOOTPRINT @ rotation.T + [x, y]])  # [5, 2]: centre, then corners
        arcs, offsets = self.track.locate_many(points)
        offset = abs(float(offsets[0]))
        corners = offsets[1:]
        lane_exit = bool(np.any(corners > YELLOW_LINE_MIDDLE) or np.any(corners < WHITE_LINE_MIDDLE))

        # Arc lengths wrap at the loop's length; steps are far shorter than half a loop.
        half = self.track.length / 2
        moved = (float(arcs[0]) - self._arc + half) % self.track.length - half
        self._arc = float(arcs[0])
        self._progress += moved
        self._lap_max_offset = max(self._lap_max_offset, offset)
        lap_time, lap_valid = 0.0, False
        boundary = (self._laps + 1) * self.track.length
        if self._progress >= boundary:
            # Interpolate the moment the boundary was crossed within this step.
            crossed = self._time - CONTROL_PERIOD * (self._progress - boundary) / moved
            lap_time = crossed - self._lap_start
            lap_valid = self._lap_max_offset <= INVALID_LAP_OFFSET
            self._lap_start = crossed
            self._laps += 1
            self._valid_laps += int(lap_valid)
            self._lap_max_offset = offset

        yaw_rate, speed = self._motion()
        if offset <= CENTER_TOLERANCE:
            reward = float(np.clip(moved / CONTROL_PERIOD / REWARD_SPEED, 0.0, 1.0))
        else:
            reward = OFF_CENTER_REWARD
        if abs(speed) > MOVING_SPEED:
            reward -= YAW_RATE_PENALTY * abs(yaw_rate)
        terminated = lane_exit and self._end_on_lane_exit
        if terminated:
            reward = LANE_EXIT_REWARD
        info = self._info(reward, offset, lap_time=lap_time, lap_valid=lap_valid, lane_exit=lane_exit)
        return self._observe(), reward, terminated, False, info

    def render(self) -> np.ndarray | None:
        """A 256x256 RGB view from behind the robot (``render_mode="rgb_array"``), else None."""
        if self.render_mode != "rgb_array":
            return None
        return self._renderer.render(self._data, CHASE_CAMERA, RENDER_SIZE, show_robot=True)

    def close(self) -> None:
        self._renderer.close()

    # ------------------------------------------------------------------
    # State, for scripted drivers and tests
    # ------------------------------------------------------------------

    def pose(self) -> np.ndarray:
        """The robot's true pose ``[x, y, yaw]`` (metres, radians) at the middle of its axle."""
        x, y, _, w, qx, qy, qz = self._data.qpos[:7]
        yaw = math.atan2(2 * (w * qz + qx * qy), 1 - 2 * (qy * qy + qz * qz))
        return np.array([x, y, yaw])

    # ------------------------------------------------------------------
    # Internals
    # ------------------------------------------------------------------

    def _motion(self) -> tuple[float, float]:
        """True yaw rate (rad/s) and forward speed (m/s) from the robot's gyro and velocimeter."""
        sensors = self._data.sensordata
        return float(sensors[2]), float(sensors[3])

    def _observe(self) -> dict[str, np.ndarray]:
        rng = self.np_random
        image = self._renderer.render(self._data, ONBOARD_CAMERA, IMAGE_SIZE)
        if self.look.vignette > 0 or self.look.image_noise > 0:
            pixels = image * (1.0 - self.look.vignette * self._radius2)
            pixels += rng.normal(0.0, self.look.image_noise, pixels.shape)
            image = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        yaw_rate, speed = self._motion()
        velocity = np.array([yaw_rate / MAX_YAW_RATE, speed / MAX_SPEED])
        if self.dynamics.velocity_noise > 0:
            velocity += rng.normal(0.0, self.dynamics.velocity_noise, 2)
        return {IMAGE_KEY: image, VELOCITY_KEY: np.clip(velocity, -1.0, 1.0).astype(np.float32)}

    def _info(
        self, reward: float, offset: float, *, lap_time: float, lap_valid: bool, lane_exit: bool
    ) -> dict[str, Any]:
        return {
            "dense_reward": reward,
            "center_offset_cm": 100.0 * offset,
            "progress": self._progress / self.track.length,
            "track_position": self._arc / self.track.length,
            "laps_completed": self._laps,
            "valid_laps": self._valid_laps,
            "lap_completed": lap_time > 0.0,
            "lap_time": lap_time,
            "lap_valid": lap_valid,
            "lane_exit": lane_exit,
        }

    def _paint_floor(self, look: Look, shift: tuple[int, int]) -> None:
        texture = self._floor.paint(look.palette, shift)
        start = self._model.tex_adr[self._ids["floor"]]
        self._model.tex_data[start : start + texture.size] = texture.reshape(-1)
        self._renderer.upload_texture(FLOOR_TEXTURE)

    def _apply_look(self, look: Look) -> None:
        """Set walls, lights and the onboard camera; the floor is painted by ``_paint_floor``."""
        model = self._model
        for geom_id, colour in zip(self._wall_ids, look.wall_colours):
            model.geom_rgba[geom_id, :3] = colour
        x_min, y_min, x_max, y_max = room_extent(self.track)
        u, v, height = look.lamp_position
        lamp, sun = self._ids["lamp"], self._ids["sun"]
        model.light_pos[lamp] = (x_min + u * (x_max - x_min), y_min + v * (y_max - y_min), height)
        model.light_diffuse[lamp] = look.lamp_colour
        model.light_specular[lamp] = 0.3 * np.asarray(look.lamp_colour)
        direction = np.asarray(look.sun_direction)
        model.light_dir[sun] = direction / np.linalg.norm(direction)
        model.light_diffuse[sun] = look.sun_colour
        model.vis.headlight.ambient[:] = look.ambient
        camera = self._ids["onboard"]
        model.cam_pos[camera] = self._camera_position + (0.0, 0.0, look.camera_height)
        model.cam_quat[camera] = camera_quaternion(
            CAMERA_PITCH_DEG + look.camera_pitch_deg, look.camera_roll_deg, look.camera_yaw_deg
        )
        model.cam_fovy[camera] = look.camera_fovy_deg
