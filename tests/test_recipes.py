"""Source recipes: a registered recipe builds a source model with the library's own command, and bad recipes
are refused before any data is collected."""

from __future__ import annotations

import json

import pytest
from conftest import TINY_AC

from latent_residual.errors import ConfigError, NameNotFound
from latent_residual.workflow.cli.main import main
from latent_residual.workflow.training import recipes
from latent_residual.workflow.training.recipes import DataStep, SourceRecipe, build_source, source_recipe

TINY_RECIPE = dict(
    data_plan=(("expert", 0.3, 150), ("random", 0.0, 250)),
    backbone_kwargs={"preset": "tiny"},
    actor_critic={"hidden": TINY_AC.hidden, "layers": TINY_AC.layers, "horizon": TINY_AC.horizon},
    batch_size=4,
    seq_len=8,
    model_updates=3,
    policy_updates=2,
    policy_starts=16,
    policy_seq_len=8,
)


def test_the_registered_recipes_of_the_sources_with_an_expert(registry):
    for source in ("dmc/pendulum-swingup-v0", "dmc/reacher-easy-v0", "dmc/finger-turn-hard-v0"):
        recipe = source_recipe(source)
        assert recipe.data_plan[0] == DataStep("expert", 0.3, 30_000) and recipe.backbone == "draw-v0"
    assert source_recipe("dmc/reacher-easy-v0", model_updates=7).model_updates == 7
    with pytest.raises(NameNotFound, match="'dmc/finger-spin-v0' has no source recipe"):
        source_recipe("dmc/finger-spin-v0")
    # The cup has no expert: random actions, then the policy's rounds.
    assert [step.behaviour for step in source_recipe("dmc/cup-catch-v0").data_plan][:2] == ["random", "policy"]
    with pytest.raises(NameNotFound, match="no source recipe for backbone 'rssm-v0'.*registered one for 'draw-v0'"):
        source_recipe("dmc/pendulum-swingup-v0", "rssm-v0")


def test_a_recipe_per_backbone_is_picked_by_the_backbone(registry):
    # The Duckiebot twin registers one recipe per backbone, as it ships one model per backbone.
    assert source_recipe("duckiebot/lane-following-v0").backbone == "draw-v0"
    rssm = source_recipe("duckiebot/lane-following-v0", "rssm-v0", model_updates=5)
    assert rssm.backbone == "rssm-v0" and rssm.seq_len == 16 and rssm.model_updates == 5
    with pytest.raises(NameNotFound, match=r"no source recipe for backbone 'nope'.*\['draw-v0', 'rssm-v0'\]"):
        source_recipe("duckiebot/lane-following-v0", "nope")


def test_a_bad_recipe_is_refused_before_any_work():
    with pytest.raises(ConfigError, match="data_plan"):
        SourceRecipe(data_plan=(("scripted", 0.3, 100),))
    with pytest.raises(ConfigError, match="must exceed"):
        SourceRecipe(data_plan=(("expert", 0.3, 100), ("random", 0.0, 100)))
    with pytest.raises(ConfigError, match=r"workers \(3\) must be >= 1 and divide batch_size \(32\)"):
        SourceRecipe(data_plan=(("expert", 0.3, 100),), workers=3)
    with pytest.raises(TypeError, match="hiddn"):
        SourceRecipe(data_plan=(("expert", 0.3, 100),), actor_critic={"hiddn": 3})
    # The first policy needs data to be trained on, and a policy round's training is only its own.
    for plan in ((("policy", 0.3, 100),), (("expert", 0.3, 100), ("policy", 0.3, 200), ("random", 0.0, 300))):
        with pytest.raises(ConfigError, match="'policy' steps come last, after at least one 'expert' or 'random'"):
            SourceRecipe(data_plan=plan)
    with pytest.raises(ConfigError, match="round_model_updates, round_policy_updates and policy_starts must be >= 1"):
        SourceRecipe(data_plan=(("expert", 0.3, 100),), round_model_updates=0)


def test_build_source_collects_the_plan_trains_and_records_provenance(registry, tmp_path):
    # Two workers share every world-model and policy update (each rank checks that it ends with rank 0's networks).
    recipe = SourceRecipe(**TINY_RECIPE, workers=2)
    provenance = build_source("dmc/reacher-easy-v0", tmp_path / "src", recipe=recipe, quiet=True, say=lambda _: None)
    assert (tmp_path / "src" / "world_model" / "model.safetensors").exists()
    assert (tmp_path / "src" / "actor_critic.safetensors").exists()
    data = json.loads((tmp_path / "src" / "sim_data" / "dataset.json").read_text())
    assert data["transitions"] == 250
    written = json.loads((tmp_path / "src" / "provenance.json").read_text())
    assert written == provenance
    assert written["recipe"]["workers"] == 2
    assert written["recipe"]["model_updates"] == 3 and written["simulation_policy_in_simulation"]["episodes"] == 10
    # The built directory is a source a comparison starts from.
    from latent_residual import load_world_model

    assert load_world_model(tmp_path / "src" / "world_model").action_space.shape == (2,)
    assert [(point["transitions"], point["seed"]) for point in written["learning_curve"]] == [(250, 20_000)]
    assert written["kept_round"] == 0 and written["simulation_policy_in_simulation"]["seed"] == 10_000


