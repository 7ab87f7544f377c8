"""The trust-region core of TRPO (Schulman et al., arXiv 1502.05477), written once for every family.

A family supplies closures over its own policy and batch; this module does the rest, for C
configurations at once (every tensor has a leading axis C, configurations share no parameter):

    kl_fn()        -> (C,)  the average KL(pi_old || pi_theta) at the current parameters,
                            differentiable (tabular: exact over states; classic: over samples)
    surrogate_fn() -> (C,)  the sample surrogate L(theta) = mean [pi_theta / pi_old] A
    evaluate()     -> (kl (C,), gain (C,))  both at the parameters the line search set

    flatten / unflatten / flat_grad / set_flat   (C, D) parameter and gradient matrices
    fisher_vector_product(kl_fn, params)         v -> F v by double backprop (App. C.1)
    conjugate_gradient(fvp, b, iters)            x = M^-1 b per row (App. C)
    natural_step(surrogate_fn, kl_fn, ...)       g, x = (F + lambda I)^-1 g, beta, the full step
    line_search(params, theta_old, step, ...)    backtracking: the largest b^k with KL <= delta
                                                 and a positive surrogate gain (§6, App. C)

Tabular TRPO (``algorithms/trpo.py``) and classic-control TRPO (``algorithms/classic_trpo.py``)
both run on it; tests/test_trpo.py checks F v against the exact Hessian of the KL, CG against a
direct solve and the line search against its definition.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

Tensor = torch.Tensor


# --------------------------------------------------------------------------------------------
# Flat parameter vectors, one row per configuration


def flatten(tensors: Sequence[Tensor], num_configs: int) -> Tensor:
    """Concatenate tensors of shape (C, ...) into one (C, D) matrix, row c = configuration c."""
    return torch.cat([t.reshape(num_configs, -1) for t in tensors], dim=1)


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Inverse of ``flatten``: (C, D) -> tensors shaped like ``like`` (each (C, ...))."""
    sizes = [t[0].numel() for t in like]
    return [part.reshape(t.shape) for part, t in zip(flat.split(sizes, dim=1), like, strict=True)]


def flat_grad(
    out: Tensor, params: Sequence[Tensor], num_configs: int, create_graph: bool = False
) -> Tensor:
    """grad of out.sum() w.r.t. params as (C, D). Configurations are independent, so the
    gradient of the sum in row c is the gradient of out[c] alone."""
    grads = torch.autograd.grad(
        out.sum(), params, create_graph=create_graph, retain_graph=True, allow_unused=True
    )
    grads = [torch.zeros_like(p) if gr is None else gr for gr, p in zip(grads, params, strict=True)]
    return flatten(grads, num_configs)


def set_flat(params: Sequence[Tensor], flat: Tensor) -> None:
    """Write the (C, D) parameter matrix into ``params`` (each (C, ...)), in place."""
    with torch.no_grad():
        for p, v in zip(params, unflatten(flat, params), strict=True):
            p.copy_(v)


# --------------------------------------------------------------------------------------------
# Fisher-vector products and conjugate gradient


def fisher_vector_product(
    kl_fn: Callable[[], Tensor], params: Sequence[Tensor], num_configs: int, damping: float = 0.0
) -> Callable[[Tensor], Tensor]:
    """v -> (F + damping I) v per configuration, F = Hessian of KLbar at theta_old by double
    backprop (TRPO arXiv 1502.05477 App. C.1): with k(theta) = grad_theta KLbar kept as a graph,

        F v = grad_theta (k(theta) . v)

    At theta_old this Hessian is the Fisher information of the KL's states. The parameters must
    sit at theta_old (``kl_fn`` compares with pi_old's detached log-probabilities).

    Shapes: kl_fn() (C,); v (C, D) -> (C, D), rows independent.
    """
    params = list(params)
    C = num_configs
    k = flat_grad(kl_fn(), params, C, create_graph=True)  # (C, D), zero in value at theta_old

    def fvp(v: Tensor) -> Tensor:
        return flat_grad((k * v.detach()).sum(-1), params, C) + damping * v

    return fvp


def conjugate_gradient(
    fvp: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10
) -> tuple[Tensor, Tensor]:
    """Solve M x = b for each row by conjugate gradient (Hestenes & Stiefel 1952; TRPO arXiv
    1502.05477 App. C), M symmetric positive definite given as the product ``fvp``:

        x_0 = 0, r_0 = p_0 = b
        alpha_k = r_k.r_k / p_k.M p_k;   x_{k+1} = x_k + alpha_k p_k;   r_{k+1} = r_k - alpha_k M p_k
        beta_k  = r_{k+1}.r_{k+1} / r_k.r_k;   p_{k+1} = r_{k+1} + beta_k p_k

    alpha and beta are per configuration (C,). A row stops (alpha = 0 from then on) once
    |r| <= tol |b|, or if p.Mp <= 0 or is non-finite; the loop ends when every row has stopped or
    after ``iters`` iterations. Returns (x (C, D), relative residual |r| / |b| (C,), from the CG
    recursion; 0 where b = 0).

    Shapes: b (C, D); fvp (C, D) -> (C, D).
    """
    x = torch.zeros_like(b)
    r = b.clone()
    p = b.clone()
    rs = (r * r).sum(-1)  # (C,)
    b2 = rs.clone()
    done = rs <= tol**2 * b2  # (C,) includes b = 0
    for _ in range(iters):
        if bool(done.all()):
            break
        Ap = fvp(p)  # (C, D)
        pAp = (p * Ap).sum(-1)  # (C,)
        run = ~done & (pAp > 0) & torch.isfinite(pAp)
        alpha = torch.where(run, rs / torch.where(run, pAp, 1.0), 0.0)  # (C,)
        x = x + alpha.unsqueeze(-1) * p
        r = r - alpha.unsqueeze(-1) * Ap
        rs_new = (r * r).sum(-1)
        beta = torch.where(run, rs_new / torch.where(run, rs, 1.0), 0.0)
        p = torch.where(run.unsqueeze(-1), r + beta.unsqueeze(-1) * p, p)
        rs = torch.where(run, rs_new, rs)
        done = done | ~run | (rs <= tol**2 * b2)
    rel = torch.where(b2 > 0, (rs / torch.where(b2 > 0, b2, 1.0)).sqrt(), 0.0)
    return x, rel


