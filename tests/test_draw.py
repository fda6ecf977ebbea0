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
from backbone_helpers import (
    ACTION_SPACE,
    PIXEL_SPACE,
    SPACES,
    STATE_SPACE,
    bad_config_values,
    check_actions_clipped,
    check_heads_and_decoder,
    check_space_errors,
    check_training,
    pendulum_batch,
    synthetic_batch,
)

from latent_residual import (
    ConfigError,
    DatasetError,
    backbone_spec,
    distributions,
    make_backbone,
)
from latent_residual.contract import LatentSpec
from latent_residual.rollout import imagine, observe, prev_actions
from latent_residual_plugins.draw.config import PRESETS, DRAWConfig
from latent_residual_plugins.draw.model import DRAW


def make_model(space: gymnasium.spaces.Dict, preset: str = "tiny", **overrides) -> DRAW:
    torch.manual_seed(0)
    return make_backbone("draw-v0", space, ACTION_SPACE, preset=preset, **overrides)


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
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
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
    check_heads_and_decoder(model, features, space)


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
    check_actions_clipped(make_model(STATE_SPACE))


def test_gradients_reach_the_initial_logits_and_every_network():
    # Without free bits the KL below one nat still trains the prior and the initial logits.
    model = make_model(PIXEL_SPACE, free_bits=0.0)
    loss, _ = model.loss(synthetic_batch(PIXEL_SPACE, 2, 6))
    loss.backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    # The reward head's zero-initialised output layer blocks its body's gradient on the first step.
    assert without == [f"reward_head.net.body.{index}.{kind}" for index in (0, 1) for kind in ("weight", "bias")]


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def test_loss_decreases_on_state_observations():
    batch = pendulum_batch(B=4, T=24) or synthetic_batch(STATE_SPACE, B=4, T=24)
    check_training(make_model(STATE_SPACE), batch, steps=60, recon_halves=True)


def test_loss_decreases_on_pixel_observations():
    model = make_model(PIXEL_SPACE)
    check_training(model, synthetic_batch(PIXEL_SPACE, B=4, T=12), steps=40)


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
        ({"hidden": 2.5}, r"DRAWConfig.hidden must be an integer >= 1, got 2.5"),
        *bad_config_values("DRAWConfig"),
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


def test_a_reconstruction_key_weight_scales_that_key_and_an_unknown_key_is_refused():
    batch = synthetic_batch(STATE_SPACE, 2, 4)
    losses = {}
    for scales in ({}, {"velocity": 3.0}):
        torch.manual_seed(0)
        model = DRAW(STATE_SPACE, ACTION_SPACE, preset="tiny", recon_key_scales=scales)
        torch.manual_seed(1)
        losses[len(scales)] = model.loss(batch)
    (plain, plain_metrics), (weighted, weighted_metrics) = losses[0], losses[1]
    assert weighted_metrics["recon/velocity"] == pytest.approx(plain_metrics["recon/velocity"])
    extra = 2.0 * plain_metrics["recon/velocity"]
    assert weighted_metrics["recon"] == pytest.approx(plain_metrics["recon"] + extra, rel=1e-5)
    assert weighted.item() == pytest.approx(plain.item() + extra, rel=1e-5)
    with pytest.raises(ConfigError, match=r"recon_key_scales names \['velocty'\].*Did you mean \"velocity\""):
        DRAW(STATE_SPACE, ACTION_SPACE, preset="tiny", recon_key_scales={"velocty": 2.0})
    with pytest.raises(ConfigError, match=r"recon_key_scales must map names to finite numbers >= 0"):
        DRAWConfig(recon_key_scales={"velocity": -1.0})


def test_spaces_are_validated():
    odd_image = gymnasium.spaces.Dict({"image": gymnasium.spaces.Box(0, 255, (60, 60, 3), np.uint8)})
    with pytest.raises(ConfigError, match=r"\(60, 60, 3\).*divisible by 16"):
        DRAW(odd_image, ACTION_SPACE, preset="tiny")
    DRAW(odd_image, ACTION_SPACE, preset="tiny", cnn_layers=2)  # 60 = 4 * 15
    check_space_errors(DRAW, STATE_SPACE)


