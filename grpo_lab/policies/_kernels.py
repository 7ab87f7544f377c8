"""Fast CPU kernels of the classic-control MLPs (``policies/mlp.py``), kept apart from the maths:
``BatchedMLP(fast=False)`` runs the plain torch code the docstrings describe (``torch.tanh``,
``torch.baddbmm``), and tests/test_mlp.py holds the two equal (values and gradients).

- ``tanh`` / ``tanh_``: tanh(x) = 2 sigmoid(2x) - 1 with the exact derivative 1 - tanh^2 (torch's
  float32 tanh kernel is 2-4x slower than its sigmoid on x86 CPUs), in place where no one else
  saved the pre-activation.
- ``linear``: layers with fewer than ``NARROW`` outputs computed transposed (MKL's batched GEMMs
  with 1-2 output columns are 3-8x slower than the same products with the long side last).
"""

from __future__ import annotations

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
