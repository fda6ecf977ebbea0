"""Vectorised collection: several copies of a registered environment, one worker process each.

Only the process plumbing lives here; the environment itself is in ``env.py``.
"""

from __future__ import annotations

from functools import partial
from typing import Any

import gymnasium

from latent_residual.errors import ConfigError
from latent_residual.registry.lookup import env_spec, make_env


def make_vector_env(
    id: str, num_envs: int, *, context: str = "spawn", **kwargs: Any
) -> gymnasium.vector.AsyncVectorEnv:
    """Return ``num_envs`` copies of environment ``id``, each stepping in its own process.

    ``reset(seed=s)`` seeds copy ``i`` with ``s + i``. Worker processes make their copy through
    ``latent_residual.make_env``, which loads the plugins there as well.

    :param id: A registered environment id, for example ``"dmc/cup-catch-v0"``.
    :param num_envs: The number of copies (and worker processes).
    :param context: The multiprocessing start method. "spawn" is the default: a forked child
        would inherit the parent's GL state if the parent has rendered, and GL drivers do not
        support using a context across a fork.
    :param kwargs: Passed to every copy, for example ``pixels=True``.
    """
    if not isinstance(num_envs, int) or num_envs < 1:
        raise ConfigError(f"num_envs must be a positive integer, got {num_envs!r}.")
    env_spec(id)  # fail here, with a suggestion, rather than inside every worker
    return gymnasium.vector.AsyncVectorEnv([partial(make_env, id, **kwargs) for _ in range(num_envs)], context=context)
