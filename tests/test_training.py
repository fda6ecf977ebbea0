"""Pretraining (tiny, on DMC pendulum), resuming after a stop, policy training, checkpoint files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY_AC, tiny_pretrain_config

from latent_residual import ConfigError, PretrainConfig, load_world_model, pretrain
from latent_residual.actor_critic import load_actor_critic, save_actor_critic
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, train_policy
from latent_residual.workflow.training.pretraining import ACTOR_CRITIC_NAME
from latent_residual.workflow.training.replay import ReplayBuffer


def test_pretraining_writes_checkpoint_policy_replay_and_metrics(pretrained):
    out, result = pretrained
    assert result.env_steps == 160 and result.updates > 0
    assert len(result.episode_returns) == 2  # 61-step episodes (60 env steps + the first observation)
    model = load_world_model(out / "world_model")
    assert model.backbone_id == "draw-v0"
    actor_critic = load_actor_critic(out / ACTOR_CRITIC_NAME)
    assert actor_critic.feature_size == model.feature_size
    progress = json.loads((out / "progress.json").read_text())
    assert progress["env_steps"] == 160 and progress["done"]
    assert (out / "replay" / "dataset.json").exists()
    metrics = (out / "metrics.csv").read_text()
    assert "episode_return" in metrics and "model/loss" in metrics and "explore/imagined_reward" in metrics
    # A finished run returns at once.
    again = pretrain(tiny_pretrain_config(), out, ac_config=TINY_AC, quiet=True)
    assert again.updates == result.updates and again.seconds == 0.0


def test_pretraining_resumes_after_a_stop(tmp_path, registry):
    first = pretrain(tiny_pretrain_config(exploration="reward", env_steps=80), tmp_path, ac_config=TINY_AC, quiet=True)
    assert first.env_steps == 80
    extended = pretrain(
        tiny_pretrain_config(exploration="reward", env_steps=160), tmp_path, ac_config=TINY_AC, quiet=True
    )
    assert extended.env_steps == 160 and extended.updates > first.updates
    assert json.loads((tmp_path / "progress.json").read_text())["env_steps"] == 160


def test_actor_critic_file_round_trip_keeps_optimiser_moments(pretrained, tmp_path):
    out, _ = pretrained
    actor_critic = load_actor_critic(out / ACTOR_CRITIC_NAME)
    assert actor_critic.actor_opt.state_dict()["state"]  # moments came back from the file
    save_actor_critic(actor_critic, tmp_path / "ac.safetensors")
    again = load_actor_critic(tmp_path / "ac.safetensors")
    for key, value in actor_critic.state_dict().items():
        assert torch.equal(again.state_dict()[key], value)


def test_train_policy_in_imagination_from_target_sequences(pretrained):
    out, _ = pretrained
    from latent_residual.workflow.data.datasets import load_dataset

    model = load_world_model(out / "world_model")
    sequences = load_dataset(out / "replay").sequences(8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    actor_critic = train_policy(model, sequences, PolicyTrainConfig(steps=3, starts=32), ac_config=TINY_AC, quiet=True)
    assert actor_critic.feature_size == model.feature_size
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_replay_windows_start_as_episode_starts():
    buffer = ReplayBuffer(seq_len=4)
    episode = {"x": np.arange(10, dtype=np.float32), "is_first": np.eye(1, 10, dtype=bool)[0]}
    buffer.add(episode)
    buffer.add({"x": np.arange(3, dtype=np.float32), "is_first": np.array([True, False, False])})  # too short
    batch = buffer.sample(8, np.random.default_rng(0), "cpu")
    assert batch["x"].shape == (8, 4) and batch["is_first"][:, 0].all() and not batch["is_first"][:, 1:].any()
    assert torch.all(batch["x"][:, 1:] - batch["x"][:, :-1] == 1)


def test_pretrain_config_errors_name_the_field():
    with pytest.raises(ConfigError, match="exploration"):
        PretrainConfig(exploration="curious")
    with pytest.raises(ConfigError, match="prefill"):
        PretrainConfig(prefill=10, seq_len=64)
