"""The one place where user errors become HTTP answers (cxr.serving.errors)."""

from __future__ import annotations

import warnings

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed")

from fastapi import FastAPI  # noqa: E402

with warnings.catch_warnings():  # Starlette's note that it prefers httpx2 to httpx
    warnings.filterwarnings("ignore", "Using `httpx` with `starlette.testclient`")
    from fastapi.testclient import TestClient  # noqa: E402

from cxr.errors import CxrError  # noqa: E402
from cxr.images import ImageReadError  # noqa: E402
from cxr.serving.errors import ServiceError, add_error_handlers, unreadable  # noqa: E402
from cxr.serving.uploads import FormError  # noqa: E402


class BadField(CxrError, ValueError):
    """A user error of some other part of cxr."""


def test_every_user_error_becomes_a_4xx_answer():
    app = FastAPI()
    add_error_handlers(app)
    errors: dict[str, Exception] = {
        "service": ServiceError(
            503, "busy", files=[{"path": "a.png"}], headers={"Retry-After": "1"}
        ),
        "form": FormError(415, "not multipart/form-data"),
        "other": BadField("top_k must be from 1 to 3"),
        "image": ImageReadError("a.png", "truncated", "the file ends early"),
    }

    @app.get("/raise/{kind}")
    async def fail(kind: str) -> None:
        raise errors[kind]

    client = TestClient(app)
    r = client.get("/raise/service")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json() == {"detail": "busy", "files": [{"path": "a.png"}]}
    r = client.get("/raise/form")
    assert r.status_code == 415 and r.json() == {"detail": "not multipart/form-data"}
    r = client.get("/raise/other")
    assert r.status_code == 422 and r.json() == {"detail": "top_k must be from 1 to 3"}
    r = client.get("/raise/image")
    assert r.status_code == 422 and "a.png" in r.json()["detail"]


def test_unreadable_images():
    unsupported = ImageReadError("a.txt", "unsupported", "not a PNG, JPEG or DICOM")
    truncated = ImageReadError("b.png", "truncated", "the file ends early")
    one = unreadable([unsupported])
    assert one.status == 415 and one.detail == "a.txt: unsupported: not a PNG, JPEG or DICOM"
    assert one.files == [
        {"path": "a.txt", "reason": "unsupported", "detail": "not a PNG, JPEG or DICOM"}
    ]
    both = unreadable([unsupported, truncated])
    assert both.status == 422 and both.detail == "none of the 2 files could be read as an image"
    assert [f["reason"] for f in both.files or []] == ["unsupported", "truncated"]
    assert isinstance(both, CxrError)
