"""Offline policy selection: candidates scored in the corrected model from held-out reward-free data, the
disagreement of an independently fitted residual ensemble as a penalty, deterministic, blind to rewards."""

from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import torch
from conftest import TINY_AC, drift_sequences

from latent_residual import ConfigError, FitConfig, ResidualConfig, attach_residual, fit_residual
from latent_residual.workflow.training.policy_training import PolicyTrainConfig, _snapshot_updates, train_candidates
from latent_residual.workflow.training.selection import SelectionConfig, held_out_starts, score_policy

POLICY = PolicyTrainConfig(steps=4, starts=16, seed=3, candidates=2, snapshots=2)
SELECTION = SelectionConfig(score_starts=24, score_horizon=6, score_penalty=0.5)


@pytest.fixture(scope="module")
def adapted(gru_model):
    """A two-member residual, each member fitted briefly on drift data of another gain (the target)."""
    model = attach_residual(gru_model, ResidualConfig(hidden=16, members=2, ensemble_fit="independent"))
    fit_residual(model, drift_sequences(-0.1, episodes=20, seed=100), FitConfig(steps=150, eval_every=25), quiet=True)
    return model


def _scores(selection):
    return [(s.seed, s.update, s.imagined_return, s.disagreement, s.score) for s in selection.scores]


def test_selection_scores_every_candidate_and_picks_the_best(adapted):
    selection = train_candidates(adapted, drift_sequences(-0.1), POLICY, SELECTION, ac_config=TINY_AC, quiet=True)
    assert [(s.seed, s.update) for s in selection.scores] == [(3, 2), (3, 4), (4, 2), (4, 4)]
    best = max(s.score for s in selection.scores)
    assert selection.scores[selection.chosen].score == best
    for s in selection.scores:
        assert s.disagreement > 0.0  # two members that were initialised apart
        assert s.score == pytest.approx(s.imagined_return - 0.5 * s.disagreement)
    # The returned actor-critic is the chosen snapshot: scoring it again gives its score.
    starts = held_out_starts(adapted, drift_sequences(-0.1), SELECTION)
    imagined, spread = score_policy(adapted, selection.actor_critic, starts, SELECTION)
    assert (imagined, spread) == pytest.approx(
        (selection.scores[selection.chosen].imagined_return, selection.scores[selection.chosen].disagreement)
    )
    record = selection.to_dict()
    assert record["chosen"] == selection.chosen and len(record["candidates"]) == 4 and record["criterion"]


def test_selection_is_deterministic_and_reads_no_reward(adapted):
    data = drift_sequences(-0.1)
    first = train_candidates(adapted, data, POLICY, SELECTION, ac_config=TINY_AC, quiet=True)
    again = train_candidates(adapted, data, POLICY, SELECTION, ac_config=TINY_AC, quiet=True)
    assert _scores(first) == _scores(again) and first.chosen == again.chosen
    # Rewards that are garbage, or no rewards at all, change nothing.
    poisoned = {**data, "reward": torch.full_like(data["reward"], float("nan"))}
    without = {key: value for key, value in data.items() if key != "reward"}
    for variant in (poisoned, without):
        other = train_candidates(adapted, variant, POLICY, SELECTION, ac_config=TINY_AC, quiet=True)
        assert _scores(other) == _scores(first)


def test_a_single_member_residual_has_no_disagreement(gru_model):
    model = attach_residual(gru_model, ResidualConfig(hidden=16))
    selection = train_candidates(
        model,
        drift_sequences(-0.1),
        PolicyTrainConfig(steps=4, starts=16, seed=3),
        SelectionConfig(score_starts=8, score_horizon=3),
        ac_config=TINY_AC,
        quiet=True,
    )
    assert [s.disagreement for s in selection.scores] == [0.0]
    assert selection.scores[0].update == 4


def test_an_ensemble_fitted_through_its_mean_adds_no_disagreement(adapted):
    """Its members split one correction, so their disagreement says nothing of the data: the score is the
    imagined return alone; the same members read as independently fitted are penalised."""
    mean_fit = copy.deepcopy(adapted)
    mean_fit.adapter_configs["default"] = dataclasses.replace(mean_fit.adapter_configs["default"], ensemble_fit="mean")
    starts = held_out_starts(adapted, drift_sequences(-0.1), SELECTION)
    actor_critic = train_candidates(adapted, drift_sequences(-0.1), POLICY, SELECTION, ac_config=TINY_AC, quiet=True)
    imagined, spread = score_policy(adapted, actor_critic.actor_critic, starts, SELECTION)
    assert spread > 0.0
    assert score_policy(mean_fit, actor_critic.actor_critic, starts, SELECTION) == pytest.approx((imagined, 0.0))


def test_snapshots_are_evenly_spaced_and_end_at_the_last_update():
    assert _snapshot_updates(1500, 3) == [500, 1000, 1500]
    assert _snapshot_updates(2, 5) == [1, 2]


@pytest.mark.parametrize(
    ("config", "field", "value"),
    [
        (PolicyTrainConfig, "candidates", 0),
        (PolicyTrainConfig, "snapshots", 0),
        (SelectionConfig, "score_horizon", 0),
        (SelectionConfig, "score_holdout", 1.0),
        (SelectionConfig, "score_penalty", -1.0),
    ],
)
def test_bad_selection_settings_name_the_field(config, field, value):
    with pytest.raises(ConfigError, match=f"{config.__name__}.{field}"):
        config(**{field: value})


def test_train_policy_command_keeps_the_chosen_candidate_and_writes_every_score(pretrained, tmp_path, capsys):
    from latent_residual.actor_critic import load_actor_critic
    from latent_residual.workflow.cli.main import main

    out, _ = pretrained
    policy = tmp_path / "ac.safetensors"
    args = ["train-policy", "--world-model", str(out / "world_model"), "--data", str(out / "replay")]
    args += ["--sequence-length", "8", "--steps", "2", "--starts", "16", "--ac-hidden", "16", "--ac-horizon", "3"]
    args += ["--candidates", "2", "--score-starts", "8", "--score-horizon", "4", "--out", str(policy)]
    assert main(args) == 0
    record = json.loads((tmp_path / "ac.selection.json").read_text())
    assert [(c["seed"], c["update"]) for c in record["candidates"]] == [(0, 2), (1, 2)]
    chosen = record["candidates"][record["chosen"]]
    assert chosen["score"] == max(c["score"] for c in record["candidates"])
    assert load_actor_critic(policy).feature_size > 0


def test_compare_chooses_each_cells_policy_among_candidates_and_records_the_scores(pretrained, tmp_path):
    from latent_residual.workflow.cli.main import main

    pretrained_dir, _ = pretrained
    out = tmp_path / "run"
    tiny = ["--transitions", "300", "--seeds", "1", "--eval-episodes", "1", "--sequence-length", "8"]
    tiny += ["--episode-steps", "40", "--fit-steps", "4", "--fit-eval-every", "2", "--policy-steps", "2", "--jobs", "1"]
    select = ["--methods", "redraw", "--policy-candidates", "2", "--policy-snapshots", "2", "--no-export"]
    assert main(["compare", "--pretrained", str(pretrained_dir), "--out", str(out), *tiny, *select]) == 0
    results = json.loads((out / "results.json").read_text())
    row = results["redraw@300/seed0"]
    assert [(c["seed"], c["update"]) for c in row["selection"]["candidates"]] == [(0, 1), (0, 2), (1, 1), (1, 2)]
    assert results["settings"]["policy"]["candidates"] == 2
    assert (out / "runs" / "redraw-300-seed0" / "selection.json").exists()
