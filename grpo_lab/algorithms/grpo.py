"""GRPO on tabular MDPs, C configurations at once (DeepSeekMath, arXiv 2402.03300 §4.1-4.2).

One iteration, read top to bottom:
  1. pi_old <- pi_theta (frozen). Draw ``num_groups`` start states s_0 ~ rho and run
     ``group_size`` = G episodes from each (the tabular analogue of G completions of a prompt).
  2. Outcome reward R_i = discounted return of episode i; group advantages A_i (any baseline /
     scale of ``grpo_lab.advantages``), broadcast over the episode's steps.
  3. For ``epochs`` = K passes, for each of ``minibatches`` slices of the groups: minimise the
     loss of ``cfg.loss`` (clipped surrogate, aggregation, optional + beta KL(pi_theta || pi_ref)
     to the initial policy), one optimiser step each.
  4. After every optimiser step, the instrumentation of ``grpo_lab.instrument`` against pi_old.

Stationarity (is the end point a stationary point of J?): the exact gradient of the expected
return with respect to the policy's own parameters phi (softmax logits, or every MLP weight),
    grad_phi J(pi_phi) = sum_{s,a} x^pi(s) pi(a|s) A^pi(s, a) grad_phi log pi_phi(a|s)
(the policy gradient theorem, Sutton et al. 1999, Thm. 1; ``exact_policy_grad_norm`` takes it by
autograd through the exact return), is recorded as its Euclidean norm per configuration:
    iterations table  grad_norm         ||grad_phi J|| at pi_old of each iteration (before its steps)
    run summary       grad_norm_init    ||grad_phi J|| at the initial policy (= grad_norm of it 0)
                      grad_norm_final   ||grad_phi J|| at the final policy (that of ``j_final``)
GRPO's expected update (arXiv 2402.03300 eq. 3) is not grad J: std scaling re-weights start states
and groups, 1/|o_i| re-weights episodes, so it can come to rest where grad J is not zero. A small
grad_norm_final / grad_norm_init is the evidence of a stationary point of J; read it beside
J / J*: a softmax saturated on a worse action also has a vanishing gradient (pi(a|s) A(s, a) -> 0).

Learning-rate schedules (``lr_schedule``; iteration t = 0 .. T-1, T = ``iterations``, lr_0 =
``lr``; every optimiser step of iteration t uses lr_t):
    constant     lr_t = lr                                      (the default; the optimiser's lr
                                                                 is never touched)
    linear       lr_t = lr (1 - t / T)                          (linear decay, reaching lr / T at
                                                                 the last iteration: the PPO
                                                                 paper's Atari schedule, arXiv
                                                                 1707.06347 Table 5, and the
                                                                 ``linear_schedule`` of classic.py)
    cosine       lr_t = lr (1 + cos(pi t / T)) / 2              (cosine decay without restarts,
                                                                 SGDR, Loshchilov & Hutter, arXiv
                                                                 1608.03983 eq. 5 with
                                                                 eta_min = 0)
    kl-adaptive  lr_0 = lr and, after iteration t, with KL_t the KL it produced,
                     lr_{t+1} = max(lr_t / 1.5, lr_min)   if KL_t > 2 kl_target
                     lr_{t+1} = min(1.5 lr_t, lr_max)     if KL_t < kl_target / 2
                     lr_{t+1} = lr_t                      otherwise
                 the "adaptive" learning rate of rl_games (``AdaptiveScheduler`` in
                 rl_games/common/schedulers.py: kl_threshold, factor 1.5, bounds [1e-6, 1e-2])
                 and of rsl_rl's PPO (``schedule="adaptive"``, ``desired_kl``, bounds [1e-5, 1e-2];
                 legged_gym, Rudin et al. 2021, arXiv 2109.11978). It is the learning-rate
                 counterpart of PPO's adaptive KL penalty (arXiv 1707.06347 §4: beta / 2 when
                 d < d_targ / 1.5, beta x 2 when d > 1.5 d_targ). Here KL_t is exact: the mean
                     KL_t = sum_s d^{pi_old}(s) KL(pi_old(.|s) || pi_new(.|s))
                 (``instrument.policy_change``'s kl_mean) between the policy that sampled
                 iteration t (pi_old) and the policy after all of its optimiser steps (pi_new);
                 rl_games and rsl_rl estimate it on the batch. The rule is applied once per
                 iteration (rsl_rl applies it per minibatch).
Logged per iteration (iterations table): ``lr`` the lr_t in effect, and ``kl_iter`` = KL_t (every
schedule; for kl-adaptive the KL that set lr_{t+1}). ``scheduled_lr`` and ``kl_adaptive_lr`` are
the two rules on their own.

Batched configurations: every tensor carries a leading axis C (the PureJaxRL pattern, arXiv
2210.05639), and the numeric hyperparameters ``lr``, ``seed``, ``loss.eps_low`` and
``loss.eps_high``, and the schedule (``lr_schedule``, ``kl_target``, ``lr_min``, ``lr_max``: the
optimiser holds one lr per configuration) may differ between the C configurations; everything
else must agree (it fixes shapes or code paths). Each configuration draws its randomness from its
own generator, so a batch of C runs gives the same numbers as C one-config runs with the same
seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpo_lab import seeding
from grpo_lab.advantages import group_advantages
from grpo_lab.algorithms.common import (
    RunRecord,
    check_batchable,
    gather_logp,
    group_permutations,
    guarded_step,
    iteration_generators,
)
from grpo_lab.envs.tabular import (
    PackedEpisodes,
    TabularMDP,
    exact_return,
    optimal_return,
    sample_groups,
)
from grpo_lab.instrument import OldPolicy, exact_ratio_audit, improvement, policy_change
from grpo_lab.losses import (
    PRESETS,
    LossConfig,
    LossSpec,
    aggregation_weights,
    clip_fractions,
    clipped_surrogate,
    kl_penalty,
    ratio_metrics,
)
from grpo_lab.optim import OptimizerName, make_optimizer
from grpo_lab.policies.tabular import POLICIES, PolicyName

Tensor = torch.Tensor

# fields that may differ across the C configurations of one batched run
BATCHABLE = (
    "lr",
    "seed",
    "loss.eps_low",
    "loss.eps_high",
    "lr_schedule",
    "kl_target",
    "lr_min",
    "lr_max",
)

LRSchedule = Literal["constant", "linear", "cosine", "kl-adaptive"]
KL_ADAPTIVE_FACTOR = 1.5  # lr divided / multiplied by this (rl_games, rsl_rl)
KL_ADAPTIVE_BAND = 2.0  # act when KL > 2 kl_target or KL < kl_target / 2 (rl_games, rsl_rl)


def scheduled_lr(schedule: LRSchedule, lr: float, t: int, num_iterations: int) -> float:
    """lr_t of a fixed schedule at iteration t of T = ``num_iterations`` (module docstring):
    constant lr; linear lr (1 - t / T); cosine lr (1 + cos(pi t / T)) / 2. "kl-adaptive" depends
    on the run's KL and has no closed form: use ``kl_adaptive_lr``."""
    if schedule == "constant":
        return lr
    if schedule == "linear":
        return lr * (1.0 - t / num_iterations)
    if schedule == "cosine":
        return lr * (1.0 + math.cos(math.pi * t / num_iterations)) / 2.0
    raise ValueError(f"scheduled_lr has no closed form for lr_schedule={schedule!r}")


