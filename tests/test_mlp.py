"""The batched MLP (grpo_lab/policies/mlp.py): its activation and narrow layer against torch's own
functions and finite differences, C independent networks against a loop, and the sampler's
frequencies against the softmax."""

import torch

from grpo_lab.policies.mlp import BatchedMLP, categorical, linear, tanh, tanh_

F64 = torch.float64


def test_tanh_equals_torch_tanh_and_its_derivative():
    x = torch.linspace(-20.0, 20.0, 4001, dtype=F64)
    torch.testing.assert_close(tanh(x), torch.tanh(x), rtol=0.0, atol=1e-15)
    x32 = x.float()
    assert float((tanh(x32).double() - torch.tanh(x)).abs().max()) < 3e-7  # a few ulps of 1
    xr = torch.randn(5, 7, dtype=F64, generator=torch.Generator().manual_seed(0))
    assert torch.autograd.gradcheck(tanh, (xr.requires_grad_(),))  # finite differences
    # in place on a fresh pre-activation: the same values and gradient
    assert torch.autograd.gradcheck(lambda v: tanh_(v * 1.0), (xr,))
    z = xr.detach() * 1.0
    assert tanh_(z) is z and torch.equal(z, tanh(xr.detach()))


def test_narrow_linear_equals_baddbmm_values_and_gradients():
    g = torch.Generator().manual_seed(1)
    for n_out in (1, 2, 3, 64):  # transposed path below 16 outputs, baddbmm above
        h = torch.randn(3, 9, 5, dtype=F64, generator=g, requires_grad=True)
        w = torch.randn(3, 5, n_out, dtype=F64, generator=g, requires_grad=True)
        b = torch.randn(3, 1, n_out, dtype=F64, generator=g, requires_grad=True)
        torch.testing.assert_close(linear(h, w, b), torch.baddbmm(b, h, w))
        assert torch.autograd.gradcheck(linear, (h, w, b))
    # no gradient is computed for an input that does not need one
    h0 = torch.randn(2, 4, 3, dtype=F64, generator=g)
    w0 = torch.randn(2, 3, 2, dtype=F64, generator=g, requires_grad=True)
    b0 = torch.zeros(2, 1, 2, dtype=F64, requires_grad=True)
    linear(h0, w0, b0).sum().backward()
    torch.testing.assert_close(w0.grad, h0.mT @ torch.ones(2, 4, 2, dtype=F64))


def test_batched_mlp_is_c_independent_mlps():
    net = BatchedMLP([4, 8, 8, 2], seeds=[0, 1, 2], out_gain=0.01, dtype=F64)
    x = torch.randn(3, 5, 4, dtype=F64, generator=torch.Generator().manual_seed(0))
    net.requires_grad_(False)
    out = net(x)
    for c in range(3):
        h = x[c]
        for i, (w, b) in enumerate(zip(net.weights, net.biases, strict=True)):
            h = h @ w[c] + b[c]
            h = torch.tanh(h) if i < 2 else h
        torch.testing.assert_close(out[c], h)
    # orthogonal initialisation with the CleanRL gains: W^T W = gain^2 I (in <= out) per config
    w0 = net.weights[0][1]  # (4, 8): 4 orthonormal rows of norm sqrt(2)
    torch.testing.assert_close(w0 @ w0.T, 2.0 * torch.eye(4, dtype=F64))
    assert float(net.weights[-1].abs().max()) < 0.05  # the output layer starts small (gain 0.01)
    # per-configuration seeds: the same seed, the same weights
    again = BatchedMLP([4, 8, 8, 2], seeds=[2], out_gain=0.01, dtype=F64)
    torch.testing.assert_close(again.weights[0][0], net.weights[0][2])


def test_categorical_frequencies_match_the_softmax_and_configs_are_independent():
    logits = torch.tensor([[[0.0, 1.0, -1.0]], [[2.0, 0.0, 0.0]]]).expand(2, 20_000, 3)
    gens = [torch.Generator().manual_seed(s) for s in (0, 1)]
    a = categorical(logits, gens)  # (2, 20000)
    p = torch.softmax(logits[:, 0], -1)  # (2, 3)
    freq = torch.stack([torch.bincount(a[c], minlength=3) for c in range(2)]).double() / 20_000
    # 5 binomial standard errors: sqrt(p (1 - p) / n) <= 0.0036
    assert float((freq - p.double()).abs().max()) < 5 * 0.0036
    # configuration 1's draws do not depend on configuration 0's generator
    again = categorical(logits[1:], [torch.Generator().manual_seed(1)])
    assert torch.equal(again[0], a[1])


