"""Batched tabular MDPs with exact evaluation: the ground where the truth is computable.

A ``TabularMDP`` holds P(s'|s, a), the expected reward R(s, a), a discount gamma, a start
distribution rho, optional absorbing terminal states and an optional time limit H, either for one
MDP or for C MDPs stacked on a leading config axis. For a policy pi(a|s) every quantity below is
exact (a linear solve or a backward recursion) and differentiable in pi:

    P_pi(s, s') = sum_a pi(a|s) P(s'|s, a),      r_pi(s) = sum_a pi(a|s) R(s, a)
    V^pi = (I - gamma P_pi)^-1 r_pi                          (Bellman equation, Puterman 1994 §6.1)
    Q^pi(s, a) = R(s, a) + gamma sum_s' P(s'|s, a) V^pi(s'),  A^pi = Q^pi - V^pi
    J(pi) = sum_s rho(s) V^pi(s) = E[sum_t gamma^t r_t]
    x^pi(s) = sum_t gamma^t Pr(s_t = s)  solves (I - gamma P_pi)^T x = rho;  d^pi = x / sum x
    grad_{theta_{s,a}} J = x^pi(s) pi(a|s) A^pi(s, a)         (softmax logits theta; Sutton et al.
                                                              2000, policy gradient theorem)

Without terminal states sum x = 1 / (1 - gamma), so d^pi = (1 - gamma) x^pi is the usual
normalised discounted visitation and the gradient is 1/(1 - gamma) d(s) pi(a|s) A(s, a).

Terminal states are absorbing with value 0: in exact evaluation their rows of P and R are treated as
zero, and when sampling an episode ends on arriving at one (the terminal state is not a step).
With a time limit H (``horizon``) every quantity is the exact finite-horizon one (``V`` means V_0,
``Q`` means Q_0, J = sum_{t<H} gamma^t E[r_t], x sums t < H), so the mean discounted return of
sampled episodes equals ``exact_return`` exactly, not up to a truncation error.

Batching: an MDP is unbatched (P (S, A, S)) or batched (P (C, S, A, S)); a policy is (S, A) or
(C, S, A). When either is batched the result has a leading C axis (an unbatched MDP is shared by C
policies, an unbatched policy is run on C MDPs); when both are batched their C must agree.

Generators (``bandit``, ``chain``, ``garnet``, ``gridworld``) are registered in ``ENVS`` so an
environment is a string in a protocol: ``make_env("garnet", num_states=5, num_actions=3, seed=0)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from grpo_lab._checks import as_tensor, check_finite
from grpo_lab.registry import Registry

Tensor = torch.Tensor

__all__ = [
    "DEFAULT_MAX_STEPS",
    "ENVS",
    "REWARD_NOISES",
    "Episodes",
    "PackedEpisodes",
    "TabularMDP",
    "advantages",
    "bandit",
    "chain",
    "contexts",
    "exact_grad",
    "exact_return",
    "garnet",
    "gridworld",
    "kl_divergence",
    "make_env",
    "optimal_policy",
    "optimal_return",
    "optimal_values",
    "policy_gradient_theorem_grad",
    "q_values",
    "sample_episodes",
    "sample_groups",
    "sample_start_states",
    "softmax_policy",
    "stack_mdps",
    "state_occupancy",
    "state_values",
    "state_visitation",
    "total_variation",
]

REWARD_NOISES = ("none", "bernoulli", "gaussian")
_ROW_TOL = 1e-6  # tolerance on "sums to 1" for P rows, rho and policy rows
DEFAULT_MAX_STEPS = 1000
# uniforms are drawn per configuration in blocks of time steps, the first _RAND_BLOCK long and each
# next one twice as long (up to _RAND_BLOCK_MAX): few generator calls and few unused draws for
# geometric episode lengths; a configuration's draws still depend only on its own generator
_RAND_BLOCK = 8
_RAND_BLOCK_MAX = 64


# --------------------------------------------------------------------------------------------
# The MDP


def _float_tensor(name: str, x: object) -> Tensor:
    if not isinstance(x, Tensor):  # Python / numpy numbers: float64 directly, never via float32
        try:
            x = torch.as_tensor(x, dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as e:
            raise ValueError(
                f"{name} must be a tensor or array-like, got {type(x).__name__}"
            ) from e
    t = as_tensor(name, x)
    if not t.is_floating_point():
        t = t.to(torch.float64)
    return t


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclass(frozen=True, eq=False)
class TabularMDP:
    """One tabular MDP, or C of them stacked on a leading config axis.

    Fields (shapes with and without the config axis C):
        P             (S, A, S) | (C, S, A, S)  P[s, a, s'] = Pr(s' | s, a); rows sum to 1
        R             (S, A)    | (C, S, A)     expected reward of taking a in s
        gamma         float in [0, 1)           discount
        rho           (S,)      | (C, S)        start distribution
        terminal      (S,)      | (C, S) bool   absorbing states of value 0, or None (none)
        horizon       int >= 1 or None          time limit H: episodes last at most H steps
        reward_noise  "none" | "bernoulli" | "gaussian"   how sampled rewards scatter around R:
                      bernoulli draws r ~ Bernoulli(R) (R in [0, 1] is the success probability),
                      gaussian draws r ~ N(R, reward_std^2). Exact evaluation uses R itself.
        reward_std    float >= 0, used by "gaussian" only

    Rows of P for terminal states must still be distributions (a self-loop is customary); exact
    evaluation ignores them. Non-tensor inputs are converted to float64 tensors; P, R, rho are
    cast to their common floating dtype and must share one device.
    """

    P: Tensor
    R: Tensor
    gamma: float
    rho: Tensor
    terminal: Tensor | None = None
    horizon: int | None = None
    reward_noise: str = "none"
    reward_std: float = 1.0

    def __post_init__(self) -> None:
        P = _float_tensor("P", self.P)
        R = _float_tensor("R", self.R)
        rho = _float_tensor("rho", self.rho)
        if P.dim() not in (3, 4) or P.shape[-1] != P.shape[-3]:
            raise ValueError(
                f"P must have shape (S, A, S) or (C, S, A, S), got shape {tuple(P.shape)}"
            )
        if P.shape[-1] == 0 or P.shape[-2] == 0 or (P.dim() == 4 and P.shape[0] == 0):
            raise ValueError(f"P must have at least one state and action, got {tuple(P.shape)}")
        if R.shape != P.shape[:-1]:
            raise ValueError(
                f"R has shape {tuple(R.shape)}; expected {tuple(P.shape[:-1])} "
                "((S, A) or (C, S, A), matching P)"
            )
        if rho.shape != (*P.shape[:-3], P.shape[-1]):
            raise ValueError(
                f"rho has shape {tuple(rho.shape)}; expected {(*P.shape[:-3], P.shape[-1])} "
                "((S,) or (C, S), matching P)"
            )
        for name, t in (("R", R), ("rho", rho)):
            if t.device != P.device:
                raise ValueError(f"{name} is on {t.device} but P is on {P.device}")
        dtype = torch.promote_types(torch.promote_types(P.dtype, R.dtype), rho.dtype)
        P, R, rho = P.to(dtype), R.to(dtype), rho.to(dtype)
        check_finite("P", P)
        check_finite("R", R)
        check_finite("rho", rho)
        if bool((P.detach() < 0).any()):
            raise ValueError(f"P must be non-negative, found min {float(P.detach().min()):.3g}")
        row_err = float((P.detach().sum(-1) - 1).abs().max())
        if row_err > _ROW_TOL:
            raise ValueError(
                f"P rows must sum to 1 over next states s' (tolerance {_ROW_TOL}); "
                f"max |sum - 1| = {row_err:.3g}"
            )
        if bool((rho.detach() < 0).any()) or float((rho.detach().sum(-1) - 1).abs().max()) > (
            _ROW_TOL
        ):
            raise ValueError("rho must be a distribution over states: non-negative, summing to 1")
        g = self.gamma
        if isinstance(g, Tensor) and g.numel() == 1:
            g = float(g)
        if not isinstance(g, (int, float)) or isinstance(g, bool) or not math.isfinite(g):
            raise ValueError(f"gamma must be a finite number in [0, 1), got {g!r}")
        if not 0.0 <= g < 1.0:
            raise ValueError(f"gamma must lie in [0, 1), got {g!r}")
        term = self.terminal
        if term is not None:
            term = as_tensor("terminal", term)
            if term.shape != rho.shape:
                raise ValueError(
                    f"terminal has shape {tuple(term.shape)}; expected {tuple(rho.shape)} "
                    "(matching rho)"
                )
            if term.dtype != torch.bool:
                if not bool(((term == 0) | (term == 1)).all()):
                    raise ValueError("terminal must be bool (or hold only 0 and 1)")
                term = term != 0
            term = term.to(P.device)
        h = self.horizon
        if h is not None and (not _is_int(h) or h < 1):
            raise ValueError(f"horizon must be an int >= 1 or None, got {h!r}")
        if self.reward_noise not in REWARD_NOISES:
            raise ValueError(
                f"unknown reward_noise {self.reward_noise!r}; choose one of {list(REWARD_NOISES)}"
            )
        if self.reward_noise == "bernoulli" and bool(((R < 0) | (R > 1)).any()):
            raise ValueError("R must lie in [0, 1] with reward_noise='bernoulli' (success prob.)")
        s = self.reward_std
        if not isinstance(s, (int, float)) or isinstance(s, bool) or not (0 <= s < math.inf):
            raise ValueError(f"reward_std must be a finite number >= 0, got {s!r}")
        for name, value in (
            ("P", P),
            ("R", R),
            ("rho", rho),
            ("gamma", float(g)),
            ("terminal", term),
            ("reward_std", float(s)),
        ):
            object.__setattr__(self, name, value)

    @property
    def num_states(self) -> int:
        return self.P.shape[-1]

    @property
    def num_actions(self) -> int:
        return self.P.shape[-2]

    @property
    def batch_shape(self) -> torch.Size:
        """() for one MDP, (C,) for C stacked MDPs."""
        return self.P.shape[:-3]

    @property
    def is_batched(self) -> bool:
        return self.P.dim() == 4

    @property
    def dtype(self) -> torch.dtype:
        return self.P.dtype

    @property
    def device(self) -> torch.device:
        return self.P.device

    @property
    def terminal_mask(self) -> Tensor:
        """terminal as a bool tensor (S,) | (C, S), all False when ``terminal`` is None."""
        if self.terminal is None:
            return torch.zeros(self.rho.shape, dtype=torch.bool, device=self.device)
        return self.terminal

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> TabularMDP:
        """A copy with tensors cast to ``dtype`` and/or moved to ``device``."""
        term = None if self.terminal is None else self.terminal.to(device=device)
        return TabularMDP(
            P=self.P.to(dtype=dtype, device=device),
            R=self.R.to(dtype=dtype, device=device),
            gamma=self.gamma,
            rho=self.rho.to(dtype=dtype, device=device),
            terminal=term,
            horizon=self.horizon,
            reward_noise=self.reward_noise,
            reward_std=self.reward_std,
        )

    def unstack(self) -> list[TabularMDP]:
        """The C MDPs of a batched MDP as a list of unbatched ones ([self] if unbatched)."""
        if not self.is_batched:
            return [self]
        return [
            TabularMDP(
                P=self.P[c],
                R=self.R[c],
                gamma=self.gamma,
                rho=self.rho[c],
                terminal=None if self.terminal is None else self.terminal[c],
                horizon=self.horizon,
                reward_noise=self.reward_noise,
                reward_std=self.reward_std,
            )
            for c in range(self.P.shape[0])
        ]


def stack_mdps(mdps: Sequence[TabularMDP]) -> TabularMDP:
    """Stack unbatched MDPs with equal S, A, gamma, horizon and reward noise into one (C, ...)."""
    if len(mdps) == 0:
        raise ValueError("mdps must hold at least one MDP")
    first = mdps[0]
    for i, m in enumerate(mdps):
        if m.is_batched:
            raise ValueError(f"mdps[{i}] is already batched; stack unbatched MDPs only")
        same = (
            m.num_states == first.num_states
            and m.num_actions == first.num_actions
            and m.gamma == first.gamma
            and m.horizon == first.horizon
            and m.reward_noise == first.reward_noise
            and m.reward_std == first.reward_std
        )
        if not same:
            raise ValueError(
                f"mdps[{i}] differs from mdps[0] in S, A, gamma, horizon or reward noise; "
                "only MDPs that agree on these can be stacked"
            )
    has_term = any(m.terminal is not None for m in mdps)
    return TabularMDP(
        P=torch.stack([m.P for m in mdps]),
        R=torch.stack([m.R for m in mdps]),
        gamma=first.gamma,
        rho=torch.stack([m.rho for m in mdps]),
        terminal=torch.stack([m.terminal_mask for m in mdps]) if has_term else None,
        horizon=first.horizon,
        reward_noise=first.reward_noise,
        reward_std=first.reward_std,
    )


# --------------------------------------------------------------------------------------------
# Exact evaluation


@dataclass(frozen=True, eq=False)
class _Batch:
    """An MDP and a policy brought to a common leading config axis C (C = 1 when unbatched)."""

    P: Tensor  # (C, S, A, S) with terminal rows zeroed
    R: Tensor  # (C, S, A) with terminal rows zeroed
    rho: Tensor  # (C, S)
    live: Tensor  # (C, S) 1.0 on non-terminal states, 0.0 on terminal ones
    pi: Tensor | None  # (C, S, A)
    batched: bool

    def out(self, x: Tensor) -> Tensor:
        """Drop the config axis again when neither input had one."""
        return x if self.batched else x.squeeze(0)


def _check_probs(mdp: TabularMDP, probs: object, name: str = "probs") -> Tensor:
    S, A = mdp.num_states, mdp.num_actions
    p = as_tensor(name, probs)
    expect = f"(S, A) = ({S}, {A}) or (C, S, A) = (C, {S}, {A})"
    if mdp.is_batched:
        expect = f"(S, A) = ({S}, {A}) or (C, S, A) = ({mdp.P.shape[0]}, {S}, {A})"
    ok = p.dim() in (2, 3) and tuple(p.shape[-2:]) == (S, A)
    if ok and p.dim() == 3 and mdp.is_batched and p.shape[0] != mdp.P.shape[0]:
        ok = False
    if ok and p.dim() == 3 and p.shape[0] == 0:
        ok = False
    if not ok:
        raise ValueError(f"{name} must have shape {expect}, got shape {tuple(p.shape)}")
    if not p.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor of probabilities, got {p.dtype}")
    check_finite(name, p)
    pd = p.detach()
    if bool((pd < 0).any()):
        raise ValueError(f"{name} must be non-negative, found min {float(pd.min()):.3g}")
    err = float((pd.sum(-1) - 1).abs().max())
    if err > _ROW_TOL:
        raise ValueError(f"{name} rows must sum to 1 over actions; max |sum - 1| = {err:.3g}")
    return p


def _batch(mdp: TabularMDP, probs: Tensor | None = None) -> _Batch:
    C = mdp.P.shape[0] if mdp.is_batched else None
    if probs is not None and probs.dim() == 3:
        C = probs.shape[0]
    batched = C is not None
    C = C or 1
    dtype = mdp.dtype if probs is None else torch.promote_types(mdp.dtype, probs.dtype)

    def lead(x: Tensor, unbatched_dim: int) -> Tensor:
        x = x.unsqueeze(0) if x.dim() == unbatched_dim else x
        return x.expand(C, *x.shape[1:])

    live = lead((~mdp.terminal_mask).to(dtype), 1)  # (C, S)
    P = lead(mdp.P.to(dtype), 3) * live[:, :, None, None]  # (C, S, A, S)
    R = lead(mdp.R.to(dtype), 2) * live[:, :, None]  # (C, S, A)
    rho = lead(mdp.rho.to(dtype), 1)  # (C, S)
    pi = None if probs is None else lead(probs.to(dtype), 2)  # (C, S, A)
    return _Batch(P=P, R=R, rho=rho, live=live, pi=pi, batched=batched)


def _policy_matrices(b: _Batch) -> tuple[Tensor, Tensor]:
    P_pi = torch.einsum("csa,csat->cst", b.pi, b.P)  # (C, S, S)
    r_pi = (b.pi * b.R).sum(-1)  # (C, S)
    return P_pi, r_pi


def _values(mdp: TabularMDP, b: _Batch) -> tuple[Tensor, Tensor]:
    """(V, Q) batched: infinite-horizon fixed point, or V_0, Q_0 by backward recursion."""
    gamma = mdp.gamma
    if mdp.horizon is None:
        P_pi, r_pi = _policy_matrices(b)
        eye = torch.eye(mdp.num_states, dtype=P_pi.dtype, device=P_pi.device)
        V = torch.linalg.solve(eye - gamma * P_pi, r_pi.unsqueeze(-1)).squeeze(-1)  # (C, S)
        Q = b.R + gamma * torch.einsum("csat,ct->csa", b.P, V)  # (C, S, A)
        return V, Q
    V = torch.zeros_like(b.rho)  # V_H = 0
    Q = b.R
    for _ in range(mdp.horizon):  # t = H-1, ..., 0
        Q = b.R + gamma * torch.einsum("csat,ct->csa", b.P, V)  # Q_t
        V = (b.pi * Q).sum(-1)  # V_t
    return V, Q


def state_values(mdp: TabularMDP, probs: Tensor) -> Tensor:
    """V^pi(s), exact and differentiable in ``probs``.

    Infinite horizon: V = (I - gamma P_pi)^-1 r_pi by one batched linear solve (Bellman equation).
    Horizon H: V_0 from the backward recursion V_H = 0,
        Q_t(s, a) = R(s, a) + gamma sum_s' P(s'|s, a) V_{t+1}(s'),  V_t(s) = sum_a pi(a|s) Q_t(s, a).
    Terminal states have V = 0. Shapes: probs (S, A) | (C, S, A) -> (S,) | (C, S).
    """
    b = _batch(mdp, _check_probs(mdp, probs))
    return b.out(_values(mdp, b)[0])


def q_values(mdp: TabularMDP, probs: Tensor) -> Tensor:
    """Q^pi(s, a) = R(s, a) + gamma sum_s' P(s'|s, a) V^pi(s') (Q_0 with a horizon; 0 at terminal
    states). Shapes: probs (S, A) | (C, S, A) -> (S, A) | (C, S, A)."""
    b = _batch(mdp, _check_probs(mdp, probs))
    return b.out(_values(mdp, b)[1])


def advantages(mdp: TabularMDP, probs: Tensor) -> Tensor:
    """A^pi(s, a) = Q^pi(s, a) - V^pi(s) (A_0 = Q_0 - V_0 with a horizon); sum_a pi A = 0.
    Shapes: probs (S, A) | (C, S, A) -> (S, A) | (C, S, A)."""
    b = _batch(mdp, _check_probs(mdp, probs))
    V, Q = _values(mdp, b)
    return b.out(Q - V.unsqueeze(-1))


def exact_return(mdp: TabularMDP, probs: Tensor) -> Tensor:
    """J(pi) = sum_s rho(s) V^pi(s) = E[sum_t gamma^t r_t] (sum over t < H with a horizon): the
    expected discounted return of the episodes ``sample_episodes`` draws, exactly.
    Shapes: probs (S, A) | (C, S, A) -> () | (C,)."""
    b = _batch(mdp, _check_probs(mdp, probs))
    V = _values(mdp, b)[0]
    return b.out((b.rho * V).sum(-1))


def _occupancy(mdp: TabularMDP, b: _Batch) -> Tensor:
    P_pi, _ = _policy_matrices(b)
    gamma = mdp.gamma
    if mdp.horizon is None:
        eye = torch.eye(mdp.num_states, dtype=P_pi.dtype, device=P_pi.device)
        x = torch.linalg.solve((eye - gamma * P_pi).mT, b.rho.unsqueeze(-1)).squeeze(-1)
        return x * b.live  # (C, S); arrival at a terminal state is not a step
    x = torch.zeros_like(b.rho)
    mu = b.rho  # Pr(s_t = s, episode still running) for t = 0
    for t in range(mdp.horizon):
        x = x + gamma**t * mu * b.live
        mu = torch.einsum("cs,cst->ct", mu * b.live, P_pi)
    return x


def state_occupancy(mdp: TabularMDP, probs: Tensor) -> Tensor:
    """Unnormalised discounted occupancy x^pi(s) = sum_t gamma^t Pr(s_t = s), s non-terminal.

    Infinite horizon: x solves (I - gamma P_pi)^T x = rho (terminal rows of P zeroed), so
    x^T = rho^T sum_t (gamma P_pi)^t. Horizon H: the sum runs over t < H. Terminal states get 0
    (arriving at one ends the episode). Without terminals or horizon sum_s x = 1 / (1 - gamma).
    Shapes: probs (S, A) | (C, S, A) -> (S,) | (C, S).
    """
    b = _batch(mdp, _check_probs(mdp, probs))
    return b.out(_occupancy(mdp, b))


def state_visitation(mdp: TabularMDP, probs: Tensor) -> Tensor:
    """Normalised discounted state visitation d^pi(s) = x^pi(s) / sum_s' x^pi(s').

    x^pi(s) = sum_t gamma^t Pr(s_t = s) over the steps of an episode (``state_occupancy``; t < H
    with a horizon, terminal states excluded). Without terminals or horizon this is the classic
    d^pi(s) = (1 - gamma) sum_t gamma^t Pr(s_t = s) (Kakade & Langford 2002; Sutton et al. 2000).
    A distribution over states (all zero only if rho puts all mass on terminal states).
    Shapes: probs (S, A) | (C, S, A) -> (S,) | (C, S).
    """
    b = _batch(mdp, _check_probs(mdp, probs))
    x = _occupancy(mdp, b)
    z = x.sum(-1, keepdim=True)
    d = torch.where(z > 0, x / torch.where(z > 0, z, torch.ones_like(z)), torch.zeros_like(x))
    return b.out(d)


def softmax_policy(logits: Tensor) -> Tensor:
    """pi(a|s) = exp(theta_{s,a}) / sum_b exp(theta_{s,b}). Shapes: (..., S, A) -> (..., S, A)."""
    return torch.softmax(as_tensor("logits", logits), dim=-1)


def _grad_logits(mdp: TabularMDP, logits: object) -> Tensor:
    """Validated logits as a fresh leaf, expanded to (C, S, A) when the MDP is batched."""
    lg = as_tensor("logits", logits)
    S, A = mdp.num_states, mdp.num_actions
    if lg.dim() not in (2, 3) or tuple(lg.shape[-2:]) != (S, A) or not lg.is_floating_point():
        raise ValueError(
            f"logits must be a floating tensor of shape (S, A) = ({S}, {A}) or (C, S, A), "
            f"got shape {tuple(lg.shape)} and dtype {lg.dtype}"
        )
    check_finite("logits", lg)
    lg = lg.detach()
    if mdp.is_batched and lg.dim() == 2:
        lg = lg.expand(mdp.P.shape[0], S, A)
    return lg.clone().requires_grad_(True)


def exact_grad(mdp: TabularMDP, logits: Tensor) -> Tensor:
    """grad_theta J(softmax(theta)): the exact policy gradient for softmax logits theta, by
    autograd through ``exact_return`` (any horizon).

    Shapes: logits (S, A) | (C, S, A) -> (S, A) | (C, S, A); an unbatched logits with a batched
    MDP gives the C gradients (C, S, A), one per MDP.
    """
    theta = _grad_logits(mdp, logits)
    with torch.enable_grad():
        J = exact_return(mdp, softmax_policy(theta))
        (grad,) = torch.autograd.grad(J.sum(), theta)
    return grad


def policy_gradient_theorem_grad(mdp: TabularMDP, logits: Tensor) -> Tensor:
    """The softmax policy gradient by the policy gradient theorem (Sutton et al. 2000, Thm. 1):

        dJ / d theta_{s,a} = x^pi(s) pi(a|s) A^pi(s, a)
                           = 1 / (1 - gamma) d^pi(s) pi(a|s) A^pi(s, a)  (no terminal states)

    using d pi(b|s) / d theta_{s,a} = pi(b|s) (1[a = b] - pi(a|s)) and sum_b pi(b|s) A(s, b) = 0;
    x^pi is the unnormalised occupancy (``state_occupancy``). An independent check of
    ``exact_grad``. Stationary (infinite-horizon) MDPs only: with a horizon, Q_t depends on t and
    this formula does not hold. Shapes: logits (S, A) | (C, S, A) -> (S, A) | (C, S, A).
    """
    if mdp.horizon is not None:
        raise ValueError(
            "policy_gradient_theorem_grad needs horizon=None (the stationary policy gradient "
            f"theorem); got horizon={mdp.horizon}. Use exact_grad for finite horizons."
        )
    theta = _grad_logits(mdp, logits).detach()
    b = _batch(mdp, softmax_policy(theta))
    V, Q = _values(mdp, b)
    x = _occupancy(mdp, b)
    grad = x.unsqueeze(-1) * b.pi * (Q - V.unsqueeze(-1))
    return grad if theta.dim() == 3 else grad.squeeze(0)


def _optimal(mdp: TabularMDP) -> tuple[_Batch, Tensor, Tensor, Tensor]:
    """(batch, V*, Q*, greedy action index) with the config axis; see ``optimal_values``."""
    b = _batch(mdp)
    C, S, A = b.R.shape
    gamma = mdp.gamma
    if mdp.horizon is not None:  # backward induction: exact
        V = torch.zeros_like(b.rho)
        Q = b.R
        for _ in range(mdp.horizon):
            Q = b.R + gamma * torch.einsum("csat,ct->csa", b.P, V)
            V = Q.max(-1).values
        return b, V, Q, Q.argmax(-1)
    # Policy iteration (Howard 1960; Puterman 1994 §6.4): exact evaluation by a linear solve,
    # greedy improvement, stop when no state improves by more than a relative 1e-12. It ends
    # after finitely many steps at an optimal deterministic policy.
    eye = torch.eye(S, dtype=b.R.dtype, device=b.R.device)
    with torch.no_grad():
        act = b.R.argmax(-1)  # (C, S)
        for _ in range(10_000):
            pi = torch.nn.functional.one_hot(act, A).to(b.R.dtype)
            b_pi = _Batch(P=b.P, R=b.R, rho=b.rho, live=b.live, pi=pi, batched=b.batched)
            V, Q = _values(mdp, b_pi)
            q_cur = Q.gather(-1, act.unsqueeze(-1)).squeeze(-1)
            q_best, best = Q.max(-1)
            tol = 1e-12 * (1.0 + Q.abs().amax(dim=(-2, -1), keepdim=True).squeeze(-1))
            better = q_best > q_cur + tol
            if not bool(better.any()):
                break
            act = torch.where(better, best, act)
        else:  # pragma: no cover - policy iteration terminates in at most A^S steps
            raise RuntimeError("policy iteration did not converge in 10000 iterations")
    # evaluate the optimal policy once more with autograd enabled (J* differentiable in P, R)
    pi = torch.nn.functional.one_hot(act, A).to(b.R.dtype)
    P_pi = torch.einsum("csa,csat->cst", pi, b.P)
    r_pi = (pi * b.R).sum(-1)
    V = torch.linalg.solve(eye - gamma * P_pi, r_pi.unsqueeze(-1)).squeeze(-1)
    Q = b.R + gamma * torch.einsum("csat,ct->csa", b.P, V)
    return b, V, Q, act


def optimal_values(mdp: TabularMDP) -> Tensor:
    """V*(s) = max_pi V^pi(s), exact.

    Infinite horizon: policy iteration with exact (linear-solve) evaluation, which terminates at
    an optimal deterministic stationary policy (Puterman 1994 Thm. 6.4.2). Horizon H: backward
    induction V*_t = max_a [R + gamma P V*_{t+1}], returning V*_0; this optimum is over all
    (possibly time-dependent) policies, so it bounds the J of every stationary policy and may
    exceed the best of them. Shapes: () -> (S,) | (C, S).
    """
    b, V, _, _ = _optimal(mdp)
    return b.out(V)


def optimal_return(mdp: TabularMDP) -> Tensor:
    """J* = sum_s rho(s) V*(s) (see ``optimal_values``). Shapes: -> () | (C,)."""
    b, V, _, _ = _optimal(mdp)
    return b.out((b.rho * V).sum(-1))


def optimal_policy(mdp: TabularMDP) -> Tensor:
    """A deterministic optimal policy as one-hot probs (S, A) | (C, S, A): greedy in Q*.

    Infinite horizon: exact_return(mdp, optimal_policy(mdp)) == optimal_return(mdp). Horizon H:
    the greedy first-step rule argmax_a Q*_0(s, a); the optimum may need a time-dependent policy,
    which a stationary (S, A) table cannot express. Terminal states get action 0.
    """
    b, _, _, act = _optimal(mdp)
    act = torch.where(b.live > 0, act, torch.zeros_like(act))
    return b.out(torch.nn.functional.one_hot(act, mdp.num_actions).to(b.R.dtype))


def kl_divergence(p_old: Tensor, p_new: Tensor) -> Tensor:
    """Per-state KL(p_old(.|s) || p_new(.|s)) = sum_a p_old log(p_old / p_new), with 0 log 0 = 0
    (+inf where p_new = 0 < p_old). The quantity TRPO bounds (arXiv 1502.05477).
    Shapes: (..., S, A) -> (..., S)."""
    p = as_tensor("p_old", p_old)
    q = as_tensor("p_new", p_new)
    if p.shape != q.shape or p.dim() < 2:
        raise ValueError(
            f"p_old and p_new must share one shape (..., S, A), got {tuple(p.shape)} and "
            f"{tuple(q.shape)}"
        )
    return (torch.xlogy(p, p) - torch.xlogy(p, q)).sum(-1)


def total_variation(p_old: Tensor, p_new: Tensor) -> Tensor:
    """Per-state total variation TV(s) = 1/2 sum_a |p_old(a|s) - p_new(a|s)| in [0, 1].
    Shapes: (..., S, A) -> (..., S)."""
    p = as_tensor("p_old", p_old)
    q = as_tensor("p_new", p_new)
    if p.shape != q.shape or p.dim() < 2:
        raise ValueError(
            f"p_old and p_new must share one shape (..., S, A), got {tuple(p.shape)} and "
            f"{tuple(q.shape)}"
        )
    return 0.5 * (p - q).abs().sum(-1)


# --------------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True, eq=False)
class Episodes:
    """A batch of episodes padded to the longest one, T steps (T = max length in the batch).

    Fields ((C,) leading when the MDP, policy or start states are batched):
        states    (.., N, T) long   s_t (0 on padded steps)
        actions   (.., N, T) long   a_t (0 on padded steps)
        rewards   (.., N, T) float  r_t (0 on padded steps)
        mask      (.., N, T) bool   True on steps that happened
        lengths   (.., N)    long   number of steps
        returns   (.., N)    float  sum_t gamma^t r_t
        truncated (.., N)    bool   cut by max_steps while still running (not by terminal or H)
    """

    states: Tensor
    actions: Tensor
    rewards: Tensor
    mask: Tensor
    lengths: Tensor
    returns: Tensor
    truncated: Tensor

    @property
    def num_steps(self) -> int:
        return self.states.shape[-1]


@dataclass(frozen=True, eq=False)
class PackedEpisodes:
    """The steps of a batch of episodes packed per configuration: row c holds every step of
    configuration c, episode after episode, each in time order (K = the largest step count of a
    configuration; shorter rows are padded with mask False). Always with the C axis (C = 1 for an
    unbatched call).

        states, actions (C, K) long;  rewards (C, K) float;  mask (C, K) bool
        episode   (C, K) long   n in [0, N): the episode a step belongs to
        lengths   (C, N) long;  returns (C, N) float;  truncated (C, N) bool  (as in Episodes)
    """

    states: Tensor
    actions: Tensor
    rewards: Tensor
    episode: Tensor
    mask: Tensor
    lengths: Tensor
    returns: Tensor
    truncated: Tensor


def _cdf(probs: Tensor) -> Tensor:
    """Cumulative sums along the last axis, divided by the total so that they end at exactly 1
    (x / x == 1 in IEEE arithmetic). Shapes: (..., K) -> (..., K)."""
    cdf = probs.cumsum(-1)
    return cdf / cdf[..., -1:]


def _sample_index(probs: Tensor, u: Tensor) -> Tensor:
    """Inverse-CDF draw: the index k with cdf_{k-1} <= u < cdf_k, so Pr(k) = probs_k and an entry
    of probability 0 is never drawn. Shapes: probs (..., K), u (...) in [0, 1) -> (...) long."""
    return (_cdf(probs) <= u.unsqueeze(-1)).sum(-1)


def _check_generator(generator: object, device: torch.device) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(
            f"generator must be a torch.Generator, got {type(generator).__name__}; "
            "e.g. torch.Generator().manual_seed(0)"
        )
    if generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device} but the MDP is on {device}")
    return generator


Generators = torch.Generator | Sequence[torch.Generator]


def _check_generators(generator: object, device: torch.device, C: int) -> list[torch.Generator]:
    """One generator for the whole batch ([g]), or one per configuration (a list of C)."""
    if isinstance(generator, torch.Generator):
        return [_check_generator(generator, device)]
    if isinstance(generator, (list, tuple)):
        if len(generator) != C:
            raise ValueError(
                f"generator lists {len(generator)} generators but the batch has C={C} "
                "configurations; give one torch.Generator, or one per configuration"
            )
        return [_check_generator(g, device) for g in generator]
    return [_check_generator(generator, device)]  # raises the type error


def _draw_running(
    gens: list[torch.Generator],
    idx: Tensor,
    N: int,
    tail: tuple[int, ...],
    fn: Callable[..., Tensor],
    **kw: Any,
) -> Tensor:
    """Random numbers for the running episodes ``idx`` (sorted, config-major c*N + n): rows
    (len(idx), *tail), drawn per configuration from its own generator (one call per configuration
    with running episodes, none for a finished one), or all at once from a single generator. A
    configuration's draws depend only on its own running episodes: batched == one-config runs."""
    if len(gens) == 1:
        return fn(idx.numel(), *tail, generator=gens[0], **kw)
    counts = torch.bincount(idx // N, minlength=len(gens)).tolist()
    parts = [fn(n, *tail, generator=g, **kw) for g, n in zip(gens, counts, strict=True) if n]
    return torch.cat(parts)


def sample_episodes(
    mdp: TabularMDP,
    probs: Tensor,
    start_states: Tensor,
    generator: Generators,
    max_steps: int | None = None,
    layout: str = "padded",
) -> Episodes | PackedEpisodes:
    """Roll out N episodes of policy ``probs`` from ``start_states``, all stepping together.

    At each step t every running episode draws a_t ~ pi(.|s_t), r_t (R(s_t, a_t), or Bernoulli /
    Gaussian around it per ``mdp.reward_noise``) and s_{t+1} ~ P(.|s_t, a_t). An episode ends on
    arriving at a terminal state (which is not a step; a start in a terminal state gives length
    0), after H = ``mdp.horizon`` steps (the end of the MDP, not truncation), or after
    ``max_steps`` steps (default 1000; a safety cap, flagged ``truncated``). Hence
    E[returns] = exact_return(mdp, probs) whenever no episode is truncated.

    ``generator`` is one torch.Generator, or a list of C, one per configuration: configuration c
    then draws its numbers from generator c alone, so its episodes do not depend on the other
    configurations of the batch (a batched run equals C separate runs with the same generators).
    The only Python loop is over time steps. Randomness comes from ``generator`` only (on the
    MDP's device): the same seed gives identical episodes.

    ``layout="padded"`` returns ``Episodes`` (.., N, T), T the longest episode of the whole batch;
    ``layout="packed"`` returns ``PackedEpisodes``: each configuration's steps in one row (C, K),
    K its step count, without the padding a long tail of episode lengths costs.

    Shapes: probs (S, A) | (C, S, A); start_states (N,) | (C, N) long -> Episodes (.., N, T).
    """
    if layout not in ("padded", "packed"):
        raise ValueError(f"unknown layout {layout!r}; choose one of ['packed', 'padded']")
    S = mdp.num_states
    pi = _check_probs(mdp, probs).detach()
    st = as_tensor("start_states", start_states)
    if st.dtype.is_floating_point or st.dtype == torch.bool or st.dim() not in (1, 2):
        raise ValueError(
            f"start_states must be an integer tensor of shape (N,) or (C, N), got shape "
            f"{tuple(st.shape)} and dtype {st.dtype}"
        )
    st = st.to(device=mdp.device, dtype=torch.long)
    if st.numel() > 0 and (int(st.min()) < 0 or int(st.max()) >= S):
        raise ValueError(f"start_states must lie in [0, S) = [0, {S})")
    if max_steps is None:
        max_steps = DEFAULT_MAX_STEPS
    if not _is_int(max_steps) or max_steps < 1:
        raise ValueError(f"max_steps must be an int >= 1 or None, got {max_steps!r}")
    sizes = {"mdp": mdp.P.shape[0] if mdp.is_batched else None}
    sizes["probs"] = pi.shape[0] if pi.dim() == 3 else None
    sizes["start_states"] = st.shape[0] if st.dim() == 2 else None
    given = {k: v for k, v in sizes.items() if v is not None}
    if len(set(given.values())) > 1:
        raise ValueError(f"config axes C disagree: {given}; batched inputs must share one C")
    batched = bool(given)
    C = next(iter(given.values())) if given else 1
    dtype = torch.promote_types(mdp.dtype, pi.dtype)
    device = mdp.device
    A = mdp.num_actions
    gens = _check_generators(generator, device, C)
    rnd = {"dtype": dtype, "device": device}

    def lead(x: Tensor, unbatched_dim: int) -> Tensor:
        x = x.unsqueeze(0) if x.dim() == unbatched_dim else x
        return x.expand(C, *x.shape[1:])

    # Flat tables, rows indexed by c*S + s (states) and (c*S + s)*A + a (state-action pairs).
    # Raw P rows are used: terminal rows are never stepped from, so their content is irrelevant.
    pol_cdf = _cdf(lead(pi.to(dtype), 2)).reshape(C * S, A)  # (C*S, A)
    P_cdf = _cdf(lead(mdp.P.to(dtype), 3)).reshape(C * S * A, S)  # (C*S*A, S)
    R_flat = lead(mdp.R.to(dtype), 2).reshape(C * S * A)  # (C*S*A,)
    done_flat = lead(mdp.terminal_mask, 1).reshape(C * S)  # (C*S,)
    s0 = st if st.dim() == 2 else st.unsqueeze(0)
    N = s0.shape[-1]
    M = C * N
    s = s0.expand(C, N).reshape(M)  # (M,) episodes flattened as c*N + n
    c_base = (torch.arange(C, device=device) * S).repeat_interleave(N)  # (M,)

    cap = max_steps if mdp.horizon is None else min(max_steps, mdp.horizon)
    ret = torch.zeros(M, dtype=dtype, device=device)
    # Only the running episodes are stepped: lengths vary a lot (geometric on a Garnet), and the
    # batch runs until its longest episode ends. idx (m,) lists them (sorted c*N + n); s_run,
    # base_run and j (their rows in the current block of draws) are aligned with idx.
    idx = torch.nonzero(~done_flat[c_base + s]).squeeze(1)  # (m,)
    s_run, base_run = s.index_select(0, idx), c_base.index_select(0, idx)
    n_u = 3 if mdp.reward_noise == "bernoulli" else 2  # uniforms per step: action, next state
    disc = 1.0
    steps: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []  # (idx, s, a, r) per time step
    t, blk, blk_end = 0, _RAND_BLOCK // 2, 0
    while t < cap and idx.numel() > 0:
        if t == blk_end:  # uniforms for the next blk steps of the running episodes (per config)
            blk = min(2 * blk, _RAND_BLOCK_MAX)
            blk_end += blk
            # flat (m * n_u * blk,): running episode j, stream i, step k at j * n_u * blk + i * blk + k
            u_blk = _draw_running(gens, idx, N, (n_u, blk), torch.rand, **rnd).reshape(-1)
            j = torch.arange(idx.numel(), device=device) * (n_u * blk)
            if mdp.reward_noise == "gaussian":  # flat (m * blk,)
                z_blk = _draw_running(gens, idx, N, (blk,), torch.randn, **rnd).reshape(-1)
        k = t - (blk_end - blk)  # step within the block
        row = base_run + s_run  # (m,)
        u_a = u_blk.index_select(0, j + k).unsqueeze(-1)  # (m, 1)
        a = torch.searchsorted(pol_cdf.index_select(0, row), u_a, right=True).squeeze(-1)
        sa = row * A + a  # (m,)
        r = R_flat.index_select(0, sa)  # (m,) expected reward
        if mdp.reward_noise == "bernoulli":
            r = (u_blk.index_select(0, j + 2 * blk + k) < r).to(dtype)
        elif mdp.reward_noise == "gaussian":
            r = r + mdp.reward_std * z_blk.index_select(0, j // n_u + k)
        u_s = u_blk.index_select(0, j + blk + k).unsqueeze(-1)  # (m, 1)
        s_next = torch.searchsorted(P_cdf.index_select(0, sa), u_s, right=True).squeeze(-1)
        steps.append((idx, s_run, a, r))  # compact: only the running episodes
        ret.index_add_(0, idx, disc * r)
        disc *= mdp.gamma
        keep = torch.nonzero(~done_flat.index_select(0, base_run + s_next)).squeeze(1)
        s_run = s_next
        if keep.numel() < idx.numel():
            idx, s_run, base_run, j = (x.index_select(0, keep) for x in (idx, s_run, base_run, j))
        t += 1
    no = torch.zeros(M, dtype=torch.bool, device=device)
    alive = no.index_put((idx,), torch.ones((), dtype=torch.bool, device=device))  # at the cap

    T = len(steps)
    if steps:  # every recorded step as one flat list: episode index, time, s, a, r
        ep_i, s_i, a_i, r_i = (torch.cat([x[j] for x in steps]) for j in range(4))  # (K,)
        per_step = torch.tensor([x[0].numel() for x in steps], device=device)  # (T,)
        t_i = torch.repeat_interleave(torch.arange(T, device=device), per_step)  # (K,)
    else:
        ep_i = t_i = s_i = a_i = torch.zeros(0, dtype=torch.long, device=device)
        r_i = torch.zeros(0, dtype=dtype, device=device)
    lengths = torch.bincount(ep_i, minlength=M).reshape(C, N)
    ended_by_horizon = mdp.horizon is not None and mdp.horizon <= max_steps
    truncated = (alive if not ended_by_horizon else torch.zeros_like(alive)).reshape(C, N)
    ret = ret.reshape(C, N)

    if layout == "packed":
        # tokens grouped by configuration, then episode, then time: an episode starts after the
        # earlier episodes of its configuration (exclusive cumsum of lengths)
        ep_start = (torch.cumsum(lengths, -1) - lengths).reshape(M)  # (M,) offset in its row
        cfg = ep_i // N
        pos = ep_start.index_select(0, ep_i) + t_i  # (K,) position in its row
        per_config = lengths.sum(-1)  # (C,) tokens of each configuration
        K = int(per_config.max()) if C > 0 and ep_i.numel() > 0 else 0

        flat = cfg * K + pos  # (K_total,) index into the (C, K) rows

        def row(x: Tensor, fill: Tensor) -> Tensor:
            out = torch.full((C * K,), fill, dtype=x.dtype, device=device)
            return out.scatter_(0, flat, x).reshape(C, K)

        zero_l = torch.zeros((), dtype=torch.long)
        return PackedEpisodes(
            states=row(s_i, zero_l),
            actions=row(a_i, zero_l),
            rewards=row(r_i, torch.zeros((), dtype=dtype)),
            episode=row(ep_i - cfg * N, zero_l),
            mask=row(torch.ones_like(ep_i, dtype=torch.bool), torch.zeros((), dtype=torch.bool)),
            lengths=lengths,
            returns=ret,
            truncated=truncated,
        )

    flat = ep_i * T + t_i  # (K_total,) index into the (M, T) grid

    def grid(x: Tensor, fill_dtype: torch.dtype) -> Tensor:
        out = torch.zeros(M * T, dtype=fill_dtype, device=device)
        return out.scatter_(0, flat, x.to(fill_dtype)).reshape(C, N, T)  # (C, N, T)

    states_t, actions_t = grid(s_i, torch.long), grid(a_i, torch.long)
    rewards_t = grid(r_i, dtype)
    mask_t = grid(torch.ones_like(ep_i), torch.long).bool()

    def out(x: Tensor) -> Tensor:
        return x if batched else x.squeeze(0)

    return Episodes(
        states=out(states_t),
        actions=out(actions_t),
        rewards=out(rewards_t),
        mask=out(mask_t),
        lengths=out(lengths),
        returns=out(ret),
        truncated=out(truncated),
    )


def sample_start_states(mdp: TabularMDP, num: int, generator: Generators) -> Tensor:
    """``num`` i.i.d. start states s_0 ~ rho. Shapes: -> (num,) | (C, num) long."""
    if not _is_int(num) or num < 1:
        raise ValueError(f"num must be an int >= 1, got {num!r}")
    rho = mdp.rho if mdp.is_batched else mdp.rho.unsqueeze(0)  # (C, S)
    C = rho.shape[0] if mdp.is_batched or isinstance(generator, torch.Generator) else len(generator)
    gens = _check_generators(generator, mdp.device, C)
    rho = rho.expand(C, -1)
    kw = {"dtype": rho.dtype, "device": rho.device}
    if len(gens) == 1:
        u = torch.rand(C, num, generator=gens[0], **kw)  # (C, num)
    else:  # row c from generator c
        u = torch.stack([torch.rand(num, generator=g, **kw) for g in gens])
    s0 = _sample_index(rho.unsqueeze(1).expand(-1, num, -1), u)  # (C, num)
    return s0 if mdp.is_batched or len(gens) > 1 else s0.squeeze(0)


def sample_groups(
    mdp: TabularMDP,
    probs: Tensor,
    num_groups: int,
    group_size: int,
    generator: Generators,
    max_steps: int | None = None,
    layout: str = "padded",
) -> tuple[Episodes | PackedEpisodes, Tensor]:
    """GRPO-style groups: draw ``num_groups`` start states from rho and run ``group_size``
    episodes from each, consecutively (the tabular analogue of G completions of one prompt).

    Episode i belongs to group i // group_size, the layout ``grpo_lab.advantages.
    group_advantages(episodes.returns, group_size)`` expects. With one generator, C policies
    (C, S, A) on one MDP share the same group start states (common random numbers); with a list
    of C generators each configuration draws its own. Returns (episodes with
    N = num_groups * group_size, group start states (num_groups,) | (C, num_groups)).
    """
    if not _is_int(group_size) or group_size < 1:
        raise ValueError(f"group_size must be an int >= 1, got {group_size!r}")
    if not _is_int(num_groups) or num_groups < 1:
        raise ValueError(f"num_groups must be an int >= 1, got {num_groups!r}")
    p = _check_probs(mdp, probs)
    C = p.shape[0] if p.dim() == 3 else (mdp.P.shape[0] if mdp.is_batched else 1)
    _check_generators(generator, mdp.device, C)
    starts = sample_start_states(mdp, num_groups, generator)  # (.., num_groups)
    if p.dim() == 3 and starts.dim() == 1:
        starts = starts.unsqueeze(0).expand(p.shape[0], num_groups)
    episodes = sample_episodes(
        mdp,
        p,
        starts.repeat_interleave(group_size, dim=-1),
        generator,
        max_steps=max_steps,
        layout=layout,
    )
    return episodes, starts


# --------------------------------------------------------------------------------------------
# Generators

# generator(**kwargs) -> TabularMDP
ENVS: Registry[Callable[..., TabularMDP]] = Registry("env")


def make_env(name: str, **kwargs: Any) -> TabularMDP:
    """Build the registered environment ``name`` (one of ``ENVS.names()``) with ``kwargs``."""
    return ENVS.get(name)(**kwargs)


def _derive_seeds(seed: int, num: int) -> list[int]:
    """C independent seeds from one: draws of a generator seeded with ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2**62, (num,), generator=g).tolist()


def _build(
    one: Callable[[torch.Generator], dict[str, Tensor]],
    *,
    seed: int,
    num: int | None,
    gamma: float,
    horizon: int | None,
    dtype: torch.dtype,
    device: torch.device | str | None,
    reward_noise: str = "none",
    reward_std: float = 1.0,
) -> TabularMDP:
    """Run ``one`` (a float64 CPU builder of P, R, rho, terminal) once, or ``num`` times with
    derived seeds and stack; then cast to ``dtype`` and move to ``device``."""
    if not _is_int(seed):
        raise ValueError(f"seed must be an int, got {seed!r}")
    if num is not None and (not _is_int(num) or num < 1):
        raise ValueError(f"num must be None (one MDP) or an int >= 1 (C stacked MDPs), got {num!r}")
    if num is None:
        parts = [one(torch.Generator().manual_seed(seed))]
    else:
        parts = [one(torch.Generator().manual_seed(s)) for s in _derive_seeds(seed, num)]

    def field(key: str) -> Tensor:
        xs = [p[key] for p in parts]
        x = xs[0] if num is None else torch.stack(xs)
        return x.to(device=device, dtype=dtype if x.is_floating_point() else x.dtype)

    return TabularMDP(
        P=field("P"),
        R=field("R"),
        gamma=gamma,
        rho=field("rho"),
        terminal=field("terminal"),
        horizon=horizon,
        reward_noise=reward_noise,
        reward_std=reward_std,
    )


@ENVS.register("bandit")
def bandit(
    k: int = 5,
    kind: str = "bernoulli",
    *,
    means: Sequence[float] | Tensor | None = None,
    reward_std: float = 1.0,
    gamma: float = 0.99,
    seed: int = 0,
    num: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TabularMDP:
    """A k-armed bandit as an MDP: decision state 0, terminal state 1, every arm leads to 1.

    Arm a pays Bernoulli(mu_a) with mu_a ~ U[0, 1] (kind="bernoulli") or N(mu_a, reward_std^2)
    with mu_a ~ N(0, 1) (kind="gaussian"), unless ``means`` fixes them. Episodes last one step,
    J(pi) = sum_a pi(a|0) mu_a and J* = max_a mu_a. S = 2, A = k.
    """
    if not _is_int(k) or k < 1:
        raise ValueError(f"k must be an int >= 1, got {k!r}")
    if kind not in ("bernoulli", "gaussian"):
        raise ValueError(f"unknown kind {kind!r}; choose one of ['bernoulli', 'gaussian']")
    fixed = None
    if means is not None:
        fixed = _float_tensor("means", means).to(torch.float64).cpu()
        if fixed.shape != (k,):
            raise ValueError(f"means must have shape (k,) = ({k},), got {tuple(fixed.shape)}")

    def one(g: torch.Generator) -> dict[str, Tensor]:
        if fixed is not None:
            mu = fixed.clone()
        elif kind == "bernoulli":
            mu = torch.rand(k, generator=g, dtype=torch.float64)
        else:
            mu = torch.randn(k, generator=g, dtype=torch.float64)
        P = torch.zeros(2, k, 2, dtype=torch.float64)  # (S, A, S)
        P[:, :, 1] = 1.0
        R = torch.zeros(2, k, dtype=torch.float64)
        R[0] = mu
        rho = torch.tensor([1.0, 0.0], dtype=torch.float64)
        return {"P": P, "R": R, "rho": rho, "terminal": torch.tensor([False, True])}

    return _build(
        one,
        seed=seed,
        num=num,
        gamma=gamma,
        horizon=None,
        dtype=dtype,
        device=device,
        reward_noise=kind,
        reward_std=reward_std,
    )


@ENVS.register("contexts")
def contexts(
    num_contexts: int = 4,
    num_actions: int = 2,
    *,
    success: Sequence[Sequence[float]] | Tensor | None = None,
    lengths: Sequence[Sequence[int]] | Tensor | None = None,
    max_length: int = 1,
    gamma: float = 0.99,
    seed: int = 0,
    num: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TabularMDP:
    """Contexts of different difficulty with answers of different length: the tabular analogue
    of prompts and completions with a verifiable reward (design.md §4, "sensitive experiments").

    Start state k ~ U{0..K-1} is a context; action a answers it. The answer then runs through a
    corridor of ``lengths[k][a] - 1`` states (any action moves on) and its last step pays
    Bernoulli(``success[k][a]``), so an episode lasts lengths[k][a] steps and its expected return
    is gamma^(lengths[k][a] - 1) success[k][a]. Unless given, success ~ U[0, 1] and lengths ~
    U{1..max_length}. Std scaling of group advantages re-weights contexts by their success rate;
    per-episode length normalisation re-weights answers by their length.
    S = K + sum_{k,a} (lengths[k][a] - 1) + 1 (terminal last), A = ``num_actions``.
    """
    for name, v in (("num_contexts", num_contexts), ("num_actions", num_actions)):
        if not _is_int(v) or v < 1:
            raise ValueError(f"{name} must be an int >= 1, got {v!r}")
    if not _is_int(max_length) or max_length < 1:
        raise ValueError(f"max_length must be an int >= 1, got {max_length!r}")
    K, A = num_contexts, num_actions
    fixed_p = fixed_l = None
    if success is not None:
        fixed_p = _float_tensor("success", success).to(torch.float64).cpu()
        if fixed_p.shape != (K, A) or bool(((fixed_p < 0) | (fixed_p > 1)).any()):
            raise ValueError(
                f"success must be (num_contexts, num_actions) = ({K}, {A}) probabilities in "
                f"[0, 1], got shape {tuple(fixed_p.shape)}"
            )
    if lengths is not None:
        fixed_l = torch.as_tensor(lengths)
        if fixed_l.shape != (K, A) or fixed_l.is_floating_point() or bool((fixed_l < 1).any()):
            raise ValueError(
                f"lengths must be (num_contexts, num_actions) = ({K}, {A}) ints >= 1, got "
                f"{fixed_l.tolist()!r}"
            )
    if num is not None and fixed_l is None and max_length > 1:
        raise ValueError("stacked contexts MDPs (num) need fixed lengths: S depends on them")

    def one(g: torch.Generator) -> dict[str, Tensor]:
        p = fixed_p if fixed_p is not None else torch.rand(K, A, generator=g, dtype=torch.float64)
        if fixed_l is not None:
            L = fixed_l.long()
        else:
            L = torch.randint(1, max_length + 1, (K, A), generator=g)
        S = K + int((L - 1).sum()) + 1
        end = S - 1
        P = torch.zeros(S, A, S, dtype=torch.float64)  # (S, A, S)
        R = torch.zeros(S, A, dtype=torch.float64)
        nxt = K  # next free corridor state
        for k in range(K):
            for a in range(A):
                s, n = k, int(L[k, a])
                for _ in range(n - 1):  # corridor: every action moves on
                    if s == k:
                        P[s, a, nxt] = 1.0
                    else:
                        P[s, :, nxt] = 1.0
                    s, nxt = nxt, nxt + 1
                if s == k:
                    P[s, a, end], R[s, a] = 1.0, p[k, a]
                else:
                    P[s, :, end], R[s, :] = 1.0, p[k, a]
        P[end, :, end] = 1.0
        rho = torch.zeros(S, dtype=torch.float64)
        rho[:K] = 1.0 / K
        terminal = torch.zeros(S, dtype=torch.bool)
        terminal[end] = True
        return {"P": P, "R": R, "rho": rho, "terminal": terminal}

    return _build(
        one,
        seed=seed,
        num=num,
        gamma=gamma,
        horizon=None,
        dtype=dtype,
        device=device,
        reward_noise="bernoulli",
    )


@ENVS.register("chain")
def chain(
    n: int = 10,
    *,
    slip: float = 0.0,
    small_reward: float = 0.001,
    large_reward: float = 1.0,
    gamma: float = 0.99,
    horizon: int | None = None,
    seed: int = 0,
    num: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TabularMDP:
    """The hard-exploration chain (after Strens 2000, "NChain"; Osband et al. 2016 "deep sea").

    States 0..n-1, start 0, state n-1 terminal. Action 1 ("right") moves s -> s+1; action 0
    ("left") returns to 0 and pays ``small_reward``; entering n-1 pays ``large_reward``. With
    probability ``slip`` the other action's effect happens instead (Strens' action flip). R is
    the expected reward of (s, a). With the defaults and slip = 0, always-right earns
    gamma^(n-2) * large_reward (about 0.92 for n = 10), always-left small_reward / (1 - gamma)
    = 0.1, and a uniform policy reaches the end with probability about 2^-(n-1) per attempt.
    Deterministic: ``seed`` is accepted for a uniform interface; ``num`` stacks C copies.
    """
    if not _is_int(n) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    if not (isinstance(slip, (int, float)) and 0.0 <= slip <= 1.0):
        raise ValueError(f"slip must be a number in [0, 1], got {slip!r}")

    def one(g: torch.Generator) -> dict[str, Tensor]:
        P = torch.zeros(n, 2, n, dtype=torch.float64)  # (S, A, S)
        R = torch.zeros(n, 2, dtype=torch.float64)
        end = n - 1
        for s in range(end):
            big = large_reward if s + 1 == end else 0.0
            for a, p_fwd in ((1, 1.0 - slip), (0, slip)):
                P[s, a, s + 1] += p_fwd
                P[s, a, 0] += 1.0 - p_fwd
                R[s, a] = p_fwd * big + (1.0 - p_fwd) * small_reward
        P[end, :, end] = 1.0
        rho = torch.zeros(n, dtype=torch.float64)
        rho[0] = 1.0
        terminal = torch.zeros(n, dtype=torch.bool)
        terminal[end] = True
        return {"P": P, "R": R, "rho": rho, "terminal": terminal}

    return _build(one, seed=seed, num=num, gamma=gamma, horizon=horizon, dtype=dtype, device=device)


@ENVS.register("garnet")
def garnet(
    num_states: int = 10,
    num_actions: int = 3,
    branching: int = 2,
    *,
    p_end: float = 0.1,
    num_start_states: int | None = None,
    gamma: float = 0.9,
    horizon: int | None = None,
    reward_noise: str = "none",
    reward_std: float = 1.0,
    seed: int = 0,
    num: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TabularMDP:
    """A Garnet random MDP (Archibald et al. 1995; Bhatnagar et al. 2009) with a terminal state.

    Each (s, a) of the ``num_states`` ordinary states has ``branching`` distinct successors drawn
    uniformly, with probabilities given by the gaps between branching - 1 sorted U[0, 1] cuts
    (Bhatnagar et al.'s construction). Then an absorbing terminal state (index ``num_states``,
    S = num_states + 1) is reached from every (s, a) with probability ``p_end`` and the other
    successors are scaled by 1 - p_end, so episodes end with probability 1 after a geometric
    number of steps (mean 1 / p_end). R(s, a) ~ U[0, 1] (valid for reward_noise="bernoulli").
    rho is uniform over the ordinary states, or over ``num_start_states`` of them drawn at random.
    """
    for name, v, lo, hi in (
        ("num_states", num_states, 1, None),
        ("num_actions", num_actions, 1, None),
        ("branching", branching, 1, num_states),
    ):
        if not _is_int(v) or v < lo or (hi is not None and _is_int(hi) and v > hi):
            bound = f"in [{lo}, num_states = {hi}]" if hi is not None else f">= {lo}"
            raise ValueError(f"{name} must be an int {bound}, got {v!r}")
    if not (isinstance(p_end, (int, float)) and 0.0 <= p_end <= 1.0):
        raise ValueError(f"p_end must be a number in [0, 1], got {p_end!r}")
    if num_start_states is not None and (
        not _is_int(num_start_states) or not 1 <= num_start_states <= num_states
    ):
        raise ValueError(
            f"num_start_states must be None or an int in [1, num_states = {num_states}], "
            f"got {num_start_states!r}"
        )
    S0, A, B = num_states, num_actions, branching
    S = S0 + 1

    def one(g: torch.Generator) -> dict[str, Tensor]:
        f64 = torch.float64
        succ = torch.rand(S0, A, S0, generator=g, dtype=f64).argsort(-1)[..., :B]  # (S0, A, B)
        cuts = torch.rand(S0, A, B - 1, generator=g, dtype=f64).sort(-1).values
        edges = torch.cat(
            [torch.zeros(S0, A, 1, dtype=f64), cuts, torch.ones(S0, A, 1, dtype=f64)], -1
        )
        w = edges.diff(dim=-1)  # (S0, A, B), sums to 1
        P = torch.zeros(S, A, S, dtype=f64)
        P[:S0, :, :S0].scatter_(-1, succ, (1.0 - p_end) * w)
        P[:S0, :, S0] = p_end
        P[S0, :, S0] = 1.0
        R = torch.zeros(S, A, dtype=f64)
        R[:S0] = torch.rand(S0, A, generator=g, dtype=f64)
        rho = torch.zeros(S, dtype=f64)
        if num_start_states is None:
            rho[:S0] = 1.0 / S0
        else:
            rho[torch.randperm(S0, generator=g)[:num_start_states]] = 1.0 / num_start_states
        terminal = torch.zeros(S, dtype=torch.bool)
        terminal[S0] = True
        return {"P": P, "R": R, "rho": rho, "terminal": terminal}

    return _build(
        one,
        seed=seed,
        num=num,
        gamma=gamma,
        horizon=horizon,
        dtype=dtype,
        device=device,
        reward_noise=reward_noise,
        reward_std=reward_std,
    )


_MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # actions: 0 up, 1 right, 2 down, 3 left


@ENVS.register("gridworld")
def gridworld(
    rows: int = 5,
    cols: int = 5,
    *,
    walls: Sequence[tuple[int, int]] | None = None,
    goal: tuple[int, int] | None = None,
    start: tuple[int, int] = (0, 0),
    slip: float = 0.0,
    step_reward: float = 0.0,
    gamma: float = 0.95,
    horizon: int | None = None,
    seed: int = 0,
    num: int | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str | None = None,
) -> TabularMDP:
    """A grid world: 4 actions (0 up, 1 right, 2 down, 3 left), reward 1 on entering the goal.

    States are the free cells in row-major order (walls are not states); moving into a wall or
    off the grid leaves the agent in place. With probability ``slip`` the move is uniform over the
    4 directions instead of the chosen one. Every step also pays ``step_reward``. The goal
    (default bottom-right) is terminal; episodes start at ``start`` (default top-left). The
    default walls (``walls=None``) are a vertical bar in the middle column with gaps at the top
    and bottom rows; ``walls=()`` gives an open grid. With slip = 0, step_reward = 0:
    J* = gamma^(L - 1) for L the shortest path length in steps (L = 8 for the default 5 x 5).
    Deterministic: ``seed`` is accepted for a uniform interface; ``num`` stacks C copies.
    """
    if not _is_int(rows) or not _is_int(cols) or rows < 1 or cols < 1 or rows * cols < 2:
        raise ValueError(
            f"rows and cols must be ints >= 1 with at least 2 cells, got {rows}x{cols}"
        )
    if walls is None:
        walls = [(r, cols // 2) for r in range(1, rows - 1)] if rows >= 3 and cols >= 3 else []
    wall_set = {tuple(w) for w in walls}
    goal = (rows - 1, cols - 1) if goal is None else tuple(goal)
    start = tuple(start)
    for name, cell in [("goal", goal), ("start", start)] + [("walls", w) for w in wall_set]:
        if len(cell) != 2 or not (0 <= cell[0] < rows and 0 <= cell[1] < cols):
            raise ValueError(f"{name} cell {cell!r} is outside the {rows} x {cols} grid")
    for name, cell in (("goal", goal), ("start", start)):
        if cell in wall_set:
            raise ValueError(f"{name} cell {cell!r} is a wall")
    if goal == start:
        raise ValueError(f"start and goal must differ, both are {goal!r}")
    if not (isinstance(slip, (int, float)) and 0.0 <= slip <= 1.0):
        raise ValueError(f"slip must be a number in [0, 1], got {slip!r}")
    free = [(r, c) for r in range(rows) for c in range(cols) if (r, c) not in wall_set]
    index = {cell: i for i, cell in enumerate(free)}
    S, A = len(free), 4

    def one(g: torch.Generator) -> dict[str, Tensor]:
        P = torch.zeros(S, A, S, dtype=torch.float64)  # (S, A, S)
        for (r, c), s in index.items():
            for a in range(A):
                for d, (dr, dc) in enumerate(_MOVES):
                    p = slip / A + (1.0 - slip) * (d == a)
                    nxt = (r + dr, c + dc)
                    P[s, a, index.get(nxt, s)] += p
        gi = index[goal]
        R = step_reward + P[:, :, gi].clone()
        P[gi] = 0.0
        P[gi, :, gi] = 1.0
        R[gi] = 0.0
        rho = torch.zeros(S, dtype=torch.float64)
        rho[index[start]] = 1.0
        terminal = torch.zeros(S, dtype=torch.bool)
        terminal[gi] = True
        return {"P": P, "R": R, "rho": rho, "terminal": terminal}

    return _build(one, seed=seed, num=num, gamma=gamma, horizon=horizon, dtype=dtype, device=device)
