"""Policies over a finite state space, batched over C configurations.

Every policy here exposes the whole table ``log_probs() -> (C, S, A)`` (or (S, A) unbatched),
differentiable in its parameters: on a tabular MDP the states are few, so the exact quantities
(J, grad J, KL per state) and the sampled ones (log-probabilities of the actions taken) are read
off the same table.

    TabularSoftmaxPolicy   pi(a|s) = softmax(theta_s)_a,            theta (C, S, A)
    MLPPolicy              pi(.|s) = softmax(W2 tanh(W1 phi(s) + b1) + b2), features phi (S, F)
    SharedActorCritic      the MLPPolicy trunk h(s) = tanh(W1 phi(s) + b1) with two heads:
                           pi(.|s) = softmax(W2 h(s) + b2) and V(s) = w_v . h(s) + b_v

``frozen(policy)`` is a parameter-free copy: pi_old for the ratio, or the reference policy of the
KL penalty.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from grpo_lab.registry import Registry

Tensor = torch.Tensor


def _seeds(seed: int | list[int], num_configs: int | None) -> list[int]:
    if isinstance(seed, list):
        if num_configs is not None and len(seed) != num_configs:
            raise ValueError(f"seed lists {len(seed)} seeds for num_configs={num_configs}")
        return seed
    return [seed + c for c in range(num_configs or 1)]


class TabularSoftmaxPolicy(nn.Module):
    """pi(a|s) = exp(theta_{s,a}) / sum_b exp(theta_{s,b}): one free logit per (s, a).

    Shapes: logits (C, S, A) with ``num_configs = C``, or (S, A) when ``num_configs`` is None.
    ``init_std = 0`` starts uniform; otherwise logits ~ N(0, init_std^2) drawn from one generator
    per configuration seeded ``seed + c`` (or ``seed[c]``), so a batched policy equals the stack of
    the unbatched ones with the same seeds.
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        num_configs: int | None = None,
        *,
        init_std: float = 0.0,
        seed: int | list[int] = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if num_states < 1 or num_actions < 2:
            raise ValueError(
                f"need num_states >= 1 and num_actions >= 2, got {num_states}, {num_actions}"
            )
        tables = []
        for s in _seeds(seed, num_configs):
            g = torch.Generator().manual_seed(s)
            tables.append(init_std * torch.randn(num_states, num_actions, generator=g, dtype=dtype))
        logits = torch.stack(tables) if num_configs is not None else tables[0]
        self.logits = nn.Parameter(logits.to(device))  # (C, S, A) or (S, A)

    @property
    def num_configs(self) -> int | None:
        return self.logits.shape[0] if self.logits.dim() == 3 else None

    def log_probs(self) -> Tensor:
        """log pi(a|s) for every state and action: (C, S, A) or (S, A)."""
        return torch.log_softmax(self.logits, dim=-1)

    def probs(self) -> Tensor:
        return self.log_probs().exp()


