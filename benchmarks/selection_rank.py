"""Benchmark: how well the offline selection criterion ranks policies by their real return.

Trains ``--seeds`` policies in a fitted adapter's corrected model and keeps ``--snapshots`` of each along
training, scoring them as ``train-policy --candidates --snapshots`` does (``train_candidates``: the model and the
reward-free target data only), then evaluates every candidate in the target and prints each one's score and
real return and the Spearman rank correlation between them. With ``--adapter`` given more than once (several fits),
candidates are trained in each and scored in all, the lowest score counting, as ``train-policy`` does; the
correlation of the score in the candidate's own fit alone is printed beside it. The actor-critic settings are the
demo's.

Usage (the adapter and data of a ``demo`` or ``compare`` run)::

    MUJOCO_GL=egl python benchmarks/selection_rank.py --adapter RUN/runs/redraw-40000-seed0/adapter \
        --data RUN/target_data --out pendulum.json
    MUJOCO_GL=egl python benchmarks/selection_rank.py --adapter RUN/runs/redraw-10000-seed0/adapter \
        --data RUN/target_data --source duckiebot/lane-following-v0 \
        --target duckiebot/lane-following-real-reversed-v0 --episode-steps 400 --out reversed.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

import latent_residual as lr
from latent_residual.actor_critic import ActorCriticConfig
from latent_residual.registry.lookup import demo_env, env_pretrained, source_target
from latent_residual.workflow.deployment.policy import Policy
from latent_residual.workflow.experiments.defaults import CPU_DEFAULTS
from latent_residual.workflow.experiments.evaluation import evaluate
from latent_residual.workflow.experiments.experiment import EVAL_SEED
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_candidates
from latent_residual.workflow.training.selection import SelectionConfig


def spearman(x: list[float], y: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""

    def ranks(values: list[float]) -> np.ndarray:
        order = np.argsort(values, kind="stable")
        result = np.empty(len(values))
        result[order] = np.arange(len(values), dtype=float)
        for value in set(values):  # ties share their mean rank
            tied = np.asarray(values) == value
            result[tied] = result[tied].mean()
        return result

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--adapter", required=True, action="append", help="A fitted adapter directory; again for another fit."
    )
    parser.add_argument("--data", required=True, help="The run's target_data directory.")
    parser.add_argument("--out", required=True, help="JSON file for every candidate's score and return.")
    parser.add_argument("--source", default=None, help="Source environment (default: the demo's).")
    parser.add_argument("--target", default=None, help="Target environment (default: the source's target).")
    parser.add_argument("--episode-steps", type=int, default=0, help="Episode length in the target (0: its own).")
    parser.add_argument("--steps", type=int, default=1500, help="Policy updates per seed.")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--snapshots", type=int, default=3)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="Processes per policy (PolicyTrainConfig.workers).")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = args.source or demo_env().id
    target = args.target or source_target(source)
    env_kwargs = {"max_episode_steps": args.episode_steps} if args.episode_steps else {}
    base = lr.load_world_model(env_pretrained(source) / "world_model")
    models = [lr.load_adapter(base, adapter, trainable=False) for adapter in args.adapter]
    sequences = lr.load_dataset(args.data).sequences(args.sequence_length)
    sequences.pop("reward", None)
    ac_config = ActorCriticConfig(**CPU_DEFAULTS.actor_critic)
    config = PolicyTrainConfig(
        steps=args.steps,
        starts=CPU_DEFAULTS.policy["starts"],
        candidates=args.seeds,
        snapshots=args.snapshots,
        workers=args.workers,
    )
    started = time.monotonic()
    selection = train_candidates(models, sequences, config, SelectionConfig(), ac_config=ac_config, quiet=True)
    print(f"{len(selection.candidates)} candidates trained, {time.monotonic() - started:.0f} s", flush=True)
    rows = []
    for actor_critic, score in zip(selection.candidates, selection.scores, strict=True):
        fit, seed, update = score.fit, score.seed, score.update
        policy = Policy(base, actor_critic.actor)
        result = evaluate(policy, target, episodes=10, seed=EVAL_SEED, env_kwargs=env_kwargs).to_dict()
        rows.append({"fit": fit, "seed": seed, "update": update, "score": score.score})
        rows[-1].update(own_fit_score=score.scores_by_fit[fit], scores_by_fit=score.scores_by_fit)
        rows[-1].update(real_return=result["return_mean"], imagined_return=score.imagined_return)
        rows[-1].update(disagreement=score.disagreement)
        rows[-1]["metrics"] = result.get("metrics", {})
        print(
            f"fit {fit} seed {seed} update {update}: score {score.score:.3f} (imagined return "
            f"{score.imagined_return:.3f}, disagreement {score.disagreement:.3f}; by fit "
            f"{', '.join(f'{value:.3f}' for value in score.scores_by_fit)}), real return {result['return_mean']:.1f}"
        )
    real = [row["real_return"] for row in rows]
    rho = spearman([row["score"] for row in rows], real)
    own = spearman([row["own_fit_score"] for row in rows], real)
    record = {"rows": rows, "chosen": selection.chosen, "spearman": rho, "spearman_own_fit": own}
    record["seconds"] = time.monotonic() - started
    with open(args.out, "w", encoding="utf-8") as file:
        json.dump(record, file, indent=1)
    print(
        f"Spearman {rho:.3f} over {len(rows)} candidates (own fit's score alone: {own:.3f}); "
        f"chosen: {rows[selection.chosen]}"
    )


if __name__ == "__main__":
    main()
