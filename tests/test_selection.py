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
    return [(s.fit, s.seed, s.update, s.imagined_return, s.disagreement, s.score) for s in selection.scores]


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


def test_with_several_fits_every_candidate_is_scored_in_every_fit_and_its_lowest_score_counts(adapted, gru_model):
    """A second fit (another seed's residual): candidates are trained in each, and a candidate's score is the
    worst of its scores in the two models, so one fit's error alone cannot carry a policy."""
    torch.manual_seed(7)
    other = attach_residual(gru_model, ResidualConfig(hidden=16))
    fit_residual(other, drift_sequences(-0.1, episodes=20, seed=100), FitConfig(steps=40, eval_every=20), quiet=True)
    data = drift_sequences(-0.1)
    selection = train_candidates([adapted, other], data, POLICY, SELECTION, ac_config=TINY_AC, quiet=True)
    assert [(s.fit, s.seed, s.update) for s in selection.scores] == [
        (fit, seed, update) for fit in (0, 1) for seed in (3, 4) for update in (2, 4)
    ]
    for s in selection.scores:
        assert len(s.scores_by_fit) == 2 and s.score == min(s.scores_by_fit)
        assert s.score == pytest.approx(s.imagined_return - 0.5 * s.disagreement)
    assert selection.chosen == max(range(8), key=lambda index: selection.scores[index].score)
    # Each fit's score is the one that model alone gives the candidate.
    for fit, model in enumerate((adapted, other)):
        imagined, spread = score_policy(
            model, selection.actor_critic, held_out_starts(model, data, SELECTION), SELECTION
        )
        assert selection.scores[selection.chosen].scores_by_fit[fit] == pytest.approx(imagined - 0.5 * spread)
    again = train_candidates([adapted, other], data, POLICY, SELECTION, ac_config=TINY_AC, quiet=True)
    assert [s.scores_by_fit for s in again.scores] == [s.scores_by_fit for s in selection.scores]


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


def test_compare_with_several_fits_keeps_each_and_the_chosen_policys_fit_in_the_row(pretrained, tmp_path):
    from latent_residual.workflow.cli.main import main

    pretrained_dir, _ = pretrained
    out = tmp_path / "run"
    tiny = ["--transitions", "300", "--seeds", "1", "--eval-episodes", "1", "--sequence-length", "8"]
    tiny += ["--episode-steps", "40", "--fit-steps", "4", "--fit-eval-every", "2", "--policy-steps", "2", "--jobs", "1"]
    args = ["compare", "--pretrained", str(pretrained_dir), *tiny, "--methods", "redraw", "--no-export"]
    assert main([*args, "--out", str(out), "--fits", "2"]) == 0
    row = json.loads((out / "results.json").read_text())["redraw@300/seed0"]
    run_dir = out / "runs" / "redraw-300-seed0"
    fits = [json.loads((where / "fit.json").read_text()) for where in (run_dir, run_dir / "fit1")]
    assert (run_dir / "fit1" / "adapter" / "adapter.safetensors").exists() and row["fits"] == fits
    candidates = row["selection"]["candidates"]
    assert [(c["fit"], c["seed"], c["update"]) for c in candidates] == [(0, 0, 2), (1, 0, 2)]
    assert row["fit"] == fits[candidates[row["selection"]["chosen"]]["fit"]]
    # Fit 0 is the fit of a run with one: the same seed, so the same held-out KL.
    assert main([*args, "--out", str(tmp_path / "one")]) == 0
    one = json.loads((tmp_path / "one" / "results.json").read_text())["redraw@300/seed0"]
    assert one["fit"]["held_out_kl_best"] == fits[0]["held_out_kl_best"] and "fits" not in one
    assert (out / "runs" / "redraw-300-seed0" / "selection.json").exists()


def test_train_policy_with_two_adapters_trains_in_each_and_adapt_is_seeded(pretrained, tmp_path):
    """Two fits made by `adapt --fit-seed`: the same seed gives the same adapter, and `train-policy` trains a
    candidate in each and records which fit the kept one came from."""
    from safetensors.torch import load_file

    from latent_residual.workflow.cli.main import main

    out, _ = pretrained
    model, data = ["--world-model", str(out / "world_model")], ["--data", str(out / "replay"), "--sequence-length", "8"]
    for name, seed in (("a", "0"), ("again", "0"), ("b", "1")):
        fit = ["--hidden", "16", "--fit-steps", "4", "--fit-eval-every", "2", "--fit-seed", seed]
        assert main(["adapt", *model, *data, *fit, "--out", str(tmp_path / name)]) == 0
    weights = [load_file(tmp_path / name / "adapter.safetensors") for name in ("a", "again", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert any(not torch.equal(weights[0][key], weights[2][key]) for key in weights[0])
    policy = tmp_path / "ac.safetensors"
    args = ["train-policy", *model, *data, "--adapter", str(tmp_path / "a"), "--adapter", str(tmp_path / "b")]
    args += ["--steps", "2", "--starts", "16", "--ac-hidden", "16", "--ac-horizon", "3", "--score-starts", "8"]
    assert main([*args, "--score-horizon", "4", "--out", str(policy)]) == 0
    record = json.loads((tmp_path / "ac.selection.json").read_text())
    assert [(c["fit"], c["seed"]) for c in record["candidates"]] == [(0, 0), (1, 0)]
    assert all(len(c["scores_by_fit"]) == 2 for c in record["candidates"])
