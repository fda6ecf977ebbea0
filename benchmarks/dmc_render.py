"""Benchmark of 64x64 DMC rendering (our settings against dm_control's defaults) and env steps/s.

Run: ``MUJOCO_GL=egl python benchmarks/dmc_render.py``. The environment itself is in plugins/dmc.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from latent_residual_plugins.dmc.env import DMCEnv  # imported first: it picks the GL backend
from latent_residual_plugins.dmc.rendering import FAST_RENDER, FrameRenderer, RenderSettings
from latent_residual_plugins.dmc.vector import make_vector_env

DOMAINS = (
    ("pendulum", "swingup"),
    ("ball_in_cup", "catch"),
    ("finger", "turn_hard"),
    ("reacher", "easy"),
)
SIZE = 64


def per_second(function: Callable[[], object], count: int, blocks: int = 5) -> float:
    """Calls per second over the fastest of ``blocks`` blocks (the machine may be shared)."""
    function()  # the first call creates GL contexts and scenes
    size = max(1, count // blocks)
    fastest = float("inf")
    for _ in range(blocks):
        start = time.perf_counter()
        for _ in range(size):
            function()
        fastest = min(fastest, time.perf_counter() - start)
    return size / fastest


def frame_rates(domain: str, task: str, frames: int) -> dict[str, float]:
    from dm_control import suite

    def fresh_physics():
        env = suite.load(domain, task, task_kwargs={"random": 0})
        env.reset()
        return env.physics

    default = fresh_physics()
    flags_only = FrameRenderer(fresh_physics(), SIZE, settings=RenderSettings(FAST_RENDER.flag_overrides, None))
    ours = FrameRenderer(fresh_physics(), SIZE)
    return {
        "dm_control default": per_second(lambda: default.render(SIZE, SIZE, camera_id=0), frames),
        "flags, MSAA on": per_second(flags_only.render, frames),
        "FAST_RENDER": per_second(ours.render, frames),
    }


def step_rate(domain: str, task: str, steps: int, pixels: bool) -> float:
    env = DMCEnv(domain, task, pixels=pixels)
    env.reset(seed=0)
    env.action_space.seed(0)

    def step() -> None:
        _, _, _, truncated, _ = env.step(env.action_space.sample())
        if truncated:
            env.reset()

    rate = per_second(step, steps)
    env.close()
    return rate


def vector_step_rate(env_id: str, num_envs: int, steps: int) -> float:
    """Agent steps/s summed over ``num_envs`` pixel-mode workers."""
    envs = make_vector_env(env_id, num_envs, pixels=True)
    envs.reset(seed=0)
    envs.action_space.seed(0)
    rate = per_second(lambda: envs.step(envs.action_space.sample()), steps // num_envs)
    envs.close()
    return rate * num_envs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames timed per setting")
    parser.add_argument("--steps", type=int, default=1000, help="agent steps timed per mode")
    parser.add_argument("--workers", type=int, default=2, help="processes in the vector run")
    args = parser.parse_args()

    print(f"{SIZE}x{SIZE} frames/s, best of 5 blocks (camera 0, one process)")
    rows = {f"{d}/{t}": frame_rates(d, t, args.frames) for d, t in DOMAINS}
    columns = list(next(iter(rows.values())))
    print(f"{'task':<20}" + "".join(f"{name:>22}" for name in columns))
    for name, rates in rows.items():
        cells = "".join(f"{rates[c]:>14.0f} ({1000 / rates[c]:4.1f} ms)" for c in columns)
        print(f"{name:<20}{cells}")

    print("\nagent steps/s, best of 5 blocks (action repeat 2, random actions, one process)")
    print(f"{'task':<20}{'state':>12}{'pixels':>12}")
    for domain, task in DOMAINS:
        state = step_rate(domain, task, args.steps, pixels=False)
        pixels = step_rate(domain, task, args.steps, pixels=True)
        print(f"{domain + '/' + task:<20}{state:>12.0f}{pixels:>12.0f}")

    env_id = "dmc/cup-catch-v0"
    rate = vector_step_rate(env_id, args.workers, args.steps)
    print(f"\n{env_id} pixels, make_vector_env with {args.workers} workers: {rate:.0f} agent steps/s")


if __name__ == "__main__":
    main()
