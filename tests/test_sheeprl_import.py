"""The sheeprl importer: parity with sheeprl's own modules on recorded inputs (fixtures made by the real sheeprl,
tests/fixtures/sheeprl/make_fixtures.py), clear errors for files and configs it cannot take, and the tutorial.

sheeprl is not needed, except by the last test (skipped without it).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, safe_open

import latent_residual as lr
from latent_residual import distributions, rollout
from latent_residual.actor_critic import load_actor_critic
from latent_residual.errors import CheckpointError, ConfigError
from latent_residual.workflow.cli.main import main
from latent_residual_integrations.sheeprl import import_checkpoint
from latent_residual_integrations.sheeprl.convert import check_config, find_config

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "sheeprl"
TUTORIAL = ROOT / "docs" / "tutorials" / "sheeprl.md"
TOLERANCE = 1e-5


def checkpoint_of(name: str) -> Path:
    (path,) = (FIXTURES / name / "checkpoint").glob("ckpt_*_0.ckpt")
    return path


def copy_run(name: str, tmp_path: Path) -> Path:
    """A copy of fixture ``name`` in sheeprl's layout under ``tmp_path``; returns its checkpoint."""
    shutil.copytree(FIXTURES / name, tmp_path / name, ignore=shutil.ignore_patterns("reference.safetensors"))
    return next((tmp_path / name / "checkpoint").glob("*.ckpt"))


def edited_run(tmp_path: Path, *, state_edit=None, config_edit=None) -> Path:
    """The pendulum run with its checkpoint entries and/or config changed (re-saved weights-only readable)."""
    checkpoint = copy_run("pendulum", tmp_path)
    if state_edit is not None:
        state = torch.load(checkpoint, weights_only=True, map_location="cpu")
        state_edit(state)
        torch.save(state, checkpoint)
    if config_edit is not None:
        path = checkpoint.parents[1] / "config.yaml"
        cfg = yaml.safe_load(path.read_text())
        config_edit(cfg)
        path.write_text(yaml.safe_dump(cfg))
    return checkpoint


# ---------------------------------------------------------------------------
# Parity
# ---------------------------------------------------------------------------


def sheeprl_state_split(plan, vector: torch.Tensor) -> dict[str, torch.Tensor]:
    """sheeprl's one "state" vector (..., N) as our observation keys, (..., size) each."""
    return {key: vector[..., offset : offset + size] for key, (offset, size) in plan.sheeprl_slices.items()}


def differences(model, actor_critic, plan, ref: dict[str, torch.Tensor]) -> dict[str, float]:
    """Max |ours - sheeprl's| for every recorded output."""

    def embed(vector: torch.Tensor) -> torch.Tensor:
        return model.embed({k: v.unsqueeze(1) for k, v in sheeprl_state_split(plan, vector).items()})[:, 0]

    def gap(ours: torch.Tensor, key: str) -> float:
        return (ours.reshape(ref[key].shape) - ref[key]).abs().max().item()

    B = ref["input_obs"].shape[0]
    found = {}
    with torch.no_grad():
        e = embed(ref["input_obs"])
        found["embed"] = gap(e, "output_embed")
        state = {"deter": ref["input_h"], "stoch": ref["input_z"]}
        logits, deter = model.dynamics(state, ref["input_action"], torch.zeros(B, dtype=torch.bool))
        found["h after one step"] = gap(deter["deter"], "output_h1")
        found["raw prior logits"] = gap(logits, "output_prior_logits")
        found["raw posterior logits"] = gap(model.posterior(deter, e), "output_post_logits")
        features = model.features({"deter": deter["deter"], "stoch": ref["input_z"]})
        found["reward"] = gap(model.reward(features), "output_heads_reward")
        found["continuation logit"] = gap(model.cont_head(features), "output_heads_cont_logit")
        found["continuation"] = gap(model.continuation(features), "output_heads_cont_prob")
        found["action"] = gap(actor_critic.actor(features), "output_heads_action")
        found["value"] = gap(actor_critic.critic.mean(features), "output_heads_value")
        initial = model.initial_state(B)
        state, unroll = initial, 0.0
        for t in range(ref["input_seq_obs"].shape[0]):
            is_first = torch.full((B,), t == 0)
            logits, deter = rollout.step(model, state, ref["input_seq_action"][t], is_first, initial)
            post = model.posterior(deter, embed(ref["input_seq_obs"][t]))
            state = model.next_state(deter, logits, distributions.mode_one_hot(post))
            features = model.features(state)
            outputs = {
                "h": deter["deter"],
                "prior_logits": logits,
                "post_logits": post,
                "reward": model.reward(features),
                "action": actor_critic.actor(features),
                "value": actor_critic.critic.mean(features),
            }
            for key, value in outputs.items():
                unroll = max(
                    unroll,
                    (value.reshape(ref[f"output_unroll_{key}"][t].shape) - ref[f"output_unroll_{key}"][t])
                    .abs()
                    .max()
                    .item(),
                )
        found["8-step unroll"] = unroll
    return found


