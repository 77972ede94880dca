"""The settings of ``cxr serve`` / :func:`cxr.serving.create_app`, in one record."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["API_KEY_ENV", "ServeSettings"]

#: The environment variable ``cxr serve`` reads the API key from when ``--api-key`` is not given.
API_KEY_ENV = "CXR_API_KEY"


@dataclass(frozen=True)
class ServeSettings:
    """Limits and switches of the service.

    Attributes:
        max_request_bytes: largest request body (enforced while it streams in): 413 beyond.
        max_files: files per request at most: 413 beyond.
        max_batch_size: images per forward pass at most (micro-batches).
        max_wait_ms: how long the first image of a micro-batch waits for others, while
            other requests are being received or decoded (a lone request runs at once).
        max_queue: images waiting for a batch at most; a request that does not fit gets
            503 with ``Retry-After``.
        max_explanations: explanations waiting or running at most: 503 beyond.
        retry_after_s: the ``Retry-After`` of a 503, seconds.
        api_key: when set, ``/v1/*`` needs ``Authorization: Bearer <api_key>`` (401 without).
        cors_origins: origins allowed to call the API from a browser; none = CORS off.
        display_size: side of the preview and heatmap PNGs (at least the model's input side).
        results_kept: DICOM SRs of DICOM uploads kept for download at most (the oldest go
            first); see :mod:`cxr.serving.results`.
        results_max_bytes: bytes of kept SRs at most.
        results_ttl_s: seconds an SR is kept for download (then its URL answers 404).
    """

    max_request_bytes: int = 20 * 1024 * 1024
    max_files: int = 16
    max_batch_size: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 64
    max_explanations: int = 4
    retry_after_s: int = 1
    api_key: str | None = None
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    display_size: int = 512
    results_kept: int = 64
    results_max_bytes: int = 64 * 1024 * 1024
    results_ttl_s: int = 900

    def __post_init__(self) -> None:
        for name in (
            "max_request_bytes",
            "max_files",
            "max_batch_size",
            "max_queue",
            "max_explanations",
            "retry_after_s",
            "display_size",
            "results_kept",
            "results_max_bytes",
            "results_ttl_s",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.max_wait_ms, (int, float)) or not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"max_wait_ms must be from 0 to 1000, got {self.max_wait_ms!r}")
        if self.api_key is not None and (not self.api_key or self.api_key != self.api_key.strip()):
            raise ValueError("api_key must be a non-empty string without surrounding spaces")
        object.__setattr__(self, "cors_origins", tuple(self.cors_origins))
