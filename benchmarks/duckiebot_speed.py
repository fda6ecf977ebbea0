"""Environment steps per second of the Duckiebot lane-following ids, one process, 64x64 frames.

Run ``python benchmarks/duckiebot_speed.py``; the figures are recorded in ``docs/duckiebot.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import latent_residual
from latent_residual_plugins.duckiebot.driver import PurePursuitDriver

ENV_IDS = (
    "duckiebot/lane-following-v0",
    "duckiebot/lane-following-real-v0",
    "duckiebot/lane-following-real-reversed-v0",
)


def steps_per_second(env_id: str, steps: int, policy: str, seed: int = 0) -> float:
    """Time ``steps`` env steps (resets included) under the scripted driver or random actions."""
    env = latent_residual.make_env(env_id)
    driver = PurePursuitDriver.for_env(env, action_noise=0.1, seed=seed)
    env.action_space.seed(seed)
    env.reset(seed=seed)
    start = time.perf_counter()
    for step in range(steps):
        if policy == "driver":
            action = driver.act(env.unwrapped.pose())
        else:
            action = env.action_space.sample()
        _, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            env.reset(seed=seed + step + 1)
            driver.reset()
    elapsed = time.perf_counter() - start
    env.close()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000, help="env steps timed per id and policy")
    steps = parser.parse_args().steps
    machine = platform.processor() or platform.machine()
    print(f"{machine}, {os.cpu_count()} CPUs, MUJOCO_GL={os.environ.get('MUJOCO_GL', 'egl')}, {steps} steps per figure")
    print(f"{'id':45s} {'driver steps/s':>15s} {'random steps/s':>15s}")
    for env_id in ENV_IDS:
        rates = [steps_per_second(env_id, steps, policy) for policy in ("driver", "random")]
        print(f"{env_id:45s} {rates[0]:15.0f} {rates[1]:15.0f}")


if __name__ == "__main__":
    main()
