"""The ROS 2 node over real middleware: node and fake camera as loopback processes, faulty real policy, latencies timed.
Skips without ros-rclpy ros-sensor-msgs ros-std-msgs ros-geometry-msgs ros-rmw-fastrtps-cpp; no-ROS: test_safety.py."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

# Like pytest.importorskip("rclpy"), but also for an ImportError that is not ModuleNotFoundError:
# rclpy installed without a middleware fails on librmw_fastrtps_cpp.so.
try:
    import geometry_msgs.msg  # noqa: F401
    import rclpy
    import sensor_msgs.msg  # noqa: F401
except ImportError as exc:
    pytest.skip(f"ROS 2 is not importable here ({exc}); pip install the ros2 extra", allow_module_level=True)

from fault_injection import export_lane_policy, tampered_export  # noqa: E402

# rosidl's parser imports lark, which imports the deprecated sre_parse.
pytestmark = pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning")

HARNESS = Path(__file__).resolve().parent / "ros2_harness.py"
RATE = 10.0
PERIOD = 1.0 / RATE
MAX_FRAME_AGE = 0.25  # below the 0.5 s default, so that the trials take less time
VELOCITY_TIMEOUT = 0.25  # likewise
HANG = 0.3  # an injected hang: six times the 50 ms inference deadline
FPS = 20.0
TRIALS = int(os.environ.get("LATENT_RESIDUAL_SAFETY_TRIALS", "20"))
# A few trials keep the suite fast; benchmarks/ros2_stop_latency.py runs 100 (silence) and 20 (frame size).
SILENCE_TRIALS = int(os.environ.get("LATENT_RESIDUAL_SILENCE_TRIALS", "3"))
FRAME_SIZE_TRIALS = int(os.environ.get("LATENT_RESIDUAL_FRAME_SIZE_TRIALS", "3"))
#: Fault -> latencies (s) from the fault to the first zero command received, filled by the tests.
RESULTS: dict[str, dict[str, list[float]]] = {}


class Process:
    """A harness process: lines to its stdin, its stdout and stderr lines collected with their arrival time."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, str(HARNESS), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            bufsize=1,
            env=env,
        )
        self.lines: queue.Queue[list[str]] = queue.Queue()
        self.seen: list[list[str]] = []
        self.stderr: list[str] = []
        threading.Thread(
            target=self._read, args=(self.popen.stdout, lambda line: self.lines.put(line.split())), daemon=True
        ).start()
        self._stderr_reader = threading.Thread(
            target=self._read, args=(self.popen.stderr, lambda line: self.stderr.append(line.rstrip())), daemon=True
        )
        self._stderr_reader.start()

    @staticmethod
    def _read(stream, sink) -> None:
        for line in stream:
            sink(line)

    def send(self, line: str) -> None:
        self.popen.stdin.write(line + "\n")
        self.popen.stdin.flush()

    def expect(self, *prefix: str, timeout: float = 10.0) -> list[str]:
        """The next stdout line starting with ``prefix`` (others are kept in ``seen``)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.popen.poll() is not None and self.lines.empty():
                raise AssertionError(
                    f"no {' '.join(prefix)!r} from the harness; stderr:\n" + "\n".join(self.stderr[-20:])
                )
            try:
                words = self.lines.get(timeout=min(remaining, 0.1))
            except queue.Empty:
                continue
            self.seen.append(words)
            if words[: len(prefix)] == list(prefix):
                return words

    def events(self, kind: str) -> list[float]:
        """Times of the ``event <kind> <t>`` lines received so far."""
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return [float(words[2]) for words in self.seen if words[:2] == ["event", kind]]

    def trigger(self, line: str, kind: str, timeout: float = 3.0) -> float:
        """Send ``line`` and return the time of the ``event <kind>`` it causes (the newest one after ``timeout``)."""
        count = len(self.events(kind))
        self.send(line)
        deadline = time.monotonic() + timeout
        while len(self.events(kind)) == count and time.monotonic() < deadline:
            time.sleep(0.002)
        return self.events(kind)[-1]

    def event_between(self, kind: str, start: float, end: float, timeout: float = 2.0) -> bool:
        """Whether an ``event <kind>`` stamped in (start, end] arrives within ``timeout``.

        The wait is needed because the event travels over the harness's stdout pipe while the command
        it precedes travels over DDS: on a loaded machine the command can be read here first.
        """
        deadline = time.monotonic() + timeout
        while True:
            if any(start < t <= end for t in self.events(kind)):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)

    def log_count(self, text: str) -> int:
        if self.popen.poll() is not None:
            self._stderr_reader.join(5)  # an exited process: read its stderr to the end first
        return sum(text in line for line in self.stderr)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(5)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        for stream in (self.popen.stdin, self.popen.stdout, self.popen.stderr):
            with contextlib.suppress(OSError):
                stream.close()


class Listener:
    """Subscribes to the node's Twist commands in this process and records (time received, linear x, angular z)."""

    def __init__(self, topic: str) -> None:
        from geometry_msgs.msg import Twist
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy
        from rclpy.signals import SignalHandlerOptions

        self.context = rclpy.Context()
        rclpy.init(context=self.context, signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node("safety_test_listener", context=self.context)
        self.commands: list[tuple[float, float, float]] = []
        self.lock = threading.Lock()
        qos = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(Twist, topic, self._on_command, qos)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()

    def _on_command(self, message) -> None:
        with self.lock:
            self.commands.append((time.time(), message.linear.x, message.angular.z))

    def _spin(self) -> None:
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # noqa: BLE001 - the context went away at teardown
                break

    def since(self, start: float) -> list[tuple[float, float, float]]:
        with self.lock:
            return [command for command in self.commands if command[0] >= start]

    def first(self, stopped: bool, after: float, timeout: float = 3.0) -> float:
        """When the first zero (``stopped``) or non-zero command after ``after`` arrived."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for received, forward, turn in self.since(after):
                if (forward == 0.0 and turn == 0.0) == stopped:
                    return received
            time.sleep(0.002)
        raise AssertionError(f"no {'zero' if stopped else 'driving'} command within {timeout} s after the fault")

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self.thread.join(2)


class Rig:
    def __init__(self, node: Process, camera: Process, listener: Listener) -> None:
        self.node, self.camera, self.listener = node, camera, listener

    def driving(self, after: float | None = None, timeout: float = 3.0) -> float:
        return self.listener.first(False, time.time() if after is None else after, timeout)


@pytest.fixture(scope="module")
def ros_env():
    """A private domain and loopback-only discovery, in this process and the ones it starts."""
    values = {
        "ROS_DOMAIN_ID": str(random.SystemRandom().randrange(100, 230)),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
    }
    with pytest.MonkeyPatch.context() as patch:
        for key, value in values.items():
            patch.setenv(key, value)
        patch.delenv("ROS_STATIC_PEERS", raising=False)
        yield dict(os.environ)


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return export_lane_policy(tmp_path_factory.mktemp("ros2") / "export")


@pytest.fixture(scope="module")
def rig(ros_env, export):
    robot = f"lrtest{os.getpid()}"
    listener = Listener(f"/{robot}/cmd_vel")
    node = Process(
        [
            "node",
            "--ros-args",
            "-p",
            f"policy:={export}",
            "-p",
            f"robot:={robot}",
            "-p",
            "command_type:=twist",
            "-p",
            "velocity_source:=odometry",
            "-p",
            f"rate:={RATE}",
            "-p",
            f"max_frame_age:={MAX_FRAME_AGE}",
            "-p",
            f"velocity_timeout:={VELOCITY_TIMEOUT}",
            "-p",
            "threads:=1",
        ],
        ros_env,
    )
    camera = Process(
        [
            "camera",
            "--topic",
            f"/{robot}/camera_node/image/compressed",
            "--odometry-topic",
            f"/{robot}/velocity",
            "--fps",
            str(FPS),
        ],
        ros_env,
    )
    try:
        node.expect("ready", timeout=60)
        camera.expect("ready", timeout=60)
        rig = Rig(node, camera, listener)
        rig.driving(timeout=30)  # discovery done, frames flow, the policy drives
        yield rig
    finally:
        node.stop()
        camera.stop()
        listener.close()
        _report()


def _report() -> None:
    if not RESULTS:
        return
    lines = [
        f"{'fault':<26} {'trials':>6} {'median ms':>10} {'max ms':>8}   (from the fault to the zero command received)"
    ]
    for fault, series in RESULTS.items():
        for name, values in series.items():
            label = fault if name == "latency" else f"  {name}" if "latency" in series else f"{fault}: {name}"
            lines.append(
                f"{label:<26} {len(values):>6} {statistics.median(values) * 1000:>10.1f} {max(values) * 1000:>8.1f}"
            )
    print("\n" + "\n".join(lines))
    path = os.environ.get("LATENT_RESIDUAL_SAFETY_REPORT")
    if path:
        Path(path).write_text(json.dumps(RESULTS, indent=2, sort_keys=True) + "\n")


def _trials(rig: Rig, fault: str, inject, recover=None, extra=None, trials: int = TRIALS) -> list[float]:
    """Run ``trials`` times: drive, inject (returns the fault's time), measure the zero, recover, see it drive
    after a reset."""
    latencies, resumes = [], []
    for _ in range(trials):
        rig.driving()
        before = time.time()
        fault_time = inject()
        zero = rig.listener.first(True, before)
        latencies.append(zero - fault_time)
        if extra is not None:
            extra(zero, fault_time)
        if recover is not None:
            recover()
        resumed = rig.driving(after=zero, timeout=3.0)
        resumes.append(resumed - zero)
        assert rig.node.event_between("reset", zero - PERIOD, resumed), "driving resumed without a policy reset"
    RESULTS.setdefault(fault, {}).update({"latency": latencies, "zero to driving again": resumes})
    print(f"{fault}: median {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")
    assert min(latencies) >= 0
    assert max(latencies) < PERIOD, latencies
    return latencies


def test_commands_keep_the_rate_while_frames_flow(rig):
    rig.driving()
    start = time.time()
    time.sleep(5.0)
    commands = rig.listener.since(start)
    times = [received for received, _, _ in commands if received < start + 5.0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    RESULTS["frames flowing"] = {"interval": gaps}
    assert all(forward != 0.0 or turn != 0.0 for _, forward, turn in commands)  # driving all along
    # 50 periods; an overrun period is skipped, not queued, and a loaded 2-core machine overran
    # 2 of 30 once (27 commands in 3 s), so the count allows a few.
    assert 46 <= len(times) <= 52, len(times)
    assert statistics.median(gaps) == pytest.approx(PERIOD, abs=0.005)
    # A loaded 2-core machine can stall a process for a period now and then (seen once: 249 ms).
    assert sorted(gaps)[int(0.95 * len(gaps))] < 1.5 * PERIOD, gaps


def test_zero_within_one_period_after_frames_stop(rig):
    since_last_frame = []

    def inject() -> float:
        rig.camera.send("pause")
        last = float(rig.camera.expect("paused")[1])
        return last + MAX_FRAME_AGE  # the fault: the newest frame passes the bound

    def record(zero: float, fault_time: float) -> None:
        since_last_frame.append(zero - (fault_time - MAX_FRAME_AGE))

    _trials(rig, "frames stop", inject, recover=lambda: rig.camera.send("resume"), extra=record, trials=SILENCE_TRIALS)
    RESULTS["frames stop"]["last frame to zero"] = since_last_frame
    assert rig.node.log_count("stop (stale_frame)") >= SILENCE_TRIALS


def test_zero_within_one_period_after_an_inference_exception(rig):
    _trials(rig, "inference exception", lambda: rig.node.trigger("raise", "raise"))
    assert rig.node.log_count("stop (inference_error): RuntimeError: injected inference fault") >= TRIALS


def test_zero_within_one_period_after_an_inference_hang(rig):
    _trials(rig, "inference hang", lambda: rig.node.trigger(f"hang {HANG}", "hang"))
    assert rig.node.log_count("stop (inference_deadline): no action within 50 ms") >= TRIALS


def test_zero_within_one_period_on_a_nan_observation(rig):
    # A JPEG decodes to uint8 pixels and cannot hold NaN; the NaN comes with the velocity part of the
    # observation (a TwistStamped odometry reading with a NaN speed), as a broken sensor would send it.
    def inject() -> float:
        rig.camera.send("nan")
        return float(rig.camera.expect("sent", "nan")[2])

    _trials(rig, "NaN observation", inject)
    assert rig.node.log_count("stop (non_finite_observation): odometry reports speed nan") >= TRIALS


def test_zero_within_one_period_on_a_future_stamped_frame(rig):
    def inject() -> float:
        rig.camera.send("future 5")
        return float(rig.camera.expect("sent", "future")[2])

    _trials(rig, "future-stamped frame", inject, recover=lambda: rig.camera.send("resume"))
    assert rig.node.log_count("stop (future_stamp)") >= TRIALS


def test_zero_within_one_period_on_frames_of_another_size_until_good_frames_return(rig):
    # 1x1 JPEGs decode and would resize to 64x64 like any frame; the node refuses them by their size.
    def inject() -> float:
        rig.camera.send("tiny")
        return float(rig.camera.expect("sent", "tiny")[2])

    def still_stopped(zero: float, fault_time: float) -> None:
        time.sleep(3 * PERIOD)  # more 1x1 frames arrive: the wheels stay at zero
        assert all(forward == 0.0 and turn == 0.0 for _, forward, turn in rig.listener.since(zero))

    _trials(
        rig,
        "frames of another size",
        inject,
        recover=lambda: rig.camera.send("resume"),
        extra=still_stopped,
        trials=FRAME_SIZE_TRIALS,
    )
    assert rig.node.log_count("stop (bad_frame): frame is 1x1, expected 640x480 (camera_size)") >= FRAME_SIZE_TRIALS


def test_zero_within_one_period_after_wheel_speeds_fall_silent(rig):
    def inject() -> float:
        rig.camera.send("mute")
        return float(rig.camera.expect("muted")[1]) + VELOCITY_TIMEOUT  # the newest reading passes the bound

    _trials(rig, "wheel speeds silent", inject, recover=lambda: rig.camera.send("unmute"), trials=SILENCE_TRIALS)
    assert rig.node.log_count("stop (velocity_silent): odometry silent for") >= SILENCE_TRIALS


def test_sigterm_publishes_a_stop_before_the_node_exits(rig):
    rig.driving()
    sent = time.time()
    rig.node.popen.send_signal(signal.SIGTERM)
    zero = rig.listener.first(True, sent)
    assert rig.node.popen.wait(10) == 0
    assert rig.node.expect("exit")[1] == "0"
    RESULTS["SIGTERM"] = {"latency": [zero - sent]}
    assert zero - sent < PERIOD
    assert rig.node.log_count("received SIGTERM: stopping the wheels and exiting") == 1
    assert rig.node.log_count("stop (shutdown)") == 1


def test_a_missing_policy_is_a_one_line_error(ros_env, tmp_path):
    cases = (
        (
            (f"policy:={tmp_path / 'nowhere'}", "command_type:=twist", "velocity_source:=zero"),
            f"latent_residual_policy: error: {tmp_path / 'nowhere'}: no such export directory",
        ),
        ((f"policy:={tmp_path}", "velocity_source:=sonar"), "velocity_source must be one of"),
        ((f"policy:={tmp_path}", "rate:=10"), "parameter rate must be a float like 10.0"),
    )
    for parameters, message in cases:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "latent_residual_integrations.ros2_node",
                "--ros-args",
                *(word for parameter in parameters for word in ("-p", parameter)),
            ],
            capture_output=True,
            text=True,
            env=ros_env,
            timeout=120,
        )
        assert result.returncode == 2 and "Traceback" not in result.stderr, (parameters, result.stderr)
        assert message in result.stderr, (parameters, result.stderr)


def test_a_policy_that_disagrees_with_its_graph_or_does_not_load_is_refused_at_start_up(ros_env, export, tmp_path):
    # Both carry a matching SHA-256, as a hand-edited export would: only the checks at load can refuse them.
    cases = (
        (
            tampered_export(
                export, tmp_path / "resized", lambda description: description["inputs"][0].update(shape=[32, 32, 3])
            ),
            (
                "policy.onnx: 'image' is uint8[batch, 64, 64, 3] in the graph "
                "but policy.json's inputs[0] says uint8[32, 32, 3]"
            ),
        ),
        (
            tampered_export(
                export, tmp_path / "corrupt", lambda description: None, onnx=lambda data: data[: len(data) // 2]
            ),
            "policy.onnx: onnxruntime cannot load it ([ONNXRuntimeError]",
        ),
    )
    for directory, message in cases:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "latent_residual_integrations.ros2_node",
                "--ros-args",
                "-p",
                f"policy:={directory}",
                "-p",
                "command_type:=twist",
                "-p",
                "velocity_source:=zero",
            ],
            capture_output=True,
            text=True,
            env=ros_env,
            timeout=60,
        )
        assert result.returncode == 2, (directory, result.returncode, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"latent_residual_policy: error: {directory}/"), result.stderr
        assert message in lines[0], lines[0]
