"""The processes test_ros2_node.py starts: the ROS 2 node with a fault-injecting policy, a fake camera (with odometry).
No test logic here; each process takes commands on stdin and prints timestamped events (time.time()) on stdout."""

# python ros2_harness.py node ARGS...   # ros2_node.run(ARGS) with FaultyPolicy; stdin: "raise", "hang SECONDS", "nan"
# python ros2_harness.py camera --topic T --odometry-topic T --fps F
#     # stdin: "pause", "resume", "future SECONDS" (then paused), "nan", "tiny" (1x1 frames until "resume"),
#     # "mute", "unmute" (the odometry); prints "paused <last stamp>", "muted <last stamp>", "sent <kind> <t>"

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

_print_lock = threading.Lock()


def emit(*words: object) -> None:
    with _print_lock:
        print(*words, flush=True)


def _read_commands(handle) -> None:
    """Run ``handle(words)`` for each stdin line; at end of input (the test is gone) stop this process."""
    for line in sys.stdin:
        words = line.split()
        if words:
            handle(words)
    os.kill(os.getpid(), signal.SIGTERM)


def node(argv: list[str]) -> int:
    from fault_injection import FaultyPolicy

    from latent_residual_integrations import ros2_node

    policies: list[FaultyPolicy] = []

    def make_policy(path, **options):
        policy = FaultyPolicy(path, on_event=lambda kind, at: emit("event", kind, f"{at:.6f}"), **options)
        policies.append(policy)
        return policy

    def handle(words: list[str]) -> None:
        kind, seconds = words[0], float(words[1]) if len(words) > 1 else 0.0
        policies[0].inject(kind, seconds)

    def ready(shell) -> None:
        threading.Thread(target=_read_commands, args=(handle,), daemon=True).start()
        emit("ready", f"{time.time():.6f}")

    shells = []
    status = ros2_node.run(
        ["ros2_harness", *argv], make_policy=make_policy, ready=lambda shell: (shells.append(shell), ready(shell))
    )
    if shells:
        emit("exit", status, "resets", policies[0].resets, "overruns", shells[0].loop.overruns)
    return status


def camera(argv: list[str]) -> int:
    import numpy as np
    import rclpy
    from fault_injection import camera_frames, jpeg
    from geometry_msgs.msg import TwistStamped
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import CompressedImage

    parser = argparse.ArgumentParser()
    parser.add_argument("--topic", required=True)
    parser.add_argument("--odometry-topic", required=True)
    parser.add_argument("--fps", type=float, default=20.0)
    args = parser.parse_args(argv)
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node("fake_camera", context=context)
    qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
    images = node.create_publisher(CompressedImage, args.topic, qos)
    odometry = node.create_publisher(TwistStamped, args.odometry_topic, qos)
    frames = camera_frames(4)
    tiny = jpeg(np.full((1, 1, 3), 128, np.uint8))  # decodes, and resizes to 64x64 like any frame
    state = {"running": True, "last": None, "tiny": False, "odometry": True, "last_odometry": None}
    lock = threading.Lock()
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())

    def stamp_message(message, seconds: float) -> None:
        message.header.stamp.sec = int(seconds)
        message.header.stamp.nanosec = int((seconds - int(seconds)) * 1e9)
        message.header.frame_id = "camera"

    def publish_frame(index: int, stamp: float) -> None:
        message = CompressedImage()
        stamp_message(message, stamp)
        message.format = "jpeg"
        message.data = tiny if state["tiny"] else frames[index % len(frames)]
        images.publish(message)

    def publish_odometry(speed: float, stamp: float) -> None:
        message = TwistStamped()
        stamp_message(message, stamp)
        message.twist.linear.x = speed
        message.twist.angular.z = 0.1
        odometry.publish(message)

    def handle(words: list[str]) -> None:
        kind = words[0]
        with lock:
            if kind == "pause":
                state["running"] = False
                emit("paused", f"{state['last']:.6f}")
            elif kind == "resume":
                state["running"], state["tiny"] = True, False
                emit("resumed", f"{time.time():.6f}")
            elif kind == "tiny":
                now = time.time()
                state["tiny"] = True
                publish_frame(0, now)
                state["last"] = now
                emit("sent", "tiny", f"{now:.6f}")
            elif kind == "mute":
                state["odometry"] = False
                emit("muted", f"{state['last_odometry']:.6f}")
            elif kind == "unmute":
                state["odometry"] = True
            elif kind == "future":
                # The bad frame stays the newest (normal frames pause until "resume"): the node keeps
                # only the newest frame, so on a loaded machine a next frame could replace it unseen.
                now = time.time()
                publish_frame(0, now + float(words[1]))
                state["running"] = False
                emit("sent", "future", f"{now:.6f}")
            elif kind == "nan":
                now = time.time()
                publish_odometry(float("nan"), now)
                emit("sent", "nan", f"{now:.6f}")

    threading.Thread(target=_read_commands, args=(handle,), daemon=True).start()
    emit("ready", f"{time.time():.6f}")
    period, index = 1.0 / args.fps, 0
    next_time = time.monotonic()
    while not done.is_set():
        with lock:
            now = time.time()
            if state["running"]:
                publish_frame(index, now)
                state["last"] = now
            if state["odometry"]:
                publish_odometry(0.2, now)
                state["last_odometry"] = now
        index += 1
        next_time += period
        done.wait(max(0.0, next_time - time.monotonic()))
    node.destroy_node()
    rclpy.shutdown(context=context)
    return 0


if __name__ == "__main__":
    role, rest = sys.argv[1], sys.argv[2:]
    sys.exit(node(rest) if role == "node" else camera(rest))
