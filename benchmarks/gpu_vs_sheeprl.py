"""Benchmark: our DreamerV3 gradient step against sheeprl's on one device (a GPU when present), eager and compiled,
at sheeprl's sizes from state and from 64x64 pixels (issue 24).

One gradient step is what ``benchmarks/rssm_vs_sheeprl.py`` times, at the size asked (default ``S``): the world-model
update (Adam, clip 1000) on a batch of 16 x 64, then one actor and one critic update over horizon 15 imagined from
every posterior state of the batch, the actor-critic of sheeprl's size (``dense_units`` x ``mlp_layers``) imagining as
sheeprl does. sheeprl's figure is its own ``dreamer_v3.train`` (the same three updates), timed by wrapping it as
``../shared/peers/sheeprl_dreamerv3.sh`` does, each call between two ``torch.cuda.synchronize()`` on a GPU, with
``algo=dreamer_v3_<size>`` and every size field set from our preset (the same numbers; ``tiny`` for smoke runs).

Observations (both sides the same shapes; the step's cost does not depend on the values):

- ``state``: pendulum swing-up's 3 numbers (orientation 2 + velocity 1) and one action;
- ``pixels``: a 64x64 RGB image (sheeprl's cnn encoder and decoder, ``cnn_channels_multiplier`` of the size: 32 at
  S) and the same 3 numbers, one action.

Ours trains on a fixed synthetic batch already on the device (``draw_train_speed.make_batch``); sheeprl on its replay
of a synthetic environment (``--sheeprl-env synthetic``: random observations of those shapes, no renderer, so nothing
but sheeprl's own wheels has to travel to the GPU machine) or of DMC pendulum (``--sheeprl-env dmc``: ``from_vectors``,
``from_pixels``; needs dm-control, MuJoCo and EGL there). Neither timing holds the batch's sampling or its copy to the
device. Variants: ``eager``, and ``compile``: our world-model loss under ``torch.compile`` (the library's ``pretrain
--compile``; the actor-critic stays eager) and sheeprl's ``algo.compile.enabled=True`` (its world-model loss, its
imagination and its actor and critic losses), both with ``mode="reduce-overhead"`` on CUDA (CUDA graphs), falling
back to the default mode when that fails (said in the row's notes, as are the reasons inductor gives for skipping CUDA
graphs). Every row runs in its own process with a time limit, eager rows first; on CUDA the compiled rows are first
compiled side by side (``--precompile``: warm-up only, into one inductor cache), then timed one at a time until
``--budget-s`` ends; ``--resume``, in a later call on the same machine, measures only what is left (``--state``). The
table and ``gpu_vs_sheeprl.json`` (rewritten after every row) and ``gpu_vs_sheeprl.log`` (the workers' output) go to
``--out``.

Usage::

    # here, a CPU smoke run at tiny sizes (sheeprl from $SHEEPRL_VENV, as ../shared/peers/sheeprl_dreamerv3.sh
    # installs it)
    SHEEPRL_VENV=/tmp/sheeprl-venv python benchmarks/gpu_vs_sheeprl.py --device cpu --size tiny --batch-size 4 \\
        --seq-len 16 --steps 3 --warmup 1 --threads 1 --out /tmp/gvs
    # on a lent GPU machine, through benchmarks/gpu_vs_sheeprl.sh (it installs sheeprl there from carried wheels)
    bash benchmarks/gpu_vs_sheeprl.sh --run .whl/sheeprl -- --budget-s 540
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np

HERE = Path(__file__).resolve().parent
#: Our observation spaces; sheeprl's are the same shapes ("state": 3 numbers, "rgb": 64x64x3).
VECTOR_SPACES = {
    "orientation": gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32),
    "velocity": gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32),
}
IMAGE_SPACE = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
OBS_SPACES = {
    "state": gymnasium.spaces.Dict(VECTOR_SPACES),
    "pixels": gymnasium.spaces.Dict({"image": IMAGE_SPACE, **VECTOR_SPACES}),
}
VECTOR_SIZE = 3
ACTION_SIZE = 1
#: sheeprl's algo configs by size; the other presets (tiny, cpu) start from XS with every size field overridden.
SHEEPRL_SIZES = ("XS", "S", "M", "L", "XL")
RESULT_NAME = "gpu_vs_sheeprl.json"
LOG_NAME = "gpu_vs_sheeprl.log"

# ---------------------------------------------------------------------------
# sheeprl's side: a runner that wraps dreamer_v3.train, and a synthetic environment of our shapes
# ---------------------------------------------------------------------------

SHEEPRL_RUNNER = """\
import atexit, json, os, time
import torch
threads = int(os.environ.get("GVS_THREADS") or 0)
if threads:
    torch.set_num_threads(threads)
