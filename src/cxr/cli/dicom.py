"""The ``cxr dicom`` sub-commands (wired into :mod:`cxr.cli` by :func:`add_parsers`).

``cxr dicom listen MODEL --spool DIR --send-to AET@HOST:PORT|URL --allow-aet AET [...]``
    a DICOM node (:class:`cxr.dicomnode.DicomNode`): a PACS sends CR/DX chest X-rays by
    C-STORE; each gets a DICOM SR and a Secondary Capture, sent to ``--send-to`` by C-STORE
    or STOW-RS. Runs until Ctrl-C or SIGTERM.

``cxr dicom status SPOOL [--format text|json]``
    what a spool holds: instances waiting, results to send, sent, failed with reasons.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from cxr import RESEARCH_NOTICE
from cxr.cli._common import EXIT_OK, CLIError
from cxr.cli._dicom import add_dicom_options, with_dicom_options
from cxr.cli.options import add_batch_size, add_cam_method, add_command, add_device, add_model

__all__ = ["add_parsers"]

_MB = 2**20


def add_parsers(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``dicom`` with its ``listen`` and ``status`` sub-commands."""
    group = subparsers.add_parser(
        "dicom",
        help="a DICOM node: take chest X-rays from a PACS, send SR and SC results back",
        description=f"A DICOM node for a PACS. {RESEARCH_NOTICE}",
    )
    sub = group.add_subparsers(dest="dicom_command", required=True, metavar="SUBCOMMAND")
    _add_listen(sub)
    p = add_command(
        sub,
        "status",
        run_status,
        help="what a spool holds: waiting, to send, sent, failed (with reasons)",
        description="List the instances waiting in a node's spool, the results to send, "
        "those sent and those that failed, with the reasons. Works while the node runs.",
    )
    p.add_argument("spool", type=Path, help="the spool folder (cxr dicom listen --spool)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.add_argument(
        "--limit", type=int, default=20, help="text: show at most N sent (default: %(default)s)"
    )


