"""The onboard safety layer without ROS: the ROS 1 node's controller on a fake ROS clock, the control loop in real
time, with faults injected into a real exported policy. Over real ROS 2 middleware the same faults are measured in
test_ros2_node.py; nothing here imports rospy or rclpy."""

from __future__ import annotations

import logging
import os
import re
import signal
import statistics
import threading
import time

import numpy as np
import pytest
from fault_injection import FakeClock, FaultyPolicy, camera_frames, export_lane_policy, jpeg, tampered_export

from latent_residual.onnx_policy import OnnxPolicy, PolicyFileError
from latent_residual_integrations.duckiebot_ros import build_controller, parse_args
from latent_residual_integrations.safety import (
    CONTROLLER_SETTINGS,
    Command,
    ControllerSettings,
    ControlLoop,
    InferenceBusy,
    InferenceTimeout,
    InferenceWorker,
    LaneFollowingController,
    LogForwarder,
    StopReason,
    action_to_wheels,
    controller_keywords,
    stop_on_signals,
)

PERIOD = 0.1  # 10 Hz, the twin's step
BOUND = 0.5  # the default max_frame_age


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_lane_policy(tmp_path_factory.mktemp("lane") / "export")


@pytest.fixture(scope="module")
def frames():
    return camera_frames(4)


@pytest.fixture
def clock():
    return FakeClock()


def ros1_controller(export, clock, *extra, **policy_options):
    """The ROS 1 node's controller, built from its command line, on the fake ROS clock."""
    args = parse_args(["--robot", "db21", "--policy", str(export), *extra])
    return build_controller(args, policy=FaultyPolicy(export, threads=1, **policy_options), clock=clock)


class Encoders:
    """Wheel encoders that tick forward (the left wheel a little slower) on the fake clock."""

    def __init__(self, controller, clock):
        self.controller, self.clock, self.ticks = controller, clock, 0

    def read(self):
        self.ticks += 5
        self.controller.on_encoder("left", self.ticks - 1, self.clock.now)
        self.controller.on_encoder("right", self.ticks, self.clock.now)


def drive(controller, clock, frames, encoders=None, periods=1):
    """Frames (and encoder readings) arrive, then a period passes and the controller steps; returns the last command."""
    command = None
    for index in range(periods):
        controller.on_frame(frames[index % len(frames)], clock.now)
        if encoders is not None:
            encoders.read()
        clock.advance(PERIOD)
        command = controller.step()
    return command


def assert_stopped(command, reason):
    assert isinstance(command, Command) and command.stopped, command
    assert command.reason == reason, command
    assert (command.forward, command.turn, command.left, command.right) == (0.0, 0.0, 0.0, 0.0)


# ----------------------------------------------------------------------------------------------
# The controller (moved from test_export.py)
# ----------------------------------------------------------------------------------------------


def test_controller_drives_the_wheels_from_frames_and_encoders(export, frames, clock):
    runner = OnnxPolicy(export)
    controller = LaneFollowingController(runner, clock=clock)
    assert_stopped(controller.step(), StopReason.NO_FRAME)  # no frame yet: stand still
    controller.on_frame(frames[0], stamp=clock.now)
    for side in ("left", "right"):
        controller.on_encoder(side, 0, stamp=clock.now - 0.05)
    assert not controller.step().stopped
    clock.advance(0.05)
    for side, ticks in (("left", 10), ("right", 20)):
        controller.on_encoder(side, ticks, stamp=clock.now)
    clock.advance(0.05)
    command = controller.step()
    velocity = controller.velocity()  # no new ticks since the step: the estimate is kept
    assert velocity[0] > 0 and velocity[1] > 0  # turning left while moving forward
    expected = runner.act({"image": controller.latest[0], "velocity": velocity})
    assert command.wheels == action_to_wheels(expected, controller.calibration)
    assert (command.forward, command.turn) == pytest.approx(tuple(expected))
    assert -1 <= command.left <= 1 and -1 <= command.right <= 1
    clock.advance(0.45)
    assert_stopped(controller.step(), StopReason.STALE_FRAME)  # the frame went stale


