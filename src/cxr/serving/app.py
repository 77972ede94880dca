"""The FastAPI application of ``cxr serve``: REST API, web page, metrics.

Everything runs on the inference package: a :class:`~cxr.inference.Predictor` (torch or
another backend) predicts, :func:`cxr.images.load_bytes` decodes uploads exactly as
``cxr predict`` decodes files, :func:`cxr.explain.explain` makes the heatmaps, and the
answers are the :class:`~cxr.inference.PredictionResult` records ``cxr predict --format
json`` prints, with a few keys more. One model per process; see :mod:`cxr.serving.batching`
for how concurrent requests share it.

Research use only: nothing the service answers is a diagnosis.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import inspect
import io
import logging
import math
import os
import platform
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from importlib import metadata, resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cxr import RESEARCH_NOTICE, __version__
from cxr.choices import CAM_METHODS
from cxr.images import ImageReadError, load_bytes
from cxr.inference import ImagePrediction, PredictionResult, Predictor
from cxr.serving.batching import BatcherStopped, MicroBatcher, QueueFull
from cxr.serving.limits import RequestSizeLimit, SecurityHeaders
from cxr.serving.metrics import Metrics, MetricsMiddleware
from cxr.serving.schemas import (
    ErrorResponse,
    ExplainResponse,
    Health,
    ModelInfo,
    PredictResponse,
)
from cxr.serving.settings import ServeSettings
from cxr.serving.uploads import FormError, Upload, read_form

__all__ = ["ServiceError", "create_app", "ood_report"]

log = logging.getLogger("cxr.serving")
_T = TypeVar("_T")
_PathLike = str | os.PathLike[str]

#: Where each kind of unreadable image goes: not an image format cxr reads -> 415; an image
#: that is empty, cut short, too large or without usable pixels -> 422.
_STATUS_OF_REASON = {"unsupported": 415}
_PAGE_FILES = {"app.js": "text/javascript", "style.css": "text/css"}
_PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; base-uri 'self'; form-action 'none'; frame-ancestors 'none'"
)
_ENDPOINTS = (
    "/",
    "/healthz",
    "/readyz",
    "/metrics",
    "/openapi.json",
    "/docs",
    "/v1/model",
    "/v1/predict",
    "/v1/explain",
    "/v1/preview",
)
_EXPLAIN_TORCH = (
    "explanations need the torch backend (or an ONNX file from cxr export whose head has "
    "no hidden layers); serve the .safetensors model file with --backend torch for heatmaps"
)

#: ``explainer(image, labels, top_k, method)`` -> ``list[cxr.explain.Explanation]``.
Explainer = Callable[[np.ndarray, list[str] | None, int, str], list[Any]]


def make_explainer(backend: Any) -> tuple[Explainer | None, str]:
    """How this backend's heatmaps are made: (function, "") or (None, why there are none).

    The torch backend differentiates its model (:func:`cxr.explain.explain`); the ONNX
    backend computes Grad-CAM in closed form from its feature map and head weights
    (:func:`cxr.explain_cam.explain_onnx`), which heads with hidden layers do not allow.
    """
    model = getattr(backend, "model", None)
    if getattr(backend, "name", "") == "torch" and model is not None:

        def with_torch(image: np.ndarray, labels: list[str] | None, k: int, method: str) -> Any:
            from cxr.explain import explain

            return explain(model, image, labels=labels, top_k=k, method=method)

        return with_torch, ""
    if not (hasattr(backend, "run") and hasattr(backend, "head")):
        return None, _EXPLAIN_TORCH
    try:
        from cxr.explain_cam import CamUnavailable, check_cam_head, explain_onnx
    except ImportError:
        return None, _EXPLAIN_TORCH
    try:
        check_cam_head(backend.spec.head, backend.head, backend.path)
    except CamUnavailable as err:
        return None, f"{err}; {_EXPLAIN_TORCH}"

    def closed_form(image: np.ndarray, labels: list[str] | None, k: int, method: str) -> Any:
        return explain_onnx(backend, image, labels=labels, top_k=k, method=method)

    return closed_form, ""


class ServiceError(Exception):
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


# what an image says beyond its probabilities ----------------------------------------------
def ood_report(item: ImagePrediction) -> dict[str, Any]:
    """The not-a-chest-X-ray check of one prediction: ``{"available", "flag", "score"}``.

    Read from the prediction record (``ood_flag`` / ``ood_score`` once the model file
    carries the check); ``available`` is False, with flag and score None, for models
    without it, which is every model file today.
    """
    flag = getattr(item, "ood_flag", None)
    score = getattr(item, "ood_score", None)
    if flag is None and score is None:
        return {"available": False, "flag": None, "score": None}
    return {
        "available": True,
        "flag": None if flag is None else bool(flag),
        "score": None if score is None or not math.isfinite(float(score)) else float(score),
    }


def _finite(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become None (a model's training summary may hold
    NaN, which JSON cannot)."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(float(value)) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    return value


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _sha256(path: Path) -> tuple[str, int]:
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            n += len(block)
    return h.hexdigest(), n


def _png(array: np.ndarray, level: int = 1) -> bytes:
    """PNG bytes; zlib level 1 by default (radiographs barely compress more, 3x slower)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


