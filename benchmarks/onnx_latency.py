"""Per-action latency of exported DRAW policies in onnxruntime (and in torch, for comparison), one observation at a time.

Run ``python benchmarks/onnx_latency.py``; the figures are recorded in ``docs/deployment.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

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


def time_calls(act, observations: list[dict[str, np.ndarray]], iterations: int, warmup: int = 50) -> list[float]:
    for index in range(warmup):
        act(observations[index % len(observations)])
    timings = []
    for index in range(iterations):
        obs = observations[index % len(observations)]
        start = time.perf_counter()
        act(obs)
        timings.append(time.perf_counter() - start)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000, help="timed onnxruntime actions per figure")
    parser.add_argument("--presets", nargs="+", default=["small", "paper"], help="DRAW presets to time")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts to time")
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"{machine}, {os.cpu_count()} CPUs (load average {load:.1f} at start), torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, {args.iterations} single-observation actions per onnxruntime figure"
    )
    print(
        f"{'policy':20s} {'exporter':>9s} {'MB':>6s} {'threads':>7s} {'ort median ms':>14s} {'ort p99 ms':>11s} "
        f"{'torch median ms':>16s} {'max |diff|':>11s}"
    )
    for preset in args.presets:
        for name, space in (("state", STATE_SPACE), ("pixels 64x64", PIXEL_SPACE)):
            policy = build_policy(space, preset)
            batch = example_observations(space, 64, seed=1)
            observations = [{key: value[index] for key, value in batch.items()} for index in range(64)]
            with tempfile.TemporaryDirectory() as directory:
                path = export_policy(policy, directory)
                diff = verify_export(directory, policy, batch)
                exporter = json.loads((path.parent / POLICY_CONFIG_NAME).read_text())["exporter"]
                size = path.stat().st_size / 2**20
                for threads in args.threads:
                    # Torch first: onnxruntime's worker threads spin after each run and would slow torch down.
                    torch.set_num_threads(threads)
                    torch_median, _ = percentiles(time_calls(policy.act, observations, max(200, args.iterations // 5)))
                    runner = OnnxPolicy(directory, providers=["CPUExecutionProvider"], threads=threads)
                    ort_median, ort_p99 = percentiles(time_calls(runner.act, observations, args.iterations))
                    print(
                        f"{name + ' ' + preset:20s} {exporter:>9s} {size:6.1f} {threads:7d} {ort_median:14.3f} "
                        f"{ort_p99:11.3f} {torch_median:16.3f} {diff:11.1e}",
                        flush=True,
                    )
                    del runner


if __name__ == "__main__":
    main()