def test_controller_starts_an_episode_at_the_first_drive_and_after_every_stop(export, frames, clock):
    policy = FaultyPolicy(export)
    controller = LaneFollowingController(policy, velocity_source="zero", clock=clock)
    controller.step()  # no frame: stopped
    assert drive(controller, clock, frames, periods=2).stopped is False
    assert policy.resets == 1  # the first drive
    clock.advance(1.0)
    assert_stopped(controller.step(), StopReason.STALE_FRAME)
    assert not drive(controller, clock, frames).stopped
    assert policy.resets == 2  # driving again starts a new episode
    assert controller.resumes == 2  # the first drive and the one after the stop


# ----------------------------------------------------------------------------------------------
# The faults, on the ROS 1 node's controller with a fake ROS clock
# ----------------------------------------------------------------------------------------------


def test_frames_stopping_zero_the_wheels_within_one_period_of_the_bound(export, frames, clock, caplog):
    controller = ros1_controller(export, clock)
    encoders = Encoders(controller, clock)
    assert not drive(controller, clock, frames, encoders, periods=3).stopped
    last_frame = clock.now - PERIOD
    # Still within the bound: driving; the loop is told when the frame expires.
    assert controller.seconds_to_deadline() == pytest.approx(last_frame + BOUND - clock.now)
    for _ in range(3):  # ages 0.2, 0.3, 0.4 s
        encoders.read()
        clock.advance(PERIOD)
        assert not controller.step().stopped
    clock.now = last_frame + BOUND + 1e-6  # the moment the bound is crossed (the loop wakes for it)
    with caplog.at_level(logging.WARNING, logger="latent_residual_integrations"):
        assert_stopped(controller.check(), StopReason.STALE_FRAME)
    assert "stop (stale_frame): newest frame is 0.500 s old (bound 0.5 s)" in caplog.text
    assert controller.stop_counts[StopReason.STALE_FRAME] == 1
    encoders.read()
    clock.advance(PERIOD)
    assert_stopped(controller.step(), StopReason.STALE_FRAME)  # and every period after
    assert controller.stop_counts[StopReason.STALE_FRAME] == 1  # one stop, not one per period
    resets = controller.policy.resets
    assert not drive(controller, clock, frames, encoders).stopped  # a fresh frame: driving again
    assert controller.policy.resets == resets + 1


def test_the_periodic_step_alone_stops_within_one_period(export, frames, clock):
    # Without the loop's wake-up at the bound, the next period's step stops: at most one period late.
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    assert not drive(controller, clock, frames).stopped
    stamp = clock.now - PERIOD
    clock.now = stamp + BOUND + PERIOD - 1e-6  # the worst phase: the bound crossed just after a step
    assert_stopped(controller.step(), StopReason.STALE_FRAME)


def test_an_inference_exception_zeroes_the_wheels_in_the_same_step(export, frames, clock, caplog):
    controller = ros1_controller(export, clock)
    encoders = Encoders(controller, clock)
    assert not drive(controller, clock, frames, encoders, periods=2).stopped
    controller.policy.inject("raise")
    with caplog.at_level(logging.WARNING, logger="latent_residual_integrations"):
        command = drive(controller, clock, frames, encoders)
    assert_stopped(command, StopReason.INFERENCE_ERROR)
    assert "RuntimeError: injected inference fault" in command.detail
    assert "stop (inference_error): RuntimeError: injected inference fault" in caplog.text
    assert controller.stop_counts == {StopReason.INFERENCE_ERROR: 1}
    # The same frame again is not fresh input: still stopped, no new inference.
    calls = controller.policy.calls
    encoders.read()
    clock.advance(PERIOD)
    assert_stopped(controller.step(), StopReason.INFERENCE_ERROR)
    assert controller.policy.calls == calls
    resets = controller.policy.resets
    assert not drive(controller, clock, frames, encoders).stopped
    assert controller.policy.resets == resets + 1  # the policy starts afresh