def test_a_scalar_observation_key_trains_and_decodes():
    # dm_control's finger has one: dist_to_target, shape ().
    space = gymnasium.spaces.Dict({**STATE_SPACE.spaces, "dist": gymnasium.spaces.Box(-np.inf, np.inf, ())})
    batch = synthetic_batch(STATE_SPACE, B=4, T=12)
    batch["dist"] = batch["velocity"][..., 0] * 2  # (B, T)
    model = make_model(space)
    check_training(model, batch, steps=100)
    with torch.no_grad():
        out = observe(model, prev_actions(batch["action"]), batch["is_first"], embed=model.embed(batch))
        decoded = model.decode(out["features"])
    assert decoded["dist"].shape == (4, 12) and decoded["velocity"].shape == batch["velocity"].shape


ARM_SPACE = gymnasium.spaces.Dict(
    {
        "position": gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32),  # (unlimited shoulder, wrist)
        "velocity": gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32),
    }
)


def test_angle_elements_are_read_as_cos_and_sin_and_decoded_wrapped():
    model = make_model(ARM_SPACE, angles={"position": [0]})
    plain = make_model(ARM_SPACE)
    wound = {"position": torch.tensor([[0.3, 1.0], [0.3 + 4 * np.pi, 1.0]]), "velocity": torch.zeros(2, 2)}
    with torch.no_grad():
        embedded, embedded_plain = model.embed(wound), plain.embed(wound)
    # theta and theta + 4 pi are one observation to the model that reads angles, two to the plain one.
    torch.testing.assert_close(embedded[0], embedded[1], atol=1e-5, rtol=0)
    assert (embedded_plain[0] - embedded_plain[1]).abs().max() > 1e-2
    # The decoder predicts (the wrist, cos, sin) for position: one element more than the key has.
    assert model.decoder.vector_sizes == [3, 2] and plain.decoder.vector_sizes == [2, 2]
    layout = model.layout
    encoded = layout._encoded("position", torch.tensor([[0.3 + 4 * np.pi, 1.0], [-3.0, -0.5]]))
    torch.testing.assert_close(layout._raw("position", encoded), torch.tensor([[0.3, 1.0], [-3.0, -0.5]]))
    with torch.no_grad():
        decoded = model.decode(torch.zeros(4, 3, model.feature_size))
    assert decoded["position"].shape == (4, 3, 2)
    assert decoded["position"][..., 0].abs().max() <= np.pi
    # The loss's target is the encoded observation: a prediction of it has no error on a wound angle.
    losses = layout.reconstruction_loss({"position": encoded}, {"position": torch.tensor([[0.3, 1.0], [-3.0, -0.5]])})
    assert losses["position"].tolist() == pytest.approx([0.0, 0.0], abs=1e-9)
    batch = synthetic_batch(STATE_SPACE, 2, 3)
    batch["position"] = torch.randn(2, 3, 2) * 5
    batch["velocity"] = batch["velocity"].expand(2, 3, 2)
    with torch.no_grad():
        loss, metrics = model.loss(batch)
    assert torch.isfinite(loss) and metrics["recon/position"] > 0
    # The setting survives the JSON a saved model keeps and rebuilds the same networks.
    kwargs = json.loads(json.dumps(model.backbone_kwargs))
    assert kwargs["angles"] == {"position": [0]}
    rebuilt = DRAW(ARM_SPACE, ACTION_SPACE, **kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    ("angles", "message"),
    [
        ({"postion": [0]}, r"DRAWConfig.angles names \['postion'\].*Did you mean \"position\""),
        ({"position": [2]}, r"DRAWConfig.angles\['position'\] has index 2; 'position' has 2 elements"),
        ({"image": [0]}, r"DRAWConfig.angles names image 'image'"),
        ({"position": [0, 0]}, r"angles must map names to lists of distinct indices >= 0"),
        ({"position": [-1]}, r"angles must map names to lists of distinct indices >= 0"),
        ({"position": 0}, r"angles must map names to lists of distinct indices >= 0"),
    ],
)
def test_bad_angles_are_refused_naming_the_setting(angles, message):
    space = gymnasium.spaces.Dict({**ARM_SPACE.spaces, "image": PIXEL_SPACE["image"]})
    with pytest.raises(ConfigError, match=message):
        DRAW(space, ACTION_SPACE, preset="tiny", angles=angles)