@pytest.mark.parametrize("name", ["pendulum", "reacher", "p2e", "cartpole"])
def test_imported_model_reproduces_sheeprl(name, tmp_path):
    """The written files, loaded back, give sheeprl's numbers on its recorded inputs (<= 1e-5)."""
    checkpoint = checkpoint_of(name)
    written = import_checkpoint(checkpoint, tmp_path / "out")
    model = lr.load_world_model(written["world_model"])
    actor_critic = load_actor_critic(written["actor_critic"])
    plan = check_config(find_config(checkpoint, None)[1], None)
    found = differences(model, actor_critic, plan, load_file(FIXTURES / name / "reference.safetensors"))
    print(name, {key: f"{value:.1e}" for key, value in found.items()})
    assert max(found.values()) <= TOLERANCE, found
    # Trained further, the imported actor-critic imagines as sheeprl does.
    assert (actor_critic.config.continuation, actor_critic.config.detach_actor_input) == ("mode", True)


def test_the_fixtures_record_their_sheeprl_version():
    with safe_open(FIXTURES / "pendulum" / "reference.safetensors", "pt") as handle:
        assert handle.metadata()["sheeprl_version"] == "0.8.4"


def test_provenance_names_the_source_and_its_hash(tmp_path):
    checkpoint = checkpoint_of("reacher")
    written = import_checkpoint(checkpoint, tmp_path / "out")
    provenance = json.loads(written["provenance"].read_text())
    assert provenance["source_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert provenance["env_id"] == "dmc/reacher-easy-v0"
    assert provenance["sheeprl_config"]["algo"]["world_model"]["discrete_size"] == 16
    stored = json.loads((written["world_model"] / "model_config.json").read_text())
    assert stored["extra"]["source_sha256"] == provenance["source_sha256"]
    assert stored["backbone_kwargs"]["deter"] == 96 and stored["backbone_kwargs"]["mlp_layers"] == 2


# ---------------------------------------------------------------------------
# Files and configs it refuses, always before writing anything
# ---------------------------------------------------------------------------


def refused(checkpoint: Path, tmp_path: Path, error: type[Exception], pattern: str, **kwargs) -> str:
    out = tmp_path / "refused"
    with pytest.raises(error, match=pattern) as caught:
        import_checkpoint(checkpoint, out, **kwargs)
    assert not out.exists()
    return str(caught.value)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    checkpoint = copy_run("pendulum", tmp_path)
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(data[: len(data) // 2])
    refused(checkpoint, tmp_path, CheckpointError, "truncated or corrupt")


def test_a_corrupted_checkpoint_is_refused(tmp_path):
    checkpoint = copy_run("pendulum", tmp_path)
    data = bytearray(checkpoint.read_bytes())
    data[:64] = bytes(64)  # the zip's first local header
    data[-200:] = bytes(200)  # and its central directory
    checkpoint.write_bytes(bytes(data))
    refused(checkpoint, tmp_path, CheckpointError, "not a readable PyTorch checkpoint")


def test_a_checkpoint_with_the_replay_buffer_is_refused_with_how_to_resave_it(tmp_path):
    message = refused(checkpoint_of("buffer"), tmp_path, CheckpointError, "BufferFiles")
    assert "buffer.checkpoint=True" in message and "s.pop('rb')" in message and "\n" not in message


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda s: s["world_model"].update({"rssm.extra.weight": torch.zeros(2)}), "no rule maps: .*rssm.extra.weight"),
        (
            lambda s: s["world_model"].pop("rssm.transition_model._model.3.bias"),
            "lacks 'rssm.transition_model._model.3.bias'",
        ),
        (
            lambda s: s["world_model"].update({"rssm.recurrent_model.rnn.linear.weight": torch.zeros(192, 97)}),
            r"rnn.linear.weight.*shape \(192, 97\)",
        ),
        (lambda s: s["actor"].update({"mlp_heads.1.weight": torch.zeros(2, 32)}), "actor holds tensors no rule maps"),
        (lambda s: s.update({"something_new": {}}), "entries \\['something_new'\\]"),
        (lambda s: s.pop("critic"), "lacks its 'critic' entry"),
        (lambda s: s["critic"]["_model.3.bias"].fill_(float("nan")), r"critic\['_model.3.bias'\] holds NaN"),
    ],
    ids=["unmapped", "missing", "shape", "unmapped-actor", "unknown-entry", "missing-critic", "non-finite"],
)
def test_checkpoint_layout_problems_name_the_tensor(tmp_path, edit, pattern):
    refused(edited_run(tmp_path, state_edit=edit), tmp_path, CheckpointError, pattern)


