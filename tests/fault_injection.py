"""Fault injection for the safety tests: an exported policy that raises, hangs or returns NaN, a clock, frames.
Nothing mocked, no middleware: test_safety.py (no ROS) and ros2_harness.py (ROS 2 processes) use these pieces."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from latent_residual.onnx_policy import ONNX_NAME, POLICY_CONFIG_NAME, OnnxPolicy

FAULTS = ("raise", "hang", "nan")


class FaultyPolicy(OnnxPolicy):
    """An ``OnnxPolicy`` on a real export whose next ``act`` raises, sleeps or returns NaN when told to.

    :param on_event: Called with (kind, time.time()) when a fault fires and at every ``reset()``.
    """

    def __init__(self, *args, on_event: Callable[[str, float], None] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.on_event = on_event
        self.resets = 0
        self.calls = 0
        self._faults: list[tuple[str, float]] = []
        self._lock = threading.Lock()

    def inject(self, kind: str, seconds: float = 0.0, times: int = 1) -> None:
        """Make the next ``times`` calls fail: ``raise`` an error, ``hang`` for ``seconds``, or return ``nan``."""
        if kind not in FAULTS:
            raise ValueError(f"fault must be one of {FAULTS}, got {kind!r}")
        with self._lock:
            self._faults.extend([(kind, seconds)] * times)

    def _event(self, kind: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, time.time())

    def reset(self) -> None:
        self.resets += 1
        self._event("reset")
        super().reset()

    def act(self, obs):
        self.calls += 1
        with self._lock:
            fault = self._faults.pop(0) if self._faults else None
        if fault is not None:
            kind, seconds = fault
            self._event(kind)
            if kind == "raise":
                raise RuntimeError("injected inference fault")
            if kind == "hang":
                time.sleep(seconds)
            if kind == "nan":
                return np.full(self.action_shape, np.nan, np.float32)
        return super().act(obs)


class FakeClock:
    """A settable clock in seconds (the ROS clock a node would pass)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> float:
        self.now += seconds
        return self.now


def jpeg(image: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def camera_frames(count: int = 4, seed: int = 0, size: tuple[int, int] = (480, 640)) -> list[bytes]:
    """A few smooth 640x480 JPEG frames (gradients plus a stripe), each some tens of kB like a real camera's."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0 : size[0], 0 : size[1]]
    frames = []
    for _ in range(count):
        colour = rng.uniform(0.2, 1.0, 3)
        base = (rows / size[0] * 0.6 + cols / size[1] * 0.4)[..., None] * colour * 255
        stripe = int(rng.integers(0, size[1] - 40))
        base[:, stripe : stripe + 40] = 240
        frames.append(jpeg(base.astype(np.uint8)))
    return frames


def export_lane_policy(directory: Path, seed: int = 2, **options) -> Path:
    """Export a tiny draw-v0 policy for the Duckiebot's observation (uint8 64x64x3 image + velocity (2,)) to
    ``directory``; ``options`` go to ``export_policy`` (the coverage alarm's ``surprise``, ``surprise_threshold``)."""
    import torch
    from gymnasium import spaces

    from latent_residual import make_backbone
    from latent_residual.actor_critic import Actor, ActorCriticConfig
    from latent_residual.workflow.deployment.export import export_policy
    from latent_residual.workflow.deployment.policy import Policy

    space = spaces.Dict(
        {"image": spaces.Box(0, 255, (64, 64, 3), np.uint8), "velocity": spaces.Box(-1, 1, (2,), np.float32)}
    )
    torch.manual_seed(seed)
    model = make_backbone("draw-v0", space, spaces.Box(-1, 1, (2,), np.float32), preset="tiny")
    actor = Actor(model.feature_size, model.action_size, ActorCriticConfig(hidden=32, layers=1))
    export_policy(
        Policy(model, actor), directory, env_id="duckiebot/lane-following-v0", exporter="torchscript", **options
    )
    return Path(directory)


def tampered_export(
    source: Path, target: Path, change: Callable[[dict], None], onnx: Callable[[bytes], bytes] | None = None
) -> Path:
    """A copy of an export with ``change`` applied to its policy.json (and ``onnx`` to its graph's bytes), the
    SHA-256 updated to match: what a hand edit that "fixes" the hash leaves, so only the load checks can refuse it."""
    shutil.copytree(source, target)
    if onnx is not None:
        (target / ONNX_NAME).write_bytes(onnx((target / ONNX_NAME).read_bytes()))
    description = json.loads((target / POLICY_CONFIG_NAME).read_text())
    change(description)
    description["onnx_sha256"] = hashlib.sha256((target / ONNX_NAME).read_bytes()).hexdigest()
    (target / POLICY_CONFIG_NAME).write_text(json.dumps(description))
    return target
