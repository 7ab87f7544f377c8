"""Tests of grpo_lab/optim.py against torch.optim run one configuration at a time."""

import pytest
import torch

from grpo_lab.optim import BatchedAdam, BatchedSGD, make_optimizer


def _quadratic_grads(p: torch.Tensor, target: torch.Tensor) -> None:
    loss = ((p - target) ** 2 * torch.arange(1, p.shape[-1] + 1)).sum()
    p.grad = None
    loss.backward()


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_batched_optimiser_equals_torch_per_config(name):
    # The reference is torch.optim.{Adam, SGD}, one optimiser per configuration.
    g = torch.Generator().manual_seed(0)
    c, d = 4, 5
    init = torch.randn(c, d, generator=g, dtype=torch.float64)
    target = torch.randn(c, d, generator=g, dtype=torch.float64)
    lrs = torch.tensor([1e-3, 1e-2, 0.1, 0.3], dtype=torch.float64)
    batched = init.clone().requires_grad_(True)
    opt = make_optimizer(name, [batched], lrs)
    singles = [init[i].clone().requires_grad_(True) for i in range(c)]
    ref_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    refs = [ref_cls([p], lr=lrs[i].item()) for i, p in enumerate(singles)]
    for _ in range(25):
        _quadratic_grads(batched, target)
        opt.step()
        for i, (p, o) in enumerate(zip(singles, refs, strict=True)):
            _quadratic_grads(p, target[i])
            o.step()
    torch.testing.assert_close(batched.detach(), torch.stack([p.detach() for p in singles]))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("lr", ["shared", "per-config"])
def test_adam_fused_and_multi_tensor_paths_equal_torch_adam(fused, lr):
    # Both implementations of the step (PyTorch's fused kernel, rows grouped by lr value; the
    # multi-tensor ops) against torch.optim.Adam per configuration, with two parameters, repeated
    # lr values, and gradients set to None between steps (fresh gradient tensors).
    g = torch.Generator().manual_seed(5)
    c = 4
    lrs = torch.tensor([1e-2, 3e-2, 1e-2, 0.1], dtype=torch.float64)
    inits = [torch.randn(c, 3, 2, generator=g, dtype=torch.float64), torch.randn(c, 5, generator=g)]
    inits[1] = inits[1].double()
    ps = [t.clone().requires_grad_(True) for t in inits]
    opt = BatchedAdam(ps, lr=lrs if lr == "per-config" else 0.05, fused=fused)
    assert opt.fused == fused
    refs = [[t[i].clone().requires_grad_(True) for t in inits] for i in range(c)]
    ref_lr = [float(x) if lr == "per-config" else 0.05 for x in lrs]
    ref_opts = [torch.optim.Adam(r, lr=ref_lr[i]) for i, r in enumerate(refs)]
    for step in range(6):
        for p in ps:
            p.grad = None
        loss = sum((p * (step + 1.0)).sin().sum() for p in ps)
        loss.backward()
        opt.step()
        for r, o in zip(refs, ref_opts, strict=True):
            o.zero_grad()
            sum((p * (step + 1.0)).sin().sum() for p in r).backward()
            o.step()
    for k, p in enumerate(ps):
        torch.testing.assert_close(p.detach(), torch.stack([r[k].detach() for r in refs]))


@pytest.mark.parametrize("name, fused", [("adam", True), ("adam", False), ("sgd", False)])
def test_a_per_config_lr_changed_between_steps_equals_torch_per_config(name, fused):
    # What an lr schedule does (grpo.py lr_schedule): param_groups[0]["lr"] is replaced by a new
    # (C,) tensor before each step, each configuration on its own sequence (here rows decay,
    # grow, and two rows meet at one value, which the fused path then steps in one call). The
    # reference: torch.optim per configuration, its float lr set to the same value each step.
    g = torch.Generator().manual_seed(2)
    c, d = 3, 4
    init = torch.randn(c, d, generator=g, dtype=torch.float64)
    target = torch.randn(c, d, generator=g, dtype=torch.float64)
    seqs = [[0.1 * 0.5**t for t in range(6)], [0.01 * 1.5**t for t in range(6)]]
    seqs.append([0.1 * 0.5**t if t != 3 else 0.01 * 1.5**3 for t in range(6)])  # meets row 1
    batched = init.clone().requires_grad_(True)
    lr0 = torch.tensor([s[0] for s in seqs], dtype=torch.float64)
    opt = (
        BatchedAdam([batched], lr=lr0, fused=fused)
        if name == "adam"
        else BatchedSGD([batched], lr0)
    )
    singles = [init[i].clone().requires_grad_(True) for i in range(c)]
    ref_cls = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}[name]
    refs = [ref_cls([p], lr=seqs[i][0]) for i, p in enumerate(singles)]
    for t in range(6):
        opt.param_groups[0]["lr"] = torch.tensor([s[t] for s in seqs], dtype=torch.float64)
        _quadratic_grads(batched, target)
        opt.step()
        for i, (p, o) in enumerate(zip(singles, refs, strict=True)):
            o.param_groups[0]["lr"] = seqs[i][t]
            _quadratic_grads(p, target[i])
            o.step()
    torch.testing.assert_close(batched.detach(), torch.stack([p.detach() for p in singles]))


