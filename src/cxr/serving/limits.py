"""ASGI middleware of the service: the request-size limit and the security headers.

Both are plain ASGI (no buffering of bodies, no thread hops). :class:`RequestSizeLimit`
answers 413 before reading a body whose ``Content-Length`` is too large, and stops a body
without one (chunked) the moment it grows past the limit: the application never sees more
than ``max_bytes``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cxr.errors import CxrError

__all__ = ["BodyTooLarge", "RequestSizeLimit", "SecurityHeaders", "send_json"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyTooLarge(CxrError):
    """Raised from ``receive`` once a request body has passed the limit."""


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    """Send a whole JSON response on a raw ASGI ``send``."""
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
                (b"connection", b"close"),
                *(headers or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})


class RequestSizeLimit:
    """413 for request bodies over ``max_bytes``, enforced while the body streams in."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    def _reject_body(self) -> dict[str, Any]:
        mb = self.max_bytes / (1024 * 1024)
        return {
            "detail": f"the request body is larger than the limit of {mb:g} MiB "
            f"({self.max_bytes} bytes)"
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await send_json(send, 400, {"detail": "malformed Content-Length header"})
                    return
                if declared > self.max_bytes:
                    await send_json(send, 413, self._reject_body())
                    return
        received, exceeded, started = 0, False, False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise BodyTooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise BodyTooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # whatever the application answers, the client gets the 413
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not exceeded or started:
                raise
        if exceeded and not started:
            await send_json(send, 413, self._reject_body())


class SecurityHeaders:
    """Headers on every response: ``X-Content-Type-Options: nosniff``, ``Referrer-Policy:
    no-referrer``, and ``Cache-Control: no-store`` under ``no_store_prefix`` (results about
    patients are never kept by a browser or proxy cache)."""

    def __init__(self, app: ASGIApp, no_store_prefix: str = "/v1/") -> None:
        self.app, self.prefix = app, no_store_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        no_store = str(scope.get("path", "")).startswith(self.prefix)

        async def add_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                extra = [
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                ]
                if no_store:
                    extra.append((b"cache-control", b"no-store"))
                headers += [(k, v) for k, v in extra if k not in present]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, add_headers)
