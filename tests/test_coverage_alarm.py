"""The onboard coverage alarm without ROS: the Duckiebot nodes' controller on a fake clock, driven by a real
exported policy with a ``surprise`` output, stops or slows down after N steps in a row above the threshold."""

from __future__ import annotations

import logging

import pytest
from fault_injection import FakeClock, camera_frames, export_lane_policy

from latent_residual.onnx_policy import OnnxPolicy
from latent_residual_integrations.duckiebot_ros import build_controller, parse_args
from latent_residual_integrations.safety import LaneFollowingController, StopReason

PERIOD = 0.1


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("alarm")
    # Threshold 0: every step after the first is above it (a KL between two different distributions is > 0).
    return {
        "always": export_lane_policy(root / "always", surprise=True, surprise_threshold=0.0),
        "never": export_lane_policy(root / "never", surprise=True, surprise_threshold=1e9),
        "plain": export_lane_policy(root / "plain"),
    }


def controller(export, *extra):
    clock = FakeClock()
    args = parse_args(["--robot", "db21", "--policy", str(export), "--velocity-source", "zero", *extra])
    return build_controller(args, policy=OnnxPolicy(export, threads=1), clock=clock), clock


def drive(controller, clock, frames, periods):
    commands = []
    for index in range(periods):
        controller.on_frame(frames[index % len(frames)], clock.now)
        clock.advance(PERIOD)
        commands.append(controller.step())
    return commands


def test_the_alarm_stops_after_n_surprised_steps_and_a_fresh_start_drives_again(exports, caplog):
    frames = camera_frames(3)
    control, clock = controller(exports["always"], "--surprise-steps", "3")
    with caplog.at_level(logging.WARNING):
        commands = drive(control, clock, frames, 5)
    # Step 1 starts the episode (surprise 0); steps 2-4 are above the threshold: the third of them stops.
    assert [command.reason for command in commands] == [None, None, None, StopReason.OUT_OF_COVERAGE, None]
    assert "out of the model's coverage" in commands[3].detail and "out_of_coverage" in caplog.text
    assert (
        control.stop_counts[StopReason.OUT_OF_COVERAGE] == 1 and control.policy.last_surprise == 0.0
    )  # reset on resuming
    quiet, clock = controller(exports["never"], "--surprise-steps", "1")
    assert all(not command.stopped for command in drive(quiet, clock, frames, 6))


def test_the_slow_response_scales_the_action_while_surprised_and_logs_it(exports, caplog):
    frames = camera_frames(3)
    plain, clock = controller(exports["always"])
    reference = drive(plain, clock, frames, 6)
    slow, clock = controller(
        exports["always"], "--surprise-steps", "2", "--surprise-response", "slow", "--surprise-slow", "0.25"
    )
    with caplog.at_level(logging.WARNING):
        commands = drive(slow, clock, frames, 6)
    assert not any(command.stopped for command in commands)
    for index, (command, full) in enumerate(zip(commands, reference)):
        scale = 0.25 if index >= 2 else 1.0  # steps 2 and 3 are the first two above the threshold
        assert command.forward == pytest.approx(scale * full.forward, abs=1e-6)
        assert command.turn == pytest.approx(scale * full.turn, abs=1e-6)
        assert command.detail.startswith("slowed") is (index >= 2)
    assert slow.slowdowns == 1 and caplog.text.count("slowing down to 0.25") == 1


def test_the_alarm_needs_a_policy_with_a_threshold_and_sane_settings(exports):
    with pytest.raises(ValueError, match="coverage alarm"):
        LaneFollowingController(OnnxPolicy(exports["plain"]), surprise_steps=3)
    policy = OnnxPolicy(exports["always"])
    for options, match in (
        ({"surprise_steps": -1}, "surprise_steps"),
        ({"surprise_response": "swerve"}, "surprise_response"),
        ({"surprise_slow": 1.5}, "surprise_slow"),
    ):
        with pytest.raises(ValueError, match=match):
            LaneFollowingController(policy, **options)
    assert policy.surprise_threshold == 0.0  # the export's threshold, read back from policy.json
