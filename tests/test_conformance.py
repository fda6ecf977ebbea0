"""``check_world_model`` passes on every registered backbone and names what a broken one gets wrong."""

from __future__ import annotations

import pytest
import torch

import latent_residual
from latent_residual.testing import ContractError, check_world_model


def _tiny(backbone: str, spaces):
    kwargs = {"draw-v0": {"preset": "tiny"}, "rssm-v0": {"preset": "tiny"}}.get(backbone, {})
    torch.manual_seed(0)
    return latent_residual.make_backbone(backbone, *spaces, **kwargs)


@pytest.mark.parametrize("backbone", ["draw-v0", "gru-v0", "rssm-v0"])
def test_every_registered_backbone_conforms(registry, drift_spaces, backbone):
    check_world_model(_tiny(backbone, drift_spaces))


def test_the_rssm_conforms_with_a_decoupled_posterior_and_pixels(registry):
    env = latent_residual.make_env("dmc/pendulum-swingup-v0", pixels=True)
    torch.manual_seed(0)
    model = latent_residual.make_backbone(
        "rssm-v0", env.observation_space, env.action_space, preset="tiny", decoupled=True
    )
    env.close()
    assert not model.posterior_uses_deter
    check_world_model(model)


def test_a_model_whose_dynamics_returns_probabilities_is_named(registry, drift_spaces):
    model = _tiny("gru-v0", drift_spaces)
    dynamics = model.dynamics

    def softmaxed(state, action, is_first):
        logits, deter = dynamics(state, action, is_first)
        return torch.softmax(logits, -1), deter

    model.dynamics = softmaxed
    with pytest.raises(ContractError, match=r"^dynamics: expected raw logits .*probabilities \(each group sums to 1\)"):
        check_world_model(model, export=False)


def test_a_model_built_outside_the_registry_is_told_how_to_build_it(registry, drift_spaces):
    model = _tiny("gru-v0", drift_spaces)
    model.backbone_id = None
    with pytest.raises(ContractError, match="backbone_id: expected a model built with latent_residual.make_backbone"):
        check_world_model(model)
