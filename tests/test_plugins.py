"""The plugin registry: a third-party plugin through entry points, broken plugins, the filter variable."""

from __future__ import annotations

import sys

import gymnasium
import pytest
import torch
from conftest import make_distribution

import latent_residual
from latent_residual import NameNotFound, RegistrationError
from latent_residual.contract import WorldModel
from latent_residual.registry import plugins


def test_third_party_backbone_and_env_are_listed_and_usable(registry):
    backbones = {spec.id: spec for spec in latent_residual.list_backbones()}
    envs = {spec.id: spec for spec in latent_residual.list_envs()}
    assert backbones["gru-v0"].package == "lr-testplugin" and backbones["gru-v0"].version == "0.3.0"
    assert envs["testplug/drift-v0"].plugin == "testplugin" and envs["testplug/drift-v0"].namespace == "testplug"
    env = latent_residual.make_env("testplug/drift-v0")
    obs, _ = env.reset(seed=0)
    assert obs["position"].shape == (2,)
    assert gymnasium.make("testplug/drift-v0").spec.max_episode_steps == 40
    model = latent_residual.make_backbone("gru-v0", env.observation_space, env.action_space, deter=8)
    assert isinstance(model, WorldModel)
    assert model.backbone_id == "gru-v0" and model.backbone_kwargs == {"deter": 8}
    info = {p.name: p for p in latent_residual.list_plugins()}
    assert not info["testplugin"].builtin and not info["testplugin"].broken


def test_builtins_register_through_the_same_entry_points(registry):
    info = {p.name: p for p in latent_residual.list_plugins()}
    for name in ("draw", "dmc", "duckiebot"):
        assert info[name].builtin and info[name].package == "latent-residual"


def test_unknown_names_suggest_the_closest_match(registry):
    with pytest.raises(NameNotFound, match='Did you mean "gru-v0"'):
        latent_residual.backbone_spec("gru-v1")
    with pytest.raises(NameNotFound, match="latent-residual plugins"):
        latent_residual.make_env("nowhere/nothing-v0")


BROKEN_IMPORT = "raise ImportError('missing dependency: pretend-lib')\n"
BROKEN_HOOK = """
from latent_residual import hookimpl

@hookimpl
def register_envs(register):
    register("hooky/first-v0", "lr_testplugin.drift:DriftEnv")
    raise RuntimeError("half-way failure")
"""
DUPLICATE = """
from latent_residual import hookimpl

@hookimpl
def register_backbones(register):
    register("gru-v0", "lr_testplugin.gru:GRUWorldModel")
"""


@pytest.fixture
def extra_site(tmp_path, fresh_registry):
    make_distribution(
        tmp_path, "lr-broken-import", "1.0", {"brokenimport": "lr_broken_import"}, {"lr_broken_import": BROKEN_IMPORT}
    )
    make_distribution(
        tmp_path, "lr-broken-hook", "2.0", {"brokenhook": "lr_broken_hook"}, {"lr_broken_hook": BROKEN_HOOK}
    )
    make_distribution(tmp_path, "lr-duplicate", "0.1", {"duplicate": "lr_duplicate"}, {"lr_duplicate": DUPLICATE})
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for module in ("lr_broken_import", "lr_broken_hook", "lr_duplicate"):
        sys.modules.pop(module, None)


def test_broken_plugins_are_listed_with_their_error_and_skipped(extra_site, capsys):
    info = {p.name: p for p in latent_residual.list_plugins()}
    assert "pretend-lib" in info["brokenimport"].error and info["brokenimport"].version == "1.0"
    assert "half-way failure" in info["brokenhook"].error
    # A plugin that failed half-way registers nothing at all.
    assert "hooky/first-v0" not in {spec.id for spec in latent_residual.list_envs()}
    # The healthy plugins still work.
    assert "gru-v0" in {spec.id for spec in latent_residual.list_backbones()}
    assert "was skipped" in capsys.readouterr().err


