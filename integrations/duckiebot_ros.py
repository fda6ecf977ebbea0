"""A ROS 1 node that drives a DB21 Duckiebot with an exported lane-following policy.

Camera JPEGs from ``/<robot>/camera_node/image/compressed`` are decoded and resized to the
policy's image size, wheel-encoder ticks give the ``velocity`` observation, and the action
``[forward, turn]`` becomes ``WheelsCmdStamped(vel_left, vel_right)`` on
``/<robot>/wheels_driver_node/wheels_cmd`` through Duckietown's inverse kinematics (the same
``Calibration`` the simulated twin in ``latent_residual_plugins.duckiebot`` uses). The policy runs
in onnxruntime (``latent_residual.onnx_policy.OnnxPolicy``); rospy is imported only inside ``main()``, so
the pure parts (decoding, kinematics, odometry, the controller) are testable without ROS.

Run on the robot (in a container with ROS, numpy, pillow and onnxruntime)::

    python -m latent_residual_integrations.duckiebot_ros --robot db21 --policy /data/policy
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from latent_residual.onnx_policy import OnnxPolicy

#: DB21 wheel encoders: ticks per wheel revolution.
ENCODER_RESOLUTION = 135
#: The twin's agent step is 0.1 s (``CONTROL_PERIOD`` in the Duckiebot env).
DEFAULT_RATE_HZ = 10.0
#: Stop the wheels when the newest camera frame is older than this (seconds).
MAX_FRAME_AGE = 0.5
VELOCITY_KEY = "velocity"
VELOCITY_SOURCES = ("encoders", "command", "zero")
CAMERA_TOPIC = "/{robot}/camera_node/image/compressed"
WHEELS_TOPIC = "/{robot}/wheels_driver_node/wheels_cmd"
ENCODER_TOPIC = "/{robot}/{side}_wheel_encoder_node/tick"


def _kinematics() -> Any:
    """The twin's kinematics module (constants and ``Calibration``); NumPy only, no MuJoCo."""
    try:
        # latent_residual first: importing a plugin submodule before it leaves the plugin unregistered.
        import latent_residual  # noqa: F401
        from latent_residual_plugins.duckiebot import robot
    except ImportError as exc:  # pragma: no cover - depends on the robot's image
        raise ImportError(
            "The Duckiebot node reuses latent_residual_plugins.duckiebot.robot for the wheel kinematics; "
            "install latent-residual on the robot (pip install --no-deps latent-residual, plus numpy, "
            "pillow, onnxruntime, pluggy and gymnasium)."
        ) from exc
    return robot


# ----------------------------------------------------------------------------------------------
# Pure functions
# ----------------------------------------------------------------------------------------------


def decode_frame(data: bytes, size: int = 64, *, crop_square: bool = False) -> np.ndarray:
    """Decode a JPEG (or PNG) camera frame to a uint8 (size, size, 3) RGB array.

    The whole frame is resized (antialiased bilinear), squashing 640x480 to a square; with
    ``crop_square`` the centre square is cut out first. Whatever is chosen must also be used
    when recording the robot's target dataset, so that data and deployment see the same pixels.
    """
    from PIL import Image

    with Image.open(io.BytesIO(bytes(data))) as image:
        image = image.convert("RGB")
        if crop_square:
            width, height = image.size
            side = min(width, height)
            left, top = (width - side) // 2, (height - side) // 2
            image = image.crop((left, top, left + side, top + side))
        image = image.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8).copy()


def action_to_wheels(action: Sequence[float] | np.ndarray, calibration: Any = None) -> tuple[float, float]:
    """Map a policy action ``[forward, turn]`` in [-1, 1] to wheel commands (vel_left, vel_right).

    As in the simulated twin: ``forward`` commands ``MAX_SPEED`` m/s and ``turn`` ``MAX_YAW_RATE``
    rad/s (counter-clockwise); Duckietown's inverse kinematics (gain, trim, k, limit, radius
    0.0318 m, baseline 0.1 m) turn them into duty cycles in [-limit, limit].

    :param calibration: A ``Calibration`` (the robot's kinematics calibration); defaults to gain 1, trim 0.
    """
    robot = _kinematics()
    calibration = calibration or robot.Calibration()
    forward, turn = np.clip(np.asarray(action, dtype=np.float64).reshape(2), -1.0, 1.0)
    return calibration.duty_cycles(forward * robot.MAX_SPEED, turn * robot.MAX_YAW_RATE)


def load_calibration(path: str | Path) -> Any:
    """Read a Duckietown kinematics calibration YAML (``gain``, ``trim``, ``k``, ``limit``, ``radius``, ``baseline``)."""
    import yaml  # on the robot: part of every ROS install

    values = yaml.safe_load(Path(path).read_text()) or {}
    robot = _kinematics()
    fields = ("gain", "trim", "k", "limit", "radius", "baseline")
    return robot.Calibration(**{name: float(values[name]) for name in fields if name in values})


