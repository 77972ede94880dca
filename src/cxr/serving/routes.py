"""The service's routes: the probes and metrics, the versioned API under ``/v1`` (each
endpoint hands its request to :class:`~cxr.serving.service.Service`), and the web page.
"""

from __future__ import annotations

import hmac
from importlib import resources
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cxr.choices import CAM_METHODS
from cxr.serving.errors import ServiceError
from cxr.serving.openapi import BINARY, error_responses, multipart
from cxr.serving.schemas import ExplainResponse, Health, ModelInfo, PredictResponse
from cxr.serving.service import Service

__all__ = ["add_page", "add_probes", "api_router"]

_PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)


def add_probes(app: FastAPI, service: Service) -> None:
    """``/healthz`` (liveness), ``/readyz`` (readiness) and ``/metrics`` (Prometheus)."""

    @app.get("/healthz", response_model=Health, tags=["probes"])
    async def healthz() -> dict[str, str]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get(
        "/readyz",
        response_model=Health,
        tags=["probes"],
        responses={503: {"model": Health, "description": "Starting or stopping"}},
    )
    async def readyz() -> Response:
        """Readiness: the model is loaded and warmed up and the batcher runs."""
        ok = service.ready and service.batcher is not None and service.batcher.running
        return JSONResponse({"status": "ready" if ok else "starting"}, 200 if ok else 503)

    @app.get(
        "/metrics",
        tags=["probes"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text"}},
    )
    async def metrics() -> Response:
        """Prometheus text format: requests, latency histogram, errors by code, batch
        sizes, queue depth."""
        return Response(
            service.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8"
        )


def _api_key_check(api_key: str) -> Any:
    """The dependency that answers 401 unless ``Authorization: Bearer <api_key>``."""
    key = api_key.encode()
    bearer = HTTPBearer(auto_error=False, description="the service's API key")

    async def check_key(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        given = (credentials.credentials if credentials is not None else "").encode()
        if credentials is None or not hmac.compare_digest(given, key):
            raise ServiceError(
                401,
                "this service needs its API key: Authorization: Bearer <key>",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return Depends(check_key)


def api_router(service: Service) -> APIRouter:
    """The API under ``/v1``: ``model``, ``predict``, ``explain``, ``preview`` and
    ``results/{token}/sr.dcm`` (all behind the API key when the settings have one)."""
    api_key = service.settings.api_key
    v1 = APIRouter(
        prefix="/v1",
        tags=["v1"],
        dependencies=[_api_key_check(api_key)] if api_key is not None else [],
    )
    auth = (401,) if api_key is not None else ()

    @v1.get("/model", response_model=ModelInfo, responses=error_responses(*auth))
    async def model_info() -> dict[str, Any]:
        """The model: labels, backbone, input size, thresholds, training summary, file
        SHA-256, versions, research-use notice."""
        return service.info

    @v1.post(
        "/predict",
        response_model=PredictResponse,
        responses=error_responses(400, *auth, 413, 415, 422, 503),
        openapi_extra=multipart(
            {
                "files": {
                    "type": "array",
                    "items": BINARY,
                    "description": "one or more PNG, JPEG or DICOM files",
                }
            },
            ["files"],
        ),
    )
    async def predict(request: Request) -> Response:
        """Every label of each image ranked by probability, with its threshold and whether
        it is reached, the headline, the not-a-chest-X-ray check and the notice. The same
        record as `cxr predict --format json`; files that cannot be read are listed under
        `skipped` (415/422 when none can). Each DICOM upload's `sr` names the URL of its
        DICOM SR (`GET /v1/results/{token}/sr.dcm`); `null` for PNG and JPEG."""
        return JSONResponse(await service.predict(request))

    @v1.post(
        "/explain",
        response_model=ExplainResponse,
        responses=error_responses(400, *auth, 413, 415, 422, 501, 503),
        openapi_extra=multipart(
            {
                "file": {**BINARY, "description": "one PNG, JPEG or DICOM file"},
                "labels": {
                    "type": "string",
                    "description": "labels to explain, comma-separated (default: the top k)",
                },
                "top_k": {
                    "type": "integer",
                    "minimum": 1,
                    "maximum": len(service.labels),
                    "description": "explain the k most probable labels (default 3)",
                },
                "method": {"type": "string", "enum": list(CAM_METHODS)},
            },
            ["file"],
        ),
    )
    async def explain(request: Request) -> Response:
        """Grad-CAM (or Grad-CAM++) heatmaps of one image for named labels or the top k:
        per label the heatmap (RGBA PNG) and the overlay (RGB PNG), base64."""
        return JSONResponse(await service.explain(request))

    @v1.post(
        "/preview",
        response_class=Response,
        responses={
            200: {"content": {"image/png": {}}, "description": "gray PNG"},
            **error_responses(400, *auth, 413, 415, 422, 503),
        },
        openapi_extra=multipart(
            {"file": {**BINARY, "description": "one PNG, JPEG or DICOM file"}}, ["file"]
        ),
    )
    async def preview(request: Request) -> Response:
        """The image as the server decodes it (DICOM windowing applied), fitted into the
        model's square at the display size: a gray PNG."""
        return Response(await service.preview(request), media_type="image/png")

    @v1.get(
        "/results/{token}/sr.dcm",
        response_class=Response,
        responses={
            200: {
                "content": {"application/dicom": {"schema": BINARY}},
                "description": "the DICOM SR file (attachment)",
                "headers": {
                    "Content-Disposition": {
                        "description": "attachment; filename=<upload>_sr.dcm",
                        "schema": {"type": "string"},
                    }
                },
            },
            **error_responses(*auth, 404),
        },
    )
    async def result_sr(
        token: str = Path(description="the token of the `sr` URL of a `/v1/predict` answer"),
    ) -> Response:
        """The DICOM SR (Comprehensive 3D SR, TID 1500) of one DICOM image of a
        `/v1/predict` answer: the same probabilities, thresholds and decisions as its JSON,
        in the source's study, as `cxr predict --dicom-out` writes it. Kept in memory for
        a limited time and number (`/v1/model`'s `limits`); 404 once expired or evicted."""
        found = service.result(token)
        return Response(
            found.data,
            media_type=found.media_type,
            headers={"Content-Disposition": f'attachment; filename="{found.filename}"'},
        )

    return v1


def add_page(app: FastAPI) -> None:
    """The web page at ``/`` and its script and style at ``/static/``, under a strict
    Content-Security-Policy."""
    page = resources.files("cxr.serving").joinpath("page")
    index = page.joinpath("index.html").read_text(encoding="utf-8")
    assets = {name: page.joinpath(name).read_bytes() for name in _PAGE_FILES}
    page_headers = {"Content-Security-Policy": _PAGE_CSP}

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return HTMLResponse(index, headers=page_headers)

    @app.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        if name not in assets:
            raise ServiceError(404, "not found")
        return Response(assets[name], media_type=_PAGE_FILES[name], headers=page_headers)
