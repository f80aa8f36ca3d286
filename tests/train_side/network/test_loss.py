import numpy as np
import pytest
import torch
import torch.nn.functional as F

from train_side.network.loss import linear_cross_entropy, next_token_loss, token_losses
from train_side.network.model import FrozenHead

N, D, V = 10, 8, 50


def naive_loss(y, weight, targets, bias=None, softcap=None):
    logits = F.linear(y, weight, bias)
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    return F.cross_entropy(logits, targets)


def inputs(dtype):
    g = torch.Generator().manual_seed(0)
    y = torch.randn(N, D, generator=g, dtype=dtype)
    weight = 2 * torch.randn(V, D, generator=g, dtype=dtype)  # logits of a few units, so the softcap bites
    bias = torch.randn(V, generator=g, dtype=dtype)
    targets = torch.randint(V, (N,), generator=g)
    return y, weight, bias, targets


@pytest.mark.parametrize("chunk_size", [1, 3, 64])
@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_loss_and_gradient_equal_naive_autograd(with_bias, softcap, chunk_size):
    y, weight, bias, targets = inputs(torch.float64)
    bias = bias if with_bias else None
    fused_y, naive_y = y.clone().requires_grad_(), y.clone().requires_grad_()
    fused = linear_cross_entropy(fused_y, weight, targets, bias, softcap, chunk_size)
    naive = naive_loss(naive_y, weight, targets, bias, softcap)
    (2.5 * fused).backward()  # the stored gradient is scaled by the incoming one
    (2.5 * naive).backward()
    torch.testing.assert_close(fused, naive, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fused_y.grad, naive_y.grad, rtol=1e-10, atol=1e-12)


def test_fused_loss_without_gradient_gives_the_same_value():
    y, weight, bias, targets = inputs(torch.float32)
    with torch.no_grad():
        fused = linear_cross_entropy(y, weight, targets, bias, 3.0, chunk_size=4)
    torch.testing.assert_close(fused, naive_loss(y, weight, targets, bias, 3.0))


def frozen_head() -> FrozenHead:
    rng = np.random.default_rng(0)
    weights = {"lm_head.weight": rng.standard_normal((V, D), dtype=np.float32),
               "lm_head.bias": rng.standard_normal(V, dtype=np.float32)}
    return FrozenHead(weights, {"logit_softcap": 5.0})


def test_next_token_loss_scores_each_target_from_the_position_before_it():
    head = frozen_head()
    torch.manual_seed(0)
    y = torch.randn(2, 6, D, requires_grad=True)
    input_ids = torch.randint(V, (2, 6))
    loss_mask = torch.tensor([[1, 0, 0, 1, 1, 0],  # a target at position 0 has no predictor
                              [0, 0, 1, 1, 0, 0]])  # last two: right padding
    loss = next_token_loss(y, input_ids, loss_mask, head, chunk_size=2)
    loss.backward()

    naive_y = y.detach().clone().requires_grad_()
    predictors, targets = [(0, 2), (0, 3), (1, 1), (1, 2)], [(0, 3), (0, 4), (1, 2), (1, 3)]
    logits = head(torch.stack([naive_y[p] for p in predictors]))
    naive = F.cross_entropy(logits, torch.stack([input_ids[t] for t in targets]))
    naive.backward()
    torch.testing.assert_close(loss, naive, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y.grad, naive_y.grad, rtol=1e-5, atol=1e-7)
    assert (y.grad.abs().sum(-1) > 0).sum() == len(predictors)  # nothing else gets a gradient


def test_next_token_loss_refuses_a_batch_without_targets():
    with pytest.raises(ValueError, match="no target"):
        next_token_loss(torch.randn(1, 4, D), torch.zeros(1, 4, dtype=torch.long),
                        torch.tensor([[1, 0, 0, 0]]), frozen_head())


def test_token_losses_average_to_the_batch_loss():
    torch.manual_seed(0)
    head = FrozenHead({"lm_head.weight": np.random.default_rng(0).standard_normal((50, 8)).astype(np.float32)}, {})
    y, ids = torch.randn(2, 7, 8), torch.randint(0, 50, (2, 7))
    mask = torch.tensor([[0, 0, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]], dtype=torch.bool)
    per_token = token_losses(y, ids, mask, head)
    assert per_token.shape == (int(mask[:, 1:].sum()),)
    torch.testing.assert_close(per_token.mean(), next_token_loss(y, ids, mask, head))
