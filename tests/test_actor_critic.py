"""The actor-critic: lambda-returns by hand, a training step that learns, bounded actions."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from latent_residual import ActorCritic, ActorCriticConfig, CheckpointError, ConfigError, encodings
from latent_residual.actor_critic import lambda_returns, load_actor_critic, save_actor_critic


def test_lambda_returns_match_hand_computation():
    reward = torch.tensor([[1.0, 2.0]])
    cont = torch.tensor([[1.0, 0.5]])
    value = torch.tensor([[10.0, 20.0, 30.0]])
    gamma, lam = 0.9, 0.5
    last = 2.0 + 0.9 * 0.5 * (0.5 * 30.0 + 0.5 * 30.0)  # R_1 = 15.5
    first = 1.0 + 0.9 * 1.0 * (0.5 * 20.0 + 0.5 * last)  # R_0
    expected = torch.tensor([[first, last]])
    assert torch.allclose(lambda_returns(reward, cont, value, gamma, lam), expected)


def test_lambda_one_is_monte_carlo_and_zero_is_td():
    reward = torch.tensor([[1.0, 1.0, 1.0]])
    cont = torch.ones(1, 3)
    value = torch.tensor([[0.0, 5.0, 5.0, 7.0]])
    assert torch.allclose(lambda_returns(reward, cont, value, 1.0, 1.0)[0, 0], torch.tensor(10.0))
    assert torch.allclose(lambda_returns(reward, cont, value, 1.0, 0.0)[0], torch.tensor([6.0, 6.0, 8.0]))


def test_the_critic_loss_is_the_two_hot_cross_entropy_of_both_targets_on_steps_0_to_h_minus_1():
    torch.manual_seed(0)
    actor_critic = ActorCritic(6, 1, ActorCriticConfig(hidden=16, layers=1, slow_critic_reg=0.7))
    B, H = 5, 4
    logits = actor_critic.critic(torch.randn(B, H + 1, 6)) + torch.randn(B, H + 1, 255)  # (B, H + 1, bins)
    returns, slow_value, weight = torch.randn(B, H) * 40, torch.randn(B, H) * 3, torch.rand(B, H)
    bins = actor_critic.critic.bins
    target = encodings.twohot(encodings.symlog(returns), bins) + 0.7 * encodings.twohot(
        encodings.symlog(slow_value), bins
    )
    # The dense formula: steps 0..H-1 only (the last state has no return).
    expected = (weight * -(target * torch.log_softmax(logits.detach(), -1)[:, :-1]).sum(-1)).mean()
    loss = actor_critic._update_critic(logits, returns, slow_value, weight)
    assert torch.allclose(loss, expected, rtol=1e-6)


def test_actions_are_bounded_and_log_probs_finite():
    actor_critic = ActorCritic(6, 2, ActorCriticConfig(hidden=16, layers=1))
    features = torch.randn(50, 6) * 10
    for sample in (True, False):
        action = actor_critic.act(features, sample=sample)
        assert action.shape == (50, 2) and action.abs().max() <= 1.0
    log_prob = actor_critic.actor.dist(features).log_prob(actor_critic.act(features, sample=True).clamp(-0.999, 0.999))
    assert torch.isfinite(log_prob).all()


@pytest.mark.parametrize("gradient", ["dynamics", "reinforce"])
def test_train_step_learns_to_prefer_rewarded_actions(gru_model, gradient):
    """In the GRU model with a reward of +action[0], the actor's mean action rises."""
    torch.manual_seed(0)
    config = ActorCriticConfig(
        hidden=32, layers=1, horizon=5, actor_lr=3e-3, critic_lr=3e-3, entropy=0.0, actor_gradient=gradient
    )
    actor_critic = ActorCritic(gru_model.feature_size, 2, config)
    start = gru_model.initial_state(64)
    start["stoch"][:, :, 0] = 1.0
    before = actor_critic.act(gru_model.features(start), sample=False)[:, 0].mean().item()
    reward_fn = lambda features, actions: actions[..., 0]  # noqa: E731
    for _ in range(60):
        metrics = actor_critic.train_step(gru_model, start, reward_fn=reward_fn)
    after = actor_critic.act(gru_model.features(start), sample=False)[:, 0].mean().item()
    assert after > before + 0.3
    assert set(metrics) >= {"actor_loss", "critic_loss", "imagined_return", "entropy"}


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="min_std"):
        ActorCriticConfig(min_std=2.0, max_std=1.0)
    with pytest.raises(ConfigError, match="actor_gradient"):
        ActorCriticConfig(actor_gradient="backprop")
    with pytest.raises(ConfigError, match="continuation"):
        ActorCriticConfig(continuation="sample")