def test_an_inference_hang_zeroes_the_wheels_at_the_deadline(export, frames, clock):
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    assert controller.settings.inference_deadline == pytest.approx(PERIOD / 2)
    assert not drive(controller, clock, frames, periods=2).stopped
    controller.policy.inject("hang", seconds=0.4)
    controller.on_frame(frames[0], clock.now)
    clock.advance(PERIOD)
    started = time.monotonic()
    command = controller.step()
    waited = time.monotonic() - started
    assert_stopped(command, StopReason.INFERENCE_DEADLINE)
    assert PERIOD / 2 <= waited < PERIOD, waited  # the deadline, inside the period
    # While the late call runs, each step stops at once without queueing another call.
    controller.on_frame(frames[1], clock.now)
    clock.advance(PERIOD)
    started = time.monotonic()
    command = controller.step()
    assert time.monotonic() - started < 0.02
    assert_stopped(command, StopReason.INFERENCE_DEADLINE)
    assert "still running" in command.detail
    assert controller.stop_counts == {StopReason.INFERENCE_DEADLINE: 1}
    time.sleep(0.45)  # the hung call returns; its action is dropped
    resets = controller.policy.resets
    assert not drive(controller, clock, frames).stopped
    assert controller.policy.resets == resets + 1


def test_a_nan_encoder_reading_stops_at_once_until_a_valid_reading(export, frames, clock):
    controller = ros1_controller(export, clock)
    encoders = Encoders(controller, clock)
    alarms = []
    controller.on_alarm = lambda: alarms.append(clock.now)
    assert not drive(controller, clock, frames, encoders, periods=2).stopped
    controller.on_encoder("left", float("nan"), clock.now)
    assert alarms == [clock.now]  # the loop is woken at once
    command = controller.check()
    assert_stopped(command, StopReason.NON_FINITE_OBSERVATION)
    assert "left encoder reports nan ticks" in command.detail
    controller.on_frame(frames[0], clock.now)  # a fresh frame is not enough
    clock.advance(PERIOD)
    assert_stopped(controller.step(), StopReason.NON_FINITE_OBSERVATION)
    assert not drive(controller, clock, frames, encoders).stopped  # a valid reading and a fresh frame


def test_a_nan_odometry_reading_and_a_nan_observation_stop(export, frames, clock):
    controller = LaneFollowingController(FaultyPolicy(export), velocity_source="odometry", clock=clock)
    controller.on_odometry(0.2, 0.0, clock.now)
    assert not drive(controller, clock, frames).stopped
    np.testing.assert_allclose(controller.velocity(), [0.0, 0.4])
    controller.on_odometry(float("nan"), 0.0, clock.now)
    assert_stopped(controller.check(), StopReason.NON_FINITE_OBSERVATION)
    controller.on_odometry(0.2, 0.0, clock.now)
    assert not drive(controller, clock, frames).stopped
    # A NaN that reaches the observation by any other way is caught before the policy runs.
    calls = controller.policy.calls
    controller.wheel_speeds.measured = (np.array([np.nan, 0.0], np.float32), clock.now)
    assert_stopped(drive(controller, clock, frames), StopReason.NON_FINITE_OBSERVATION)
    assert controller.policy.calls == calls


def test_a_nan_action_stops(export, frames, clock):
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    assert not drive(controller, clock, frames).stopped
    controller.policy.inject("nan")
    command = drive(controller, clock, frames)
    assert_stopped(command, StopReason.NON_FINITE_ACTION)
    assert "nan" in command.detail
    assert not drive(controller, clock, frames).stopped


@pytest.mark.parametrize(
    ("stamp", "reason", "detail"),
    [
        (lambda now: now + 1.0, StopReason.FUTURE_STAMP, "frame stamped 1.000 s in the future (bound 0.05 s)"),
        (lambda now: float("nan"), StopReason.BAD_STAMP, "frame stamped nan"),
        (lambda now: float("inf"), StopReason.BAD_STAMP, "frame stamped inf"),
    ],
)
def test_a_frame_with_a_future_or_non_finite_stamp_stops_at_once(export, frames, clock, stamp, reason, detail):
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    assert not drive(controller, clock, frames).stopped
    image_before = controller.latest[0]
    controller.on_frame(frames[1], stamp(clock.now))
    command = controller.check()
    assert_stopped(command, reason)
    assert command.detail == detail
    assert controller.latest[0] is image_before  # the bad frame is not kept
    clock.advance(PERIOD)
    assert_stopped(controller.step(), reason)  # the older frame is not fresh input
    assert not drive(controller, clock, frames).stopped
    # A frame within the tolerance is fine (clocks differ by a few milliseconds).
    controller.on_frame(frames[2], clock.now + 0.04)
    assert controller.check() is None


