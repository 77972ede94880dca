"""The DICOM node as one object: :class:`DicomNode` (``cxr dicom listen`` is a thin layer
over it).

``start()`` loads the model (unless a :class:`~cxr.inference.Predictor` is given), takes
the spool (one node per spool), recovers it after a crash, starts the worker and the
sender (so work left from a previous run goes first) and then the listener. ``stop()``
stops the listener, then the threads (each finishes the instance or send in hand), and
releases the spool. Results left unsent by a previous run go to this run's
``send_to`` (restarting with a corrected destination is how a wrong one is fixed). It is a
context manager::

    from cxr.dicomnode import DicomNode, NodeConfig

    config = NodeConfig("model.safetensors", "spool", "ORTHANC@127.0.0.1:4242",
                        allow_aets=("ORTHANC",))
    with DicomNode(config) as node:
        print(node.address)        # ("127.0.0.1", 11112)
        node.wait_idle(timeout=60)  # every received image processed and sent (or failed)

Research use only: cxr is not a medical device and its outputs are not a diagnosis.
"""

from __future__ import annotations

import logging
import time
import warnings
from types import TracebackType
from typing import TYPE_CHECKING, Any

from cxr.dicomnode.config import DicomNodeError, NodeConfig
from cxr.dicomnode.scp import start_scp
from cxr.dicomnode.spool import Spool
from cxr.dicomnode.worker import Sender, Worker
from cxr.dicomout.record import require_highdicom

if TYPE_CHECKING:
    from pynetdicom.transport import ThreadedAssociationServer

    from cxr.inference import Predictor

__all__ = ["DicomNode", "DicomNodeWarning"]

LOG = logging.getLogger("cxr.dicomnode")


class DicomNodeWarning(UserWarning):
    """A risky but allowed setting (listening beyond loopback without TLS or allow-list)."""


class DicomNode:
    """A Storage and Verification SCP that answers each chest X-ray with an SR and an SC.

    Args:
        config: the checked settings (:class:`~cxr.dicomnode.config.NodeConfig`).
        predictor: the model to use; default: ``Predictor(config.model,
            device=config.device, batch_size=config.batch_size)``, calibrated, as
            ``cxr predict`` builds it.
    """

    def __init__(self, config: NodeConfig, predictor: Predictor | None = None) -> None:
        if not isinstance(config, NodeConfig):
            raise TypeError(f"config must be a NodeConfig, got {type(config).__name__}")
        self.config = config
        self.predictor = predictor
        self.spool = Spool(config.spool, config.spool_quota_bytes)
        self.recovered: dict[str, int] = {}
        self._server: ThreadedAssociationServer | None = None
        self._worker: Worker | None = None
        self._sender: Sender | None = None

    # life cycle --------------------------------------------------------------------------
    def start(self) -> DicomNode:
        """Start the node (see the module docstring); returns it. Raises
        :class:`DicomNodeError` (spool in use, address in use, bad TLS files) and the
        predictor's errors for a bad model file."""
        if self._server is not None:
            raise DicomNodeError("the node is running already")
        require_highdicom()
        if self.predictor is None:
            from cxr.inference import Predictor

            self.predictor = Predictor(
                self.config.model, device=self.config.device, batch_size=self.config.batch_size
            )
        if self.predictor.calibration is None and self.predictor.backend.calibration is not None:
            raise DicomNodeError(
                "the node sends calibrated probabilities: give a Predictor with calibrated=True"
            )
        for text in self.config.exposure_warnings():
            warnings.warn(text, DicomNodeWarning, stacklevel=2)
        self.spool.acquire()
        try:
            self.recovered = self.spool.recover()
            self._sender = Sender(self.spool, self.config)
            self._worker = Worker(self.spool, self.predictor, self.config, self._sender.wake)
            self._sender.start()
            self._worker.start()
            self._server = start_scp(self.config, self.spool, self._worker.wake)
        except BaseException:
            self.stop()
            raise
        host, port = self.address
        counts = self.recovered
        LOG.info(
            "listening as %s on %s:%d%s; spool %s (%d waiting, %d unsent)",
            self.config.ae_title,
            host,
            port,
            " with TLS" if self.config.tls else "",
            self.config.spool,
            counts.get("incoming", 0),
            counts.get("outbox", 0),
        )
        return self

    def stop(self, timeout: float = 60.0) -> None:
        """Stop listening, let the threads finish what they hold (up to ``timeout``
        seconds each), release the spool. Safe to call twice."""
        if self._server is not None:
            self._server.shutdown()
            self._server = None
        for thread in (self._worker, self._sender):
            if thread is not None:
                thread.stop()
        for thread in (self._worker, self._sender):
            if thread is not None and thread.is_alive():
                thread.join(timeout)
        self._worker = self._sender = None
        self.spool.release()

    def __enter__(self) -> DicomNode:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # state -------------------------------------------------------------------------------
    @property
    def running(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) the node listens on (the port the OS chose when ``port`` was 0)."""
        if self._server is None:
            raise DicomNodeError("the node is not running: call start() first")
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def idle(self) -> bool:
        """Nothing waits: no instance to process and no result to send (failed ones are
        done)."""
        status = self.spool.status()
        busy = any(t is not None and t.busy for t in (self._worker,))
        return not (status["incoming"] or status["processing"] or status["pending"] or busy)

    def wait_idle(self, timeout: float = 60.0, poll: float = 0.05) -> bool:
        """Wait until :meth:`idle` (True) or ``timeout`` seconds passed (False)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.idle():
                return True
            time.sleep(poll)
        return self.idle()

    def wake(self) -> None:
        """Look at the spool now (after a change made from outside the node)."""
        for thread in (self._worker, self._sender):
            if thread is not None:
                thread.wake()

    def status(self) -> dict[str, Any]:
        """The spool's status (:func:`cxr.dicomnode.spool.spool_status`)."""
        return self.spool.status()
