"""Residual adapters on a recurrent (GRU) backbone: the base stays untouched, files round-trip strictly."""

from __future__ import annotations

import copy
import dataclasses
import json
import struct

import pytest
import torch
from conftest import assert_no_temp_files, drift_sequences

from latent_residual import (
    AdapterFileError,
    ConfigError,
    FitConfig,
    IncompatibleAdapterError,
    NameNotFound,
    ResidualConfig,
    ResidualWorldModel,
    attach_residual,
    fingerprint,
    fit_residual,
    load_adapter,
    make_backbone,
    read_adapter_info,
)
from latent_residual.adapters import ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME
from latent_residual.fitting import _Cache, _split
from latent_residual.rollout import imagine, observe, prev_actions

QUICK = FitConfig(steps=40, eval_every=10, patience=0, lr=1e-2)


def _prior_logits(model, batch, seed=0):
    embed = model.embed({"position": batch["position"]})
    out = observe(
        model,
        prev_actions(batch["action"]),
        batch["is_first"],
        embed=embed,
        generator=torch.Generator().manual_seed(seed),
    )
    return out["prior_logits"]


def _snapshot(model):
    return {key: value.clone() for key, value in model.state_dict().items()}


def test_fit_improves_held_out_kl_and_leaves_base_bitwise_identical(gru_model, tmp_path):
    before = _snapshot(gru_model)
    flags = {name: p.requires_grad for name, p in gru_model.named_parameters()}
    adapted = attach_residual(gru_model, ResidualConfig(hidden=32))
    target = drift_sequences(-0.1, episodes=20, seed=100)  # the 'real' world: actions reversed
    result = fit_residual(adapted, target, QUICK, log_dir=tmp_path / "run", quiet=True)
    assert result.held_out_kl_best < result.held_out_kl_base
    after = gru_model.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert {name: p.requires_grad for name, p in gru_model.named_parameters()} == flags
    assert all(p.grad is None for p in gru_model.parameters())
    assert (tmp_path / "run" / "metrics.csv").read_text().count("held_out_kl") >= 4
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_fit_learning_rate_decays_to_its_final_scale(gru_model):
    # Starting equal to the base: this small fit never beats it, which fit_residual would refuse.
    adapted = attach_residual(gru_model, ResidualConfig(hidden=16, zero_init=True, prior_unimix=gru_model.prior_unimix))
    config = FitConfig(steps=40, eval_every=10, lr=1e-2, lr_final_scale=0.1)
    history = fit_residual(adapted, drift_sequences(-0.1, seed=5), config, quiet=True).history
    rates = [entry["lr"] for entry in history[1:]]
    assert rates == sorted(rates, reverse=True)
    assert rates[0] < 1e-2 and rates[-1] == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="lr_final_scale"):
        FitConfig(lr_final_scale=0.0)