def test_a_frame_that_does_not_decode_stops(export, frames, clock):
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    assert not drive(controller, clock, frames).stopped
    controller.on_frame(b"not a jpeg", clock.now)
    command = controller.check()
    assert_stopped(command, StopReason.BAD_FRAME)
    assert "does not decode" in command.detail


def test_a_frame_of_another_size_stops_until_frames_of_the_camera_size_return(export, frames, clock, caplog):
    # Any frame resizes to the policy's 64x64: only its size before the resize tells a wrong one.
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    assert controller.settings.camera_size == (640, 480)  # the DB21's camera, the default
    assert not drive(controller, clock, frames).stopped
    tiny = jpeg(np.full((1, 1, 3), 128, np.uint8))
    resets = controller.policy.resets
    with caplog.at_level(logging.WARNING, logger="latent_residual_integrations"):
        controller.on_frame(tiny, clock.now)
        assert_stopped(controller.check(), StopReason.BAD_FRAME)  # at once, between periods
    assert "stop (bad_frame): frame is 1x1, expected 640x480 (camera_size)" in caplog.text
    for _ in range(3):  # a stream of them: stopped every period, counted once
        controller.on_frame(tiny, clock.now)
        clock.advance(PERIOD)
        assert_stopped(controller.step(), StopReason.BAD_FRAME)
    assert controller.stop_counts[StopReason.BAD_FRAME] == 1
    assert not drive(controller, clock, frames).stopped  # frames of the camera's size: driving again
    assert controller.policy.resets == resets + 1
    # Another camera's size is configured, and then the DB21's frames are the wrong ones.
    other = ros1_controller(export, clock, "--velocity-source", "zero", "--camera-size", "320x240")
    assert not drive(other, clock, [jpeg(np.full((240, 320, 3), 90, np.uint8))]).stopped
    other.on_frame(frames[0], clock.now)
    assert other.check().detail == "frame is 640x480, expected 320x240 (camera_size)"


def test_silent_wheel_speeds_stop_at_the_bound_not_at_the_next_period(export, frames, clock):
    controller = ros1_controller(export, clock)  # encoders, velocity_fallback stop, 0.5 s
    encoders = Encoders(controller, clock)
    assert not drive(controller, clock, frames, encoders).stopped
    last_reading = clock.now - PERIOD
    for _ in range(3):  # frames keep coming, the encoders fall silent: ages 0.2, 0.3, 0.4 s
        controller.on_frame(frames[0], clock.now)
        clock.advance(PERIOD)
        assert not controller.step().stopped
    controller.on_frame(frames[1], clock.now)
    # The encoders' bound comes before the newest frame's: the loop is told to wake for it.
    assert controller.seconds_to_deadline() == pytest.approx(last_reading + 0.5 - clock.now)
    clock.now = last_reading + 0.5 + 1e-6  # the moment the bound is crossed, between two periods
    command = controller.check()
    assert_stopped(command, StopReason.VELOCITY_SILENT)
    assert command.detail == "wheel encoders silent for 0.50 s"
    encoders.read()
    assert not drive(controller, clock, frames, encoders).stopped  # they report again, a fresh frame: driving
    # Falling back to the last command's velocity, silence stops nothing: no deadline, no stop.
    controller = ros1_controller(export, clock, "--velocity-fallback", "command")
    encoders = Encoders(controller, clock)
    assert not drive(controller, clock, frames, encoders).stopped
    controller.on_frame(frames[0], clock.now)
    assert controller.seconds_to_deadline() == pytest.approx(BOUND)  # the frame's bound only
    clock.advance(0.4 + 1e-6)  # the encoders' newest reading is 0.5 s old, the frame 0.4 s
    assert controller.check() is None


