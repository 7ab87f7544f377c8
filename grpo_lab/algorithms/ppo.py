"""PPO with a learned critic on tabular MDPs, C configurations at once.

Proximal Policy Optimisation (Schulman et al., arXiv 1707.06347, Algorithm 1 and eq. 9) with
generalised advantage estimation (Schulman et al., arXiv 1506.02438). One iteration, read top to
bottom (the order of CleanRL's ppo.py):

  1. pi_old <- pi_theta (frozen). Sample ``num_episodes`` episodes, s_0 ~ rho, with pi_old.
  2. Values V_t = V_phi(s_t) from the critic at the visited states; GAE (arXiv 1506.02438 eq. 16)

         delta_t = r_t + gamma (1 - d_t) V_{t+1} - V_t
         A_t     = delta_t + gamma lam (1 - d_t) A_{t+1},        R_t = A_t + V_t  (the returns)

     with d_t = 1 on the last step of each episode, so the bootstrap after it is 0. Episodes end
     at a terminal state (value 0) or at the MDP's horizon H (the end of the problem), where 0 is
     exact. An episode cut by the ``max_steps`` safety cap (``truncated``) would need the
     bootstrap V(s_T) of the state it was cut in; ``Episodes`` does not record s_T, so such an
     episode is bootstrapped with 0 too (a bias; the iteration log reports ``truncated_frac``).
  3. For ``epochs`` passes, shuffle the episodes (each configuration with its own generator) and
     split them into ``minibatches``; on each minibatch minimise (PPO eq. 9 as a loss; design.md §3)

         L = L_policy + c1 L_value - c2 H[pi_theta]

     L_policy  the clipped surrogate -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) (eq. 7) per
               step, A normalised over the minibatch when ``norm_adv`` (as CleanRL), aggregated
               by ``loss.agg``;
     L_value   (V_phi - R)^2 / 2, clipped around the sampling-time values when ``loss.vf_clip``
               is set (``grpo_lab.losses.value_loss``), weighed by c1 = ``loss.vf_coef``;
     H         the entropy of pi_theta(.|s_t) at the visited steps, aggregated like L_policy.
     -c2 H is the correct sign: minimising it raises the entropy (the seed's +c2 H lowers it).
     Each configuration's gradient (policy and critic together) is clipped to norm
     ``max_grad_norm`` on its own, then one optimiser step updates policy and critic.
  4. After every optimiser step, the instrumentation of ``grpo_lab.instrument`` against pi_old
     (exact ratio audit, policy change, true / surrogate / clipped improvement) plus the ratio
     metrics of the step's minibatch under the updated policy, the value loss, the entropy and
     the explained variance of the updated critic on the iteration's batch.

Batched configurations: every parameter carries a leading axis C (the PureJaxRL pattern, arXiv
2210.05639); ``lr``, ``seed``, ``loss.eps_low``, ``loss.eps_high`` and ``loss.vf_coef`` may
differ between the C configurations, everything else must agree. Randomness comes from
per-configuration generators (stream 0: sampling, stream 1: minibatch order) and gradient
clipping is per configuration, so a batch of C runs gives the same numbers as C one-config runs
with the same seeds.

The critic is a value table V (C, S) (``critic="tabular"``) or a one-hidden-layer tanh network
over one-hot states (``critic="mlp"``). With a horizon H the true value is time-dependent (V_t);
a stationary critic can only approximate it, and ``critic_error`` compares it with V_0.

Separate or shared parameters. By default policy and critic are separate networks, and then c1
only multiplies the gradient of the critic's own parameters. Adam's step m / (sqrt(v) + eps) is
invariant to a constant scale of a parameter's gradient (up to eps), so with Adam and no gradient
clipping c1 > 0 leaves the run unchanged (tests/test_ppo.py checks it); only plain SGD (c1 scales
the critic's step) or the joint norm of ``max_grad_norm`` (c1 changes how much the value gradient
shrinks the policy's) give it any effect. With ``shared=True`` one network
(``grpo_lab.policies.tabular.SharedActorCritic``, ``hidden`` units; policy = critic = "mlp")
carries both heads on one trunk, as in PPO's §5 (eq. 9 "if using a neural network architecture
that shares parameters between the policy and value function"): the trunk's gradient is
grad L_policy + c1 grad L_value - c2 grad H, and c1 trades value against policy learning there.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn

from grpo_lab import seeding
from grpo_lab.advantages import masked_gae
from grpo_lab.algorithms.common import (
    RunRecord,
    check_batchable,
    gather_logp,
    group_permutations,
    guarded_step,
    iteration_generators,
)
from grpo_lab.envs.tabular import (
    TabularMDP,
    exact_return,
    optimal_return,
    sample_groups,
    state_values,
)
from grpo_lab.instrument import OldPolicy, exact_ratio_audit, improvement, policy_change
from grpo_lab.losses import (
    PRESETS,
    LossConfig,
    LossSpec,
    aggregate,
    clip_fractions,
    clipped_surrogate,
    ratio_metrics,
    token_entropy,
    value_loss,
)
from grpo_lab.optim import OptimizerName, make_optimizer
from grpo_lab.policies.tabular import POLICIES, PolicyName, SharedActorCritic

Tensor = torch.Tensor

# fields that may differ across the C configurations of one batched run
BATCHABLE = ("lr", "seed", "loss.eps_low", "loss.eps_high", "loss.vf_coef")
ADV_NORM_EPS = 1e-8  # CleanRL's (A - mean) / (std + 1e-8)
CLIP_NORM_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s max_norm / (norm + 1e-6)
CRITIC_INIT_STREAM = seeding.PPO_CRITIC_INIT  # seed stream of the MLP critic's initial weights


# ----------------------------------------------------------------------------- critics


def _critic_generator(seed: int) -> torch.Generator:
    """A generator for the critic's initial weights, seeded from (seed, CRITIC_INIT_STREAM) so it
    is independent of the policy's initialisation (seeded with ``seed`` itself)."""
    state = np.random.SeedSequence([int(seed), CRITIC_INIT_STREAM]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed((int(state[0]) << 32 | int(state[1])) & ((1 << 63) - 1))


class TabularCritic(nn.Module):
    """V_phi(s) = phi_s: one free value per state, starting at 0. Shapes: table (C, S).

    ``seed`` is accepted for the interface ``MLPCritic`` shares; a zero table needs none.
    """

    def __init__(
        self,
        num_states: int,
        num_configs: int,
        *,
        seed: int | list[int] = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.zeros(num_configs, num_states, dtype=dtype, device=device))

    def values(self) -> Tensor:
        """V_phi(s) for every state: (C, S)."""
        return self.table


class MLPCritic(nn.Module):
    """V_phi(s) = w2 . tanh(W1 onehot(s) + b1) + b2, C networks stacked on a leading axis.

    Initialised like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)) from one generator per
    configuration, derived from its seed by ``_critic_generator``. Shapes: W1 (C, S, H),
    b1 (C, H), w2 (C, H, 1), b2 (C, 1).
    """

    def __init__(
        self,
        num_states: int,
        num_configs: int,
        *,
        hidden: int = 32,
        seed: int | list[int] = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        seeds = seed if isinstance(seed, list) else [seed + c for c in range(num_configs)]
        if len(seeds) != num_configs:
            raise ValueError(f"seed lists {len(seeds)} seeds for num_configs={num_configs}")
        self.register_buffer("features", torch.eye(num_states, dtype=dtype, device=device))
        k1, k2 = 1 / math.sqrt(num_states), 1 / math.sqrt(hidden)
        w1s, b1s, w2s = [], [], []
        for s in seeds:
            g = _critic_generator(s)
            w1s.append((torch.rand(num_states, hidden, generator=g, dtype=dtype) * 2 - 1) * k1)
            b1s.append((torch.rand(hidden, generator=g, dtype=dtype) * 2 - 1) * k1)
            w2s.append((torch.rand(hidden, 1, generator=g, dtype=dtype) * 2 - 1) * k2)
        self.w1 = nn.Parameter(torch.stack(w1s).to(device))  # (C, S, H)
        self.b1 = nn.Parameter(torch.stack(b1s).to(device))  # (C, H)
        self.w2 = nn.Parameter(torch.stack(w2s).to(device))  # (C, H, 1)
        self.b2 = nn.Parameter(torch.zeros(num_configs, 1, dtype=dtype, device=device))  # (C, 1)

    def values(self) -> Tensor:
        """V_phi(s) for every state: (C, S)."""
        h = torch.tanh(self.features @ self.w1 + self.b1.unsqueeze(-2))  # (C, S, H)
        return (h @ self.w2).squeeze(-1) + self.b2  # (C, S)


CRITICS = {"tabular": TabularCritic, "mlp": MLPCritic}


# ----------------------------------------------------------------------------- configuration


class PPOConfig(BaseModel):
    """Hyperparameters of one PPO run on a tabular MDP; each has a name and a default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: LossSpec = Field(default_factory=lambda: PRESETS.get("ppo"))
    gamma_gae: float | None = Field(None, ge=0.0, le=1.0)  # None: the MDP's gamma
    lam: float = Field(0.95, ge=0.0, le=1.0)  # GAE lambda
    norm_adv: bool = True  # normalise A over each minibatch (CleanRL)
    num_episodes: int = Field(32, ge=1)  # episodes per batch, s_0 ~ rho
    epochs: int = Field(4, ge=1)  # K passes over each batch
    minibatches: int = Field(4, ge=1)  # optimiser steps per pass
    iterations: int = Field(50, ge=1)  # batches sampled
    optimizer: OptimizerName = "adam"
    lr: float = Field(0.05, gt=0.0, allow_inf_nan=False)  # policy and critic
    max_grad_norm: float | None = Field(0.5, gt=0.0)  # per configuration; None: no clipping
    critic: str = "tabular"  # value table (C, S) or "mlp" over one-hot states
    policy: PolicyName = "tabular"  # "tabular" softmax or "mlp"
    shared: bool = False  # one trunk, policy and value heads (needs policy = critic = "mlp")
    hidden: int = Field(32, ge=1)  # hidden units of the "mlp" policy / critic / shared trunk
    init_std: float = Field(0.0, ge=0.0)  # tabular logits ~ N(0, init_std^2)
    max_steps: int = Field(1000, ge=1)  # safety cap on episode length
    seed: int = 0
    audit: bool = True  # exact instrumentation after every optimiser step

    @field_validator("critic")
    @classmethod
    def _critic(cls, v: str) -> str:
        if v not in CRITICS:
            raise ValueError(f"unknown critic {v!r}; choose one of {sorted(CRITICS)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> PPOConfig:
        if self.num_episodes % self.minibatches:
            raise ValueError(
                f"minibatches={self.minibatches} must divide num_episodes={self.num_episodes}"
            )
        if self.loss.advantage != "gae":
            raise ValueError(
                f"PPO needs loss.advantage='gae' (a critic), got {self.loss.advantage!r}"
            )
        if self.shared and (self.policy, self.critic) != ("mlp", "mlp"):
            raise ValueError(
                "shared=True is one network with a policy and a value head: it needs "
                f"policy='mlp' and critic='mlp', got policy={self.policy!r}, critic={self.critic!r}"
            )
        if self.loss.beta != 0.0:
            raise ValueError(
                f"PPO here has no reference-KL term: loss.beta must be 0, got {self.loss.beta!r}"
            )
        return self


# ----------------------------------------------------------------------------- pieces


def clip_grad_norm_per_config(params: Sequence[Tensor], max_norm: float) -> Tensor:
    """Clip each configuration's gradient to norm ``max_norm``, in place; return the norms.

    For configuration c the norm runs over its slices p[c] of every parameter p (leading axis C):
        n_c = sqrt(sum_p ||grad p[c]||^2),   grad p[c] <- grad p[c] * min(1, max_norm / (n_c + 1e-6))
    which is ``torch.nn.utils.clip_grad_norm_`` applied to each configuration alone. One global
    norm over all C would couple the configurations of a batch. Shapes: each p (C, ...) -> (C,).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        raise ValueError("no parameter has a gradient to clip")
    C = grads[0].shape[0]
    if len(grads) == 1:  # one buffer (optim.flat_parameters): a single norm kernel
        norm = torch.linalg.vector_norm(grads[0].reshape(C, -1), dim=-1)  # (C,)
    else:
        norm = torch.stack([g.reshape(C, -1).pow(2).sum(-1) for g in grads]).sum(0).sqrt()
    coef = (max_norm / (norm + CLIP_NORM_EPS)).clamp(max=1.0)  # (C,)
    for g in grads:
        g.mul_(coef.reshape(-1, *([1] * (g.dim() - 1))))
    return norm


def values_at(v_table: Tensor, states: Tensor, mask: Tensor) -> Tensor:
    """V(s_t) read off a value table, 0 on padded steps.

    Shapes: v_table (C, S); states, mask (C, N, T) -> (C, N, T).
    """
    C = v_table.shape[0]
    v = v_table.gather(1, states.reshape(C, -1)).reshape(states.shape)  # (C, N, T)
    return torch.where(mask, v, torch.zeros((), dtype=v.dtype, device=v.device))


def explained_variance(returns: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """1 - Var[R - V] / Var[R] over the unmasked steps of each configuration (population
    variances, as CleanRL); NaN when Var[R] = 0. Shapes: (C, N, T) -> (C,)."""
    m = mask.to(returns.dtype)
    n = m.sum(dim=(-2, -1))

    def var(x: Tensor) -> Tensor:
        mean = (x * m).sum(dim=(-2, -1)) / n
        return (((x - mean.reshape(-1, 1, 1)) ** 2) * m).sum(dim=(-2, -1)) / n

    var_r = var(returns)
    ratio = var(returns - values) / torch.where(var_r > 0, var_r, torch.ones_like(var_r))
    return torch.where(var_r > 0, 1.0 - ratio, torch.full_like(var_r, float("nan")))


def normalize_advantages(adv: Tensor, mask: Tensor) -> Tensor:
    """(A - mean) / (std + 1e-8) over the unmasked steps of each configuration's minibatch
    (CleanRL's ``norm_adv``; std with Bessel's correction). Shapes: (C, N, T) -> (C, N, T)."""
    m = mask.to(adv.dtype)
    n = m.sum(dim=(-2, -1), keepdim=True)
    mean = (adv * m).sum(dim=(-2, -1), keepdim=True) / n
    var = (((adv - mean) ** 2) * m).sum(dim=(-2, -1), keepdim=True) / (n - 1).clamp_min(1.0)
    out = (adv - mean) / (var.sqrt() + ADV_NORM_EPS)
    return torch.where(mask, out, torch.zeros((), dtype=adv.dtype, device=adv.device))


def _value_term(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    loss_cfg: LossConfig,
) -> tuple[Tensor, Tensor]:
    """``grpo_lab.losses.value_loss`` for each configuration; it takes (B, T), so C calls.

    A configuration whose inputs hold NaN/inf gets a NaN loss (it is then stopped as diverged)
    instead of the ValueError ``value_loss`` raises, so one bad configuration cannot end the
    batch. Shapes: (C, N, T) -> (loss (C,), vf_clip_frac (C,)).
    """
    c = loss_cfg
    losses, fracs = [], []
    nan = torch.full((), float("nan"), dtype=values.dtype, device=values.device)
    for i in range(values.shape[0]):
        m = mask[i]
        finite = all(
            bool(torch.isfinite(x[i].detach()[m]).all()) for x in (values, old_values, returns)
        )
        if not finite:
            losses.append(nan)
            fracs.append(float("nan"))
            continue
        vl, vm = value_loss(
            values[i], old_values[i], returns[i], m, clip=c.vf_clip, agg=c.agg, max_len=c.max_len
        )
        losses.append(vl)
        fracs.append(vm["vf_clip_frac"])
    return torch.stack(losses), torch.tensor(fracs, dtype=values.dtype, device=values.device)


def ppo_loss(
    logp_table: Tensor,
    v_table: Tensor,
    states: Tensor,
    actions: Tensor,
    mask: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    old_values: Tensor,
    returns: Tensor,
    loss_cfg: LossConfig,
    eps_low: Tensor,
    eps_high: Tensor,
    norm_adv: bool = True,
    vf_coef: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The PPO loss of each configuration on its minibatch (arXiv 1707.06347 eq. 9 as a loss):

        L = agg(-min(r A, clip(r, 1 - eps_low, 1 + eps_high) A)) + c1 L_value - c2 agg(H)

    with A normalised per minibatch when ``norm_adv``, L_value from ``value_loss`` (clipped by
    ``loss_cfg.vf_clip``), H(s_t) = -sum_a pi(a|s_t) log pi(a|s_t) from ``token_entropy`` of the
    log-probability rows at the visited states, c1 = ``vf_coef`` (one per configuration, (C,);
    None: ``loss_cfg.vf_coef`` for all), c2 = ``loss_cfg.ent_coef``. Eq. 9 maximises
    L^CLIP - c1 L^VF + c2 S; this is its negative.

    Shapes: logp_table (C, S, A) log pi_theta; v_table (C, S) V_phi; states, actions, mask,
    old_logp, adv, old_values, returns (C, N, T); eps_low, eps_high, vf_coef (C,).
    Returns (loss (C,), metrics: pg_loss, value_loss, vf_clip_frac, entropy, loss, each (C,)).
    """
    c = loss_cfg
    C, A = logp_table.shape[0], logp_table.shape[-1]
    logp = gather_logp(logp_table, states, actions)  # (C, N, T)
    if norm_adv:
        adv = normalize_advantages(adv, mask)
    el, eh = eps_low.reshape(-1, 1, 1), eps_high.reshape(-1, 1, 1)
    per_step, ratio = clipped_surrogate(
        logp, old_logp, adv, mask, el, eh, c.dual_clip, c.ratio_level
    )
    pg = aggregate(per_step, mask, c.agg, c.max_len)  # (C,)
    pre = clip_fractions(ratio, adv, mask, el, eh, c.dual_clip)  # of this step's gradient
    values = values_at(v_table, states, mask)  # (C, N, T)
    vl, vf_clip_frac = _value_term(values, old_values, returns, mask, c)  # (C,)
    rows = logp_table.gather(1, states.reshape(C, -1, 1).expand(-1, -1, A))  # (C, N*T, A)
    ent = aggregate(token_entropy(rows.reshape(*states.shape, A)), mask, c.agg, c.max_len)  # (C,)
    c1 = c.vf_coef if vf_coef is None else vf_coef
    loss = pg + c1 * vl - c.ent_coef * ent
    metrics = {
        **pre,
        "pg_loss": pg.detach(),
        "value_loss": vl.detach(),
        "vf_clip_frac": vf_clip_frac,
        "entropy": ent.detach(),
        "loss": loss.detach(),
    }
    return loss, metrics


# ----------------------------------------------------------------------------- training


def train_ppo(
    mdp: TabularMDP,
    configs: PPOConfig | Sequence[PPOConfig],
    *,
    device: str = "cpu",
) -> RunRecord:
    """Run PPO for each configuration, all C of them as one batched program (module docstring).

    ``mdp`` is shared (unbatched) or batched with C = len(configs). Returns a ``RunRecord`` with
    per-step metrics (C, K) and per-iteration metrics (C, I), a status per configuration ("ok",
    or "diverged" with the step and the reason: a non-finite loss or parameter stops that
    configuration, not the batch), the final policy tables ``final_probs`` (C, S, A), their exact
    return ``j_final`` (C,) and the optimum ``j_star`` (C,).

    Per iteration: iteration, J, gap = J* - J, reward_mean / reward_std (discounted episode
    returns), length_mean, truncated_frac, and critic_error = mean over the states visited in the
    batch of |V_phi(s) - V^{pi_old}(s)| for the critic that produced the batch's advantages.
    Per step: pg_loss, value_loss, vf_clip_frac, entropy, loss (before the step), grad_norm
    (before clipping), the ratio metrics of the step's minibatch under the updated policy,
    explained_variance of the updated critic on the iteration's batch, and with ``audit`` the
    exact ratio audit, policy change and improvement against pi_old.
    """
    configs = [configs] if isinstance(configs, PPOConfig) else list(configs)
    if not configs:
        raise ValueError("configs is empty")
    check_batchable(configs, BATCHABLE)
    cfg = configs[0]
    C = len(configs)
    if mdp.is_batched and mdp.P.shape[0] != C:
        raise ValueError(f"mdp has C={mdp.P.shape[0]} configurations but {C} configs were given")
    mdp = mdp.to(device=device)
    S, A, dt = mdp.num_states, mdp.num_actions, mdp.dtype
    gamma_gae = mdp.gamma if cfg.gamma_gae is None else cfg.gamma_gae
    seeds = [c.seed for c in configs]
    lr = torch.tensor([c.lr for c in configs], dtype=dt, device=device)
    eps_low = torch.tensor([c.loss.eps_low for c in configs], dtype=dt, device=device)
    eps_high = torch.tensor([c.loss.eps_high for c in configs], dtype=dt, device=device)
    vf_coef = torch.tensor([c.loss.vf_coef for c in configs], dtype=dt, device=device)
    if cfg.shared:  # one network: the policy and the critic are its two heads
        policy = critic = SharedActorCritic(
            S, A, C, hidden=cfg.hidden, seed=seeds, dtype=dt, device=device
        )
        params = list(policy.parameters())
    else:
        kw = {"init_std": cfg.init_std} if cfg.policy == "tabular" else {"hidden": cfg.hidden}
        policy = POLICIES.get(cfg.policy)(S, A, C, seed=seeds, dtype=dt, device=device, **kw)
        ckw = {"hidden": cfg.hidden} if cfg.critic == "mlp" else {}
        critic = CRITICS[cfg.critic](S, C, seed=seeds, dtype=dt, device=device, **ckw)
        params = [*policy.parameters(), *critic.parameters()]
    opt = make_optimizer(cfg.optimizer, params, lr)
    j_star = optimal_return(mdp).expand(C)
    # the constant normaliser of seq-mean-token-sum-norm: the episode budget, unless given
    lc = cfg.loss.model_copy(update={"max_len": cfg.loss.max_len or mdp.horizon or cfg.max_steps})

    rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
    alive = torch.ones(C, dtype=torch.bool, device=device)
    N = cfg.num_episodes
    per_mb = N // cfg.minibatches
    step = 0
    for it in range(cfg.iterations):
        gens = iteration_generators(seeds, it, stream=seeding.SAMPLING)
        perm_gens = iteration_generators(seeds, it, stream=seeding.MINIBATCH)
        # 1. sample with pi_old
        old_table = policy.log_probs().detach()  # (C, S, A)
        probs_old = old_table.exp()
        ep, _ = sample_groups(mdp, probs_old, N, 1, gens, max_steps=cfg.max_steps)
        mask = ep.mask  # (C, N, T)
        old_logp = gather_logp(old_table, ep.states, ep.actions)  # (C, N, T)
        # 2. critic values at the visited states, GAE advantages and returns
        with torch.no_grad():
            v_table_old = critic.values()  # (C, S)
            old_values = values_at(v_table_old, ep.states, mask)  # (C, N, T)
            adv, returns = masked_gae(ep.rewards, old_values, mask, gamma_gae, cfg.lam)
            v_true = state_values(mdp, probs_old)  # (C, S) exact V^{pi_old}
            visited = torch.zeros(C, S, dtype=dt, device=device)
            visited.scatter_(1, ep.states.reshape(C, -1), mask.reshape(C, -1).to(dt))
            visited = visited > 0  # (C, S)
            err = torch.where(
                visited, (v_table_old - v_true).abs(), torch.zeros((), dtype=dt, device=device)
            )
            critic_error = err.sum(-1) / visited.sum(-1)
        old_stats = OldPolicy.of(mdp, probs_old)  # pi_old's exact quantities, once per batch
        j_old = old_stats.j
        rec.log(
            "iter",
            {
                "iteration": torch.full((C,), float(it)),
                "J": j_old,
                "gap": j_star - j_old,
                "reward_mean": ep.returns.mean(-1),
                "reward_std": ep.returns.std(-1),
                "length_mean": ep.lengths.to(dt).mean(-1),
                "truncated_frac": ep.truncated.to(dt).mean(-1),
                "critic_error": critic_error,
            },
            alive,
        )
        # 3. K epochs x minibatches of optimiser steps
        for _epoch in range(cfg.epochs):
            perm = group_permutations(perm_gens, N)  # (C, N) episode order per configuration
            for m in range(cfg.minibatches):
                idx = perm[:, m * per_mb : (m + 1) * per_mb]  # (C, n)
                idx3 = idx.unsqueeze(-1).expand(-1, -1, ep.num_steps)  # (C, n, T)

                def take(x: Tensor, i: Tensor = idx3) -> Tensor:
                    return x.gather(1, i)

                mb_states, mb_actions, mb_mask = take(ep.states), take(ep.actions), take(mask)
                mb_old_logp, mb_adv = take(old_logp), take(adv)
                loss, metrics = ppo_loss(
                    policy.log_probs(),
                    critic.values(),
                    mb_states,
                    mb_actions,
                    mb_mask,
                    mb_old_logp,
                    mb_adv,
                    take(old_values),
                    take(returns),
                    lc,
                    eps_low,
                    eps_high,
                    cfg.norm_adv,
                    vf_coef,
                )
                max_norm = math.inf if cfg.max_grad_norm is None else cfg.max_grad_norm

                def clip(metrics: dict = metrics, max_norm: float = max_norm) -> None:
                    metrics["grad_norm"] = clip_grad_norm_per_config(params, max_norm)

                # a non-finite loss or parameter stops that configuration, not the batch
                guarded_step(loss, params, opt, alive, rec, step, before_step=clip)
                # 4. instrumentation against pi_old: the minibatch's ratios under the updated
                # policy (with the advantages the loss used), then the exact audit
                with torch.no_grad():
                    new_table = policy.log_probs()  # (C, S, A)
                    logp_new = gather_logp(new_table, mb_states, mb_actions)  # (C, n, T)
                    a_used = normalize_advantages(mb_adv, mb_mask) if cfg.norm_adv else mb_adv
                    el, eh = eps_low.reshape(-1, 1, 1), eps_high.reshape(-1, 1, 1)
                    _, ratio = clipped_surrogate(
                        logp_new, mb_old_logp, a_used, mb_mask, el, eh, lc.dual_clip, lc.ratio_level
                    )
                    metrics.update(
                        ratio_metrics(
                            logp_new, mb_old_logp, ratio, a_used, mb_mask, el, eh, lc.dual_clip
                        )
                    )
                    v_new = values_at(critic.values(), ep.states, mask)
                    metrics["explained_variance"] = explained_variance(returns, v_new, mask)
                    if cfg.audit:
                        probs_new = new_table.exp()
                        metrics.update(
                            exact_ratio_audit(mdp, old_stats, probs_new, eps_low, eps_high)
                        )
                        metrics.update(policy_change(mdp, old_stats, probs_new))
                        metrics.update(improvement(mdp, old_stats, probs_new, eps_low, eps_high))
                metrics["iteration"] = torch.full((C,), float(it))
                rec.log("step", metrics, alive)
                step += 1
    final = policy.log_probs().detach().exp()
    rec.final_probs = final.cpu()
    rec.j_final = exact_return(mdp, final).cpu()
    rec.j_star = j_star.cpu()
    return rec
