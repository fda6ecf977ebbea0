"""Offline episode datasets on disk: the format, the writer and validated loading.

Recording episodes is ``recording.py``, running a behaviour to make them ``collection.py``; what a dataset
is used for (fitting residuals, pretraining) lives with those uses.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch

from latent_residual.errors import ConfigError, DatasetError
from latent_residual.rollout import NON_OBSERVATION_KEYS
from latent_residual.serialization import (
    check_json_type,
    check_metadata,
    compact_bound,
    read_checked,
    read_json_object,
    read_safetensors_header,
    space_to_json,
    write_safetensors,
    write_text,
)
from latent_residual.version import __version__
from latent_residual.workflow.data.recording import Episode
from latent_residual.workflow.data.spaces import stored_space
from latent_residual.workflow.paths import DATASET_INFO_NAME, expect_directory

EPISODES_DIR_NAME = "episodes"
FILE_FORMAT = "latent-residual-dataset"
FILE_FORMAT_VERSION = 1
EPISODE_FORMAT = "latent-residual-episode"
FLAG_KEYS = ("is_first", "is_last", "is_terminal")
_INFO_KEYS = (
    "env_id",
    "env_kwargs",
    "observation_space",
    "action_space",
    "provenance",
    "resumes",
    "episodes",
    "transitions",
    "has_reward",
)
#: The JSON type of each key of dataset.json that is not checked further down.
_INFO_TYPES = {
    "env_id": str,
    "env_kwargs": dict,
    "provenance": dict,
    "resumes": list,
    "episodes": int,
    "transitions": int,
}


def episode_file_name(index: int) -> str:
    """Return the file name of episode ``index`` inside the ``episodes`` folder."""
    return f"episode-{index:06d}.safetensors"


# --- the format ----------------------------------------------------------------------------


def _expected_layout(
    observation_space: gymnasium.spaces.Dict, action_space: gymnasium.spaces.Box, has_reward: bool
) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Return key -> (dtype, per-step shape) of an episode file."""
    layout = {key: (np.dtype(space.dtype), tuple(space.shape)) for key, space in observation_space.spaces.items()}
    layout["action"] = (np.dtype(np.float32), tuple(action_space.shape))
    for key in FLAG_KEYS:
        layout[key] = (np.dtype(bool), ())
    if has_reward:
        layout["reward"] = (np.dtype(np.float32), ())
    return layout


def _check_episode(
    episode: Mapping[str, np.ndarray],
    source: str,
    layout: dict[str, tuple[np.dtype, tuple[int, ...]]],
) -> int:
    """Validate keys, dtypes, shapes and flags of one episode; return its length T."""
    missing = [key for key in layout if key not in episode]
    if missing:
        raise DatasetError(
            f"{source}: key {missing[0]!r} is missing; an episode holds {sorted(layout)}"
            + (" (write reward-free data with store_reward=False)." if missing == ["reward"] else ".")
        )
    unexpected = sorted(set(episode) - set(layout))
    if unexpected:
        raise DatasetError(
            f"{source}: key {unexpected[0]!r} is not part of this dataset; an episode holds {sorted(layout)}."
        )
    T = len(episode["is_first"]) if np.ndim(episode["is_first"]) else 0
    if T < 1:
        shape = np.shape(episode["is_first"])
        raise DatasetError(f"{source}: key 'is_first' has shape {shape}, expected (T,) with T >= 1.")
    for key, (dtype, shape) in layout.items():
        value = episode[key]
        if value.dtype != dtype:
            raise DatasetError(f"{source}: key {key!r} has dtype {value.dtype}, expected {dtype}.")
        if value.shape != (T, *shape):
            raise DatasetError(f"{source}: key {key!r} has shape {value.shape}, expected {(T, *shape)} (T={T} steps).")
    flags = {key: episode[key] for key in FLAG_KEYS}
    if not flags["is_first"][0] or flags["is_first"][1:].any():
        raise DatasetError(f"{source}: key 'is_first' must be true at step 0 only (one episode per file).")
    if not flags["is_last"][-1] or flags["is_last"][:-1].any():
        raise DatasetError(f"{source}: key 'is_last' must be true at the final step only (one episode per file).")
    if flags["is_terminal"][:-1].any():
        raise DatasetError(f"{source}: key 'is_terminal' may be true only at the final step.")
    return T


