"""Convert a sheeprl DreamerV3 or P2E-DV3 checkpoint into an ``rssm-v0`` world model and an actor-critic file,
every tensor mapped by an explicit rule, with sheeprl's numbers reproduced (tests/test_sheeprl_import.py).

Registration is in ``__init__.py``; sheeprl itself is never imported (its checkpoint is read weights-only).
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import pickle
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium
import torch
from torch import Tensor

import latent_residual as lr
from latent_residual.actor_critic import ActorCritic, ActorCriticConfig, save_actor_critic
from latent_residual.checkpoints import save_world_model
from latent_residual.errors import CheckpointError, ConfigError
from latent_residual.serialization import atomic_write_directory, write_text
from latent_residual.workflow.paths import check_output_directory

BACKBONE = "rssm-v0"
WORLD_MODEL_DIR = "world_model"
ACTOR_CRITIC_NAME = "actor_critic.safetensors"
PROVENANCE_NAME = "provenance.json"
#: sheeprl's LayerNorm everywhere (float32 in, float32 out), DreamerV3's epsilon and activation.
NORM_CLS = "sheeprl.models.models.LayerNorm"
NORM_EPS = 1e-3
ACTIVATION = "torch.nn.SiLU"
#: Our Actor's std is (max - min) * sigmoid(raw + 2) + min: sheeprl's ``init_std`` must be 2.
ACTOR_INIT_STD = 2.0
#: The two-hot bins of our critic (``TwoHotHead``'s default).
CRITIC_BINS = 255
DMC_WRAPPER = "sheeprl.envs.dmc.DMCWrapper"
#: Algorithm -> the checkpoint entries holding the actor, critic and slow (target) critic we import.
PARTS = {
    "dreamer_v3": {"actor": "actor", "critic": "critic", "target_critic": "target_critic", "moments": "moments"},
    "p2e_dv3_exploration": {
        "actor": "actor_task",
        "critic": "critic_task",
        "target_critic": "target_critic_task",
        "moments": "moments_task",
    },
    "p2e_dv3_finetuning": {
        "actor": "actor_task",
        "critic": "critic_task",
        "target_critic": "target_critic_task",
        "moments": "moments_task",
    },
}
#: Entries of a checkpoint that are read by nothing here: optimiser states, counters, Plan2Explore's exploration
#: actor, critics and disagreement ensembles.
SKIPPED = re.compile(
    r"^(.*_optimizer|moments.*|ratio|iter_num|batch_size|last_log|last_checkpoint|per_rank_gradient_steps"
    r"|ensembles|actor_exploration|critics?_exploration.*|target_critics?_exploration.*)$"
)
#: How to drop the replay buffer ('rb') from a checkpoint, run where sheeprl is installed (it unpickles).
_REBUILD_HINT = (
    're-save it without the buffer where sheeprl is installed: python -c "import torch; '
    "s = torch.load('{path}', weights_only=False); s.pop('rb'); torch.save(s, '{path}')\" "
    "(or train with buffer.checkpoint=False)"
)


# ---------------------------------------------------------------------------
# Reading: the checkpoint (weights only) and the run's config
# ---------------------------------------------------------------------------


def read_checkpoint(path: Path) -> tuple[dict[str, Any], str]:
    """The checkpoint's entries, loaded once with ``weights_only=True``, and the file's sha256."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read the sheeprl checkpoint ({exc}).") from exc
    digest = hashlib.sha256(data).hexdigest()
    try:
        state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is not None:
            raise CheckpointError(
                f"{path}: holds a pickled {found[1]}, not only tensors (sheeprl writes its replay buffer into "
                f"checkpoints when buffer.checkpoint=True); nothing else is unpickled here, so "
                f"{_REBUILD_HINT.format(path=path)}."
            ) from exc
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); it may be corrupt."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch checkpoint ({_first_line(exc)}); the file is truncated or corrupt, copy "
            "it again from the sheeprl run."
        ) from exc
    if not isinstance(state, dict) or "world_model" not in state:
        raise CheckpointError(f"{path}: not a sheeprl DreamerV3 checkpoint (no 'world_model' entry).")
    return state, digest


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def find_config(checkpoint: Path, config: Path | None) -> tuple[Path, dict[str, Any]]:
    """sheeprl's resolved config: ``config``, or ``config.yaml`` two folders above the checkpoint as sheeprl's
    own tools find it (``<run>/version_0/checkpoint/ckpt_<step>_<rank>.ckpt``)."""
    import yaml

    path = config if config is not None else checkpoint.resolve().parents[1] / "config.yaml"
    if not path.is_file():
        raise ConfigError(
            f"{path}: no sheeprl config.yaml there (sheeprl keeps it two folders above the checkpoint); pass --config."
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a YAML file ({_first_line(exc)}).") from exc
    if not isinstance(data, dict) or "algo" not in data or "env" not in data:
        raise ConfigError(f"{path}: not a sheeprl run config (no 'algo' and 'env' sections).")
    return path, data


def _get(cfg: Mapping[str, Any], dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            raise ConfigError(f"sheeprl config lacks {dotted!r}; is it a DreamerV3 run of sheeprl 0.8?")
        node = node[part]
    return node


def _require(cfg: Mapping[str, Any], dotted: str, expected: Any, why: str) -> None:
    value = _get(cfg, dotted)
    if value != expected:
        raise ConfigError(f"unsupported sheeprl option {dotted}={value!r}: this importer needs {expected!r} ({why}).")


def _same(cfg: Mapping[str, Any], keys: list[str], what: str) -> Any:
    values = {key: _get(cfg, key) for key in keys}
    if len(set(values.values())) > 1:
        raise ConfigError(f"unsupported sheeprl options {values}: the RSSM has one {what} for all of them.")
    return next(iter(values.values()))


# ---------------------------------------------------------------------------
# The model's sizes and spaces, from the config and the environment
# ---------------------------------------------------------------------------


@dataclass
class Plan:
    """What the conversion needs: the RSSM's kwargs, the environment, and the observation layouts."""

    algo: str
    env_id: str
    #: What the environment is made with to match sheeprl's run (a DMC run's action repeat).
    env_kwargs: dict[str, Any]
    rssm_kwargs: dict[str, Any]
    ac_config: ActorCriticConfig
    observation_space: Any
    action_space: Any
    #: Our vector keys in sheeprl's order with their (offset, size) in sheeprl's concatenated input.
    sheeprl_slices: dict[str, tuple[int, int]]


_WM = "algo.world_model"
_UNIT_KEYS = [
    f"{_WM}.{part}.dense_units"
    for part in ("recurrent_model", "encoder", "observation_model", "reward_model", "discount_model")
]
_LAYER_KEYS = [
    f"{_WM}.{part}.mlp_layers" for part in ("encoder", "observation_model", "reward_model", "discount_model")
]
_NORMS = [
    f"{_WM}.encoder.mlp_layer_norm",
    f"{_WM}.recurrent_model.layer_norm",
    f"{_WM}.transition_model.layer_norm",
    f"{_WM}.representation_model.layer_norm",
    f"{_WM}.observation_model.mlp_layer_norm",
    f"{_WM}.reward_model.layer_norm",
    f"{_WM}.discount_model.layer_norm",
    "algo.actor.layer_norm",
    "algo.critic.layer_norm",
]
_ACTIVATIONS = [
    f"{_WM}.encoder.dense_act",
    f"{_WM}.transition_model.dense_act",
    f"{_WM}.representation_model.dense_act",
    f"{_WM}.observation_model.dense_act",
    f"{_WM}.reward_model.dense_act",
    f"{_WM}.discount_model.dense_act",
    "algo.actor.dense_act",
    "algo.critic.dense_act",
]


def check_config(cfg: Mapping[str, Any], env_id: str | None) -> Plan:
    """Check every option the conversion depends on and work out the RSSM, the actor-critic and the spaces."""
    algo = _get(cfg, "algo.name")
    encoder_keys = _check_options(cfg, algo)
    env_id, env_kwargs, observation_space, action_space, slices = _spaces(cfg, env_id, encoder_keys)
    return Plan(algo, env_id, env_kwargs, _rssm_kwargs(cfg), _ac_config(cfg), observation_space, action_space, slices)


def _check_options(cfg: Mapping[str, Any], algo: str) -> list[str]:
    """Refuse every sheeprl option the conversion does not reproduce; return the encoder's observation keys."""
    if algo not in PARTS:
        raise ConfigError(f"unsupported sheeprl algorithm algo.name={algo!r}; this importer reads {sorted(PARTS)}.")
    if _get(cfg, "algo.cnn_keys.encoder") or _get(cfg, "algo.cnn_keys.decoder"):
        raise ConfigError(
            f"unsupported sheeprl option algo.cnn_keys.encoder={_get(cfg, 'algo.cnn_keys.encoder')!r}: this importer "
            "reads vector observations only (train with env.wrapper.from_pixels=False, algo.cnn_keys.encoder=[])."
        )
    encoder_keys, decoder_keys = list(_get(cfg, "algo.mlp_keys.encoder")), list(_get(cfg, "algo.mlp_keys.decoder"))
    if encoder_keys != decoder_keys or not encoder_keys:
        raise ConfigError(
            f"unsupported sheeprl options algo.mlp_keys.encoder={encoder_keys} and decoder={decoder_keys}: the RSSM "
            "decodes every observation key it encodes."
        )
    for key in _NORMS:
        _require(cfg, f"{key}.cls", NORM_CLS, "DreamerV3's LayerNorm")
        _require(cfg, f"{key}.kw.eps", NORM_EPS, "the RSSM's LayerNorm epsilon")
    for key in _ACTIVATIONS:
        _require(cfg, key, ACTIVATION, "the RSSM's activation")
    if _get(cfg, "distribution.type") not in ("auto", "scaled_normal"):
        raise ConfigError(
            f"unsupported sheeprl option distribution.type={_get(cfg, 'distribution.type')!r}: this importer needs "
            "'auto' or 'scaled_normal' (the actor's deterministic action tanh(mean))."
        )
    _require(cfg, "algo.actor.init_std", ACTOR_INIT_STD, "the actor's std offset")
    _require(cfg, "algo.critic.bins", CRITIC_BINS, "the critic's two-hot bins")
    _require(
        cfg,
        f"{_WM}.transition_model.hidden_size",
        _get(cfg, f"{_WM}.representation_model.hidden_size"),
        "one hidden size for prior and posterior",
    )
    for key in ("dense_units", "mlp_layers"):
        _require(cfg, f"algo.critic.{key}", _get(cfg, f"algo.actor.{key}"), "one size for actor and critic")
    return encoder_keys


def _spaces(cfg: Mapping[str, Any], env_id: str | None, encoder_keys: list[str]) -> tuple[Any, ...]:
    """The environment the checkpoint was trained on: its id and keywords, spaces, and where each observation key
    sits in sheeprl's state vector."""
    env_id, dmc_order = _environment(cfg, env_id)
    # sheeprl repeats each action env.action_repeat times around its DMC wrapper; DMCEnv takes it as a keyword.
    env_kwargs = {"action_repeat": _get(cfg, "env.action_repeat")} if dmc_order else {}
    env = lr.make_env(env_id, **env_kwargs)
    try:
        observation, _ = env.reset(seed=0)
        observation_space, action_space = env.observation_space, env.action_space
    finally:
        env.close()
    if not isinstance(action_space, gymnasium.spaces.Box):
        raise ConfigError(
            f"environment {env_id!r} has {action_space!r} actions; this importer needs continuous (Box) ones."
        )
    vector_keys = {key: math.prod(space.shape) for key, space in observation_space.spaces.items()}
    # sheeprl's DMC wrapper concatenates dm_control's keys in dm_control's order into one "state" vector.
    order = list(observation) if dmc_order else encoder_keys
    missing = sorted(set(vector_keys) - set(order)) or sorted(set(order) - set(vector_keys))
    if missing:
        raise ConfigError(
            f"sheeprl observation keys {order} do not match environment {env_id!r}'s keys {sorted(vector_keys)}."
        )
    slices, offset = {}, 0
    for key in order:
        slices[key] = (offset, vector_keys[key])
        offset += vector_keys[key]
    return env_id, env_kwargs, observation_space, action_space, slices


def _rssm_kwargs(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``rssm-v0``'s keywords for the checkpoint's world model."""
    return {
        "preset": "XS",
        "stoch": _get(cfg, f"{_WM}.stochastic_size"),
        "classes": _get(cfg, f"{_WM}.discrete_size"),
        "deter": _get(cfg, f"{_WM}.recurrent_model.recurrent_state_size"),
        "hidden": _get(cfg, f"{_WM}.transition_model.hidden_size"),
        "units": _same(cfg, _UNIT_KEYS, "dense_units"),
        "mlp_layers": _same(cfg, _LAYER_KEYS, "mlp_layers"),
        "reward_bins": _get(cfg, f"{_WM}.reward_model.bins"),
        "unimix": _get(cfg, "algo.unimix"),
        "decoupled": bool(_get(cfg, f"{_WM}.decoupled_rssm")),
    }


def _ac_config(cfg: Mapping[str, Any]) -> ActorCriticConfig:
    """The actor-critic's config for the checkpoint's actor and critic, imagining as sheeprl does."""
    return ActorCriticConfig(
        hidden=_get(cfg, "algo.actor.dense_units"),
        layers=_get(cfg, "algo.actor.mlp_layers"),
        horizon=_get(cfg, "algo.horizon"),
        gamma=_get(cfg, "algo.gamma"),
        lam=_get(cfg, "algo.lmbda"),
        entropy=_get(cfg, "algo.actor.ent_coef"),
        actor_lr=_get(cfg, "algo.actor.optimizer.lr"),
        critic_lr=_get(cfg, "algo.critic.optimizer.lr"),
        min_std=_get(cfg, "algo.actor.min_std"),
        max_std=_get(cfg, "algo.actor.max_std"),
        dense_bias=False,
        norm_eps=NORM_EPS,
        # How sheeprl's DreamerV3 imagines: the continuation's mode, the actor on detached states.
        continuation="mode",
        detach_actor_input=True,
    )


def _environment(cfg: Mapping[str, Any], env_id: str | None) -> tuple[str, bool]:
    """The environment id (given, or the registered DMC source of sheeprl's domain and task) and whether
    sheeprl saw it through its DMC wrapper (one "state" vector in dm_control's key order)."""
    dmc = _get(cfg, "env.wrapper").get("_target_") == DMC_WRAPPER
    if dmc and _get(cfg, "algo.mlp_keys.encoder") != ["state"]:
        raise ConfigError(
            f"sheeprl's DMC wrapper observes 'state'; got algo.mlp_keys.encoder={_get(cfg, 'algo.mlp_keys.encoder')}."
        )
    if env_id is not None:
        return env_id, dmc
    if not dmc:
        raise ConfigError(
            f"sheeprl env {_get(cfg, 'env.id')!r} ({_get(cfg, 'env.wrapper').get('_target_')}) is not DMC, so its "
            "environment here is unknown; pass --env ID (`latent-residual plugins` lists them)."
        )
    domain, task = _get(cfg, "env.wrapper.domain_name"), _get(cfg, "env.wrapper.task_name")
    sources = sorted(
        spec.id for spec in lr.list_envs() if spec.kwargs == {"domain": domain, "task": task, "target": None}
    )
    if not sources:
        raise ConfigError(
            f"no environment is registered for sheeprl's DMC {domain}/{task}; pass --env ID "
            "(`latent-residual plugins` lists them)."
        )
    # The suite's own id (as Gymnasium's DMC bridges name it) before a paper variant of the same task.
    suite_id = f"dmc/{domain}-{task}-v0"
    return (suite_id if suite_id in sources else sources[0]), True


# ---------------------------------------------------------------------------
# Tensor mapping: one rule per tensor of our model
# ---------------------------------------------------------------------------

Transform = Callable[[Tensor], Tensor]
Rules = dict[str, tuple[str, Transform]]


def _keep(tensor: Tensor) -> Tensor:
    return tensor


def _columns(index: Tensor) -> Transform:
    return lambda weight: weight[:, index]


def _mlp(ours: str, theirs: str, layers: int, *, first: Transform, out: str | None) -> Rules:
    """sheeprl's ``MLP`` (``_model.{3i}`` Linear, ``_model.{3i+1}`` LayerNorm, then the output Linear at
    ``_model.{3L}``) onto our ``dense_blocks`` (``ours.{3i}``) or ``dense_head`` (``ours.body.{3i}``, ``ours.out``).

    :param first: The transform of the first Linear's weight (its input columns reordered).
    :param out: None: no output layer (our ``dense_blocks``); ``""``: sheeprl's at ``_model.{3L}``; else
        the key prefix of sheeprl's separate output Linear (the actor's ``mlp_heads.0``).
    """
    body = ours if out is None else f"{ours}.body"
    rules: Rules = {}
    for i in range(layers):
        rules[f"{body}.{3 * i}.weight"] = (f"{theirs}._model.{3 * i}.weight", first if i == 0 else _keep)
        rules[f"{body}.{3 * i + 1}.weight"] = (f"{theirs}._model.{3 * i + 1}.weight", _keep)
        rules[f"{body}.{3 * i + 1}.bias"] = (f"{theirs}._model.{3 * i + 1}.bias", _keep)
    if out is not None:
        rules[f"{ours}.out.weight"] = (
            f"{theirs}._model.{3 * layers}.weight" if out == "" else f"{out}.weight",
            first if layers == 0 else _keep,
        )
        rules[f"{ours}.out.bias"] = (f"{theirs}._model.{3 * layers}.bias" if out == "" else f"{out}.bias", _keep)
    return rules


def _feature_columns(plan: Plan) -> Transform:
    """sheeprl's features are [z, h], ours [h, z]: the first Linear of every head takes its columns swapped."""
    SD, H = plan.rssm_kwargs["stoch"] * plan.rssm_kwargs["classes"], plan.rssm_kwargs["deter"]
    return _columns(torch.cat([torch.arange(SD, SD + H), torch.arange(SD)]))


def world_model_rules(plan: Plan) -> Rules:
    """Our RSSM's state-dict keys -> (sheeprl ``world_model`` key, transform)."""
    L, features = plan.rssm_kwargs["mlp_layers"], _feature_columns(plan)
    # Our encoder concatenates vector keys sorted, sheeprl in its own order.
    sorted_keys = sorted(plan.sheeprl_slices)
    inputs = _columns(torch.cat([torch.arange(o, o + n) for o, n in (plan.sheeprl_slices[key] for key in sorted_keys)]))
    rules: Rules = {"initial_deter": ("rssm.initial_recurrent_state", _keep)}
    rules |= _mlp("encoder.vectors", "encoder.mlp_encoder.model", L, first=inputs, out=None)
    rules |= _mlp("recurrent.inputs", "rssm.recurrent_model.mlp", 1, first=_keep, out=None)
    rules |= {
        "recurrent.cell.linear.weight": ("rssm.recurrent_model.rnn.linear.weight", _keep),
        "recurrent.cell.norm.weight": ("rssm.recurrent_model.rnn.layer_norm.weight", _keep),
        "recurrent.cell.norm.bias": ("rssm.recurrent_model.rnn.layer_norm.bias", _keep),
    }
    rules |= _mlp("prior", "rssm.transition_model", 1, first=_keep, out="")
    rules |= _mlp("post", "rssm.representation_model", 1, first=_keep, out="")
    rules |= _mlp("decoder.vectors", "observation_model.mlp_decoder.model", L, first=features, out=None)
    for key, (offset, size) in plan.sheeprl_slices.items():
        rows = slice(offset, offset + size)  # sheeprl's one head per sheeprl key, split into ours per env key
        rules[f"decoder.heads.{key}.weight"] = (
            "observation_model.mlp_decoder.heads.0.weight",
            lambda w, rows=rows: w[rows],
        )
        rules[f"decoder.heads.{key}.bias"] = (
            "observation_model.mlp_decoder.heads.0.bias",
            lambda b, rows=rows: b[rows],
        )
    rules |= _mlp("reward_head", "reward_model", L, first=features, out="")
    rules |= _mlp("cont_head", "continue_model", L, first=features, out="")
    return rules


def actor_critic_rules(plan: Plan, parts: Mapping[str, str]) -> dict[str, tuple[str, str, Transform]]:
    """Our ``ActorCritic``'s state-dict keys -> (checkpoint entry, key in it, transform)."""
    layers, features = plan.ac_config.layers, _feature_columns(plan)
    rules: dict[str, tuple[str, str, Transform]] = {}
    heads = {
        "actor.net": ("actor", "model", "mlp_heads.0"),
        "critic.net": ("critic", "", ""),
        "slow_critic.net": ("target_critic", "", ""),
    }
    for ours, (part, prefix, out) in heads.items():
        mlp = _mlp(ours, prefix, layers, first=features, out=out or "")
        for key, (theirs, transform) in mlp.items():
            rules[key] = (parts[part], theirs.lstrip("."), transform)
    return rules


def _apply(
    rules: Mapping[str, tuple[str, Transform]],
    tensors: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    where: str,
) -> dict[str, Tensor]:
    """Every expected key from its rule; an unmapped, missing or misshapen tensor is an error naming it."""
    unmapped = sorted(set(expected) - set(rules))
    if unmapped:
        raise CheckpointError(
            f"no rule maps the model's {unmapped[:5]} (the RSSM's layout changed?); nothing was written."
        )
    used = {theirs for theirs, _ in rules.values()}
    extra = sorted(set(tensors) - used)
    if extra:
        raise CheckpointError(
            f"{where} holds tensors no rule maps: {extra[:5]}; unsupported sheeprl layout, nothing was written."
        )
    mapped = {}
    for key, (theirs, transform) in rules.items():
        if theirs not in tensors:
            raise CheckpointError(f"{where} lacks {theirs!r} (for our {key!r}); nothing was written.")
        tensor = tensors[theirs]
        if not isinstance(tensor, Tensor):
            raise CheckpointError(f"{where}[{theirs!r}] is a {type(tensor).__name__}, expected a tensor.")
        try:
            value = transform(tensor.detach().to(torch.float32))
        except IndexError as exc:
            raise CheckpointError(
                f"{where}[{theirs!r}] has shape {tuple(tensor.shape)}, which does not fit our {key!r} ({exc})."
            ) from exc
        if not torch.isfinite(value).all():
            raise CheckpointError(
                f"{where}[{theirs!r}] holds NaN or infinite values; the sheeprl run diverged, nothing was written."
            )
        if value.shape != expected[key].shape:
            raise CheckpointError(
                f"{where}[{theirs!r}] has shape {tuple(tensor.shape)}; our {key!r} needs {tuple(expected[key].shape)} "
                "(the config and the checkpoint disagree)."
            )
        mapped[key] = value.contiguous()
    return mapped


# ---------------------------------------------------------------------------
# The conversion
# ---------------------------------------------------------------------------


def convert(
    state: Mapping[str, Any], cfg: Mapping[str, Any], env_id: str | None = None
) -> tuple[Any, ActorCritic, Plan]:
    """Build our world model and actor-critic from a loaded checkpoint and its config (nothing written)."""
    the_plan = check_config(cfg, env_id)
    parts = PARTS[the_plan.algo]
    unknown = sorted(key for key in state if key not in ("world_model", *parts.values()) and not SKIPPED.match(key))
    if unknown:
        raise CheckpointError(f"the checkpoint has entries {unknown} this importer does not know; nothing was written.")
    for part in ("actor", "critic", "target_critic"):
        if not isinstance(state.get(parts[part]), Mapping):
            raise CheckpointError(f"the {the_plan.algo} checkpoint lacks its {parts[part]!r} entry.")
    model = lr.make_backbone(BACKBONE, the_plan.observation_space, the_plan.action_space, **the_plan.rssm_kwargs)
    weights = _apply(world_model_rules(the_plan), state["world_model"], model.state_dict(), "world_model")
    model.load_state_dict(weights, strict=True)

    A = math.prod(the_plan.action_space.shape)
    actor_critic = ActorCritic(model.feature_size, A, the_plan.ac_config)
    expected = {k: v for k, v in actor_critic.state_dict().items() if k != "return_scale"}
    rules = actor_critic_rules(the_plan, parts)
    if not set(expected) <= set(rules):
        raise CheckpointError(
            f"no rule maps the actor-critic's {sorted(set(expected) - set(rules))[:5]}; nothing was written."
        )
    for entry in ("actor", "critic", "target_critic"):
        name = parts[entry]
        own = {key: (theirs, transform) for key, (part, theirs, transform) in rules.items() if part == name}
        mine = {key: value for key, value in expected.items() if key in own}
        actor_critic.load_state_dict(_apply(own, state[name], mine, name), strict=False)
    moments = state.get(parts["moments"])
    if isinstance(moments, Mapping) and {"low", "high"} <= set(moments):
        # sheeprl divides advantages by max(1, high - low); our return_scale holds high - low, clamped the same.
        actor_critic.return_scale.copy_(torch.as_tensor(moments["high"] - moments["low"], dtype=torch.float32))
    return model, actor_critic, the_plan


def import_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    env_id: str | None = None,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Convert a sheeprl DreamerV3 or P2E-DV3 checkpoint into ``out``: ``world_model/`` (load with
    ``latent_residual.load_world_model``), ``actor_critic.safetensors`` (``load_actor_critic``; P2E's task
    actor and critics) and ``provenance.json``. The directory is written whole or not at all.

    :param checkpoint: ``<run>/version_0/checkpoint/ckpt_<step>_<rank>.ckpt``.
    :param config: sheeprl's resolved config; ``config.yaml`` two folders above the checkpoint by default.
    :param env_id: The environment the model is for; by default the registered DMC source of sheeprl's
        ``env.wrapper.domain_name`` and ``task_name``. A DMC run's ``env.action_repeat`` is recorded as the
        environment's ``action_repeat`` keyword (``env_kwargs`` in ``provenance.json``).
    :returns: What was written: ``{"world_model": dir, "actor_critic": file, "provenance": file}``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    check_output_directory(out, option="--out", finished=(PROVENANCE_NAME,), overwrite=overwrite, beside=True)
    config_path, cfg = find_config(checkpoint, Path(config) if config is not None else None)
    state, digest = read_checkpoint(checkpoint)
    model, actor_critic, the_plan = convert(state, cfg, env_id)
    provenance = {
        "imported_from": "sheeprl",
        "source_file": str(checkpoint.resolve()),
        "source_sha256": digest,
        "source_config": str(config_path.resolve()),
        "sheeprl_algo": the_plan.algo,
        "env_id": the_plan.env_id,
        "env_kwargs": the_plan.env_kwargs,
        "sheeprl_config": cfg,
    }

    def write(tmp: Path) -> None:
        save_world_model(model, tmp / WORLD_MODEL_DIR, extra=provenance)
        save_actor_critic(
            actor_critic, tmp / ACTOR_CRITIC_NAME, extra={k: v for k, v in provenance.items() if k != "sheeprl_config"}
        )
        write_text(tmp / PROVENANCE_NAME, json.dumps(provenance, indent=2, sort_keys=True, default=str) + "\n")

    atomic_write_directory(out, write)
    return {
        "world_model": out / WORLD_MODEL_DIR,
        "actor_critic": out / ACTOR_CRITIC_NAME,
        "provenance": out / PROVENANCE_NAME,
    }
