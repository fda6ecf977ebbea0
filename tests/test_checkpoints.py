"""World-model checkpoints rebuild the model through the registry and refuse bad files."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_no_temp_files, drift_sequences

from latent_residual import CheckpointError, ConfigError, load_world_model, save_world_model
from latent_residual.checkpoints import MODEL_WEIGHTS_NAME
from latent_residual.rollout import observe, prev_actions
from latent_residual.serialization import space_to_json
from latent_residual.workflow.data.spaces import space_from_json


def test_round_trip_reproduces_the_model(gru_model, tmp_path):
    save_world_model(gru_model, tmp_path, extra={"steps": 60})
    assert_no_temp_files(tmp_path)
    loaded = load_world_model(tmp_path)
    assert loaded.backbone_id == "gru-v0"
    for key, value in gru_model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    batch = drift_sequences(0.1, episodes=2)

    def run(model):
        embed = model.embed({"position": batch["position"]})
        return observe(model, prev_actions(batch["action"]), batch["is_first"], embed=embed, sample=False)[
            "prior_logits"
        ]

    assert torch.equal(run(loaded), run(gru_model))
    assert loaded.observation_space == gru_model.observation_space


def test_truncated_checkpoint_is_reported(gru_model, tmp_path):
    save_world_model(gru_model, tmp_path)
    path = tmp_path / MODEL_WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(CheckpointError, match="truncated"):
        load_world_model(tmp_path)


def test_model_without_backbone_id_cannot_be_saved(drift_spaces, tmp_path):
    from lr_testplugin.gru import GRUWorldModel

    with pytest.raises(ConfigError, match="make_backbone"):
        save_world_model(GRUWorldModel(*drift_spaces), tmp_path)


def test_spaces_round_trip(drift_spaces):
    obs, act = drift_spaces
    assert space_from_json(space_to_json(obs)) == obs
    assert space_from_json(space_to_json(act)) == act


def test_uniform_bounds_are_stored_as_one_number():
    import gymnasium
    import numpy as np

    image = gymnasium.spaces.Box(0, 255, (64, 64, 3), np.uint8)
    ragged = gymnasium.spaces.Box(np.array([-1.0, 0.0], np.float32), np.array([1.0, 2.0], np.float32))
    data = space_to_json(gymnasium.spaces.Dict({"image": image, "ragged": ragged}))
    assert (data["spaces"]["image"]["low"], data["spaces"]["image"]["high"]) == (0, 255)
    assert data["spaces"]["ragged"]["high"] == [1.0, 2.0]
    assert space_from_json(data) == gymnasium.spaces.Dict({"image": image, "ragged": ragged})


def test_saved_files_have_the_mode_a_plain_open_gives(gru_model, tmp_path):
    import os

    save_world_model(gru_model, tmp_path)
    umask = os.umask(0o022)
    os.umask(umask)
    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    mode = plain.stat().st_mode & 0o777
    assert mode == 0o666 & ~umask
    assert (tmp_path / MODEL_WEIGHTS_NAME).stat().st_mode & 0o777 == mode  # safetensors alone writes 0600
