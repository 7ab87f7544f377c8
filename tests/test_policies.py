"""Tests of grpo_lab/policies/tabular.py: distributions, batching and frozen copies."""

import pytest
import torch

from grpo_lab.policies.tabular import MLPPolicy, SharedActorCritic, TabularSoftmaxPolicy, frozen


@pytest.mark.parametrize("cls", [TabularSoftmaxPolicy, MLPPolicy, SharedActorCritic])
def test_rows_are_distributions_and_batched_equals_stacked(cls):
    kw = {"init_std": 1.0} if cls is TabularSoftmaxPolicy else {}
    batched = cls(5, 3, num_configs=4, seed=10, **kw)
    p = batched.probs()
    assert p.shape == (4, 5, 3)
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 5, dtype=torch.float64))
    # configuration c of the batch is the unbatched policy with seed 10 + c
    for c in range(4):
        single = cls(5, 3, seed=10 + c, **kw)
        torch.testing.assert_close(single.probs(), p[c])


def test_softmax_closed_form_and_uniform_start():
    pol = TabularSoftmaxPolicy(2, 3)
    torch.testing.assert_close(pol.probs(), torch.full((2, 3), 1 / 3, dtype=torch.float64))
    with torch.no_grad():
        pol.logits[0] = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    e = torch.tensor([1.0, 2.718281828459045, 7.38905609893065], dtype=torch.float64)
    torch.testing.assert_close(pol.probs()[0], e / e.sum())


def test_mlp_gradients_are_per_config():
    # The loss of configuration 0 moves only configuration 0's weights.
    pol = MLPPolicy(4, 2, num_configs=3)
    pol.log_probs()[0, 1, 0].backward()
    assert pol.w1.grad[0].abs().sum() > 0
    assert pol.w1.grad[1:].abs().sum() == 0


def test_frozen_copy_takes_no_gradient_and_does_not_follow():
    pol = TabularSoftmaxPolicy(3, 2, init_std=1.0)
    old = frozen(pol)
    assert not any(p.requires_grad for p in old.parameters())
    with torch.no_grad():
        pol.logits.add_(1.0)
        pol.logits[0, 0] += 3.0
    assert not torch.allclose(old.probs(), pol.probs())


def test_bad_input():
    with pytest.raises(ValueError, match="num_actions >= 2"):
        TabularSoftmaxPolicy(3, 1)
    with pytest.raises(ValueError, match=r"features must be \(S, F\)"):
        MLPPolicy(3, 2, features=torch.eye(4))
    with pytest.raises(ValueError, match="seed lists 2 seeds"):
        TabularSoftmaxPolicy(3, 2, num_configs=3, seed=[1, 2])


def test_shared_actor_critic_heads_closed_form_and_init():
    """Truth: the formulas h = tanh(W1 onehot(s) + b1), pi = softmax(W2 h + b2), V = w_v . h + b_v
    written out per state; the policy part starts as MLPPolicy with the same seed; batched values
    equal the stacked unbatched ones; the value head starts non-constant with b_v = 0."""
    net = SharedActorCritic(4, 3, num_configs=2, hidden=6, seed=[5, 9])
    mlp = MLPPolicy(4, 3, num_configs=2, hidden=6, seed=[5, 9])
    torch.testing.assert_close(net.log_probs(), mlp.log_probs(), rtol=0, atol=0)
    for c in range(2):
        for s in range(4):
            h = torch.tanh(net.w1[c, s] + net.b1[c])  # onehot(s) @ W1 = row s
            logits = h @ net.w2[c] + net.b2[c]
            torch.testing.assert_close(net.log_probs()[c, s], torch.log_softmax(logits, -1))
            torch.testing.assert_close(net.values()[c, s], h @ net.wv[c, :, 0] + net.bv[c, 0])
        one = SharedActorCritic(4, 3, hidden=6, seed=[5, 9][c])
        torch.testing.assert_close(one.values(), net.values()[c])
        assert one.values().shape == (4,)
    assert net.values().shape == (2, 4)
    assert float(net.bv.detach().abs().max()) == 0.0 and float(net.values().detach()[0].std()) > 0


def test_shared_actor_critic_value_gradient_reaches_the_trunk_not_the_policy_head():
    """Truth: V does not depend on the policy head W2, b2; it does on the trunk W1; and one
    configuration's value moves only its own weights."""
    net = SharedActorCritic(4, 2, num_configs=3, hidden=5)
    net.values()[1, 2].backward()
    assert net.w2.grad is None or float(net.w2.grad.abs().max()) == 0.0
    assert float(net.w1.grad[1].abs().sum()) > 0 and float(net.wv.grad[1].abs().sum()) > 0
    assert float(net.w1.grad[[0, 2]].abs().sum()) == 0.0
