"""The experiment end to end on tiny settings: every stage, every method, the table, ONNX, resuming."""

from __future__ import annotations

import json

import pytest

from latent_residual.errors import ConfigError
from latent_residual.fitting import FinetuneConfig, FitConfig
from latent_residual.residual import ResidualConfig
from latent_residual.workflow.adaptation.residual import ResidualMethodConfig
from latent_residual.workflow.cli.main import main
from latent_residual.workflow.experiments.experiment import ExperimentConfig, run_experiment
from latent_residual.workflow.reports.diagnose import fit_curves
from latent_residual.workflow.reports.tables import comparison_table
from latent_residual.workflow.training.policy_training import PolicyTrainConfig

TINY = dict(
    transitions=(300, 600),
    methods=("redraw", "finetune", "replacement"),
    seeds=1,
    eval_episodes=1,
    sequence_length=8,
    episode_steps=40,
)


def _method_configs(residual=None, steps=10, eval_every=5):
    """Tiny configs of the built-in methods (ReDRAW's shared by the replacement ablation, as on the command line)."""
    redraw = ResidualMethodConfig(residual or ResidualConfig(hidden=16), FitConfig(steps=steps, eval_every=eval_every))
    finetune = FinetuneConfig(steps=steps, eval_every=eval_every)
    return {"redraw": redraw, "replacement": redraw, "finetune": finetune, "dreamer-finetune": finetune}


def _run(pretrained_dir, out, lines, residual_config=None, **config):
    return run_experiment(
        ExperimentConfig(pretrained=str(pretrained_dir), **{**TINY, **config}),
        out,
        method_configs=_method_configs(residual_config),
        policy_config=PolicyTrainConfig(steps=3, starts=32),
        quiet=True,
        say=lines.append,
    )


def test_every_stage_runs_and_a_rerun_resumes(pretrained, tmp_path):
    pretrained_dir, _ = pretrained
    lines: list[str] = []
    results = _run(pretrained_dir, tmp_path, lines)
    for key in ("sim-policy@source", "zero-shot", "onnx"):
        assert key in results
    for method in ("redraw", "finetune", "replacement"):
        for size in (300, 600):
            row = results[f"{method}@{size}/seed0"]
            assert row["episodes"] == 1 and row["lengths"] == [40]
            assert row["fit"]["held_out_kl_best"] <= row["fit"]["held_out_kl_base"] + 1e-9
    assert results["onnx_max_abs_diff"] <= 1e-4
    assert (tmp_path / "onnx" / "policy.onnx").exists()
    assert (tmp_path / "runs" / "redraw-600-seed0" / "adapter" / "adapter.safetensors").exists()
    assert (tmp_path / "runs" / "finetune-600-seed0" / "world_model" / "model.safetensors").exists()
    # diagnose --adapter on a run's adapter finds the fit's curves beside it.
    assert fit_curves(tmp_path / "runs" / "redraw-600-seed0" / "adapter")["held_out_kl"]
    info = json.loads((tmp_path / "target_data" / "dataset.json").read_text())
    assert info["transitions"] == 600 and info["provenance"]["reward_used"] is False
    table = (tmp_path / "results.md").read_text()
    assert "| redraw | 600 | 1 |" in table and "| zero-shot |" in table
    assert any(line.startswith("[6/6]") for line in lines)

    stamp = (tmp_path / "runs" / "redraw-300-seed0" / "fit.json").stat().st_mtime_ns
    again = _run(pretrained_dir, tmp_path, [])
    assert (tmp_path / "runs" / "redraw-300-seed0" / "fit.json").stat().st_mtime_ns == stamp
    assert again["redraw@300/seed0"] == results["redraw@300/seed0"]

    # Other settings in the same directory would silently reuse the kept stages: refused, nothing rerun.
    with pytest.raises(ConfigError, match=r"methods.redraw.residual.extra_inputs \(\[\] -> \['belief'\]\).*new --out"):
        _run(pretrained_dir, tmp_path, [], ResidualConfig(hidden=16, extra_inputs=("belief",)))
    assert (tmp_path / "runs" / "redraw-300-seed0" / "fit.json").stat().st_mtime_ns == stamp


def _without_seconds(row):
    return {**row, "fit": {key: value for key, value in row["fit"].items() if key != "seconds"}}


def _tensors(path):
    from safetensors.torch import load_file

    return load_file(path)