def test_attach_round_trip_through_files_reproduces_predictions(gru_model, tmp_path):
    adapted = attach_residual(gru_model, ResidualConfig(hidden=16))
    # Data on which the residual beats the base (on seed 5's the fit is refused as worse than the base).
    fit_residual(adapted, drift_sequences(-0.1, seed=100), QUICK, quiet=True, data_summary={"env": "testplug/drift-v0"})
    batch = drift_sequences(-0.1, episodes=2, seed=9)
    expected = _prior_logits(adapted, batch)
    adapted.save_pretrained(tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == sorted(
        [ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME]
    )
    assert_no_temp_files(tmp_path)

    loaded = load_adapter(gru_model, tmp_path / "adapter", trainable=False)
    assert torch.equal(_prior_logits(loaded, batch), expected)
    assert loaded.adapters == ["default"] and not loaded.is_trainable("default")
    assert loaded.trainable_parameters() == []
    info = read_adapter_info(tmp_path / "adapter")[0]
    assert info["backbone_id"] == "gru-v0"
    assert info["latent_spec"] == {"groups": 4, "classes": 3}
    assert info["base_fingerprint"] == fingerprint(gru_model)
    assert info["data_summary"]["env"] == "testplug/drift-v0"
    assert info["data_summary"]["sequences"] == 12
    assert info["config"]["hidden"] == 16
    assert json.loads((tmp_path / "adapter" / ADAPTER_CONFIG_NAME).read_text())["adapter_name"] == "default"
    with pytest.raises(ConfigError, match="frozen"):
        fit_residual(loaded, batch, QUICK, quiet=True)
    trainable = load_adapter(gru_model, tmp_path / "adapter", trainable=True)
    assert trainable.is_trainable("default") and trainable.trainable_parameters()


def test_trainable_must_be_given_explicitly(gru_model, tmp_path):
    attach_residual(gru_model).save_pretrained(tmp_path)
    with pytest.raises(TypeError):
        load_adapter(gru_model, tmp_path)  # type: ignore[call-arg]


def test_adapter_for_a_different_base_is_refused_with_both_fingerprints(gru_model, drift_spaces, tmp_path):
    attach_residual(gru_model).save_pretrained(tmp_path)
    torch.manual_seed(123)
    other = make_backbone("gru-v0", *drift_spaces)
    with pytest.raises(IncompatibleAdapterError) as error:
        load_adapter(other, tmp_path, trainable=False)
    assert fingerprint(gru_model) in str(error.value) and fingerprint(other) in str(error.value)


def test_different_latent_layout_is_refused(gru_model, drift_spaces, tmp_path):
    same = "sha256:" + "0" * 64  # one made-up base fingerprint for both, so only the layouts differ
    adapted = attach_residual(gru_model)
    adapted.base_fingerprint = same
    adapted.save_pretrained(tmp_path)
    other = ResidualWorldModel(make_backbone("gru-v0", *drift_spaces, groups=5))
    other.base_fingerprint = same
    with pytest.raises(IncompatibleAdapterError, match="latent"):
        other.load_adapter(tmp_path, trainable=False)


def test_zero_init_starts_equal_to_base_and_disable_restores_base(gru_model):
    batch = drift_sequences(0.1, episodes=2)
    base_logits = _prior_logits(gru_model, batch)
    adapted = attach_residual(gru_model, ResidualConfig(zero_init=True))
    assert torch.equal(_prior_logits(adapted, batch), base_logits)
    with torch.no_grad():
        adapted.residuals["default"].members[0][-1].bias.fill_(0.5)
    assert not torch.equal(_prior_logits(adapted, batch), base_logits)
    with adapted.disable_adapters():
        assert torch.equal(_prior_logits(adapted, batch), base_logits)


def test_replacement_mode_ignores_the_prior(gru_model):
    adapted = attach_residual(gru_model, ResidualConfig(mode="replacement", hidden=8))
    state = adapted.initial_state(3)
    state["stoch"][:, :, 0] = 1.0
    action = torch.zeros(3, 2)
    no_reset = torch.zeros(3, dtype=torch.bool)
    logits, _ = adapted.dynamics(state, action, no_reset)
    assert torch.allclose(logits, adapted.corrections(state, action).mean(0))
    first, _ = adapted.dynamics(state, action, torch.ones(3, dtype=torch.bool))
    base_first, _ = gru_model.dynamics(state, action, torch.ones(3, dtype=torch.bool))
    assert torch.equal(first, base_first)  # episode starts keep the base's initial distribution


def test_ensemble_uses_the_mean_of_member_corrections(gru_model):
    adapted = attach_residual(gru_model, ResidualConfig(members=4, hidden=8))
    state = adapted.initial_state(2)
    action = torch.ones(2, 2)
    no_reset = torch.zeros(2, dtype=torch.bool)
    members = adapted.corrections(state, action)
    assert members.shape == (4, 2, 4, 3)
    logits, _ = adapted.dynamics(state, action, no_reset)
    base, _ = gru_model.dynamics(state, action, no_reset)
    assert torch.allclose(logits, base + members.mean(0), atol=1e-6)


def _member_alone(base, adapted, member):
    """A one-member adapter holding ``adapted``'s member ``member``: that member's own model."""
    config = dataclasses.replace(adapted.adapter_configs["default"], members=1)
    alone = attach_residual(base, config)
    alone.residuals["default"].members[0].load_state_dict(adapted.residuals["default"].members[member].state_dict())
    return alone


def test_an_independent_ensemble_fits_each_member_on_its_own(gru_model):
    """``ensemble_fit="independent"``: the loss is the members' mean own KL, so a member's gradient does not
    depend on the others (it does when their mean is fitted), and after the fit each member alone beats the base."""
    target = drift_sequences(-0.1, episodes=20, seed=100)
    torch.manual_seed(0)
    adapted = attach_residual(gru_model, ResidualConfig(hidden=16, members=3, ensemble_fit="independent"))
    cache, idx = _Cache(adapted, target), torch.arange(6)
    alone = [_member_alone(gru_model, adapted, member) for member in range(3)]
    expected = torch.stack([cache.kl(model, idx, torch.Generator().manual_seed(0)) for model in alone]).mean()
    assert cache.member_kl(adapted, idx, torch.Generator().manual_seed(0)).item() == pytest.approx(expected.item())

    first, second = adapted.residuals["default"].members[:2]

    def first_member_gradient(loss):
        adapted.zero_grad()
        loss(adapted, idx, torch.Generator().manual_seed(0)).backward()
        return [parameter.grad.clone() for parameter in first.parameters()]

    for loss, independent in ((cache.member_kl, True), (cache.kl, False)):
        before = first_member_gradient(loss)
        saved = copy.deepcopy(second.state_dict())
        with torch.no_grad():
            for parameter in second.parameters():
                parameter.add_(0.5)
        after = first_member_gradient(loss)
        second.load_state_dict(saved)
        assert all(torch.allclose(b, a) for b, a in zip(before, after, strict=True)) is independent

    result = fit_residual(adapted, target, QUICK, quiet=True)
    _, held = _split(cache, QUICK.holdout)
    seed = QUICK.seed + 1
    for member in range(3):
        own = cache.held_out_kl(_member_alone(gru_model, adapted, member), held, seed)
        assert own < result.held_out_kl_base
    with pytest.raises(ConfigError, match="ensemble_fit must be one of mean, independent; got 'own'"):
        ResidualConfig(ensemble_fit="own")


def test_several_named_adapters_switch_save_and_load(gru_model, tmp_path):
    adapted = attach_residual(gru_model, ResidualConfig(hidden=8), adapter_name="windy")
    adapted.add_adapter("reversed", ResidualConfig(hidden=12, extra_inputs=("deter",)))
    assert adapted.active_adapter == "reversed"
    batch = drift_sequences(0.1, episodes=2)
    reversed_logits = _prior_logits(adapted, batch)
    adapted.set_adapter("windy")
    windy_logits = _prior_logits(adapted, batch)
    assert not torch.equal(reversed_logits, windy_logits)
    assert "adapter: windy" in adapted.trainable_parameter_report()
    written = adapted.save_pretrained(tmp_path)
    assert sorted(p.name for p in written) == ["reversed", "windy"]
    loaded = load_adapter(gru_model, tmp_path, trainable=False)
    assert sorted(loaded.adapters) == ["reversed", "windy"]
    loaded.set_adapter("windy")
    assert torch.equal(_prior_logits(loaded, batch), windy_logits)
    loaded.set_adapter("reversed")
    assert torch.equal(_prior_logits(loaded, batch), reversed_logits)
    with pytest.raises(NameNotFound, match="Did you mean"):
        loaded.set_adapter("reversd")
    loaded.delete_adapter("reversed")
    assert loaded.active_adapter is None and loaded.adapters == ["windy"]


def test_trainable_parameter_report_counts_only_the_adapter(gru_model):
    adapted = attach_residual(gru_model, ResidualConfig(hidden=10))
    in_size = 12 + 2
    expected = (in_size * 10 + 10) + 2 * 10 + (10 * 12 + 12)
    assert sum(p.numel() for p in adapted.trainable_parameters()) == expected
    assert f"trainable params: {expected:,}" in adapted.trainable_parameter_report()


def test_imagination_runs_under_the_adapter(gru_model):
    adapted = attach_residual(gru_model)
    start = adapted.initial_state(5)
    out = imagine(adapted, start, lambda f: torch.zeros(f.shape[0], 2), horizon=7)
    assert out["features"].shape == (5, 8, gru_model.feature_size)
    assert out["prior_logits"].shape == (5, 7, 4, 3)


def test_bad_configs_and_names_are_explained(gru_model):
    with pytest.raises(ConfigError, match="mode"):
        ResidualConfig(mode="additive")
    with pytest.raises(ConfigError, match="hidden"):
        ResidualConfig(hidden=0)
    with pytest.raises(ConfigError, match="belief"):
        attach_residual(gru_model, ResidualConfig(extra_inputs=("belief",)))
    with pytest.raises(ConfigError, match="add_adapter"):
        attach_residual(attach_residual(gru_model))


@pytest.fixture
def saved(gru_model, tmp_path):
    attach_residual(gru_model, ResidualConfig(hidden=8)).save_pretrained(tmp_path / "a")
    return tmp_path / "a" / ADAPTER_WEIGHTS_NAME


def test_truncated_file_is_reported_not_crashed(gru_model, saved):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) - 40])
    with pytest.raises(AdapterFileError, match="truncated"):
        load_adapter(gru_model, saved.parent, trainable=False)


