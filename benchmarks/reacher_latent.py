"""What a reacher source model's latent carries and where its policy is fooled: the scripted expert run on the
model's reconstruction of each observation, and the policy's episodes against what the model believes of them.

Run: ``MUJOCO_GL=egl python benchmarks/reacher_latent.py --world-model DIR --policy FILE``. Prints, for the expert
on reconstructions (encode, posterior mode, decode), its return and the median to_target error; and, for each
policy episode, its return and, after ``--settle`` steps, the true distance to the target against the distance
the model reconstructs, the reward head's prediction (2 = at the target on both repeated steps) and the joints;
with ``--data``, how often the source data's wrist is folded, and folded far from the target.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from latent_residual import distributions, load_dataset, load_world_model, make_env
from latent_residual.actor_critic import load_actor_critic
from latent_residual.workflow.deployment.policy import Policy
from latent_residual_plugins.dmc.experts import ReacherReach

ENV = "dmc/reacher-easy-v0"


def believed(model, obs: dict[str, np.ndarray]) -> tuple[dict[str, np.ndarray], float]:
    """The model's reconstruction of ``obs`` through its posterior mode, and the reward it predicts there."""
    batch = {key: torch.as_tensor(np.asarray(value, np.float32))[None, None] for key, value in obs.items()}
    with torch.no_grad():
        logits = model.posterior({}, model.embed(batch)[:, 0])  # (1, groups, classes)
        stoch = distributions.mode_one_hot(distributions.probs(logits, model.posterior_unimix))
        features = model.features(model.next_state({}, torch.zeros_like(logits), stoch))
        decoded = {key: value[0].numpy() for key, value in model.decode(features).items()}
        return decoded, float(model.reward(features))


def expert_on_reconstructions(model, seeds: range) -> None:
    env, expert = make_env(ENV), ReacherReach()
    returns, errors = [], []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            decoded, _ = believed(model, obs)
            errors.append(np.abs(decoded["to_target"] - obs["to_target"]).max())
            obs, reward, terminated, truncated, _ = env.step(expert(decoded))
            total, done = total + reward, terminated or truncated
        returns.append(total)
    print(
        f"expert on the model's reconstructions, episodes {seeds.start}-{seeds.stop - 1}: {np.mean(returns):.1f} "
        f"(per episode {[round(r) for r in returns]}); to_target error median {np.median(errors):.3f} m"
    )


def policy_episodes(model, policy: Policy, seeds: range, settle: int) -> None:
    env = make_env(ENV)
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done, step, line = 0.0, False, 0, ""
        while not done:
            if step == settle:
                decoded, reward = believed(model, obs)
                line = (
                    f"at step {settle}: distance {np.linalg.norm(obs['to_target']):.3f} m, believed "
                    f"{np.linalg.norm(decoded['to_target']):.3f} m, reward predicted {reward:.2f}, "
                    f"joints {[round(float(angle), 2) for angle in obs['position']]}"
                )
            obs, reward, terminated, truncated, _ = env.step(policy.act(obs))
            total, done, step = total + reward, terminated or truncated, step + 1
        print(f"policy, episode {seed}: return {total:.0f}; {line}")


def folded_wrist(data: str, folded: float) -> None:
    """How often the data's wrist is folded past ``folded`` rad, how often it is then far (> 0.1 m) from the target,
    and how far the shoulder winds."""
    episodes = load_dataset(data).episodes
    position = np.concatenate([episode["position"] for episode in episodes])  # (N, 2): shoulder, wrist
    distance = np.linalg.norm(np.concatenate([episode["to_target"] for episode in episodes]), axis=-1)
    mask = np.abs(position[:, 1]) > folded
    print(
        f"{data}: {len(mask)} transitions; |wrist| > {folded} rad in {mask.sum()}, of which "
        f"{(distance[mask] > 0.1).sum()} more than 0.1 m from the target; "
        f"|shoulder| at most {np.abs(position[:, 0]).max():.1f} rad"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--world-model", required=True, help="The source's world_model directory.")
    parser.add_argument("--policy", help="Its actor_critic.safetensors; omit to run the expert only.")
    parser.add_argument("--seed", type=int, default=10000, help="The first episode's seed (the report's).")
    parser.add_argument("--expert-episodes", type=int, default=5)
    parser.add_argument("--policy-episodes", type=int, default=10)
    parser.add_argument("--settle", type=int, default=100, help="The policy step at which belief is compared.")
    parser.add_argument("--data", help="The source's sim_data: how often its wrist is folded (far from the target).")
    parser.add_argument("--folded", type=float, default=2.6, help="|wrist| in rad above which it counts as folded.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = load_world_model(args.world_model).eval()
    print(f"1 torch thread; {args.world_model}")
    if args.data:
        folded_wrist(args.data, args.folded)
    expert_on_reconstructions(model, range(args.seed, args.seed + args.expert_episodes))
    if args.policy:
        policy = Policy(model, load_actor_critic(args.policy).actor).eval()
        policy_episodes(model, policy, range(args.seed, args.seed + args.policy_episodes), args.settle)


if __name__ == "__main__":
    main()
