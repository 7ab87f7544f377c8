"""C independent MLPs as one tensor program (the classic-control actors and critics): every layer
weight has a leading configuration axis, so a whole sweep's networks run as one ``baddbmm`` per
layer (the PureJaxRL pattern, arXiv 2210.05639, in PyTorch), and one sampler draws an action per
row from each configuration's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from grpo_lab import seeding
from grpo_lab.policies._kernels import NARROW, linear, tanh, tanh_

Tensor = torch.Tensor

__all__ = [
    "NARROW",
    "BatchedMLP",
    "categorical",
    "categorical_from_uniform",
    "linear",
    "tanh",
    "tanh_",
]


class BatchedMLP(torch.nn.Module):
    """C independent MLPs (tanh hidden layers) evaluated as one program: layer weights (C, in,
    out), biases (C, 1, out). Orthogonal initialisation per configuration (CleanRL's ``ppo.py``
    and Stable-Baselines3: gain sqrt(2) for hidden layers, ``out_gain`` for the output layer, zero
    biases), seeded per configuration so that configuration c's weights depend on ``seeds[c]``
    alone.

    ``fast`` (default) runs the kernels of ``policies._kernels`` (tanh as 2 sigmoid(2x) - 1, in
    place; narrow layers transposed); ``fast=False`` the plain ``torch.baddbmm`` and ``torch.tanh``
    of the equations: the same numbers up to float rounding (tests/test_mlp.py)."""

    def __init__(
        self,
        sizes: Sequence[int],
        seeds: Sequence[int],
        out_gain: float,
        dtype: torch.dtype,
        fast: bool = True,
    ) -> None:
        super().__init__()
        C = len(seeds)
        self.weights = torch.nn.ParameterList()
        self.biases = torch.nn.ParameterList()
        for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            gain = out_gain if i == len(sizes) - 2 else math.sqrt(2.0)
            w = torch.empty(C, n_out, n_in, dtype=torch.float64)
            for c, s in enumerate(seeds):
                g = torch.Generator().manual_seed(seeding.derive_seed(s, i, seeding.MLP_INIT))
                torch.nn.init.orthogonal_(w[c], gain=gain, generator=g)
            self.weights.append(torch.nn.Parameter(w.transpose(1, 2).contiguous().to(dtype)))
            self.biases.append(torch.nn.Parameter(torch.zeros(C, 1, n_out, dtype=dtype)))
        # the same Parameter objects as a plain list: ParameterList indexing costs ~10 us a call
        self._layers = list(zip(self.weights, self.biases, strict=True))
        self.fast = fast

    def forward(self, x: Tensor) -> Tensor:
        """x (C, M, in) -> (C, M, out): h <- tanh(h W_c + b_c) per hidden layer, linear output."""
        n = len(self._layers)
        if not self.fast:  # the plain path: what the docstring's equation says
            for i, (w, b) in enumerate(self._layers):
                x = torch.baddbmm(b, x, w)  # (C, M, out_i)
                if i < n - 1:
                    x = torch.tanh(x)
            return x
        for i, (w, b) in enumerate(self._layers):
            x = linear(x, w, b)
            if i < n - 1:
                x = tanh_(x)  # x is this layer's own fresh output
        return x


def categorical(logits: Tensor, gens: Sequence[torch.Generator]) -> Tensor:
    """One action per row from softmax(logits) by inverse CDF, configuration c drawing its M
    uniforms from generator c (so a configuration's actions do not depend on the others in the
    batch). Shapes: logits (C, M, A) -> (C, M) long."""
    C, M, _ = logits.shape
    u = torch.stack([torch.rand(M, generator=g, dtype=logits.dtype) for g in gens])  # (C, M)
    return categorical_from_uniform(logits, u)


def categorical_from_uniform(logits: Tensor, u: Tensor) -> Tensor:
    """The inverse-CDF action for uniforms u drawn beforehand: the first a with
    u * sum_b p_b <= sum_{b <= a} p_b, p = softmax(logits). Shapes: logits (..., A), u (...) ->
    (...) long."""
    cdf = torch.softmax(logits, -1).cumsum(-1)
    return (cdf < u.unsqueeze(-1) * cdf[..., -1:]).sum(-1).clamp_max(logits.shape[-1] - 1)
