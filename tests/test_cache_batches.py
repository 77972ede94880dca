"""cxr.cache.batches: the batch loader lives in the cache package (inference reads it
without importing training); the older module name still gives the same class."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from cxr.cache import PreparedCache
from cxr.cache.batches import CacheBatches


@pytest.fixture(scope="module")
def cache(phantom_caches_small):
    return PreparedCache(phantom_caches_small["val"])


def test_the_old_import_gives_the_same_class():
    from cxr.training.loader import CacheBatches as old

    assert old is CacheBatches


def test_unshuffled_batches_cover_every_row_once_in_order(cache):
    b = CacheBatches(cache, 5, shuffle=False, prefetch=0)
    images = torch.cat([x for x, _ in b])
    assert images.dtype == torch.uint8 and images.shape == (len(cache), cache.size, cache.size)
    np.testing.assert_array_equal(images.numpy(), cache.read(np.arange(len(cache))))
    assert len(b) == -(-len(cache) // 5)


def test_label_index_reorders_the_label_columns(cache):
    n = cache.table.labels.shape[1]
    order = list(range(n))[::-1]
    _, labels = next(iter(CacheBatches(cache, 4, shuffle=False, label_index=order)))
    np.testing.assert_array_equal(labels.numpy(), cache.labels(np.arange(4))[:, order])


def test_bad_arguments_name_the_problem(cache):
    with pytest.raises(ValueError, match="batch_size"):
        CacheBatches(cache, 0, shuffle=False)
    with pytest.raises(ValueError, match="outside world_size"):
        CacheBatches(cache, 4, shuffle=False, rank=2, world_size=2)


def test_importing_the_cache_package_does_not_import_torch_or_training():
    code = (
        "import sys, cxr.cache; "
        "assert 'torch' not in sys.modules, 'torch'; "
        "import cxr.cache.batches; "
        "assert not any(m.startswith('cxr.training') for m in sys.modules), 'training'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
