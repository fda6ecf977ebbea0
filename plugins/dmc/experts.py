"""Scripted experts for DMC tasks: behaviour policies for collecting data, not learned policies.

Pendulum swing-up, the reacher and the finger's turn tasks have one; the environments themselves are in ``env.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from latent_residual.errors import ConfigError
from latent_residual_plugins.dmc.targets import get_target

if TYPE_CHECKING:
    from latent_residual_plugins.dmc.env import DMCEnv

# The pendulum's m*g*l/I, measured as omega_bottom**2 / 4 after a fall from upright.
_GRAVITY_TERM = 16.3
# Aim slightly above the upright energy: damping drains some on the way up.
_TARGET_ENERGY = 3.0
_CAPTURE_COSINE = 0.9  # within about 25 degrees of upright, balance instead of pumping
_KP, _KD = 8.0, 1.5


class PendulumSwingUp:
    """Energy-shaping swing-up with a PD capture near upright; about 700-930 return in the source.

    :param target: The environment's target variant; ``"reversed"`` negates the commands so the
        expert stays an expert there (the target data of the paper were expert rollouts).
    """

    def __init__(self, target: str | None = None, **_: Any) -> None:
        self.sign = -1.0 if target == "reversed" else 1.0
        self.description = f"scripted pendulum swing-up expert{' (reversed actions)' if target == 'reversed' else ''}"

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        cosine, sine = (float(v) for v in obs["orientation"])
        velocity = float(obs["velocity"][0])
        if cosine > _CAPTURE_COSINE:
            command = -(_KP * np.arctan2(sine, cosine) + _KD * velocity)
        else:
            energy = 0.5 * velocity**2 + _GRAVITY_TERM * (cosine - 1.0)
            # Push along the motion while short of the target energy, brake when above it.
            command = -(energy - _TARGET_ENERGY) * velocity if abs(velocity) > 1e-3 else 1.0
        return np.array([self.sign * np.clip(command, -1.0, 1.0)], dtype=np.float32)


# Both links of the reacher's arm (reacher.xml: the hand sits 0.12 along the arm, the finger 0.12 along the hand).
_REACHER_LINKS = (0.12, 0.12)
_REACH_KP, _REACH_KD = 5.0, 0.5


def _wrapped(angle: np.ndarray) -> np.ndarray:
    return (angle + np.pi) % (2 * np.pi) - np.pi


class ReacherReach:
    """Inverse kinematics to the target, then a joint-space PD: reaches the easy task's targets in about
    a second of simulated time (Jacobian-transpose reaching stalls with the arm stretched straight).

    :param target: The environment's target variant; ``"reversed"`` negates the commands, as for the pendulum.
    """

    def __init__(self, target: str | None = None, **_: Any) -> None:
        self.sign = -1.0 if target == "reversed" else 1.0
        self.description = f"scripted reacher expert{' (reversed actions)' if target == 'reversed' else ''}"

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        joints = np.asarray(obs["position"], np.float64)  # (shoulder, wrist) angles
        upper, lower = _REACHER_LINKS
        shoulder, wrist = joints
        finger = np.array(
            [
                upper * np.cos(shoulder) + lower * np.cos(shoulder + wrist),
                upper * np.sin(shoulder) + lower * np.sin(shoulder + wrist),
            ]
        )
        x, y = finger + np.asarray(obs["to_target"], np.float64)
        cosine = np.clip((x * x + y * y - upper**2 - lower**2) / (2 * upper * lower), -1.0, 1.0)
        # Of the two elbow solutions, the one nearer the wrist's angle now.
        wrist_goal = np.arccos(cosine) * (1.0 if _wrapped(wrist) >= 0 else -1.0)
        shoulder_goal = np.arctan2(y, x) - np.arctan2(lower * np.sin(wrist_goal), upper + lower * np.cos(wrist_goal))
        error = _wrapped(np.array([shoulder_goal, wrist_goal]) - joints)
        command = _REACH_KP * error - _REACH_KD * np.asarray(obs["velocity"], np.float64)
        return (self.sign * np.clip(command, -1.0, 1.0)).astype(np.float32)


class FingerTurnPlanner:
    """Model-predictive control on the environment's own physics: MPPI over open-loop action sequences,
    each scored by how far the spinner's tip stays from the target; 978.0 over 4 turn-hard episodes.

    No simple controller turns the spinner (the finger reaches only the spinner's near end and must
    flick it round), so this expert plans with the simulator itself: it is bound to the environment
    it acts in (``bind``), copies its
    state every step, and simulates ``samples`` perturbed plans ``horizon`` agent steps ahead with
    ``mujoco.rollout``, the target's change (action sign, wrench) included. Its randomness is seeded
    per episode (``reset``), so collections repeat.

    :param target: The environment's target variant, whose change the plans simulate.
    :param samples: Plans simulated per step.
    :param horizon: Agent steps each plan looks ahead.
    :param sigma: Standard deviation of each plan's perturbation of the current one (action units).
    :param temperature: MPPI's softmax temperature over the plans' costs (radians summed over the horizon).
    """

    def __init__(
        self,
        target: str | None = None,
        *,
        samples: int = 16,
        horizon: int = 20,
        sigma: float = 0.5,
        temperature: float = 0.3,
        **_: Any,
    ) -> None:
        self.target = get_target(target)
        self.samples, self.horizon, self.sigma, self.temperature = samples, horizon, sigma, temperature
        suffix = f" ({self.target.description})" if target is not None else ""
        self.description = f"finger-turn planner on the true physics (MPPI, {samples} x {horizon} steps){suffix}"
        self._env: DMCEnv | None = None
        self._rng = np.random.default_rng(0)
        self._plan = np.zeros((horizon, 2))

    def bind(self, env: DMCEnv) -> None:
        """Plan with ``env``'s physics from now on."""
        # Imported here, once env.py has chosen MuJoCo's renderer: mujoco reads MUJOCO_GL when first imported.
        import mujoco

        env = env.unwrapped  # Gymnasium's wrappers do not pass attributes through
        model = env.physics.model.ptr
        self._env = env
        self._thread_data = [mujoco.MjData(model)]
        self._sensors = {
            name: model.sensor_adr[model.sensor(name).id] + np.array([0, 2])  # (x, z) of a framepos sensor
            for name in ("tip", "target", "spinner", "touchtop_pos")
        }
        self._state_spec = mujoco.mjtState.mjSTATE_FULLPHYSICS
        self._control_spec = mujoco.mjtState.mjSTATE_CTRL | mujoco.mjtState.mjSTATE_XFRC_APPLIED
        # The target's constant wrench on every simulated step, as the environment applies it.
        wrench = np.zeros(model.nbody * 6)
        if self.target.body is not None:
            body = model.body(self.target.body).id
            wrench[body * 6 : body * 6 + 6] = (*self.target.force, *self.target.torque)
        self._wrench = wrench

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: a fresh plan, and perturbations drawn from ``seed``."""
        self._rng = np.random.default_rng(seed)
        self._plan = np.zeros((self.horizon, 2))

    def __call__(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        import mujoco
        from mujoco import rollout

        if self._env is None:
            raise ConfigError(
                "FingerTurnPlanner plans with the environment's physics: bind(env) it first "
                "(collect and pretraining do)."
            )
        model, data = self._env.physics.model.ptr, self._env.physics.data.ptr
        state = np.empty(mujoco.mj_stateSize(model, self._state_spec))
        mujoco.mj_getState(model, data, state, self._state_spec)
        repeat = self._env.physics_steps_per_step
        noise = self._rng.normal(0.0, self.sigma, (self.samples, self.horizon, 2))
        noise[0] = 0.0  # the current plan itself is always among those scored
        actions = np.clip(self._plan + noise, -1.0, 1.0)  # (samples, horizon, 2)
        controls = np.repeat(self.target.control(actions), repeat, axis=1)  # (samples, horizon * repeat, 2)
        wrench = np.broadcast_to(self._wrench, (*controls.shape[:2], self._wrench.size))
        _, sensors = rollout.rollout(
            model,
            self._thread_data,
            np.tile(state, (self.samples, 1)),
            np.concatenate([controls, wrench], axis=-1),
            control_spec=self._control_spec,
        )
        sensors = sensors[:, repeat - 1 :: repeat]  # (samples, horizon, sensors) at each agent step's end
        centre = sensors[..., self._sensors["spinner"]]
        tip = sensors[..., self._sensors["tip"]] - centre
        goal = sensors[..., self._sensors["target"]] - centre
        miss = np.abs(_wrapped(np.arctan2(tip[..., 0], tip[..., 1]) - np.arctan2(goal[..., 0], goal[..., 1])))
        # A finger far from the spinner cannot turn it: draw it within reach of the spinner's ends.
        reach = np.linalg.norm(sensors[..., self._sensors["touchtop_pos"]] - centre, axis=-1)
        cost = miss.sum(axis=1) + 0.5 * np.maximum(reach - 0.12, 0.0).sum(axis=1)  # (samples,)
        weights = np.exp(-(cost - cost.min()) / self.temperature)
        self._plan = np.tensordot(weights / weights.sum(), actions, axes=1)  # (horizon, 2)
        action = self._plan[0].astype(np.float32)
        self._plan = np.concatenate([self._plan[1:], self._plan[-1:]])
        return action