def _action_bounds(action_space: gymnasium.spaces.Box) -> tuple[np.ndarray, np.ndarray]:
    """The action space's bounds in float32, the dtype actions are stored in: rounding is monotone,
    so an action clipped to the space in any precision is still inside them once stored."""
    return np.asarray(action_space.low, np.float32), np.asarray(action_space.high, np.float32)


def _check_values(
    episode: dict[str, np.ndarray],
    source: str,
    bounds: tuple[np.ndarray, np.ndarray],
    *,
    clip_actions: bool,
    how_to_clip: str,
) -> None:
    """Refuse NaN or infinite values in any floating-point key, and actions outside the action space.

    Only the actions taken are bounded: the final step's action is never sent to the environment
    (zeros by convention), so it only has to be finite. With ``clip_actions`` the taken actions
    are clipped into the space (in place) instead of refused.
    """
    for key, value in episode.items():
        if value.dtype.kind in "fc" and not np.isfinite(value).all():
            bad = ~np.isfinite(value)
            step = int(np.argmax(bad.reshape(len(value), -1).any(axis=1)))
            raise DatasetError(
                f"{source}: key {key!r} holds a non-finite value at step {step} "
                f"({value[step].reshape(-1)[bad[step].reshape(-1)][0]}); the data is corrupt or a sensor failed."
            )
    taken = episode["action"][:-1]
    low, high = bounds
    outside = (taken < low) | (taken > high)
    if not outside.any():
        return
    if clip_actions:
        np.clip(taken, low, high, out=taken)
        return
    step = int(np.argmax(outside.reshape(len(taken), -1).any(axis=1)))
    raise DatasetError(
        f"{source}: key 'action' at step {step} is {_short(taken[step].tolist())}, outside the action space "
        f"[{_short(compact_bound(low))}, {_short(compact_bound(high))}]; fix the data, or clip it with {how_to_clip}."
    )


def _check_spaces(observation_space: gymnasium.spaces.Space, action_space: gymnasium.spaces.Space, source: str) -> None:
    if not isinstance(observation_space, gymnasium.spaces.Dict):
        raise DatasetError(
            f"{source}: observation_space must be a gymnasium.spaces.Dict of Boxes, got "
            f"{type(observation_space).__name__}; wrap the env so it returns a dict of named arrays."
        )
    clashing = sorted(set(observation_space.spaces) & set(NON_OBSERVATION_KEYS))
    if clashing:
        raise DatasetError(
            f"{source}: observation key {clashing[0]!r} clashes with the reserved keys {list(NON_OBSERVATION_KEYS)}."
        )
    if not isinstance(action_space, gymnasium.spaces.Box):
        raise DatasetError(f"{source}: action_space must be a gymnasium.spaces.Box, got {type(action_space).__name__}.")


