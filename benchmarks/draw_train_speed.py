"""Benchmark: DRAW world-model training speed (train steps/s and states/s) per preset and observation kind.

Times ``DRAW.loss`` + backward + Adam on synthetic batches; it measures speed, not learning.

Usage::

    python benchmarks/draw_train_speed.py                    # CPU, tiny/small/paper, default steps
    python benchmarks/draw_train_speed.py --device cuda      # fp32, bf16 autocast, bf16 + compile
    python benchmarks/draw_train_speed.py --presets paper --obs pixels --steps 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import time

import gymnasium
import numpy as np
import torch

from latent_residual import make_backbone

ACTION_SPACE = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
OBS_SPACES = {
    # Pendulum-like proprioception.
    "state": gymnasium.spaces.Dict(
        {
            "orientation": gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32),
            "velocity": gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        }
    ),
    # Vision DMC as in the paper: a 64x64 frame plus the velocity a single frame cannot show.
    "pixels": gymnasium.spaces.Dict(
        {
            "image": gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8),
            "velocity": gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32),
        }
    ),
}
# (preset, obs) pairs skipped on CPU unless --all: seconds per step on two cores.
SLOW_ON_CPU = {("paper", "pixels")}


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_batch(space: gymnasium.spaces.Dict, B: int, T: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A synthetic (B, T) batch with episode starts at t = 0 and smooth vector observations."""
    generator = torch.Generator().manual_seed(0)
    batch: dict[str, torch.Tensor] = {}
    phase = torch.linspace(0, 6.0, T).expand(B, T) + torch.rand(B, 1, generator=generator) * 6.0
    for key, sub in space.spaces.items():
        if sub.dtype == np.uint8:
            batch[key] = torch.randint(0, 256, (B, T, *sub.shape), dtype=torch.uint8, generator=generator)
        elif key == "orientation":
            batch[key] = torch.stack([phase.cos(), phase.sin()], -1)
        else:
            batch[key] = torch.randn(B, T, *sub.shape, generator=generator)
    batch["action"] = torch.rand(B, T, *ACTION_SPACE.shape, generator=generator) * 2 - 1
    batch["reward"] = torch.rand(B, T, generator=generator)
    batch["is_first"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_first"][:, 0] = True
    batch["is_last"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_terminal"] = torch.zeros(B, T, dtype=torch.bool)
    return {key: value.to(device) for key, value in batch.items()}


def measure(preset: str, obs: str, variant: str, args: argparse.Namespace) -> tuple[float, float, float, float]:
    """Return (steps/s, states/s, steps per process CPU second, final loss) for ``args.steps``
    timed steps after warm-up."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = make_backbone("draw-v0", OBS_SPACES[obs], ACTION_SPACE, preset=preset).to(device)
    if "compile" in variant:
        # Whole-loss compilation would unroll the 64-step filter; compile the batched parts.
        # The prior, posterior and heads share MLP.forward: one compiled graph per module and dtype.
        torch._dynamo.config.recompile_limit = 64
        # The heads' loss() calls their inner MLP, not forward(), so compile that.
        for module in (model.encoder, model.decoder, model.post, model.prior, model.reward_head.net):
            module.compile()
        model.cont_head.net.compile()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-8)
    batch = make_batch(OBS_SPACES[obs], args.batch, args.length, device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if "bf16" in variant else contextlib.nullcontext()

    def train_step() -> float:
        with autocast:
            loss, metrics = model.loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1000.0)
        optimizer.step()
        return metrics["loss"]  # the metrics' .tolist() synchronises the device

    for _ in range(args.warmup):
        train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for _ in range(args.steps):
        last = train_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    steps_per_s = args.steps / (time.perf_counter() - start)
    steps_per_cpu_s = args.steps / (time.process_time() - start_cpu)
    return steps_per_s, steps_per_s * args.batch * args.length, steps_per_cpu_s, last


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu).")
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--obs", nargs="+", default=["state", "pixels"], choices=sorted(OBS_SPACES))
    parser.add_argument(
        "--variants",
        nargs="+",
        default=None,
        choices=["fp32", "bf16", "bf16+compile", "fp32+compile"],
        help="Precision/compilation variants (default: fp32 on CPU; fp32, bf16, bf16+compile on CUDA).",
    )
    parser.add_argument("--batch", type=int, default=16, help="Sequences per batch (paper: 16).")
    parser.add_argument("--length", type=int, default=64, help="Steps per sequence (paper: 64).")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (default 5 on CPU, 30 on CUDA).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps (default 2 on CPU, 5 on CUDA).")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's).")
    parser.add_argument("--all", action="store_true", help="Also run the paper preset on pixels on CPU.")
    args = parser.parse_args()
    cuda = args.device.startswith("cuda")
    args.steps = args.steps or (30 if cuda else 5)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 2)
    variants = args.variants or (["fp32", "bf16", "bf16+compile"] if cuda else ["fp32"])
    if args.threads:
        torch.set_num_threads(args.threads)

    name = torch.cuda.get_device_name(args.device) if cuda else f"{cpu_name()}, {os.cpu_count()} cores"
    print(
        f"torch {torch.__version__}, device {args.device} ({name}), threads {torch.get_num_threads()}, "
        f"load average {os.getloadavg()[0]:.2f}; batch {args.batch} x {args.length}, "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    # steps/cpu-s counts this process's CPU time (all threads), so other jobs on the machine barely
    # move it; with --threads 1 it estimates the single-core speed of an idle machine.
    header = f"{'preset':<7} {'obs':<7} {'variant':<13} {'steps/s':>9} {'states/s':>10} {'steps/cpu-s':>12}"
    print(f"{header} {'loss':>10}")
    for preset in args.presets:
        for obs in args.obs:
            if not cuda and not args.all and (preset, obs) in SLOW_ON_CPU:
                print(f"{preset:<7} {obs:<7} {'(skipped on CPU; --all runs it)'}")
                continue
            for variant in variants:
                steps_per_s, states_per_s, steps_per_cpu_s, loss = measure(preset, obs, variant, args)
                print(
                    f"{preset:<7} {obs:<7} {variant:<13} {steps_per_s:9.3f} {states_per_s:10.0f} "
                    f"{steps_per_cpu_s:12.3f} {loss:10.2f}"
                )


if __name__ == "__main__":
    main()