def test_a_policy_round_collects_with_the_policy_and_trains_both_further(registry, tmp_path, monkeypatch):
    monkeypatch.setattr(recipes, "EVAL_EPISODES", 2)  # two builds of four scores each, in 500-step episodes
    plan = (*TINY_RECIPE["data_plan"], ("policy", 0.3, 300), ("policy", 0.0, 340))
    recipe = SourceRecipe(**{**TINY_RECIPE, "data_plan": plan}, round_model_updates=2, round_policy_updates=1)
    provenance = build_source("dmc/reacher-easy-v0", tmp_path / "src", recipe=recipe, quiet=True, say=lambda _: None)
    data = json.loads((tmp_path / "src" / "sim_data" / "dataset.json").read_text())
    assert data["transitions"] == 340
    assert [(session["behaviour"], session["noise"]) for session in data["resumes"][-2:]] == [
        ("Policy", 0.3),
        ("Policy", 0.0),
    ]
    curve = provenance["learning_curve"]
    assert [point["transitions"] for point in curve] == [250, 300, 340]
    # The kept round is the best on the choosing episodes (the first of equals), reported on other episodes.
    returns = [point["return_mean"] for point in curve]
    assert provenance["kept_round"] == returns.index(max(returns))
    reported = provenance["simulation_policy_in_simulation"]
    assert reported["seed"] == 10_000 and reported["transitions"] == curve[provenance["kept_round"]]["transitions"]
    saved = json.loads((tmp_path / "src" / "world_model" / "model_config.json").read_text())
    assert saved["extra"] == {"model_updates": 3 + 2 * provenance["kept_round"], "round": provenance["kept_round"]}
    # Each round trained both parts further, logging under its own directory.
    for number in (1, 2):
        assert (tmp_path / "src" / "logs" / f"round{number}" / "world_model" / "metrics.csv").exists()
        assert (tmp_path / "src" / "logs" / f"round{number}" / "policy" / "metrics.csv").exists()
    # Built again on the same, complete data directory (a build resumed after its rounds had collected): each
    # stage trains on its own share of the data, so the builds agree.
    again = build_source(
        "dmc/reacher-easy-v0", tmp_path / "again", recipe=recipe, data_dir=tmp_path / "src" / "sim_data", quiet=True,
        say=lambda _: None,
    )  # fmt: skip
    assert again["learning_curve"] == curve


def test_build_source_without_a_recipe_is_one_line(registry, tmp_path, capsys):
    assert main(["build-source", "dmc/finger-spin-v0", "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "has no source recipe" in err
    assert not (tmp_path / "x").exists()
    nope = ["--backbone", "nope", "--out", str(tmp_path / "x")]
    assert main(["build-source", "duckiebot/lane-following-v0", *nope]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no source recipe for backbone 'nope'" in err
    assert not (tmp_path / "x").exists()


def test_build_source_by_another_environments_recipe(registry, tmp_path, capsys, monkeypatch):
    """--recipe-of builds ENV_ID by another environment's recipe and records the flag; a plan that needs an
    expert the environment lacks is one line before anything is written."""
    out = str(tmp_path / "x")
    assert main(["build-source", "dmc/cup-catch-windy-v0", "--recipe-of", "dmc/pendulum-swingup-v0", "--out", out]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'dmc/cup-catch-windy-v0' has no expert" in err
    assert not (tmp_path / "x").exists()
    seen = {}

    def record(env_id, out, *, recipe, command, **kwargs):
        seen.update(env_id=env_id, recipe=recipe, command=command)
        return {"simulation_policy_in_simulation": {"return_mean": 1.0, "return_std": 0.0, "episodes": 1}, "seconds": 0}

    monkeypatch.setattr("latent_residual.workflow.cli.commands.build_source", record)
    assert main(["build-source", "dmc/cup-catch-windy-v0", "--recipe-of", "dmc/cup-catch-v0", "--out", out]) == 0
    assert seen["env_id"] == "dmc/cup-catch-windy-v0" and seen["recipe"] == source_recipe("dmc/cup-catch-v0")
    assert "--recipe-of dmc/cup-catch-v0" in seen["command"]
