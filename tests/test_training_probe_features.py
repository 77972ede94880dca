"""Pooled features of a prepared cache per view (cxr.training.probe_features)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr.cache import PreparedCache
from cxr.models import ModelSpec, Preprocessing, build_model
from cxr.preprocessing import to_model_input
from cxr.training.probe_features import pooled_features


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    spec = ModelSpec(
        labels=("a", "b"), backbone="cxr-small-cnn", preprocessing=Preprocessing(size=32)
    )
    return build_model(spec)


def test_each_view_is_the_heads_pooling_of_that_image(model, phantom_caches_small):
    cache = PreparedCache(phantom_caches_small["val"])
    model.train()
    out = pooled_features(model, cache, batch_size=7)
    assert out.dtype == np.float32 and out.shape == (2, len(cache), model.num_features)
    assert model.training  # its mode is restored
    pixels = cache.read(np.arange(len(cache)))
    scale = float(np.abs(out).max())  # random weights: small features
    assert scale > 0
    model.eval()
    with torch.no_grad():
        for v, seen in enumerate((pixels, pixels[:, :, ::-1].copy())):
            x = to_model_input(torch.from_numpy(seen))
            expected = model.features(x).mean(dim=(-2, -1)).numpy()
            assert np.abs(out[v] - expected).max() < 1e-5 * scale
    assert np.abs(out[0] - out[1]).max() > 1e-2 * scale  # the mirror is another image
    only = pooled_features(model, cache, views=("mirror",))
    assert np.array_equal(only[0], out[1])


def test_unknown_views_are_refused(model, phantom_caches_small):
    cache = PreparedCache(phantom_caches_small["val"])
    with pytest.raises(ValueError, match="views must be"):
        pooled_features(model, cache, views=("flipped",))
    with pytest.raises(ValueError, match="batch_size"):
        pooled_features(model, cache, batch_size=0)