def test_silent_encoders_fall_back_as_configured_and_say_so(export, frames, clock, caplog):
    # Default: stop.
    controller = ros1_controller(export, clock)
    encoders = Encoders(controller, clock)
    assert not drive(controller, clock, frames, encoders).stopped
    caplog.set_level(logging.INFO, logger="latent_residual_integrations")
    for _ in range(5):  # frames keep coming, the encoders fall silent
        command = drive(controller, clock, frames)
    assert_stopped(command, StopReason.VELOCITY_SILENT)
    assert "wheel encoders silent for 0.6" in command.detail
    assert "wheel speeds: wheel encoders silent for" in caplog.text and "stopping until it reports" in caplog.text
    assert controller.fallback_count == 1
    assert not drive(controller, clock, frames, encoders).stopped
    assert "wheel speeds: the wheel encoders report again" in caplog.text
    # Configured to fall back to the last command's velocity: it drives on and says so.
    caplog.clear()
    controller = ros1_controller(export, clock, "--velocity-fallback", "command")
    assert not drive(controller, clock, frames).stopped  # no encoder reading at all yet
    assert "using the last command's velocity until it reports" in caplog.text
    forward, turn = controller.last_action
    np.testing.assert_allclose(controller.velocity(), np.clip([turn, forward], -1, 1))
    assert controller.fallback_count == 1 and not controller.stop_counts


def test_every_stop_is_counted_by_reason_and_shutdown_stops_for_good(export, frames, clock, caplog):
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    caplog.set_level(logging.INFO, logger="latent_residual_integrations")
    for fault in ("raise", "raise", "nan"):
        assert not drive(controller, clock, frames).stopped
        controller.policy.inject(fault)
        drive(controller, clock, frames)
    assert not drive(controller, clock, frames).stopped
    command = controller.shutdown()
    assert_stopped(command, StopReason.SHUTDOWN)
    assert_stopped(drive(controller, clock, frames), StopReason.SHUTDOWN)
    assert controller.stop_counts == {
        StopReason.INFERENCE_ERROR: 2,
        StopReason.NON_FINITE_ACTION: 1,
        StopReason.SHUTDOWN: 1,
    }
    assert "stops while running: inference_error 2, non_finite_action 1, shutdown 1" in caplog.text


def test_the_log_forwarder_routes_each_level_to_the_ros_logger_until_detached(export, frames, clock):
    controller = ros1_controller(export, clock, "--velocity-source", "zero")
    routed = {"error": [], "warning": [], "info": []}
    forwarder = LogForwarder(routed["error"].append, routed["warning"].append, routed["info"].append).attach()
    try:
        drive(controller, clock, frames)
        controller.policy.inject("raise")
        drive(controller, clock, frames)
        logging.getLogger("latent_residual_integrations.safety").error("publishing failed")
    finally:
        forwarder.detach()
    controller.shutdown()
    assert routed["error"] == ["publishing failed"]
    assert routed["warning"] == ["stop (inference_error): RuntimeError: injected inference fault"]
    assert routed["info"] == ["driving again after no_frame (policy reset)"]  # the shutdown came after detach


def test_bad_bounds_are_one_line_errors(export):
    policy = OnnxPolicy(export)
    for options, message in [
        ({"rate_hz": 0}, "rate_hz must be a positive number"),
        ({"max_frame_age": float("nan")}, "max_frame_age must be a positive number"),
        ({"max_future": -1}, "max_future must be a non-negative number"),
        (
            {"inference_deadline": 0.1},
            r"inference_deadline must lie between 0 and the control period \(0.100 s at 10 Hz\)",
        ),
        ({"velocity_fallback": "guess"}, "velocity_fallback must be one of"),
        ({"velocity_source": "lidar"}, "velocity_source must be one of"),
        (
            {"camera_size": "640"},
            "camera_size must be WIDTHxHEIGHT in pixels, like '640x480', or a camera calibration .yaml, got '640'",
        ),
        ({"camera_size": (0, 480)}, "camera_size must be WIDTHxHEIGHT"),
    ]:
        with pytest.raises(ValueError, match=message) as info:
            LaneFollowingController(policy, **options)
        assert "\n" not in str(info.value)


