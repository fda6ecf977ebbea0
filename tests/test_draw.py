"""Tests of the DRAW backbone plugin: registration, the world-model contract, the loss and the config."""

from __future__ import annotations

import json
import subprocess
import sys

import gymnasium
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latent_residual import (
    ConfigError,
    DatasetError,
    backbone_spec,
    distributions,
    list_envs,
    make_backbone,
    make_env,
)
from latent_residual.contract import LatentSpec
from latent_residual.rollout import imagine, observe, prev_actions
from latent_residual_plugins.draw.config import PRESETS, DRAWConfig
from latent_residual_plugins.draw.model import DRAW

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


def make_model(space: gymnasium.spaces.Dict, preset: str = "tiny", **overrides) -> DRAW:
    torch.manual_seed(0)
    return make_backbone("draw-v0", space, ACTION_SPACE, preset=preset, **overrides)


def synthetic_batch(space: gymnasium.spaces.Dict, B: int, T: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Smooth pendulum-like vectors, blocky images, episodes starting at t = 0 and mid-sequence."""
    generator = torch.Generator().manual_seed(seed)
    angle = torch.rand(B, 1, generator=generator) * 6.28 + torch.linspace(0, 3, T)  # (B, T)
    batch = {}
    for key, sub in space.spaces.items():
        if key == "image":
            # Brightness follows the angle so the image carries the state; 8x8 blocks keep it learnable.
            base = ((angle.cos() + 1) * 100).to(torch.uint8)  # (B, T)
            noise = torch.randint(0, 40, (B, T, 8, 8, 3), dtype=torch.uint8, generator=generator)
            blocks = base[..., None, None, None] + noise
            batch[key] = blocks.repeat_interleave(8, 2).repeat_interleave(8, 3)  # (B, T, 64, 64, 3)
        elif key == "orientation":
            batch[key] = torch.stack([angle.cos(), angle.sin()], -1)
        else:
            batch[key] = torch.full((B, T, *sub.shape), 0.5)
    batch["action"] = torch.rand(B, T, 1, generator=generator) * 2 - 1
    batch["reward"] = (angle.cos() > 0.5).float()
    batch["is_first"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_first"][:, 0] = True
    batch["is_first"][0, T // 2] = True
    batch["is_last"] = torch.zeros(B, T, dtype=torch.bool)
    batch["is_terminal"] = torch.zeros(B, T, dtype=torch.bool)
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
            steps.append(
                {**obs, "action": action, "reward": reward, "is_first": t == 0, "is_terminal": terminal}
            )
            obs, reward, terminal, _, _ = env.step(action)
    env.close()
    batch = {
        key: torch.as_tensor(np.stack([step[key] for step in steps])).reshape(B, T, *np.shape(steps[0][key]))
        for key in steps[0]
    }
    batch["is_last"] = torch.zeros(B, T, dtype=torch.bool)
    return batch


def train(model: DRAW, batch: dict[str, torch.Tensor], steps: int) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, eps=1e-8)
    losses = []
    for _ in range(steps):
        loss, metrics = model.loss(batch)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1000.0)
        optimizer.step()
        losses.append(metrics["loss"])
    return losses


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def test_registered_with_small_preset_and_light_module():
    spec = backbone_spec("draw-v0")
    assert spec.entry_point == "latent_residual_plugins.draw.model:DRAW"
    assert spec.kwargs == {"preset": "small"}
    code = "import sys, latent_residual_plugins.draw; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_runs_and_round_trips_through_json(preset):
    model = make_model(PIXEL_SPACE, preset)
    assert isinstance(model, DRAW)
    assert model.backbone_id == "draw-v0"
    kwargs = json.loads(json.dumps(model.backbone_kwargs))
    assert kwargs == {"preset": preset}
    rebuilt = DRAW(PIXEL_SPACE, ACTION_SPACE, **kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    with torch.no_grad():
        loss, metrics = model.loss(synthetic_batch(PIXEL_SPACE, B=2, T=3))
    assert torch.isfinite(loss)
    assert metrics["loss"] == pytest.approx(loss.item())


def test_overrides_are_recorded_and_applied():
    model = make_model(STATE_SPACE, groups=6, free_bits=0.5)
    assert model.backbone_kwargs == {"preset": "tiny", "groups": 6, "free_bits": 0.5}
    assert model.latent == LatentSpec(6, 4)
    assert model.config.free_bits == 0.5


# ---------------------------------------------------------------------------
# The world-model contract
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_contract_shapes(kind):
    space = SPACES[kind]
    model = make_model(space)
    B, T, G, C = 3, 5, 8, 4
    batch = synthetic_batch(space, B, T)
    assert model.latent == LatentSpec(G, C)
    assert (model.action_size, model.feature_size, model.unimix) == (1, G * C, 0.01)
    assert model.posterior_uses_deter is False

    state = model.initial_state(B)
    assert set(state) == {"stoch", "belief"}
    assert all(value.shape == (B, G, C) and not value.any() for value in state.values())
    embed = model.embed({key: batch[key] for key in space.spaces})
    assert embed.shape == (B, T, model.encoder.out_size)

    is_first = torch.tensor([True, False, False])
    prior, deter = model.dynamics(state, batch["action"][:, 0], is_first)
    assert prior.shape == (B, G, C) and deter == {}
    post = model.posterior({}, embed[:, 0])
    assert post.shape == (B, G, C)
    stoch = distributions.sample_one_hot(distributions.probs(post, model.posterior_unimix))
    state = model.next_state(deter, prior, stoch)
    assert state["stoch"] is stoch
    torch.testing.assert_close(state["belief"], F.softmax(prior, -1))

    features = model.features(state)
    assert features.shape == (B, G * C)
    assert model.reward(features).shape == (B,)
    cont = model.continuation(features)
    assert cont.shape == (B,) and ((cont > 0) & (cont < 1)).all()
    decoded = model.decode(features)
    assert set(decoded) == set(space.spaces)
    for key, sub in space.spaces.items():
        assert decoded[key].shape == (B, *sub.shape)
        assert decoded[key].dtype == torch.float32


def test_reward_head_starts_at_zero():
    model = make_model(STATE_SPACE)
    features = F.one_hot(torch.randint(0, 4, (5, 8)), 4).float().flatten(1)
    torch.testing.assert_close(model.reward(features), torch.zeros(5))


def test_observe_and_imagine_run_and_belief_is_prior_softmax():
    model = make_model(PIXEL_SPACE)
    B, T, horizon = 2, 6, 4
    batch = synthetic_batch(PIXEL_SPACE, B, T)
    torch.manual_seed(1)
    out = observe(model, prev_actions(batch["action"]), batch["is_first"], embed=model.embed(batch))
    assert out["prior_logits"].shape == out["post_logits"].shape == out["stoch"].shape == (B, T, 8, 4)
    assert out["features"].shape == (B, T, 32)
    hard = out["stoch"].detach().round()
    torch.testing.assert_close(out["stoch"].detach(), hard)
    assert (hard.sum(-1) == 1).all()
    torch.testing.assert_close(out["states"]["belief"], F.softmax(out["prior_logits"], -1))

    start = {key: value.reshape(B * T, *value.shape[2:]) for key, value in out["states"].items()}
    dream = imagine(model, start, lambda features: torch.tanh(features[:, :1]), horizon)
    assert dream["features"].shape == (B * T, horizon + 1, 32)
    assert dream["actions"].shape == (B * T, horizon, 1)
    assert dream["prior_logits"].shape == (B * T, horizon, 8, 4)


def test_learned_initial_logits_replace_the_prior_at_episode_starts():
    model = make_model(STATE_SPACE)
    with torch.no_grad():
        model.initial_logits.copy_(torch.randn(8, 4))
    state = {
        "stoch": F.one_hot(torch.randint(0, 4, (3, 8)), 4).float(),
        "belief": torch.full((3, 8, 4), 0.25),
    }
    action = torch.tensor([[0.3], [0.3], [-0.7]])
    prior, _ = model.dynamics(state, action, torch.tensor([True, False, True]))
    torch.testing.assert_close(prior[0], model.initial_logits)
    torch.testing.assert_close(prior[2], model.initial_logits)
    assert not torch.allclose(prior[1], model.initial_logits)

    batch = synthetic_batch(STATE_SPACE, 2, 8)
    out = observe(model, prev_actions(batch["action"]), batch["is_first"], embed=model.embed(batch))
    starts = out["prior_logits"][batch["is_first"]]  # (starts, G, C)
    torch.testing.assert_close(starts, model.initial_logits.expand_as(starts))


def test_prior_sees_actions_clipped_to_unit_box():
    model = make_model(STATE_SPACE)
    state = model.initial_state(2)
    no_start = torch.zeros(2, dtype=torch.bool)
    clipped, _ = model.dynamics(state, torch.tensor([[1.0], [-1.0]]), no_start)
    raw, _ = model.dynamics(state, torch.tensor([[5.0], [-3.0]]), no_start)
    torch.testing.assert_close(raw, clipped)


def test_gradients_reach_the_initial_logits_and_every_network():
    # Without free bits the KL below one nat still trains the prior and the initial logits.
    model = make_model(PIXEL_SPACE, free_bits=0.0)
    loss, _ = model.loss(synthetic_batch(PIXEL_SPACE, 2, 6))
    loss.backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    # The reward head's zero-initialised output layer blocks its body's gradient on the first step.
    assert without == [
        f"reward_head.net.body.{index}.{kind}" for index in (0, 1) for kind in ("weight", "bias")
    ]


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def test_loss_decreases_on_state_observations():
    batch = pendulum_batch(B=4, T=24) or synthetic_batch(STATE_SPACE, B=4, T=24)
    model = make_model(STATE_SPACE)
    _, metrics = model.loss(batch)
    assert {
        "loss",
        "recon",
        "recon/orientation",
        "recon/velocity",
        "reward",
        "cont",
        "kl",
        "dyn",
        "rep",
    } <= set(metrics)
    losses = train(model, batch, steps=60)
    _, after = model.loss(batch)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses
    assert after["recon"] < 0.5 * metrics["recon"], (metrics, after)


def test_loss_decreases_on_pixel_observations():
    model = make_model(PIXEL_SPACE)
    losses = train(model, synthetic_batch(PIXEL_SPACE, B=4, T=12), steps=40)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.75 * np.mean(losses[:3]), losses


def test_loss_runs_under_bf16_autocast():
    model = make_model(PIXEL_SPACE)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, metrics = model.loss(synthetic_batch(PIXEL_SPACE, 2, 4))
    loss.backward()
    assert loss.dtype == torch.float32 and np.isfinite(metrics["loss"])


def test_loss_names_missing_batch_keys():
    model = make_model(STATE_SPACE)
    batch = synthetic_batch(STATE_SPACE, 2, 3)
    del batch["is_terminal"], batch["velocity"]
    with pytest.raises(DatasetError, match=r"\['velocity', 'is_terminal'\]"):
        model.loss(batch)


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def test_config_defaults_are_the_paper_and_fields_have_help():
    config = DRAWConfig()
    assert (config.groups, config.classes, config.hidden, config.cnn_depth) == (256, 4, 512, 32)
    assert (config.mlp_layers, config.mlp_units, config.reward_bins) == (5, 1024, 255)
    assert (config.dyn_scale, config.rep_scale, config.free_bits, config.unimix) == (1.5, 0.5, 1.0, 0.01)
    assert DRAWConfig.from_preset("paper") == config
    assert all(item.metadata.get("help") for item in DRAWConfig.__dataclass_fields__.values())
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"groups": 0}, r"DRAWConfig.groups must be an integer >= 1, got 0"),
        ({"classes": 1}, r"DRAWConfig.classes must be an integer >= 2, got 1"),
        ({"hidden": 2.5}, r"DRAWConfig.hidden must be an integer >= 1, got 2.5"),
        ({"unimix": 1.0}, r"DRAWConfig.unimix must be in \[0, 1\), got 1.0"),
        ({"free_bits": -1.0}, r"DRAWConfig.free_bits must be >= 0, got -1.0"),
        ({"dyn_scale": "big"}, r"DRAWConfig.dyn_scale must be a finite number, got 'big'"),
    ],
)
def test_config_rejects_bad_values_quoting_them(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DRAWConfig(**kwargs)


def test_unknown_preset_and_field_suggest_close_matches():
    with pytest.raises(ConfigError, match=r"Unknown DRAW preset 'tiney'.*Did you mean \"tiny\""):
        DRAWConfig.from_preset("tiney")
    with pytest.raises(ConfigError, match=r"no field 'hiden'.*Did you mean \"hidden\""):
        make_backbone("draw-v0", STATE_SPACE, ACTION_SPACE, hiden=64)


def test_spaces_are_validated():
    odd_image = gymnasium.spaces.Dict({"image": gymnasium.spaces.Box(0, 255, (60, 60, 3), np.uint8)})
    with pytest.raises(ConfigError, match=r"\(60, 60, 3\).*divisible by 16"):
        DRAW(odd_image, ACTION_SPACE, preset="tiny")
    DRAW(odd_image, ACTION_SPACE, preset="tiny", cnn_layers=2)  # 60 = 4 * 15
    with pytest.raises(ConfigError, match="Dict observation space"):
        DRAW(STATE_SPACE["velocity"], ACTION_SPACE, preset="tiny")
    with pytest.raises(ConfigError, match="Box action space"):
        DRAW(STATE_SPACE, gymnasium.spaces.Discrete(3), preset="tiny")
