"""Benchmark: world-model pretraining steps/s of DRAW and the RSSM at the paper's pixel sizes, on whatever
device is present, through the training step pretraining uses (``WorldModelTrainer``: fp32, bf16, compile).

It times the world-model gradient step on synthetic 64x64 RGB + velocity batches (batch 16 x 64); it
measures speed, not learning. Under torchrun every process trains on its own batch with gradients
averaged (DDP), and rank 0 prints steps/s of the whole run (the batch per step is world size x batch).

Usage::

    python benchmarks/gpu_pretrain_speed.py                        # CPU: fp32 and bf16, 2 timed steps
    python benchmarks/gpu_pretrain_speed.py --device cuda          # fp32, bf16, compile, bf16+compile
    torchrun --nproc-per-node 8 benchmarks/gpu_pretrain_speed.py --device cuda --variants bf16
    TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) python benchmarks/gpu_pretrain_speed.py --backbones rssm-v0 --variants compile

The warm-up column of a compiled variant is what compiling cost this time: inductor keeps what it
compiled on disk, so a second run of the same shapes warms up in a fraction of the first's time. For
the cold cost, as in the last line, run one compiled variant per process with an empty cache directory.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from draw_train_speed import ACTION_SPACE, OBS_SPACES, cpu_name, make_batch

from latent_residual import make_backbone
from latent_residual.workflow.training.distributed import Ranks, process_group
from latent_residual.workflow.training.model_training import WorldModelTrainer

#: variant -> (precision, compile)
VARIANTS = {"fp32": ("fp32", False), "bf16": ("bf16", False), "compile": ("fp32", True), "bf16+compile": ("bf16", True)}


def measure(
    backbone: str, preset: str, variant: str, device: str, ranks: Ranks, args: argparse.Namespace
) -> tuple[float, float, float]:
    """(steps/s, final loss, warm-up seconds) over ``args.steps`` timed steps after ``args.warmup`` untimed ones;
    the warm-up time holds compilation, so it says what ``--compile`` costs before it pays."""
    precision, compile_step = VARIANTS[variant]
    torch.manual_seed(0)
    model = make_backbone(backbone, OBS_SPACES["pixels"], ACTION_SPACE, preset=preset).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-8)
    trainer = WorldModelTrainer(model, optimiser, 1000.0, precision=precision, compile=compile_step, ranks=ranks)
    batch = make_batch(OBS_SPACES["pixels"], args.batch, args.length, torch.device(device))
    start = time.perf_counter()
    for _ in range(args.warmup):
        trainer.step(batch)
    warmup_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(args.steps):
        metrics = trainer.step(batch)  # returns floats: every step ends synchronised with the device
    return args.steps / (time.perf_counter() - start), metrics["loss"], warmup_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--device",
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="Torch device (default: cuda if present).",
    )
    parser.add_argument("--backbones", nargs="+", choices=("draw-v0", "rssm-v0"), default=("draw-v0", "rssm-v0"),
                        help="Which backbones to time (default: both).")  # fmt: skip
    parser.add_argument("--draw-preset", default="paper", help="DRAW preset (default: the paper's sizes).")
    parser.add_argument("--rssm-preset", default="S", help="RSSM preset (default: S, the RSSM's default).")
    parser.add_argument(
        "--variants",
        nargs="+",
        choices=sorted(VARIANTS),
        default=None,
        help="Default: fp32 and bf16 on CPU (compiling takes minutes there); all four on CUDA.",
    )
    parser.add_argument("--batch", type=int, default=16, help="Sequences per batch and process (paper: 16).")
    parser.add_argument("--length", type=int, default=64, help="Steps per sequence (paper: 64).")
    parser.add_argument("--steps", type=int, default=None, help="Timed steps (default 2 on CPU, 50 on CUDA).")
    parser.add_argument(
        "--warmup", type=int, default=None, help="Untimed steps, compilation included (default 1 on CPU, 10 on CUDA)."
    )
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1).")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with process_group(args.device) as (ranks, device):
        cuda = torch.device(device).type == "cuda"
        args.steps = args.steps or (50 if cuda else 2)
        args.warmup = args.warmup if args.warmup is not None else (10 if cuda else 1)
        variants = args.variants or (list(VARIANTS) if cuda else ["fp32", "bf16"])
        name = torch.cuda.get_device_name(device) if cuda else f"{cpu_name()}, {os.cpu_count()} cores"
        say = print if ranks.is_main else (lambda *_: None)
        say(
            f"torch {torch.__version__}; device {device} ({name}); {ranks.world_size} process(es); threads "
            f"{torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f}; batch {args.batch} x {args.length} "
            f"per process, 64x64 RGB + velocity; {args.steps} timed steps after {args.warmup} warm-up"
        )
        say(
            f"{'backbone':<9} {'preset':<7} {'variant':<13} {'steps/s':>9} "
            f"{'states/s':>10} {'loss':>10} {'warm-up s':>10}"
        )
        presets = {"draw-v0": args.draw_preset, "rssm-v0": args.rssm_preset}
        for backbone in args.backbones:
            preset = presets[backbone]
            for variant in variants:
                steps_per_s, loss, warmup_s = measure(backbone, preset, variant, device, ranks, args)
                states = steps_per_s * args.batch * args.length * ranks.world_size
                say(
                    f"{backbone:<9} {preset:<7} {variant:<13} {steps_per_s:9.3f} "
                    f"{states:10.0f} {loss:10.2f} {warmup_s:10.1f}"
                )


if __name__ == "__main__":
    main()
