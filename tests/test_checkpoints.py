"""World-model checkpoints rebuild the model through the registry and refuse bad files."""

from __future__ import annotations

import pytest
import torch
from conftest import assert_no_temp_files, drift_sequences

from latent_residual import AdapterFileError, ConfigError, load_world_model, save_world_model
from latent_residual.checkpoints import MODEL_WEIGHTS_NAME, space_from_json, space_to_json
from latent_residual.rollout import observe, prev_actions


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
        return observe(model, prev_actions(batch["action"]), batch["is_first"], embed=embed, sample=False)["prior_logits"]
    assert torch.equal(run(loaded), run(gru_model))
    assert loaded.observation_space == gru_model.observation_space


def test_truncated_checkpoint_is_reported(gru_model, tmp_path):
    save_world_model(gru_model, tmp_path)
    path = tmp_path / MODEL_WEIGHTS_NAME
    path.write_bytes(path.read_bytes()[:-16])
    with pytest.raises(AdapterFileError, match="truncated"):
        load_world_model(tmp_path)


def test_model_without_backbone_id_cannot_be_saved(drift_spaces, tmp_path):
    from lr_testplugin.gru import GRUWorldModel

    with pytest.raises(ConfigError, match="make_backbone"):
        save_world_model(GRUWorldModel(*drift_spaces), tmp_path)


def test_spaces_round_trip(drift_spaces):
    obs, act = drift_spaces
    assert space_from_json(space_to_json(obs)) == obs
    assert space_from_json(space_to_json(act)) == act