def _set(path: str, value):
    def edit(cfg):
        node = cfg
        *parents, last = path.split(".")
        for part in parents:
            node = node[part]
        node[last] = value

    return edit


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (_set("algo.cnn_keys.encoder", ["rgb"]), "algo.cnn_keys.encoder=\\['rgb'\\]"),
        (
            _set("algo.world_model.recurrent_model.layer_norm.cls", "torch.nn.Identity"),
            "recurrent_model.layer_norm.cls",
        ),
        (_set("algo.world_model.transition_model.layer_norm.kw.eps", 1e-5), "transition_model.layer_norm.kw.eps"),
        (_set("distribution.type", "tanh_normal"), "distribution.type='tanh_normal'"),
        (_set("algo.world_model.reward_model.mlp_layers", 3), "one mlp_layers"),
        (_set("algo.name", "dreamer_v2"), "algo.name='dreamer_v2'"),
        (_set("env.wrapper.domain_name", "walker"), "no environment is registered .*--env"),
    ],
    ids=["images", "gru-norm", "eps", "actor-distribution", "head-depth", "algo", "unknown-env"],
)
def test_unsupported_options_are_named(tmp_path, edit, pattern):
    refused(edited_run(tmp_path, config_edit=edit), tmp_path, ConfigError, pattern)


def test_any_suite_task_imports_without_a_flag_at_its_own_action_repeat(tmp_path, capsys):
    """cartpole swingup (not one of the paper's tasks) at action repeat 1: the suite's id, the repeat from
    sheeprl's config."""
    out = tmp_path / "imported"
    assert main(["import", "sheeprl", str(checkpoint_of("cartpole")), "--out", str(out)]) == 0
    provenance = json.loads((out / "provenance.json").read_text())
    assert provenance["env_id"] == "dmc/cartpole-swingup-v0" and provenance["env_kwargs"] == {"action_repeat": 1}
    env = lr.make_env(provenance["env_id"], **provenance["env_kwargs"])
    assert env.unwrapped.metadata["render_fps"] == 100  # 0.01 s control steps, one per agent step
    env.close()


def test_a_missing_config_points_at_the_option_which_takes_it_from_elsewhere(tmp_path):
    checkpoint = copy_run("pendulum", tmp_path)
    config = (checkpoint.parents[1] / "config.yaml").rename(tmp_path / "elsewhere.yaml")
    refused(checkpoint, tmp_path, ConfigError, "pass --config")
    written = import_checkpoint(checkpoint, tmp_path / "out", config=config, env_id="dmc/pendulum-swingup-reversed-v0")
    provenance = json.loads(written["provenance"].read_text())
    assert provenance["source_config"] == str(config.resolve())
    assert provenance["env_id"] == "dmc/pendulum-swingup-reversed-v0"


# ---------------------------------------------------------------------------
# The command and the tutorial
# ---------------------------------------------------------------------------


