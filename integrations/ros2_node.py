"""A ROS 2 node that drives a robot with an exported lane-following policy: camera in, wheel commands out, a thin
shell over ``latent_residual_integrations.safety`` (the controller and its checks, no ROS); rclpy is imported late."""

# Run (rclpy, sensor_msgs and geometry_msgs installed; duckietown_msgs for the Duckiebot's messages):
#
#     python -m latent_residual_integrations.ros2_node --ros-args -p policy:=/data/policy -p robot:=db21 \
#         [-p command_type:=wheels|twist] [-p rate:=10.0] [-p velocity_source:=encoders|odometry|command|zero]
#
# The parameters are parameters(); docs/safety.md says what the node guarantees and how it was tested.

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from latent_residual.onnx_policy import OnnxPolicy
from latent_residual_integrations.safety import (
    CONTROLLER_SETTINGS,
    ENCODER_RESOLUTION,
    Command,
    ControlLoop,
    LaneFollowingController,
    LogForwarder,
    controller_keywords,
    load_calibration,
    stop_on_signals,
)

NODE_NAME = "latent_residual_policy"
COMMAND_TYPES = ("wheels", "twist")
#: The node's own parameters, name -> (default, description); ``parameters()`` adds the controller's settings.
#: Topic defaults are templates: ``{robot}`` is the ``robot`` parameter; with an empty ``robot`` the ``/{robot}/``
#: prefix is dropped (a name relative to the node's namespace).
NODE_PARAMETERS: dict[str, tuple[Any, str]] = {
    "policy": ("", "directory with policy.onnx and policy.json (required)"),
    "robot": ("", "the robot's name, the first part of the default topics"),
    "camera_topic": ("/{robot}/camera_node/image/compressed", "sensor_msgs/CompressedImage in"),
    "command_type": ("wheels", "wheels: duckietown_msgs/WheelsCmdStamped; twist: geometry_msgs/Twist"),
    "wheels_topic": ("/{robot}/wheels_driver_node/wheels_cmd", "WheelsCmdStamped out (command_type wheels)"),
    "twist_topic": ("/{robot}/cmd_vel", "geometry_msgs/Twist out (command_type twist)"),
    "max_speed": (0.5, "twist: m/s for a forward action of 1 (the twin's)"),
    "max_yaw_rate": (5.0, "twist: rad/s for a turn action of 1 (the twin's)"),
    "encoder_topic": (
        "/{robot}/{side}_wheel_encoder_node/tick",
        "duckietown_msgs/WheelEncoderStamped, {side} left/right",
    ),
    "odometry_topic": ("/{robot}/velocity", "geometry_msgs/TwistStamped measured velocity (velocity_source odometry)"),
    "calibration": ("", "kinematics calibration YAML (gain, trim, ...)"),
    "providers": ([""], "onnxruntime execution providers, in order (empty: CUDA if available, else CPU)"),
    "threads": (1, "onnxruntime intra-op threads (leave cores to ROS)"),
}


def parameters() -> dict[str, tuple[Any, str]]:
    """Every parameter the node declares, name -> (default, description): its own, then a row of the settings table
    each (read now, so that a check registered before the node starts brings its setting)."""
    return NODE_PARAMETERS | {setting.name: (setting.default, setting.description) for setting in CONTROLLER_SETTINGS}


class NodeError(ValueError):
    """A mistake in the node's parameters or environment: reported in one line, no traceback."""


def topic(template: str, robot: str, **fields: str) -> str:
    """Fill a topic template; without a robot name the ``/{robot}/`` prefix is dropped."""
    if not robot and template.startswith("/{robot}/"):
        template = template[len("/{robot}/") :]
    return template.format(robot=robot, **fields)


def stamp_seconds(stamp: Any) -> float | None:
    """A ``builtin_interfaces/Time`` in seconds; ``None`` for an unset (zero) stamp, meaning "received now"."""
    seconds = stamp.sec + stamp.nanosec * 1e-9
    return seconds or None


