"""Tests of the RSSM backbone plugin: registration, the GRU cell against hand-written equations, the
world-model contract, the loss, files, residual adapters and pretraining, and the config."""

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
    PENDULUM,
    PIXEL_SPACE,
    SPACES,
    STATE_SPACE,
    bad_config_values,
    check_actions_clipped,
    check_heads_and_decoder,
    check_space_errors,
    check_training,
    pendulum_batch,
    pendulum_like,
    train,
)
from conftest import TINY_AC, tiny_pretrain_config

from latent_residual import (
    ConfigError,
    DatasetError,
    FitConfig,
    ResidualConfig,
    attach_residual,
    backbone_spec,
    distributions,
    finetune_dynamics,
    fit_residual,
    list_envs,
    load_world_model,
    make_backbone,
    pretrain,
    save_world_model,
)
from latent_residual.contract import LatentSpec
from latent_residual.registry.lookup import backbone_preset
from latent_residual.rollout import imagine, observe, prev_actions, step
from latent_residual_plugins.rssm.config import PRESETS, SIZES, RSSMConfig
from latent_residual_plugins.rssm.model import RSSM
from latent_residual_plugins.rssm.nets import NORM_EPS, LayerNormGRUCell

G, C, H = 4, 4, 16  # the tiny preset's latent and deterministic sizes


def make_model(space: gymnasium.spaces.Dict = STATE_SPACE, preset: str = "tiny", **overrides) -> RSSM:
    torch.manual_seed(0)
    return make_backbone("rssm-v0", space, ACTION_SPACE, preset=preset, **overrides)


def synthetic_batch(
    space: gymnasium.spaces.Dict, B: int, T: int, seed: int = 0, gain: float = 1.0
) -> dict[str, torch.Tensor]:
    """Pendulum-like sequences whose angle follows the actions (times ``gain``), as does the velocity."""
    generator = torch.Generator().manual_seed(seed)
    action = torch.rand(B, T, 1, generator=generator) * 2 - 1
    angle = torch.rand(B, 1, generator=generator) * 6.28 + gain * 0.5 * action[..., 0].cumsum(1)  # (B, T)
    return {**pendulum_like(space, angle, gain * 0.5 * action, generator), "action": action}


def reference_cell(weight, norm_weight, norm_bias, h, x):
    """sheeprl's LayerNormGRUCell (bias=False), written out."""
    size = h.shape[-1]
    gates = torch.cat([h, x], -1) @ weight.T
    gates = F.layer_norm(gates, (3 * size,), norm_weight, norm_bias, eps=1e-3)
    reset, cand, update = gates[:, :size], gates[:, size : 2 * size], gates[:, 2 * size :]
    cand = torch.tanh(torch.sigmoid(reset) * cand)
    update = torch.sigmoid(update - 1)
    return update * cand + (1 - update) * h


def reference_dense(layers, x):
    """Bias-free Linear -> LayerNorm(eps 1e-3) -> SiLU, from a (Linear, LayerNorm, SiLU) Sequential."""
    linear, norm = layers[0], layers[1]
    assert linear.bias is None
    return F.silu(F.layer_norm(x @ linear.weight.T, norm.normalized_shape, norm.weight, norm.bias, eps=1e-3))


