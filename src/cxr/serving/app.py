"""The FastAPI application of ``cxr serve``: REST API, web page, metrics.

:func:`create_app` puts the pieces together: the :class:`~cxr.serving.service.Service`
(predictor, worker threads, micro-batcher, metrics), the routes of
:mod:`cxr.serving.routes`, the error answers of :mod:`cxr.serving.errors`, the OpenAPI
description of :mod:`cxr.serving.openapi`, and the middleware (size limit, CORS, security
headers, metrics).

Research use only: nothing the service answers is a diagnosis.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from fastapi import FastAPI

from cxr import RESEARCH_NOTICE, __version__
from cxr.inference import Predictor
from cxr.serving.answers import ood_report
from cxr.serving.errors import ServiceError, add_error_handlers
from cxr.serving.limits import RequestSizeLimit, SecurityHeaders
from cxr.serving.metrics import MetricsMiddleware
from cxr.serving.openapi import DESCRIPTION, mount_docs, swagger_assets
from cxr.serving.routes import add_page, add_probes, api_router
from cxr.serving.service import Service
from cxr.serving.settings import ServeSettings

__all__ = ["Service", "ServiceError", "create_app", "ood_report"]

_PathLike = str | os.PathLike[str]


def create_app(
    model: _PathLike | Predictor,
    *,
    backend: str = "auto",
    device: str = "cpu",
    precision: str = "auto",
    settings: ServeSettings | None = None,
) -> FastAPI:
    """The ``cxr serve`` application for a model file (any file :class:`Predictor` loads)
    or a ready :class:`Predictor`.

    Args:
        model: model file path, or a Predictor (then ``backend``/``device`` are unused).
        backend: ``"torch"``, ``"onnx"`` (names of :data:`cxr.inference.BACKENDS`) or
            ``"auto"`` (by the file: ``.onnx`` on ONNX Runtime, anything else with torch).
        device, precision: as for :class:`Predictor`.
        settings: limits, batching, API key, CORS (:class:`ServeSettings`).

    The app starts its worker threads and micro-batcher in its lifespan: run it with an
    ASGI server (uvicorn) or ``with TestClient(app):``.
    """
    from cxr.inference import BACKENDS

    settings = settings if settings is not None else ServeSettings()
    if isinstance(model, Predictor):
        predictor = model
    else:
        if backend not in ("auto", *BACKENDS):
            raise ValueError(
                f"backend {backend!r} is not available in this cxr; it has {['auto', *BACKENDS]}"
            )
        predictor = Predictor(
            model,
            device=device,
            precision=precision,
            batch_size=settings.max_batch_size,
            backend=backend,
        )
    service = Service(predictor, settings)
    swagger = swagger_assets()
    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's OpenTelemetry hooks: off (nothing about a request leaves the process)
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(
        title="cxr",
        version=__version__,
        summary="Chest X-ray findings and Grad-CAM heatmaps. " + RESEARCH_NOTICE,
        description=DESCRIPTION,
        lifespan=service.lifespan,
        docs_url=None if swagger else "/docs",
        redoc_url=None,
        **extra,
    )
    app.state.service = service
    add_error_handlers(app)
    add_probes(app, service)
    app.include_router(api_router(service))
    add_page(app)
    if swagger:
        mount_docs(app, swagger)

    # middleware, innermost first ------------------------------------------------------------
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
        )
    app.add_middleware(SecurityHeaders)
    app.add_middleware(MetricsMiddleware, metrics=service.metrics)
    return app
