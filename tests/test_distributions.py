"""Multi-categorical latent math against hand-computed values."""

import math

import pytest
import torch

from latent_residual import distributions


def test_unimix_mixes_uniform_in_probability_space():
    logits = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [0.25, 0.75]
    assert torch.allclose(distributions.probs(logits, 0.0), torch.tensor([[0.25, 0.75]]))
    assert torch.allclose(distributions.probs(logits, 0.1), torch.tensor([[0.275, 0.725]]))
    assert torch.allclose(distributions.log_probs(logits, 0.1).exp().sum(-1), torch.ones(1))


def test_straight_through_sample_is_one_hot_with_identity_gradient():
    prob = torch.tensor([[[0.1, 0.2, 0.7], [0.5, 0.25, 0.25]]], requires_grad=True)
    sample = distributions.sample_one_hot(prob, torch.Generator().manual_seed(0))
    assert sample.shape == (1, 2, 3)
    assert torch.equal(sample.detach().sum(-1), torch.ones(1, 2))
    assert set(sample.detach().unique().tolist()) <= {0.0, 1.0}
    weights = torch.arange(6.0).reshape(1, 2, 3)
    (sample * weights).sum().backward()
    assert torch.equal(prob.grad, weights)


def test_sampling_frequencies_follow_probabilities():
    prob = torch.tensor([0.2, 0.8]).expand(20000, 1, 2)
    sample = distributions.sample_one_hot(prob, torch.Generator().manual_seed(1))
    assert abs(sample[:, 0, 1].mean().item() - 0.8) < 0.02


def test_mode_one_hot_takes_argmax():
    prob = torch.tensor([[[0.1, 0.6, 0.3]]])
    assert torch.equal(distributions.mode_one_hot(prob), torch.tensor([[[0.0, 1.0, 0.0]]]))


def test_kl_matches_hand_computation_and_sums_groups():
    p = torch.tensor([[0.5, 0.5], [0.5, 0.5]]).log()
    q = torch.tensor([[0.25, 0.75], [0.5, 0.5]]).log()
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)  # 0.14384, second group 0
    assert distributions.kl(p, q).item() == pytest.approx(expected, abs=1e-6)
    assert distributions.kl(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_balanced_kl_scales_clips_and_masks_episode_starts():
    # Two steps; each group pair gives KL 0.14384. Two groups of that -> 0.28768 per step.
    post = torch.tensor([[0.5, 0.5], [0.5, 0.5]]).log().expand(1, 2, 2, 2)
    prior = torch.tensor([[0.25, 0.75], [0.25, 0.75]]).log().expand(1, 2, 2, 2)
    per_step = 2 * (0.5 * math.log(2.0) + 0.5 * math.log(0.5 / 0.75))
    is_first = torch.tensor([[True, False]])
    loss, parts = distributions.balanced_kl(post, prior, is_first, dyn_scale=1.5, rep_scale=0.5, free_bits=0.0)
    assert loss.item() == pytest.approx(2.0 * per_step, abs=1e-5)
    assert parts["dyn"].item() == pytest.approx(per_step, abs=1e-6)
    clipped, _ = distributions.balanced_kl(post, prior, is_first, dyn_scale=1.5, rep_scale=0.5, free_bits=1.0)
    assert clipped.item() == pytest.approx(2.0, abs=1e-6)  # both terms below 1 nat -> 1.5 + 0.5
    # A huge KL at the masked first step must not count.
    prior_bad = prior.clone()
    prior_bad[:, 0] = torch.tensor([[1e-6, 1 - 1e-6], [1e-6, 1 - 1e-6]]).log()
    masked, _ = distributions.balanced_kl(post, prior_bad, is_first, dyn_scale=1.5, rep_scale=0.5, free_bits=0.0)
    assert masked.item() == pytest.approx(loss.item(), abs=1e-5)


def test_balanced_kl_gradients_go_to_the_right_side():
    post_logits = torch.zeros(1, 2, 1, 3, requires_grad=True)
    prior_logits = torch.tensor([1.0, 0.0, -1.0]).expand(1, 2, 1, 3).clone().requires_grad_(True)
    is_first = torch.tensor([[False, False]])
    post = distributions.log_probs(post_logits)
    prior = distributions.log_probs(prior_logits)
    loss, _ = distributions.balanced_kl(post, prior, is_first, dyn_scale=1.0, rep_scale=0.0, free_bits=0.0)
    loss.backward()
    assert post_logits.grad is None or torch.all(post_logits.grad == 0)
    assert prior_logits.grad.abs().sum() > 0


def test_sampling_never_draws_a_class_of_probability_zero():
    prob = torch.tensor([[0.0, 0.5, 0.0, 0.5], [0.0, 0.0, 0.0, 1.0]]).expand(5000, 2, 4)
    sample = distributions.sample_one_hot(prob, torch.Generator().manual_seed(2))
    assert sample[:, :, 0].sum() == 0 and sample[:, :, 2].sum() == 0 and sample[:, 1, 3].sum() == 5000
    assert abs(sample[:, 0, 1].mean().item() - 0.5) < 0.03


def test_sampling_refuses_non_finite_probabilities():
    with pytest.raises(ValueError, match="NaN or infinite"):
        distributions.sample_one_hot(torch.tensor([[[0.5, float("nan")]]]))


@pytest.mark.parametrize("classes", [2, 4, distributions._NARROW_CLASSES - 1, 32])
def test_softmax_over_few_or_many_classes_matches_torch(classes):
    logits = torch.randn(8, 16, classes, requires_grad=True)
    ours, theirs = distributions.softmax(logits), torch.softmax(logits, -1)
    assert ours.is_contiguous() and torch.allclose(ours, theirs, atol=1e-7)
    assert torch.allclose(distributions.log_probs(logits), torch.log_softmax(logits, -1), atol=1e-6)
    weights = torch.randn_like(ours)
    (grad,) = torch.autograd.grad((ours * weights).sum(), logits)
    (expected,) = torch.autograd.grad((theirs * weights).sum(), logits)
    assert torch.allclose(grad, expected, atol=1e-6)