def randomise(model: torch.nn.Module, seed: int = 1) -> None:
    """Random LayerNorm affines (and initial h), so the references exercise every parameter."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.5 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.5 * torch.randn(module.bias.shape, generator=generator))
        if isinstance(model, RSSM):
            model.initial_deter.copy_(torch.randn(model.initial_deter.shape, generator=generator))


# ---------------------------------------------------------------------------
# Registration
# ---------------------------------------------------------------------------


def test_registered_with_S_preset_a_cpu_preset_and_a_light_module():
    spec = backbone_spec("rssm-v0")
    assert spec.entry_point == "latent_residual_plugins.rssm.model:RSSM"
    assert spec.kwargs == {"preset": "S"}
    cpu = backbone_preset("rssm-v0", "cpu")
    assert RSSMConfig.from_preset(**cpu) == RSSMConfig.from_preset("cpu")
    code = "import sys, latent_residual_plugins.rssm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("preset", ["tiny", "cpu", "XS"])
def test_presets_build_run_and_round_trip_through_json(preset):
    model = make_model(PIXEL_SPACE, preset)
    assert isinstance(model, RSSM) and model.backbone_id == "rssm-v0"
    kwargs = json.loads(json.dumps(model.backbone_kwargs))
    assert kwargs == {"preset": preset}
    rebuilt = RSSM(PIXEL_SPACE, ACTION_SPACE, **kwargs)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    config = model.config
    assert model.recurrent.cell.linear.weight.shape == (3 * config.deter, config.deter + config.units)
    with torch.no_grad():
        loss, metrics = model.loss(synthetic_batch(PIXEL_SPACE, B=2, T=3))
    assert torch.isfinite(loss) and metrics["loss"] == pytest.approx(loss.item())


def test_size_presets_are_dreamerv3s_table():
    table = {
        name: (c.deter, c.hidden, c.units, c.mlp_layers, c.cnn_multiplier, c.stoch, c.classes, c.reward_bins)
        for name in SIZES
        for c in [RSSMConfig.from_preset(name)]
    }
    assert table == {
        "XS": (256, 256, 256, 1, 24, 32, 32, 255),
        "S": (512, 512, 512, 2, 32, 32, 32, 255),
        "M": (1024, 640, 640, 3, 48, 32, 32, 255),
        "L": (2048, 768, 768, 4, 64, 32, 32, 255),
        "XL": (4096, 1024, 1024, 5, 96, 32, 32, 255),
    }
    cpu = RSSMConfig.from_preset("cpu")
    assert (cpu.deter, cpu.hidden, cpu.units, cpu.stoch, cpu.classes) == (256, 128, 128, 16, 16)


# ---------------------------------------------------------------------------
# The recurrent cell and the prior, against the equations
# ---------------------------------------------------------------------------


def test_gru_cell_matches_the_hand_written_equations():
    torch.manual_seed(0)
    cell = LayerNormGRUCell(5, 6)
    randomise(cell)
    assert cell.linear.bias is None and cell.norm.eps == NORM_EPS == 1e-3
    h, x = torch.randn(3, 6), torch.randn(3, 5)
    expected = reference_cell(cell.linear.weight, cell.norm.weight, cell.norm.bias, h, x)
    torch.testing.assert_close(cell(x, h), expected, rtol=0, atol=1e-6)
    # The update gate's -1: with all gates at 0, c = tanh(0) = 0 and u = sigmoid(-1), so h' = (1 - u) h.
    with torch.no_grad():
        cell.linear.weight.zero_()
        cell.norm.bias.zero_()
    torch.testing.assert_close(cell(x, h), (1 - torch.sigmoid(torch.tensor(-1.0))) * h)


def test_dynamics_is_input_block_cell_and_prior_and_returns_raw_logits():
    model = make_model()
    randomise(model)
    B = 3
    state = {"deter": torch.randn(B, H), "stoch": F.one_hot(torch.randint(0, C, (B, G)), C).float()}
    action = torch.tensor([[0.3], [2.0], [-5.0]])
    logits, deter = model.dynamics(state, action, torch.zeros(B, dtype=torch.bool))

    x = torch.cat([state["stoch"].flatten(1), action.clamp(-1, 1)], -1)  # [z, a], as sheeprl
    x = reference_dense(model.recurrent.inputs, x)
    cell = model.recurrent.cell
    h = reference_cell(cell.linear.weight, cell.norm.weight, cell.norm.bias, state["deter"], x)
    torch.testing.assert_close(deter["deter"], h, rtol=0, atol=1e-6)
    raw = model.prior.out(reference_dense(model.prior.body, h)).reshape(B, G, C)
    torch.testing.assert_close(logits, raw, rtol=0, atol=1e-6)
    # Raw: not normalised and without unimix (log-probabilities would have logsumexp 0).
    assert not torch.allclose(logits.logsumexp(-1), torch.zeros(B, G), atol=1e-3)

    post = model.posterior(deter, torch.randn(B, model.encoder.out_size))
    assert post.shape == (B, G, C)


def test_actions_are_clipped_to_the_unit_box():
    check_actions_clipped(make_model())


def test_initial_state_is_tanh_of_the_learned_h_and_the_prior_mode():
    model = make_model()
    randomise(model)
    state = model.initial_state(3)
    h0 = torch.tanh(model.initial_deter)
    torch.testing.assert_close(state["deter"], h0.expand(3, H))
    prior = model.prior(h0).reshape(G, C)
    torch.testing.assert_close(state["stoch"], F.one_hot(prior.argmax(-1), C).float().expand(3, G, C))

    # Episode starts (t = 0 and mid-sequence) begin from it with a zero action, whatever came before.
    batch = synthetic_batch(STATE_SPACE, 2, 8)
    out = observe(model, prev_actions(batch["action"]), batch["is_first"], embed=model.embed(batch))
    first, _ = model.dynamics(model.initial_state(1), torch.zeros(1, 1), torch.ones(1, dtype=torch.bool))
    starts = out["prior_logits"][batch["is_first"]]  # (3, G, C)
    torch.testing.assert_close(starts, first.expand_as(starts))
    # The core's step() does the reset: a garbage state and action give the same first prior.
    garbage = {"deter": torch.randn(1, H), "stoch": torch.ones(1, G, C)}
    again, _ = step(model, garbage, torch.ones(1, 1), torch.ones(1, dtype=torch.bool), model.initial_state(1))
    torch.testing.assert_close(again, first)


def test_gradients_reach_the_initial_state_and_every_network():
    model = make_model(PIXEL_SPACE, free_bits=0.0)
    loss, _ = model.loss(synthetic_batch(PIXEL_SPACE, 2, 6))
    loss.backward()
    without = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    # The reward head's zero-initialised output layer blocks its body's gradient on the first step.
    assert without == ["reward_head.body.0.weight", "reward_head.body.1.weight", "reward_head.body.1.bias"]
    assert model.initial_deter.grad.abs().sum() > 0


def test_dynamics_parameters_are_the_recurrent_model_prior_and_initial_h():
    model = make_model()
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = sorted(names[id(p)] for p in model.dynamics_parameters())
    expected = [n for n in names.values() if n.startswith(("recurrent.", "prior.")) or n == "initial_deter"]
    assert chosen == sorted(expected)
    target = synthetic_batch(STATE_SPACE, 8, 6, gain=-1.0)
    tuned, _ = finetune_dynamics(model, target, FitConfig(steps=3, eval_every=3), quiet=True)
    pairs = zip(model.named_parameters(), tuned.parameters(), strict=True)
    changed = {name for (name, old), new in pairs if not torch.equal(old, new)}
    assert changed and changed <= set(chosen)


# ---------------------------------------------------------------------------
# The world-model contract
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SPACES))
def test_contract_shapes(kind):
    space = SPACES[kind]
    model = make_model(space)
    B, T = 3, 5
    batch = synthetic_batch(space, B, T)
    assert model.latent == LatentSpec(G, C)
    assert (model.action_size, model.feature_size, model.unimix) == (1, H + G * C, 0.01)
    assert model.posterior_uses_deter is True

    state = model.initial_state(B)
    assert set(state) == {"deter", "stoch"}
    assert state["deter"].shape == (B, H) and state["stoch"].shape == (B, G, C)
    assert (state["stoch"].sum(-1) == 1).all()
    embed = model.embed({key: batch[key] for key in space.spaces})
    assert embed.shape == (B, T, model.encoder.out_size)

    prior, deter = model.dynamics(state, batch["action"][:, 0], torch.tensor([True, False, False]))
    assert prior.shape == (B, G, C) and set(deter) == {"deter"} and deter["deter"].shape == (B, H)
    post = model.posterior(deter, embed[:, 0])
    assert post.shape == (B, G, C)
    stoch = distributions.sample_one_hot(distributions.probs(post, model.posterior_unimix))
    state = model.next_state(deter, prior, stoch)
    assert state["stoch"] is stoch and state["deter"] is deter["deter"]

    features = model.features(state)
    assert features.shape == (B, H + G * C)
    torch.testing.assert_close(features, torch.cat([deter["deter"], stoch.flatten(1)], -1))  # [h, z]
    check_heads_and_decoder(model, features, space)


def test_reward_head_starts_at_zero():
    model = make_model()
    torch.testing.assert_close(model.reward(torch.randn(5, model.feature_size)), torch.zeros(5))


def test_observe_and_imagine_run():
    model = make_model(PIXEL_SPACE)
    B, T, horizon = 2, 6, 4
    batch = synthetic_batch(PIXEL_SPACE, B, T)
    out = observe(model, prev_actions(batch["action"]), batch["is_first"], embed=model.embed(batch))
    assert out["prior_logits"].shape == out["post_logits"].shape == out["stoch"].shape == (B, T, G, C)
    assert out["features"].shape == (B, T, H + G * C) and out["states"]["deter"].shape == (B, T, H)
    start = {key: value.reshape(B * T, *value.shape[2:]) for key, value in out["states"].items()}
    dream = imagine(model, start, lambda features: torch.tanh(features[:, :1]), horizon)
    assert dream["features"].shape == (B * T, horizon + 1, H + G * C)
    assert dream["prior_logits"].shape == (B * T, horizon, G, C)


def test_decoupled_posterior_reads_the_embedding_alone_and_is_batched(monkeypatch):
    model = make_model(decoupled=True)
    assert model.posterior_uses_deter is False
    assert model.post.body[0].in_features == model.encoder.out_size
    B, T = 3, 7
    batch = synthetic_batch(STATE_SPACE, B, T)
    embed = model.embed(batch)
    calls = []
    original = model.posterior
    monkeypatch.setattr(model, "posterior", lambda deter, e: calls.append((dict(deter), e.shape)) or original(deter, e))
    out = observe(model, prev_actions(batch["action"]), batch["is_first"], embed=embed)
    assert calls == [({}, (B * T, model.encoder.out_size))]  # one call, no deterministic state
    torch.testing.assert_close(out["post_logits"], original({}, embed))

    coupled = make_model()
    calls.clear()
    coupled_posterior = coupled.posterior
    monkeypatch.setattr(coupled, "posterior", lambda deter, e: calls.append(e.shape) or coupled_posterior(deter, e))
    observe(coupled, prev_actions(batch["action"]), batch["is_first"], embed=coupled.embed(batch))
    assert calls == [(B, coupled.encoder.out_size)] * T
    loss, _ = model.loss(batch)
    assert torch.isfinite(loss)


# ---------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------


def test_loss_decreases_on_pendulum_state_observations():
    batch = pendulum_batch(B=4, T=24) or synthetic_batch(STATE_SPACE, B=4, T=24)
    check_training(make_model(), batch, steps=30, lr=3e-3, recon_halves=True)


def test_loss_decreases_on_pixel_observations():
    check_training(make_model(PIXEL_SPACE), synthetic_batch(PIXEL_SPACE, B=3, T=8), steps=30, lr=3e-3)


def test_loss_names_missing_batch_keys():
    batch = synthetic_batch(STATE_SPACE, 2, 3)
    del batch["is_terminal"], batch["velocity"]
    with pytest.raises(DatasetError, match=r"\['velocity', 'is_terminal'\]"):
        make_model().loss(batch)


# ---------------------------------------------------------------------------
# Files, residuals and pretraining
# ---------------------------------------------------------------------------


def test_save_and_load_round_trip_reproduces_outputs(tmp_path):
    model = make_model(PIXEL_SPACE, decoupled=True)
    randomise(model)
    batch = synthetic_batch(PIXEL_SPACE, 2, 5)

    def outputs(m):
        with torch.no_grad():
            out = observe(
                m,
                prev_actions(batch["action"]),
                batch["is_first"],
                embed=m.embed(batch),
                generator=torch.Generator().manual_seed(3),
            )
            return out["prior_logits"], out["features"], m.reward(out["features"]), m.decode(out["features"])["image"]

    save_world_model(model, tmp_path / "wm")
    loaded = load_world_model(tmp_path / "wm")
    assert isinstance(loaded, RSSM) and loaded.backbone_kwargs == {"preset": "tiny", "decoupled": True}
    for expected, got in zip(outputs(model), outputs(loaded), strict=True):
        assert torch.equal(expected, got)


def test_residual_fit_leaves_the_base_bitwise_unchanged(tmp_path):
    model = make_model()
    train(model, synthetic_batch(STATE_SPACE, 8, 12), steps=10)
    before = {key: value.clone() for key, value in model.state_dict().items()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    adapted = attach_residual(model, ResidualConfig(hidden=16, extra_inputs=("deter",)))
    target = synthetic_batch(STATE_SPACE, 20, 12, seed=5, gain=-1.0)  # the 'real' world: actions reversed
    result = fit_residual(adapted, target, FitConfig(steps=20, eval_every=10, lr=1e-2), quiet=True)
    assert np.isfinite(result.held_out_kl_best) and result.held_out_kl_best <= result.held_out_kl_base
    after = model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())
    adapted.save_pretrained(tmp_path / "adapter")


def test_short_pretrain_run_on_pendulum(tmp_path, registry):
    if PENDULUM not in {spec.id for spec in list_envs()}:
        pytest.skip("the DMC plugin is not installed")
    config = tiny_pretrain_config(backbone="rssm-v0", env_steps=100, prefill=70, checkpoint_every=100)
    result = pretrain(config, tmp_path, ac_config=TINY_AC, quiet=True)
    assert result.env_steps == 100 and result.updates > 0
    model = load_world_model(tmp_path / "world_model")
    assert isinstance(model, RSSM) and model.backbone_kwargs == {"preset": "tiny"}
    assert (tmp_path / "actor_critic.safetensors").exists()


# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------


def test_config_defaults_are_dreamerv3_xl_and_fields_have_help():
    config = RSSMConfig()
    assert (config.deter, config.stoch, config.classes, config.units, config.mlp_layers) == (4096, 32, 32, 1024, 5)
    assert (config.dyn_scale, config.rep_scale, config.free_bits, config.unimix) == (0.5, 0.1, 1.0, 0.01)
    assert config.decoupled is False
    assert RSSMConfig.from_preset("XL") == config
    assert all(item.metadata.get("help") for item in RSSMConfig.__dataclass_fields__.values())
    assert json.loads(json.dumps(config.to_dict())) == config.to_dict()
    assert {"tiny", "cpu", "XS", "S", "M", "L", "XL"} == set(PRESETS)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"stoch": 0}, r"RSSMConfig.stoch must be an integer >= 1, got 0"),
        ({"deter": 2.5}, r"RSSMConfig.deter must be an integer >= 1, got 2.5"),
        ({"decoupled": 1}, r"RSSMConfig.decoupled must be true or false, got 1"),
        *bad_config_values("RSSMConfig"),
    ],
)
def test_config_rejects_bad_values_quoting_them(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RSSMConfig(**kwargs)


def test_unknown_preset_and_field_suggest_close_matches():
    with pytest.raises(ConfigError, match=r"Unknown RSSM preset 'tiney'.*Did you mean \"tiny\""):
        RSSMConfig.from_preset("tiney")
    with pytest.raises(ConfigError, match=r"no field 'detr'.*Did you mean \"deter\""):
        make_backbone("rssm-v0", STATE_SPACE, ACTION_SPACE, preset="tiny", detr=64)
    with pytest.raises(ConfigError, match=r"has no preset 'cpus'.*Did you mean \"cpu\""):
        backbone_preset("rssm-v0", "cpus")


def test_spaces_are_validated():
    def image(shape):
        return gymnasium.spaces.Box(0, 255, shape, np.uint8)

    with pytest.raises(ConfigError, match=r"\(60, 60, 3\).*square with a side of 4 \* 2\*\*n"):
        RSSM(gymnasium.spaces.Dict({"image": image((60, 60, 3))}), ACTION_SPACE, preset="tiny")
    with pytest.raises(ConfigError, match=r"\(64, 32, 3\)"):
        RSSM(gymnasium.spaces.Dict({"image": image((64, 32, 3))}), ACTION_SPACE, preset="tiny")
    with pytest.raises(ConfigError, match="one size"):
        RSSM(gymnasium.spaces.Dict({"a": image((64, 64, 3)), "b": image((32, 32, 3))}), ACTION_SPACE, preset="tiny")
    small = RSSM(gymnasium.spaces.Dict({"a": image((32, 32, 3)), "b": image((32, 32, 1))}), ACTION_SPACE, preset="tiny")
    assert small.encoder.images.convs[0].in_channels == 4 and small.layout.cnn_stages == 3
    check_space_errors(RSSM, STATE_SPACE)


def test_angle_elements_are_read_and_reconstructed_as_cos_and_sin():
    space = gymnasium.spaces.Dict({"position": gymnasium.spaces.Box(-np.inf, np.inf, (2,), np.float32)})
    model = make_model(space, angles={"position": [1]})
    assert model.decoder.heads["position"].out_features == 3
    wound = {"position": torch.tensor([[1.0, -2.0], [1.0, -2.0 - 6 * np.pi]])}
    with torch.no_grad():
        embedded = model.embed(wound)
        decoded = model.decode(torch.zeros(2, model.feature_size))
    torch.testing.assert_close(embedded[0], embedded[1], atol=1e-5, rtol=0)
    assert decoded["position"].shape == (2, 2) and decoded["position"][:, 1].abs().max() <= np.pi
    with pytest.raises(ConfigError, match=r"RSSMConfig.angles\['position'\] has index 2"):
        make_model(space, angles={"position": [2]})