# --------------------------------------------------------------------------------------------
# The natural step and the line search


@dataclass
class NaturalStep:
    """Per configuration: g = grad L(theta_old) (C, D), x = (F + lambda I)^-1 g (C, D), x^T F x
    undamped (C,), beta = sqrt(2 delta / x^T F x) (0 where x^T F x <= 0), |g| and the relative CG
    residual |(F + lambda I) x - g| / |g| (C,). The full step is beta x (``full``)."""

    g: Tensor
    x: Tensor
    quad: Tensor
    beta: Tensor
    grad_norm: Tensor
    cg_residual: Tensor

    @property
    def full(self) -> Tensor:
        return (self.beta.unsqueeze(-1) * self.x).detach()


def natural_step(
    surrogate_fn: Callable[[], Tensor],
    kl_fn: Callable[[], Tensor],
    params: Sequence[Tensor],
    num_configs: int,
    delta: Tensor | float,
    damping: float,
    cg_iters: int,
    cg_tol: float,
) -> NaturalStep:
    """TRPO's steps 3-4 (arXiv 1502.05477 §6, App. C): g = grad L(theta_old); x = (F + lambda I)^-1 g
    by conjugate gradient on Fisher-vector products; the full step beta x with
    1/2 (beta x)^T F (beta x) = delta, i.e. beta = sqrt(2 delta / x^T F x). The parameters must
    sit at theta_old. Non-finite rows are left to the caller (each family has its own guard)."""
    params = list(params)
    C = num_configs
    g = flat_grad(surrogate_fn(), params, C).detach()  # (C, D)
    fisher = fisher_vector_product(kl_fn, params, C, damping=0.0)  # v -> F v

    def damped(v: Tensor) -> Tensor:
        return fisher(v) + damping * v  # (F + lambda I) v

    x, _ = conjugate_gradient(damped, g, cg_iters, cg_tol)  # (C, D)
    Fx = fisher(x).detach()  # (C, D)
    quad = (x * Fx).sum(-1)  # x^T F x, undamped (C,)
    g_norm = g.norm(dim=-1)
    cg_res = (Fx + damping * x - g).norm(dim=-1) / torch.where(g_norm > 0, g_norm, 1.0)
    pos = quad > 0
    beta = torch.where(pos, (2.0 * delta / torch.where(pos, quad, 1.0)).sqrt(), 0.0)  # (C,)
    return NaturalStep(g, x, quad, beta, g_norm, cg_res)


@dataclass
class LineSearchResult:
    """Per configuration (C,): accepted (bool), frac (b^k of the accepted step, 0 if rejected),
    backtracks (k, or max_iter when rejected), kl and gain (KLbar and L - L_old of the applied
    step; 0 when rejected)."""

    accepted: Tensor
    frac: Tensor
    backtracks: Tensor
    kl: Tensor
    gain: Tensor


@torch.no_grad()
def line_search(
    params: Sequence[Tensor],
    theta_old: Tensor,
    full_step: Tensor,
    evaluate: Callable[[], tuple[Tensor, Tensor]],
    delta: Tensor | float,
    shrink: float,
    max_iter: int,
    active: Tensor,
) -> LineSearchResult:
    """Backtracking line search of each configuration (TRPO arXiv 1502.05477 §6 and App. C):
    try theta_old + b^k s for k = 0 .. max_iter - 1 and accept the first k (the largest step)
    with KLbar <= delta and L(theta) - L(theta_old) > 0 (``evaluate`` gives both at the
    parameters set). All configurations are tested at each fraction together; row c's verdict
    reads row c only. Leaves the parameters at the accepted step, at theta_old where rejected or
    not ``active``.

    Shapes: theta_old, full_step (C, D); delta (C,) or a float; active (C,) bool.
    """
    params = list(params)
    C, dt, device = theta_old.shape[0], theta_old.dtype, theta_old.device
    zeros = torch.zeros(C, dtype=dt, device=device)
    accepted = torch.zeros(C, dtype=torch.bool, device=device)
    frac_acc, kl_acc, gain_acc = zeros.clone(), zeros.clone(), zeros.clone()
    backtracks = torch.full((C,), float(max_iter), dtype=dt, device=device)
    for k in range(max_iter):
        pending = active & ~accepted
        if not bool(pending.any()):
            break
        frac = shrink**k
        set_flat(params, theta_old + frac * full_step)
        kl, gain = evaluate()  # (C,), (C,)
        good = pending & torch.isfinite(kl) & (kl <= delta) & (gain > 0)
        accepted |= good
        frac_acc = torch.where(good, frac, frac_acc)
        kl_acc = torch.where(good, kl, kl_acc)
        gain_acc = torch.where(good, gain, gain_acc)
        backtracks = torch.where(good, float(k), backtracks)
    step = theta_old + frac_acc.unsqueeze(-1) * full_step
    set_flat(params, torch.where(accepted.unsqueeze(-1), step, theta_old))
    return LineSearchResult(accepted, frac_acc, backtracks, kl_acc, gain_acc)