def test_the_command_imports_and_names_unknown_importers(tmp_path, capsys):
    assert main(["plugins"]) == 0
    assert re.search(r"Checkpoint importers:\n  sheeprl ", capsys.readouterr().out)
    out = tmp_path / "imported"
    assert main(["import", "sheeprl", str(checkpoint_of("p2e")), "--out", str(out)]) == 0
    assert (out / "world_model" / "model.safetensors").is_file() and (out / "actor_critic.safetensors").is_file()
    assert main(["import", "sheeprl", str(checkpoint_of("p2e")), "--out", str(out)]) == 2  # finished: needs --overwrite
    assert main(["import", "sheepr", str(checkpoint_of("p2e")), "--out", str(tmp_path / "x")]) == 1
    assert 'Did you mean "sheeprl"' in capsys.readouterr().err


def tutorial_script() -> tuple[str, str]:
    """The tutorial's bash blocks: (step 1, the sheeprl training; the rest), backslash continuations kept."""
    blocks = re.findall(r"```bash\n(.*?)```", TUTORIAL.read_text(encoding="utf-8"), re.S)
    assert len(blocks) == 2, "the tutorial has its sheeprl block and its latent-residual block"
    return blocks[0], blocks[1]


def run_tutorial(tmp_path: Path, *, with_sheeprl: bool) -> str:
    sheeprl_block, block = tutorial_script()
    if with_sheeprl:
        script = sheeprl_block + block
    else:
        # The committed fixture was trained with exactly this command (make_fixtures.py's "pendulum" run).
        run = tmp_path / "logs" / "runs" / "pendulum" / "fixture" / "version_0"
        shutil.copytree(FIXTURES / "pendulum", run, ignore=shutil.ignore_patterns("reference.safetensors"))
        script = "\n".join(line for line in sheeprl_block.splitlines() if line.startswith("CKPT=")) + "\n" + block
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "MUJOCO_GL": "egl",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def check_tutorial_output(output: str) -> None:
    """The export's torch-vs-ONNX episode check stayed within 1e-4 per step, and the ONNX policy ran the target."""
    (difference,) = re.findall(
        r"over 200 steps of dmc/pendulum-swingup-reversed-v0 episodes: max \|onnx - torch\| = (\S+)", output
    )
    assert float(difference) <= 1e-4, output
    assert "dmc/pendulum-swingup-reversed-v0: return" in output


def test_the_tutorial_runs(tmp_path):
    """import -> zero-shot evaluate -> collect reversed-action data -> adapt -> train-policy -> export -> ONNX Runtime,
    the tutorial's commands verbatim, on the committed sheeprl checkpoint."""
    check_tutorial_output(run_tutorial(tmp_path, with_sheeprl=False))


def test_the_docs_install_this_package_from_a_clone():
    """latent-residual is not on the package index: an install line naming it there (with extras or --no-deps)
    fails; the docs install the clone (`pip install -e .`, `./latent-residual`)."""
    from_index = re.compile(r"pip install[^`\n]*?(?<![./\w-])latent-residual(?![\w/-])")
    found = [
        f"{path.relative_to(ROOT)}: {line.strip()}"
        for path in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
        for line in path.read_text(encoding="utf-8").splitlines()
        if from_index.search(line)
    ]
    assert found == []


def _sheeprl_available() -> bool:
    return shutil.which("sheeprl", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}") is not None


@pytest.mark.skipif(
    not _sheeprl_available(), reason="sheeprl is not installed (pip install -e '.[sheeprl]' in the clone)"
)
def test_the_tutorial_runs_with_sheeprl_training_first(tmp_path):
    """The optional extra: sheeprl trains the tutorial's run, and what it writes imports and deploys."""
    check_tutorial_output(run_tutorial(tmp_path, with_sheeprl=True))


def test_the_python_api_refuses_a_finished_output_with_a_library_error(tmp_path):
    from latent_residual.errors import OutputPathError

    out = tmp_path / "out"
    import_checkpoint(checkpoint_of("pendulum"), out)
    with pytest.raises(OutputPathError, match=r"^--out: .* already holds provenance.json"):
        import_checkpoint(checkpoint_of("pendulum"), out)