@pytest.mark.parametrize("continuation", ["probability", "mode"])
def test_continuation_is_the_heads_probability_or_its_mode(gru_model, continuation):
    """mode: 0 or 1 with no gradient into the head (DreamerV3, sheeprl); probability: differentiable."""
    torch.manual_seed(0)
    actor_critic = ActorCritic(
        gru_model.feature_size, 2, ActorCriticConfig(hidden=16, layers=1, horizon=4, continuation=continuation)
    )
    imagined = actor_critic._imagine(gru_model, gru_model.initial_state(32), None, None)
    cont = imagined["cont"]
    probability = gru_model.continuation(imagined["features"][:, 1:].detach())
    if continuation == "mode":
        assert not cont.requires_grad
        assert torch.equal(cont, (probability > 0.5).float())
    else:
        assert cont.requires_grad
        torch.testing.assert_close(cont.detach(), probability)
    metrics = actor_critic.train_step(gru_model, gru_model.initial_state(32))
    assert all(torch.isfinite(torch.tensor(value)) for value in metrics.values())


@pytest.mark.parametrize("detach", [False, True])
def test_actor_reads_detached_features_only_when_asked(gru_model, detach):
    """detach_actor_input cuts the path through the states the actor read, not the one through its actions."""
    torch.manual_seed(0)
    config = ActorCriticConfig(hidden=16, layers=1, horizon=4, detach_actor_input=detach)
    actor_critic = ActorCritic(gru_model.feature_size, 2, config)
    inputs = []
    actor_critic.actor.net.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
    imagined = actor_critic._imagine(gru_model, gru_model.initial_state(8), None, None)
    # The start is detached either way; the later states carry the earlier actions' gradient.
    assert [x.requires_grad for x in inputs[1:]] == [not detach] * (len(inputs) - 1)
    grads = torch.autograd.grad(imagined["returns"].sum(), list(actor_critic.actor.parameters()), allow_unused=True)
    assert any(grad is not None and grad.abs().sum() > 0 for grad in grads)


def test_dynamics_gradient_reaches_the_actor_through_an_adapted_model_but_not_the_base(gru_model):
    from latent_residual import attach_residual

    before = {key: value.clone() for key, value in gru_model.state_dict().items()}
    adapted = attach_residual(gru_model)
    torch.manual_seed(1)
    actor_critic = ActorCritic(gru_model.feature_size, 2, ActorCriticConfig(hidden=16, layers=1, horizon=4))
    start = adapted.initial_state(8)
    actor_before = [p.clone() for p in actor_critic.actor.parameters()]
    # A reward that depends on the state only: the actor learns only through the dynamics.
    reward_fn = lambda features, actions: features[:, 1:, : gru_model.deter_size].sum(-1)  # noqa: E731
    actor_critic.train_step(adapted, start, reward_fn=reward_fn)
    assert any(not torch.equal(a, b) for a, b in zip(actor_before, actor_critic.actor.parameters()))
    assert all(p.grad is None for p in gru_model.parameters())
    assert all(torch.equal(before[k], v) for k, v in gru_model.state_dict().items())
    assert all(p.grad is None for p in adapted.trainable_parameters())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("config", "{x", "metadata key 'config' is not valid JSON"),
        ("feature_size", "8a", "metadata key 'feature_size' is '8a', expected an integer"),
        ("action_size", "-2", "metadata key 'action_size' is '-2', expected an integer"),
    ],
)
def test_corrupt_metadata_is_refused_naming_the_file_and_key(tmp_path, key, value, message):
    path = tmp_path / "ac.safetensors"
    save_actor_critic(ActorCritic(8, 2, ActorCriticConfig(hidden=8, layers=1)), path)
    with safe_open(str(path), "pt") as handle:
        metadata = {**handle.metadata(), key: value}
    save_file(load_file(str(path)), str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match=f"ac.safetensors: {message}"):
        load_actor_critic(path)


def test_a_file_without_optimiser_moments_is_smaller_and_loads_with_fresh_ones(tmp_path):
    torch.manual_seed(0)
    actor_critic = ActorCritic(8, 2, ActorCriticConfig(hidden=8, layers=1))
    features = torch.randn(4, 8)
    # One optimiser step each, so that there are moments to leave out.
    for optimizer, net in (
        (actor_critic.actor_opt, actor_critic.actor),
        (actor_critic.critic_opt, actor_critic.critic),
    ):
        sum(param.square().sum() for param in net.parameters()).backward()
        optimizer.step()
    full, bare = tmp_path / "full.safetensors", tmp_path / "bare.safetensors"
    save_actor_critic(actor_critic, full)
    save_actor_critic(actor_critic, bare, optimizer_state=False)
    assert not any(key.endswith("_opt") for key in (name.split(".")[0] for name in load_file(str(bare))))
    assert bare.stat().st_size < full.stat().st_size
    loaded = load_actor_critic(bare)
    torch.testing.assert_close(loaded.actor(features), actor_critic.actor(features))
    assert loaded.actor_opt.state_dict()["state"] == {} and load_actor_critic(full).actor_opt.state_dict()["state"]
