"""The state behind ``cxr serve``: the predictor, its worker threads, micro-batcher and
metrics, and what each endpoint does with a request (:class:`Service`).

Everything runs on the inference package: a :class:`~cxr.inference.Predictor` (torch or
another backend) predicts, :func:`cxr.images.load_bytes` decodes uploads exactly as
``cxr predict`` decodes files, and :func:`cxr.explain.explainer_for` makes the heatmaps as
``cxr predict --explain`` makes them, and :mod:`cxr.serving.dicomsr` builds the DICOM SR of
each DICOM upload as ``cxr predict --dicom-out`` does, kept for download in a bounded
:class:`~cxr.serving.results.ResultStore`. One model per process; see
:mod:`cxr.serving.batching` for how concurrent requests share it.

Research use only: nothing the service answers is a diagnosis.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
from fastapi import FastAPI, Request

from cxr.choices import CAM_METHODS
from cxr.explain import CamUnavailable, Explainer, Explanation, explainer_for
from cxr.images import ImageReadError, load_bytes
from cxr.inference import ImagePrediction, Predictor
from cxr.serving.answers import model_info, prediction_body
from cxr.serving.batching import BatcherStopped, MicroBatcher, QueueFull
from cxr.serving.dicomsr import SrOffers
from cxr.serving.encoding import explanation_body, png
from cxr.serving.errors import ServiceError, unreadable
from cxr.serving.metrics import Metrics
from cxr.serving.results import ResultStore, StoredResult
from cxr.serving.settings import ServeSettings
from cxr.serving.uploads import Upload, UploadForm, read_form

__all__ = ["ENDPOINTS", "Service"]

log = logging.getLogger("cxr.serving")
_T = TypeVar("_T")

#: The paths the metrics count one by one.
ENDPOINTS = (
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
_RESULTS_PREFIX = "/v1/results/"
_EXPLAIN_TORCH = (
    "explanations need the torch backend (or an ONNX file from cxr export whose head has "
    "no hidden layers); serve the .safetensors model file with --backend torch for heatmaps"
)
_STARTING = "the service is starting or stopping; try again"


def _explainer(predictor: Predictor) -> tuple[Explainer | None, str]:
    """(the predictor's explainer, "") or (None, why it has none)."""
    try:
        explainer = explainer_for(predictor)
    except CamUnavailable as err:
        return None, f"{err}; {_EXPLAIN_TORCH}"
    return (explainer, "") if explainer is not None else (None, _EXPLAIN_TORCH)


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
            ENDPOINTS,
            prefixes=("/static/", "/docs-assets/", _RESULTS_PREFIX),
            queue_depth=lambda: 0 if self.batcher is None else self.batcher.depth,
        )
        self.explainer, self.no_explanations = _explainer(predictor)
        self.model_summary = {**predictor.describe(), "path": predictor.path.name}
        self.info = model_info(
            predictor, settings, None if self.explainer is not None else self.no_explanations
        )
        self.results = ResultStore(
            settings.results_kept, settings.results_max_bytes, settings.results_ttl_s
        )
        self.srs = SrOffers(predictor, self.info["file"]["sha256"], self.results)

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
            raise ServiceError(503, _STARTING)
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

    async def _one_image(self, request: Request) -> tuple[Upload, UploadForm]:
        form = await read_form(request, self.settings.max_files)
        if len(form.files) != 1:
            raise ServiceError(
                422, f"send exactly one image file (multipart field 'file'), got {len(form.files)}"
            )
        return form.files[0], form

    # endpoints ---------------------------------------------------------------------------
    async def predict(self, request: Request) -> dict[str, Any]:
        """``/v1/predict``: the record of :func:`~cxr.serving.answers.prediction_body`."""
        if self.batcher is None or not self.ready:
            raise ServiceError(503, _STARTING)
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
            raise unreadable(failures)
        if self.batcher is None or not self.ready:
            raise ServiceError(503, _STARTING)
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
        body = self.prediction_body(items)
        root = str(request.scope.get("root_path", ""))
        await self._in(self.decode_pool, self.srs.attach, form.files, items, body, root)
        return body

    def prediction_body(self, items: list[ImagePrediction]) -> dict[str, Any]:
        """:func:`~cxr.serving.answers.prediction_body` of this model."""
        return prediction_body(self.labels, self.thresholds, items, self.model_summary)

    def _parse_explain(self, form: UploadForm) -> tuple[list[str] | None, int, str]:
        """(labels or None, top_k, method) from the form's fields (422 when unusable)."""
        method = (form.value("method") or "gradcam").strip()
        if method not in CAM_METHODS:
            raise ServiceError(422, f"method must be one of {list(CAM_METHODS)}, got {method!r}")
        text = form.value("labels")
        labels = None
        if text is not None and text.strip():
            labels = list(dict.fromkeys(x.strip() for x in text.split(",") if x.strip()))
            unknown = [x for x in labels if x not in self.labels]
            if unknown or not labels:
                raise ServiceError(
                    422,
                    f"labels {unknown} are not labels of the model; it has {list(self.labels)}",
                )
        raw_k = form.value("top_k")
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
        """``/v1/explain``: the record of :func:`~cxr.serving.encoding.explanation_body`."""
        upload, form = await self._one_image(request)
        labels, top_k, method = self._parse_explain(form)
        if self.explainer is None:
            raise ServiceError(501, self.no_explanations)
        sides = sorted({self.size, self.display_size})
        decoded = await self._in(
            self.decode_pool, lambda: [self._decode([upload], s)[0] for s in sides]
        )
        failures = [d for d in decoded if isinstance(d, ImageReadError)]
        if failures:
            raise unreadable(failures[:1])
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
            found: list[Explanation] = await self._in(
                self.model_pool, lambda: explainer(pixels, labels, top_k, method)
            )
        finally:
            self.explaining -= 1
        return await self._in(
            self.decode_pool,
            explanation_body,
            upload.name,
            display,
            found,
            self.thresholds,
            self.size,
        )

    def result(self, token: str) -> StoredResult:
        """``/v1/results/{token}/sr.dcm``: the kept SR of ``token`` (404 when unknown or
        expired)."""
        found = self.results.get(token)
        if found is None:
            raise ServiceError(
                404,
                "no such result: it is unknown or expired (DICOM SRs are kept "
                f"{self.settings.results_ttl_s} s, the last {self.settings.results_kept}); "
                "send the image to /v1/predict again for a new one",
            )
        return found

    async def preview(self, request: Request) -> bytes:
        """``/v1/preview``: the image as decoded, at the display size, as a gray PNG."""
        upload, _ = await self._one_image(request)
        decoded = await self._in(
            self.decode_pool, lambda: self._decode([upload], self.display_size)[0]
        )
        if isinstance(decoded, ImageReadError):
            raise unreadable([decoded])
        return await self._in(self.decode_pool, png, decoded)


def _quiet_pydicom() -> Callable[[], None]:
    """No DICOM values in the service's log: pydicom's value-validation warnings (which may
    quote a tag) are turned off, and pydicom and highdicom log errors only, while the
    service runs; returns the undo."""
    try:
        from pydicom import config
    except ImportError:  # pragma: no cover - pydicom is a dependency
        return lambda: None
    settings = getattr(config, "settings", None)
    if settings is None or not hasattr(settings, "reading_validation_mode"):
        return lambda: None
    before = settings.reading_validation_mode
    settings.reading_validation_mode = config.IGNORE
    loggers = [logging.getLogger(name) for name in ("pydicom", "highdicom")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:  # highdicom tells every attribute it copies at INFO and DEBUG
        logger.setLevel(logging.ERROR)

    def restore() -> None:
        settings.reading_validation_mode = before
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)

    return restore
