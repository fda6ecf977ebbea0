"""A ROS 1 node that drives a DB21 Duckiebot with an exported lane-following policy: a thin shell over ``safety``.
The controller, its checks and the pure helpers are in ``latent_residual_integrations.safety`` (tested without ROS);
the ROS 2 node is ``ros2_node.py``.

Camera JPEGs from ``/<robot>/camera_node/image/compressed`` and wheel-encoder ticks go to a
``LaneFollowingController``; a ``ControlLoop`` publishes its command as
``WheelsCmdStamped(vel_left, vel_right)`` on ``/<robot>/wheels_driver_node/wheels_cmd`` every
period, zero on any fault (docs/safety.md). rospy is imported only inside ``main()``.

Run on the robot (in a container with ROS, numpy, pillow and onnxruntime)::

    python -m latent_residual_integrations.duckiebot_ros --robot db21 --policy /data/policy
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latent_residual.onnx_policy import OnnxPolicy
from latent_residual_integrations.safety import (
    CAMERA_INTRINSICS,
    CAMERA_SIZE,
    CONTROLLER_SETTINGS,
    Command,
    ControlLoop,
    LaneFollowingController,
    LogForwarder,
    controller_keywords,
    load_calibration,
    stop_on_signals,
)

#: The ROS 1 node reads wheel speeds from the encoders, or uses the last command's velocity, or zeros.
VELOCITY_SOURCES = ("encoders", "command", "zero")
#: Shared settings whose choices this node narrows (it subscribes to no odometry).
NARROWED_CHOICES = {"velocity_source": VELOCITY_SOURCES}
CAMERA_TOPIC = "/{robot}/camera_node/image/compressed"
WHEELS_TOPIC = "/{robot}/wheels_driver_node/wheels_cmd"
ENCODER_TOPIC = "/{robot}/{side}_wheel_encoder_node/tick"


# ----------------------------------------------------------------------------------------------
# The ROS node
# ----------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--robot", required=True, help="the robot's name, the first part of its ROS topics")
    parser.add_argument("--policy", required=True, type=Path, help="directory with policy.onnx and policy.json")
    parser.add_argument("--calibration", type=Path, help="kinematics calibration YAML (gain, trim, ...)")
    parser.add_argument("--providers", nargs="*", help="onnxruntime execution providers, in order")
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (leave cores to ROS)")
    for setting in CONTROLLER_SETTINGS:
        flag = "--" + setting.name.replace("_", "-")
        if isinstance(setting.default, bool):
            parser.add_argument(flag, action="store_true", help=setting.description)
        else:
            choices = NARROWED_CHOICES.get(setting.name, setting.choices) or None
            kind = type(setting.default)
            parser.add_argument(flag, type=kind, default=setting.default, choices=choices, help=setting.description)
    # Unset: the robot's own camera calibration decides (build_controller), else the DB21's size.
    parser.set_defaults(camera_size=None)
    # rospy.myargv drops ROS remappings (name:=value) before we parse.
    return parser.parse_args(argv)


def default_camera_size(robot: str) -> str:
    """The robot's camera calibration file (:data:`CAMERA_INTRINSICS`) when it exists, else the DB21's size."""
    path = Path(CAMERA_INTRINSICS.format(robot=robot))
    return str(path) if path.is_file() else CAMERA_SIZE


def build_controller(
    args: argparse.Namespace, *, policy: OnnxPolicy | None = None, clock: Any = None
) -> LaneFollowingController:
    """The node's controller from its arguments (``policy`` and ``clock`` given: tests, or another clock than ROS's)."""
    if policy is None:
        policy = OnnxPolicy(args.policy, providers=args.providers, threads=args.threads)
    calibration = load_calibration(args.calibration) if args.calibration else None
    options = {} if clock is None else {"clock": clock}
    settings = vars(args) | {"camera_size": args.camera_size or default_camera_size(args.robot)}
    return LaneFollowingController(policy, calibration, **controller_keywords(settings), **options)


def stamp_seconds(seconds: float) -> float | None:
    """A header stamp in seconds, ``None`` for an unset (zero) stamp: the controller then uses the receipt time."""
    return seconds or None


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - needs a ROS master
    """Start the node: subscribe to the camera (and encoders), publish wheel commands at ``--rate``.

    SIGTERM stops the wheels.
    """
    import rospy
    from duckietown_msgs.msg import WheelEncoderStamped, WheelsCmdStamped
    from sensor_msgs.msg import CompressedImage

    args = parse_args(rospy.myargv(argv if argv is not None else sys.argv)[1:])
    rospy.init_node("latent_residual_policy", disable_signals=True)  # our handlers publish a stop first
    LogForwarder(rospy.logerr, rospy.logwarn, rospy.loginfo).attach()
    try:
        controller = build_controller(args, clock=rospy.get_time)
    except (OSError, ValueError, TypeError) as exc:
        rospy.logfatal("latent_residual_policy: %s", exc)
        rospy.signal_shutdown(str(exc))
        return 2
    publisher = rospy.Publisher(WHEELS_TOPIC.format(robot=args.robot), WheelsCmdStamped, queue_size=1)

    def publish(command: Command) -> None:
        message = WheelsCmdStamped()
        message.header.stamp = rospy.Time.now()
        message.vel_left, message.vel_right = command.wheels
        publisher.publish(message)

    def on_image(message: Any) -> None:
        controller.on_frame(message.data, stamp_seconds(message.header.stamp.to_sec()))

    def on_encoder(side: str) -> Any:
        def callback(message: Any) -> None:
            controller.on_encoder(side, message.data, stamp_seconds(message.header.stamp.to_sec()), message.resolution)

        return callback

    rospy.Subscriber(CAMERA_TOPIC.format(robot=args.robot), CompressedImage, on_image, queue_size=1, buff_size=2**22)
    if args.velocity_source == "encoders":
        for side in ("left", "right"):
            topic = ENCODER_TOPIC.format(robot=args.robot, side=side)
            rospy.Subscriber(topic, WheelEncoderStamped, on_encoder(side), queue_size=10)
    loop = ControlLoop(controller, publish).start()
    done = threading.Event()
    stop_on_signals(done)
    # rosnode kill and the like: stop while the publisher still works.
    rospy.core.add_preshutdown_hook(lambda _reason: done.set() or loop.close())
    rospy.loginfo("latent_residual_policy: %s driving %s at %.1f Hz", controller.policy, args.robot, args.rate)
    while not done.wait(0.1) and not rospy.is_shutdown():
        pass
    loop.close()  # publishes the stop
    time.sleep(0.2)  # let the publisher's thread send it before the connections close
    rospy.signal_shutdown("stopped")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