def test_garbage_and_pickles_are_refused(gru_model, saved):
    saved.write_bytes(b"hello, this is not safetensors at all")
    with pytest.raises(AdapterFileError, match=str(saved)):
        load_adapter(gru_model, saved.parent, trainable=False)
    torch.save({"members.0.0.weight": torch.zeros(1)}, saved)
    with pytest.raises(AdapterFileError, match="never unpickles"):
        load_adapter(gru_model, saved.parent, trainable=False)
    saved.write_bytes(struct.pack("<Q", 5) + b"{bad}")
    with pytest.raises(AdapterFileError, match="not JSON"):
        load_adapter(gru_model, saved.parent, trainable=False)


def test_missing_adapter_and_foreign_safetensors_are_explained(gru_model, tmp_path):
    with pytest.raises(AdapterFileError, match="no adapter.safetensors"):
        load_adapter(gru_model, tmp_path, trainable=False)
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / ADAPTER_WEIGHTS_NAME))
    with pytest.raises(AdapterFileError, match="not a latent-residual adapter"):
        load_adapter(gru_model, tmp_path, trainable=False)


def test_keys_are_checked_strictly(gru_model, saved):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(saved), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(saved))
    tensors["members.0.extra"] = torch.zeros(1)
    del tensors["members.0.0.bias"]
    save_file(tensors, str(saved), metadata=metadata)
    with pytest.raises(AdapterFileError, match=r"missing keys \['members.0.0.bias'\].*unexpected keys"):
        load_adapter(gru_model, saved.parent, trainable=False)