def kl_adaptive_lr(lr: float, kl: float, kl_target: float, lr_min: float, lr_max: float) -> float:
    """The next lr of the KL-adaptive rule (rl_games ``AdaptiveScheduler``; rsl_rl PPO
    ``schedule="adaptive"``, arXiv 2109.11978): lr / 1.5 (at least ``lr_min``) when
    kl > 2 kl_target, 1.5 lr (at most ``lr_max``) when kl < kl_target / 2, else lr. A NaN kl
    (a diverged configuration) leaves lr as it is."""
    if kl > KL_ADAPTIVE_BAND * kl_target:
        return max(lr / KL_ADAPTIVE_FACTOR, lr_min)
    if kl < kl_target / KL_ADAPTIVE_BAND:
        return min(lr * KL_ADAPTIVE_FACTOR, lr_max)
    return lr


def exact_policy_grad_norm(mdp: TabularMDP, policy: torch.nn.Module, num_configs: int) -> Tensor:
    """||grad_phi J(pi_phi)||_2 over all parameters phi of ``policy``, one per configuration.

    grad_phi J = sum_{s,a} x^pi(s) pi(a|s) A^pi(s, a) grad_phi log pi_phi(a|s) (policy gradient
    theorem, Sutton et al. 1999, Thm. 1), here by autograd through ``exact_return`` of the table
    ``policy.log_probs().exp()``: exact for any differentiable policy (tabular softmax: the
    ``exact_grad`` of its logits; MLP: every weight and bias). Configurations are independent, so
    a parameter with a leading axis of size C gets grad of J.sum() split along that axis; a
    parameter shared by the C configurations (a user's policy) is differentiated per configuration.
    Shapes: ``policy.log_probs()`` (S, A) with C = 1, or (C, S, A) -> (C,).
    """
    C = num_configs
    params = [p for p in policy.parameters() if p.requires_grad]
    with torch.enable_grad():
        lp = policy.log_probs()
        table = lp if lp.dim() == 3 else lp.unsqueeze(0)  # (C, S, A)
        j = exact_return(mdp, table.exp())  # (C,)
        sq = torch.zeros(C, dtype=j.dtype, device=j.device)
        if not params:
            return sq
        per_axis = C == 1 or all(p.dim() >= 1 and p.shape[0] == C for p in params)
        if per_axis:  # one backward pass: the C gradients lie along the leading axis
            grads = torch.autograd.grad(j.sum(), params, allow_unused=True)
            for g in grads:
                if g is not None:
                    sq = sq + g.reshape(C, -1).pow(2).sum(-1)
            return sq.sqrt().detach()
        rows = []
        for c in range(C):  # shared parameters: one backward pass per configuration
            grads = torch.autograd.grad(j[c], params, retain_graph=c < C - 1, allow_unused=True)
            rows.append(sum((g.pow(2).sum() for g in grads if g is not None), sq.new_zeros(())))
        return torch.stack(rows).sqrt().detach()