def test_the_ros1_node_refuses_a_policy_that_disagrees_with_its_graph(export, tmp_path):
    # main() turns this ValueError into one logfatal line and exit status 2, before publishing anything.
    directory = tampered_export(
        export, tmp_path / "resized", lambda description: description["inputs"][0].update(shape=[32, 32, 3])
    )
    with pytest.raises(
        PolicyFileError, match=r"'image' is uint8\[batch, 64, 64, 3\] in the graph but policy.json's inputs\[0\]"
    ) as error:
        build_controller(parse_args(["--robot", "db21", "--policy", str(directory), "--threads", "1"]))
    assert "\n" not in str(error.value)


def test_the_camera_size_comes_from_the_robots_camera_calibration(export, clock, tmp_path, monkeypatch):
    """ROS 1: without --camera-size the robot's own camera_intrinsic/<robot>.yaml gives the frame size;
    the flag, a size or a calibration file, wins; a malformed calibration is one line naming file and key."""
    from latent_residual_integrations import duckiebot_ros

    monkeypatch.setattr(duckiebot_ros, "CAMERA_INTRINSICS", str(tmp_path / "{robot}.yaml"))
    assert ros1_controller(export, clock).settings.camera_size == (640, 480)  # no calibration: the DB21's camera
    (tmp_path / "db21.yaml").write_text("image_width: 320\nimage_height: 240\ncamera_name: db21\n")
    assert ros1_controller(export, clock).settings.camera_size == (320, 240)
    assert ros1_controller(export, clock, "--camera-size", "640x480").settings.camera_size == (640, 480)
    (tmp_path / "other.yml").write_text("image_width: 1280\nimage_height: 720\n")
    assert ros1_controller(export, clock, "--camera-size", str(tmp_path / "other.yml")).settings.camera_size == (
        1280,
        720,
    )
    for text, message in [
        ("image_width: 320\n", "key 'image_height' is None, expected a positive number of pixels"),
        ("image_width: 320.5\nimage_height: 240\n", "key 'image_width' is 320.5"),
        ("- 1\n- 2\n", "expected a YAML mapping with image_width and image_height, got list"),
        ("image_width: [\n", "not a YAML camera calibration"),
    ]:
        (tmp_path / "db21.yaml").write_text(text)
        with pytest.raises(ValueError, match=re.escape(f"{tmp_path / 'db21.yaml'}: ") + re.escape(message)) as error:
            ros1_controller(export, clock)
        assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match="no such camera calibration file"):
        ros1_controller(export, clock, "--camera-size", str(tmp_path / "missing.yaml"))


def test_node_arguments_parse_without_ros():
    args = parse_args(["--robot", "db21", "--policy", "/data/policy", "--crop-square"])
    assert (args.robot, str(args.policy), args.rate, args.velocity_source, args.threads) == (
        "db21",
        "/data/policy",
        10.0,
        "encoders",
        1,
    )
    assert args.crop_square and args.calibration is None
    assert (args.max_frame_age, args.max_future, args.inference_deadline, args.velocity_fallback) == (
        0.5,
        0.05,
        0.0,
        "stop",
    )
    # 0 is the default deadline, half a period, as for the ROS 2 parameter.
    settings = ControllerSettings(**controller_keywords(vars(args) | {"camera_size": "640x480"}))
    assert settings.inference_deadline == pytest.approx(PERIOD / 2)


