"""Micro-batching: concurrent requests' images gathered into one forward pass.

Each request submits its preprocessed images (uint8 ``(S, S)``) and awaits their
probabilities. One consumer task takes the first waiting image, then gathers more until the
batch holds ``max_batch_size`` images or ``max_wait_ms`` has passed (it waits only while
other requests are on their way: announced with :meth:`MicroBatcher.arriving`, being
received or decoded; a lone request runs at once), and runs the batch on
the model's single worker thread (:class:`concurrent.futures.ThreadPoolExecutor` with one
thread: one model per process, used by one thread at a time). While a batch runs, new
images wait in a bounded queue; when it is full, :meth:`MicroBatcher.submit` raises
:class:`QueueFull` at once (the service answers 503 with ``Retry-After``): there is never
an unbounded backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BatcherStopped", "MicroBatcher", "QueueFull"]


class QueueFull(Exception):
    """The batching queue has no room for the images of a request."""


class BatcherStopped(RuntimeError):
    """The batcher is not running (not started yet, or shutting down)."""


@dataclass
class _Item:
    pixels: np.ndarray
    future: asyncio.Future[np.ndarray]
    queued_at: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Gathers single images into batches for ``run`` (uint8 (B, S, S) -> float32 (B, L)).

    Args:
        run: the batch function, called on ``executor``'s thread.
        executor: where ``run`` runs (one thread: the model is used by one thread at a time).
        max_batch_size: images per forward pass at most.
        max_wait_ms: how long the first image of a batch waits for company.
        max_queue: images waiting at most (beyond them, :class:`QueueFull`).
        on_batch: called with the size of every batch run (metrics).
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        max_batch_size: int = 16,
        max_wait_ms: float = 5.0,
        max_queue: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_ms < 0:
            raise ValueError(
                "max_batch_size and max_queue must be >= 1 and max_wait_ms >= 0, got "
                f"{max_batch_size}, {max_queue}, {max_wait_ms}"
            )
        self.run, self.executor = run, executor
        self.max_batch_size, self.max_queue = int(max_batch_size), int(max_queue)
        self.max_wait = float(max_wait_ms) / 1000.0
        self.on_batch = on_batch
        self._queue: asyncio.Queue[_Item] | None = None
        self._task: asyncio.Task[None] | None = None
        self._arriving = 0

    # life cycle ------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        """Start the consumer task on the running event loop."""
        if self.running:
            return
        self._queue = asyncio.Queue(self.max_queue)
        self._task = asyncio.get_running_loop().create_task(self._consume(), name="cxr-batcher")

    async def stop(self) -> None:
        """Stop the consumer; images still waiting get :class:`BatcherStopped`."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        queue = self._queue
        while queue is not None and not queue.empty():
            item = queue.get_nowait()
            if not item.future.done():
                item.future.set_exception(BatcherStopped("the service is shutting down"))

    # use ---------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Images waiting for a batch (not counting the batch running)."""
        return 0 if self._queue is None else self._queue.qsize()

    def free(self) -> int:
        return self.max_queue - self.depth

    @contextlib.contextmanager
    def arriving(self) -> Iterator[None]:
        """Announce a request that will submit soon (while its body is read and decoded):
        a batch waits up to ``max_wait_ms`` for company only while one is announced."""
        self._arriving += 1
        try:
            yield
        finally:
            self._arriving -= 1

    async def submit(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Probabilities float32 (N, L) of N preprocessed images, in order. Raises
        :class:`QueueFull` (nothing queued) when the queue cannot take all N."""
        if not self.running or self._queue is None:
            raise BatcherStopped("the batcher is not running")
        if len(images) > self.free():
            raise QueueFull(f"{self.depth} image(s) are waiting (at most {self.max_queue})")
        loop = asyncio.get_running_loop()
        items = [_Item(np.asarray(p), loop.create_future()) for p in images]
        for item in items:  # no await in between: all or none are queued
            self._queue.put_nowait(item)
        try:
            rows = [await item.future for item in items]
        finally:
            for item in items:  # a client that left: its images are dropped from batches
                item.future.cancel()
        return np.stack(rows) if rows else np.zeros((0, 0), np.float32)

    async def _gather(self, queue: asyncio.Queue[_Item]) -> list[_Item]:
        items = [await queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait
        while len(items) < self.max_batch_size:
            try:
                items.append(queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - loop.time()
            if remaining <= 0 or self._arriving <= 0:  # nobody else on the way: run now
                break
            try:
                items.append(await asyncio.wait_for(queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _consume(self) -> None:
        assert self._queue is not None
        queue, loop = self._queue, asyncio.get_running_loop()
        while True:
            items = [it for it in await self._gather(queue) if not it.future.done()]
            if not items:
                continue
            if self.on_batch is not None:
                self.on_batch(len(items))
            batch = np.stack([it.pixels for it in items])
            try:
                probs = await loop.run_in_executor(self.executor, self.run, batch)
            except asyncio.CancelledError:
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(BatcherStopped("the service is shutting down"))
                raise
            except Exception as err:  # reported to each request of the batch
                for it in items:
                    if not it.future.done():
                        it.future.set_exception(err)
                continue
            for it, row in zip(items, probs, strict=True):
                if not it.future.done():
                    it.future.set_result(row)
