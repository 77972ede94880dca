"""Service metrics in the Prometheus text exposition format (version 0.0.4).

No client library: a handful of counters, gauges and histograms kept under one lock and
rendered on ``GET /metrics``. Label values are bounded: the endpoint is one of the routes
(anything else is ``other``), the method one of the HTTP methods and the code a status.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from cxr.serving.limits import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Histogram", "Metrics", "MetricsMiddleware"]

#: Request latency buckets, seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
#: Batch size buckets, images.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class Histogram:
    """Cumulative-bucket histogram (``le`` upper bounds, then ``+Inf``)."""

    def __init__(self, buckets: Iterable[float]) -> None:
        self.bounds = tuple(sorted(float(b) for b in buckets))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            le = "+Inf" if bound == float("inf") else f"{bound:g}"
            out.append(f'{name}_bucket{{{labels}{sep}le="{le}"}} {running}')
        braces = f"{{{labels}}}" if labels else ""
        out.append(f"{name}_sum{braces} {self.sum:.6f}")
        out.append(f"{name}_count{braces} {running}")
        return out


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    """What ``GET /metrics`` reports.

    Args:
        endpoints: the paths counted by name (``/v1/predict`` ...); a path that starts with
            one of ``prefixes`` is counted as that prefix; anything else as ``other``.
        queue_depth: returns the images waiting for a batch now.
    """

    def __init__(
        self,
        endpoints: Iterable[str],
        prefixes: Iterable[str] = (),
        queue_depth: Callable[[], int] | None = None,
    ) -> None:
        self.endpoints = frozenset(endpoints)
        self.prefixes = tuple(prefixes)
        self.queue_depth = queue_depth or (lambda: 0)
        self._lock = threading.Lock()
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.errors: Counter[tuple[str, int]] = Counter()
        self.latency: dict[str, Histogram] = {}
        self.batches = Histogram(BATCH_BUCKETS)
        self.images = 0
        self.rejected_full = 0
        self.in_flight = 0
        self.started = time.time()

    def endpoint(self, path: str) -> str:
        if path in self.endpoints:
            return path
        for prefix in self.prefixes:
            if path.startswith(prefix):
                return prefix
        return "other"

    def request_started(self) -> None:
        with self._lock:
            self.in_flight += 1

    def request_finished(self, endpoint: str, method: str, code: int, seconds: float) -> None:
        method = method if method in _METHODS else "other"
        with self._lock:
            self.in_flight -= 1
            self.requests[(endpoint, method, code)] += 1
            if code >= 400:
                self.errors[(endpoint, code)] += 1
            hist = self.latency.get(endpoint)
            if hist is None:
                hist = self.latency[endpoint] = Histogram(LATENCY_BUCKETS)
            hist.observe(seconds)

    def batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)
            self.images += size

    def queue_full(self) -> None:
        with self._lock:
            self.rejected_full += 1

    def render(self) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        with self._lock:
            lines: list[str] = []

            def head(name: str, kind: str, text: str) -> None:
                lines.extend([f"# HELP {name} {text}", f"# TYPE {name} {kind}"])

            head("cxr_http_requests_total", "counter", "HTTP requests by endpoint, method, code.")
            for (ep, method, code), n in sorted(self.requests.items()):
                lines.append(
                    f'cxr_http_requests_total{{endpoint="{_escape(ep)}",method="{method}",'
                    f'code="{code}"}} {n}'
                )
            head("cxr_http_errors_total", "counter", "HTTP responses with a 4xx/5xx code.")
            for (ep, code), n in sorted(self.errors.items()):
                lines.append(f'cxr_http_errors_total{{endpoint="{_escape(ep)}",code="{code}"}} {n}')
            head(
                "cxr_http_request_duration_seconds",
                "histogram",
                "Time from the request's arrival to the end of its response.",
            )
            for ep, hist in sorted(self.latency.items()):
                lines += hist.lines(
                    "cxr_http_request_duration_seconds", f'endpoint="{_escape(ep)}"'
                )
            head("cxr_http_requests_in_flight", "gauge", "Requests being handled now.")
            lines.append(f"cxr_http_requests_in_flight {self.in_flight}")
            head("cxr_batch_size", "histogram", "Images per forward pass (micro-batches).")
            lines += self.batches.lines("cxr_batch_size")
            head("cxr_images_predicted_total", "counter", "Images run through the model.")
            lines.append(f"cxr_images_predicted_total {self.images}")
            head("cxr_queue_depth", "gauge", "Images waiting for a micro-batch.")
            lines.append(f"cxr_queue_depth {self.queue_depth()}")
            head(
                "cxr_queue_full_rejections_total",
                "counter",
                "Requests answered 503 because the queue was full.",
            )
            lines.append(f"cxr_queue_full_rejections_total {self.rejected_full}")
            head("cxr_process_start_time_seconds", "gauge", "Start of the service, Unix time.")
            lines.append(f"cxr_process_start_time_seconds {self.started:.3f}")
        return "\n".join(lines) + "\n"


class MetricsMiddleware:
    """Counts every HTTP request with its status and latency (to the last body byte)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status: dict[str, Any] = {"code": 500, "done": False}
        endpoint = self.metrics.endpoint(str(scope.get("path", "")))
        method = str(scope.get("method", ""))
        self.metrics.request_started()

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, counting_send)
        finally:
            self.metrics.request_finished(
                endpoint, method, status["code"], time.perf_counter() - start
            )
