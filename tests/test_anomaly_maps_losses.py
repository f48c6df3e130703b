"""Shared map math and losses against plain references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from zsbench.anomaly_maps import (
    gaussian_smooth,
    harmonic_mean,
    patch_probability_map,
    text_probabilities,
    tokens_to_grid,
    upsample,
)
from zsbench.losses import binary_focal_loss, dice_loss, focal_loss, segmentation_loss


@pytest.mark.parametrize("sigma", [1.0, 4.0, 10.0])
@pytest.mark.parametrize("shape", [(2, 37, 37), (1, 20, 33), (1, 8, 8)])
def test_gaussian_smooth_equals_scipy(sigma, shape):
    rng = np.random.default_rng(0)
    maps = rng.random(shape).astype(np.float32)
    ours = gaussian_smooth(torch.from_numpy(maps), sigma).numpy()
    ref = np.stack([gaussian_filter(m.astype(np.float64), sigma, mode="reflect", truncate=4.0)
                    for m in maps])
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_gaussian_smooth_sigma_zero_is_identity():
    x = torch.rand(2, 5, 5)
    assert torch.equal(gaussian_smooth(x, 0), x)


def test_text_probabilities_shapes_and_temperature():
    torch.manual_seed(0)
    feats, text = torch.randn(3, 10, 8), torch.randn(2, 8)
    p = text_probabilities(feats, text, temperature=0.07)
    assert p.shape == (3, 10, 2)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 10))
    f = feats / feats.norm(dim=-1, keepdim=True)
    t = text / text.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(p, ((f @ t.T) / 0.07).softmax(-1))
    # per-image text and a global embedding
    per_image = text_probabilities(torch.randn(3, 8), torch.randn(3, 2, 8))
    assert per_image.shape == (3, 2)


def test_tokens_to_grid_is_row_major_and_upsample_matches_interpolate():
    vals = torch.arange(6.0).reshape(1, 6)
    grid = tokens_to_grid(vals, (2, 3))
    assert grid[0, 1, 0] == 3.0 and grid[0, 0, 2] == 2.0
    up = upsample(grid, 12)
    ref = torch.nn.functional.interpolate(grid[:, None], size=(12, 12), mode="bilinear",
                                          align_corners=False)[:, 0]
    torch.testing.assert_close(up, ref)
    m = patch_probability_map(torch.randn(2, 6, 4), torch.randn(2, 4), (2, 3), 12)
    assert m.shape == (2, 2, 12, 12)


def test_harmonic_mean():
    x = torch.tensor([[1.0, 2.0, 4.0]])
    torch.testing.assert_close(harmonic_mean(x, dim=1), torch.tensor([3 / (1 + 0.5 + 0.25)]))


def _focal_reference(probs, target, gamma=2.0, smooth=1e-5):
    p = probs.permute(0, 2, 3, 1).reshape(-1, probs.shape[1]).double()
    t = target.reshape(-1).long()
    losses = []
    for i in range(p.shape[0]):
        one_hot = torch.full((p.shape[1],), smooth, dtype=torch.float64)
        one_hot[t[i]] = 1 - smooth
        pt = (one_hot * p[i]).sum() + smooth
        losses.append(-((1 - pt) ** gamma) * torch.log(pt))
    return torch.stack(losses).mean()


def test_focal_and_dice_match_plain_references():
    torch.manual_seed(1)
    probs = torch.rand(2, 2, 4, 5).softmax(1)
    mask = (torch.rand(2, 4, 5) > 0.6).float()
    torch.testing.assert_close(focal_loss(probs, mask).double(), _focal_reference(probs, mask),
                               atol=1e-6, rtol=1e-5)
    p, g = probs[:, 1], mask
    ref = 1 - np.mean([(2 * (p[i] * g[i]).sum() + 1) / (p[i].sum() + g[i].sum() + 1)
                       for i in range(2)])
    assert dice_loss(p, g).item() == pytest.approx(float(ref), abs=1e-6)
    total = segmentation_loss(probs, mask)
    expected = focal_loss(probs, mask) + dice_loss(probs[:, 1], mask) + dice_loss(probs[:, 0],
                                                                                   1 - mask)
    torch.testing.assert_close(total, expected)


def test_segmentation_loss_is_lower_for_the_right_map():
    mask = torch.zeros(1, 8, 8)
    mask[:, 2:5, 2:5] = 1
    good = torch.stack([1 - mask, mask], 1).clamp(0.01, 0.99)
    bad = torch.stack([mask, 1 - mask], 1).clamp(0.01, 0.99)
    assert segmentation_loss(good, mask) < 0.1 < segmentation_loss(bad, mask)


def test_binary_focal_loss_decreases_towards_the_target():
    t = torch.tensor([1.0, 0.0])
    assert binary_focal_loss(torch.tensor([3.0, -3.0]), t) < binary_focal_loss(
        torch.tensor([-3.0, 3.0]), t)
    near = binary_focal_loss(torch.tensor([0.99, 0.01]), t, inputs_are_logits=False)
    assert near.item() < 1e-4