def test_duplicate_registration_is_an_error_for_the_second_plugin(extra_site):
    info = {p.name: p for p in latent_residual.list_plugins()}
    duplicate, original = info["duplicate"], info["testplugin"]
    # Entry points load in discovery order: whichever came second is the broken one.
    assert (duplicate.broken and "already registered" in duplicate.error) or (
        original.broken and "already registered" in original.error
    )


def test_environment_variable_limits_third_party_plugins(extra_site, monkeypatch):
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "lr-testplugin")
    names = {p.name for p in latent_residual.list_plugins()}
    assert {"testplugin", "draw", "dmc", "duckiebot"} <= names
    assert not names & {"brokenimport", "brokenhook", "duplicate"}


def test_empty_environment_variable_loads_only_builtins(extra_site, monkeypatch):
    monkeypatch.setenv(plugins.LOAD_PLUGINS_ENV, "")
    assert all(p.builtin for p in latent_residual.list_plugins())


def test_runtime_registration_and_override(fresh_registry):
    class Plugin:
        @latent_residual.hookimpl
        def register_backbones(self, register):
            register("gru-v0", "lr_testplugin.gru:GRUWorldModel", override=True, description="override")

    info = plugins.register(Plugin(), "runtime")
    assert not info.broken
    assert latent_residual.backbone_spec("gru-v0").description == "override"


def test_malformed_ids_are_rejected(fresh_registry):
    class Plugin:
        @latent_residual.hookimpl
        def register_envs(self, register):
            register("no-namespace-v0", "lr_testplugin.drift:DriftEnv")

    info = plugins.register(Plugin(), "malformed")
    assert info.broken and "namespace/name-vN" in info.error


def test_backbone_must_return_a_world_model(fresh_registry):
    class Plugin:
        @latent_residual.hookimpl
        def register_backbones(self, register):
            register("notamodel-v0", lambda obs, act: torch.nn.Linear(1, 1))

    plugins.register(Plugin(), "notamodel")
    space = gymnasium.spaces.Box(-1, 1, (1,))
    with pytest.raises(RegistrationError, match="expected a latent_residual.WorldModel"):
        latent_residual.make_backbone("notamodel-v0", space, space)


