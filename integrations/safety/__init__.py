"""The onboard safety layer the Duckiebot nodes share: frame, wheel speeds and an OnnxPolicy in, a command every period
out, zero on any fault. No ROS and no torch here: its ROS shells are duckiebot_ros.py and ros2_node.py."""

# From the inside out, one idea a module: frames (camera frames) and wheels (kinematics), pure functions;
# settings (the one table of controller settings); commands (Command, StopReason); velocity (the velocity
# observation and silence); inference (the policy on its own thread, with a deadline); checks (the safety
# checks and CHECKS, the list the controller runs); controller (LaneFollowingController); loop (ControlLoop,
# LogForwarder, stop_on_signals). docs/safety.md has the guarantees, the checks and how to add one.

from latent_residual_integrations.safety.checks import CHECKS, STAGES, Check, Reading, Step, register
from latent_residual_integrations.safety.commands import Command, StopReason
from latent_residual_integrations.safety.controller import LaneFollowingController
from latent_residual_integrations.safety.frames import (
    CAMERA_INTRINSICS,
    CAMERA_SIZE,
    FrameSizeError,
    decode_frame,
    load_camera_size,
    parse_camera_size,
)
from latent_residual_integrations.safety.inference import InferenceBusy, InferenceTimeout, InferenceWorker
from latent_residual_integrations.safety.loop import PACKAGE_LOGGER, ControlLoop, LogForwarder, stop_on_signals
from latent_residual_integrations.safety.settings import (
    CONTROLLER_SETTINGS,
    ControllerSettings,
    Setting,
    controller_keywords,
)
from latent_residual_integrations.safety.velocity import VELOCITY_KEY, WheelSpeeds
from latent_residual_integrations.safety.wheels import (
    ENCODER_RESOLUTION,
    action_to_wheels,
    body_velocity,
    load_calibration,
    wheel_velocity,
)

__all__ = [
    "CAMERA_INTRINSICS",
    "CAMERA_SIZE",
    "CHECKS",
    "CONTROLLER_SETTINGS",
    "ENCODER_RESOLUTION",
    "PACKAGE_LOGGER",
    "STAGES",
    "VELOCITY_KEY",
    "Check",
    "Command",
    "ControlLoop",
    "ControllerSettings",
    "FrameSizeError",
    "InferenceBusy",
    "InferenceTimeout",
    "InferenceWorker",
    "LaneFollowingController",
    "LogForwarder",
    "Reading",
    "Setting",
    "Step",
    "StopReason",
    "WheelSpeeds",
    "action_to_wheels",
    "body_velocity",
    "controller_keywords",
    "decode_frame",
    "load_calibration",
    "load_camera_size",
    "parse_camera_size",
    "register",
    "stop_on_signals",
    "wheel_velocity",
]
