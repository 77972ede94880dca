"""CacheBatches: memory copies of cache rows in a seed-and-epoch-determined order, sharded."""

from __future__ import annotations

import numpy as np
import pytest

from cxr.cache import PreparedCache
from cxr.cache.batches import CacheBatches


@pytest.fixture(scope="module")
def cache(phantom_caches_small):
    return PreparedCache(phantom_caches_small["train"])


def _rows(batches):
    return [rows for rows in batches._batches()]


def test_batches_hold_the_cache_pixels_and_labels(cache):
    b = CacheBatches(cache, 16, shuffle=True, seed=3, prefetch=0)
    for (images, labels), rows in zip(b, _rows(b), strict=True):
        rows = np.sort(rows)
        np.testing.assert_array_equal(images.numpy(), cache.read(rows))
        np.testing.assert_array_equal(labels.numpy(), cache.labels(rows))
        assert images.dtype.is_floating_point is False


def test_order_depends_on_seed_and_epoch_only(cache):
    a = CacheBatches(cache, 8, shuffle=True, seed=1)
    b = CacheBatches(cache, 8, shuffle=True, seed=1)
    a.set_epoch(2), b.set_epoch(2)
    np.testing.assert_array_equal(a.shard(), b.shard())
    b.set_epoch(3)
    assert not np.array_equal(a.shard(), b.shard())
    assert sorted(a.shard()) == list(range(len(cache)))


def test_prefetch_thread_yields_the_same_batches(cache):
    plain = [x.numpy().copy() for x, _ in CacheBatches(cache, 10, shuffle=True, seed=0, prefetch=0)]
    ahead = [x.numpy().copy() for x, _ in CacheBatches(cache, 10, shuffle=True, seed=0, prefetch=3)]
    assert len(plain) == len(ahead)
    for p, a in zip(plain, ahead, strict=True):
        np.testing.assert_array_equal(p, a)


def test_ranks_get_disjoint_equal_shards(cache):
    shards = [
        CacheBatches(cache, 4, shuffle=True, seed=5, rank=r, world_size=3).shard() for r in range(3)
    ]
    assert len({len(s) for s in shards}) == 1
    assert not set(shards[0]) & set(shards[1]) and not set(shards[1]) & set(shards[2])
    evaluation = [
        CacheBatches(cache, 4, shuffle=False, rank=r, world_size=3).shard() for r in range(3)
    ]
    assert sorted(np.concatenate(evaluation)) == list(range(len(cache)))


def test_drop_last_and_label_index(cache):
    b = CacheBatches(cache, 7, shuffle=True, drop_last=True, label_index=[2, 0])
    assert all(len(r) == 7 for r in _rows(b)) and len(b) == len(cache) // 7
    _, labels = next(iter(b))
    rows = np.sort(_rows(b)[0])
    np.testing.assert_array_equal(labels.numpy(), cache.labels(rows)[:, [2, 0]])


def test_errors_in_the_reader_reach_the_consumer(cache, monkeypatch):
    b = CacheBatches(cache, 8, shuffle=False, prefetch=2)

    def broken(rows):
        raise OSError("disk gone")

    monkeypatch.setattr(cache, "read", broken)  # the reader thread fails on the first batch
    with pytest.raises(OSError, match="disk gone"):
        list(b)