def _json_ready(value: Any, what: str) -> Any:
    """Return ``value`` as it reads back from JSON, so stored and new values compare equal."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{what} must be JSON-serialisable: {exc}") from exc


def _read_info(directory: Path) -> tuple[dict[str, Any], gymnasium.spaces.Dict, gymnasium.spaces.Box]:
    """Read and validate ``dataset.json``; return it with the spaces it describes."""
    path = directory / DATASET_INFO_NAME
    expect_directory(directory, DATASET_INFO_NAME, DatasetError)
    info = read_json_object(path, error=DatasetError)
    check_metadata(
        path,
        info,
        file_format=FILE_FORMAT,
        version=FILE_FORMAT_VERSION,
        error=DatasetError,
        kind="dataset",
        required=_INFO_KEYS,
    )
    for key, expected in _INFO_TYPES.items():
        check_json_type(path, key, info[key], expected, DatasetError)
    for key in ("episodes", "transitions"):
        if info[key] < 0:
            raise DatasetError(f"{path}: key {key!r} is {info[key]!r}, expected an integer >= 0.")
    if not isinstance(info["has_reward"], bool):
        raise DatasetError(f"{path}: key 'has_reward' is {info['has_reward']!r}, expected true or false.")
    absent = next((index for index in range(info["episodes"]) if not _episode_path(directory, index).is_file()), None)
    if absent is not None:
        raise DatasetError(
            f"{path}: key 'episodes' is {info['episodes']} but {_episode_path(directory, absent)} does not exist; "
            "an episode file was removed or the dataset is corrupt."
        )
    observation_space, action_space = (
        stored_space(path, key, info[key], DatasetError) for key in ("observation_space", "action_space")
    )
    _check_spaces(observation_space, action_space, str(path))
    return info, observation_space, action_space


def _episode_path(directory: Path, index: int) -> Path:
    return directory / EPISODES_DIR_NAME / episode_file_name(index)


def _stored_steps(path: Path) -> int:
    """The steps of an episode file, from its header alone (``is_first`` is (T,))."""
    header, _ = read_safetensors_header(path, error=DatasetError)
    shape = header.get("is_first", {}).get("shape")
    if not isinstance(shape, list) or len(shape) != 1:
        raise DatasetError(f"{path}: key 'is_first' is missing or has shape {shape}, expected (T,).")
    return shape[0]


def _check_transitions(directory: Path, info: dict[str, Any], held: int) -> None:
    if held != info["transitions"]:
        raise DatasetError(
            f"{directory / DATASET_INFO_NAME}: key 'transitions' is {info['transitions']} but the episode files "
            f"hold {held} steps; an episode file was replaced or the dataset is corrupt."
        )


def _write_info(directory: Path, info: dict[str, Any]) -> None:
    write_text(directory / DATASET_INFO_NAME, json.dumps(info, indent=2, sort_keys=True) + "\n")


def _read_episode(
    path: Path,
    layout: dict[str, tuple[np.dtype, tuple[int, ...]]],
    bounds: tuple[np.ndarray, np.ndarray],
    clip_actions: bool,
) -> Episode:
    tensors, _ = read_checked(
        path, file_format=EPISODE_FORMAT, version=FILE_FORMAT_VERSION, error=DatasetError, kind="dataset episode"
    )
    episode = {}
    for key, tensor in tensors.items():
        try:
            episode[key] = tensor.numpy()
        except TypeError as exc:  # dtypes NumPy lacks, such as bfloat16
            raise DatasetError(f"{path}: key {key!r} has dtype {tensor.dtype}, which no dataset key uses.") from exc
    _check_episode(episode, str(path), layout)
    _check_values(
        episode, str(path), bounds, clip_actions=clip_actions, how_to_clip="load_dataset(..., clip_actions=True)"
    )
    return episode


# --- writing -------------------------------------------------------------------------------


class DatasetWriter:
    """Write episodes into a dataset directory, one safetensors file each, atomically.

    ``dataset.json`` is rewritten (atomically) after every episode, so a killed process leaves a
    valid dataset of the episodes finished so far. Opening an existing dataset appends to it;
    the env id, env kwargs, spaces and reward flag must match.

    :param directory: A new or empty directory, or an existing dataset to continue.
    :param env_id: The environment the data comes from.
    :param env_kwargs: The keyword arguments it was made with.
    :param observation_space: A Dict of Boxes; episodes are checked against it.
    :param action_space: A Box; actions are stored as float32.
    :param provenance: JSON-ready facts about the data (behaviour policy, noise, seed, ...); the
        date and library version are added. When continuing a dataset it is appended to
        ``resumes`` with the index of its first episode.
    :param store_reward: Keep the ``reward`` key; False writes reward-free data.
    :param clip_actions: Clip actions outside the action space into it instead of refusing the
        episode. Off by default: an action the environment could not have received means the
        data is wrong. (``collect`` clips its own actions as it acts, so its data always passes.)

    Every episode is checked before it is written: keys, dtypes, shapes and flags against the
    spaces, no NaN or infinite value in any key, and every action taken inside the action space;
    a problem raises :class:`DatasetError` naming the file, the key and the step.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        env_id: str,
        env_kwargs: dict[str, Any] | None = None,
        observation_space: gymnasium.spaces.Space,
        action_space: gymnasium.spaces.Space,
        provenance: dict[str, Any] | None = None,
        store_reward: bool = True,
        clip_actions: bool = False,
    ) -> None:
        self.directory = Path(directory)
        _check_spaces(observation_space, action_space, f"DatasetWriter({self.directory})")
        self.clip_actions = bool(clip_actions)
        self._bounds = _action_bounds(action_space)
        session = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "library_version": __version__,
            **_json_ready(provenance or {}, "provenance"),
        }
        identity = {
            "env_id": env_id,
            "env_kwargs": _json_ready(env_kwargs or {}, "env_kwargs"),
            "observation_space": _json_ready(space_to_json(observation_space), "observation_space"),
            "action_space": _json_ready(space_to_json(action_space), "action_space"),
            "has_reward": store_reward,
        }
        self._layout = _expected_layout(observation_space, action_space, store_reward)
        # A continuing session is recorded with its first episode, so opening alone changes nothing.
        self._resume: dict[str, Any] | None = None
        if (self.directory / DATASET_INFO_NAME).exists():
            self._continue(identity, observation_space, action_space)
            self._resume = session
        else:
            self._create(identity, session)

    def _continue(
        self, identity: dict[str, Any], observation_space: gymnasium.spaces.Space, action_space: gymnasium.spaces.Space
    ) -> None:
        """Open an existing dataset after checking it holds the same kind of data."""
        self.info, stored_observation, stored_action = _read_info(self.directory)
        # Counts that disagree with the files would make the next episode overwrite one, or leave a gap.
        held = sum(_stored_steps(_episode_path(self.directory, index)) for index in range(self.info["episodes"]))
        _check_transitions(self.directory, self.info, held)
        # Spaces compare as spaces (their JSON spelling changed: earlier versions wrote a
        # uniform bound out element by element); the rest as stored.
        stored = {**self.info, "observation_space": stored_observation, "action_space": stored_action}
        new = {**identity, "observation_space": observation_space, "action_space": action_space}
        for key, value in identity.items():
            if stored[key] != new[key]:
                raise DatasetError(
                    f"{self.directory / DATASET_INFO_NAME}: key {key!r} differs from the data being added "
                    f"(stored {_short(self.info[key])}, new {_short(value)}); write to another directory."
                )

    def _create(self, identity: dict[str, Any], session: dict[str, Any]) -> None:
        """Start a new, empty dataset in a new or empty directory."""
        if self.directory.exists() and any(self.directory.iterdir()):
            raise DatasetError(
                f"{self.directory}: not empty and has no {DATASET_INFO_NAME}; choose a new or empty directory."
            )
        self.info = {
            "format": FILE_FORMAT,
            "format_version": FILE_FORMAT_VERSION,
            **identity,
            "provenance": session,
            "resumes": [],
            "episodes": 0,
            "transitions": 0,
        }
        _write_info(self.directory, self.info)

    @property
    def episodes(self) -> int:
        """Episodes stored so far (the index the next one gets)."""
        return self.info["episodes"]

    @property
    def transitions(self) -> int:
        """Steps stored so far, over all episodes."""
        return self.info["transitions"]

    def add_episode(self, episode: Mapping[str, np.ndarray]) -> Path:
        """Validate ``episode`` (an :class:`EpisodeRecorder` dict) and write it; return its path.

        With ``store_reward=False`` a ``reward`` key is dropped rather than refused. Non-finite
        values and actions outside the action space raise :class:`DatasetError` (naming the file,
        key and step) unless the writer clips actions; ``episode`` itself is never modified.
        """
        index = self.info["episodes"]
        path = _episode_path(self.directory, index)
        arrays = {key: np.asarray(value) for key, value in episode.items()}
        if "reward" not in self._layout:
            arrays.pop("reward", None)
        T = _check_episode(arrays, f"episode for {path}", self._layout)
        if self.clip_actions:
            arrays["action"] = arrays["action"].copy()
        _check_values(
            arrays,
            f"episode for {path}",
            self._bounds,
            clip_actions=self.clip_actions,
            how_to_clip="DatasetWriter(..., clip_actions=True)",
        )
        metadata = {"format": EPISODE_FORMAT, "format_version": str(FILE_FORMAT_VERSION)}
        write_safetensors(path, {key: torch.tensor(value) for key, value in arrays.items()}, metadata)
        # The episode file is complete before dataset.json counts it: a kill in between only
        # leaves a file that the next writer overwrites.
        if self._resume is not None:
            self.info["resumes"].append({"first_episode": index, **self._resume})
            self._resume = None
        self.info["episodes"] = index + 1
        self.info["transitions"] += T
        _write_info(self.directory, self.info)
        return path


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 120 else text[:117] + "..."