class MLPPolicy(nn.Module):
    """pi(.|s) = softmax(W2 tanh(W1 phi(s) + b1) + b2) over fixed state features phi (S, F).

    The weights of C configurations are stacked on a leading axis and applied with batched matrix
    products, so C independent networks advance as one program. Default features: one-hot states.
    Weights are initialised like ``nn.Linear`` (uniform in +-1/sqrt(fan_in)) from one generator
    per configuration; the output layer is scaled by ``out_scale`` (small: a near-uniform start).
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        num_configs: int | None = None,
        *,
        features: Tensor | None = None,
        hidden: int = 32,
        out_scale: float = 0.01,
        seed: int | list[int] = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__()
        if features is None:
            features = torch.eye(num_states, dtype=dtype)
        if features.dim() != 2 or features.shape[0] != num_states:
            raise ValueError(
                f"features must be (S, F) with S = {num_states}, got {tuple(features.shape)}"
            )
        f = features.shape[1]
        self.register_buffer("features", features.to(dtype=dtype, device=device))  # (S, F)
        w1s, b1s, w2s, b2s = [], [], [], []
        for s in _seeds(seed, num_configs):
            g = torch.Generator().manual_seed(s)
            k1, k2 = 1 / math.sqrt(f), 1 / math.sqrt(hidden)
            w1s.append((torch.rand(f, hidden, generator=g, dtype=dtype) * 2 - 1) * k1)
            b1s.append((torch.rand(hidden, generator=g, dtype=dtype) * 2 - 1) * k1)
            w2s.append((torch.rand(hidden, num_actions, generator=g, dtype=dtype) * 2 - 1) * k2)
            b2s.append(torch.zeros(num_actions, dtype=dtype))

        def param(xs: list[Tensor]) -> nn.Parameter:
            x = torch.stack(xs) if num_configs is not None else xs[0]
            return nn.Parameter(x.to(device))

        self.w1, self.b1 = param(w1s), param(b1s)  # (C, F, H), (C, H)
        self.w2, self.b2 = param([w * out_scale for w in w2s]), param(b2s)  # (C, H, A), (C, A)

    @property
    def num_configs(self) -> int | None:
        return self.w1.shape[0] if self.w1.dim() == 3 else None

    def log_probs(self) -> Tensor:
        """log pi(a|s) for every state and action: (C, S, A) or (S, A)."""
        h = torch.tanh(self.features @ self.w1 + self.b1.unsqueeze(-2))  # (C, S, H)
        logits = h @ self.w2 + self.b2.unsqueeze(-2)  # (C, S, A)
        return torch.log_softmax(logits, dim=-1)

    def probs(self) -> Tensor:
        return self.log_probs().exp()


class SharedActorCritic(MLPPolicy):
    """An actor-critic with one shared trunk (PPO arXiv 1707.06347 §5, before eq. 9: "a neural
    network architecture that shares parameters between the policy and value function"):

        h(s) = tanh(W1 phi(s) + b1),   pi(.|s) = softmax(W2 h(s) + b2),   V(s) = w_v . h(s) + b_v

    The policy part (W1, b1, W2, b2) is ``MLPPolicy``'s, drawn from the same generator first, so
    at initialisation ``log_probs`` equals the ``MLPPolicy`` of the same seed; the value head w_v
    is drawn next from that generator like ``nn.Linear`` (uniform in +-1/sqrt(H)), b_v = 0.
    A loss L_policy + c1 L_value sends both terms' gradients through (W1, b1): the value
    coefficient c1 weighs value against policy learning only here, in the trunk.
    Shapes: W1 (C, F, H), b1 (C, H), W2 (C, H, A), b2 (C, A), w_v (C, H, 1), b_v (C, 1)
    (without the leading C when ``num_configs`` is None).
    """

    def __init__(
        self,
        num_states: int,
        num_actions: int,
        num_configs: int | None = None,
        *,
        features: Tensor | None = None,
        hidden: int = 32,
        out_scale: float = 0.01,
        seed: int | list[int] = 0,
        dtype: torch.dtype = torch.float64,
        device: str | torch.device = "cpu",
    ) -> None:
        super().__init__(
            num_states,
            num_actions,
            num_configs,
            features=features,
            hidden=hidden,
            out_scale=out_scale,
            seed=seed,
            dtype=dtype,
            device=device,
        )
        f = self.features.shape[1]
        wvs = []
        for s in _seeds(seed, num_configs):
            g = torch.Generator().manual_seed(s)
            for shape in ((f, hidden), (hidden,), (hidden, num_actions)):  # MLPPolicy's draws
                torch.rand(shape, generator=g, dtype=dtype)
            wvs.append(
                (torch.rand(hidden, 1, generator=g, dtype=dtype) * 2 - 1) / math.sqrt(hidden)
            )
        wv = torch.stack(wvs) if num_configs is not None else wvs[0]
        bv = torch.zeros(*([num_configs] if num_configs is not None else []), 1, dtype=dtype)
        self.wv = nn.Parameter(wv.to(device))  # (C, H, 1)
        self.bv = nn.Parameter(bv.to(device))  # (C, 1)

    def _trunk(self) -> Tensor:
        """h(s) for every state: (C, S, H) or (S, H)."""
        return torch.tanh(self.features @ self.w1 + self.b1.unsqueeze(-2))

    def log_probs(self) -> Tensor:
        """log pi(a|s) for every state and action: (C, S, A) or (S, A)."""
        return torch.log_softmax(self._trunk() @ self.w2 + self.b2.unsqueeze(-2), dim=-1)

    def values(self) -> Tensor:
        """V(s) for every state: (C, S) or (S,)."""
        return (self._trunk() @ self.wv).squeeze(-1) + self.bv


def frozen(policy: nn.Module) -> nn.Module:
    """A copy of ``policy`` that takes no gradient: pi_old, or the reference policy pi_ref."""
    twin = copy.deepcopy(policy)
    twin.requires_grad_(False)
    return twin


# policy classes by name: a protocol's "policy" field
POLICIES: Registry[type[nn.Module]] = Registry("policy")
POLICIES.add("tabular", TabularSoftmaxPolicy)
POLICIES.add("mlp", MLPPolicy)
PolicyName = POLICIES.name_type()
