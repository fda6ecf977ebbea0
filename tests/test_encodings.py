"""Symlog and two-hot encodings against hand-computed values."""

import math

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