class GRPOConfig(BaseModel):
    """Hyperparameters of one GRPO run on a tabular MDP; each has a name and a default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    loss: LossSpec = Field(default_factory=lambda: PRESETS.get("grpo"))
    group_size: int = Field(8, ge=2)  # G episodes per start state
    num_groups: int = Field(8, ge=1)  # start states per batch
    epochs: int = Field(1, ge=1)  # K passes over each batch
    minibatches: int = Field(1, ge=1)  # optimiser steps per pass
    iterations: int = Field(50, ge=1)  # batches sampled
    optimizer: OptimizerName = "adam"
    lr: float = Field(0.1, gt=0.0)
    # lr_t per iteration (module docstring): constant, linear, cosine or kl-adaptive
    lr_schedule: LRSchedule = "constant"
    kl_target: float = Field(0.01, gt=0.0)  # kl-adaptive: the KL per iteration aimed at
    lr_min: float = Field(1e-6, gt=0.0)  # kl-adaptive: the lr never falls below
    lr_max: float = Field(1.0, gt=0.0)  # kl-adaptive: the lr never rises above
    policy: PolicyName = "tabular"  # "tabular" softmax or "mlp"
    init_std: float = Field(0.0, ge=0.0)  # tabular logits ~ N(0, init_std^2)
    max_steps: int = Field(1000, ge=1)  # safety cap on episode length
    seed: int = 0
    audit: bool = True  # exact instrumentation after every optimiser step

    @model_validator(mode="after")
    def _check(self) -> GRPOConfig:
        if self.num_groups % self.minibatches:
            raise ValueError(
                f"minibatches={self.minibatches} must divide num_groups={self.num_groups}"
            )
        if self.lr_schedule == "kl-adaptive" and not self.lr_min <= self.lr <= self.lr_max:
            raise ValueError(
                f"lr_schedule='kl-adaptive' needs lr_min <= lr <= lr_max, got lr_min="
                f"{self.lr_min}, lr={self.lr}, lr_max={self.lr_max}"
            )
        if self.loss.advantage != "group":
            raise ValueError(
                f"GRPO needs loss.advantage='group' (no critic), got {self.loss.advantage!r}"
            )
        return self


def _ratio_logp(
    logp: Tensor, old_logp: Tensor, ep: PackedEpisodes, mask: Tensor, level: str
) -> Tensor:
    """The log-probability whose ratio to old_logp the loss clips: logp itself ("token"), or
    log pi_old + log s_i with GSPO's s_i = exp(mean over episode i of log r) ("sequence",
    arXiv 2507.18071 eq. 5). Shapes: (C, K) -> (C, K)."""
    if level == "token":
        return logp
    log_r = torch.where(mask, logp - old_logp, torch.zeros((), dtype=logp.dtype))
    seq = torch.zeros(ep.lengths.shape, dtype=logp.dtype).scatter_add(1, ep.episode, log_r)
    seq_mean = seq / ep.lengths.clamp_min(1).to(logp.dtype)  # (C, N)
    return old_logp + seq_mean.gather(1, ep.episode)


def _packed_ratio_metrics(
    logp: Tensor,
    old_logp: Tensor,
    ratio: Tensor,
    adv: Tensor,
    mask: Tensor,
    el: Tensor,
    eh: Tensor,
    dual_clip: float | None,
) -> dict[str, Tensor]:
    """``ratio_metrics`` on packed rows (C, K), each row one pseudo-sequence -> (C,) each."""
    return ratio_metrics(
        logp.unsqueeze(1),
        old_logp.unsqueeze(1),
        ratio.unsqueeze(1),
        adv.unsqueeze(1),
        mask.unsqueeze(1),
        el.unsqueeze(-1),
        eh.unsqueeze(-1),
        dual_clip,
    )


def grpo_loss(
    logp_table: Tensor,
    ep: PackedEpisodes,
    mask: Tensor,
    old_logp: Tensor,
    adv: Tensor,
    loss_cfg: LossConfig,
    eps_low: Tensor,
    eps_high: Tensor,
    batch_size: int,
    ref_table: Tensor | None = None,
    is_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The GRPO loss of each configuration on its batch (GRPO arXiv 2402.03300 eq. 3), on steps
    packed per configuration (``PackedEpisodes``): the clipped surrogate of every step, reduced
    with the per-token weights of ``cfg.agg`` (``aggregation_weights``), plus beta * KL to pi_ref.

    Shapes: logp_table (C, S, A) log pi_theta; ``ep`` rows (C, K); mask (C, K) the steps of this
    minibatch; old_logp (C, K); adv (C, N) outcome advantages (broadcast to each episode's steps);
    eps_low, eps_high (C,); ``batch_size`` the episodes per configuration in the minibatch (B of
    Dr. GRPO's B * max_len); ref_table (C, S, A) log pi_ref (needed when beta > 0); is_weight
    (C, K) importance weights multiplying each step's surrogate term (``losses.importance_weights``
    for data from a behaviour policy; None = 1). Returns (loss (C,), metrics (C,)).
    """
    c = loss_cfg
    dt = logp_table.dtype
    logp = gather_logp(logp_table, ep.states, ep.actions)  # (C, K)
    a = adv.gather(1, ep.episode)  # (C, K)
    el, eh = eps_low.reshape(-1, 1), eps_high.reshape(-1, 1)
    logp_eff = _ratio_logp(logp, old_logp, ep, mask, c.ratio_level)
    per_tok, ratio = clipped_surrogate(logp_eff, old_logp, a, mask, el, eh, c.dual_clip)
    if is_weight is not None:
        per_tok = is_weight * per_tok  # (C, K)
    seq_len = torch.zeros_like(ep.lengths).scatter_add(1, ep.episode, mask.long())  # (C, N)
    w = aggregation_weights(
        c.agg,
        mask,
        seq_len.gather(1, ep.episode),
        (seq_len > 0).sum(-1),
        batch_size,
        c.max_len,
        dtype=dt,
    )  # (C, K)
    loss = (w * per_tok).sum(-1)  # (C,)
    rows = (ratio.unsqueeze(1), a.unsqueeze(1), mask.unsqueeze(1))  # (C, 1, K): a row per config
    metrics = clip_fractions(*rows, el.unsqueeze(-1), eh.unsqueeze(-1), c.dual_clip)
    metrics["pg_loss"] = loss.detach()
    if c.beta > 0:
        ref_logp = gather_logp(ref_table, ep.states, ep.actions)
        kl = (w * kl_penalty(logp, ref_logp, c.kl_kind)).sum(-1)
        loss = loss + c.beta * kl
        metrics["kl_ref"] = kl.detach()
    metrics["loss"] = loss.detach()
    return loss, metrics