def read_parameters(node: Any) -> dict[str, Any]:
    """Declare ``parameters()`` on an rclpy node and return their values, checked."""
    from rclpy.exceptions import ParameterException

    values = {}
    for name, (default, description) in parameters().items():
        try:
            values[name] = node.declare_parameter(name, default, _descriptor(description)).value
        except ParameterException as exc:
            kind = type(default).__name__
            raise NodeError(f"parameter {name} must be a {kind} like {default!r} ({str(exc).split(':')[0]})") from exc
    if not values["policy"]:
        raise NodeError("the policy parameter is required: --ros-args -p policy:=/path/to/export")
    if values["command_type"] not in COMMAND_TYPES:
        raise NodeError(f"command_type must be one of {COMMAND_TYPES}, got {values['command_type']!r}")
    for setting in CONTROLLER_SETTINGS:
        if setting.choices and values[setting.name] not in setting.choices:
            raise NodeError(f"{setting.name} must be one of {setting.choices}, got {values[setting.name]!r}")
    values["providers"] = [name for name in values["providers"] if name] or None
    return values


def _descriptor(description: str) -> Any:
    from rcl_interfaces.msg import ParameterDescriptor

    return ParameterDescriptor(description=description)


def _duckietown(name: str, wanted: str) -> Any:
    try:
        from duckietown_msgs import msg
    except ImportError as exc:
        raise NodeError(f"{wanted} needs duckietown_msgs ({name}), which is not installed here") from exc
    return getattr(msg, name)


class PolicyNode:
    """The ROS 2 shell: subscriptions feed the controller, a ``ControlLoop`` publishes its commands.

    :param node: An rclpy ``Node`` (its parameters are declared and read here).
    :param make_policy: Builds the policy from the ``policy`` parameter (tests pass a subclass of ``OnnxPolicy``).
    """

    def __init__(self, node: Any, make_policy: Callable[..., OnnxPolicy] = OnnxPolicy) -> None:
        from geometry_msgs.msg import Twist, TwistStamped
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CompressedImage

        self.node = node
        self.params = params = read_parameters(node)
        robot = params["robot"]
        try:
            policy = make_policy(params["policy"], providers=params["providers"], threads=params["threads"])
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise NodeError(str(exc).strip("'\"")) from exc
        calibration = load_calibration(params["calibration"]) if params["calibration"] else None
        self.controller = LaneFollowingController(
            policy,
            calibration,
            **controller_keywords(params),
            clock=lambda: node.get_clock().now().nanoseconds * 1e-9,
        )
        command_qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        if params["command_type"] == "wheels":
            wheels_message = _duckietown("WheelsCmdStamped", "command_type wheels")
            self.command_topic = topic(params["wheels_topic"], robot)
            self.publisher = node.create_publisher(wheels_message, self.command_topic, command_qos)

            def message(command: Command) -> Any:
                out = wheels_message()
                out.header.stamp = node.get_clock().now().to_msg()
                out.vel_left, out.vel_right = command.wheels
                return out
        else:
            self.command_topic = topic(params["twist_topic"], robot)
            self.publisher = node.create_publisher(Twist, self.command_topic, command_qos)
            max_speed, max_yaw_rate = float(params["max_speed"]), float(params["max_yaw_rate"])

            def message(command: Command) -> Any:
                out = Twist()
                out.linear.x, out.angular.z = command.twist(max_speed, max_yaw_rate)
                return out

        self._message = message
        newest = QoSProfile(depth=1, reliability=ReliabilityPolicy.BEST_EFFORT)  # the newest frame only
        readings = QoSProfile(depth=5, reliability=ReliabilityPolicy.BEST_EFFORT)
        self.camera_topic = topic(params["camera_topic"], robot)
        node.create_subscription(CompressedImage, self.camera_topic, self._on_image, newest)
        if params["velocity_source"] == "encoders" and self.controller.reads_velocity:
            encoder_message = _duckietown("WheelEncoderStamped", "velocity_source encoders")
            for side in ("left", "right"):
                name = topic(params["encoder_topic"], robot, side=side)
                node.create_subscription(encoder_message, name, self._on_encoder(side), readings)
        elif params["velocity_source"] == "odometry":
            name = topic(params["odometry_topic"], robot)
            node.create_subscription(TwistStamped, name, self._on_odometry, readings)
        self.loop = ControlLoop(self.controller, self._publish)

    def _publish(self, command: Command) -> None:
        self.publisher.publish(self._message(command))

    def _on_image(self, message: Any) -> None:
        self.controller.on_frame(bytes(message.data), stamp_seconds(message.header.stamp))

    def _on_encoder(self, side: str) -> Callable[[Any], None]:
        def callback(message: Any) -> None:
            resolution = int(getattr(message, "resolution", ENCODER_RESOLUTION) or ENCODER_RESOLUTION)
            self.controller.on_encoder(side, message.data, stamp_seconds(message.header.stamp), resolution)

        return callback

    def _on_odometry(self, message: Any) -> None:
        twist = message.twist
        self.controller.on_odometry(twist.linear.x, twist.angular.z, stamp_seconds(message.header.stamp))

    def close(self) -> None:
        """Stop the loop, publish the final stop and wait (up to 1 s) until subscribers have it."""
        from rclpy.duration import Duration

        self.loop.close()
        with contextlib.suppress(Exception):  # best effort: the stop has been published
            self.publisher.wait_for_all_acked(Duration(seconds=1.0))


