"""PPO on classic-control tasks (gymnasium's CartPole-v1, Acrobot-v1), C configurations at once: every
network weight has a leading configuration axis and the environments of all configurations step
together (``grpo_lab.envs.classic``, N = C x E rows), the PureJaxRL pattern (arXiv 2210.05639) in
PyTorch.

PPO (arXiv 1707.06347; the implementation details of CleanRL's ``ppo.py`` and Stable-Baselines3,
each an option with the RL Zoo's CartPole-v1 values as defaults), one update, top to bottom:
  1. ``num_steps`` steps of E = ``num_envs`` environments per configuration with the current
     policy; a truncated episode's reward gets + gamma V(final obs) (SB3's bootstrap).
  2. GAE(gamma, lambda) advantages and returns (arXiv 1506.02438 eq. 16).
  3. ``update_epochs`` x ``num_minibatches``: clipped surrogate (eq. 7) with per-minibatch
     advantage normalisation, value loss 0.5 (V - R)^2 (optionally clipped), entropy bonus;
     per-configuration gradient-norm clipping; Adam; learning rate and clip range annealed
     linearly to 0 (Zoo: ``lin_1e-3``, ``lin_0.2``).
  4. Instrumentation: the minibatch ratio audit after each optimiser step (ratio max/min, clip
     fractions by side, approx KL), entropy, explained variance of the critic, episode returns,
     env steps per second.

GRPO without a critic on the same tasks: ``classic_grpo.py``; TRPO with a critic: ``classic_trpo.py``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from grpo_lab.advantages import gae
from grpo_lab.algorithms.common import RunRecord, check_batchable, derive_seed
from grpo_lab.algorithms.ppo import clip_grad_norm_per_config
from grpo_lab.envs.classic import CLASSIC_ENVS, ClassicVecEnv, make_classic
from grpo_lab.losses import clipped_surrogate, ratio_metrics
from grpo_lab.optim import BatchedAdam

Tensor = torch.Tensor

PPO_BATCHABLE = ("lr", "clip_coef", "seed")


# ----------------------------------------------------------------------------- networks


class BatchedMLP(torch.nn.Module):
    """C independent MLPs (tanh hidden layers) evaluated as one program: layer weights (C, in,
    out). Orthogonal initialisation per configuration (CleanRL: gain sqrt(2) for hidden layers,
    ``out_gain`` for the output), seeded per configuration."""

    def __init__(
        self, sizes: Sequence[int], seeds: Sequence[int], out_gain: float, dtype: torch.dtype
    ) -> None:
        super().__init__()
        C = len(seeds)
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            gain = out_gain if i == len(sizes) - 2 else math.sqrt(2.0)
            w = torch.empty(C, n_out, n_in, dtype=torch.float64)
            for c, s in enumerate(seeds):
                g = torch.Generator().manual_seed(derive_seed(s, i, 7))
                torch.nn.init.orthogonal_(w[c], gain=gain, generator=g)
            self.weights.append(torch.nn.Parameter(w.transpose(1, 2).contiguous().to(dtype)))
            self.biases.append(torch.nn.Parameter(torch.zeros(C, 1, n_out, dtype=dtype)))

    def forward(self, x: Tensor) -> Tensor:
        """x (C, M, in) -> (C, M, out)."""
        n = len(self.weights)
        for i, (w, b) in enumerate(zip(self.weights, self.biases, strict=True)):
            x = torch.baddbmm(b, x, w)
            if i < n - 1:
                x = torch.tanh(x)
        return x


def _categorical(logits: Tensor, gens: list[torch.Generator]) -> Tensor:
    """One action per row from softmax(logits), configuration c drawing from generator c by
    inverse CDF. Shapes: logits (C, M, A) -> (C, M) long."""
    C, M, _ = logits.shape
    u = torch.stack([torch.rand(M, generator=g, dtype=logits.dtype) for g in gens])  # (C, M)
    cdf = torch.softmax(logits, -1).cumsum(-1)
    return (cdf < u.unsqueeze(-1) * cdf[..., -1:]).sum(-1).clamp_max(logits.shape[-1] - 1)


def _check_env(env_id: str) -> str:
    return CLASSIC_ENVS.check(env_id)


def with_task(env: object, configs: Sequence[BaseModel]) -> list[BaseModel]:
    """Check the configurations against a protocol's task (``envs.ClassicTask``): each one's
    ``env_id`` must name that task, so that the stored config says what ran. ``env`` None: each
    configuration's own ``env_id`` counts."""
    env_id = getattr(env, "env_id", None)
    for i, c in enumerate(configs):
        if env_id is not None and c.env_id != env_id:  # type: ignore[attr-defined]
            raise ValueError(
                f"configs[{i}].env_id = {c.env_id!r} but the task is {env_id!r}; set env_id = "  # type: ignore[attr-defined]
                f"{env_id!r} in the algorithm's config"
            )
    return list(configs)