def _add_listen(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = add_command(
        sub,
        "listen",
        run_listen,
        help="receive CR/DX images by C-STORE, answer with an SR and an SC each",
        description="Listen for chest X-rays (CR, DX) sent by C-STORE and answer each with a "
        "DICOM SR (TID 1500) and a Secondary Capture with the heatmap, sent to --send-to. "
        "Received images and unsent results wait in --spool and survive a restart. Stop with "
        f"Ctrl-C or SIGTERM. {RESEARCH_NOTICE}",
    )
    add_model(p, "model file (.safetensors or .onnx), as for cxr predict")
    p.add_argument("--ae-title", default="CXR", help="this node's AE title (default: CXR)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback)")
    p.add_argument("--port", type=int, default=11112, help="TCP port (default: %(default)s)")
    p.add_argument("--spool", type=Path, required=True, help="spool folder (created)")
    p.add_argument(
        "--send-to",
        required=True,
        metavar="AET@HOST:PORT|URL",
        help="where results go: a C-STORE SCP, or a DICOMweb root for STOW-RS "
        "(https://host/dicom-web)",
    )
    p.add_argument(
        "--allow-aet",
        action="append",
        default=[],
        metavar="AET",
        help="a calling AE title to accept (repeat for more); others are rejected",
    )
    p.add_argument(
        "--allow-any-aet", action="store_true", help="accept any calling AE title (not advised)"
    )
    tls = p.add_argument_group("TLS")
    tls.add_argument("--tls-cert", type=Path, help="PEM certificate: listen with TLS 1.2+")
    tls.add_argument("--tls-key", type=Path, help="PEM private key of --tls-cert")
    tls.add_argument("--tls-ca", type=Path, help="PEM CA: require client certificates it signed")
    tls.add_argument(
        "--send-ca",
        type=Path,
        help="PEM CA to verify the destination (https STOW-RS; C-STORE is then over TLS)",
    )
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-associations", type=int, default=4, help="default: %(default)s")
    lim.add_argument("--max-pdu", type=int, default=16382, help="bytes, 0 = unlimited")
    lim.add_argument("--network-timeout", type=float, default=60.0, help="seconds")
    lim.add_argument("--acse-timeout", type=float, default=30.0, help="seconds")
    lim.add_argument("--dimse-timeout", type=float, default=30.0, help="seconds")
    lim.add_argument("--max-instance-mb", type=float, default=256.0, help="largest instance, MiB")
    lim.add_argument("--spool-quota-mb", type=float, default=10240.0, help="spool size, MiB")
    lim.add_argument("--send-attempts", type=int, default=8, help="tries per result")
    lim.add_argument(
        "--retry-delay", type=float, default=2.0, help="seconds before the first retry (doubles)"
    )
    lim.add_argument("--retry-max-delay", type=float, default=600.0, help="longest wait, seconds")
    p.add_argument("--top-k", type=int, default=3, help="heatmap tiles in the SC (default: 3)")
    add_cam_method(p)
    add_device(p)
    add_batch_size(p, 8)
    p.add_argument(
        "--log-level", choices=("debug", "info", "warning"), default="info", help="default: info"
    )
    add_dicom_options(p)


def _config(args: argparse.Namespace) -> Any:
    from cxr.dicomnode import NodeConfig

    return NodeConfig(
        model=args.model,
        spool=args.spool,
        send_to=args.send_to,
        ae_title=args.ae_title,
        host=args.host,
        port=args.port,
        allow_aets=tuple(args.allow_aet),
        allow_any_aet=args.allow_any_aet,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_ca=args.tls_ca,
        send_ca=args.send_ca,
        max_associations=args.max_associations,
        max_pdu=args.max_pdu,
        network_timeout=args.network_timeout,
        acse_timeout=args.acse_timeout,
        dimse_timeout=args.dimse_timeout,
        max_instance_bytes=max(1, int(args.max_instance_mb * _MB)),
        spool_quota_bytes=max(1, int(args.spool_quota_mb * _MB)),
        send_attempts=args.send_attempts,
        retry_delay=args.retry_delay,
        retry_max_delay=args.retry_max_delay,
        top_k=args.top_k,
        method=args.method,
        device=args.device,
        batch_size=args.batch_size,
    )


def _logging(level: str) -> None:
    log = logging.getLogger("cxr.dicomnode")
    log.setLevel(level.upper())
    if not any(getattr(h, "cxr_cli", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s cxr dicom: %(levelname)s %(message)s"))
        handler.cxr_cli = True  # type: ignore[attr-defined]
        log.addHandler(handler)
    # pynetdicom's own messages: warnings only (its INFO and DEBUG lines can dump data sets)
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)


@with_dicom_options
def run_listen(args: argparse.Namespace) -> int:
    """``cxr dicom listen``: runs until SIGINT or SIGTERM; returns the exit code."""
    from cxr.dicomnode import DicomNode

    if not args.model.is_file():
        raise CLIError(f"model file {args.model} not found")
    config = _config(args)
    _logging(args.log_level)
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        node = DicomNode(config).start()
        try:
            host, port = node.address
            print(
                f"cxr dicom: listening as {config.ae_title} on {host}:{port}, sending results "
                f"to {config.destination}; stop with Ctrl-C. {RESEARCH_NOTICE}",
                file=sys.stderr,
                flush=True,
            )
            while not stop.wait(0.5):
                pass
            print("cxr dicom: stopping (work in hand is finished first)", file=sys.stderr)
        finally:
            node.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return EXIT_OK


def _when(t: float | None) -> str:
    return "-" if not t else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def status_text(status: dict[str, Any], limit: int = 20) -> str:
    """The text of ``cxr dicom status`` for a :func:`cxr.dicomnode.spool_status` dict."""
    pending, sent, failed = status["pending"], status["sent"], status["failed"]
    lines = [
        f"spool {status['spool']}: {len(status['incoming'])} waiting, {status['processing']} "
        f"processing, {len(pending)} to send, {len(sent)} sent, {len(failed)} failed "
        f"({status['bytes'] / _MB:.1f} MiB)"
    ]
    if status["incoming"]:
        lines.append("waiting:")
        lines += [f"  {key}" for key in status["incoming"]]
    if pending:
        lines.append("to send:")
        now = time.time()
        for r in pending:
            due = max(r["next_try"] - now, 0.0)
            error = f", last error: {r['last_error']}" if r["last_error"] else ""
            lines.append(f"  {r['key']}  tries {r['attempts']}, next in {due:.0f} s{error}")
    if failed:
        lines.append("failed:")
        lines += [f"  {r['key']}  {r['stage']}: {r['reason']}" for r in failed]
    if sent:
        shown = sent[-limit:] if limit > 0 else []
        lines.append(f"sent (last {len(shown)} of {len(sent)}):" if shown else "sent: not listed")
        lines += [f"  {r['key']}  to {r['destination']} at {_when(r['sent_at'])}" for r in shown]
    return "\n".join(lines) + "\n"


def run_status(args: argparse.Namespace) -> int:
    """``cxr dicom status``: prints the spool's state; returns the exit code."""
    from cxr.dicomnode import spool_status

    if not args.spool.is_dir():
        raise CLIError(f"spool folder {args.spool} not found")
    status = spool_status(args.spool)
    if args.format == "json":
        print(json.dumps(status, indent=2))
    else:
        sys.stdout.write(status_text(status, args.limit))
    return EXIT_OK