import sheeprl
import sheeprl.algos.dreamer_v3.dreamer_v3 as dv3
import sheeprl.cli as cli
cuda = os.environ["GVS_DEVICE"] == "cuda"
train, times = dv3.train, []
def timed(*args, **kwargs):
    if cuda:
        torch.cuda.synchronize()
    started = time.perf_counter()
    out = train(*args, **kwargs)
    if cuda:
        torch.cuda.synchronize()
    times.append(time.perf_counter() - started)
    return out
dv3.train = timed
@atexit.register
def report():
    info = {"times": times, "torch": torch.__version__, "sheeprl": getattr(sheeprl, "__version__", "?"),
            "threads": torch.get_num_threads(), "device_name": torch.cuda.get_device_name() if cuda else None}
    try:
        from torch._dynamo.utils import counters
        info["graph_breaks"] = sum(counters["graph_break"].values())
        info["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
    except Exception as error:
        info["counters_error"] = repr(error)
    with open(os.environ["GVS_TIMES"], "w") as file:
        json.dump(info, file)
cli.run()
"""

SHEEPRL_ENV = '''\
import gymnasium as gym
import numpy as np
class SyntheticEnv(gym.Env):
    """Random observations of the benchmark's shapes: "state" (vector_size,) and, with pixels, "rgb" (64, 64, 3)."""
    def __init__(self, id="gvs", vector_size=3, action_size=1, pixels=False, episode_length=500, screen_size=64):
        spaces = {"state": gym.spaces.Box(-np.inf, np.inf, (vector_size,), np.float32)}
        if pixels:
            spaces["rgb"] = gym.spaces.Box(0, 255, (screen_size, screen_size, 3), np.uint8)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (action_size,), np.float32)
        self.episode_length, self._t, self._rng = episode_length, 0, np.random.default_rng(0)
    def _obs(self):
        obs = {"state": self._rng.standard_normal(self.observation_space["state"].shape).astype(np.float32)}
        if "rgb" in self.observation_space.spaces:
            obs["rgb"] = self._rng.integers(0, 256, self.observation_space["rgb"].shape, dtype=np.uint8)
        return obs
    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self._t = 0
        return self._obs(), {}
    def step(self, action):
        self._t += 1
        return self._obs(), float(self._rng.random()), False, self._t >= self.episode_length, {}
    def render(self):
        return self._obs().get("rgb")