# ----------------------------------------------------------------------------- PPO


class ClassicPPOConfig(BaseModel):
    """PPO on a classic-control task; defaults = the RL Zoo's CartPole-v1 hyperparameters."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    env_id: str = "CartPole-v1"
    backend: Literal["torch", "gymnasium"] = "torch"
    num_envs: int = Field(8, ge=1)
    num_steps: int = Field(32, ge=1)
    total_timesteps: int = Field(100_000, ge=1)
    lr: float = Field(1e-3, gt=0.0)
    anneal_lr: bool = True
    gamma: float = Field(0.98, ge=0.0, le=1.0)
    gae_lambda: float = Field(0.8, ge=0.0, le=1.0)
    num_minibatches: int = Field(1, ge=1)
    update_epochs: int = Field(20, ge=1)
    norm_adv: bool = True
    clip_coef: float = Field(0.2, gt=0.0)
    anneal_clip: bool = True
    clip_vloss: bool = False  # SB3's default (clip_range_vf=None); CleanRL clips
    ent_coef: float = Field(0.0, ge=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: float = Field(0.5, gt=0.0)
    hidden: int = Field(64, ge=1)
    adam_eps: float = Field(1e-5, gt=0.0)
    eval_episodes: int = Field(20, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _check(self) -> ClassicPPOConfig:
        _check_env(self.env_id)
        if (self.num_envs * self.num_steps) % self.num_minibatches:
            raise ValueError(
                f"num_envs * num_steps = {self.num_envs * self.num_steps} must split into "
                f"num_minibatches = {self.num_minibatches} equal parts"
            )
        return self


def _env_seeds(seeds: Sequence[int], E: int, stream: int) -> list[int]:
    return [derive_seed(s, e, stream) % (2**31) for s in seeds for e in range(E)]


@torch.no_grad()
def evaluate(
    actor: BatchedMLP,
    env_id: str,
    seeds: Sequence[int],
    episodes: int,
    backend: str = "torch",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Mean return of ``episodes`` deterministic (argmax) episodes per configuration: (C,)."""
    C = len(seeds)
    env = make_classic(env_id, C * episodes, backend=backend, autoreset=False, dtype=dtype)
    obs = env.reset(seed=_env_seeds(seeds, episodes, 5))
    ret = torch.zeros(C * episodes, dtype=torch.float64)
    done = torch.zeros(C * episodes, dtype=torch.bool)
    for _ in range(env.max_episode_steps):
        a = actor(obs.reshape(C, episodes, -1)).argmax(-1).reshape(-1)
        obs, r, term, trunc = env.step(a)
        ret += torch.where(done, 0.0, r.double())
        done |= term | trunc
        if bool(done.all()):
            break
    env.close()
    return ret.reshape(C, episodes).mean(-1)