def test_both_nodes_expose_every_controller_setting():
    """One table declares the settings: the ROS 1 flags and the ROS 2 parameters follow it."""
    from latent_residual_integrations.ros2_node import parameters

    args = vars(parse_args(["--robot", "db21", "--policy", "/data/policy"]))
    # Unset on ROS 1: build_controller takes the robot's own camera calibration, else the same default.
    assert args.pop("camera_size") is None
    for setting in CONTROLLER_SETTINGS:
        assert args.get(setting.name, setting.default) == setting.default == parameters()[setting.name][0]
    args["camera_size"] = "640x480"
    assert set(controller_keywords(args)) == {setting.keyword for setting in CONTROLLER_SETTINGS}
    # The controller's settings are the table's: every keyword is taken (and checked), no other is.
    assert set(vars(ControllerSettings(**controller_keywords(args)))) == set(controller_keywords(args))
    with pytest.raises(TypeError, match="no controller setting max_frame_ages"):
        ControllerSettings(max_frame_ages=1.0)
    # The ROS 1 node has no odometry subscription, so it narrows the velocity source's choices.
    with pytest.raises(SystemExit):
        parse_args(["--robot", "db21", "--policy", "/data/policy", "--velocity-source", "odometry"])


# ----------------------------------------------------------------------------------------------
# The inference worker and the control loop, in real time
# ----------------------------------------------------------------------------------------------


def test_the_worker_enforces_its_deadline_and_refuses_to_queue():
    worker = InferenceWorker()
    assert worker.call(lambda: 3, timeout=1.0) == 3
    with pytest.raises(ZeroDivisionError):
        worker.call(lambda: 1 / 0, timeout=1.0)
    release = threading.Event()
    with pytest.raises(InferenceTimeout, match="no action within 50 ms"):
        worker.call(release.wait, timeout=0.05)
    with pytest.raises(InferenceBusy):
        worker.call(lambda: 4, timeout=1.0)
    assert worker.busy_for is not None
    release.set()
    deadline = time.monotonic() + 2
    while worker.busy_for is not None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert worker.call(lambda: 5, timeout=1.0) == 5