def test_import_loads_no_heavy_module_and_registers_envs_with_gymnasium():
    import subprocess

    code = (
        "import sys, gymnasium, latent_residual\n"
        "print(sorted(m for m in ('torch', 'mujoco', 'onnx', 'dm_control') if m in sys.modules))\n"
        "print(gymnasium.spec('dmc/pendulum-swingup-v0').id)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.splitlines() == ["[]", "dmc/pendulum-swingup-v0"]


def test_importing_a_plugin_submodule_first_still_registers_it():
    import subprocess

    code = (
        "import latent_residual_plugins.dmc.targets\n"
        "import latent_residual\n"
        "print(latent_residual.env_spec('dmc/cup-catch-windy-v0').plugin)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120).stdout
    assert out.strip() == "dmc"


def test_sources_declare_target_backbone_pretrained_default_and_recommendations(registry):
    """What demo and compare need comes from the registrations, not from names in the core."""
    from latent_residual.registry.lookup import (
        backbone_preset,
        demo_env,
        env_pretrained,
        source_backbone,
        source_target,
    )

    assert demo_env().id == "dmc/pendulum-swingup-v0"
    assert source_target("dmc/cup-catch-v0") == "dmc/cup-catch-windy-v0"
    assert source_target("duckiebot/lane-following-v0") == "duckiebot/lane-following-real-v0"
    assert source_backbone("duckiebot/lane-following-v0") == "draw-v0"
    assert env_pretrained("duckiebot/lane-following-v0").name == "lane-following"
    assert backbone_preset("draw-v0", "cpu")["groups"] == 32
    with pytest.raises(latent_residual.ConfigError, match=r"no preset 'cpus'.*Did you mean \"cpu\""):
        backbone_preset("draw-v0", "cpus")
    with pytest.raises(latent_residual.ConfigError, match="registers no target"):
        source_target("dmc/cup-catch-windy-v0")


def test_pretrain_config_resolves_the_environment_backbone_and_preset(registry):
    from latent_residual.workflow.training.pretraining import PretrainConfig

    config = PretrainConfig(backbone_preset="cpu", backbone_kwargs={"hidden": 64}).resolved()
    assert (config.env_id, config.backbone, config.backbone_preset) == ("dmc/pendulum-swingup-v0", "draw-v0", "")
    assert config.backbone_kwargs["groups"] == 32 and config.backbone_kwargs["hidden"] == 64


def test_adaptation_methods_are_registered_entries(registry):
    ids = [spec.id for spec in latent_residual.list_methods()]
    assert {"redraw", "replacement", "finetune", "zero-shot", "testplug-zero-start"} <= set(ids)
    assert latent_residual.make_method("zero-shot").uses_target_data is False
    assert {spec.plugin for spec in latent_residual.list_methods() if spec.id == "redraw"} == {"methods"}


def test_override_covers_only_the_registration_that_asks_for_it(fresh_registry):
    class Plugin:
        @latent_residual.hookimpl
        def register_backbones(self, register):
            register("gru-v0", "lr_testplugin.gru:GRUWorldModel", override=True, description="override")

        @latent_residual.hookimpl
        def register_envs(self, register):
            register("dmc/cup-catch-v0", "lr_testplugin.drift:DriftEnv")

    info = plugins.register(Plugin(), "runtime")
    assert info.broken and "dmc/cup-catch-v0" in info.error
    assert latent_residual.backbone_spec("gru-v0").description != "override"


def test_recommended_settings_apply_per_backbone():
    from latent_residual import ExperimentDefaults
    from latent_residual.registry.specs import EnvSpec

    spec = EnvSpec(
        "lab/arm-v0",
        "lab.arm:Arm",
        backbone="draw-v0",
        recommended={
            "*": ExperimentDefaults(methods={"fit": {"steps": 10}}),
            "draw-v0": ExperimentDefaults(methods={"residual": {"extra_inputs": ["belief"]}}),
            "rssm-v0": ExperimentDefaults(methods={"fit": {"steps": 20}}),
        },
    )
    assert spec.recommended_for(None).settings() == {
        ("methods", "fit", "steps"): 10,
        ("methods", "residual", "extra_inputs"): ("belief",),
    }
    assert spec.recommended_for("rssm-v0").settings() == {("methods", "fit", "steps"): 20}
    assert spec.recommended_for("other-v0").settings() == {("methods", "fit", "steps"): 10}
    with pytest.raises(RegistrationError, match=r"^Environment 'lab/arm-v0': recommended\['rssm-v0'\] must be an Exp"):
        EnvSpec("lab/arm-v0", "lab.arm:Arm", recommended={"rssm-v0": {"residual_extra_inputs": ["deter"]}})
    with pytest.raises(RegistrationError, match=r"recommended\['rssm'\] names no backbone id"):
        EnvSpec("lab/arm-v0", "lab.arm:Arm", recommended={"rssm": ExperimentDefaults()})


def test_a_recipe_is_one_or_one_per_backbone():
    from latent_residual.registry.specs import EnvSpec

    plan = {"data_plan": (("random", 0.0, 100),)}
    assert EnvSpec("lab/arm-v0", "lab.arm:Arm", recipe={"draw-v0": plan, "rssm-v0": plan}).recipe["rssm-v0"] == plan
    for recipe in ({"model_updates": 5}, {"draw-v0": plan, "rssm-v0": {"model_updates": 5}}, {"draw-v0": 3}, "x"):
        with pytest.raises(RegistrationError, match=r"^Environment 'lab/arm-v0': recipe=.* or a dict from backbone id"):
            EnvSpec("lab/arm-v0", "lab.arm:Arm", recipe=recipe)


def test_a_recommended_setting_that_names_no_field_is_one_line_naming_the_env_and_the_field(registry):
    """Recommendations name config fields, not flags; a wrong one fails before the run, saying which."""
    from latent_residual import ExperimentDefaults
    from latent_residual.registry.specs import EnvSpec
    from latent_residual.workflow.adaptation.groups import MethodSettingGroups
    from latent_residual.workflow.experiments.defaults import check_defaults

    groups = MethodSettingGroups()
    for spec in latent_residual.list_envs():  # every shipped recommendation names real fields
        for defaults in spec.recommended.values():
            check_defaults(defaults, groups, f"Environment {spec.id!r} recommends", RegistrationError)
    spec = EnvSpec(
        "lab/arm-v0", "lab.arm:Arm", recommended=ExperimentDefaults(methods={"residual": {"extra_input": ()}})
    )
    with pytest.raises(RegistrationError) as caught:
        check_defaults(spec.recommended_for(None), groups, f"Environment {spec.id!r} recommends", RegistrationError)
    assert str(caught.value) == (
        "Environment 'lab/arm-v0' recommends methods.residual.extra_input, which is no field of ResidualConfig to set. "
        'Did you mean "extra_inputs"?'
    )
    with pytest.raises(RegistrationError, match=r"policy\.step, which is no field of PolicyTrainConfig"):
        check_defaults(ExperimentDefaults(policy={"step": 1}), groups, "x", RegistrationError)
    with pytest.raises(RegistrationError, match=r"methods\.residal\.hidden, but no registered method reads"):
        check_defaults(ExperimentDefaults(methods={"residal": {"hidden": 1}}), groups, "x", RegistrationError)


def test_a_method_registers_its_config_dataclass_and_its_settings_make_groups(registry):
    """register(id, entry_point, config=...): a dataclass (or 'module:attr'); nested configs are groups of settings
    shared by every method with that field, a method's other fields a group named after it."""
    from dataclasses import dataclass, field

    from latent_residual.fitting import FinetuneConfig, FitConfig
    from latent_residual.registry.specs import MethodSpec
    from latent_residual.workflow.adaptation.groups import MethodSettingGroups

    with pytest.raises(RegistrationError, match=r"^Method 'lab-x': config=.* must be a dataclass\.$"):
        MethodSpec("lab-x", "lab.x:X", config=dict)
    with pytest.raises(RegistrationError, match="must be a class or 'module:attr'"):
        MethodSpec("lab-x", "lab.x:X", config="lab.x.Config")
    assert latent_residual.method_config("finetune") == FinetuneConfig() and FinetuneConfig().lr == 1e-4
    assert latent_residual.method_config("zero-shot") is None

    groups = MethodSettingGroups()
    assert groups.groups["fit"].methods == ("redraw", "replacement", "testplug-narrow", "testplug-zero-start")
    assert "mode" not in groups.groups["residual"].fields  # the method sets it
    assert groups.groups["testplug-narrow"].fields == ("width",)
    narrow = groups.config("testplug-narrow", {"testplug-narrow": groups.groups["testplug-narrow"].default})
    assert narrow.width == 32 and narrow.fit == FitConfig()

    @dataclass
    class Clashing:
        fit: FitConfig = field(default_factory=lambda: FitConfig(steps=5))  # `fit`, but not ReDRAW's

    class Plugin:
        @latent_residual.hookimpl
        def register_methods(self, register):
            register("lab-clash", "lr_testplugin.methods:ZeroStartResidual", config=Clashing)

    plugins.register(Plugin(), "clash")
    try:
        groups = MethodSettingGroups()
        with pytest.raises(latent_residual.ConfigError, match=r"^Method 'lab-clash' cannot be configured: .*'fit'"):
            groups.config("lab-clash", {})
        assert groups.groups["fit"].default == FitConfig()
    finally:
        plugins.unload_plugins()
        plugins.load_plugins()
