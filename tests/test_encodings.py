"""Symlog and two-hot encodings against hand-computed values."""

import math

import pytest
import torch

from latent_residual import encodings


def test_symlog_and_symexp():
    x = torch.tensor([-(math.e - 1), 0.0, math.e - 1, 1000.0])
    assert torch.allclose(encodings.symlog(x)[:3], torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(encodings.symexp(encodings.symlog(x)), x, rtol=1e-5)


def test_twohot_splits_weight_between_neighbours():
    bins = torch.tensor([0.0, 1.0, 2.0])
    assert torch.allclose(encodings.twohot(torch.tensor(1.25), bins), torch.tensor([0.0, 0.75, 0.25]))
    assert torch.allclose(encodings.twohot(torch.tensor(2.0), bins), torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(encodings.twohot(torch.tensor(-5.0), bins), torch.tensor([1.0, 0.0, 0.0]))
    encoded = encodings.twohot(torch.tensor([0.3, 1.7]), bins)
    assert torch.allclose((encoded * bins).sum(-1), torch.tensor([0.3, 1.7]))


def test_twohot_mean_inverts_a_perfect_prediction():
    bins = encodings.twohot_bins()
    target = torch.tensor([-12.5, 0.0, 0.7, 250.0])
    logits = torch.log(encodings.twohot(encodings.symlog(target), bins) + 1e-12)
    assert torch.allclose(encodings.twohot_mean(logits, bins), target, rtol=1e-3, atol=1e-4)
    assert encodings.twohot_loss(logits, target, bins).shape == (4,)


def test_twohot_cross_entropy_equals_the_dense_product_for_summed_targets():
    # The critic's loss: two two-hot targets, one of them weighted, gathered in one go.
    generator = torch.Generator().manual_seed(0)
    bins = encodings.twohot_bins()
    logits = torch.randn(6, 5, 255, generator=generator, requires_grad=True)
    first, second = torch.randn(6, 5, generator=generator) * 30, torch.randn(6, 5, generator=generator)
    log_prob = torch.log_softmax(logits, -1)
    first_bins, first_weights = encodings.twohot_indices(encodings.symlog(first), bins)
    second_bins, second_weights = encodings.twohot_indices(encodings.symlog(second), bins)
    gathered = encodings.twohot_cross_entropy(
        log_prob, torch.cat([first_bins, second_bins], -1), torch.cat([first_weights, 0.5 * second_weights], -1)
    )
    dense_target = encodings.twohot(encodings.symlog(first), bins) + 0.5 * encodings.twohot(
        encodings.symlog(second), bins
    )
    dense = -(dense_target * log_prob).sum(-1)
    assert gathered.shape == (6, 5) and torch.allclose(gathered, dense, rtol=1e-6)
    gathered_grad, dense_grad = (
        torch.autograd.grad(loss.sum(), logits, retain_graph=True)[0] for loss in (gathered, dense)
    )
    assert torch.allclose(gathered_grad, dense_grad, atol=1e-7)
    # twohot_loss is the same cross-entropy for one raw target.
    assert torch.allclose(
        encodings.twohot_loss(logits, first, bins),
        -(encodings.twohot(encodings.symlog(first), bins) * log_prob).sum(-1),
        rtol=1e-6,
    )


def test_twohot_cross_entropy_refuses_targets_shaped_unlike_the_predictions():
    # gather would read only a corner of the predictions instead of broadcasting.
    index, weight = encodings.twohot_indices(torch.zeros(1, 3), encodings.twohot_bins())
    with pytest.raises(ValueError, match=r"index \(1, 3, 2\) .* log_prob \(4, 3, 255\)"):
        encodings.twohot_cross_entropy(torch.zeros(4, 3, 255), index, weight)
    with pytest.raises(ValueError, match="twohot_cross_entropy"):
        encodings.twohot_loss(torch.zeros(4, 3, 255), torch.zeros(1, 3), encodings.twohot_bins())
