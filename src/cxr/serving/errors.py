"""How the service answers an error: the one place where an error a user can cause
(:class:`~cxr.errors.CxrError`: a bad request, form, image or field) becomes an HTTP 4xx
answer ``{"detail": ..., "files": [...]}``.

- :class:`ServiceError` carries its own status (401, 404, 413, 415, 422, 501, 503, and 500
  for a damaged model) and headers (``Retry-After``, ``WWW-Authenticate``);
- :class:`~cxr.serving.uploads.FormError` (a body that is not the expected form) its status;
- any other :class:`~cxr.errors.CxrError` is a bad request field or file: 422 with its
  message.

Request bodies over the size limit are refused (413) before any route runs, by
:class:`~cxr.serving.limits.RequestSizeLimit`.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from cxr.errors import CxrError
from cxr.images import ImageReadError
from cxr.serving.uploads import FormError

__all__ = ["ServiceError", "add_error_handlers", "unreadable"]

#: The status of an error a user caused that names none of its own.
USER_ERROR_STATUS = 422


class ServiceError(CxrError):
    """An error answered as ``{"detail": ..., "files": [...]}`` with ``status``."""

    def __init__(
        self,
        status: int,
        detail: str,
        files: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status, self.detail, self.files, self.headers = status, detail, files, headers


def unreadable(failures: Sequence[ImageReadError]) -> ServiceError:
    """The answer when no uploaded file is a usable image: 415 when none is in a format cxr
    reads (decided from the bytes), else 422 (empty, cut short, too large, no usable pixels);
    each file listed under ``files`` with its reason."""
    files = [{"path": e.path, "reason": e.reason, "detail": e.detail} for e in failures]
    status = 415 if all(e.reason == "unsupported" for e in failures) else 422
    if len(failures) == 1:
        e = failures[0]
        detail = f"{e.path}: {e.reason}: {e.detail}"
    else:
        detail = f"none of the {len(failures)} files could be read as an image"
    return ServiceError(status, detail, files)


def error_response(err: CxrError) -> JSONResponse:
    """The JSON answer of an error a user caused (see the module's text)."""
    if isinstance(err, ServiceError):
        body: dict[str, object] = {"detail": err.detail}
        if err.files is not None:
            body["files"] = err.files
        return JSONResponse(body, err.status, headers=err.headers)
    if isinstance(err, FormError):
        return JSONResponse({"detail": err.detail}, err.status)
    return JSONResponse({"detail": str(err)}, USER_ERROR_STATUS)


def add_error_handlers(app: FastAPI) -> None:
    """Answer every :class:`~cxr.errors.CxrError` a route raises by :func:`error_response`."""

    async def user_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, CxrError)
        return error_response(err)

    app.add_exception_handler(CxrError, user_error)