def wheel_velocity(
    left_ticks: float,
    right_ticks: float,
    dt: float,
    *,
    resolution: int = ENCODER_RESOLUTION,
    radius: float = 0.0318,
    baseline: float = 0.1,
) -> np.ndarray:
    """The ``velocity`` observation from encoder tick increments over ``dt`` seconds.

    :returns: float32 ``[yaw rate / MAX_YAW_RATE, forward speed / MAX_SPEED]`` clipped to [-1, 1],
        the layout the twin's ``velocity`` observation has.
    """
    robot = _kinematics()
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt}.")
    left = 2 * math.pi * radius * left_ticks / resolution / dt  # m/s at the rim
    right = 2 * math.pi * radius * right_ticks / resolution / dt
    speed = (left + right) / 2
    yaw_rate = (right - left) / baseline
    velocity = np.array([yaw_rate / robot.MAX_YAW_RATE, speed / robot.MAX_SPEED])
    return np.clip(velocity, -1.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# The controller (everything but ROS)
# ----------------------------------------------------------------------------------------------


class LaneFollowingController:
    """Turns the latest camera frame and encoder ticks into wheel commands with an ``OnnxPolicy``.

    :param policy: The exported policy; its one uint8 (H, W, 3) input is the camera, and a
        ``velocity`` input, if any, is filled from ``velocity_source``.
    :param calibration: The robot's kinematics ``Calibration``.
    :param velocity_source: ``"encoders"`` (wheel ticks), ``"command"`` (the last action's
        nominal velocity, for robots without encoders) or ``"zero"``.
    :param crop_square: Cut the centre square out of each frame before resizing.
    :param max_frame_age: Stop (zero wheels) when the newest frame is older than this.
    """

    def __init__(
        self,
        policy: OnnxPolicy,
        calibration: Any = None,
        *,
        velocity_source: str = "encoders",
        crop_square: bool = False,
        max_frame_age: float = MAX_FRAME_AGE,
    ) -> None:
        if velocity_source not in VELOCITY_SOURCES:
            raise ValueError(f"velocity_source must be one of {VELOCITY_SOURCES}, got {velocity_source!r}.")
        images = [key for key, (dtype, shape) in policy.inputs.items() if dtype == np.uint8 and len(shape) == 3]
        if len(images) != 1 or policy.inputs[images[0]][1][0] != policy.inputs[images[0]][1][1]:
            raise ValueError(f"The policy needs exactly one square uint8 (H, W, 3) camera input; it has {policy.inputs}.")
        others = [key for key in policy.inputs if key not in (images[0], VELOCITY_KEY)]
        if others:
            raise ValueError(f"The Duckiebot node fills only the camera and {VELOCITY_KEY!r}; the policy also reads {others}.")
        self.policy = policy
        self.calibration = calibration or _kinematics().Calibration()
        self.image_key = images[0]
        self.image_size = policy.inputs[self.image_key][1][0]
        self.velocity_source = velocity_source
        self.crop_square = crop_square
        self.max_frame_age = max_frame_age
        # (frame, stamp) swapped as one tuple: ROS callbacks run on other threads than the timer.
        self.latest: tuple[np.ndarray | None, float] = (None, -math.inf)
        self.last_action = np.zeros(2, dtype=np.float32)
        self._ticks: dict[str, tuple[float, float, int]] = {}  # side -> (ticks, stamp, resolution), newest
        self._ticks_at_step: dict[str, tuple[float, float, int]] = {}
        self._velocity = np.zeros(2, dtype=np.float32)
        # A recurrent policy starts an episode at the first drive and after every stop.
        self._stopped = True

    def on_frame(self, data: bytes, stamp: float) -> None:
        """Store a compressed camera frame received at ``stamp`` (seconds)."""
        self.latest = (decode_frame(data, self.image_size, crop_square=self.crop_square), float(stamp))

    def on_encoder(self, side: str, ticks: float, stamp: float, resolution: int = ENCODER_RESOLUTION) -> None:
        """Store a wheel encoder's cumulative tick count (``side`` is ``"left"`` or ``"right"``)."""
        if side not in ("left", "right"):
            raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
        self._ticks[side] = (float(ticks), float(stamp), int(resolution) or ENCODER_RESOLUTION)

    def velocity(self) -> np.ndarray:
        """The ``velocity`` observation now; encoder speeds are measured between two calls."""
        if self.velocity_source == "zero":
            return np.zeros(2, dtype=np.float32)
        if self.velocity_source == "command":
            forward, turn = self.last_action
            return np.clip(np.array([turn, forward]), -1.0, 1.0).astype(np.float32)
        if set(self._ticks) == {"left", "right"}:
            if set(self._ticks_at_step) == {"left", "right"}:
                rates = []  # ticks per second, in units of the DB21's resolution
                for side in ("left", "right"):
                    (ticks, stamp, resolution), (old_ticks, old_stamp, _) = self._ticks[side], self._ticks_at_step[side]
                    if stamp <= old_stamp:  # no new reading since the last step: keep the estimate
                        break
                    rates.append((ticks - old_ticks) / (stamp - old_stamp) * ENCODER_RESOLUTION / resolution)
                else:
                    self._velocity = wheel_velocity(
                        rates[0], rates[1], 1.0, radius=self.calibration.radius, baseline=self.calibration.baseline
                    )
            self._ticks_at_step = dict(self._ticks)
        return self._velocity

    def step(self, now: float) -> tuple[float, float]:
        """Act on the newest frame and return (vel_left, vel_right); zeros without a fresh frame."""
        velocity = self.velocity()
        frame, stamp = self.latest
        if frame is None or now - stamp > self.max_frame_age:
            self.last_action = np.zeros(2, dtype=np.float32)
            self._stopped = True
            return 0.0, 0.0
        if self._stopped:
            self.policy.reset()
            self._stopped = False
        obs = {self.image_key: frame}
        if VELOCITY_KEY in self.policy.inputs:
            obs[VELOCITY_KEY] = velocity
        self.last_action = np.asarray(self.policy.act(obs), dtype=np.float32).reshape(2)
        return action_to_wheels(self.last_action, self.calibration)


# ----------------------------------------------------------------------------------------------
# The ROS node
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robot", required=True, help="the robot's name, the first part of its ROS topics")
    parser.add_argument("--policy", required=True, type=Path, help="directory with policy.onnx and policy.json")
    parser.add_argument("--rate", type=float, default=DEFAULT_RATE_HZ, help="policy steps per second (the twin: 10)")
    parser.add_argument("--velocity-source", choices=VELOCITY_SOURCES, default="encoders")
    parser.add_argument("--crop-square", action="store_true", help="crop the frame's centre square before resizing")
    parser.add_argument("--calibration", type=Path, help="kinematics calibration YAML (gain, trim, ...)")
    parser.add_argument("--providers", nargs="*", help="onnxruntime execution providers, in order")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (leave cores to ROS)")
    # rospy.myargv drops ROS remappings (name:=value) before we parse.
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - needs a ROS master
    """Start the node: subscribe to the camera (and encoders), publish wheel commands at ``--rate``."""
    import rospy
    from duckietown_msgs.msg import WheelEncoderStamped, WheelsCmdStamped
    from sensor_msgs.msg import CompressedImage

    args = parse_args(rospy.myargv(argv if argv is not None else sys.argv)[1:])
    rospy.init_node("latent_residual_policy")
    policy = OnnxPolicy(args.policy, providers=args.providers, threads=args.threads)
    calibration = load_calibration(args.calibration) if args.calibration else None
    controller = LaneFollowingController(
        policy, calibration, velocity_source=args.velocity_source, crop_square=args.crop_square
    )
    publisher = rospy.Publisher(WHEELS_TOPIC.format(robot=args.robot), WheelsCmdStamped, queue_size=1)

    def publish(left: float, right: float) -> None:
        message = WheelsCmdStamped()
        message.header.stamp = rospy.Time.now()
        message.vel_left, message.vel_right = left, right
        publisher.publish(message)

    def on_image(message: Any) -> None:
        controller.on_frame(message.data, message.header.stamp.to_sec() or rospy.get_time())

    def on_encoder(side: str) -> Any:
        def callback(message: Any) -> None:
            controller.on_encoder(side, message.data, message.header.stamp.to_sec() or rospy.get_time(), message.resolution)

        return callback

    rospy.Subscriber(CAMERA_TOPIC.format(robot=args.robot), CompressedImage, on_image, queue_size=1, buff_size=2**22)
    if args.velocity_source == "encoders":
        for side in ("left", "right"):
            topic = ENCODER_TOPIC.format(robot=args.robot, side=side)
            rospy.Subscriber(topic, WheelEncoderStamped, on_encoder(side), queue_size=10)
    rospy.on_shutdown(lambda: publish(0.0, 0.0))
    rospy.Timer(rospy.Duration(1.0 / args.rate), lambda _: publish(*controller.step(rospy.get_time())))
    rospy.loginfo("latent_residual_policy: %s driving %s at %.1f Hz", policy, args.robot, args.rate)
    rospy.spin()


if __name__ == "__main__":  # pragma: no cover
    main()
