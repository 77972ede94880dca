"""The service's OpenAPI description where FastAPI cannot infer it: the multipart request
bodies (read by hand, so described by hand), the error answers of each endpoint, the API's
description, and the ``/docs`` page served from the local Swagger UI files (no CDN).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from cxr import RESEARCH_NOTICE
from cxr.serving.schemas import ErrorResponse

__all__ = ["BINARY", "DESCRIPTION", "error_responses", "mount_docs", "multipart", "swagger_assets"]

#: A file field of a multipart body.
BINARY: dict[str, Any] = {"type": "string", "format": "binary"}

_ERROR_TEXT = {
    400: "Malformed request (multipart body, Content-Length)",
    401: "Missing or wrong API key (`Authorization: Bearer ...`)",
    404: "Unknown or expired result (SRs are kept for a limited time and number)",
    413: "Request body over the size limit, or too many files",
    415: "Not multipart/form-data, or no file is a PNG, JPEG or DICOM (decided from bytes)",
    422: "Unusable image (empty, truncated, decompression bomb, DICOM without usable "
    "pixels) or bad field",
    501: "Explanations need the torch backend",
    503: "Busy (queue full; see Retry-After) or starting",
}


def multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    """``openapi_extra`` of an endpoint whose body is ``multipart/form-data`` with these
    fields (JSON-schema ``properties``), ``required`` ones named."""
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": properties, "required": required}
                }
            },
        }
    }


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses`` of an endpoint: each status code with the error body and its meaning
    (503 with its ``Retry-After`` header)."""
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": _ERROR_TEXT[code]}
        if code == 503:
            entry["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
            }
        out[code] = entry
    return out


def swagger_assets() -> Path | None:
    """Swagger UI's files from the ``swagger-ui-bundle-v2`` package (a dependency of the
    ``serve`` extra), so that /docs needs no CDN; None when it is not installed."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def mount_docs(app: FastAPI, assets: Path) -> None:
    """``/docs``: Swagger UI from ``assets`` (mounted at ``/docs-assets``), honouring the
    ASGI ``root_path`` behind a proxy."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles

    app.mount("/docs-assets", StaticFiles(directory=assets), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request) -> Response:
        root = str(request.scope.get("root_path", "")).rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title="cxr API",
            swagger_js_url=f"{root}/docs-assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs-assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs-assets/favicon-32x32.png",
        )


DESCRIPTION = f"""
Upload chest X-rays (PNG, JPEG or DICOM; the format is decided from the bytes) and get every
label of the model ranked by probability with its threshold, and Grad-CAM heatmaps.

- `POST /v1/predict`: multipart field `files` (one or more); the record `cxr predict --format
  json` prints, per image with `ranked`, `headline`, `ood`, `notice`, `sr` and `sr_note`.
- `GET /v1/results/{{token}}/sr.dcm`: for a DICOM upload, the image's `sr` is the URL of its
  DICOM SR (`application/dicom`, Comprehensive 3D SR with the TID 1500 measurement report, as
  `cxr predict --dicom-out` writes it): the same probabilities, thresholds and decisions as
  the JSON, in the source's study. A PNG or JPEG has `sr: null` (an SR must reference a
  DICOM source image by its UIDs); so has a DICOM without its UIDs, or every DICOM when
  highdicom is not installed; `sr_note` says why. SRs are kept in memory for a limited time
  and number (`limits` of `/v1/model`; then 404) and need the API key as every `/v1` call
  does. The SR is a resource of its own, so `/v1/predict` always answers JSON and a client
  fetches only the SRs it wants.
- `POST /v1/explain`: multipart `file`, optional `labels` (comma-separated) or `top_k`, and
  `method` (`gradcam`, `gradcam++`); heatmaps and overlays as base64 PNG.
- `POST /v1/preview`: the image as the server decodes it, PNG.
- `GET /v1/model`: the model and its file; `GET /healthz`, `GET /readyz`, `GET /metrics`.

Uploads are processed in memory; nothing is written to disk or logged about them. The SRs
kept for download carry the source's patient and study attributes: they stay in memory only.
**{RESEARCH_NOTICE}**
"""