def train_classic_ppo(
    env: None | object, configs: ClassicPPOConfig | Sequence[ClassicPPOConfig]
) -> RunRecord:
    """PPO for each configuration, all C of them as one batched program (module docstring).
    ``env``: None (each configuration's ``env_id``) or a protocol's ``ClassicTask``."""
    configs = [configs] if isinstance(configs, ClassicPPOConfig) else list(configs)
    configs = with_task(env, configs)
    check_batchable(configs, PPO_BATCHABLE)
    cfg, C = configs[0], len(configs)
    E, T, dt = cfg.num_envs, cfg.num_steps, torch.float32
    seeds = [c.seed for c in configs]
    venv: ClassicVecEnv = make_classic(cfg.env_id, C * E, backend=cfg.backend, dtype=dt)
    D, A = venv.obs_dim, venv.num_actions
    actor = BatchedMLP([D, cfg.hidden, cfg.hidden, A], seeds, 0.01, dt)
    critic = BatchedMLP([D, cfg.hidden, cfg.hidden, 1], [s + 1 for s in seeds], 1.0, dt)
    params = list(actor.parameters()) + list(critic.parameters())
    lr0 = torch.tensor([c.lr for c in configs], dtype=dt)
    clip0 = torch.tensor([c.clip_coef for c in configs], dtype=dt)
    opt = BatchedAdam(params, lr=lr0.clone(), eps=cfg.adam_eps)
    num_updates = max(1, cfg.total_timesteps // (E * T))
    rec = RunRecord(status=["ok"] * C, diverged_at=[None] * C, error=[None] * C)
    alive = torch.ones(C, dtype=torch.bool)
    obs = venv.reset(seed=_env_seeds(seeds, E, 0)).reshape(C, E, D)
    mb = E * T // cfg.num_minibatches
    steps_done = 0
    for u in range(num_updates):
        frac = 1.0 - u / num_updates
        lr_now = lr0 * frac if cfg.anneal_lr else lr0
        clip = (clip0 * frac if cfg.anneal_clip else clip0).reshape(C, 1, 1)
        for group in opt.param_groups:
            group["lr"] = lr_now
        gens = [torch.Generator().manual_seed(derive_seed(s, u, 0)) for s in seeds]
        # 1. rollout
        t0 = time.perf_counter()
        b_obs = torch.zeros(T, C, E, D, dtype=dt)
        b_act = torch.zeros(T, C, E, dtype=torch.long)
        b_logp, b_rew, b_val = (torch.zeros(T, C, E, dtype=dt) for _ in range(3))
        b_done = torch.zeros(T, C, E, dtype=torch.bool)
        ep_returns: list[Tensor] = []
        with torch.no_grad():
            for t in range(T):
                logits = actor(obs)  # (C, E, A)
                a = _categorical(logits, gens)
                logp = torch.log_softmax(logits, -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
                b_obs[t], b_act[t], b_logp[t] = obs, a, logp
                b_val[t] = critic(obs).squeeze(-1)
                nxt, r, term, trunc = venv.step(a.reshape(-1))
                r = r.to(dt).reshape(C, E)
                trunc_ce = trunc.reshape(C, E) & ~term.reshape(C, E)
                if bool(trunc_ce.any()):  # bootstrap a cut episode with V(final obs)
                    v_fin = critic(venv.final_obs.to(dt).reshape(C, E, D)).squeeze(-1)
                    r = r + cfg.gamma * torch.where(trunc_ce, v_fin, 0.0)
                done = (term | trunc).reshape(C, E)
                b_rew[t], b_done[t] = r, done
                if bool(done.any()):
                    ended = torch.where(done, venv.ended_returns.reshape(C, E).double(), math.nan)
                    ep_returns.append(ended)
                obs = nxt.reshape(C, E, D).to(dt)
            next_val = critic(obs).squeeze(-1)  # (C, E)
        t_roll = time.perf_counter() - t0
        steps_done += E * T
        # 2. GAE (arXiv 1506.02438 eq. 16), time last: (C, E, T)
        vals = torch.cat([b_val, next_val.unsqueeze(0)]).permute(1, 2, 0)  # (C, E, T + 1)
        adv, ret = gae(
            b_rew.permute(1, 2, 0), vals, b_done.permute(1, 2, 0).to(dt), cfg.gamma, cfg.gae_lambda
        )
        # (C, E*T) flat per configuration
        f_obs = b_obs.permute(1, 2, 0, 3).reshape(C, E * T, D)
        f_act, f_logp, f_val = (
            x.permute(1, 2, 0).reshape(C, E * T) for x in (b_act, b_logp, b_val)
        )
        f_adv, f_ret = adv.reshape(C, E * T), ret.reshape(C, E * T)
        # 3. epochs x minibatches
        t0 = time.perf_counter()
        metrics: dict[str, Tensor] = {}
        for epoch in range(cfg.update_epochs):
            order = None  # each configuration's own minibatch order, from its own generator
            if cfg.num_minibatches > 1:
                pgens = [
                    torch.Generator().manual_seed(derive_seed(s, u, 100 + epoch)) for s in seeds
                ]
                order = torch.stack([torch.randperm(E * T, generator=g) for g in pgens])  # (C, ET)
            for m in range(cfg.num_minibatches):
                if order is None:
                    o, a, lp_old = f_obs, f_act, f_logp
                    ad, rt, v_old = f_adv, f_ret, f_val
                else:
                    idx = order[:, m * mb : (m + 1) * mb]  # (C, mb)
                    o = f_obs.gather(1, idx.unsqueeze(-1).expand(C, mb, D))
                    a, lp_old, ad, rt, v_old = (
                        x.gather(1, idx) for x in (f_act, f_logp, f_adv, f_ret, f_val)
                    )
                if cfg.norm_adv:
                    ad = (ad - ad.mean(-1, keepdim=True)) / (ad.std(-1, keepdim=True) + 1e-8)
                logits = actor(o)
                logp_all = torch.log_softmax(logits, -1)
                lp = logp_all.gather(-1, a.unsqueeze(-1)).squeeze(-1)  # (C, mb)
                ent = -(logp_all.exp() * logp_all).sum(-1)  # (C, mb)
                mask = torch.ones_like(lp, dtype=torch.bool).unsqueeze(1)  # (C, 1, mb)
                per_tok, ratio = clipped_surrogate(
                    lp.unsqueeze(1), lp_old.unsqueeze(1), ad.unsqueeze(1), mask, clip, clip
                )
                pg_loss = per_tok.mean((-2, -1))  # (C,)
                v = critic(o).squeeze(-1)
                if cfg.clip_vloss:
                    v_clip = v_old + (v - v_old).clamp(-clip.reshape(C, 1), clip.reshape(C, 1))
                    v_loss = 0.5 * torch.maximum((v - rt) ** 2, (v_clip - rt) ** 2).mean(-1)
                else:
                    v_loss = 0.5 * ((v - rt) ** 2).mean(-1)
                loss = pg_loss - cfg.ent_coef * ent.mean(-1) + cfg.vf_coef * v_loss  # (C,)
                opt.zero_grad()
                loss.sum().backward()  # configurations are independent: the sum is each its own
                grad_norm = clip_grad_norm_per_config(params, cfg.max_grad_norm)
                ok = torch.isfinite(loss.detach()) & torch.isfinite(grad_norm)
                newly = alive & ~ok
                if bool(newly.any()):
                    rec.mark_diverged(newly, len(rec.step.get("loss", [])), "non-finite loss")
                    alive &= ok
                opt.step()
                with torch.no_grad():  # 4. the minibatch's ratios after the step
                    lp_new = torch.log_softmax(actor(o), -1).gather(-1, a.unsqueeze(-1)).squeeze(-1)
                    r_new = torch.exp(lp_new - lp_old).unsqueeze(1)
                    metrics = ratio_metrics(
                        lp_new.unsqueeze(1), lp_old.unsqueeze(1), r_new, ad.unsqueeze(1), mask,
                        clip, clip,
                    )  # fmt: skip
                metrics.update(
                    loss=loss.detach(), pg_loss=pg_loss.detach(), v_loss=v_loss.detach(),
                    entropy=ent.mean(-1).detach(), grad_norm=grad_norm, lr=lr_now,
                    clip_coef=clip.reshape(C), iteration=torch.full((C,), float(u)),
                )  # fmt: skip
                rec.log("step", metrics, alive)
        t_upd = time.perf_counter() - t0
        with torch.no_grad():
            var_y = f_ret.var(-1)
            expl_var = 1 - (f_ret - f_val).var(-1) / var_y
        if ep_returns:  # returns of the episodes that ended in this rollout, NaN elsewhere
            ep = torch.stack(ep_returns).permute(1, 0, 2).reshape(C, -1)  # (C, K * E)
            ep_mean = torch.nanmean(ep, dim=-1)
        else:
            ep_mean = torch.full((C,), math.nan, dtype=torch.float64)
        rec.log(
            "iter",
            {
                "iteration": torch.full((C,), float(u)),
                "env_steps": torch.full((C,), float(steps_done)),
                "episode_return": ep_mean,
                "explained_variance": expl_var,
                "env_steps_per_s": torch.full((C,), C * E * T / max(t_roll, 1e-9)),
                "rollout_time": torch.full((C,), t_roll),
                "update_time": torch.full((C,), t_upd),
            },
            alive,
        )
    venv.close()
    evals = evaluate(actor, cfg.env_id, seeds, cfg.eval_episodes, cfg.backend)
    rec.summary = {"eval_return": evals, "env_steps": torch.full((C,), float(steps_done))}
    return rec