def _flops(fn) -> dict[str, int]:
    """Matmul-type FLOPs of fn() by op name, counted by torch's FlopCounterMode (the counter the
    classic trainers' ``count_flops_every`` uses)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return {str(k).split(".")[-1]: v for k, v in fc.get_flop_counts()["Global"].items()}


def test_flop_counter_sees_the_custom_functions_forward_and_backward():
    """The independent count: a layer y = h W + b of shape in -> out on M rows costs 2 M in out
    FLOPs per configuration forward (one multiply and one add per weight and row); backward
    dW = h^T g the same and dh = g W^T the same again when h needs a gradient. The narrow layers
    (``_NarrowLinear``, out < 16: its forward and backward are a custom autograd Function) and
    the in-place tanh Function must be seen by the dispatch-mode counter. One exception: a single
    output column's dh is a broadcast product (M in multiplies, elementwise: not counted)."""
    C, M, D, A = 3, 5, 4, 2
    x = torch.randn(C, M, D, dtype=F64, generator=torch.Generator().manual_seed(0))
    for H in (8, 32):  # hidden layers narrow (custom Function) and wide (baddbmm)
        net = BatchedMLP([D, H, H, A], seeds=[0, 1, 2], out_gain=0.01, dtype=F64)
        units = D * H + H * H + A * H  # in x out summed over the layers
        fwd = _flops(lambda net=net: net(x))
        assert sum(fwd.values()) == 2 * C * M * units
        both = _flops(lambda net=net: net(x).sum().backward())
        # backward: dW of every layer, dh of all but the first (x needs no gradient)
        assert sum(both.values()) - sum(fwd.values()) == 2 * C * M * (units + H * H + A * H)
        assert both["bmm"] == 2 * C * M * (units + H * H + A * H)  # the backward's products
        xg = x.clone().requires_grad_(True)
        withx = _flops(lambda net=net, xg=xg: net(xg).sum().backward())
        assert sum(withx.values()) == sum(both.values()) + 2 * C * M * D * H  # + dx
    # the custom Function alone: a narrow output layer of 2 columns, forward and backward
    h = torch.randn(C, M, 16, dtype=F64, requires_grad=True)
    w = torch.randn(C, 16, 2, dtype=F64, requires_grad=True)
    b = torch.zeros(C, 1, 2, dtype=F64, requires_grad=True)
    assert _flops(lambda: linear(h, w, b).sum().backward()) == {
        "baddbmm": 2 * C * M * 16 * 2,
        "bmm": 2 * 2 * C * M * 16 * 2,
    }
    # one output column (a critic's value head): dh = g w^T is a broadcast product, not counted
    w1 = torch.randn(C, 16, 1, dtype=F64, requires_grad=True)
    b1 = torch.zeros(C, 1, 1, dtype=F64, requires_grad=True)
    assert _flops(lambda: linear(h, w1, b1).sum().backward()) == {
        "baddbmm": 2 * C * M * 16,
        "bmm": 2 * C * M * 16,
    }


def test_narrow_hidden_layers_and_single_rows_train():
    """A hidden width below NARROW of 1 (one output column) and a batch of one row: the narrow
    layer's transposed result is already contiguous, and must not come out as a view, which the
    in-place hidden tanh could not modify under autograd (it raised before). Checked against the
    same network written with torch.tanh and plain matmuls."""
    import torch

    from grpo_lab.policies.mlp import BatchedMLP

    for sizes, rows in (([4, 1, 1, 2], 5), ([4, 8, 8, 2], 1)):
        m = BatchedMLP(sizes, [0, 1], 0.01, torch.float64)
        x = torch.randn(2, rows, 4, dtype=torch.float64)
        y = m(x)
        y.sum().backward()
        h = x
        for i, (w, b) in enumerate(zip(m.weights, m.biases, strict=True)):
            h = h @ w + b
            if i < len(m.weights) - 1:
                h = torch.tanh(h)
        torch.testing.assert_close(y, h)
        assert all(w.grad is not None and torch.isfinite(w.grad).all() for w in m.weights)


def test_fast_kernels_equal_the_plain_torch_path():
    """BatchedMLP(fast=True) (tanh as 2 sigmoid(2x) - 1 in place, narrow layers transposed) against
    fast=False (torch.baddbmm, torch.tanh): the same outputs and parameter gradients, to float64
    rounding and within a few float32 ulps."""
    import torch

    from grpo_lab.policies.mlp import BatchedMLP

    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-6)):
        for sizes in ([4, 64, 64, 2], [4, 64, 64, 1], [3, 8, 20]):
            nets = [BatchedMLP(sizes, [0, 1, 2], 0.01, dtype, fast=f) for f in (True, False)]
            x = torch.randn(
                3, 17, sizes[0], dtype=dtype, generator=torch.Generator().manual_seed(0)
            )
            ys = [net(x) for net in nets]
            torch.testing.assert_close(ys[0], ys[1], rtol=tol, atol=tol)
            for y in ys:
                (y * torch.linspace(-1, 1, y.shape[-1], dtype=dtype)).sum().backward()
            for pf, pp in zip(nets[0].parameters(), nets[1].parameters(), strict=True):
                torch.testing.assert_close(pf.grad, pp.grad, rtol=10 * tol, atol=10 * tol)
