"""Shared fixtures: a fake third-party distribution with entry points, a fresh registry, tiny data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("MUJOCO_GL", "egl")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from latent_residual.registry import plugins  # noqa: E402

# Tiny models gain nothing from a second thread, and OpenMP's spin-waits make every op cost a
# scheduler slice when another process holds the other core.
torch.set_num_threads(1)
from latent_residual.actor_critic import ActorCriticConfig as ActorCriticConfig  # noqa: E402
from latent_residual.workflow.training.pretraining import PretrainConfig  # noqa: E402


def make_distribution(root: Path, name: str, version: str, entry_points: dict[str, str], modules=None) -> Path:
    """Write an installed-looking distribution (dist-info + modules) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    info = root / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (info / "entry_points.txt").write_text(f"[latent_residual]\n{lines}\n")
    for module, source in (modules or {}).items():
        (root / f"{module}.py").write_text(source)
    return root


@pytest.fixture(scope="session")
def fake_distribution(tmp_path_factory):
    """Install the test plugin (tests/lr_testplugin) as distribution lr-testplugin 0.3.0."""
    root = make_distribution(tmp_path_factory.mktemp("site"), "lr-testplugin", "0.3.0", {"testplugin": "lr_testplugin"})
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


@pytest.fixture(scope="session")
def registry(fake_distribution):
    """The registry loaded from installed plugins, the test plugin included."""
    os.environ.pop(plugins.LOAD_PLUGINS_ENV, None)
    plugins.unload_plugins()
    plugins.load_plugins()
    yield


@pytest.fixture
def fresh_registry(registry, monkeypatch):
    """An empty registry for a test that loads plugins itself; the full one comes back after."""
    monkeypatch.delenv(plugins.LOAD_PLUGINS_ENV, raising=False)
    plugins.unload_plugins()
    yield
    plugins.unload_plugins()
    monkeypatch.delenv(plugins.LOAD_PLUGINS_ENV, raising=False)
    plugins.load_plugins()


def drift_sequences(gain: float, episodes: int = 12, length: int = 20, seed: int = 0) -> dict[str, torch.Tensor]:
    """Roll the drift env with random actions into (episodes, length, ...) sequences."""
    from lr_testplugin.drift import DriftEnv

    env = DriftEnv(gain=gain)
    rng = np.random.default_rng(seed)
    data = {"position": [], "action": [], "is_first": [], "reward": []}
    for episode in range(episodes):
        obs, _ = env.reset(seed=seed + episode)
        reward = 0.0
        for t in range(length):
            action = rng.uniform(-1, 1, 2).astype(np.float32)
            data["position"].append(obs["position"])
            data["action"].append(action)
            data["is_first"].append(t == 0)
            data["reward"].append(reward)
            obs, reward, *_ = env.step(action)
    out = {key: torch.as_tensor(np.asarray(value)) for key, value in data.items()}
    return {key: value.reshape(episodes, length, *value.shape[1:]) for key, value in out.items()}


@pytest.fixture(scope="session")
def drift_spaces():
    from lr_testplugin.drift import DriftEnv

    env = DriftEnv()
    return env.observation_space, env.action_space


@pytest.fixture(scope="session")
def gru_model(registry, drift_spaces):
    """A GRU world model pretrained briefly on drift data with gain +0.1."""
    from latent_residual import make_backbone

    torch.manual_seed(0)
    model = make_backbone("gru-v0", *drift_spaces)
    batch = drift_sequences(0.1, episodes=16)
    batch["is_terminal"] = torch.zeros_like(batch["is_first"])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        loss, _ = model.loss(batch)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    optimiser.zero_grad(set_to_none=True)
    return model


TINY_AC = ActorCriticConfig(hidden=16, layers=1, horizon=4)


def tiny_pretrain_config(**overrides):
    values = dict(
        env_id="dmc/pendulum-swingup-v0",
        env_kwargs={"max_episode_steps": 60},
        backbone_kwargs={"preset": "tiny"},
        exploration="plan2explore",
        env_steps=160,
        prefill=70,
        train_ratio=16.0,
        batch_size=4,
        seq_len=8,
        imagination_starts=16,
        disagreement_members=2,
        checkpoint_every=80,
    )
    values.update(overrides)
    return PretrainConfig(**values)


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory, registry):
    """A tiny DRAW and policy pretrained with Plan2Explore on short pendulum episodes."""
    from latent_residual import pretrain

    out = tmp_path_factory.mktemp("pretrain")
    result = pretrain(tiny_pretrain_config(), out, ac_config=TINY_AC, quiet=True)
    return out, result


def assert_no_temp_files(directory: Path) -> None:
    leftovers = [p.name for p in Path(directory).rglob(".*tmp-*")]
    assert leftovers == [], leftovers
