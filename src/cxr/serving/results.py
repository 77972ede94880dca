"""Results kept for a later download: a bounded in-memory store behind unguessable tokens.

``/v1/predict`` builds a DICOM SR for each DICOM upload and keeps it here; the answer
names its URL ``/v1/results/<token>/sr.dcm``. The store never grows without bound: it
keeps at most ``max_entries`` results and ``max_bytes`` bytes (the oldest go first), and
each for ``ttl_s`` seconds. Nothing is written to disk; the tokens are 32 URL-safe
characters from :func:`secrets.token_urlsafe` (192 random bits), so a result can be fetched
only by whoever got its URL (and, when the service has one, its API key).

Research use only: nothing the service answers is a diagnosis.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["ResultStore", "StoredResult"]


@dataclass(frozen=True)
class StoredResult:
    """One kept result: its bytes, the file name a download gets, its media type and when
    it expires (seconds on the store's clock)."""

    data: bytes
    filename: str
    media_type: str
    expires: float


class ResultStore:
    """At most ``max_entries`` results of at most ``max_bytes`` bytes in all, each kept
    ``ttl_s`` seconds (``clock``: seconds, monotonic; tests pass their own). Thread-safe."""

    def __init__(
        self,
        max_entries: int = 64,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: float = 900.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        for name, value in (("max_entries", max_entries), ("max_bytes", max_bytes)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ResultStore.{name} must be an integer >= 1, got {value!r}")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not ttl_s > 0:
            raise ValueError(f"ResultStore.ttl_s must be a number of seconds > 0, got {ttl_s!r}")
        self.max_entries, self.max_bytes, self.ttl_s = max_entries, max_bytes, float(ttl_s)
        self._clock = clock
        self._items: OrderedDict[str, StoredResult] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            self._expire(self._clock())
            return len(self._items)

    @property
    def n_bytes(self) -> int:
        """Bytes held now (expired results are dropped first)."""
        with self._lock:
            self._expire(self._clock())
            return self._bytes

    def put(self, data: bytes, filename: str, media_type: str) -> str | None:
        """Keep ``data``; returns its new token, or None when it alone is over
        ``max_bytes`` (then nothing is kept). Evicts expired results, then the oldest, until
        the new one fits."""
        data = bytes(data)
        if len(data) > self.max_bytes:
            return None
        token = secrets.token_urlsafe(24)
        with self._lock:
            now = self._clock()
            self._expire(now)
            while self._items and (
                len(self._items) >= self.max_entries or self._bytes + len(data) > self.max_bytes
            ):
                _, old = self._items.popitem(last=False)
                self._bytes -= len(old.data)
            self._items[token] = StoredResult(data, filename, media_type, now + self.ttl_s)
            self._bytes += len(data)
        return token

    def get(self, token: str) -> StoredResult | None:
        """The result of ``token``; None when it is unknown, evicted or expired."""
        with self._lock:
            self._expire(self._clock())
            return self._items.get(token)

    def _expire(self, now: float) -> None:
        # insertion order is expiry order (one ttl for all): drop from the front
        while self._items:
            token, first = next(iter(self._items.items()))
            if first.expires > now:
                break
            del self._items[token]
            self._bytes -= len(first.data)
