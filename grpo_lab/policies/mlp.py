"""C independent MLPs as one tensor program (the classic-control actors and critics): every layer
weight has a leading configuration axis, so a whole sweep's networks run as one ``baddbmm`` per
layer (the PureJaxRL pattern, arXiv 2210.05639, in PyTorch), and one sampler draws an action per
row from each configuration's own generator.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensor = torch.Tensor


class _Tanh(torch.autograd.Function):
    """tanh(x) = 2 sigmoid(2x) - 1, with d tanh/dx = 1 - tanh(x)^2 (``aten.tanh_backward``)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        y = (x * 2.0).sigmoid_().mul_(2.0).sub_(1.0)  # in place: fewer fresh buffers
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.tanh_backward(grad, y)


_CONSTS: dict[torch.dtype, tuple[Tensor, Tensor]] = {}


def _tanh_raw_(x: Tensor) -> Tensor:
    """x <- 2 sigmoid(2x) - 1 in place, no autograd. The constants are 0-dim CPU tensors of x's
    dtype (usable on any device): a Python number would be wrapped in a new tensor per call."""
    if x.dtype not in _CONSTS:
        _CONSTS[x.dtype] = (torch.tensor(2.0, dtype=x.dtype), torch.tensor(1.0, dtype=x.dtype))
    two, one = _CONSTS[x.dtype]
    return x.mul_(two).sigmoid_().mul_(two).sub_(one)


class _TanhInplace(torch.autograd.Function):
    """``_Tanh`` written over its input (a fresh pre-activation that nothing else needs)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: Tensor) -> Tensor:
        _tanh_raw_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(x)
        return x

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        (y,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return torch.ops.aten.tanh_backward(grad, y)


def tanh_(x: Tensor) -> Tensor:
    """``tanh`` in place: x is overwritten with tanh(x) and returned. For pre-activations that
    no other operation saved for its backward (autograd raises if one did); it saves allocating
    (and first touching) a fresh buffer per layer, which costs as much as the arithmetic here."""
    if not (torch.is_grad_enabled() and x.requires_grad):  # no graph: skip the Function
        return _tanh_raw_(x)
    return _TanhInplace.apply(x)


def tanh(x: Tensor) -> Tensor:
    """The hidden activation, tanh(x) = 2 sigmoid(2x) - 1 (an identity), with the exact derivative
    1 - tanh(x)^2 in backward.

    Why not ``torch.tanh``: on x86 CPUs PyTorch's float32 tanh kernel takes 2-4x the time of its
    sigmoid kernel (measured: 1.5 ms against 0.4 ms for 262k elements on one thread), and the
    hidden activations are a third of a batched PPO update's time. The price is precision: the
    absolute error is a few float32 ulps of 1 (about 2e-7 against 3e-8 for ``torch.tanh``), which
    is far below the noise of any policy gradient. Shapes: any -> the same.
    """
    return _Tanh.apply(x)


class _NarrowLinear(torch.autograd.Function):
    """y = h W + b for a layer with few outputs, each product computed in its transposed form."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, h: Tensor, w: Tensor, b: Tensor
    ) -> Tensor:
        ctx.save_for_backward(h, w)
        y = _narrow(h, w, b)
        # with one output column or one row the transposed result is already contiguous, so
        # .contiguous() returns a view; a view out of a Function cannot be modified in place
        # (the hidden tanh does that), so it gets its own storage
        return y.clone() if y._base is not None else y

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad: Tensor
    ) -> tuple[Tensor | None, Tensor, Tensor]:
        h, w = ctx.saved_tensors  # type: ignore[attr-defined]
        dh = None
        if ctx.needs_input_grad[0]:  # type: ignore[attr-defined]
            # one output column: dh is an outer product, far cheaper as a broadcast product
            dh = grad * w.mT if w.shape[-1] == 1 else torch.bmm(grad, w.mT)
        return dh, torch.bmm(grad.mT, h).mT, grad.sum(1, keepdim=True)


def _narrow(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """h W + b as (W^T h^T + b^T)^T with W^T contiguous (a transposed view of the tiny W^T
    doubles the GEMM's time), returned contiguous (C, M, N)."""
    return torch.baddbmm(b.mT, w.mT.contiguous(), h.mT).mT.contiguous()


NARROW = 16  # output layers narrower than this use _NarrowLinear


def linear(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """One batched affine layer, y_c = h_c W_c + b_c. Shapes: h (C, M, K), w (C, K, N),
    b (C, 1, N) -> (C, M, N).

    For N < ``NARROW`` (a policy's logits, a critic's value) the products are computed transposed,
    W^T h^T with W^T made contiguous, and the backward likewise (dW = (g^T h)^T; with one output
    column dh = g W^T is an outer product, taken as a broadcast product): batched GEMMs with N = 1
    or 2 output columns are 3-8x slower on CPU than the same products with the long side last
    (measured with MKL, C = 16, M = 256, K = 64). The result is the same up to float rounding.
    """
    if w.shape[-1] < NARROW:
        if not torch.is_grad_enabled():  # no graph: skip the Function
            return _narrow(h, w, b)
        return _NarrowLinear.apply(h, w, b)
    return torch.baddbmm(b, h, w)


class BatchedMLP(torch.nn.Module):
    """C independent MLPs (tanh hidden layers) evaluated as one program: layer weights (C, in,
    out), biases (C, 1, out). Orthogonal initialisation per configuration (CleanRL's ``ppo.py``
    and Stable-Baselines3: gain sqrt(2) for hidden layers, ``out_gain`` for the output layer, zero
    biases), seeded per configuration so that configuration c's weights depend on ``seeds[c]``
    alone."""

    def __init__(
        self, sizes: Sequence[int], seeds: Sequence[int], out_gain: float, dtype: torch.dtype
    ) -> None:
        from grpo_lab.algorithms.common import derive_seed  # here: algorithms/ imports this module

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
        # the same Parameter objects as a plain list: ParameterList indexing costs ~10 us a call
        self._layers = list(zip(self.weights, self.biases, strict=True))

    def forward(self, x: Tensor) -> Tensor:
        """x (C, M, in) -> (C, M, out): h <- tanh(h W_c + b_c) per hidden layer, linear output."""
        n = len(self._layers)
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