class Recorder:
    """A publish function that records (monotonic time, command)."""

    def __init__(self):
        self.commands: list[tuple[float, Command]] = []
        self.lock = threading.Lock()

    def __call__(self, command):
        with self.lock:
            self.commands.append((time.monotonic(), command))

    def since(self, start):
        with self.lock:
            return [(t, c) for t, c in self.commands if t >= start]

    def wait(self, predicate, start, timeout=2.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for t, command in self.since(start):
                if predicate(command):
                    return t, command
            time.sleep(0.002)
        raise AssertionError(f"no such command within {timeout} s: {self.since(start)[-3:]}")


class Camera:
    """Feeds frames to the controller at ``fps`` from its own thread, in real time."""

    def __init__(self, controller, frames, fps=20.0):
        self.controller, self.frames, self.period = controller, frames, 1.0 / fps
        self.running = threading.Event()
        self.closed = threading.Event()
        self.last_stamp = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.running.set()
        self.thread.start()

    def _run(self):
        index = 0
        while not self.closed.is_set():
            if self.running.is_set():
                stamp = time.time()
                self.controller.on_frame(self.frames[index % len(self.frames)], stamp)
                self.last_stamp = stamp
                index += 1
            time.sleep(self.period)

    def close(self):
        self.closed.set()
        self.thread.join()


def test_the_loop_publishes_every_period_and_stops_within_one(export, frames):
    controller = LaneFollowingController(FaultyPolicy(export, threads=1), velocity_source="zero", max_frame_age=0.25)
    recorder = Recorder()
    loop = ControlLoop(controller, recorder).start()
    camera = Camera(controller, frames)
    try:
        start = time.monotonic()
        recorder.wait(lambda c: not c.stopped, start)
        time.sleep(1.05)
        driving = recorder.since(start + 0.2)
        times = [t for t, _ in driving]
        assert all(not c.stopped for _, c in driving)
        assert 9 <= len(times) <= 11
        assert statistics.median(np.diff(times)) == pytest.approx(PERIOD, abs=0.01)
        # Frames stop: zero at the bound, not at the next period.
        camera.running.clear()
        time.sleep(0.06)
        expiry = camera.last_stamp + 0.25
        t, command = recorder.wait(lambda c: c.stopped, time.monotonic())
        latency = time.time() - (time.monotonic() - t) - expiry
        assert command.reason == StopReason.STALE_FRAME and 0 <= latency < PERIOD, latency
        # An inference exception; a hang (zero at the deadline).
        camera.running.set()
        recorder.wait(lambda c: not c.stopped, time.monotonic())
        for fault, seconds in (("raise", 0), ("hang", 0.3)):
            fired = []
            controller.policy.on_event = lambda kind, at, fired=fired, fault=fault: (
                fired.append((kind, time.monotonic())) if kind == fault else None
            )
            controller.policy.inject(fault, seconds)
            t, command = recorder.wait(lambda c: c.stopped, time.monotonic())
            assert command.reason in (StopReason.INFERENCE_ERROR, StopReason.INFERENCE_DEADLINE)
            assert 0 <= t - fired[0][1] < PERIOD
            recorder.wait(lambda c: not c.stopped, time.monotonic(), timeout=3.0)  # fresh frames: driving again
        # A future-stamped frame: zero at once, between periods.
        sent = time.monotonic()
        controller.on_frame(frames[0], time.time() + 5.0)
        t, command = recorder.wait(lambda c: c.stopped, sent)
        assert command.reason == StopReason.FUTURE_STAMP and t - sent < 0.02
    finally:
        camera.close()
        final = loop.close()
    assert final.reason == StopReason.SHUTDOWN
    assert recorder.commands[-1][1] == final  # the last thing published is the stop


class Odometry:
    """Feeds measured velocities to the controller every 20 ms from its own thread until ``until`` (wall
    time), then one last reading stamped exactly ``until``, then nothing (set ``until`` again to resume)."""

    def __init__(self, controller):
        self.controller, self.until, self.closed = controller, float("inf"), threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        last = None
        while not self.closed.is_set():
            now, until = time.time(), self.until
            stamp = now if now < until else until
            if stamp != last:
                self.controller.on_odometry(0.2, 0.1, stamp)
                last = stamp
            time.sleep(0.02)

    def close(self):
        self.closed.set()
        self.thread.join()


def test_the_loop_stops_at_the_wheel_speed_bound_between_periods(export, frames):
    # The bound is placed 10 ms after a period starts: a stop left to the next period would come 90 ms late.
    timeout = 0.25
    controller = LaneFollowingController(
        FaultyPolicy(export, threads=1), velocity_source="odometry", velocity_timeout=timeout
    )
    recorder = Recorder()
    loop = ControlLoop(controller, recorder).start()
    camera, odometry = Camera(controller, frames), Odometry(controller)
    latencies = []
    try:
        for _ in range(3):
            recorder.wait(lambda c: not c.stopped, time.monotonic(), timeout=3.0)
            tick, _ = recorder.wait(lambda c: True, time.monotonic())  # published just after a period began
            tick_wall = time.time() - (time.monotonic() - tick)
            odometry.until = tick_wall + 3 * PERIOD + 0.01 - timeout
            t, command = recorder.wait(lambda c: c.stopped, tick)
            assert command.reason == StopReason.VELOCITY_SILENT, command
            latencies.append(time.time() - (time.monotonic() - t) - (odometry.until + timeout))
            odometry.until = float("inf")
    finally:
        camera.close()
        odometry.close()
        loop.close()
    assert all(0 <= latency < PERIOD / 2 for latency in latencies), latencies


def test_the_loop_survives_a_failing_controller_and_a_failing_publisher(export, frames):
    controller = LaneFollowingController(OnnxPolicy(export), velocity_source="zero")
    published = []
    failures = {"publish": 2}

    def publish(command):
        if failures["publish"]:
            failures["publish"] -= 1
            raise OSError("middleware down")
        published.append(command)

    original = controller.step
    calls = {"n": 0}

    def flaky_step():
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyError("bug")
        return original()

    controller.step = flaky_step
    loop = ControlLoop(controller, publish).start()
    time.sleep(0.75)
    loop.close()
    reasons = [command.reason for command in published]
    assert StopReason.CONTROLLER_ERROR in reasons  # the bug became a stop, and the loop went on
    assert len(published) >= 5 and reasons[-1] == StopReason.SHUTDOWN


def test_sigterm_sets_the_stop_event():
    done = threading.Event()
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop_on_signals(done)
        os.kill(os.getpid(), signal.SIGTERM)
        assert done.wait(1.0)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
