"""``cxr serve``: a web page and a versioned REST API over the inference package.

>>> from cxr.serving import create_app, ServeSettings
>>> app = create_app("runs/d121/best.safetensors", settings=ServeSettings(max_batch_size=8))
>>> # uvicorn.run(app, host="127.0.0.1", port=8000)          # doctest: +SKIP

- :func:`create_app` — the FastAPI application (REST API under ``/v1``, the page at ``/``,
  ``/healthz``, ``/readyz``, ``/metrics``, OpenAPI at ``/openapi.json``, docs at ``/docs``);
- :class:`ServeSettings` — request-size limit, micro-batching, queue, API key, CORS;
- :mod:`~cxr.serving.app` — :func:`create_app`; :mod:`~cxr.serving.service` — the state and
  what each endpoint does; :mod:`~cxr.serving.routes` — the routes; :mod:`~cxr.serving.errors`
  — the one place where user errors become HTTP answers; :mod:`~cxr.serving.answers`,
  :mod:`~cxr.serving.encoding` — the JSON records and PNGs; :mod:`~cxr.serving.openapi` —
  what FastAPI cannot infer of the OpenAPI description;
- :mod:`~cxr.serving.batching` — concurrent requests gathered into micro-batches;
- :mod:`~cxr.serving.uploads`, :mod:`~cxr.serving.limits` — uploads read into memory,
  the streamed size limit; :mod:`~cxr.serving.metrics` — Prometheus text;
- :mod:`~cxr.serving.dicomsr`, :mod:`~cxr.serving.results` — the DICOM SR of each DICOM
  upload (as ``cxr predict --dicom-out`` builds it), kept in a bounded in-memory store for
  download at ``/v1/results/<token>/sr.dcm``.

Needs the ``serve`` extra (``pip install 'cxr[serve]'``: fastapi, uvicorn, python-multipart).
Research use only: nothing the service answers is a diagnosis.
"""

from typing import Any

from cxr.serving.settings import API_KEY_ENV, ServeSettings

__all__ = ["API_KEY_ENV", "ServeSettings", "create_app"]


def __getattr__(name: str) -> Any:  # create_app imports FastAPI: only when asked for
    if name == "create_app":
        from cxr.serving.app import create_app

        return create_app
    raise AttributeError(f"module 'cxr.serving' has no attribute {name!r}")
