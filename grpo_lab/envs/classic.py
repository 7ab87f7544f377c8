"""Classic control for RL training loops: CartPole-v1 and Acrobot-v1 as batched torch programs, and
any gymnasium vector env with a Discrete action space behind the same API.

``ClassicVecEnv`` is N independent environments stepped together (one row each). Two backends:

* ``"torch"``: ``TorchCartPole`` / ``TorchAcrobot`` re-implement gymnasium's dynamics with plain
  tensor ops on a (N, state_dim) state, so many configurations x many environments step as one
  tensor program, in float32 or float64, on any device. tests/test_classic_envs.py checks them
  step for step against gymnasium (float64: to 1e-6 over whole episodes).
* ``"gymnasium"``: ``GymnasiumVecEnv`` wraps ``gymnasium.vector.SyncVectorEnv`` of
  ``gymnasium.make(env_id)`` with ``autoreset_mode=SAME_STEP`` and converts to/from tensors.

CartPole-v1 (gymnasium/envs/classic_control/cartpole.py, ``CartPoleEnv.step``; Barto, Sutton and
Anderson 1983; equations from Florian 2007, https://coneural.org/florian/papers/05_cart_pole.pdf).
State s = (x, x_dot, theta, theta_dot); g = 9.8, m_c = 1.0, m_p = 0.1, M = m_c + m_p, l = 0.5 (half
the pole), F = +10 for action 1 and -10 for action 0, tau = 0.02:

    temp      = (F + m_p l theta_dot^2 sin(theta)) / M
    theta_acc = (g sin(theta) - cos(theta) temp) / (l (4/3 - m_p cos(theta)^2 / M))
    x_acc     = temp - m_p l theta_acc cos(theta) / M
    explicit Euler: x += tau x_dot, x_dot += tau x_acc, theta += tau theta_dot,
                    theta_dot += tau theta_acc          (every update uses the old state)
    terminated = |x| > 2.4 or |theta| > 12 * 2 pi / 360;   reward = 1 on every step (the
    terminating one too);   observation = s;   start state ~ U(-0.05, 0.05)^4

Acrobot-v1 (gymnasium/envs/classic_control/acrobot.py, ``AcrobotEnv._dsdt``, ``rk4``, ``wrap``,
``bound``; Sutton 1996 and Sutton and Barto's book, "book" dynamics). State s = (theta1, theta2,
dtheta1, dtheta2), theta2 relative to link 1; m1 = m2 = 1, l1 = 1, lc1 = lc2 = 0.5, I1 = I2 = 1,
g = 9.8, torque a in {-1, 0, +1} for actions {0, 1, 2}:

    d1   = m1 lc1^2 + m2 (l1^2 + lc2^2 + 2 l1 lc2 cos(theta2)) + I1 + I2
    d2   = m2 (lc2^2 + l1 lc2 cos(theta2)) + I2
    phi2 = m2 lc2 g cos(theta1 + theta2 - pi/2)
    phi1 = -m2 l1 lc2 dtheta2^2 sin(theta2) - 2 m2 l1 lc2 dtheta2 dtheta1 sin(theta2)
           + (m1 lc1 + m2 l1) g cos(theta1 - pi/2) + phi2
    ddtheta2 = (a + d2/d1 phi1 - m2 l1 lc2 dtheta1^2 sin(theta2) - phi2) / (m2 lc2^2 + I2 - d2^2/d1)
    ddtheta1 = -(d2 ddtheta2 + phi1) / d1
    one RK4 step of dt = 0.2 with a held fixed:  s' = s + dt/6 (k1 + 2 k2 + 2 k3 + k4)
    theta1, theta2 wrapped to [-pi, pi]; dtheta1 clipped to +-4 pi, dtheta2 to +-9 pi
    terminated = -cos(theta1) - cos(theta2 + theta1) > 1;   reward = 0 if terminated else -1
    observation = (cos theta1, sin theta1, cos theta2, sin theta2, dtheta1, dtheta2)
    start state ~ U(-0.1, 0.1)^4

Precision: gymnasium steps CartPole in float64 (observations are then rounded to float32); the
torch CartPole performs the same float operations in the same order, so in float64 its states equal
gymnasium's bit for bit (as measured here; torch's and numpy's sin / cos could differ by an ulp
elsewhere). gymnasium's Acrobot also integrates in float64 (only its start state is rounded to
float32; ``np.append`` of the torque promotes it back); the torch Acrobot folds the constants of
the same equations, so float64 differs by rounding, ~1e-16 per step and < 1e-10 over 500-step
episodes. float32 tracks gymnasium to ~1e-6 for ~50 steps, after which the unstable dynamics
(an upright pole, a chaotic double pendulum) amplify the rounding.
Both environments are truncated by gymnasium's TimeLimit at 500 steps: truncated = (steps in the
episode >= 500), set even on a step that also terminates.

Step semantics (both backends): ``step(actions)`` returns (obs, reward, terminated, truncated).
With ``autoreset=True`` ("same-step", gymnasium's ``AutoresetMode.SAME_STEP``) an env whose
episode ends is reset inside the call: the returned obs is its new episode's first observation and
the ended episode's last observation is in ``final_obs``. With ``autoreset=False`` an ended env is
frozen until ``reset()``: it keeps returning its final obs with reward 0 and its terminated /
truncated flags stay True (one episode per env, as GRPO collects them).

Episode statistics: ``episode_returns`` / ``episode_lengths`` (N,) are the running sums of the
current episodes. After each ``step``, ``ended_returns`` (N,) and ``ended_lengths`` (N,) hold the
return and length of the episodes that ended (valid where terminated | truncated; NaN and -1
elsewhere), e.g. ``env.ended_returns[terminated | truncated]``.

Seeding of the torch envs is counter-based: the start state of env i's e-th episode (e = 0 after
``reset(seed)``, +1 per autoreset or unseeded ``reset()``) is a function of (seed_i, e, component)
only: 32-bit words of an integer hash (the [16 21f0aaad 15 735a2d97 15] hash of C. Wellons'
hash-prospector, https://github.com/skeeto/hash-prospector) in int64 tensor ops, scaled to the
start box in float64 and then cast. So it depends neither on N nor on the other envs, the device
or the dtype (float32 starts are the float64 ones rounded), and equal seeds give equal start states
(also for later autoresets). It is a statistical, not a cryptographic, generator. The gymnasium
backend seeds its envs with gymnasium's own generators: the same rules hold (an int seeds env i with
seed + i), but its start states differ from the torch backend's.

``RunningMeanStd`` is the observation normaliser of CleanRL / SB3's ``VecNormalize``.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import torch

from grpo_lab._checks import as_tensor
from grpo_lab.registry import Registry

Tensor = torch.Tensor

__all__ = [
    "BACKENDS",
    "CLASSIC_ENVS",
    "ClassicVecEnv",
    "GymnasiumVecEnv",
    "RunningMeanStd",
    "TorchAcrobot",
    "TorchCartPole",
    "TorchClassicEnv",
    "make_classic",
]

BACKENDS = ("gymnasium", "torch")
_FLOAT_DTYPES = (torch.float32, torch.float64)
_MAX_SEED = 2**63 - 1


# --------------------------------------------------------------------------------------------
# Argument checks


def _is_int(x: object) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _check_num_envs(num_envs: object) -> int:
    if not _is_int(num_envs) or int(num_envs) < 1:
        raise ValueError(f"num_envs must be an int >= 1, got {num_envs!r}")
    return int(num_envs)


def _check_dtype(dtype: object) -> torch.dtype:
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be one of {list(_FLOAT_DTYPES)}, got {dtype!r}")
    return dtype  # type: ignore[return-value]


def _seed_list(seed: int | Sequence[int], num_envs: int) -> list[int]:
    """An int seeds env i with seed + i; a sequence (list, tuple, 1-D array or tensor) gives
    every env its own seed."""
    if isinstance(seed, (np.ndarray, torch.Tensor)) and seed.ndim == 1:
        seed = seed.tolist()
    if _is_int(seed):
        seeds = [int(seed) + i for i in range(num_envs)]
    elif isinstance(seed, Sequence) and not isinstance(seed, str):
        seeds = list(seed)
        if len(seeds) != num_envs:
            raise ValueError(f"seed has {len(seeds)} entries; expected num_envs = {num_envs}")
    else:
        raise ValueError(f"seed must be None, an int or a sequence of ints, got {seed!r}")
    for s in seeds:
        if not _is_int(s) or not 0 <= int(s) <= _MAX_SEED:
            raise ValueError(f"seeds must be ints in [0, 2**63 - 1], got {s!r}")
    return [int(s) for s in seeds]


# --------------------------------------------------------------------------------------------
# The shared API


class ClassicVecEnv(ABC):
    """N independent environments with a Discrete action space, stepped as one batch.

    Attributes:
        env_id, num_envs, obs_dim, num_actions, max_episode_steps (the time limit), autoreset,
        device, dtype (of observations and rewards)
        final_obs        (N, obs_dim)  after ``step``: last obs of the episodes that just ended
                                       (valid where terminated | truncated; the returned obs
                                       elsewhere)
        episode_returns  (N,) dtype    return of the current episodes so far
        episode_lengths  (N,) long     steps of the current episodes so far
        ended_returns    (N,) dtype    after ``step``: return of the episodes that ended (NaN
                                       where none ended)
        ended_lengths    (N,) long     after ``step``: their lengths (-1 where none ended)

    ``max_episode_steps`` of a torch env may be changed on the instance (the time limit it
    applies); for the gymnasium backend it only reports the TimeLimit of ``gymnasium.make``.
    Subclasses implement ``_reset(seeds)`` and ``_env_step(actions)``; this class checks inputs,
    keeps the statistics and freezes ended envs when ``autoreset`` is False.
    """

    env_id: str
    num_envs: int
    obs_dim: int
    num_actions: int
    max_episode_steps: int
    autoreset: bool
    device: torch.device
    dtype: torch.dtype

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        obs_dim: int,
        num_actions: int,
        max_episode_steps: int,
        *,
        autoreset: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.env_id = env_id
        self.num_envs = _check_num_envs(num_envs)
        self.obs_dim = obs_dim
        self.num_actions = num_actions
        self.max_episode_steps = max_episode_steps
        self.autoreset = bool(autoreset)
        self.device = torch.device(device)
        self.dtype = _check_dtype(dtype)
        self.final_obs = torch.zeros(self.num_envs, obs_dim, dtype=dtype, device=self.device)
        self._clear_episodes()
        self._started = False

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.env_id!r}, num_envs={self.num_envs}, "
            f"autoreset={self.autoreset}, device={self.device}, dtype={self.dtype})"
        )

    # -- public --------------------------------------------------------------------------

    def reset(self, seed: int | Sequence[int] | None = None) -> Tensor:
        """Start a new episode in every env; return the first observations (N, obs_dim).

        seed: an int seeds env i with seed + i; a sequence gives each env its seed (equal seeds,
        equal start states); None continues each env's random stream (fresh random seeds on the
        first call).
        """
        seeds = None if seed is None else _seed_list(seed, self.num_envs)
        obs = self._reset(seeds)
        self._clear_episodes()
        self._started = True
        return obs

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Advance every env by one step.

        actions (N,) integer in [0, num_actions) -> obs (N, obs_dim), reward (N,),
        terminated (N,) bool, truncated (N,) bool. See the module docstring for autoreset.
        """
        if not self._started:
            raise RuntimeError(f"{type(self).__name__}: call reset() before step()")
        a = self._check_actions(actions)
        obs, reward, terminated, truncated, final_obs = self._env_step(a)
        if not self.autoreset:
            frozen = self._ended  # (N,) ended at an earlier step
            obs = torch.where(frozen[:, None], self.final_obs, obs)
            final_obs = obs
            reward = reward.masked_fill(frozen, 0.0)
            terminated = torch.where(frozen, self._last_terminated, terminated)
            truncated = torch.where(frozen, self._last_truncated, truncated)
        done = terminated | truncated
        self._record(reward, done)
        self.final_obs = final_obs
        if self.autoreset:
            self.episode_returns = self.episode_returns.masked_fill(done, 0.0)
            self.episode_lengths = self.episode_lengths.masked_fill(done, 0)
        else:
            self._ended = done
            self._last_terminated = terminated
            self._last_truncated = truncated
        return obs, reward, terminated, truncated

    def close(self) -> None:  # noqa: B027 - a no-op by default, not abstract
        """Release resources (the gymnasium envs); the torch envs hold none."""

    # -- for subclasses ------------------------------------------------------------------

    @abstractmethod
    def _reset(self, seeds: list[int] | None) -> Tensor: ...

    @abstractmethod
    def _env_step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Step all N envs: (obs, reward, terminated, truncated, final_obs), where obs is after
        the autoreset of ended envs when ``self.autoreset`` (else obs is final_obs)."""
        ...

    def _clear_episodes(self) -> None:
        """Fresh counters (new tensors: ones handed out earlier are never changed in place)."""
        n, dev = self.num_envs, self.device
        self.episode_returns = torch.zeros(n, dtype=self.dtype, device=dev)
        self.episode_lengths = torch.zeros(n, dtype=torch.long, device=dev)
        self.ended_returns = torch.full((n,), math.nan, dtype=self.dtype, device=dev)
        self.ended_lengths = torch.full((n,), -1, dtype=torch.long, device=dev)
        # autoreset=False: which envs ended at an earlier step, and their last flags
        self._ended = torch.zeros(n, dtype=torch.bool, device=dev)
        self._last_terminated = torch.zeros(n, dtype=torch.bool, device=dev)
        self._last_truncated = torch.zeros(n, dtype=torch.bool, device=dev)

    def _record(self, reward: Tensor, done: Tensor) -> None:
        live = 1 if self.autoreset else ~self._ended  # frozen envs add no steps
        self.episode_returns = self.episode_returns + reward
        self.episode_lengths = self.episode_lengths + live
        self.ended_returns = torch.where(done, self.episode_returns, math.nan)
        self.ended_lengths = torch.where(done, self.episode_lengths, -1)

    def _check_actions(self, actions: object) -> Tensor:
        a = as_tensor("actions", actions)
        if a.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape (num_envs,) = ({self.num_envs},), got {tuple(a.shape)}"
            )
        if a.is_floating_point() or a.is_complex() or a.dtype == torch.bool:
            raise ValueError(f"actions must be an integer tensor, got dtype {a.dtype}")
        a = a.to(device=self.device, dtype=torch.long)
        lo, hi = (int(v) for v in torch.aminmax(a))
        if lo < 0 or hi >= self.num_actions:
            raise ValueError(
                f"actions must lie in [0, {self.num_actions}) for {self.env_id}, "
                f"got min {lo} and max {hi}"
            )
        return a


# --------------------------------------------------------------------------------------------
# Counter-based start states: an integer hash on int64 tensors holding 32-bit values

_M32 = 0xFFFFFFFF
# the multipliers of the hash [16 21f0aaad 15 735a2d97 15] found by C. Wellons' hash-prospector
# (https://github.com/skeeto/hash-prospector); both are < 2^31, so with x < 2^32 every product
# stays below 2^63 and int64 never overflows
_HASH_A, _HASH_B = 0x21F0AAAD, 0x735A2D97
_SEED_SALT = 0x243F6A88  # any constant: the first digits of pi
_GOLDEN = 0x9E3779B9  # 2^32 / golden ratio: spreads the component index over 32 bits


def _mix32(x: Tensor) -> Tensor:
    """A bijection of 32-bit ints (in int64) with near-ideal avalanche (hash-prospector)."""
    x = x ^ (x >> 16)
    x = (x * _HASH_A) & _M32
    x = x ^ (x >> 15)
    x = (x * _HASH_B) & _M32
    return x ^ (x >> 15)


def _seed_keys(seeds: Tensor) -> Tensor:
    """(M,) int64 seeds in [0, 2^63) -> (M,) 32-bit keys mixing both halves of the seed."""
    lo, hi = seeds & _M32, seeds >> 32
    return _mix32(_mix32(lo ^ _SEED_SALT) ^ hi)


def _hash_words(keys: Tensor, episodes: Tensor, salts: Tensor) -> Tensor:
    """(M,) keys, (M,) episode indices, (D,) salts -> (M, D) 32-bit words, each a function of
    (key, episode, component) only."""
    h = _mix32(keys ^ (episodes & _M32))  # (M,)
    return _mix32(h[:, None] ^ salts)  # (M, D)


# --------------------------------------------------------------------------------------------
# Torch backend


class TorchClassicEnv(ClassicVecEnv):
    """Shared machinery of the torch envs: state (N, state_dim), start states from the
    counter-based hash, TimeLimit, same-step autoreset. Subclasses give the constants and
    ``dynamics`` / ``observe``."""

    ENV_ID = ""
    STATE_DIM = 4
    OBS_DIM = 4
    NUM_ACTIONS = 2
    MAX_EPISODE_STEPS = 500
    INIT_LOW, INIT_HIGH = -0.05, 0.05

    def __init__(
        self,
        num_envs: int,
        *,
        autoreset: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__(
            self.ENV_ID,
            num_envs,
            self.OBS_DIM,
            self.NUM_ACTIONS,
            self.MAX_EPISODE_STEPS,
            autoreset=autoreset,
            device=device,
            dtype=dtype,
        )
        n, dev = self.num_envs, self.device
        self._state = torch.zeros(n, self.STATE_DIM, dtype=dtype, device=dev)
        self._keys = torch.zeros(n, dtype=torch.long, device=dev)  # hashed seeds
        self._episode = torch.zeros(n, dtype=torch.long, device=dev)  # episode index per env
        self._elapsed = torch.zeros(n, dtype=torch.long, device=dev)  # TimeLimit counter
        salts = [(j * _GOLDEN) & _M32 for j in range(1, self.STATE_DIM + 1)]
        self._salts = torch.tensor(salts, dtype=torch.long, device=dev)  # (S,)
        # start state = low + (high - low) * w / 2^32 in float64, w a 32-bit hash word
        self._init_low = torch.tensor(self.INIT_LOW, dtype=torch.float64, device=dev)
        self._init_scale = torch.tensor(
            (self.INIT_HIGH - self.INIT_LOW) * 2.0**-32, dtype=torch.float64, device=dev
        )
        self._setup()

    def _setup(self) -> None:
        """Per-instance constant tensors (on the env's device and dtype), for subclasses."""

    # -- physics, per subclass -----------------------------------------------------------

    @abstractmethod
    def dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        """(N, state_dim), (N,) long -> next state (N, state_dim), terminated (N,) bool."""
        ...

    @abstractmethod
    def observe(self, state: Tensor) -> Tensor:
        """(M, state_dim) -> observations (M, obs_dim)."""
        ...

    @abstractmethod
    def rewards(self, terminated: Tensor) -> Tensor:
        """(N,) bool -> (N,) reward of the step."""
        ...

    # -- state access --------------------------------------------------------------------

    def get_state(self) -> Tensor:
        """A copy of the physical state (N, state_dim)."""
        return self._state.clone()

    def set_state(self, state: Tensor) -> Tensor:
        """Start a new episode in every env from ``state`` (N, state_dim); return its obs.

        Episode counters and the time limit restart at 0 (as after ``reset``); the random
        stream for later autoresets is kept (a fresh random one if the env was never reset).
        """
        s = as_tensor("state", state)
        if s.shape != (self.num_envs, self.STATE_DIM):
            raise ValueError(
                f"state must have shape (num_envs, state_dim) = "
                f"({self.num_envs}, {self.STATE_DIM}), got {tuple(s.shape)}"
            )
        if not self._started:
            self.reset()
        self._state = s.to(device=self.device, dtype=self.dtype).clone()
        self._elapsed.zero_()
        self._clear_episodes()
        return self.observe(self._state)

    # -- ClassicVecEnv hooks -------------------------------------------------------------

    def _reset(self, seeds: list[int] | None) -> Tensor:
        if seeds is not None:
            t = torch.tensor(seeds, dtype=torch.long, device=self.device)
            self._keys = _seed_keys(t)
            self._episode = torch.zeros_like(self._keys)
        elif not self._started:
            t = torch.randint(0, _MAX_SEED, (self.num_envs,), dtype=torch.long)
            self._keys = _seed_keys(t.to(self.device))
            self._episode = torch.zeros_like(self._keys)
        else:
            self._episode = self._episode + 1
        self._state = self._start_states(self._keys, self._episode)
        self._elapsed.zero_()
        return self.observe(self._state)

    def _start_states(self, keys: Tensor, episodes: Tensor) -> Tensor:
        """(M,), (M,) -> (M, state_dim) ~ U(INIT_LOW, INIT_HIGH)^state_dim on a 2^-32 grid,
        drawn in float64 and then cast (float32 starts are the float64 ones rounded)."""
        w = _hash_words(keys, episodes, self._salts)  # (M, S)
        return (w.to(torch.float64) * self._init_scale + self._init_low).to(self.dtype)

    def _env_step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        state = self._state
        next_state, terminated = self.dynamics(state, actions)  # (N, S), (N,)
        if not self.autoreset:  # frozen envs keep their final state
            next_state = torch.where(self._ended[:, None], state, next_state)
        reward = self.rewards(terminated)
        self._elapsed = self._elapsed + 1
        truncated = self._elapsed >= self.max_episode_steps  # TimeLimit: even if terminated
        final_obs = self.observe(next_state)
        obs = final_obs
        if self.autoreset:
            done = terminated | truncated
            idx = done.nonzero().squeeze(1)  # (k,) ended envs
            if idx.numel() > 0:
                self._episode = self._episode + done
                self._elapsed = self._elapsed.masked_fill(done, 0)
                starts = self._start_states(self._keys[idx], self._episode[idx])  # (k, S)
                next_state[idx] = starts
                obs = final_obs.clone()
                obs[idx] = self.observe(starts)
        self._state = next_state
        return obs, reward, terminated, truncated, final_obs


def _scalars(dtype: torch.dtype, device: torch.device, **values: float) -> SimpleNamespace:
    """Named 0-dim tensors: ``tensor * k.tau`` skips the per-call conversion that ``tensor * 0.02``
    pays (half the cost of a small op on CPU), with the same float32 / float64 arithmetic."""
    return SimpleNamespace(
        **{name: torch.tensor(v, dtype=dtype, device=device) for name, v in values.items()}
    )


# CartPole-v1 constants (cartpole.py, CartPoleEnv.__init__)
_CP_GRAVITY = 9.8
_CP_MASSCART = 1.0
_CP_MASSPOLE = 0.1
_CP_TOTAL_MASS = _CP_MASSPOLE + _CP_MASSCART
_CP_LENGTH = 0.5  # half the pole's length
_CP_POLEMASS_LENGTH = _CP_MASSPOLE * _CP_LENGTH
_CP_FORCE_MAG = 10.0
_CP_TAU = 0.02
_CP_THETA_THRESHOLD = 12 * 2 * math.pi / 360
_CP_X_THRESHOLD = 2.4


class TorchCartPole(TorchClassicEnv):
    """CartPole-v1: state = obs = (x, x_dot, theta, theta_dot); actions 0 (push left), 1 (right).

    The arithmetic is cartpole.py's, operation for operation: in float64 the states equal
    gymnasium's bit for bit wherever torch's and numpy's sin / cos agree."""

    ENV_ID = "CartPole-v1"
    STATE_DIM = 4
    OBS_DIM = 4
    NUM_ACTIONS = 2
    INIT_LOW, INIT_HIGH = -0.05, 0.05

    def _setup(self) -> None:
        kw = {"dtype": self.dtype, "device": self.device}
        self._force = torch.tensor([-_CP_FORCE_MAG, _CP_FORCE_MAG], **kw)  # (2,) by action
        self._limits = torch.tensor([_CP_X_THRESHOLD, _CP_THETA_THRESHOLD], **kw)  # x, theta
        self._k = _scalars(
            self.dtype,
            self.device,
            gravity=_CP_GRAVITY,
            masspole=_CP_MASSPOLE,
            total_mass=_CP_TOTAL_MASS,
            length=_CP_LENGTH,
            polemass_length=_CP_POLEMASS_LENGTH,
            four_thirds=4.0 / 3.0,
            tau=_CP_TAU,
        )

    def dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        k = self._k
        _, x_dot, theta, theta_dot = state.unbind(1)  # (N,) each
        force = self._force[actions]  # (N,)
        costheta, sintheta = torch.cos(theta), torch.sin(theta)
        temp = (force + k.polemass_length * (theta_dot * theta_dot) * sintheta) / k.total_mass
        thetaacc = (k.gravity * sintheta - costheta * temp) / (
            k.length * (k.four_thirds - k.masspole * (costheta * costheta) / k.total_mass)
        )
        xacc = temp - k.polemass_length * thetaacc * costheta / k.total_mass
        # explicit Euler (kinematics_integrator "euler"): every update reads the old state
        deriv = torch.stack((x_dot, xacc, theta_dot, thetaacc), dim=1)  # (N, 4)
        next_state = state + k.tau * deriv
        terminated = (next_state[:, 0::2].abs() > self._limits).any(1)  # |x|, |theta|: (N,)
        return next_state, terminated

    def observe(self, state: Tensor) -> Tensor:
        return state.clone()

    def rewards(self, terminated: Tensor) -> Tensor:
        return torch.ones(terminated.shape, dtype=self.dtype, device=self.device)


# Acrobot-v1 constants (acrobot.py, AcrobotEnv class attributes)
_AC_DT = 0.2
_AC_L1 = 1.0  # LINK_LENGTH_1
_AC_M1 = 1.0  # LINK_MASS_1
_AC_M2 = 1.0  # LINK_MASS_2
_AC_LC1 = 0.5  # LINK_COM_POS_1
_AC_LC2 = 0.5  # LINK_COM_POS_2
_AC_I1 = 1.0  # LINK_MOI
_AC_I2 = 1.0
_AC_G = 9.8
_AC_MAX_VEL_1 = 4 * math.pi
_AC_MAX_VEL_2 = 9 * math.pi
# the constant parts of _dsdt's expressions, folded once (and cos(x - pi/2) = sin(x)):
_AC_CONSTANTS = {
    "d1_0": _AC_M1 * _AC_LC1**2 + _AC_M2 * (_AC_L1**2 + _AC_LC2**2) + _AC_I1 + _AC_I2,
    "d1_1": _AC_M2 * 2 * _AC_L1 * _AC_LC2,  # d1 = d1_0 + d1_1 cos(theta2)
    "d2_0": _AC_M2 * _AC_LC2**2 + _AC_I2,
    "d2_1": _AC_M2 * _AC_L1 * _AC_LC2,  # d2 = d2_0 + d2_1 cos(theta2); also m2 l1 lc2
    "phi1": (_AC_M1 * _AC_LC1 + _AC_M2 * _AC_L1) * _AC_G,  # .. * sin(theta1)
    "phi2": _AC_M2 * _AC_LC2 * _AC_G,  # phi2 = .. * sin(theta1 + theta2)
    "den_0": _AC_M2 * _AC_LC2**2 + _AC_I2,  # ddtheta2 = (..) / (den_0 - d2^2 / d1)
    "pi": math.pi,
    "two_pi": 2 * math.pi,
    "minus_one": -1.0,
}


def _acrobot_dsdt(s: Tensor, torque: Tensor, k: SimpleNamespace) -> Tensor:
    """Book dynamics (acrobot.py's ``_dsdt``): (N, 4) state, (N,) torque -> (N, 4) derivative.
    The constants are folded, so float64 differs from gymnasium by rounding (~1e-16) only."""
    theta1, theta2, dtheta1, dtheta2 = s.unbind(1)  # (N,) each
    cos2 = torch.cos(theta2)
    d1 = k.d1_0 + k.d1_1 * cos2
    d2 = k.d2_0 + k.d2_1 * cos2
    phi2 = k.phi2 * torch.sin(theta1 + theta2)
    m_sin2 = k.d2_1 * torch.sin(theta2)  # m2 l1 lc2 sin(theta2)
    # phi1 = -m2 l1 lc2 sin(theta2) (dtheta2^2 + 2 dtheta2 dtheta1) + (m1 lc1 + m2 l1) g sin(theta1)
    #        + phi2
    coriolis = m_sin2 * (dtheta2 * (dtheta2 + (dtheta1 + dtheta1)))
    phi1 = k.phi1 * torch.sin(theta1) - coriolis + phi2
    centrifugal = m_sin2 * dtheta1.square()  # m2 l1 lc2 dtheta1^2 sin(theta2)
    ddtheta2 = (torque + d2 / d1 * phi1 - centrifugal - phi2) / (k.den_0 - d2.square() / d1)
    ddtheta1 = -(d2 * ddtheta2 + phi1) / d1
    return torch.stack((dtheta1, dtheta2, ddtheta1, ddtheta2), dim=1)


def _rk4(s: Tensor, torque: Tensor, dt: float, k: SimpleNamespace) -> Tensor:
    """One classical RK4 step (acrobot.py's ``rk4`` over [0, dt]), the torque held fixed:
    s' = s + dt/6 (k1 + 2 k2 + 2 k3 + k4)."""
    k1 = _acrobot_dsdt(s, torque, k)
    k2 = _acrobot_dsdt(torch.add(s, k1, alpha=dt / 2.0), torque, k)
    k3 = _acrobot_dsdt(torch.add(s, k2, alpha=dt / 2.0), torque, k)
    k4 = _acrobot_dsdt(torch.add(s, k3, alpha=dt), torque, k)
    return torch.add(s, torch.add(k1, k2 + k3, alpha=2.0) + k4, alpha=dt / 6.0)


def _wrap_pi(x: Tensor, k: SimpleNamespace) -> Tensor:
    """acrobot.py's ``wrap(x, -pi, pi)``: angles already in [-pi, pi] are left as they are (bit
    for bit), the others are brought back by whole turns."""
    return torch.where(x.abs() > k.pi, torch.remainder(x + k.pi, k.two_pi) - k.pi, x)


class TorchAcrobot(TorchClassicEnv):
    """Acrobot-v1: state (theta1, theta2, dtheta1, dtheta2), obs (cos t1, sin t1, cos t2, sin t2,
    dt1, dt2); actions 0, 1, 2 apply torque -1, 0, +1 to the joint between the links."""

    ENV_ID = "Acrobot-v1"
    STATE_DIM = 4
    OBS_DIM = 6
    NUM_ACTIONS = 3
    INIT_LOW, INIT_HIGH = -0.1, 0.1

    def _setup(self) -> None:
        kw = {"dtype": self.dtype, "device": self.device}
        self._torque = torch.tensor([-1.0, 0.0, 1.0], **kw)  # AVAIL_TORQUE, by action
        self._max_vel = torch.tensor([_AC_MAX_VEL_1, _AC_MAX_VEL_2], **kw)  # (2,)
        self._k = _scalars(self.dtype, self.device, **_AC_CONSTANTS)

    def dynamics(self, state: Tensor, actions: Tensor) -> tuple[Tensor, Tensor]:
        ns = _rk4(state, self._torque[actions], _AC_DT, self._k)  # (N, 4)
        angles = _wrap_pi(ns[:, :2], self._k)  # (N, 2) in [-pi, pi]
        vel = torch.clamp(ns[:, 2:], -self._max_vel, self._max_vel)  # (N, 2) bound
        next_state = torch.cat((angles, vel), dim=1)
        t1, t2 = angles.unbind(1)
        # -cos(t1) - cos(t2 + t1) > 1, written without the two negations (the same test)
        terminated = torch.cos(t1) + torch.cos(t2 + t1) < self._k.minus_one
        return next_state, terminated

    def observe(self, state: Tensor) -> Tensor:
        angles = state[:, :2]  # (M, 2)
        trig = torch.stack((torch.cos(angles), torch.sin(angles)), dim=2).flatten(1)  # (M, 4)
        return torch.cat((trig, state[:, 2:]), dim=1)  # cos t1, sin t1, cos t2, sin t2, dt1, dt2

    def rewards(self, terminated: Tensor) -> Tensor:
        return terminated.to(self.dtype) - 1.0  # -1 per step, 0 on the terminating step


CLASSIC_ENVS: Registry[type[TorchClassicEnv]] = Registry("env_id")
CLASSIC_ENVS.add("CartPole-v1", TorchCartPole)
CLASSIC_ENVS.add("Acrobot-v1", TorchAcrobot)


# --------------------------------------------------------------------------------------------
# Gymnasium backend


class GymnasiumVecEnv(ClassicVecEnv):
    """``gymnasium.vector.SyncVectorEnv`` of ``gymnasium.make(env_id)`` (SAME_STEP autoreset)
    behind the ``ClassicVecEnv`` API. Needs a Discrete action space and a 1-D Box observation
    space. With ``autoreset=False`` gymnasium still resets ended envs internally; their outputs
    are masked (frozen) until ``reset()``."""

    def __init__(
        self,
        env_id: str,
        num_envs: int,
        *,
        autoreset: bool = True,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> None:
        n = _check_num_envs(num_envs)
        if env_id not in gym.registry:
            raise ValueError(
                f"unknown env_id {env_id!r}; choose one of {CLASSIC_ENVS.names()} (the gymnasium "
                "backend also takes any registered gymnasium id with a Discrete action space)"
            )
        venv = gym.vector.SyncVectorEnv(
            [lambda: gym.make(env_id) for _ in range(n)],
            autoreset_mode=gym.vector.AutoresetMode.SAME_STEP,
        )
        try:
            obs_dim, num_actions, max_steps = _gym_spaces(env_id, venv)
        except ValueError:
            venv.close()
            raise
        super().__init__(
            env_id,
            n,
            obs_dim,
            num_actions,
            max_steps,
            autoreset=autoreset,
            device=device,
            dtype=dtype,
        )
        self.venv = venv

    def close(self) -> None:
        self.venv.close()

    def _to_tensor(self, x: np.ndarray, dtype: torch.dtype | None = None) -> Tensor:
        return torch.as_tensor(np.asarray(x), dtype=dtype or self.dtype).to(self.device)

    def _reset(self, seeds: list[int] | None) -> Tensor:
        obs, _ = self.venv.reset(seed=seeds)
        return self._to_tensor(obs)

    def _env_step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        obs_np, rew, term, trunc, info = self.venv.step(actions.cpu().numpy())
        final_np = np.array(obs_np, copy=True)
        if "final_obs" in info:
            for i in np.flatnonzero(info["_final_obs"]):
                final_np[i] = info["final_obs"][i]
        final_obs = self._to_tensor(final_np)
        obs = self._to_tensor(obs_np) if self.autoreset else final_obs
        reward = self._to_tensor(rew)
        terminated = self._to_tensor(term, torch.bool)
        truncated = self._to_tensor(trunc, torch.bool)
        return obs, reward, terminated, truncated, final_obs


def _gym_spaces(env_id: str, venv: gym.vector.VectorEnv) -> tuple[int, int, int]:
    """(obs_dim, num_actions, max_episode_steps) of a gymnasium vector env, or a ValueError."""
    act, obs = venv.single_action_space, venv.single_observation_space
    if not isinstance(act, gym.spaces.Discrete):
        raise ValueError(
            f"only Discrete action spaces are supported; {env_id} has action space {act}"
        )
    if int(act.start) != 0:
        raise ValueError(f"the Discrete action space of {env_id} must start at 0, got {act}")
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        raise ValueError(
            f"only 1-D Box observation spaces are supported; {env_id} has observation space {obs}"
        )
    spec = gym.spec(env_id)
    if spec.max_episode_steps is None:
        raise ValueError(f"{env_id} has no time limit (spec.max_episode_steps is None)")
    return int(obs.shape[0]), int(act.n), int(spec.max_episode_steps)


def make_classic(
    env_id: str,
    num_envs: int,
    *,
    backend: str = "torch",
    autoreset: bool = True,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> ClassicVecEnv:
    """Build ``num_envs`` copies of ``env_id`` (one of ``CLASSIC_ENVS.names()``; the gymnasium
    backend takes any gymnasium id with a Discrete action space) on ``backend`` (one of
    ``BACKENDS``). Call ``reset(seed)`` before ``step``."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    _check_dtype(dtype)
    if backend == "torch":
        cls = CLASSIC_ENVS.get(env_id)
        return cls(num_envs, autoreset=autoreset, device=device, dtype=dtype)
    return GymnasiumVecEnv(env_id, num_envs, autoreset=autoreset, device=device, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Observation normalisation


class RunningMeanStd:
    """Running mean and (population) variance of observations, updated from batches with the
    parallel rule of Chan, Golub and LeVeque (1979), as CleanRL / SB3's ``RunningMeanStd``:

        delta = mean_b - mean,  n' = n + n_b,  mean' = mean + delta n_b / n'
        var' = (var n + var_b n_b + delta^2 n n_b / n') / n'

    ``epsilon`` is the starting count (SB3's 1e-4 keeps the first division safe; 0 gives the
    exact statistics of the data seen). Statistics are kept in float64.
    ``normalize(x) = clip((x - mean) / sqrt(var + 1e-8), -clip, clip)`` in x's dtype.
    """

    def __init__(
        self,
        shape: int | tuple[int, ...],
        *,
        epsilon: float = 1e-4,
        clip: float = 10.0,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (shape,) if _is_int(shape) else tuple(shape)
        if not epsilon >= 0:
            raise ValueError(f"epsilon must be >= 0, got {epsilon!r}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip!r}")
        self.shape = shape
        self.clip = float(clip)
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = float(epsilon)

    def update(self, x: Tensor) -> None:
        """Fold in a batch x (B, *shape)."""
        x = as_tensor("x", x)
        if x.dim() != len(self.shape) + 1 or tuple(x.shape[1:]) != self.shape:
            raise ValueError(f"x must have shape (B, *{self.shape}), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            return
        x = x.detach().to(device=self.mean.device, dtype=torch.float64)
        batch_mean = x.mean(0)
        batch_var = x.var(0, correction=0)
        n, n_b = self.count, float(x.shape[0])
        tot = n + n_b
        delta = batch_mean - self.mean
        self.mean = self.mean + delta * n_b / tot
        self.var = (self.var * n + batch_var * n_b + delta.square() * n * n_b / tot) / tot
        self.count = tot

    def normalize(self, x: Tensor) -> Tensor:
        """(..., *shape) -> normalised and clipped, same dtype and device as x."""
        mean = self.mean.to(device=x.device, dtype=x.dtype)
        std = torch.sqrt(self.var + 1e-8).to(device=x.device, dtype=x.dtype)
        return ((x - mean) / std).clamp(-self.clip, self.clip)
