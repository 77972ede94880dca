"""The ``cxr serve`` sub-command (wired into :mod:`cxr.cli` by :func:`add_parsers`).

``cxr serve MODEL [--host 127.0.0.1] [--port 8000] [--backend torch] [--device cpu]
[--api-key KEY] [--cors-origin URL ...] [--max-request-mb 20] ...``
    the web page and REST API of :func:`cxr.serving.create_app` on uvicorn. Binds to
    loopback by default; another address without an API key prints a warning.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import sys
import warnings

from cxr import RESEARCH_NOTICE
from cxr.cli._common import EXIT_OK, CLIError
from cxr.cli.options import add_command, add_device, add_model, add_precision

__all__ = ["add_parsers", "is_loopback", "run_serve"]

_MISSING_EXTRA = (
    "cxr serve needs the serve extra: pip install 'cxr[serve]' (fastapi, uvicorn, python-multipart)"
)


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``serve`` (with ``set_defaults(func=run_serve)``)."""
    from cxr.serving.settings import API_KEY_ENV, ServeSettings

    d = ServeSettings()
    p = add_command(
        subparsers,
        "serve",
        run_serve,
        help="web page and REST API: upload X-rays, see findings and heatmaps",
        description="Serve a model: the web page at /, the REST API under /v1 (OpenAPI at "
        "/openapi.json, docs at /docs), /healthz, /readyz and /metrics. Concurrent requests "
        f"are gathered into micro-batches. {RESEARCH_NOTICE}",
    )
    add_model(p, "model file (any file cxr predict loads)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default: %(default)s, this machine only)",
    )
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument(
        "--backend",
        default="auto",
        help="inference backend: torch, onnx, or auto = by the file (.onnx on ONNX Runtime, "
        "anything else with torch) (default: %(default)s)",
    )
    add_device(p)
    add_precision(p)
    g = p.add_argument_group("access")
    g.add_argument(
        "--api-key",
        help=f"require 'Authorization: Bearer KEY' on /v1/* (default: ${API_KEY_ENV}; "
        "prefer the variable: a command line is visible to other users)",
    )
    g.add_argument(
        "--cors-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="allow browser calls from this origin (repeat for several; default: CORS off)",
    )
    g.add_argument(
        "--root-path",
        default="",
        help="URL prefix when served behind a reverse proxy under a sub-path (e.g. /cxr)",
    )
    g.add_argument(
        "--forwarded-allow-ips",
        help="proxy addresses whose X-Forwarded-* headers are trusted (uvicorn's option; "
        "default: 127.0.0.1)",
    )
    g = p.add_argument_group("limits and batching")
    g.add_argument(
        "--max-request-mb",
        type=float,
        default=d.max_request_bytes / 2**20,
        help="largest request body in MiB: 413 beyond (default: %(default)g)",
    )
    g.add_argument(
        "--max-files",
        type=int,
        default=d.max_files,
        help="files per request at most (default: %(default)s)",
    )
    g.add_argument(
        "--max-batch-size",
        type=int,
        default=d.max_batch_size,
        help="images per forward pass at most (default: %(default)s)",
    )
    g.add_argument(
        "--max-wait-ms",
        type=float,
        default=d.max_wait_ms,
        help="how long a batch waits for more images while other requests are being "
        "received or decoded, ms; a lone request runs at once (default: %(default)g)",
    )
    g.add_argument(
        "--queue-size",
        type=int,
        default=d.max_queue,
        help="images waiting at most; beyond, 503 with Retry-After (default: %(default)s)",
    )
    g.add_argument(
        "--log-level",
        choices=("critical", "error", "warning", "info", "debug"),
        default="info",
        help="uvicorn's log level (default: %(default)s)",
    )
    g.add_argument("--no-access-log", action="store_true", help="no line per request in the log")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def run_serve(args: argparse.Namespace) -> int:
    """``cxr serve``: runs until interrupted; returns the exit code."""
    # torch's OpenMP threads spin after each forward pass by default, taking the cores the
    # decoding thread and the event loop need between batches (1 client, DenseNet-121 on 2
    # cores: p50 109 ms spinning, 80 ms passive; BENCHMARKS.md). Set before torch loads;
    # an OMP_WAIT_POLICY of the user's own is kept.
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import uvicorn

        from cxr.serving import create_app
        from cxr.serving.service import Service  # noqa: F401  (imports fastapi, python-multipart)
    except ImportError:
        raise CLIError(_MISSING_EXTRA) from None
    from cxr.inference import BACKENDS
    from cxr.serving.settings import API_KEY_ENV, ServeSettings

    if args.backend not in ("auto", *BACKENDS):
        raise CLIError(
            f"--backend {args.backend!r} is not available in this cxr; it has "
            + ", ".join(("auto", *BACKENDS))
        )
    if not 0 <= args.port <= 65535:
        raise CLIError(f"--port must be from 0 to 65535, got {args.port}")
    if not args.max_request_mb > 0:
        raise CLIError(f"--max-request-mb must be > 0, got {args.max_request_mb}")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    try:
        settings = ServeSettings(
            max_request_bytes=int(args.max_request_mb * 2**20),
            max_files=args.max_files,
            max_batch_size=args.max_batch_size,
            max_wait_ms=args.max_wait_ms,
            max_queue=args.queue_size,
            api_key=api_key or None,
            cors_origins=tuple(args.cors_origin),
        )
    except ValueError as err:
        raise CLIError(str(err)) from None
    if not is_loopback(args.host) and settings.api_key is None:
        warnings.warn(
            f"listening on {args.host} without an API key: anyone who can reach this "
            f"machine can use the service; set ${API_KEY_ENV} (or --api-key) and put it behind "
            "TLS (a reverse proxy)",
            UserWarning,
            stacklevel=1,
        )
    try:
        app = create_app(
            args.model,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            settings=settings,
        )
    except RuntimeError as err:  # e.g. a CUDA device on a machine without one
        raise CLIError(str(err)) from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(
        f"cxr serve: {args.model.name} on http://{host}:{args.port}{args.root_path}/ "
        f"(API docs at /docs; Ctrl-C stops). {RESEARCH_NOTICE}",
        file=sys.stderr,
    )
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        root_path=args.root_path,
        log_level=args.log_level,
        access_log=not args.no_access_log,
        server_header=False,
        forwarded_allow_ips=args.forwarded_allow_ips,
    )
    return EXIT_OK
