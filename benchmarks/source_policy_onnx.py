"""A shipped DMC source's simulation policy, exported by ``latent-residual export`` and run by ONNX Runtime in
plain dm_control (``suite.load``, no Gymnasium wrapper of this library): its return over N episodes.

Run: ``MUJOCO_GL=egl python benchmarks/source_policy_onnx.py --env dmc/cup-catch-v0``. Issue 21 asks each shipped
source to meet its return this way; the torch policy in the library's environment is ``latent-residual evaluate``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from dm_control import suite

from latent_residual import env_spec
from latent_residual.onnx_policy import OnnxPolicy
from latent_residual.registry.lookup import env_pretrained

ACTION_REPEAT = 2  # the paper's, and the one the shipped policies were trained at


def episode_return(policy: OnnxPolicy, domain: str, task: str, seed: int) -> float:
    """One episode of dm_control's own environment, each action held for ``ACTION_REPEAT`` control steps; the
    return sums every control step's reward (DMC's 0-1000 scale)."""
    env = suite.load(domain, task, task_kwargs={"random": seed})
    time_step, total = env.reset(), 0.0
    policy.reset()
    while not time_step.last():
        obs = {key: np.asarray(value, np.float32) for key, value in time_step.observation.items()}
        action = policy.act(obs)
        for _ in range(ACTION_REPEAT):
            time_step = env.step(action)
            total += float(time_step.reward)
            if time_step.last():
                break
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="dmc/cup-catch-v0", help="A DMC source with a shipped model.")
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--seed", type=int, default=10000, help="dm_control's task seed of the first episode.")
    args = parser.parse_args()
    kwargs = env_spec(args.env).kwargs
    pretrained = env_pretrained(args.env)
    if pretrained is None or kwargs.get("target") is not None:
        sys.exit(f"--env {args.env!r}: expected a DMC source that ships a model (see `latent-residual plugins`).")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "onnx"
        command = [
            "latent-residual", "export", "--world-model", str(pretrained / "world_model"),
            "--policy", str(pretrained / "actor_critic.safetensors"), "--out", str(out), "--env-id", args.env,
        ]  # fmt: skip
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        policy = OnnxPolicy(out, threads=1)
        returns = [
            episode_return(policy, kwargs["domain"], kwargs["task"], args.seed + episode)
            for episode in range(args.episodes)
        ]
    print(f"{args.env}: ONNX Runtime in plain dm_control, episodes from seed {args.seed}: returns {returns}")
    print(f"{args.env}: {np.mean(returns):.1f} ± {np.std(returns):.1f} over {args.episodes} episodes")


if __name__ == "__main__":
    main()