def test_cells_in_two_workers_give_what_one_process_gives_cell_by_cell(pretrained, tmp_path):
    """--jobs 2 runs the (method, size, seed) cells in worker processes: the same rows, the same weights."""
    pretrained_dir, _ = pretrained
    cells = dict(methods=("redraw", "finetune"), transitions=(300,), seeds=2, export=False)
    lines: list[str] = []
    one = _run(pretrained_dir, tmp_path / "one", [], jobs=1, **cells)
    two = _run(pretrained_dir, tmp_path / "two", lines, jobs=2, **cells)
    keys = [f"{method}@300/seed{seed}" for method in ("redraw", "finetune") for seed in (0, 1)]
    for key in keys:
        assert _without_seconds(two[key]) == _without_seconds(one[key]), key
    for run in (
        "redraw-300-seed1/adapter/adapter.safetensors",
        "finetune-300-seed0/world_model/model.safetensors",
        "redraw-300-seed0/actor_critic.safetensors",
        "finetune-300-seed1/actor_critic.safetensors",
    ):
        a, b = _tensors(tmp_path / "one" / "runs" / run), _tensors(tmp_path / "two" / "runs" / run)
        assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a), run
    assert any("4 cells, 2 at a time" in line for line in lines)
    assert any("[4/4 cells," in line and "ETA" in line for line in lines)

    # A run stopped part-way resumes cell by cell: only the missing cell runs again.
    results = json.loads((tmp_path / "two" / "results.json").read_text())
    del results["finetune@300/seed1"]
    (tmp_path / "two" / "results.json").write_text(json.dumps(results))
    stamps = {
        key: (tmp_path / "two" / "runs" / f"{key}" / "fit.json").stat().st_mtime_ns
        for key in ("redraw-300-seed0", "finetune-300-seed1")
    }
    again = _run(pretrained_dir, tmp_path / "two", [], jobs=2, **cells)
    assert _without_seconds(again["finetune@300/seed1"]) == _without_seconds(one["finetune@300/seed1"])
    for key, stamp in stamps.items():  # the fit is reloaded, not redone
        assert (tmp_path / "two" / "runs" / key / "fit.json").stat().st_mtime_ns == stamp


def test_a_cell_failing_in_a_worker_is_one_error_naming_the_cell(pretrained, tmp_path):
    from latent_residual.errors import CellError

    pretrained_dir, _ = pretrained
    broken = tmp_path / "runs" / "redraw-300-seed1"
    broken.mkdir(parents=True)
    (broken / "fit.json").write_text("{not json")  # a kept fit whose adapter is gone
    with pytest.raises(CellError, match=r"^redraw@300/seed1 failed in a worker process: \w+") as caught:
        _run(pretrained_dir, tmp_path, [], jobs=2, methods=("redraw",), transitions=(300,), seeds=2, export=False)
    assert "\n" not in str(caught.value)


