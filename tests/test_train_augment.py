"""Batch augmentation: identity when off, deterministic by generator, flips, range kept."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cxr.training.augment import affine_grid, augment_batch, random_affine
from cxr.training.config import AugmentConfig

NONE = AugmentConfig(rotate=0, scale=0, translate=0, brightness=0, contrast=0)


def _images(b=4, s=32):
    return torch.rand(b, 1, s, s, generator=torch.Generator().manual_seed(0))


def test_disabled_returns_the_input():
    x = _images()
    assert augment_batch(x, AugmentConfig(enabled=False), torch.Generator()) is x


def test_zero_ranges_give_the_identity():
    x = _images()
    y = augment_batch(x, NONE, torch.Generator().manual_seed(1))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)


def test_flip_only_mirrors_left_right():
    x = _images(b=64)
    config = AugmentConfig(rotate=0, scale=0, translate=0, brightness=0, contrast=0, hflip=True)
    theta = random_affine(64, config, torch.Generator().manual_seed(2))
    flipped = theta[:, 0, 0] < 0
    assert 10 < int(flipped.sum()) < 54
    y = augment_batch(x, config, torch.Generator().manual_seed(2))
    torch.testing.assert_close(y[flipped], x[flipped].flip(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(y[~flipped], x[~flipped], atol=1e-5, rtol=0)


def test_same_generator_state_same_batch_and_range_kept():
    x = _images()
    a = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(7))
    b = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(7))
    c = augment_batch(x, AugmentConfig(), torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0 and a.shape == x.shape


def test_rotation_stays_within_its_range():
    theta = random_affine(
        500, AugmentConfig(rotate=5, scale=0, translate=0), torch.Generator().manual_seed(0)
    )
    angles = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert float(angles.abs().max()) <= 5.0 + 1e-4 and float(angles.abs().max()) > 4.0


def test_affine_grid_matches_torchs():
    g = torch.Generator().manual_seed(5)
    theta = random_affine(6, AugmentConfig(rotate=30, scale=0.3, translate=0.2, hflip=True), g)
    for h, w in ((224, 224), (17, 40)):
        want = F.affine_grid(theta, [6, 1, h, w], align_corners=False)
        got = affine_grid(theta, h, w)
        assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
