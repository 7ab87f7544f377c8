"""TRPO on tabular MDPs, C configurations at once (Schulman et al., arXiv 1502.05477 §5-6, App. C).

The trust-region problem (§4, with the heuristic average-KL constraint; §5 for its sample form):

    maximise_theta  L(theta) = mean_{(s_t, a_t) in batch} [pi_theta(a_t|s_t) / pi_old(a_t|s_t)] A_t
    subject to      KLbar(theta) = sum_s w(s) KL(pi_old(.|s) || pi_theta(.|s)) <= delta

with w the batch's empirical state distribution (``kl_constraint="sample"``, the paper's sample
average over visited states, App. C.1) or the exact discounted visitation d^{pi_old}
(``kl_constraint="exact"``; only a tabular MDP can offer this). One iteration, read top to bottom:

  1. pi_old <- pi_theta (frozen). Draw ``num_groups`` start states s_0 ~ rho and run
     ``group_size`` episodes from each, every configuration from its own generator.
  2. Advantages: GAE(gamma, lam) from a tabular critic V (arXiv 1506.02438 eq. 16), or outcome
     group advantages (GRPO arXiv 2402.03300 §4.1.2) broadcast over the episode's steps.
  3. g = grad L(theta_old) by autograd. Natural direction x ~= F^-1 g by conjugate gradient
     (App. C), F v by double backprop: F v = grad_theta (grad_theta KLbar . v) at theta_old
     (App. C.1: F is the Hessian of the average KL, the Fisher information of the batch), with
     damping: CG solves (F + lambda I) x = g.
  4. Full step s = beta x with beta = sqrt(2 delta / x^T F x) (App. C: the quadratic model
     KLbar(theta_old + s) ~= 1/2 s^T F s meets the constraint with equality).
  5. Backtracking line search (§6, App. C): try theta_old + b^k s for k = 0 .. backtrack_iters-1
     (b = ``backtrack_coef``); accept the first k where KLbar <= delta AND L improved (> 0). If no
     k passes, the step is rejected and theta stays theta_old.
  6. Instrumentation against pi_old (``grpo_lab.instrument``), then the critic is fitted on the
     batch's lambda-returns (after the policy step, as in arXiv 1506.02438 §6, so the advantages
     of this batch did not see its own targets).

Design choices (documented here once):
  * ``cg_damping`` defaults to 0.01, not Spinning Up's 0.1. KLbar is an average with weights
    summing to 1, so the Fisher of a tabular softmax has eigenvalues about w(s) pi(a|s) <= 1/S;
    on a Garnet with S ~ 10 states and A ~ 3 actions they are ~0.03, and lambda = 0.1 would
    dominate the curvature and turn the natural step into a scaled gradient step. 0.01 (OpenAI
    baselines' default) keeps the natural direction for every state with w(s) pi(a|s) >~ 0.01.
  * beta uses the undamped x^T F x (damping regularises the solve only), so delta is the KL that
    the quadratic model predicts for the full step, whatever the damping. A damped quadratic
    would shrink every step by an amount that depends on lambda, not on delta.
  * The Fisher is the Hessian of the same KLbar the line search tests (sample or exact weights):
    the quadratic model and the constraint describe one function.
  * The scale of A does not change the update (beta x is invariant to A -> cA, c > 0), so the
    advantages are not normalised; only the baseline matters, through the variance of g.
  * An episode cut by ``max_steps`` is treated as ended by GAE (no bootstrap; the state after the
    cut is not recorded): a small bias on a safety cap that normal runs never hit.

Batched configurations: every tensor carries a leading axis C (the PureJaxRL pattern, arXiv
2210.05639); ``delta``, ``seed`` and ``vf_lr`` may differ between configurations, everything else
must agree. CG uses per-configuration alpha / beta scalars and the line search tests all
configurations at each fraction together; configuration c's numbers never depend on another
configuration, so a batch of C runs equals C one-config runs with the same seeds.

Shapes: C configurations, N episodes, T steps, S states, A actions, D flat parameters per config.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from grpo_lab import trust_region as tr
from grpo_lab.advantages import (
    BaselineName,
    ScaleName,
    group_advantages,
    masked_gae,
)
from grpo_lab.algorithms.common import (
    RunRecord,
    check_batchable,
    gather_logp,
    iteration_generators,
)
from grpo_lab.envs.tabular import (
    TabularMDP,
    exact_return,
    optimal_return,
    sample_groups,
    state_visitation,
)
from grpo_lab.instrument import exact_ratio_audit, improvement, policy_change
from grpo_lab.optim import make_optimizer
from grpo_lab.policies.tabular import POLICIES, PolicyName

Tensor = torch.Tensor

conjugate_gradient, flatten, unflatten = tr.conjugate_gradient, tr.flatten, tr.unflatten

__all__ = [
    "BATCHABLE",
    "KL_CONSTRAINTS",
    "POLICIES",
    "TRPOConfig",
    "conjugate_gradient",
    "fisher_vector_product",
    "flatten",
    "mean_kl",
    "sample_state_weights",
    "surrogate",
    "train_trpo",
    "unflatten",
]

ADVANTAGES = ("gae", "group")
KL_CONSTRAINTS = ("sample", "exact")
# fields that may differ across the C configurations of one batched run
BATCHABLE = ("delta", "seed", "vf_lr")


class TRPOConfig(BaseModel):
    """Hyperparameters of one TRPO run on a tabular MDP; each has a name and a default.

    A bad value raises ``pydantic.ValidationError`` (a ``ValueError``) naming the field.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    # trust region and its solver
    delta: float = Field(0.01, gt=0.0, allow_inf_nan=False)  # max average KL per update
    kl_constraint: str = "sample"  # "sample" (batch states) or "exact" (d^{pi_old}) weights
    cg_iters: int = Field(10, ge=1)  # conjugate-gradient iterations
    cg_damping: float = Field(0.01, ge=0.0, allow_inf_nan=False)  # lambda in (F + lambda I)
    cg_tol: float = Field(1e-10, ge=0.0)  # stop CG when |r| <= cg_tol |g| (per config)
    backtrack_coef: float = Field(0.5, gt=0.0, lt=1.0)  # b: fractions 1, b, b^2, ...
    backtrack_iters: int = Field(10, ge=1)  # fractions tried before the step is rejected
    # advantages: "gae" (tabular critic) or "group" (outcome advantages, needs group_size >= 2)
    advantage: str = "gae"
    adv_baseline: BaselineName = "mean"  # group: "mean" (GRPO) or "leave-one-out" (RLOO)
    adv_scale: ScaleName = "std"  # group: "std" (GRPO) or "none" (Dr. GRPO)
    gamma_gae: float | None = Field(None, ge=0.0, le=1.0)  # GAE discount; None: the MDP's gamma
    lam: float = Field(0.95, ge=0.0, le=1.0)  # GAE lambda
    vf_lr: float = Field(0.1, gt=0.0, allow_inf_nan=False)  # critic Adam learning rate
    vf_iters: int = Field(25, ge=0)  # critic Adam steps per batch (full batch)
    # batch
    num_groups: int = Field(8, ge=1)  # start states per batch
    group_size: int = Field(8, ge=1)  # episodes per start state
    iterations: int = Field(50, ge=1)  # batches sampled = TRPO updates
    # policy and bookkeeping
    policy: PolicyName = "tabular"  # "tabular" softmax or "mlp"
    init_std: float = Field(0.0, ge=0.0)  # tabular logits ~ N(0, init_std^2)
    max_steps: int = Field(1000, ge=1)  # safety cap on episode length
    seed: int = 0
    audit: bool = True  # exact instrumentation after every update
    audit_eps: float = Field(0.2, gt=0.0, lt=1.0)  # eps of the ratio audit and clipped_gain

    @field_validator("kl_constraint")
    @classmethod
    def _kl_constraint(cls, v: str) -> str:
        if v not in KL_CONSTRAINTS:
            raise ValueError(f"unknown kl_constraint {v!r}; choose one of {list(KL_CONSTRAINTS)}")
        return v

    @field_validator("advantage")
    @classmethod
    def _advantage(cls, v: str) -> str:
        if v not in ADVANTAGES:
            raise ValueError(f"unknown advantage {v!r}; choose one of {list(ADVANTAGES)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> TRPOConfig:
        if self.advantage == "group" and self.group_size < 2:
            raise ValueError(
                f"group_size={self.group_size} with advantage='group': a group of one episode has "
                "no relative advantage; use group_size >= 2 or advantage='gae'"
            )
        return self


# --------------------------------------------------------------------------------------------
# Objective, constraint and their derivatives


def surrogate(
    logp_table: Tensor,
    states: Tensor,
    actions: Tensor,
    mask: Tensor,
    old_logp: Tensor,
    adv: Tensor,
) -> Tensor:
    """The sample surrogate of each configuration (TRPO arXiv 1502.05477 §5, single path):

        L(theta) = sum_{n,t} m_{n,t} [pi_theta(a_t|s_t) / pi_old(a_t|s_t)] A_{n,t} / sum m

    an average over the batch's real (unpadded) steps; L(theta_old) = mean A. Its gradient at
    theta_old is the policy gradient estimate mean[grad log pi(a_t|s_t) A_t].

    Shapes: logp_table (C, S, A); states, actions, mask, old_logp, adv (C, N, T) -> (C,).
    """
    logp = gather_logp(logp_table, states, actions)  # (C, N, T)
    m = mask.to(logp.dtype)
    ratio = torch.exp(logp - old_logp)  # (C, N, T)
    total = m.sum(dim=(-2, -1)).clamp_min(1.0)  # (C,)
    return (m * ratio * adv).sum(dim=(-2, -1)) / total


def sample_state_weights(states: Tensor, mask: Tensor, num_states: int) -> Tensor:
    """The batch's empirical state distribution w(s) = #{real steps at s} / #{real steps}, so that
    sum_s w(s) f(s) is the mean of f(s_t) over the batch's real steps.

    Shapes: states, mask (C, N, T) -> (C, S). A configuration with no real step gets w = 0.
    """
    C = states.shape[0]
    m = mask.reshape(C, -1).to(torch.float64)
    counts = torch.zeros(C, num_states, dtype=m.dtype, device=states.device)
    counts.scatter_add_(1, states.reshape(C, -1), m)  # (C, S)
    return counts / counts.sum(-1, keepdim=True).clamp_min(1.0)


def mean_kl(logp_table: Tensor, old_logp_table: Tensor, weights: Tensor) -> Tensor:
    """The average KL of the trust region (TRPO arXiv 1502.05477 §4, "average KL divergence"):

        KLbar = sum_s w(s) KL(pi_old(.|s) || pi_theta(.|s)),
        KL_s  = sum_a pi_old(a|s) (log pi_old(a|s) - log pi_theta(a|s))

    exact per state (the whole table is known); w = ``sample_state_weights`` (mean over the
    batch's visited steps) or d^{pi_old} (``state_visitation``). Differentiable in logp_table.

    Shapes: logp_table, old_logp_table (C, S, A); weights (C, S) -> (C,).
    """
    p_old = old_logp_table.exp()
    diff = torch.where(p_old > 0, old_logp_table - logp_table, torch.zeros_like(logp_table))
    kl_s = (p_old * diff).sum(-1)  # (C, S)
    return (weights.to(kl_s.dtype) * kl_s).sum(-1)


def fisher_vector_product(
    policy: torch.nn.Module, old_logp_table: Tensor, weights: Tensor, damping: float
) -> Callable[[Tensor], Tensor]:
    """v -> (F + damping I) v, F = Hessian of KLbar(theta) at theta = theta_old, by double backprop
    (TRPO arXiv 1502.05477 App. C.1; ``trust_region.fisher_vector_product`` on ``mean_kl``).

    At theta_old this Hessian is the Fisher information matrix of the weighted states,
    F = sum_s w(s) J_s^T (diag(pi_s) - pi_s pi_s^T) J_s with J_s = d logits_s / d theta.
    The policy must sit at theta_old (``old_logp_table`` = its log-probabilities, detached).

    Shapes: old_logp_table (C, S, A); weights (C, S); v (C, D) -> (C, D), rows independent.
    """
    return tr.fisher_vector_product(
        lambda: mean_kl(policy.log_probs(), old_logp_table, weights),
        list(policy.parameters()),
        old_logp_table.shape[0],
        damping,
    )


# --------------------------------------------------------------------------------------------
# Advantages


def _fit_critic(
    V: Tensor,
    opt: torch.optim.Optimizer,
    states: Tensor,
    mask: Tensor,
    target: Tensor,
    iters: int,
) -> Tensor:
    """Fit the tabular critic by ``iters`` Adam steps on the mean squared error over real steps,

        l(V) = sum_{n,t} m_{n,t} (V(s_{n,t}) - y_{n,t})^2 / sum m,
        dl/dV(s) = 2 (c(s) V(s) - sum_{s_{n,t} = s} y_{n,t}) / sum m,   c(s) = #{real steps at s},

    the gradient written in closed form (no autograd graph) and handed to the optimiser.
    Shapes: V (C, S) parameter; states, mask, target (C, N, T) -> final loss (C,).
    """
    C, S = V.shape
    m = mask.reshape(C, -1).to(V.dtype)
    idx = states.reshape(C, -1)
    y = target.reshape(C, -1).to(V.dtype) * m
    n = m.sum(-1).clamp_min(1.0)  # (C,)
    cnt = torch.zeros(C, S, dtype=V.dtype, device=V.device).scatter_add_(1, idx, m)  # (C, S)
    ysum = torch.zeros(C, S, dtype=V.dtype, device=V.device).scatter_add_(1, idx, y)  # (C, S)
    n = n.unsqueeze(-1)
    for _ in range(iters):
        V.grad = 2.0 * (cnt * V.detach() - ysum) / n  # (C, S)
        opt.step()
    with torch.no_grad():
        return (m * (V.gather(1, idx) - y) ** 2).sum(-1) / n.squeeze(-1)


# --------------------------------------------------------------------------------------------
# The trainer


def train_trpo(
    mdp: TabularMDP,
    configs: TRPOConfig | Sequence[TRPOConfig],
    *,
    device: str = "cpu",
) -> RunRecord:
    """Run TRPO for each configuration, all C of them as one batched program (module docstring).

    ``mdp`` is shared (unbatched) or batched with C = len(configs). Returns a ``RunRecord``:
    ``iter`` metrics per sampled batch (J, gap, reward_mean, ...) and ``step`` metrics per update
    (one update per iteration): the exact audit of ``grpo_lab.instrument`` against pi_old when
    ``audit`` (exact_ratio_*, kl_mean, kl_max, tv_max, true_gain, surrogate_gain, clipped_gain at
    ``audit_eps``, trpo_bound, bound_slack) and TRPO's own:

        kl_sample              KLbar of the applied step, the constraint value the line search
                               tested (sample or exact weights per ``kl_constraint``); 0 if rejected
        kl_exact_mean          sum_s d^{pi_old}(s) KL_s of the applied step (always exact)
        step_accepted          1 if a fraction passed the line search, else 0 (policy unchanged)
        backtracks             k of the accepted fraction b^k; backtrack_iters when rejected
        surrogate_gain_sample  L(theta_new) - L(theta_old) on the batch
        expected_improve       g.x beta b^k, the first-order prediction of that gain
        cg_residual            |(F + lambda I) x - g| / |g| after CG
        grad_norm, beta        |g| and the full-step scale sqrt(2 delta / x^T F x)
        vf_loss                critic regression loss after fitting (advantage="gae")

    A non-finite gradient, CG solution, step or parameter (or critic value) stops that
    configuration with status "diverged" (its parameters keep their last finite value), not the
    batch. ``record.final_probs`` (C, S, A), ``j_final`` (C,) and ``j_star`` (C,) are set.
    """
    configs = [configs] if isinstance(configs, TRPOConfig) else list(configs)
    if not configs:
        raise ValueError("configs is empty")
    check_batchable(configs, BATCHABLE)
    cfg = configs[0]
    C = len(configs)
    if mdp.is_batched and mdp.P.shape[0] != C:
        raise ValueError(f"mdp has C={mdp.P.shape[0]} configurations but {C} configs were given")
    mdp = mdp.to(device=device)
    S, A, dt = mdp.num_states, mdp.num_actions, mdp.dtype
    seeds = [c.seed for c in configs]
    delta = torch.tensor([c.delta for c in configs], dtype=dt, device=device)  # (C,)
    vf_lr = torch.tensor([c.vf_lr for c in configs], dtype=dt, device=device)  # (C,)
    kw = {"init_std": cfg.init_std} if cfg.policy == "tabular" else {}
    policy = POLICIES.get(cfg.policy)(S, A, C, seed=seeds, dtype=dt, device=device, **kw)
    params = list(policy.parameters())
    use_gae = cfg.advantage == "gae"
    gamma_gae = mdp.gamma if cfg.gamma_gae is None else cfg.gamma_gae
    V = torch.nn.Parameter(torch.zeros(C, S, dtype=dt, device=device))  # (C, S) critic table
    vf_opt = make_optimizer("adam", [V], vf_lr) if use_gae else None
    j_star = optimal_return(mdp).expand(C)
    eps = cfg.audit_eps

    rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
    alive = torch.ones(C, dtype=torch.bool, device=device)

    def diverge(ok: Tensor, step: int, reason: str) -> None:
        nonlocal alive
        newly = alive & ~ok
        if bool(newly.any()):
            rec.mark_diverged(newly, step, reason)
            alive = alive & ok

    def per_config(x: Tensor, p: Tensor) -> Tensor:
        return x.reshape(-1, *([1] * (p.dim() - 1)))  # (C,) -> (C, 1, ..., 1)

    G, n_groups = cfg.group_size, cfg.num_groups
    lam = cfg.cg_damping  # lambda of (F + lambda I)
    for it in range(cfg.iterations):
        step = it  # one TRPO update per iteration
        gens = iteration_generators(seeds, it, device=mdp.device.type)
        # 1. sample with pi_old
        old_params = [p.detach().clone() for p in params]
        old_table = policy.log_probs().detach()  # (C, S, A)
        probs_old = old_table.exp()
        ep, _ = sample_groups(mdp, probs_old, n_groups, G, gens, max_steps=cfg.max_steps)
        returns = ep.returns  # (C, N)
        mask = ep.mask  # (C, N, T)
        # 2. advantages
        if use_gae:
            finite_v = torch.isfinite(V.detach()).all(-1)  # (C,)
            diverge(finite_v, step, "non-finite critic values")
            v_in = torch.where(finite_v.unsqueeze(-1), V.detach(), 0.0)
            values = v_in.gather(1, ep.states.reshape(C, -1)).reshape(ep.states.shape)  # (C, N, T)
            adv, vf_target = masked_gae(ep.rewards, values, mask, gamma_gae, cfg.lam)
        else:
            adv = group_advantages(
                returns.reshape(-1), G, baseline=cfg.adv_baseline, scale=cfg.adv_scale
            ).reshape(C, -1)  # (C, N)
            adv = adv.unsqueeze(-1).expand_as(ep.rewards) * mask  # (C, N, T)
        old_logp = gather_logp(old_table, ep.states, ep.actions)  # (C, N, T)
        j_old = exact_return(mdp, probs_old)
        it_metrics = {
            "iteration": torch.full((C,), float(it)),
            "J": j_old,
            "gap": j_star - j_old,
            "reward_mean": returns.mean(-1),
            "reward_std": returns.std(-1) if returns.shape[-1] > 1 else torch.zeros(C),
            "length_mean": ep.lengths.double().mean(-1),
            "truncated_frac": ep.truncated.double().mean(-1),
        }
        if G >= 2:
            grp_r = returns.reshape(C, n_groups, G)
            it_metrics["zero_std_frac"] = (grp_r == grp_r[..., :1]).all(-1).double().mean(-1)
        rec.log("iter", it_metrics, alive)

        # KL weights: batch states (sample) or d^{pi_old} (exact)
        if cfg.kl_constraint == "sample":
            w = sample_state_weights(ep.states, mask, S).to(dt)  # (C, S)
        else:
            w = state_visitation(mdp, probs_old)  # (C, S)
        batch = (ep.states, ep.actions, mask, old_logp, adv)

        # 3-4. g = grad L(theta_old); x = (F + lambda I)^-1 g by CG on Fisher-vector products;
        # full step s = beta x with 1/2 s^T F s = delta (trust_region.natural_step)
        def kl_fn(w: Tensor = w, old_table: Tensor = old_table) -> Tensor:
            return mean_kl(policy.log_probs(), old_table, w)

        def surrogate_fn(batch: tuple[Tensor, ...] = batch) -> Tensor:
            return surrogate(policy.log_probs(), *batch)

        ns = tr.natural_step(surrogate_fn, kl_fn, params, C, delta, lam, cfg.cg_iters, cfg.cg_tol)
        g, x, quad, beta, g_norm, cg_res = (
            ns.g,
            ns.x,
            ns.quad,
            ns.beta,
            ns.grad_norm,
            ns.cg_residual,
        )
        gx = (g * x).sum(-1)  # g.x: first-order surrogate gain per unit of beta
        ok = torch.isfinite(g).all(-1) & torch.isfinite(x).all(-1)
        ok &= torch.isfinite(quad) & torch.isfinite(beta)
        diverge(ok, step, "non-finite gradient, CG solution or step size")
        full = torch.where(alive.unsqueeze(-1), beta.unsqueeze(-1) * x, 0.0).detach()  # (C, D)

        # 5. backtracking line search over fractions b^k, all configurations per fraction:
        #    accept the first k with KLbar(theta_old + b^k s) <= delta and L gain > 0
        with torch.no_grad():
            L_old = surrogate(old_table, *batch)  # (C,) = mean A

            def evaluate(
                w: Tensor = w,
                batch: tuple[Tensor, ...] = batch,
                old_table: Tensor = old_table,
                L_old: Tensor = L_old,
            ) -> tuple[Tensor, Tensor]:
                table = policy.log_probs()
                return mean_kl(table, old_table, w), surrogate(table, *batch) - L_old

            ls = tr.line_search(
                params, tr.flatten(old_params, C), full, evaluate, delta,
                cfg.backtrack_coef, cfg.backtrack_iters, alive,
            )  # fmt: skip
            accepted, frac_acc, kl_acc, gain_acc = ls.accepted, ls.frac, ls.kl, ls.gain
            backtracks = ls.backtracks
            finite_p = torch.ones(C, dtype=torch.bool, device=device)
            for p in params:
                finite_p &= torch.isfinite(p).reshape(C, -1).all(-1)
            diverge(finite_p, step, "non-finite parameters")
            for p, o in zip(params, old_params, strict=True):
                p.copy_(torch.where(per_config(alive, p), p, o))

        # 6. instrumentation of the applied step against pi_old
        new_table = policy.log_probs().detach()  # (C, S, A)
        probs_new = new_table.exp()
        d_old = state_visitation(mdp, probs_old)  # (C, S)
        metrics = {
            "iteration": torch.full((C,), float(it)),
            "kl_sample": kl_acc,
            "kl_exact_mean": mean_kl(new_table, old_table, d_old),
            "step_accepted": accepted.to(dt),
            "backtracks": backtracks,
            "surrogate_gain_sample": gain_acc,
            "expected_improve": gx * beta * frac_acc,
            "cg_residual": cg_res,
            "grad_norm": g_norm,
            "beta": beta,
        }
        if cfg.audit:
            metrics.update(exact_ratio_audit(mdp, probs_old, probs_new, eps, eps))
            metrics.update(policy_change(mdp, probs_old, probs_new))
            metrics.update(improvement(mdp, probs_old, probs_new, eps, eps))
        # critic: regression of V(s_t) on the lambda-returns of this batch
        if use_gae:
            metrics["vf_loss"] = _fit_critic(V, vf_opt, ep.states, mask, vf_target, cfg.vf_iters)
        rec.log("step", metrics, alive)

    final = policy.log_probs().detach().exp()
    rec.final_probs = final.cpu()
    rec.j_final = exact_return(mdp, final).cpu()
    rec.j_star = j_star.cpu()
    return rec