# --- reading -------------------------------------------------------------------------------


@dataclass
class Dataset:
    """Episodes loaded into memory, with the spaces and ``dataset.json`` they came with."""

    episodes: list[Episode]
    observation_space: gymnasium.spaces.Dict
    action_space: gymnasium.spaces.Box
    info: dict[str, Any]

    @property
    def transitions(self) -> int:
        """Steps held, over all loaded episodes."""
        return sum(len(episode["is_first"]) for episode in self.episodes)

    def sequences(self, length: int, *, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
        """Cut every episode into non-overlapping windows of ``length`` steps, as (N, length, ...) tensors.

        The tail of an episode shorter than ``length`` is dropped, and so are (with a warning)
        whole episodes shorter than ``length``. ``is_first`` is true at the start of every
        window: a window starting mid-episode has no context, so the model resets there and its
        KL is masked. This is what :func:`latent_residual.fitting.fit_residual` consumes.
        """
        if not isinstance(length, int) or isinstance(length, bool) or length < 1:
            raise ConfigError(f"sequence length must be an integer >= 1, got {length!r}.")
        usable = [episode for episode in self.episodes if len(episode["is_first"]) >= length]
        if not usable:
            raise DatasetError(
                f"no episode of this dataset ({len(self.episodes)} episodes) has {length} steps; "
                "use a shorter sequence length or collect longer episodes."
            )
        if len(usable) < len(self.episodes):
            warnings.warn(
                f"{len(self.episodes) - len(usable)} of {len(self.episodes)} episodes are shorter than "
                f"{length} steps and are left out.",
                stacklevel=2,
            )
        windows: dict[str, list[np.ndarray]] = {key: [] for key in usable[0]}
        for episode in usable:
            count = len(episode["is_first"]) // length
            for key, values in windows.items():
                value = episode[key][: count * length]
                values.extend(value.reshape(count, length, *value.shape[1:]))
        out = {key: torch.from_numpy(np.stack(values)) for key, values in windows.items()}
        out["is_first"][:, 0] = True
        return {key: value.to(device) for key, value in out.items()}


def load_dataset(directory: str | Path, *, max_transitions: int | None = None, clip_actions: bool = False) -> Dataset:
    """Load and validate a dataset directory.

    Every episode file's framing, keys, dtypes, shapes (against the stored spaces) and flags are
    checked, and its values: no NaN or infinite value in any key, every action taken inside the
    stored action space. Any problem raises DatasetError naming the file, the key and the step.

    :param max_transitions: Keep whole episodes in order until this many steps; the last one is
        cut to fit exactly, its final step marked ``is_last`` (a truncation, not a termination).
    :param clip_actions: Clip actions outside the action space into it (in memory; the files are
        not changed) instead of refusing the dataset.
    """
    if max_transitions is not None and (not isinstance(max_transitions, int) or max_transitions < 1):
        raise ConfigError(f"max_transitions must be None or an integer >= 1, got {max_transitions!r}.")
    directory = Path(directory)
    info, observation_space, action_space = _read_info(directory)
    layout = _expected_layout(observation_space, action_space, info["has_reward"])
    bounds = _action_bounds(action_space)
    episodes: list[Episode] = []
    stored = 0
    for index in range(info["episodes"]):
        if max_transitions is not None and stored >= max_transitions:
            break
        episode = _read_episode(_episode_path(directory, index), layout, bounds, clip_actions)
        T = len(episode["is_first"])
        if max_transitions is not None and stored + T > max_transitions:
            keep = max_transitions - stored
            episode = {key: value[:keep].copy() for key, value in episode.items()}
            episode["is_last"][-1] = True
            episode["is_terminal"][-1] = False
            T = keep
        episodes.append(episode)
        stored += T
    if max_transitions is None:
        _check_transitions(directory, info, stored)
    return Dataset(episodes, observation_space, action_space, info)


def reward_free_sequences(
    directory: str | Path, length: int, *, max_transitions: int | None = None
) -> dict[str, torch.Tensor]:
    """The (N, ``length``, ...) training sequences of a target dataset, without its rewards (adaptation never
    uses target rewards)."""
    sequences = load_dataset(directory, max_transitions=max_transitions).sequences(length)
    sequences.pop("reward", None)
    return sequences