def test_jobs_zero_is_one_per_core_capped_by_memory(tmp_path):
    import os

    from latent_residual.workflow.experiments.experiment import resolve_jobs

    assert resolve_jobs(3) == 3
    cores = len(os.sched_getaffinity(0))
    assert 1 <= resolve_jobs(0, tmp_path) <= cores
    # Target data larger than the memory available leaves room for one worker only.
    huge = tmp_path / "data.bin"
    with huge.open("wb") as file:
        file.truncate(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    assert resolve_jobs(0, tmp_path) == 1
    with pytest.raises(ConfigError, match="jobs must be >= 0"):
        ExperimentConfig(jobs=-1)


def test_comparison_table_averages_seeds_and_divides_by_the_sim_reference():
    results = {
        "sim-policy@source": {"return_mean": 800.0},
        "redraw@10/seed0": {"return_mean": 700.0},
        "redraw@10/seed1": {"return_mean": 740.0},
    }
    table = comparison_table(results)
    assert "| redraw | 10 | 2 | 720.0 ± 20.0 | 0.90 |" in table


def test_comparison_table_adds_the_environment_metrics():
    results = {
        "sim-policy@source": {"return_mean": 100.0, "metrics": {"lap_time": 20.0, "lap_time_std": 1.0, "episodes": 2}},
        "redraw@10/seed0": {"return_mean": 50.0, "metrics": {"lap_time": 24.0}},
        "redraw@10/seed1": {"return_mean": 70.0, "metrics": {"lap_time": None}},
        "zero-shot": {"return_mean": 0.0, "metrics": {"lap_time": None}},
    }
    table = comparison_table(results).splitlines()
    assert table[0].endswith("| / sim policy in sim | lap_time |")
    assert "| redraw | 10 | 2 | 60.0 ± 10.0 | 0.60 | 24.00 (1 of 2 seeds) |" in table
    assert "| zero-shot | - | 1 | 0.0 ± 0.0 | 0.00 | - |" in table


def test_comparison_table_gives_each_metric_as_mean_and_std_over_seeds_with_counts_per_seed():
    results = {
        "sim-policy@source": {"return_mean": 100.0, "metrics": {"dense_reward": 0.84, "valid_laps": 15}},
        **{
            f"redraw@10/seed{seed}": {"return_mean": 50.0, "metrics": {"dense_reward": dense, "valid_laps": laps}}
            for seed, (dense, laps) in enumerate([(0.8, 9), (0.7, 8), (0.3, 0)])
        },
    }
    table = comparison_table(results).splitlines()
    assert table[0].endswith("| dense_reward | valid_laps |")
    assert "| sim-policy@source | - | 1 | 100.0 ± 0.0 | 1.00 | 0.84 | 15 |" in table
    assert "| redraw | 10 | 3 | 50.0 ± 0.0 | 0.50 | 0.60 ± 0.22 | 5.67 ± 4.03 (9 / 8 / 0) |" in table


def test_demo_quick_through_the_command(pretrained, tmp_path, capsys):
    pretrained_dir, _ = pretrained
    code = main(
        [
            "demo",
            "--quick",
            "--pretrained",
            str(pretrained_dir),
            "--out",
            str(tmp_path),
            "--episode-steps",
            "30",
            "--transitions",
            "300",
            "--sequence-length",
            "8",
            "--no-export",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "| redraw | 300 | 1 |" in out


def test_a_third_party_method_runs_as_a_registered_entry(pretrained, tmp_path):
    """A plugin's method (tests/lr_testplugin/methods.py) runs beside the built-ins with no change to the library."""
    pretrained_dir, _ = pretrained
    results = run_experiment(
        ExperimentConfig(
            pretrained=str(pretrained_dir),
            **{**TINY, "transitions": (300,), "methods": ("testplug-zero-start",), "export": False},
        ),
        tmp_path,
        method_configs={"testplug-zero-start": _method_configs(steps=4, eval_every=2)["redraw"]},
        policy_config=PolicyTrainConfig(steps=2, starts=32),
        quiet=True,
        say=lambda line: None,
    )
    row = results["testplug-zero-start@300/seed0"]
    assert row["fit"]["held_out_kl_best"] <= row["fit"]["held_out_kl_base"] + 1e-9
    assert (tmp_path / "runs" / "testplug-zero-start-300-seed0" / "adapter" / "adapter.safetensors").exists()
    assert "zero-shot" in results


def test_unknown_method_suggests_the_closest(registry):
    from latent_residual import NameNotFound

    with pytest.raises(NameNotFound, match='Did you mean "redraw"'):
        ExperimentConfig(methods=("redraww",))


def test_an_expert_behaviour_for_a_target_without_one_is_refused_before_any_stage(registry, tmp_path, capsys):
    out = str(tmp_path / "cup")
    assert main(["compare", "--source", "dmc/cup-catch-v0", "--behaviour", "expert", "--out", out]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "'dmc/cup-catch-windy-v0' has no scripted expert" in err and "sim-policy" in err
    assert not (tmp_path / "cup").exists()


def test_demo_applies_the_sources_recommended_settings_and_compare_only_how_data_is_recorded(
    registry, tmp_path, monkeypatch
):
    """The demo takes the source plugin's recommendations (pendulum: the belief as a residual input); a flag
    given on the command line wins; compare keeps the paper's method settings and takes the recommended
    behaviour (the cup's target has no expert)."""
    from latent_residual.workflow.experiments.defaults import CPU_DEFAULTS

    seen = {}

    def record(config, out, **kwargs):
        seen.update(config=config, residual=kwargs["method_configs"]["redraw"].residual)

    monkeypatch.setattr("latent_residual.workflow.experiments.experiment.run_experiment", record)
    assert main(["demo", "--out", str(tmp_path / "a")]) == 0
    assert seen["residual"].extra_inputs == ("belief",)
    assert (seen["config"].source, seen["config"].target) == (
        "dmc/pendulum-swingup-v0",
        "dmc/pendulum-swingup-reversed-v0",
    )
    assert main(["demo", "--out", str(tmp_path / "b"), "--residual-extra-inputs", ""]) == 0
    assert seen["residual"].extra_inputs == ()
    # Per backbone: the RSSM's recommended input is its own state key.
    assert main(["demo", "--out", str(tmp_path / "d"), "--backbones", "rssm-v0"]) == 0
    assert seen["residual"].extra_inputs == ("deter",)
    assert main(["demo", "--out", str(tmp_path / "e"), "--backbones", "draw-v0", "--backbones", "rssm-v0"]) == 0
    assert seen["residual"].extra_inputs == ()  # they differ: neither is applied to both
    assert main(["compare", "--out", str(tmp_path / "c")]) == 0
    assert seen["residual"].extra_inputs == ()
    assert seen["config"].behaviour == "expert"
    assert main(["compare", "--source", "dmc/cup-catch-v0", "--out", str(tmp_path / "f")]) == 0
    assert (seen["config"].behaviour, seen["config"].noise) == ("sim-policy", 0.3)
    assert main(["compare", "--source", "dmc/cup-catch-v0", "--behaviour", "random", "--out", str(tmp_path / "g")]) == 0
    assert seen["config"].behaviour == "random"
    assert CPU_DEFAULTS.pretrain["backbone_preset"] == "cpu"


def test_combined_table_puts_each_backbone_beside_the_other():
    from latent_residual.workflow.reports.tables import combined_table

    runs = {
        "draw-v0": {"sim-policy@source": {"return_mean": 800.0}, "redraw@10/seed0": {"return_mean": 720.0}},
        "rssm-v0": {"sim-policy@source": {"return_mean": 400.0}, "dreamer-finetune@10/seed0": {"return_mean": 100.0}},
    }
    table = combined_table(runs).splitlines()
    assert table[0].startswith("| backbone | method |")
    assert "| draw-v0 | redraw | 10 | 1 | 720.0 ± 0.0 | 0.90 |" in table
    assert "| rssm-v0 | dreamer-finetune | 10 | 1 | 100.0 ± 0.0 | 0.25 |" in table


@pytest.fixture(scope="module")
def rssm_pretrained(tmp_path_factory, registry):
    """A tiny RSSM and policy pretrained online with Plan2Explore on short pendulum episodes."""
    from conftest import TINY_AC, tiny_pretrain_config

    from latent_residual.workflow.training.pretraining import pretrain

    out = tmp_path_factory.mktemp("rssm-pretrain")
    pretrain(
        tiny_pretrain_config(backbone="rssm-v0", backbone_kwargs={"preset": "tiny"}), out, ac_config=TINY_AC, quiet=True
    )
    return out


def test_the_rssm_goes_through_every_stage_with_the_dreamer_baseline(rssm_pretrained, tmp_path):
    """Online pretraining, adapting, policies in imagination (fresh, and the simulation policy trained
    further by Dreamer finetune), evaluation, and a recurrent ONNX export checked over whole episodes."""
    results = run_experiment(
        ExperimentConfig(
            pretrained=str(rssm_pretrained),
            **{**TINY, "transitions": (300,), "methods": ("redraw", "dreamer-finetune")},
        ),
        tmp_path,
        method_configs=_method_configs(steps=4, eval_every=2),
        policy_config=PolicyTrainConfig(steps=2, starts=32),
        quiet=True,
        say=lambda line: None,
    )
    for key in ("zero-shot", "redraw@300/seed0", "dreamer-finetune@300/seed0", "onnx"):
        assert key in results
    assert results["onnx_episode_max_abs_diff"] <= 1e-4
    assert "recurrent" in json.loads((tmp_path / "onnx" / "policy.json").read_text())
    assert (tmp_path / "runs" / "dreamer-finetune-300-seed0" / "world_model" / "model.safetensors").exists()
    # Dreamer finetune trains the simulation policy further (its Adam moments included); ReDRAW a fresh one.
    from latent_residual.actor_critic import load_actor_critic
    from latent_residual.workflow.training.pretraining import ACTOR_CRITIC_NAME

    def actor_steps(path):
        return int(load_actor_critic(path).actor_opt.state_dict()["state"][0]["step"])

    sim_steps = actor_steps(rssm_pretrained / ACTOR_CRITIC_NAME)
    assert sim_steps > 0
    assert actor_steps(tmp_path / "runs" / "dreamer-finetune-300-seed0" / ACTOR_CRITIC_NAME) == sim_steps + 2
    assert actor_steps(tmp_path / "runs" / "redraw-300-seed0" / ACTOR_CRITIC_NAME) == 2


def test_a_plugin_method_with_its_own_hyperparameter_runs_in_compare_with_its_flag_and_is_exported(
    pretrained, tmp_path
):
    """tests/lr_testplugin/narrow.py (a method and its config dataclass) plus one registration line: `compare`
    takes the method's own flag, the method gets the value (results.json records it, its adapter has that width),
    and --export-method makes its policy the exported one."""
    from latent_residual.actor_critic import load_actor_critic
    from latent_residual.adapters import read_adapter_info
    from latent_residual.workflow.deployment.export import example_observations, verify_export
    from latent_residual.workflow.deployment.loading import load_world_model
    from latent_residual.workflow.deployment.policy import Policy

    pretrained_dir, _ = pretrained
    out = tmp_path / "run"
    tiny = ["--transitions", "300", "--seeds", "1", "--eval-episodes", "1", "--sequence-length", "8"]
    tiny += ["--episode-steps", "40", "--fit-steps", "4", "--fit-eval-every", "2", "--policy-steps", "2", "--jobs", "1"]
    method = ["--methods", "testplug-narrow", "--testplug-narrow-width", "8", "--export-method", "testplug-narrow"]
    assert main(["compare", "--pretrained", str(pretrained_dir), "--out", str(out), *tiny, *method]) == 0

    results = json.loads((out / "results.json").read_text())
    recorded = results["settings"]["methods"]["testplug-narrow"]
    assert recorded["width"] == 8 and recorded["fit"]["steps"] == 4  # its own flag and ReDRAW's shared --fit-*
    run = out / "runs" / "testplug-narrow-300-seed0"
    assert read_adapter_info(run / "adapter")[0]["config"]["hidden"] == 8
    # The exported graph is this method's policy: ONNX Runtime gives its actor's actions.
    policy = Policy(
        load_world_model(pretrained_dir / "world_model"), load_actor_critic(run / "actor_critic.safetensors").actor
    )
    assert verify_export(out / "onnx", policy, example_observations(policy.model.observation_space, 16)) <= 1e-4
    assert results["onnx_episode_max_abs_diff"] <= 1e-4 and "onnx" in results


def test_backbone_methods_give_each_backbone_its_own_rows_in_one_run(registry, tmp_path, monkeypatch):
    """The Duckiebot table in one command: DRAW runs --methods, the RSSM only the methods paired with it, each in
    its own directory with its own methods' configs; a pair naming a backbone not compared is one error."""
    from latent_residual import NameNotFound
    from latent_residual.workflow.experiments import experiment

    seen = {}

    def record(config, out, **options):
        seen[config.backbones] = (config.methods, sorted(options["method_configs"]), out.name)
        return {}

    monkeypatch.setattr(experiment, "_run_one", record)
    config = ExperimentConfig(
        backbones=("draw-v0", "rssm-v0"),
        methods=("redraw", "finetune"),
        backbone_methods=("rssm-v0=dreamer-finetune",),
    )
    assert config.all_methods == ("redraw", "finetune", "dreamer-finetune")
    run_experiment(config, tmp_path, say=lambda line: None)
    assert seen == {
        ("draw-v0",): (("redraw", "finetune"), ["finetune", "redraw", "zero-shot"], "draw-v0"),
        ("rssm-v0",): (("dreamer-finetune",), ["dreamer-finetune", "zero-shot"], "rssm-v0"),
    }
    with pytest.raises(ConfigError, match=r"backbone_methods: 'gru-v0' is not among --backbones"):
        ExperimentConfig(backbones=("draw-v0",), backbone_methods=("gru-v0=redraw",))
    with pytest.raises(ConfigError, match="expected BACKBONE=METHOD, got 'rssm-v0'"):
        ExperimentConfig(backbones=("rssm-v0",), backbone_methods=("rssm-v0",))
    with pytest.raises(NameNotFound, match='Did you mean "dreamer-finetune"'):
        ExperimentConfig(backbones=("rssm-v0",), backbone_methods=("rssm-v0=dreamer-finetun",))
    # From the command line, one flag per pair.
    monkeypatch.setattr(experiment, "run_experiment", lambda config, out, **options: seen.update(cli=config))
    args = ["compare", "--out", str(tmp_path / "c"), "--backbones", "draw-v0", "--backbones", "rssm-v0"]
    assert main([*args, "--backbone-methods", "rssm-v0=dreamer-finetune"]) == 0
    assert seen["cli"].for_backbone("rssm-v0").methods == ("dreamer-finetune",)
