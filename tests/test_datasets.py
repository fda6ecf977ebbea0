"""Tests of datasets: recording semantics, the file format, validation, resuming, sequences, collection.

Episodes of the DMC pendulum are capped at 60 agent steps (61 stored steps) so the file runs in seconds.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from conftest import assert_no_temp_files
from safetensors.torch import load_file, save_file

import latent_residual
from latent_residual.errors import ConfigError, DatasetError
from latent_residual.workflow.data.collection import collect
from latent_residual.workflow.data.datasets import (
    DATASET_INFO_NAME,
    EPISODES_DIR_NAME,
    DatasetWriter,
    episode_file_name,
    load_dataset,
)
from latent_residual.workflow.data.recording import EpisodeRecorder

ENV_ID = "dmc/pendulum-swingup-v0"
SHORT = {"max_episode_steps": 60}  # 61 stored steps per episode


class Controller:
    """A deterministic behaviour: a function of the observation alone."""

    description = "damping controller"

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        return np.clip(0.8 * obs["orientation"][:1] - 0.3 * obs["velocity"], -1.0, 1.0).astype(np.float32)


class Killed(Exception):
    pass


class KilledAfter(Controller):
    """The controller, until the process 'dies' at call ``calls``."""

    def __init__(self, calls: int) -> None:
        self.calls = calls

    def __call__(self, obs):
        self.calls -= 1
        if self.calls < 0:
            raise Killed
        return super().__call__(obs)


def lengths(dataset) -> list[int]:
    return [len(episode["is_first"]) for episode in dataset.episodes]


def assert_same_episodes(first, second) -> None:
    assert len(first.episodes) == len(second.episodes)
    for one, two in zip(first.episodes, second.episodes):
        assert one.keys() == two.keys()
        for key in one:
            np.testing.assert_array_equal(one[key], two[key], err_msg=key)


@pytest.fixture(scope="module")
def random_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("random") / "data"
    collect(ENV_ID, "random", directory, transitions=250, env_kwargs=SHORT, seed=3, quiet=True)
    return directory


def writer_for(directory: Path, env, **kwargs) -> DatasetWriter:
    return DatasetWriter(
        directory,
        env_id=ENV_ID,
        env_kwargs=SHORT,
        observation_space=env.observation_space,
        action_space=env.action_space,
        **kwargs,
    )


# --- recording ---------------------------------------------------------------------------------


def test_the_env_is_registered():
    assert ENV_ID in {spec.id for spec in latent_residual.list_envs()}


def test_recorder_lays_out_steps_like_dreamerv3():
    recorder = EpisodeRecorder()
    recorder.start({"x": np.array([0.0], np.float32)})
    assert recorder.step(np.array([0.5]), {"x": np.array([1.0], np.float32)}, 1.5, False, False) is None
    episode = recorder.step(np.array([-0.5]), {"x": np.array([2.0], np.float32)}, 2.5, True, False)
    np.testing.assert_array_equal(episode["x"][:, 0], [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(episode["action"][:, 0], [0.5, -0.5, 0.0])  # taken at obs_t
    np.testing.assert_array_equal(episode["reward"], [0.0, 1.5, 2.5])  # received on arriving at obs_t
    np.testing.assert_array_equal(episode["is_first"], [True, False, False])
    np.testing.assert_array_equal(episode["is_last"], [False, False, True])
    np.testing.assert_array_equal(episode["is_terminal"], [False, False, True])
    assert episode["action"].dtype == np.float32 and episode["reward"].dtype == np.float32
    assert recorder.length == 0  # ready for the next start()


def test_recorder_truncation_is_not_terminal_and_copies_observations():
    recorder = EpisodeRecorder()
    buffer = {"x": np.zeros(1, np.float32)}
    recorder.start(buffer)
    buffer["x"][0] = 7.0  # an env reusing its buffer must not change what was recorded
    episode = recorder.step(np.zeros(1), buffer, 0.0, False, True)
    np.testing.assert_array_equal(episode["x"][:, 0], [0.0, 7.0])
    assert episode["is_last"][-1] and not episode["is_terminal"].any()


def test_recorder_misuse_is_explained():
    recorder = EpisodeRecorder()
    with pytest.raises(DatasetError, match="before start"):
        recorder.step(np.zeros(1), {"x": np.zeros(1)}, 0.0, False, False)
    recorder.start({"x": np.zeros(1)})
    with pytest.raises(DatasetError, match="action_shape"):
        recorder.finish()
    recorder = EpisodeRecorder(action_shape=(2,))
    recorder.start({"x": np.zeros(1)})
    episode = recorder.finish()
    assert episode["action"].shape == (1, 2) and episode["is_first"][0] and episode["is_last"][0]


# --- collecting and loading --------------------------------------------------------------------


def test_random_collection_round_trips(random_dir):
    dataset = load_dataset(random_dir)
    assert dataset.transitions == 250
    assert lengths(dataset) == [61, 61, 61, 61, 6]  # the last episode is cut to fit
    assert sorted(p.name for p in (random_dir / EPISODES_DIR_NAME).iterdir()) == [
        episode_file_name(i) for i in range(5)
    ]
    assert_no_temp_files(random_dir)
    low, high = dataset.action_space.low, dataset.action_space.high
    for episode in dataset.episodes:
        T = len(episode["is_first"])
        assert episode["is_first"].tolist() == [True] + [False] * (T - 1)
        assert episode["is_last"].tolist() == [False] * (T - 1) + [True]
        assert not episode["is_terminal"].any()  # DMC never terminates; time limits truncate
        assert episode["reward"][0] == 0.0
        np.testing.assert_array_equal(episode["action"][-1], 0.0)
        assert (episode["action"] >= low).all() and (episode["action"] <= high).all()
        assert episode["action"][:-1].std() > 0.3  # uniform in [-1, 1]
    assert set(dataset.observation_space.spaces) == {"orientation", "velocity"}
    info = json.loads((random_dir / DATASET_INFO_NAME).read_text())
    assert info["format"] == "latent-residual-dataset" and info["format_version"] == 1
    assert (info["env_id"], info["env_kwargs"], info["episodes"], info["transitions"]) == (ENV_ID, SHORT, 5, 250)
    assert info["has_reward"] is True and info["resumes"] == []
    provenance = info["provenance"]
    assert provenance["behaviour"] == "random" and provenance["seed"] == 3 and provenance["noise"] == 0.0
    assert provenance["transitions"] == 250
    assert provenance["library_version"] == latent_residual.__version__ and provenance["date"]


def test_action_at_step_t_is_what_the_env_received_after_obs_t(tmp_path):
    controller = Controller()
    dataset = collect(
        ENV_ID,
        controller,
        tmp_path / "d",
        transitions=122,
        env_kwargs=SHORT,
        seed=7,
        quiet=True,
        provenance={"operator": "test"},
    )
    assert dataset.info["provenance"]["behaviour"] == "damping controller"
    assert dataset.info["provenance"]["operator"] == "test"
    env = latent_residual.make_env(ENV_ID, **SHORT)
    for index, episode in enumerate(dataset.episodes):
        obs = [{key: episode[key][t] for key in ("orientation", "velocity")} for t in range(61)]
        for t in range(60):
            np.testing.assert_array_equal(episode["action"][t], controller(obs[t]))
        # Replaying the stored actions from the same reset reproduces every observation and reward.
        replay, _ = env.reset(seed=7 + index)
        np.testing.assert_array_equal(replay["orientation"], obs[0]["orientation"])
        for t in range(60):
            replay, reward, _, truncated, _ = env.step(episode["action"][t])
            np.testing.assert_array_equal(replay["orientation"], obs[t + 1]["orientation"])
            np.testing.assert_array_equal(replay["velocity"], obs[t + 1]["velocity"])
            assert reward == pytest.approx(episode["reward"][t + 1])
        assert truncated


def test_resume_continues_numbering_to_the_total(tmp_path):
    directory = tmp_path / "d"
    first = collect(ENV_ID, "random", directory, transitions=100, env_kwargs=SHORT, quiet=True)
    assert lengths(first) == [61, 39]
    dataset = collect(ENV_ID, "random", directory, transitions=250, env_kwargs=SHORT, quiet=True)
    assert dataset.transitions == 250
    assert lengths(dataset) == [61, 39, 61, 61, 28]
    assert sorted(p.name for p in (directory / EPISODES_DIR_NAME).iterdir()) == [episode_file_name(i) for i in range(5)]
    assert [resume["first_episode"] for resume in dataset.info["resumes"]] == [2]
    assert dataset.info["resumes"][0]["transitions"] == 250
    # Already complete: nothing is collected, nothing recorded.
    again = collect(ENV_ID, "random", directory, transitions=200, env_kwargs=SHORT, quiet=True)
    assert again.transitions == 250 and len(again.info["resumes"]) == 1


def test_resume_reads_spaces_by_meaning_not_spelling(tmp_path):
    directory = tmp_path / "d"
    collect(ENV_ID, "random", directory, transitions=61, env_kwargs=SHORT, quiet=True)
    info = json.loads((directory / DATASET_INFO_NAME).read_text())
    # Earlier versions spelled a uniform bound out element by element.
    info["action_space"]["high"] = [1.0]
    (directory / DATASET_INFO_NAME).write_text(json.dumps(info))
    assert collect(ENV_ID, "random", directory, transitions=100, env_kwargs=SHORT, quiet=True).transitions == 100
    info["action_space"]["high"] = [2.0]
    (directory / DATASET_INFO_NAME).write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=r"dataset.json: key 'action_space' differs"):
        collect(ENV_ID, "random", directory, transitions=200, env_kwargs=SHORT, quiet=True)


def test_a_killed_collection_resumes_to_the_same_data(tmp_path):
    kwargs = {"transitions": 200, "env_kwargs": SHORT, "seed": 1, "noise": 0.2, "quiet": True}
    with pytest.raises(Killed):
        collect(ENV_ID, KilledAfter(150), tmp_path / "killed", **kwargs)
    partial = load_dataset(tmp_path / "killed")  # valid: the two finished episodes
    assert lengths(partial) == [61, 61]
    resumed = collect(ENV_ID, Controller(), tmp_path / "killed", **kwargs)
    whole = collect(ENV_ID, Controller(), tmp_path / "whole", **kwargs)
    assert lengths(whole) == [61, 61, 61, 17]
    assert_same_episodes(resumed, whole)


def test_same_seed_same_data(tmp_path, random_dir):
    again = collect(ENV_ID, "random", tmp_path / "again", transitions=250, env_kwargs=SHORT, seed=3, quiet=True)
    assert_same_episodes(again, load_dataset(random_dir))
    other = collect(ENV_ID, "random", tmp_path / "other", transitions=61, env_kwargs=SHORT, seed=4, quiet=True)
    assert not np.array_equal(other.episodes[0]["action"], again.episodes[0]["action"])


def test_noise_is_added_and_clipped(tmp_path):
    dataset = collect(ENV_ID, Controller(), tmp_path / "d", transitions=61, env_kwargs=SHORT, noise=5.0, quiet=True)
    episode = dataset.episodes[0]
    actions = episode["action"][:-1, 0]
    assert (np.abs(actions) <= 1.0).all()
    assert (np.abs(actions) == 1.0).mean() > 0.5  # std 5 mostly saturates at the bounds
    assert dataset.info["provenance"]["noise"] == 5.0


def test_pixel_observations_are_uint8_images(tmp_path):
    dataset = collect(
        ENV_ID, "random", tmp_path / "d", transitions=12, env_kwargs={"pixels": True, **SHORT}, quiet=True
    )
    image = dataset.episodes[0]["image"]
    assert image.dtype == np.uint8 and image.shape == (12, 64, 64, 3)
    assert dataset.sequences(4)["image"].dtype == torch.uint8


def test_bad_collect_arguments(tmp_path):
    with pytest.raises(ConfigError, match="behaviour"):
        collect(ENV_ID, "teleop", tmp_path / "a", transitions=10)
    with pytest.raises(ConfigError, match="transitions"):
        collect(ENV_ID, "random", tmp_path / "b", transitions=0)
    with pytest.raises(ConfigError, match=r"shape \(3,\)"):
        collect(ENV_ID, lambda obs: np.zeros(3), tmp_path / "c", transitions=10, quiet=True)


def test_a_length_one_budget_stores_a_one_step_episode(tmp_path):
    dataset = collect(ENV_ID, "random", tmp_path / "d", transitions=62, env_kwargs=SHORT, quiet=True)
    assert lengths(dataset) == [61, 1]
    assert dataset.episodes[1]["action"].shape == (1, 1)


# --- max_transitions and sequences --------------------------------------------------------------


def test_max_transitions_keeps_whole_episodes_then_cuts(random_dir):
    dataset = load_dataset(random_dir, max_transitions=100)
    assert dataset.transitions == 100 and lengths(dataset) == [61, 39]
    cut = dataset.episodes[1]
    assert cut["is_last"][-1] and not cut["is_last"][:-1].any() and not cut["is_terminal"].any()
    full = load_dataset(random_dir)
    np.testing.assert_array_equal(cut["orientation"], full.episodes[1]["orientation"][:39])
    assert not full.episodes[1]["is_last"][38]  # the cut did not touch other copies
    assert lengths(load_dataset(random_dir, max_transitions=122)) == [61, 61]
    assert load_dataset(random_dir, max_transitions=10_000).transitions == 250
    with pytest.raises(ConfigError, match="max_transitions"):
        load_dataset(random_dir, max_transitions=0)


def test_sequences_are_non_overlapping_windows(random_dir):
    dataset = load_dataset(random_dir)
    with pytest.warns(UserWarning, match="1 of 5 episodes are shorter than 20"):
        sequences = dataset.sequences(20)
    assert set(sequences) == {"orientation", "velocity", "action", "reward", "is_first", "is_last", "is_terminal"}
    assert sequences["orientation"].shape == (12, 20, 2)  # 3 windows from each 61-step episode
    assert sequences["action"].shape == (12, 20, 1) and sequences["action"].dtype == torch.float32
    assert sequences["is_first"].shape == (12, 20) and sequences["is_first"].dtype == torch.bool
    assert sequences["is_first"][:, 0].all() and not sequences["is_first"][:, 1:].any()
    assert not sequences["is_last"].any()  # each episode's final step is in its dropped tail
    episode = dataset.episodes[1]
    np.testing.assert_array_equal(sequences["velocity"][4].numpy(), episode["velocity"][20:40])
    np.testing.assert_array_equal(sequences["action"][5].numpy(), episode["action"][40:60])
    with pytest.warns(UserWarning, match="1 of 5"):
        whole = dataset.sequences(61)
    assert whole["is_last"][:, -1].all() and whole["is_first"].shape == (4, 61)
    with pytest.raises(DatasetError, match="no episode"):
        dataset.sequences(62)
    with pytest.raises(ConfigError, match="length"):
        dataset.sequences(0)


def test_sequences_feed_fit_residual(registry, random_dir):
    from latent_residual import FitConfig, ResidualConfig, attach_residual, fit_residual, make_backbone

    dataset = load_dataset(random_dir)
    torch.manual_seed(0)
    model = make_backbone("gru-v0", dataset.observation_space, dataset.action_space)
    # Starting equal to the base, so three steps cannot leave it worse (which fit_residual refuses).
    adapted = attach_residual(model, ResidualConfig(hidden=8, zero_init=True, prior_unimix=model.prior_unimix))
    with pytest.warns(UserWarning, match="shorter"):
        sequences = dataset.sequences(16)
    result = fit_residual(adapted, sequences, FitConfig(steps=3, eval_every=3, batch_size=4), quiet=True)
    assert np.isfinite(result.held_out_kl_base) and result.steps == 3


# --- writing -------------------------------------------------------------------------------------


def test_reward_free_data(tmp_path):
    env = latent_residual.make_env(ENV_ID, **SHORT)
    writer = writer_for(tmp_path / "d", env, store_reward=False, provenance={"robot": "bench"})
    recorder = EpisodeRecorder()
    obs, _ = env.reset(seed=0)
    recorder.start(obs)
    episode = None
    while episode is None:
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        episode = recorder.step(env.action_space.sample(), obs, reward, terminated, truncated)
    writer.add_episode(episode)  # the reward key is dropped, not refused
    dataset = load_dataset(tmp_path / "d")
    assert dataset.info["has_reward"] is False and dataset.info["provenance"]["robot"] == "bench"
    assert "reward" not in dataset.episodes[0]
    assert "reward" not in dataset.sequences(30)
    # Data with rewards must not be mixed into it.
    with pytest.raises(DatasetError, match="'has_reward'"):
        collect(ENV_ID, "random", tmp_path / "d", transitions=200, env_kwargs=SHORT, quiet=True)


def test_writer_refuses_other_envs_and_foreign_directories(tmp_path, random_dir):
    other = latent_residual.make_env("dmc/reacher-easy-v0")
    with pytest.raises(DatasetError, match="'observation_space'"):
        writer_for(random_dir, other)
    with pytest.raises(DatasetError, match="'env_id'"):
        collect("dmc/pendulum-swingup-reversed-v0", "random", random_dir, transitions=300, env_kwargs=SHORT)
    with pytest.raises(DatasetError, match="'env_kwargs'"):
        collect(ENV_ID, "random", random_dir, transitions=300)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("x")
    with pytest.raises(DatasetError, match="not empty"):
        writer_for(tmp_path / "notes", latent_residual.make_env(ENV_ID))
    assert load_dataset(random_dir).transitions == 250  # untouched


def test_writer_validates_episodes(tmp_path):
    env = latent_residual.make_env(ENV_ID, **SHORT)
    writer = writer_for(tmp_path / "d", env)
    assert load_dataset(tmp_path / "d").transitions == 0  # valid from the start
    good = {
        "orientation": np.zeros((3, 2), np.float32),
        "velocity": np.zeros((3, 1), np.float32),
        "action": np.zeros((3, 1), np.float32),
        "reward": np.zeros(3, np.float32),
        "is_first": np.array([True, False, False]),
        "is_last": np.array([False, False, True]),
        "is_terminal": np.array([False, False, False]),
    }
    bad_cases = [
        ({"velocity": np.zeros((3, 1), np.float64)}, "'velocity' has dtype float64, expected float32"),
        ({"action": np.zeros((3, 2), np.float32)}, r"'action' has shape \(3, 2\), expected \(3, 1\)"),
        ({"is_first": np.array([False, False, False])}, "'is_first'"),
        ({"is_last": np.array([False, True, True])}, "'is_last'"),
        ({"is_terminal": np.array([True, False, True])}, "'is_terminal'"),
        ({"extra": np.zeros(3)}, "'extra' is not part"),
    ]
    for change, message in bad_cases:
        with pytest.raises(DatasetError, match=message) as caught:
            writer.add_episode({**good, **change})
        assert episode_file_name(0) in str(caught.value)
    without_reward = {key: value for key, value in good.items() if key != "reward"}
    with pytest.raises(DatasetError, match="'reward' is missing.*store_reward=False"):
        writer.add_episode(without_reward)
    assert writer.add_episode(good).name == episode_file_name(0)
    terminal = {**good, "is_terminal": np.array([False, False, True])}
    assert writer.add_episode(terminal).name == episode_file_name(1)
    assert (writer.episodes, writer.transitions) == (2, 6)
    cut = load_dataset(tmp_path / "d", max_transitions=5).episodes[1]
    assert cut["is_last"].tolist() == [False, True] and not cut["is_terminal"].any()  # a truncation
    assert load_dataset(tmp_path / "d").episodes[1]["is_terminal"][-1]


def test_observation_keys_may_not_clash_with_reserved_keys(tmp_path):
    space = gymnasium.spaces.Dict({"reward": gymnasium.spaces.Box(-1, 1, (1,), np.float32)})
    with pytest.raises(DatasetError, match="'reward' clashes"):
        DatasetWriter(
            tmp_path / "d",
            env_id="x/y-v0",
            observation_space=space,
            action_space=gymnasium.spaces.Box(-1, 1, (1,), np.float32),
        )


# --- validation on load: every problem names the file and the key --------------------------------


@pytest.fixture
def small_dir(tmp_path) -> Path:
    directory = tmp_path / "small"
    collect(ENV_ID, "random", directory, transitions=70, env_kwargs=SHORT, quiet=True)
    return directory


def rewrite_episode(directory: Path, change) -> Path:
    path = directory / EPISODES_DIR_NAME / episode_file_name(1)
    tensors = {key: value.clone() for key, value in load_file(str(path)).items()}
    change(tensors)
    save_file(tensors, str(path), metadata={"format": "latent-residual-episode", "format_version": "1"})
    return path


def test_missing_dataset_json(tmp_path, small_dir):
    (small_dir / DATASET_INFO_NAME).unlink()
    with pytest.raises(
        DatasetError, match=f"expected a dataset directory holding {DATASET_INFO_NAME}; it holds none of"
    ):
        load_dataset(small_dir)
    with pytest.raises(DatasetError, match="nowhere: expected a dataset directory .*; it does not exist"):
        load_dataset(tmp_path / "nowhere")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda info: info.pop("action_space"), "key 'action_space' is missing"),
        (lambda info: info.update(format="something-else"), "key 'format' is 'something-else'"),
        (lambda info: info.update(format_version=2), "key 'format_version' is 2.*Upgrade"),
        (lambda info: info.update(episodes=-1), "key 'episodes' is -1"),
        (lambda info: info.update(observation_space={"type": "Box"}), "key 'observation_space'"),
        (lambda info: info.update(transitions=71), "key 'transitions' is 71 but the episode files hold 70"),
    ],
)
def test_bad_dataset_json(small_dir, change, message):
    path = small_dir / DATASET_INFO_NAME
    info = json.loads(path.read_text())
    change(info)
    path.write_text(json.dumps(info))
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset(small_dir)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.pop("is_last"), "key 'is_last' is missing"),
        (lambda t: t.update(velocity=t["velocity"].double()), "key 'velocity' has dtype float64, expected float32"),
        (lambda t: t.update(action=t["action"].to(torch.bfloat16)), "key 'action' has dtype torch.bfloat16"),
        (lambda t: t.update(orientation=t["orientation"][:, :1].clone()), r"key 'orientation' has shape \(9, 1\)"),
        (lambda t: t.update(reward=t["reward"][:5].clone()), r"key 'reward' has shape \(5,\), expected \(9,\)"),
        (lambda t: t["is_first"].fill_(False), "key 'is_first' must be true at step 0"),
    ],
)
def test_bad_episode_files(small_dir, change, message):
    path = rewrite_episode(small_dir, change)
    with pytest.raises(DatasetError, match=message) as caught:
        load_dataset(small_dir)
    assert str(path) in str(caught.value)
    # The first episode is fine, so a cap before the bad file still loads.
    assert load_dataset(small_dir, max_transitions=61).transitions == 61


def test_truncated_episode_file(small_dir):
    path = small_dir / EPISODES_DIR_NAME / episode_file_name(0)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(DatasetError, match="truncated") as caught:
        load_dataset(small_dir)
    assert str(path) in str(caught.value) and "tensor '" in str(caught.value)


@pytest.mark.parametrize("how", ["pickle", "torch.save"])
def test_pickle_episode_file_is_refused_unopened(small_dir, how):
    path = small_dir / EPISODES_DIR_NAME / episode_file_name(0)
    # Clones: load_file memory-maps the file that is about to be overwritten in place.
    tensors = {key: value.clone() for key, value in load_file(str(path)).items()}
    if how == "pickle":
        path.write_bytes(pickle.dumps({key: value.numpy() for key, value in tensors.items()}))
    else:
        torch.save(tensors, path)
    with pytest.raises(DatasetError, match="pickle") as caught:
        load_dataset(small_dir)
    assert str(path) in str(caught.value)


def test_a_foreign_safetensors_file_is_not_an_episode(small_dir):
    path = small_dir / EPISODES_DIR_NAME / episode_file_name(0)
    save_file({"weight": torch.zeros(2)}, str(path))
    with pytest.raises(DatasetError, match="key 'format' is") as caught:
        load_dataset(small_dir)
    assert str(path) in str(caught.value)


def test_missing_episode_file(small_dir):
    path = small_dir / EPISODES_DIR_NAME / episode_file_name(1)
    path.unlink()
    with pytest.raises(DatasetError, match=r"dataset.json: key 'episodes' is \d+ but .* does not exist") as caught:
        load_dataset(small_dir)
    assert str(path) in str(caught.value)