def _b64png(array: np.ndarray, level: int = 1) -> str:
    return base64.b64encode(_png(array, level)).decode("ascii")


def _heatmap_rgba(heatmap: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 4): the heatmap in the jet colour map (as :func:`cxr.explain.overlay`
    colours it), alpha = its value, so that cold areas are transparent."""
    from matplotlib import colormaps

    heat = np.clip(np.nan_to_num(np.asarray(heatmap, np.float32)), 0.0, 1.0)
    rgba = colormaps["jet"](heat)
    rgba[..., 3] = heat
    return np.clip(np.rint(rgba * 255.0), 0, 255).astype(np.uint8)


# the service ------------------------------------------------------------------------------
class Service:
    """The state behind the app: the predictor, its worker threads, batcher and metrics.

    Available as ``app.state.service``.
    """

    def __init__(self, predictor: Predictor, settings: ServeSettings) -> None:
        self.predictor, self.settings = predictor, settings
        self.labels = tuple(predictor.labels)
        self.thresholds = dict(predictor.thresholds)
        self.size, self.fit = predictor.size, predictor.fit
        self.display_size = max(settings.display_size, self.size)
        self.batcher: MicroBatcher | None = None
        self.model_pool: ThreadPoolExecutor | None = None
        self.decode_pool: ThreadPoolExecutor | None = None
        self.ready = False
        self.explaining = 0
        self.metrics = Metrics(
            _ENDPOINTS,
            prefixes=("/static/", "/docs-assets/"),
            queue_depth=lambda: 0 if self.batcher is None else self.batcher.depth,
        )
        self.explainer, self.no_explanations = make_explainer(predictor.backend)
        self.model_summary = {**predictor.describe(), "path": predictor.path.name}
        self.info = self._model_info()

    def _model_info(self) -> dict[str, Any]:
        p, backend = self.predictor, self.predictor.backend
        sha, n_bytes = _sha256(p.path)
        loaded = getattr(backend, "loaded", None)
        describe = {k: v for k, v in backend.describe().items() if k != "path"}
        head = getattr(p.spec, "head", None)
        versions = {
            "cxr": __version__,
            "model_file_cxr": getattr(loaded, "cxr_version", None) or None,
            "python": platform.python_version(),
            "torch": _version("torch"),
            "fastapi": _version("fastapi"),
            "uvicorn": _version("uvicorn"),
            "pydicom": _version("pydicom"),
        }
        if backend.name != "torch":
            versions["onnxruntime"] = _version("onnxruntime")
        return _finite(
            {
                "notice": RESEARCH_NOTICE,
                "labels": list(self.labels),
                "backbone": p.spec.backbone,
                "input_size": self.size,
                "fit": self.fit,
                "preprocessing": p.preprocessing.to_dict(),
                "head": head.to_dict() if head is not None else None,
                "thresholds": dict(self.thresholds),
                "training": dict(backend.training),
                "file": {"name": p.path.name, "bytes": n_bytes, "sha256": sha},
                "backend": describe,
                "versions": versions,
                "explanations": {
                    "available": self.explainer is not None,
                    "methods": list(CAM_METHODS) if self.explainer is not None else [],
                    "detail": self.no_explanations,
                },
                "ood": {
                    "available": self.predictor.ood is not None,
                    "threshold": None
                    if self.predictor.ood is None
                    else float(self.predictor.ood.threshold),
                },
                "limits": {
                    "max_request_bytes": self.settings.max_request_bytes,
                    "max_files": self.settings.max_files,
                    "max_batch_size": self.settings.max_batch_size,
                    "max_wait_ms": self.settings.max_wait_ms,
                    "max_queue": self.settings.max_queue,
                },
            }
        )

    # life cycle ------------------------------------------------------------------------
    @asynccontextmanager
    async def lifespan(self, app: FastAPI) -> AsyncIterator[None]:
        self.model_pool = ThreadPoolExecutor(1, thread_name_prefix="cxr-model")
        # one decoding thread: Pillow's decompression-bomb guard is a warnings filter,
        # process-wide state that concurrent decodes must not race on
        self.decode_pool = ThreadPoolExecutor(1, thread_name_prefix="cxr-decode")
        self.batcher = MicroBatcher(
            self._predict_rows,
            self.model_pool,
            self.settings.max_batch_size,
            self.settings.max_wait_ms,
            self.settings.max_queue,
            on_batch=self.metrics.batch,
        )
        restore = _quiet_pydicom()
        try:
            await self.batcher.start()
            warm = np.zeros((1, self.size, self.size), np.uint8)  # first pass: allocations
            await asyncio.get_running_loop().run_in_executor(
                self.model_pool, self._predict_rows, warm
            )
            self.ready = True
            log.info(
                "serving %s (%s, %s px, backend %s)",
                self.predictor.path.name,
                self.predictor.spec.backbone,
                self.size,
                self.predictor.backend.name,
            )
            yield
        finally:
            self.ready = False
            await self.batcher.stop()
            self.model_pool.shutdown(wait=True)
            self.decode_pool.shutdown(wait=True)
            restore()

    def _predict_rows(self, images: np.ndarray) -> np.ndarray:
        """One row per image: the L probabilities, then (when the model file has the
        not-a-chest-X-ray gate) its score, so that the batcher hands each request its rows."""
        probs, scores = self.predictor.predict_arrays_ood(images)
        if scores is None:
            return probs
        return np.concatenate([probs, scores[:, None].astype(probs.dtype)], axis=1)

    def _item(self, name: str, row: np.ndarray) -> ImagePrediction:
        n = len(self.labels)
        if len(row) == n or self.predictor.ood is None:
            return ImagePrediction(name, row[:n])
        score = float(row[n])
        flag = bool(self.predictor.ood.flags(np.array([score]))[0])
        return ImagePrediction(name, row[:n], ood_score=score, ood_flag=flag)

    async def _in(self, pool: ThreadPoolExecutor | None, fn: Callable[..., _T], *args: Any) -> _T:
        if pool is None or not self.ready:
            raise ServiceError(503, "the service is starting or stopping; try again")
        return await asyncio.get_running_loop().run_in_executor(pool, fn, *args)

    # decoding --------------------------------------------------------------------------
    def _decode(self, uploads: Sequence[Upload], side: int) -> list[np.ndarray | ImageReadError]:
        out: list[np.ndarray | ImageReadError] = []
        for up in uploads:
            try:
                out.append(load_bytes(up.data, side, self.fit, up.name))
            except ImageReadError as err:
                out.append(err)
            except Exception as err:  # a decoder's own error: the file is unusable
                out.append(ImageReadError(up.name, "unreadable", f"{type(err).__name__}: {err}"))
        return out

    @staticmethod
    def _refuse(failures: Sequence[ImageReadError]) -> ServiceError:
        files = [{"path": e.path, "reason": e.reason, "detail": e.detail} for e in failures]
        status = 415 if all(e.reason == "unsupported" for e in failures) else 422
        if len(failures) == 1:
            e = failures[0]
            detail = f"{e.path}: {e.reason}: {e.detail}"
        else:
            detail = f"none of the {len(failures)} files could be read as an image"
        return ServiceError(status, detail, files)

    async def _one_image(self, request: Request) -> tuple[Upload, dict[str, list[str]]]:
        form = await read_form(request, self.settings.max_files)
        if len(form.files) != 1:
            raise ServiceError(
                422, f"send exactly one image file (multipart field 'file'), got {len(form.files)}"
            )
        return form.files[0], form.fields

    # endpoints ---------------------------------------------------------------------------
    async def predict(self, request: Request) -> dict[str, Any]:
        if self.batcher is None or not self.ready:
            raise ServiceError(503, "the service is starting or stopping; try again")
        with self.batcher.arriving():  # batches being gathered wait for this request
            form = await read_form(request, self.settings.max_files)
            if not form.files:
                raise ServiceError(
                    422, "no image files: send one or more in the multipart field 'files'"
                )
            decoded = await self._in(self.decode_pool, self._decode, form.files, self.size)
        failures = [d for d in decoded if isinstance(d, ImageReadError)]
        images = [d for d in decoded if not isinstance(d, ImageReadError)]
        if not images:
            raise self._refuse(failures)
        if self.batcher is None or not self.ready:
            raise ServiceError(503, "the service is starting or stopping; try again")
        try:
            probs = await self.batcher.submit(images)
        except QueueFull as err:
            self.metrics.queue_full()
            raise ServiceError(
                503,
                f"the service is busy ({err}); retry after {self.settings.retry_after_s} s",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            ) from None
        except ValueError as err:  # non-finite probabilities: a damaged model file
            log.error("prediction failed: %s", type(err).__name__)
            raise ServiceError(500, "the model computed unusable probabilities") from None
        except BatcherStopped:  # shutting down under this request
            raise ServiceError(503, "the service is stopping; try again") from None
        rows = iter(probs)
        items = [
            ImagePrediction(up.name, None, d.reason, d.detail)
            if isinstance(d, ImageReadError)
            else self._item(up.name, next(rows))
            for up, d in zip(form.files, decoded, strict=True)
        ]
        return self.prediction_body(items)

    def prediction_body(self, items: list[ImagePrediction]) -> dict[str, Any]:
        """``PredictionResult.to_dict()`` (what ``cxr predict --format json`` prints), each
        image with ``ranked``, ``headline``, ``ood`` and ``notice`` added."""
        result = PredictionResult(self.labels, self.thresholds, items, model=self.model_summary)
        body = result.to_dict()
        for item, image in zip(result.predicted, body["images"], strict=True):
            p = item.values()
            flags = result.above(p)
            ranked = [
                {
                    "rank": rank,
                    "label": self.labels[i],
                    "probability": float(p[i]),
                    "threshold": self.thresholds.get(self.labels[i]),
                    "above_threshold": flags[i],
                }
                for rank, i in enumerate(np.argsort(-p, kind="stable"), start=1)
            ]
            extra = {
                "ranked": ranked,
                "headline": result.headline(p),
                "ood": ood_report(item),
                "notice": RESEARCH_NOTICE,
            }
            for key, value in extra.items():
                image.setdefault(key, value)
        return body

    def _parse_explain(self, fields: dict[str, list[str]]) -> tuple[list[str] | None, int, str]:
        def value(name: str) -> str | None:
            values = fields.get(name)
            return None if values is None else ",".join(values)

        method = (value("method") or "gradcam").strip()
        if method not in CAM_METHODS:
            raise ServiceError(422, f"method must be one of {list(CAM_METHODS)}, got {method!r}")
        text = value("labels")
        labels = None
        if text is not None and text.strip():
            labels = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
            unknown = [x for x in labels if x not in self.labels]
            if unknown or not labels:
                raise ServiceError(
                    422,
                    f"labels {unknown} are not labels of the model; it has {list(self.labels)}",
                )
        raw_k = value("top_k")
        top_k = min(3, len(self.labels))
        if raw_k is not None and raw_k.strip():
            try:
                top_k = int(raw_k.strip())
            except ValueError:
                raise ServiceError(422, f"top_k must be an integer, got {raw_k!r}") from None
            if not 1 <= top_k <= len(self.labels):
                raise ServiceError(
                    422, f"top_k must be from 1 to {len(self.labels)} (the model's labels)"
                )
        return labels, top_k, method

    async def explain(self, request: Request) -> dict[str, Any]:
        upload, fields = await self._one_image(request)
        labels, top_k, method = self._parse_explain(fields)
        if self.explainer is None:
            raise ServiceError(501, self.no_explanations)
        sides = sorted({self.size, self.display_size})
        decoded = await self._in(
            self.decode_pool, lambda: [self._decode([upload], s)[0] for s in sides]
        )
        failures = [d for d in decoded if isinstance(d, ImageReadError)]
        if failures:
            raise self._refuse(failures[:1])
        pixels, display = decoded[0], decoded[-1]
        assert isinstance(pixels, np.ndarray) and isinstance(display, np.ndarray)
        if self.explaining >= self.settings.max_explanations:
            self.metrics.queue_full()
            raise ServiceError(
                503,
                f"{self.explaining} explanations are being made (at most "
                f"{self.settings.max_explanations}); retry after {self.settings.retry_after_s} s",
                headers={"Retry-After": str(self.settings.retry_after_s)},
            )
        explainer = self.explainer
        self.explaining += 1
        try:
            found = await self._in(
                self.model_pool, lambda: explainer(pixels, labels, top_k, method)
            )
        finally:
            self.explaining -= 1
        return await self._in(self.decode_pool, self._explanation_body, upload, display, found)

    def _explanation_body(
        self, upload: Upload, display: np.ndarray, found: list[Any]
    ) -> dict[str, Any]:
        from cxr.explain import overlay

        out = []
        for ex in found:
            t = self.thresholds.get(ex.label)
            out.append(
                {
                    "label": ex.label,
                    "probability": float(ex.probability),
                    "threshold": t,
                    "above_threshold": None if t is None else bool(ex.probability >= t),
                    "note": ex.note,
                    "heatmap_png": _b64png(_heatmap_rgba(ex.heatmap), level=6),
                    "overlay_png": _b64png(overlay(display, ex.heatmap)),
                }
            )
        return {
            "notice": RESEARCH_NOTICE,
            "path": upload.name,
            "method": found[0].method if found else "gradcam",
            "input_size": self.size,
            "display_size": int(display.shape[0]),
            "image_png": _b64png(display),
            "explanations": out,
        }

    async def preview(self, request: Request) -> bytes:
        upload, _ = await self._one_image(request)
        decoded = await self._in(
            self.decode_pool, lambda: self._decode([upload], self.display_size)[0]
        )
        if isinstance(decoded, ImageReadError):
            raise self._refuse([decoded])
        return await self._in(self.decode_pool, _png, decoded)


def _quiet_pydicom() -> Callable[[], None]:
    """No DICOM values in the service's log: pydicom's value-validation warnings (which may
    quote a tag) are turned off while the service runs; returns the undo."""
    try:
        from pydicom import config
    except ImportError:  # pragma: no cover - pydicom is a dependency
        return lambda: None
    settings = getattr(config, "settings", None)
    if settings is None or not hasattr(settings, "reading_validation_mode"):
        return lambda: None
    before = settings.reading_validation_mode
    settings.reading_validation_mode = config.IGNORE
    logger = logging.getLogger("pydicom")
    level = logger.level
    logger.setLevel(logging.ERROR)

    def restore() -> None:
        settings.reading_validation_mode = before
        logger.setLevel(level)

    return restore


# OpenAPI of the multipart endpoints (read by hand, so described by hand) -------------------
def _multipart(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
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


_BINARY = {"type": "string", "format": "binary"}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    text = {
        400: "Malformed request (multipart body, Content-Length)",
        401: "Missing or wrong API key (`Authorization: Bearer ...`)",
        413: "Request body over the size limit, or too many files",
        415: "Not multipart/form-data, or no file is a PNG, JPEG or DICOM (decided from bytes)",
        422: "Unusable image (empty, truncated, decompression bomb, DICOM without usable "
        "pixels) or bad field",
        501: "Explanations need the torch backend",
        503: "Busy (queue full; see Retry-After) or starting",
    }
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        entry: dict[str, Any] = {"model": ErrorResponse, "description": text[code]}
        if code == 503:
            entry["headers"] = {
                "Retry-After": {"description": "seconds", "schema": {"type": "integer"}}
            }
        out[code] = entry
    return out


# the app ----------------------------------------------------------------------------------
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
    swagger = _swagger_assets()
    extra: dict[str, Any] = {}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters:
        # FastAPI's OpenTelemetry hooks: off (nothing about a request leaves the process)
        extra["telemetry"] = {"tracing": False, "metrics": False, "logs": False}
    app = FastAPI(
        title="cxr",
        version=__version__,
        summary="Chest X-ray findings and Grad-CAM heatmaps. " + RESEARCH_NOTICE,
        description=_DESCRIPTION,
        lifespan=service.lifespan,
        docs_url=None if swagger else "/docs",
        redoc_url=None,
        **extra,
    )
    app.state.service = service

    # errors -------------------------------------------------------------------------------
    async def service_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, ServiceError)
        body: dict[str, Any] = {"detail": err.detail}
        if err.files is not None:
            body["files"] = err.files
        return JSONResponse(body, err.status, headers=err.headers)

    async def form_error(request: Request, err: Exception) -> Response:
        assert isinstance(err, FormError)
        return JSONResponse({"detail": err.detail}, err.status)

    app.add_exception_handler(ServiceError, service_error)
    app.add_exception_handler(FormError, form_error)

    # probes and metrics ------------------------------------------------------------------------
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

    # the API ----------------------------------------------------------------------------------
    dependencies = []
    if settings.api_key is not None:
        key = settings.api_key.encode()
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

        dependencies.append(Depends(check_key))
    v1 = APIRouter(prefix="/v1", tags=["v1"], dependencies=dependencies)
    auth = (401,) if settings.api_key is not None else ()

    @v1.get("/model", response_model=ModelInfo, responses=_errors(*auth))
    async def model_info() -> dict[str, Any]:
        """The model: labels, backbone, input size, thresholds, training summary, file
        SHA-256, versions, research-use notice."""
        return service.info

    @v1.post(
        "/predict",
        response_model=PredictResponse,
        responses=_errors(400, *auth, 413, 415, 422, 503),
        openapi_extra=_multipart(
            {
                "files": {
                    "type": "array",
                    "items": _BINARY,
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
        `skipped` (415/422 when none can)."""
        return JSONResponse(await service.predict(request))

    @v1.post(
        "/explain",
        response_model=ExplainResponse,
        responses=_errors(400, *auth, 413, 415, 422, 501, 503),
        openapi_extra=_multipart(
            {
                "file": {**_BINARY, "description": "one PNG, JPEG or DICOM file"},
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
            **_errors(400, *auth, 413, 415, 422, 503),
        },
        openapi_extra=_multipart(
            {"file": {**_BINARY, "description": "one PNG, JPEG or DICOM file"}}, ["file"]
        ),
    )
    async def preview(request: Request) -> Response:
        """The image as the server decodes it (DICOM windowing applied), fitted into the
        model's square at the display size: a gray PNG."""
        return Response(await service.preview(request), media_type="image/png")

    app.include_router(v1)

    # the page --------------------------------------------------------------------------------
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

    if swagger:
        _mount_docs(app, swagger)

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


def _swagger_assets() -> Path | None:
    """Swagger UI's files from the ``swagger-ui-bundle-v2`` package (a dependency of the
    ``serve`` extra), so that /docs needs no CDN; None when it is not installed."""
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    path = Path(swagger_ui_bundle.swagger_ui_path)
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def _mount_docs(app: FastAPI, assets: Path) -> None:
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


_DESCRIPTION = f"""
Upload chest X-rays (PNG, JPEG or DICOM; the format is decided from the bytes) and get every
label of the model ranked by probability with its threshold, and Grad-CAM heatmaps.

- `POST /v1/predict`: multipart field `files` (one or more); the record `cxr predict --format
  json` prints, per image with `ranked`, `headline`, `ood` and `notice`.
- `POST /v1/explain`: multipart `file`, optional `labels` (comma-separated) or `top_k`, and
  `method` (`gradcam`, `gradcam++`); heatmaps and overlays as base64 PNG.
- `POST /v1/preview`: the image as the server decodes it, PNG.
- `GET /v1/model`: the model and its file; `GET /healthz`, `GET /readyz`, `GET /metrics`.

Uploads are processed in memory; nothing is written to disk or logged about them.
**{RESEARCH_NOTICE}**
"""
