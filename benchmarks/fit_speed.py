"""Time to fit a residual: seconds until the held-out KL is within 2% of its best (target: <= 120 s for 40k
transitions on the 2-core CPU). Needs a pretrained world model and a target dataset.

Run: python benchmarks/fit_speed.py --world-model DIR --data DIR [--transitions 40000] [--steps 3000]
     [--extra-inputs belief]
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

import latent_residual as lr


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--world-model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--transitions", type=int, default=40_000)
    parser.add_argument("--sequence-length", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--extra-inputs", nargs="*", default=[], help="ResidualConfig.extra_inputs, e.g. belief.")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sequences = lr.load_dataset(args.data, max_transitions=args.transitions).sequences(args.sequence_length)
    sequences.pop("reward", None)
    adapted = lr.attach_residual(
        lr.load_world_model(args.world_model), lr.ResidualConfig(extra_inputs=tuple(args.extra_inputs))
    )
    started = time.monotonic()
    result = lr.fit_residual(
        adapted, sequences, lr.FitConfig(steps=args.steps, eval_every=args.eval_every, patience=0), quiet=True
    )
    total = time.monotonic() - started
    threshold = result.held_out_kl_best * 1.02
    reached = next(entry for entry in result.history if entry["held_out_kl"] <= threshold)
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads")
    print(f"data: {sequences['is_first'].numel()} transitions in {sequences['is_first'].shape[0]} sequences")
    print(f"residual extra inputs: {list(args.extra_inputs) or 'none'}")
    print(
        f"held-out KL: base {result.held_out_kl_base:.4f}, best {result.held_out_kl_best:.4f} "
        f"at step {result.best_step}"
    )
    print(f"within 2% of best ({threshold:.4f}) at step {reached['step']}, {reached['seconds']:.1f} s")
    print(f"{result.steps} steps in {total:.1f} s ({result.steps / total:.1f} steps/s)")


if __name__ == "__main__":
    main()
