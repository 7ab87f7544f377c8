"""Pieces shared by the tabular algorithms: per-config random streams (from ``grpo_lab.seeding``),
gathering log-probs of the actions taken from a policy table, and the run record with its
divergence bookkeeping."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel

from grpo_lab.seeding import derive_seed, iteration_generators

Tensor = torch.Tensor

__all__ = ["derive_seed", "iteration_generators"]


def _dotted(d: dict, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_batchable(configs: Sequence[BaseModel], batchable: Sequence[str]) -> None:
    """Raise unless the configurations differ only in the ``batchable`` fields (dotted names such
    as ``loss.eps_low``): the rest fixes shapes or code paths and must be shared by one batch."""
    if not configs:
        raise ValueError("configs is empty")
    first = {k: v for k, v in _dotted(configs[0].model_dump()).items() if k not in batchable}
    for i, c in enumerate(configs[1:], start=1):
        other = _dotted(c.model_dump())
        diff = sorted(k for k in first if first[k] != other.get(k))
        if diff:
            raise ValueError(
                f"configs[0] and configs[{i}] differ in {diff}; one batched run may differ only "
                f"in {list(batchable)} (run the others as separate batches)"
            )


def gather_logp(table: Tensor, states: Tensor, actions: Tensor) -> Tensor:
    """log pi(a_t|s_t) read off a policy table. Shapes: table (C, S, A); states, actions (C, ...)
    long, e.g. (C, N, T) padded or (C, K) packed -> the same shape."""
    c, s, a = table.shape
    idx = (states * a + actions).reshape(c, -1)  # (C, N*T)
    return table.reshape(c, s * a).gather(1, idx).reshape(states.shape)


def group_permutations(gens: list[torch.Generator], num_groups: int) -> Tensor:
    """A random order of the groups for each configuration, from its own generator: (C, num_groups)."""
    return torch.stack([torch.randperm(num_groups, generator=g) for g in gens])


@dataclass
class RunRecord:
    """Everything a batched run measured: C configurations side by side.

    step     name -> (C, K) tensor, one column per optimiser step (NaN after divergence)
    iter     name -> (C, I) tensor, one column per iteration (sampled batch + exact return)
    status   "ok" or "diverged" per configuration; diverged_at: the optimiser step it happened at
    final_probs (C, S, A) the last policy; j_final (C,) its exact return; j_star (C,) the optimum
    summary  name -> (C,) tensor: per-run figures of experiments without steps (gradient tests)
    """

    step: dict[str, list[Tensor]] = field(default_factory=dict)
    iter: dict[str, list[Tensor]] = field(default_factory=dict)
    status: list[str] = field(default_factory=list)
    diverged_at: list[int | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    final_probs: Tensor | None = None
    j_final: Tensor | None = None
    j_star: Tensor | None = None
    summary: dict[str, Tensor] = field(default_factory=dict)

    def log(self, where: str, metrics: dict[str, Tensor], alive: Tensor) -> None:
        target = self.step if where == "step" else self.iter
        for k, v in metrics.items():
            v = torch.as_tensor(v).detach().to(torch.float64).cpu().expand(alive.shape)
            target.setdefault(k, []).append(torch.where(alive.cpu(), v, float("nan")))

    def log_steps(self, where: str, metrics: dict[str, Tensor], alive: Tensor) -> None:
        """Log K columns at once: each metric and ``alive`` (C, K), as K calls of ``log`` would
        (one conversion per metric instead of one per metric and step)."""
        target = self.step if where == "step" else self.iter
        alive = alive.cpu()
        for k, v in metrics.items():
            v = torch.where(alive, v.detach().to(torch.float64).cpu(), float("nan"))
            target.setdefault(k, []).extend(v.unbind(-1))

    def stacked(self, where: str) -> dict[str, Tensor]:
        source = self.step if where == "step" else self.iter
        return {k: torch.stack(v, dim=-1) for k, v in source.items()}

    def mark_diverged(self, newly: Tensor, step: int, reason: str) -> None:
        for c in torch.nonzero(newly).flatten().tolist():
            self.status[c] = "diverged"
            self.diverged_at[c] = step
            self.error[c] = reason


def guarded_step(
    loss: Tensor,
    params: Sequence[Tensor],
    opt: torch.optim.Optimizer,
    alive: Tensor,
    rec: RunRecord,
    step: int,
    before_step: Callable[[], None] | None = None,
) -> Tensor:
    """One optimiser step of C independent configurations, guarded: a configuration whose loss or
    updated parameters are non-finite is marked diverged at ``step`` (``rec``) and keeps its
    parameters from before the step; the others step as usual. ``before_step`` runs between
    backward and the step (e.g. per-configuration gradient clipping).

    The configurations are independent, so the gradient of loss.sum() is each one's own.
    Shapes: loss (C,); params each (C, ...); alive (C,) bool, updated in place and returned.
    """
    C = alive.shape[0]
    backup = [p.detach().clone() for p in params]
    opt.zero_grad()
    loss.sum().backward()
    if before_step is not None:
        before_step()
    opt.step()
    ok = torch.isfinite(loss.detach())
    for p in params:
        ok &= torch.isfinite(p.detach()).reshape(C, -1).all(-1)
    newly = alive & ~ok
    if bool(newly.any()):
        rec.mark_diverged(newly, step, "non-finite loss or parameters")
        alive &= ok
    with torch.no_grad():
        for p, b in zip(params, backup, strict=True):
            keep = alive.reshape(-1, *([1] * (p.dim() - 1)))
            p.copy_(torch.where(keep, p, b))
    return alive