'''


def sheeprl_overrides(
    obs: str, variant: str, mode: str | None, args: argparse.Namespace, run_dir: Path, warmup: int, steps: int
) -> list[str]:
    """sheeprl's hydra overrides for one row: the sizes of our preset, the batch, the device, the environment, and
    enough environment steps after ``learning_starts`` for ``warmup + steps`` gradient steps (replay ratio 1)."""
    sizes = model_sizes(args.size)
    learning_starts = max(2 * args.seq_len, 64)
    total = learning_starts + warmup + steps + 1
    algo = f"dreamer_v3_{args.size}" if args.size in SHEEPRL_SIZES else "dreamer_v3_XS"
    pixels = obs == "pixels"
    world = "algo.world_model"
    overrides = [
        "exp=dreamer_v3",
        f"algo={algo}",
        f"algo.dense_units={sizes['units']}",
        f"algo.mlp_layers={sizes['mlp_layers']}",
        f"{world}.encoder.cnn_channels_multiplier={sizes['cnn_multiplier']}",
        f"{world}.recurrent_model.recurrent_state_size={sizes['deter']}",
        f"{world}.transition_model.hidden_size={sizes['hidden']}",
        f"{world}.representation_model.hidden_size={sizes['hidden']}",
        f"{world}.stochastic_size={sizes['stoch']}",
        f"{world}.discrete_size={sizes['classes']}",
        f"algo.per_rank_batch_size={args.batch_size}",
        f"algo.per_rank_sequence_length={args.seq_len}",
        f"algo.learning_starts={learning_starts}",
        "algo.replay_ratio=1",
        f"algo.total_steps={total}",
        "algo.run_test=False",
        "algo.cnn_keys.encoder=[rgb]" if pixels else "algo.cnn_keys.encoder=[]",
        "algo.cnn_keys.decoder=[rgb]" if pixels else "algo.cnn_keys.decoder=[]",
        "algo.mlp_keys.encoder=[state]",
        "algo.mlp_keys.decoder=[state]",
        f"algo.compile.enabled={variant == 'compile'}",
        f"algo.compile.mode={mode or 'null'}",
        "algo.compile.player=False",
        f"fabric.accelerator={args.device_type}",
        "fabric.devices=1",
        "env.num_envs=1",
        "env.sync_env=True",
        "env.capture_video=False",
        f"buffer.size={total + 16}",
        "buffer.memmap=False",
        "buffer.checkpoint=False",
        "checkpoint.every=0",
        "checkpoint.save_last=False",
        "metric.log_every=1000000",
        f"root_dir={run_dir}",
        "run_name=gvs",
    ]
    if args.sheeprl_env == "dmc":
        overrides += [
            "env=dmc",
            "env.wrapper.domain_name=pendulum",
            "env.wrapper.task_name=swingup",
            "env.wrapper.from_vectors=True",
            f"env.wrapper.from_pixels={pixels}",
        ]
    else:
        overrides += [
            "env=dummy",
            "env.id=gvs_synthetic",
            "env.wrapper._target_=gvs_env.SyntheticEnv",
            f"+env.wrapper.vector_size={VECTOR_SIZE}",
            f"+env.wrapper.action_size={ACTION_SIZE}",
            f"+env.wrapper.pixels={pixels}",
        ]
    return overrides


# ---------------------------------------------------------------------------
# Our side (runs in a worker process)
# ---------------------------------------------------------------------------


def model_sizes(size: str) -> dict[str, Any]:
    """The RSSM preset's size fields (ours and, through ``sheeprl_overrides``, sheeprl's)."""
    from latent_residual_plugins.rssm.config import RSSMConfig

    return dataclasses.asdict(RSSMConfig.from_preset(preset=size))


def ours_worker(spec: dict[str, Any]) -> dict[str, Any]:
    """Time our gradient step for one (obs, variant, mode); returns the per-step seconds and what compiling said."""
    import torch
    from draw_train_speed import make_batch
    from rssm_vs_sheeprl import XS_ACTOR_CRITIC

    from latent_residual import make_backbone
    from latent_residual.actor_critic import ActorCritic
    from latent_residual.rollout import posterior_states
    from latent_residual.workflow.training.distributed import Ranks
    from latent_residual.workflow.training.model_training import WorldModelTrainer

    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    cuda = device.type == "cuda"
    mode = spec["mode"]
    if spec["variant"] == "compile" and mode == "reduce-overhead":
        torch._logging.set_logs(perf_hints=True, cudagraphs=True)  # inductor says why it skips CUDA graphs, if it does
    sizes = model_sizes(spec["size"])
    space = OBS_SPACES[spec["obs"]]
    action_space = gymnasium.spaces.Box(-1.0, 1.0, (ACTION_SIZE,), np.float32)
    torch.manual_seed(spec["seed"])
    model = make_backbone("rssm-v0", space, action_space, preset=spec["size"]).to(device)
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-4, eps=1e-8)
    trainer = WorldModelTrainer(model, optimiser, 1000.0, ranks=Ranks())  # one process
    if spec["variant"] == "compile":
        trainer.loss = torch.compile(trainer.loss, mode=mode)  # what compile=True does, with the mode asked
    config = dataclasses.replace(XS_ACTOR_CRITIC, hidden=sizes["units"], layers=sizes["mlp_layers"])
    actor_critic = ActorCritic(model.feature_size, model.action_size, config).to(device)
    generator = torch.Generator(device).manual_seed(spec["seed"])
    batch = make_batch(space, spec["batch_size"], spec["seq_len"], device)
    cudagraphs = spec["variant"] == "compile" and mode == "reduce-overhead"

    def step() -> dict[str, float]:
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()  # the last step's graph outputs are no longer read
        metrics = dict(trainer.step(batch))
        states = posterior_states(model, batch, generator=generator)["states"]
        starts = {key: value.flatten(0, 1) for key, value in states.items()}  # (B*T, ...)
        metrics.update(actor_critic.train_step(model, starts, generator=generator))
        return metrics

    times = []
    metrics: dict[str, float] = {}
    for _ in range(spec["warmup"] + spec["steps"]):
        if cuda:
            torch.cuda.synchronize()
        started = time.perf_counter()
        metrics = step()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    result: dict[str, Any] = {
        "times": times,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device_name": torch.cuda.get_device_name(device) if cuda else None,
        "finite": all(np.isfinite(value) for value in metrics.values()),
        "loss": metrics.get("loss"),
    }
    try:
        from torch._dynamo.utils import counters

        result["graph_breaks"] = sum(counters["graph_break"].values())
        result["cudagraph_skips"] = counters["inductor"].get("cudagraph_skips", 0)
    except Exception as error:  # private counters: report, do not fail the row
        result["counters_error"] = repr(error)
    return result


# ---------------------------------------------------------------------------
# The orchestrator: one process per row, a time budget, the table and the JSON
# ---------------------------------------------------------------------------


def run_limited(command: list[str], env: dict[str, str], timeout: float, cwd: Path | None = None) -> tuple[int, str]:
    """Run ``command`` in a process group of its own; past ``timeout`` s the whole group is killed (rc 124)."""
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        output, _ = process.communicate(timeout=max(timeout, 1.0))
        return process.returncode, output
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        return 124, output + f"\n[killed after {timeout:.0f} s]"


class Runner:
    """Launches the workers and keeps the log, the budget and the rows."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log = open(self.out / LOG_NAME, "a")  # noqa: SIM115 (closed in main)
        self.deadline = time.monotonic() + args.budget_s
        self.scratch = Path(tempfile.mkdtemp(prefix="gvs_"))
        (self.scratch / "timed.py").write_text(SHEEPRL_RUNNER)
        (self.scratch / "gvs_env.py").write_text(SHEEPRL_ENV)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "TORCHINDUCTOR_CACHE_DIR": args.cache_dir}
        self.env.setdefault("MUJOCO_GL", "egl")
        self.rows: list[dict[str, Any]] = []
        self.meta: dict[str, Any] = {}
        self.done: dict[tuple[str, str, str], dict[str, Any]] = {}

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def write_log(self, title: str, output: str) -> None:
        lines = output.splitlines()
        if len(lines) > self.args.log_lines:
            lines = [f"[... {len(lines) - self.args.log_lines} lines left out ...]", *lines[-self.args.log_lines :]]
        self.log.write(f"\n===== {title} ({utc_now()}) =====\n" + "\n".join(lines) + "\n")
        self.log.flush()

    def ours_job(self, obs: str, variant: str, mode: str | None, warmup: int, steps: int) -> dict[str, Any]:
        """The command of our worker for one row, and where it writes its result."""
        result = self.scratch / f"ours_{obs}_{variant}_{mode}_{time.monotonic_ns()}.json"
        spec = {
            "obs": obs,
            "variant": variant,
            "mode": mode,
            "size": self.args.size,
            "device": self.args.device,
            "threads": self.args.threads,
            "seed": self.args.seed,
            "batch_size": self.args.batch_size,
            "seq_len": self.args.seq_len,
            "warmup": warmup,
            "steps": steps,
            "result": str(result),
        }
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
        return {"command": command, "env": self.env, "cwd": None, "result": result, "title": f"ours {obs} {variant}"}

    def sheeprl_job(self, obs: str, variant: str, mode: str | None, warmup: int, steps: int) -> dict[str, Any]:
        """The command of sheeprl's run for one row (its own training, ``dreamer_v3.train`` wrapped)."""
        result = self.scratch / f"sheeprl_{obs}_{variant}_{mode}_{time.monotonic_ns()}.json"
        run_dir = Path(tempfile.mkdtemp(prefix="run_", dir=self.scratch))
        overrides = sheeprl_overrides(obs, variant, mode, self.args, run_dir, warmup, steps)
        env = {
            **self.env,
            "GVS_TIMES": str(result),
            "GVS_DEVICE": self.args.device_type,
            "GVS_THREADS": str(self.args.threads or ""),
        }
        if variant == "compile" and mode == "reduce-overhead":
            env["TORCH_LOGS"] = "perf_hints,cudagraphs"  # inductor says why it skips CUDA graphs, if it does
        command = [self.args.sheeprl_python, "timed.py", *overrides]
        title = f"sheeprl {obs} {variant}\n{' '.join(overrides)}"
        return {"command": command, "env": env, "cwd": self.scratch, "result": result, "title": title}

    def measure(self, who: str, obs: str, variant: str, mode: str | None, timeout: float) -> dict[str, Any]:
        """Run one side of one row to the end (or ``timeout``); its per-step times and what it reported."""
        if who == "sheeprl" and not self.args.sheeprl_python:
            return {"rc": None, "output": "", "error": "no Python with sheeprl (--sheeprl-python, $SHEEPRL_VENV)"}
        make = self.ours_job if who == "ours" else self.sheeprl_job
        job = make(obs, variant, mode, self.args.warmup, self.args.steps)
        started = time.monotonic()
        rc, output = run_limited(job["command"], job["env"], timeout, cwd=job["cwd"])
        self.write_log(f"{job['title']} mode={mode} rc={rc}", output)
        result = json.loads(job["result"].read_text()) if job["result"].exists() else {}
        if rc == 0 and not result.get("times"):
            rc = 1  # it ran but timed no step: say so
        return {"rc": rc, "wall_s": round(time.monotonic() - started, 1), "output": output, **result}

    def side(self, who: str, obs: str, variant: str, mode: str | None) -> dict[str, Any]:
        """One side of a row, with the fallback from reduce-overhead to the default mode."""
        notes = []
        for attempt_mode in [mode, None] if mode == "reduce-overhead" else [mode]:
            timeout = min(self.args.row_timeout, self.remaining())
            if timeout < self.args.min_row_s:
                notes.append(f"not run: {max(self.remaining(), 0):.0f} s of the budget left")
                return {"rc": None, "notes": notes}
            result = self.measure(who, obs, variant, attempt_mode, timeout)
            result["mode"] = attempt_mode
            if result["rc"] == 0:
                result["notes"] = notes + cudagraph_notes(result.pop("output", ""))
                return result
            tail = " | ".join(result.pop("output", "").strip().splitlines()[-3:])
            notes.append(f"mode={attempt_mode} failed (rc {result['rc']}): {tail[-400:]}")
            if result["rc"] == 124:
                break  # out of time, not a failure of the mode: another mode would not fit either
        result["notes"] = notes
        return result

    def precompile(self, rows: list[tuple[str, str]]) -> None:
        """Compile every compiled row side by side into the shared inductor cache (warm-up steps only): then each
        timed row finds its kernels there and compiles in a fraction of the time."""
        cap = min(self.args.precompile_timeout, self.remaining() - self.args.min_row_s * len(rows))
        if cap < self.args.min_row_s:
            self.meta["precompile"] = "skipped: too little budget left"
            return
        mode = self.args.compile_mode
        warmup = 1  # the first step compiles the forward and the backward graphs
        started = time.monotonic()
        procs = []
        for obs, _ in rows:
            for who in self.sides():
                if (who == "sheeprl" and not self.args.sheeprl_python) or (obs, "compile", who) in self.done:
                    continue
                make = self.ours_job if who == "ours" else self.sheeprl_job
                job = make(obs, "compile", mode, warmup, 0)
                log = open(self.scratch / f"pre_{who}_{obs}.log", "w")  # noqa: SIM115 (closed below)
                process = subprocess.Popen(
                    job["command"],
                    env=job["env"],
                    cwd=job["cwd"],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
                procs.append((who, obs, log, process))
        outcome = {}
        for who, obs, log, process in procs:
            try:
                process.wait(timeout=max(cap - (time.monotonic() - started), 1.0))
                outcome[f"{who} {obs}"] = f"rc {process.returncode}"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                outcome[f"{who} {obs}"] = f"killed at the {cap:.0f} s cap"
            log.close()
            self.write_log(f"precompile {who} {obs}: {outcome[f'{who} {obs}']}", log_text(Path(log.name)))
        self.meta["precompile"] = {"wall_s": round(time.monotonic() - started, 1), "cap_s": round(cap), **outcome}
        print(f"precompiled side by side in {time.monotonic() - started:.0f} s: {outcome}", flush=True)

    def sides(self) -> list[str]:
        return [side for side, skip in (("ours", self.args.no_ours), ("sheeprl", self.args.no_sheeprl)) if not skip]

    def row(self, obs: str, variant: str) -> dict[str, Any]:
        mode = self.args.compile_mode if variant == "compile" else None
        row: dict[str, Any] = {
            "backbone": f"rssm {self.args.size}",
            "obs": obs,
            "variant": variant,
        }
        for who in self.sides():
            earlier = self.done.get((obs, variant, who))
            if earlier:  # measured by an earlier call (--resume)
                row[who] = {**earlier, "notes": [*earlier.get("notes", []), "measured by an earlier call"]}
                continue
            result = self.side(who, obs, variant, mode)
            times = result.get("times") or []
            timed = times[self.args.warmup : self.args.warmup + self.args.steps]  # sheeprl may train a step more
            row[who] = {
                "steps_per_s": len(timed) / sum(timed) if timed else None,
                "timed_steps": len(timed),
                "first_step_s": times[0] if times else None,
                "warmup_s": sum(times[: self.args.warmup]) if times else None,
                "mode": result.get("mode"),
                "rc": result.get("rc"),
                "wall_s": result.get("wall_s"),
                "threads": result.get("threads"),
                "graph_breaks": result.get("graph_breaks"),
                "cudagraph_skips": result.get("cudagraph_skips"),
                "notes": result.get("notes", []) + ([result["error"]] if result.get("error") else []),
            }
            if who == "ours":
                row[who]["finite"] = result.get("finite")
            for key in ("torch", "sheeprl", "device_name"):
                if result.get(key):
                    self.meta.setdefault(f"{who}_{key}", result[key])
            if result.get("device_name"):  # the GPU's name, as torch gives it
                self.meta["device"] = result["device_name"]
        ours, theirs = (row.get(side, {}).get("steps_per_s") for side in ("ours", "sheeprl"))
        row["ratio"] = ours / theirs if ours and theirs else None
        row["device"] = self.meta["device"]
        return row

    def save(self) -> None:
        """The JSON into ``--out`` and into ``--state`` (which outlasts $OUT on a warm device machine)."""
        text = json.dumps({"meta": self.meta, "rows": self.rows}, indent=2, sort_keys=True) + "\n"
        (self.out / RESULT_NAME).write_text(text)
        Path(self.args.state).write_text(text)

    def resume(self) -> None:
        """Keep what an earlier call with the same settings measured (``--state``): those sides are not run again."""
        path = Path(self.args.state)
        if not path.exists():
            return
        data = json.loads(path.read_text())
        same = ("size", "batch", "steps", "warmup", "compile_mode", "sheeprl_env")
        if any(data["meta"].get(key) != self.meta.get(key) for key in same):
            print(f"--resume: {path} was measured with other settings; measuring everything", flush=True)
            return
        for row in data["rows"]:
            for who in ("ours", "sheeprl"):
                if row.get(who, {}).get("steps_per_s"):
                    self.done[row["obs"], row["variant"], who] = row[who]
        for key in ("device", "ours_torch", "sheeprl_torch", "sheeprl_sheeprl", "precompile", "started"):
            if key in data["meta"]:
                self.meta[f"earlier_{key}" if key in ("started", "precompile") else key] = data["meta"][key]
        print(f"--resume: {len(self.done)} measured side(s) kept from {path}", flush=True)


def cudagraph_notes(output: str) -> list[str]:
    """Inductor's reasons for skipping CUDA graphs (perf hints), each once."""
    found = []
    for line in output.splitlines():
        if "skipping cudagraph" in line.lower() and line.strip() not in found:
            found.append(line.strip()[-300:])
    return found[:5]


def log_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError as error:
        return f"[unreadable: {error}]"


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=HERE, capture_output=True, text=True)
        return out.stdout.strip() + (" (benchmarks/ modified)" if dirty.stdout.strip() else "") or "unknown"
    except OSError:
        return "unknown"


def default_sheeprl_python() -> str | None:
    """A Python that imports sheeprl: $GVS_SHEEPRL_PYTHON, $SHEEPRL_VENV/bin/python, this one, the peer default."""
    candidates = [os.environ.get("GVS_SHEEPRL_PYTHON")]
    if os.environ.get("SHEEPRL_VENV"):
        candidates.append(str(Path(os.environ["SHEEPRL_VENV"]) / "bin" / "python"))
    if importlib.util.find_spec("sheeprl") is not None:
        candidates.append(sys.executable)
    candidates.append(str(Path(os.environ.get("TMPDIR", "/tmp")) / "peer-sheeprl-venv" / "bin" / "python"))
    return next((path for path in candidates if path and Path(path).exists()), None)


def format_rate(value: float | None) -> str:
    return f"{value:9.3f}" if value else f"{'-':>9}"


def print_table(runner: Runner) -> None:
    print(
        f"\n{'backbone/size':<14} {'obs':<7} {'variant':<8} {'device':<28} {'ours/s':>9} {'sheeprl/s':>9} {'ratio':>7}"
    )
    for row in runner.rows:
        ours, theirs = row.get("ours", {}), row.get("sheeprl", {})
        ratio = f"{row['ratio']:6.2f}x" if row.get("ratio") else f"{'-':>7}"
        print(
            f"{row['backbone']:<14} {row['obs']:<7} {row['variant']:<8} {str(row['device'])[:28]:<28} "
            f"{format_rate(ours.get('steps_per_s'))} {format_rate(theirs.get('steps_per_s'))} {ratio}"
        )
        for who, side in (("ours", ours), ("sheeprl", theirs)):
            if not side:
                continue
            mode = f"mode={side.get('mode') or 'default'}, " if row["variant"] == "compile" else ""
            detail = f"{mode}first step {side['first_step_s'] or 0:.1f} s" if side.get("rc") == 0 else ""
            for note in ([detail] if detail else []) + side.get("notes", []):
                print(f"    {who}: {note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--device", default=None, help="Torch device (default: cuda if present, else cpu).")
    parser.add_argument("--size", default="S", help="RSSM preset and sheeprl size (XS, S, M, L, XL; tiny for smokes).")
    parser.add_argument("--obs", nargs="+", choices=sorted(OBS_SPACES), default=["state", "pixels"])
    parser.add_argument("--variants", nargs="+", choices=("eager", "compile"), default=["eager", "compile"])
    parser.add_argument(
        "--compile-mode",
        default=None,
        help="torch.compile mode of the compiled rows (default: reduce-overhead on CUDA, the default mode on CPU; "
        "'default' for the default mode).",
    )
    parser.add_argument("--steps", type=int, default=None, help="Timed steps per row (default: 30 on CUDA, 3 on CPU).")
    parser.add_argument("--warmup", type=int, default=None, help="Untimed steps first (default: 5 on CUDA, 1 on CPU).")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads on both sides (0: as is).")
    parser.add_argument("--sheeprl-python", default=None, help="A Python that imports sheeprl (default: found).")
    parser.add_argument("--sheeprl-env", choices=("synthetic", "dmc"), default="synthetic")
    parser.add_argument("--no-sheeprl", action="store_true", help="Time ours only.")
    parser.add_argument("--no-ours", action="store_true", help="Time sheeprl only.")
    parser.add_argument(
        "--precompile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="Compile the compiled rows side by side first (default: on CUDA only).",
    )
    parser.add_argument("--precompile-timeout", type=float, default=330.0)
    parser.add_argument("--budget-s", type=float, default=3600.0, help="Wall-clock budget of the whole run.")
    parser.add_argument("--row-timeout", type=float, default=420.0, help="Limit of one side of one row, s.")
    parser.add_argument("--min-row-s", type=float, default=25.0, help="Start no row with less budget left than this.")
    parser.add_argument(
        "--cache-dir",
        default=os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(Path(tempfile.gettempdir()) / "gvs_inductor_cache")),
        help="Inductor's cache, shared by every row (a second call on a warm machine reuses it).",
    )
    parser.add_argument("--log-lines", type=int, default=150, help="Lines of each worker's output kept in the log.")
    parser.add_argument("--out", default=os.environ.get("OUT") or "gvs_out", help="Where the JSON and the log go.")
    parser.add_argument(
        "--state",
        default=str(Path(tempfile.gettempdir()) / "gvs_state.json"),
        help="A copy of the JSON outside --out, which --resume reads.",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="Measure only the sides of rows that --state lacks (a second call on the same warm device machine); "
        "no precompiling unless asked.",
    )
    args = parser.parse_args()
    if args.worker:
        spec = json.loads(args.worker)
        result = ours_worker(spec)
        Path(spec["result"]).write_text(json.dumps(result))
        return
    import torch

    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    args.device_type = torch.device(args.device).type
    cuda = args.device_type == "cuda"
    args.steps = args.steps if args.steps is not None else (30 if cuda else 3)
    args.warmup = args.warmup if args.warmup is not None else (5 if cuda else 1)
    if args.compile_mode is None:
        args.compile_mode = "reduce-overhead" if cuda else None
    elif args.compile_mode == "default":
        args.compile_mode = None
    args.precompile = (cuda and not args.resume) if args.precompile is None else args.precompile
    args.sheeprl_python = None if args.no_sheeprl else (args.sheeprl_python or default_sheeprl_python())
    from draw_train_speed import cpu_name  # the sibling benchmark's; it imports torch, which this process need not

    runner = Runner(args)
    runner.meta.update(
        {
            "started": utc_now(),
            "device": args.device if cuda else f"cpu ({cpu_name()}, {os.cpu_count()} cores)",
            "host": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average_before": [round(value, 2) for value in os.getloadavg()],
            "commit": git_commit(),
            "size": args.size,
            "batch": f"{args.batch_size} x {args.seq_len}",
            "steps": args.steps,
            "warmup": args.warmup,
            "threads": args.threads or "torch default",
            "compile_mode": args.compile_mode or "default",
            "sheeprl_env": args.sheeprl_env,
            "sheeprl_python": args.sheeprl_python,
            "inductor_cache": args.cache_dir,
            "command": " ".join(sys.argv),
        }
    )
    print(
        f"gpu_vs_sheeprl: device {runner.meta['device']}; size {args.size}; batch {args.batch_size} x {args.seq_len}; "
        f"{args.steps} timed steps after {args.warmup}; budget {args.budget_s:.0f} s; sheeprl from "
        f"{args.sheeprl_python or 'nowhere (skipped)'}; load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    if args.resume:
        runner.resume()
    rows = [(obs, variant) for variant in args.variants for obs in args.obs]
    try:
        for obs, variant in rows:
            if variant == "compile" and args.precompile and "precompile" not in runner.meta:
                missing = [row for row in rows if row[1] == "compile" and any(
                    (*row, who) not in runner.done for who in runner.sides())]  # fmt: skip
                runner.precompile(missing)
                runner.save()
            row = runner.row(obs, variant)
            runner.rows.append(row)
            runner.save()
            ours, theirs = row.get("ours", {}).get("steps_per_s"), row.get("sheeprl", {}).get("steps_per_s")
            print(
                f"{row['backbone']} {obs} {variant}: ours {format_rate(ours).strip()} steps/s, sheeprl "
                f"{format_rate(theirs).strip()} steps/s, {max(runner.remaining(), 0):.0f} s of budget left",
                flush=True,
            )
    finally:
        runner.meta["finished"] = utc_now()
        runner.meta["load_average_after"] = [round(value, 2) for value in os.getloadavg()]
        runner.save()
        runner.log.close()
        shutil.rmtree(runner.scratch, ignore_errors=True)
    print_table(runner)
    print(f"\nwrote {runner.out / RESULT_NAME} and {runner.out / LOG_NAME}")


if __name__ == "__main__":
    main()
