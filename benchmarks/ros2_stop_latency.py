"""Stop latencies of the ROS 2 node over real middleware, with more trials than the test suite runs.

Runs the silence and frame-size tests of ``tests/test_ros2_node.py`` (the node and a fake camera in
their own processes on loopback, a real exported policy; see docs/safety.md) with 100 trials for
each kind of silence (frames, wheel speeds) and 20 for frames of another size, then prints per
fault the trials, how many stopped within one period, and the median and maximum latency from the
fault to the zero command received. The figures are recorded in ``docs/safety.md``.

Run ``python benchmarks/ros2_stop_latency.py [--silence-trials 100] [--frame-size-trials 20]``
(needs the ros2 extra: ``pip install ros-rclpy ros-sensor-msgs ros-std-msgs ros-geometry-msgs
ros-rmw-fastrtps-cpp``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: The test run here, and the fault names it reports under.
TESTS = {
    "test_zero_within_one_period_after_frames_stop": "frames stop",
    "test_zero_within_one_period_after_wheel_speeds_fall_silent": "wheel speeds silent",
    "test_zero_within_one_period_on_frames_of_another_size_until_good_frames_return": "frames of another size",
}
PERIOD = 0.1  # the node runs at 10 Hz in the test


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--silence-trials", type=int, default=100, help="trials per kind of silence")
    parser.add_argument("--frame-size-trials", type=int, default=20, help="trials of 1x1 frames")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as directory:
        report = Path(directory) / "latencies.json"
        env = {
            **os.environ,
            "LATENT_RESIDUAL_SILENCE_TRIALS": str(args.silence_trials),
            "LATENT_RESIDUAL_FRAME_SIZE_TRIALS": str(args.frame_size_trials),
            "LATENT_RESIDUAL_SAFETY_REPORT": str(report),
            "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl"),
        }
        # A failed trial (a stop later than one period) fails its test; the figures are printed regardless.
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                "tests/test_ros2_node.py",
                "-k",
                " or ".join(TESTS),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if not report.exists():
            print(result.stdout[-3000:] + result.stderr[-3000:], file=sys.stderr)
            return 1
        results = json.loads(report.read_text())
    print(
        f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}, "
        f"python {platform.python_version()}"
    )
    print(f"{'fault':<24} {'trials':>6} {'within 100 ms':>14} {'median ms':>10} {'max ms':>8} {'resume median ms':>17}")
    for fault in TESTS.values():
        series = results.get(fault)
        if not series:
            print(f"{fault:<24} (no result)")
            continue
        latencies, resumes = series["latency"], series["zero to driving again"]
        within = sum(0 <= latency < PERIOD for latency in latencies)
        print(
            f"{fault:<24} {len(latencies):>6} {within:>14} {statistics.median(latencies) * 1000:>10.1f} "
            f"{max(latencies) * 1000:>8.1f} {statistics.median(resumes) * 1000:>17.1f}"
        )
    print("pytest:", (result.stdout.strip().splitlines() or ["(no output)"])[-1])
    return result.returncode


if __name__ == "__main__":
    sys.exit(main())
