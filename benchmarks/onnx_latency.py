"""Per-action latency of exported DRAW policies in onnxruntime, before and after issue 24's graph work, side by side.

"before" is the export as the exporter writes it (``export_policy(..., optimise=False)``) run the way ``OnnxPolicy.act``
ran before issue 24 (``validate`` on every call); "after" is today's default export and ``OnnxPolicy.act``. The
reduced-precision variants (``--precisions int8 fp16``) are today's export at that precision. All runners act on the
same single observations in turn, in blocks of ``--block`` actions, so a change in the machine's load reaches each
of them alike; every figure is the median (and p99) of ``--iterations`` actions. ``max |diff|`` is ``verify_export``'s
largest action difference from torch on 64 observations.

Run ``python benchmarks/onnx_latency.py``; the figures are recorded in docs/results.md (ONNX policy latency).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime
import torch
from gymnasium import spaces

import latent_residual
from latent_residual.actor_critic import Actor, ActorCriticConfig
from latent_residual.onnx_policy import POLICY_CONFIG_NAME, OnnxPolicy
from latent_residual.workflow.deployment.export import example_observations, export_policy, verify_export
from latent_residual.workflow.deployment.policy import Policy

# The spaces of dmc/pendulum-swingup-v0 (state) and of the Duckiebot / DMC pixel envs.
STATE_SPACE = spaces.Dict(
    {
        "orientation": spaces.Box(-np.inf, np.inf, (2,), np.float32),
        "velocity": spaces.Box(-np.inf, np.inf, (1,), np.float32),
    }
)
PIXEL_SPACE = spaces.Dict(
    {
        "image": spaces.Box(0, 255, (64, 64, 3), np.uint8),
        "velocity": spaces.Box(-1.0, 1.0, (2,), np.float32),
    }
)
ACTION_SPACE = spaces.Box(-1.0, 1.0, (2,), np.float32)


class BeforeRunner(OnnxPolicy):
    """``OnnxPolicy.act`` as it was before issue 24: every observation through :meth:`validate`."""

    def act(self, obs):
        if self.recurrent:
            return super().act(obs)
        (action,) = self.session.run([self.output_name], self.validate(obs, batched=False))
        return action[0]


def build_policy(observation_space: spaces.Dict, preset: str) -> Policy:
    """A DRAW policy with the paper's actor size (2 x 512); the weights are random, the cost is not."""
    torch.manual_seed(0)
    model = latent_residual.make_backbone("draw-v0", observation_space, ACTION_SPACE, preset=preset)
    actor = Actor(model.feature_size, model.action_size, ActorCriticConfig())
    return Policy(model, actor).eval()


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(median, p99) in milliseconds."""
    values = np.asarray(seconds) * 1e3
    return float(np.median(values)), float(np.percentile(values, 99))


def time_interleaved(
    runners: dict[str, Callable], observations: list[dict[str, np.ndarray]], iterations: int, block: int
) -> dict[str, list[float]]:
    """``iterations`` timed actions per runner, the runners taking turns ``block`` actions at a time."""
    for act in runners.values():
        for index in range(50):
            act(observations[index % len(observations)])
    timings: dict[str, list[float]] = {name: [] for name in runners}
    done = 0
    while done < iterations:
        count = min(block, iterations - done)
        for name, act in runners.items():
            for index in range(done, done + count):
                obs = observations[index % len(observations)]
                start = time.perf_counter()
                act(obs)
                timings[name].append(time.perf_counter() - start)
        done += count
    return timings


def machine() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="timed actions per runner and figure")
    parser.add_argument("--presets", nargs="+", default=["paper"], help="DRAW presets to time")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="intra-op thread counts to time")
    parser.add_argument(
        "--precisions", nargs="*", default=["int8"], choices=["fp16", "int8"], help="reduced precisions to time too"
    )
    parser.add_argument("--block", type=int, default=10, help="actions a runner takes before the next one's turn")
    parser.add_argument("--torch", action="store_true", help="time torch's Policy.act too (eager, no_grad)")
    args = parser.parse_args()
    print(
        f"{machine()}, {os.cpu_count()} CPUs, load average {load()} at start; torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}; median (p99) of {args.iterations} single-observation actions, "
        f"runners interleaved in blocks of {args.block}"
    )
    variants = ", ".join(f"{name} ms (p99), /before, |diff|" for name in args.precisions)
    print(
        f"{'policy':19s} {'thr':>3s} {'before ms (p99)':>16s} {'after ms (p99)':>16s} {'after/before':>12s} "
        f"{'|diff| before':>13s} {'|diff| after':>12s}" + (f"   [{variants}]" if variants else "")
    )
    for preset in args.presets:
        for name, space in (("state", STATE_SPACE), ("pixels 64x64", PIXEL_SPACE)):
            policy = build_policy(space, preset)
            batch = example_observations(space, 64, seed=1)
            observations = [{key: value[index] for key, value in batch.items()} for index in range(64)]
            with tempfile.TemporaryDirectory() as root:
                exports = {"before": Path(root, "before"), "after": Path(root, "after")}
                export_policy(policy, exports["before"], optimise=False)
                export_policy(policy, exports["after"])
                for precision in args.precisions:
                    exports[precision] = Path(root, precision)
                    export_policy(policy, exports[precision], precision=precision)
                diffs = {label: verify_export(path, policy, batch) for label, path in exports.items()}
                rewrites = json.loads((exports["after"] / POLICY_CONFIG_NAME).read_text())["graph_rewrites"]
                for threads in args.threads:
                    runners: dict[str, Callable] = {}
                    for label, path in exports.items():
                        kind = BeforeRunner if label == "before" else OnnxPolicy
                        runners[label] = kind(path, providers=["CPUExecutionProvider"], threads=threads).act
                    if args.torch:
                        torch.set_num_threads(threads)
                        runners["torch"] = policy.act
                    timings = time_interleaved(runners, observations, args.iterations, args.block)
                    figures = {label: percentiles(values) for label, values in timings.items()}
                    before, after = figures["before"], figures["after"]
                    row = (
                        f"{name + ' ' + preset:19s} {threads:3d} {before[0]:7.3f} ({before[1]:6.3f}) "
                        f"{after[0]:7.3f} ({after[1]:6.3f}) {after[0] / before[0]:12.3f} "
                        f"{diffs['before']:13.1e} {diffs['after']:12.1e}"
                    )
                    for precision in args.precisions:
                        median, p99 = figures[precision]
                        row += f"   {median:7.3f} ({p99:6.3f}) {median / before[0]:5.3f} {diffs[precision]:7.1e}"
                    if args.torch:
                        row += f"   torch {figures['torch'][0]:.3f}"
                    print(row, flush=True)
                print(f"{'':19s} rewrites: {rewrites}", flush=True)
    print(f"load average {load()} at the end")


if __name__ == "__main__":
    main()