class GRPOTrainer:
    """The state of a (batched) GRPO run: policy, optimiser, reference policy, record.

    ``update(it)`` performs iteration ``it`` (module docstring, steps 1-4) and returns its
    metrics; ``train_grpo`` loops it. A user's own policy (any module whose ``log_probs()`` is the
    (S, A) or (C, S, A) table) and optimiser can be passed in; otherwise both are built from the
    configurations (one ``POLICIES[cfg.policy]`` with a config axis, ``make_optimizer``).
    """

    def __init__(
        self,
        mdp: TabularMDP,
        configs: GRPOConfig | Sequence[GRPOConfig],
        *,
        policy: torch.nn.Module | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        device: str = "cpu",
    ) -> None:
        configs = [configs] if isinstance(configs, GRPOConfig) else list(configs)
        if not configs:
            raise ValueError("configs is empty")
        check_batchable(configs, BATCHABLE)
        self.configs, self.cfg, self.C = configs, configs[0], len(configs)
        C, cfg = self.C, self.cfg
        if mdp.is_batched and mdp.P.shape[0] != C:
            raise ValueError(
                f"mdp has C={mdp.P.shape[0]} configurations but {C} configs were given"
            )
        self.mdp = mdp = mdp.to(device=device)
        S, A, dt = mdp.num_states, mdp.num_actions, mdp.dtype
        self.device = device
        self.seeds = [c.seed for c in configs]
        self.eps_low = torch.tensor([c.loss.eps_low for c in configs], dtype=dt, device=device)
        self.eps_high = torch.tensor([c.loss.eps_high for c in configs], dtype=dt, device=device)
        if policy is None:
            kw = {"init_std": cfg.init_std} if cfg.policy == "tabular" else {}
            policy = POLICIES.get(cfg.policy)(
                S, A, C, seed=self.seeds, dtype=dt, device=device, **kw
            )
        self.policy = policy
        if tuple(self.table().shape) != (C, S, A):
            raise ValueError(
                f"policy.log_probs() has shape {tuple(policy.log_probs().shape)}; expected "
                f"(S, A) = ({S}, {A}) for one config or (C, S, A) with C = {C}"
            )
        if optimizer is None:
            lr = torch.tensor([c.lr for c in configs], dtype=dt, device=device)
            optimizer = make_optimizer(cfg.optimizer, policy.parameters(), lr if C > 1 else cfg.lr)
        self.opt = optimizer
        # lr_t of each configuration (module docstring); the optimiser's lr is set from it only
        # when some configuration's schedule is not constant
        self.lr_now = [c.lr for c in configs]
        self.scheduled = any(c.lr_schedule != "constant" for c in configs)
        self.ref_table = self.table().detach()  # (C, S, A) pi_ref = initial policy
        self.j_star = optimal_return(mdp).expand(C)
        self.rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
        self.alive = torch.ones(C, dtype=torch.bool, device=device)
        # Dr. GRPO's constant normaliser: the episode budget, unless the loss names one
        lc = cfg.loss
        self.loss_cfg = lc.model_copy(
            update={"max_len": lc.max_len or mdp.horizon or cfg.max_steps}
        )
        self.step = 0
        self.rec.summary["grad_norm_init"] = self.grad_norm().cpu()

    def grad_norm(self) -> Tensor:
        """||grad_phi J|| of the current policy per configuration (``exact_policy_grad_norm``)."""
        return exact_policy_grad_norm(self.mdp, self.policy, self.C)

    def table(self) -> Tensor:
        """log pi_theta as a (C, S, A) table (an unbatched policy gets C = 1)."""
        lp = self.policy.log_probs()
        return lp if lp.dim() == 3 else lp.unsqueeze(0)

    def update(self, it: int) -> dict[str, Tensor]:
        """One GRPO iteration; returns the iteration's metrics and those of its last step."""
        cfg, lc, mdp, C, rec = self.cfg, self.loss_cfg, self.mdp, self.C, self.rec
        G, n_groups = cfg.group_size, cfg.num_groups
        groups_per_mb = n_groups // cfg.minibatches
        gens = iteration_generators(self.seeds, it, stream=seeding.SAMPLING)
        perm_gens = (
            iteration_generators(self.seeds, it, stream=seeding.MINIBATCH)
            if cfg.minibatches > 1
            else []
        )
        # 1. sample with pi_old
        old_table = self.table().detach()  # (C, S, A)
        probs_old = old_table.exp()
        ep, _ = sample_groups(
            mdp, probs_old, n_groups, G, gens, max_steps=cfg.max_steps, layout="packed"
        )
        # 2. outcome rewards -> group advantages
        returns = ep.returns  # (C, N)
        adv = group_advantages(
            returns.reshape(-1), G, baseline=lc.adv_baseline, scale=lc.adv_scale
        ).reshape(C, -1)  # (C, N)
        old_logp = gather_logp(old_table, ep.states, ep.actions)  # (C, K)
        grp_r = returns.reshape(C, n_groups, G)
        old_stats = OldPolicy.of(mdp, probs_old)  # pi_old's exact quantities, once per batch
        j_old = old_stats.j
        self._set_lr(it)
        it_metrics = {
            "iteration": torch.full((C,), float(it)),
            "lr": torch.tensor(self.lr_now, dtype=torch.float64),
            "J": j_old,
            "gap": self.j_star - j_old,
            "grad_norm": self.grad_norm(),  # exact ||grad_phi J(pi_old)||
            "reward_mean": returns.mean(-1),
            "reward_std": returns.std(-1),
            "adv_abs_mean": adv.abs().mean(-1),
            "zero_std_frac": (grp_r == grp_r[..., :1]).all(-1).double().mean(-1),
            "length_mean": ep.lengths.double().mean(-1),
            "truncated_frac": ep.truncated.double().mean(-1),
        }
        rec.log("iter", it_metrics, self.alive)
        # 3. K epochs x minibatches of optimiser steps
        params = list(self.policy.parameters())
        metrics: dict[str, Tensor] = {}
        for _epoch in range(cfg.epochs):
            # minibatch order; one minibatch is the whole batch and needs no permutation
            perm = group_permutations(perm_gens, n_groups) if cfg.minibatches > 1 else None
            for m in range(cfg.minibatches):
                mask = ep.mask  # (C, K)
                if perm is not None:
                    grp = perm[:, m * groups_per_mb : (m + 1) * groups_per_mb]  # (C, g)
                    in_mb = torch.zeros(C, n_groups, dtype=torch.bool).scatter(1, grp, True)
                    in_mb = in_mb.repeat_interleave(G, dim=1)  # (C, N) episodes of minibatch m
                    mask = mask & in_mb.gather(1, ep.episode)  # (C, K)
                loss, metrics = grpo_loss(
                    self.table(),
                    ep,
                    mask,
                    old_logp,
                    adv,
                    lc,
                    self.eps_low,
                    self.eps_high,
                    groups_per_mb * G,
                    self.ref_table,
                )
                # a non-finite loss or parameter stops that configuration, not the batch
                guarded_step(loss, params, self.opt, self.alive, rec, self.step)
                # 4. instrumentation against pi_old: the minibatch's ratios after the step ...
                with torch.no_grad():
                    el, eh = self.eps_low.reshape(-1, 1), self.eps_high.reshape(-1, 1)
                    logp_new = gather_logp(self.table(), ep.states, ep.actions)  # (C, K)
                    log_r = _ratio_logp(logp_new, old_logp, ep, mask, lc.ratio_level) - old_logp
                    ratio = torch.exp(torch.where(mask, log_r, 0.0))  # (C, K)
                    a_tok = adv.gather(1, ep.episode)
                    metrics.update(
                        _packed_ratio_metrics(
                            logp_new, old_logp, ratio, a_tok, mask, el, eh, lc.dual_clip
                        )
                    )
                # ... and exactly over every visited (s, a)
                if cfg.audit:
                    probs_new = self.table().detach().exp()
                    el, eh = self.eps_low, self.eps_high
                    metrics.update(exact_ratio_audit(mdp, old_stats, probs_new, el, eh))
                    metrics.update(policy_change(mdp, old_stats, probs_new))
                    metrics.update(improvement(mdp, old_stats, probs_new, el, eh))
                metrics["iteration"] = torch.full((C,), float(it))
                rec.log("step", metrics, self.alive)
                self.step += 1
        # KL(pi_old || pi_new) of the whole iteration, exact under d^{pi_old}: logged, and it
        # sets the next lr of the kl-adaptive configurations
        kl_iter = policy_change(mdp, old_stats, self.table().detach().exp())["kl_mean"]
        rec.log("iter", {"kl_iter": kl_iter}, self.alive)
        for c, (conf, kl) in enumerate(zip(self.configs, kl_iter.tolist(), strict=True)):
            if conf.lr_schedule == "kl-adaptive":
                self.lr_now[c] = kl_adaptive_lr(
                    self.lr_now[c], kl, conf.kl_target, conf.lr_min, conf.lr_max
                )
        return {**metrics, **it_metrics, "kl_iter": kl_iter}

    def _set_lr(self, it: int) -> None:
        """lr_t of iteration ``it`` for every configuration (``scheduled_lr``; kl-adaptive
        configurations keep the lr their last KL set), written to every parameter group of the
        optimiser: one number with C = 1, a (C,) tensor otherwise (``grpo_lab.optim``)."""
        if not self.scheduled:
            return
        T = self.cfg.iterations
        for c, conf in enumerate(self.configs):
            if conf.lr_schedule != "kl-adaptive":
                self.lr_now[c] = scheduled_lr(conf.lr_schedule, conf.lr, it, T)
        lr: float | Tensor = self.lr_now[0]
        if self.C > 1:
            lr = torch.tensor(self.lr_now, dtype=self.mdp.dtype, device=self.device)
        for group in self.opt.param_groups:
            group["lr"] = lr

    def finish(self) -> RunRecord:
        """Close the record: final policy, its exact return, J* and ``grad_norm_final``."""
        final = self.table().detach().exp()
        self.rec.final_probs = final.cpu()
        self.rec.j_final = exact_return(self.mdp, final).cpu()
        self.rec.j_star = self.j_star.cpu()
        self.rec.summary["grad_norm_final"] = self.grad_norm().cpu()
        return self.rec


def train_grpo(
    mdp: TabularMDP,
    configs: GRPOConfig | Sequence[GRPOConfig],
    *,
    device: str = "cpu",
) -> RunRecord:
    """Run GRPO for each configuration, all C of them as one batched program (module docstring).

    ``mdp`` is shared (unbatched) or batched with C = len(configs). Returns a ``RunRecord`` with
    per-step and per-iteration metrics (C, ...), a status per configuration ("ok" or "diverged"
    with the step and the reason: a non-finite loss or parameter stops that configuration, not the
    batch), the final policy tables in ``record.final_probs`` (C, S, A), and in
    ``record.summary`` the exact ``grad_norm_init`` and ``grad_norm_final`` (C,) (module docstring).
    """
    trainer = GRPOTrainer(mdp, configs, device=device)
    for it in range(trainer.cfg.iterations):
        trainer.update(it)
    return trainer.finish()