def test_scalar_lr_and_zero_grad():
    p = torch.ones(3, requires_grad=True)
    opt = BatchedSGD([p], lr=0.5)
    p.grad = torch.tensor([1.0, 2.0, 4.0])
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.5, 0.0, -1.0]))
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("lr", [0.0, -1.0, float("nan"), torch.tensor([0.1, -0.1])])
def test_bad_lr(lr):
    with pytest.raises(ValueError, match="lr must be positive"):
        BatchedAdam([torch.zeros(2, 3, requires_grad=True)], lr=lr)


def test_lr_shape_must_match_config_axis():
    p = torch.zeros(2, 3, requires_grad=True)
    opt = BatchedSGD([p], lr=torch.tensor([0.1, 0.2, 0.3]))
    p.grad = torch.ones(2, 3)
    with pytest.raises(ValueError, match=r"lr has shape \(3,\)"):
        opt.step()


def test_unknown_optimizer():
    with pytest.raises(
        ValueError, match=r"unknown optimizer 'rmsprop'; choose one of \['adam', 'sgd'\]"
    ):
        make_optimizer("rmsprop", [torch.zeros(1, requires_grad=True)], 0.1)


def test_flat_parameters_collect_gradients_and_steps_reach_every_parameter():
    # The reference: the same two-layer network with ordinary separate parameters and
    # torch.optim.Adam per configuration.
    from grpo_lab.optim import flat_parameters

    g = torch.Generator().manual_seed(3)
    C = 3
    init = [torch.randn(C, 4, 5, generator=g), torch.randn(C, 1, 5, generator=g)]
    init = [t.double() for t in init] + [torch.randn(C, 5, 2, generator=g, dtype=torch.float64)]
    x = torch.randn(C, 6, 4, generator=g, dtype=torch.float64)

    def loss_of(w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
        return (torch.tanh(x @ w1 + b1) @ w2).pow(2).sum()

    ps = [torch.nn.Parameter(t.clone()) for t in init]
    flat = flat_parameters(ps)
    assert flat.shape == (C, 4 * 5 + 5 + 5 * 2)
    lrs = torch.tensor([1e-2, 3e-2, 1e-1], dtype=torch.float64)
    opt = BatchedAdam([flat], lr=lrs)
    refs = [[torch.nn.Parameter(t[c].clone()) for t in init] for c in range(C)]
    ref_opts = [torch.optim.Adam(r, lr=float(lrs[c])) for c, r in enumerate(refs)]
    for _ in range(5):
        opt.zero_grad(set_to_none=False)
        loss_of(*ps).backward()
        # the flat gradient holds every parameter's gradient, row c = configuration c
        grads = torch.cat([p.grad.reshape(C, -1) for p in ps], 1)
        torch.testing.assert_close(flat.grad, grads)
        opt.step()
        for c, (r, o) in enumerate(zip(refs, ref_opts, strict=True)):
            o.zero_grad()
            (torch.tanh(x[c] @ r[0] + r[1]) @ r[2]).pow(2).sum().backward()
            o.step()
    for i, p in enumerate(ps):  # the optimiser stepped the buffer; the parameters are views
        torch.testing.assert_close(p.detach(), torch.stack([r[i].detach() for r in refs]))


def test_flat_parameters_bad_input():
    from grpo_lab.optim import flat_parameters

    with pytest.raises(ValueError, match="params is empty"):
        flat_parameters([])
    with pytest.raises(ValueError, match="same leading configuration axis"):
        flat_parameters([torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(3))])
