"""Batches straight from a prepared cache: a memory copy per batch, no decoding.

:class:`CacheBatches` cuts the rows of a :class:`~cxr.cache.PreparedCache` into batches
of uint8 image tensors and float label tensors. The order is a function of
``(seed, epoch)`` only, so a resumed run sees the same batches as an uninterrupted one.
With several processes (DDP) each rank reads its own shard of every epoch's order, and
every rank gets the same number of batches. A background thread reads ahead so that
the copy overlaps the model's work.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import cast

import numpy as np
import torch

from cxr.prepared_cache import PreparedCache

__all__ = ["CacheBatches"]

#: One batch: uint8 images (B, S, S) and float32 labels (B, L).
Batch = tuple[torch.Tensor, torch.Tensor]


class CacheBatches:
    """Iterable of ``(images, labels)`` batches of one cache.

    Yields:
        images: uint8 tensor (B, S, S), S the cache's image side (pinned when asked).
        labels: float32 tensor (B, L), 1 / 0 / NaN (unknown), in ``label_index`` order.

    Args:
        cache: the prepared cache to read.
        batch_size: images per batch on this rank.
        shuffle: a new random order every epoch (training); else table order.
        seed: seed of the order; epoch ``e`` uses ``(seed, e)``.
        rank, world_size: this process's shard of every epoch (DDP).
        drop_last: leave out the last incomplete batch (training).
        label_index: columns of the cache's label matrix to return, in the model's label
            order (None = all, in cache order).
        pin_memory: pin the batches for fast, asynchronous copies to a GPU.
        prefetch: batches read ahead by the background thread (0 = read in the caller).
    """

    def __init__(
        self,
        cache: PreparedCache,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        label_index: Sequence[int] | None = None,
        pin_memory: bool = False,
        prefetch: int = 2,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if len(cache) == 0:
            raise ValueError(f"the cache in {cache.path} holds no images")
        self.cache = cache
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.rank, self.world_size = int(rank), int(world_size)
        self.drop_last = drop_last
        self.pin_memory = pin_memory
        self.prefetch = int(prefetch)
        n_labels = cache.table.labels.shape[1]
        self.label_index = np.arange(n_labels) if label_index is None else np.asarray(label_index)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch whose order the next iteration follows."""
        self.epoch = int(epoch)

    def shard(self) -> np.ndarray:
        """The cache rows (table order) this rank reads in the current epoch, in order.

        Shuffled runs drop the tail that does not divide among the ranks, so every rank
        has the same count; unshuffled runs (evaluation) give every row to exactly one rank.
        """
        n = len(self.cache)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
            per_rank = n // self.world_size
            return order[self.rank * per_rank : (self.rank + 1) * per_rank]
        return np.arange(n)[self.rank :: self.world_size]

    def _batches(self) -> list[np.ndarray]:
        rows = self.shard()
        cuts = range(0, len(rows), self.batch_size)
        batches = [rows[i : i + self.batch_size] for i in cuts]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def _load(self, rows: np.ndarray) -> Batch:
        if self.shuffle:
            rows = np.sort(rows)  # sequential reads; the order inside a batch is irrelevant
        images = torch.from_numpy(self.cache.read(rows))
        labels = torch.from_numpy(
            np.ascontiguousarray(self.cache.labels(rows)[:, self.label_index], dtype=np.float32)
        )
        if self.pin_memory:
            images, labels = images.pin_memory(), labels.pin_memory()
        return images, labels

    def __iter__(self) -> Iterator[Batch]:
        batches = self._batches()
        if self.prefetch <= 0:
            for rows in batches:
                yield self._load(rows)
            return
        yield from _read_ahead(self._load, batches, self.prefetch)


def _read_ahead(
    load: Callable[[np.ndarray], Batch], batches: list[np.ndarray], depth: int
) -> Iterator[Batch]:
    """Run ``load`` over ``batches`` in a thread, ``depth`` results ahead of the consumer."""
    results: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def work() -> None:
        try:
            for rows in batches:
                if stop.is_set():
                    return
                results.put(load(rows))
            results.put(done)
        except BaseException as exc:  # handed to the consumer
            results.put(exc)

    thread = threading.Thread(target=work, daemon=True, name="cxr-batches")
    thread.start()
    try:
        while True:
            item = results.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(Batch, item)  # the thread puts nothing else
    finally:
        stop.set()
        while thread.is_alive():  # let a blocked put() finish
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.05)
