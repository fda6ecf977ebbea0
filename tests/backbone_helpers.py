"""What the backbone plugins' tests share: observation spaces, pendulum-like batches, and checks that
any DreamerV3-family backbone (DRAW, the RSSM) must pass. Each plugin's own tests are beside it.
"""

from __future__ import annotations

import gymnasium
import numpy as np
import pytest
import torch

from latent_residual import ConfigError, list_envs, make_env

ACTION_SPACE = gymnasium.spaces.Box(-1.0, 1.0, (1,), np.float32)
STATE_SPACE = gymnasium.spaces.Dict(
    {
        "orientation": gymnasium.spaces.Box(-1.0, 1.0, (2,), np.float32),
        "velocity": gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32),
    }
)
PIXEL_SPACE = gymnasium.spaces.Dict(
    {
        "image": gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8),
        "velocity": gymnasium.spaces.Box(-np.inf, np.inf, (1,), np.float32),
    }
)
SPACES = {"state": STATE_SPACE, "pixels": PIXEL_SPACE}
PENDULUM = "dmc/pendulum-swingup-v0"


def pendulum_like(
    space: gymnasium.spaces.Dict, angle: torch.Tensor, velocity: torch.Tensor, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """Observations of a pendulum at ``angle`` (B, T): ``orientation`` its cos and sin, ``image`` blocky
    frames whose brightness follows it (8x8 blocks keep it learnable), any other key ``velocity``.
    ``reward`` is 1 near the top; episodes start at t = 0 and, in row 0, mid-sequence. (Also used by
    tests/test_rssm.py.)"""
    B, T = angle.shape
    batch = {}
    for key in space.spaces:
        if key == "image":
            base = ((angle.cos() + 1) * 100).to(torch.uint8)  # (B, T)
            noise = torch.randint(0, 40, (B, T, 8, 8, 3), dtype=torch.uint8, generator=generator)
            blocks = base[..., None, None, None] + noise
            batch[key] = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3)  # (B, T, 64, 64, 3)
        elif key == "orientation":
            batch[key] = torch.stack([angle.cos(), angle.sin()], -1)
        else:
            batch[key] = velocity
    batch["reward"] = (angle.cos() > 0.5).float()
    batch["is_first"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_first"][:, 0] = True
    batch["is_first"][0, T // 2] = True
    batch["is_last"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_terminal"] = torch.zeros(B, T, dtype=torch.bool)
    return batch


def synthetic_batch(space: gymnasium.spaces.Dict, B: int, T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Smooth pendulum-like sequences at a constant velocity of 0.5 and random actions."""
    generator = torch.Generator().manual_seed(seed)
    angle = torch.rand(B, 1, generator=generator) * 6.28 + torch.linspace(0, 3, T)  # (B, T)
    batch = pendulum_like(space, angle, torch.full((B, T, 1), 0.5), generator)
    batch["action"] = torch.rand(B, T, 1, generator=generator) * 2 - 1
    return batch


def pendulum_batch(B: int, T: int) -> dict[str, torch.Tensor] | None:
    """B random-policy episodes of T steps from the DMC plugin's pendulum, or None without it."""
    if PENDULUM not in {spec.id for spec in list_envs()}:
        return None
    env = make_env(PENDULUM)
    env.action_space.seed(0)
    steps = []
    for episode in range(B):
        obs, _ = env.reset(seed=episode)
        reward, terminal = 0.0, False
        for t in range(T):
            action = env.action_space.sample()
            steps.append({**obs, "action": action, "reward": reward, "is_first": t == 0, "is_terminal": terminal})
            obs, reward, terminal, _, _ = env.step(action)
    env.close()
    batch = {
        key: torch.as_tensor(np.stack([step[key] for step in steps])).reshape(B, T, *np.shape(steps[0][key]))
        for key in steps[0]
    }
    batch["is_last"] = torch.zeros(B, T, dtype=torch.bool)
    return batch


def train(model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float = 1e-3) -> list[float]:
    """``steps`` Adam updates of ``model.loss`` (gradients clipped at 1000), leaving no gradients."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr, eps=1e-8)
    losses = []
    for _ in range(steps):
        loss, metrics = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1000.0)
        optimizer.step()
        losses.append(metrics["loss"])
    optimizer.zero_grad(set_to_none=True)
    return losses


def check_training(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], steps: int, lr: float = 1e-3, *, recon_halves: bool = False
) -> None:
    """``steps`` of :func:`train` give finite losses, the last five a quarter below the first three. With
    ``recon_halves`` (state observations) the metrics name every term and the reconstruction halves."""
    before = model.loss(batch)[1] if recon_halves else None
    losses = train(model, batch, steps, lr)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses
    if before is not None:
        names = {"loss", "recon", "recon/orientation", "recon/velocity", "reward", "cont", "kl", "dyn", "rep"}
        assert names <= set(before)
        after = model.loss(batch)[1]
        assert after["recon"] < 0.5 * before["recon"], (before, after)


def bad_config_values(name: str) -> list[tuple[dict, str]]:
    """Values every backbone config (a ``latent_residual.config.PresetConfig``) refuses, with the message
    that quotes them, for config class ``name``."""
    return [
        ({"classes": 1}, rf"{name}.classes must be an integer >= 2, got 1"),
        ({"unimix": 1.0}, rf"{name}.unimix must be in \[0, 1\), got 1.0"),
        ({"free_bits": -1.0}, rf"{name}.free_bits must be >= 0, got -1.0"),
        ({"dyn_scale": "big"}, rf"{name}.dyn_scale must be a finite number, got 'big'"),
    ]


def check_heads_and_decoder(model: torch.nn.Module, features: torch.Tensor, space: gymnasium.spaces.Dict) -> None:
    """Reward (B,), continuation probabilities (B,) in (0, 1) and float32 decoded observations shaped like
    ``space``'s, from (B, feature_size) features."""
    B = features.shape[0]
    assert model.reward(features).shape == (B,)
    cont = model.continuation(features)
    assert cont.shape == (B,) and ((cont > 0) & (cont < 1)).all()
    decoded = model.decode(features)
    assert set(decoded) == set(space.spaces)
    for key, sub in space.spaces.items():
        assert decoded[key].shape == (B, *sub.shape) and decoded[key].dtype == torch.float32
    assert model.decode(features[None]).keys() == decoded.keys()  # any leading axes


def check_actions_clipped(model: torch.nn.Module) -> None:
    """``dynamics`` sees actions clipped to [-1, 1]: (5, -3) gives the prior of (1, -1)."""
    state = model.initial_state(2)
    no_start = torch.zeros(2, dtype=torch.bool)
    clipped, _ = model.dynamics(state, torch.tensor([[1.0], [-1.0]]), no_start)
    raw, _ = model.dynamics(state, torch.tensor([[5.0], [-3.0]]), no_start)
    torch.testing.assert_close(raw, clipped)


def check_space_errors(backbone: type, space: gymnasium.spaces.Dict) -> None:
    """A bare Box observation space and a Discrete action space are refused, naming what is needed."""
    with pytest.raises(ConfigError, match="Dict observation space"):
        backbone(space["velocity"], ACTION_SPACE, preset="tiny")
    with pytest.raises(ConfigError, match="Box action space"):
        backbone(space, gymnasium.spaces.Discrete(3), preset="tiny")


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------