def run(
    argv: Sequence[str] | None = None,
    *,
    make_policy: Callable[..., OnnxPolicy] = OnnxPolicy,
    ready: Callable[[PolicyNode], None] | None = None,
) -> int:
    """Run the node until SIGINT/SIGTERM or a ROS shutdown, then publish a stop; returns the exit status.

    :param argv: Command-line arguments, ``--ros-args`` included (default ``sys.argv``).
    :param make_policy: Builds the policy (``OnnxPolicy``; tests inject a subclass that raises or hangs on demand).
    :param ready: Called with the ``PolicyNode`` once it publishes (tests hook their controls here).
    """
    try:
        import rclpy
        from rclpy.exceptions import NameValidationException
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.signals import SignalHandlerOptions
    except ImportError as exc:
        print(f"{NODE_NAME}: error: ROS 2 (rclpy) is not importable here: {exc}", file=sys.stderr)
        return 2
    args = list(sys.argv if argv is None else argv)
    context = rclpy.Context()
    # Our own handlers: a signal must publish a stop while the context can still publish.
    rclpy.init(args=args, context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node(NODE_NAME, context=context)
    ros_logger = node.get_logger()
    forwarder = LogForwarder(ros_logger.error, ros_logger.warning, ros_logger.info).attach()
    try:
        try:
            shell = PolicyNode(node, make_policy)
        except (NodeError, OSError, ValueError, ImportError, NameValidationException) as exc:
            message = " ".join(line.strip() for line in str(exc).splitlines()[:2])  # rclpy's name errors span lines
            print(f"{NODE_NAME}: error: {message}", file=sys.stderr)
            return 2
        done = threading.Event()
        stop_on_signals(done)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        shell.loop.start()
        node.get_logger().info(
            f"{shell.controller.policy} on {shell.camera_topic} -> {shell.command_topic} "
            f"({shell.params['command_type']}) at {shell.controller.settings.rate_hz:g} Hz"
        )
        if ready is not None:
            ready(shell)
        try:
            while not done.is_set() and context.ok():
                executor.spin_once(timeout_sec=0.02)  # a signal is seen within 20 ms
        finally:
            shell.close()
            executor.shutdown()
        return 0
    finally:
        forwarder.detach()
        node.destroy_node()
        if context.ok():
            rclpy.shutdown(context=context)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - the test runs ``run`` in a process
    return run(argv)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
