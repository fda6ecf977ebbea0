"""The safety checks as units: a new check is one class plus a row of the settings table, registered the documented way
(docs/safety.md, "Adding a check"); the controller then runs it and both nodes take its setting. No ROS here."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from fault_injection import FakeClock, camera_frames, export_lane_policy, jpeg

from latent_residual.onnx_policy import OnnxPolicy
from latent_residual_integrations.duckiebot_ros import build_controller, parse_args
from latent_residual_integrations.ros2_node import parameters
from latent_residual_integrations.safety import (
    CHECKS,
    CONTROLLER_SETTINGS,
    STAGES,
    Check,
    LaneFollowingController,
    Reading,
    Setting,
    StopReason,
    register,
)
from latent_residual_integrations.safety.checks import PolicyRaised
from latent_residual_integrations.safety.settings import non_negative

PERIOD = 0.1


class DarkFrame(Check):
    """A covered lens or the lights off: a frame whose mean pixel value is below ``min_brightness`` (0: off)."""

    name, reason, stage = "dark_frame", "dark_frame", "input"

    def __call__(self, reading: Reading) -> str | None:
        bound = self.settings.min_brightness
        if reading.kind != "frame" or not bound:
            return None
        brightness = float(reading.image.mean())
        return None if brightness >= bound else f"frame brightness {brightness:.1f} below {bound:g}"


MIN_BRIGHTNESS = Setting(
    "min_brightness", 0.0, "", "stop on frames darker than this mean pixel value, 0-255 (0: off)", validate=non_negative
)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_lane_policy(tmp_path_factory.mktemp("checks") / "export")


@pytest.fixture
def registered():
    """Register DarkFrame and its setting for one test, then put the lists back as they were."""
    checks, settings = list(CHECKS), list(CONTROLLER_SETTINGS)
    register(DarkFrame, MIN_BRIGHTNESS)
    yield
    CHECKS[:], CONTROLLER_SETTINGS[:] = checks, settings


def ros1_controller(export, clock, *flags):
    args = parse_args(["--robot", "db21", "--policy", str(export), "--velocity-source", "zero", *flags])
    return build_controller(args, policy=OnnxPolicy(export, threads=1), clock=clock)


def drive(controller, clock, frame):
    controller.on_frame(frame, clock.now)
    clock.advance(PERIOD)
    return controller.step()


def test_a_new_check_is_one_unit_plus_a_settings_row(export, registered, caplog):
    clock = FakeClock()
    bright, dark = camera_frames(1)[0], jpeg(np.zeros((480, 640, 3), np.uint8))
    # Its setting is configurable like the others: a ROS 1 flag, a ROS 2 parameter, a controller keyword.
    controller = ros1_controller(export, clock, "--min-brightness", "20")
    assert controller.settings.min_brightness == 20.0
    assert parse_args(["--robot", "db21", "--policy", str(export)]).min_brightness == 0.0
    assert parameters()["min_brightness"] == (0.0, MIN_BRIGHTNESS.help)
    with pytest.raises(ValueError, match="min_brightness must be a non-negative number, got -1"):
        LaneFollowingController(OnnxPolicy(export, threads=1), min_brightness=-1)
    # The controller runs it: a dark frame zeroes the wheels at once, with the check's reason, logged and counted.
    assert not drive(controller, clock, bright).stopped
    with caplog.at_level(logging.WARNING, logger="latent_residual_integrations"):
        controller.on_frame(dark, clock.now)
        command = controller.check()
    assert command.stopped and command.reason == "dark_frame" and command.wheels == (0.0, 0.0)
    assert command.detail == "frame brightness 0.0 below 20"
    assert "stop (dark_frame): frame brightness 0.0 below 20" in caplog.text
    assert controller.latest[0] is not None and controller.latest[0].mean() > 20  # the dark frame is not kept
    for _ in range(3):  # dark frames keep coming: stopped every period, counted once
        command = drive(controller, clock, dark)
        assert command.reason == "dark_frame"
    assert controller.stop_counts["dark_frame"] == 1
    assert not drive(controller, clock, bright).stopped  # light again: driving, after a policy reset
    # Off by default: the same dark frames drive a controller with min_brightness 0.
    default = ros1_controller(export, clock)
    assert not drive(default, clock, dark).stopped


def test_without_the_check_dark_frames_drive(export):
    # What the check adds: before it is registered, nothing stops on a dark frame (and its flag does not exist).
    clock = FakeClock()
    controller = ros1_controller(export, clock)
    assert not drive(controller, clock, jpeg(np.zeros((480, 640, 3), np.uint8))).stopped
    with pytest.raises(SystemExit):
        parse_args(["--robot", "db21", "--policy", str(export), "--min-brightness", "20"])


def test_the_checks_are_named_units_in_one_ordered_list():
    assert len({check.name for check in CHECKS}) == len(CHECKS)
    assert all(check.stage in STAGES for check in CHECKS)
    assert all(isinstance(check.reason, StopReason) for check in CHECKS)  # the checks shipped here
    # Within the inference stage the catch-all comes last.
    assert [check for check in CHECKS if check.stage == "inference"][-1] is PolicyRaised
    with pytest.raises(TypeError, match="needs a name, a reason and a stage"):

        class NoStage(Check):
            name, reason = "no_stage", "no_stage"


def test_register_refuses_a_second_check_or_setting_of_the_same_name(registered):
    with pytest.raises(ValueError, match="'dark_frame' is registered already"):
        register(DarkFrame)
    with pytest.raises(ValueError, match="the settings table has max_frame_age already"):
        register(type("Other", (DarkFrame,), {"name": "other"}), Setting("max_frame_age", 1.0, "s", "again"))
