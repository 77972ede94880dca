"""The node's two background threads: the :class:`Worker` runs the model on spooled
instances and puts their results in the outbox; the :class:`Sender` sends the outbox.

The worker claims waiting instances (up to the predictor's batch size at a time), predicts
them with :meth:`cxr.inference.Predictor.predict_images` (the one inference path of
``cxr predict``: preprocessing, calibration, thresholds, the modality check, the
not-a-chest-X-ray gate) and writes each image's SR and SC with
:func:`cxr.dicomout.from_prediction.write_dicom_results` (``cxr predict --dicom-out``),
so every image of a study gets its own result. An instance the predictor skips
(unreadable, wrong modality, refused multi-frame) or whose results cannot be built is
recorded as failed with the reason; an error writing to disk puts it back for a later try.

The sender sends each due result (:func:`cxr.dicomnode.send.send_datasets`); a failed try
is retried after ``config.retry_after(n)`` seconds (exponential backoff) until
``config.send_attempts`` tries, then the result moves to ``failed/`` with the reason.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from cxr.dicomnode.config import NodeConfig
from cxr.dicomnode.records import Record
from cxr.dicomnode.send import SendError, SendSettings, send_datasets
from cxr.dicomnode.spool import Claim, Spool

if TYPE_CHECKING:
    from cxr.inference import ImagePrediction, PredictionResult, Predictor

__all__ = ["Sender", "Worker"]

LOG = logging.getLogger("cxr.dicomnode")
#: Seconds an idle thread sleeps before looking at the spool again (it is woken sooner
#: when there is work).
IDLE_POLL = 5.0
#: Results sent in one association (one STOW-RS request) when several are due.
SEND_BATCH = 16


class _Loop(threading.Thread):
    """A daemon thread that runs :meth:`step` whenever woken (or every ``IDLE_POLL``
    seconds) until :meth:`stop`; :meth:`step` returns how long it may sleep."""

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._wake = threading.Event()
        self._halt = threading.Event()
        self.busy = False

    def wake(self, *_: object) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._halt.set()
        self._wake.set()

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def run(self) -> None:
        while not self._halt.is_set():
            self._wake.clear()
            self.busy = True
            try:
                pause = self.step()
            except Exception:  # keep serving; the reason is in the log
                LOG.exception("%s: unexpected error", self.name)
                pause = IDLE_POLL
            finally:
                self.busy = False
            self._wake.wait(max(pause, 0.0))

    def step(self) -> float:  # pragma: no cover - overridden
        raise NotImplementedError


class Worker(_Loop):
    """Runs the model on spooled instances (see the module docstring).

    Args:
        spool: the spool (claims from ``incoming/``, commits to ``outbox/``).
        predictor: the model, as ``cxr predict`` builds it (calibrated outputs).
        config: ``top_k`` and ``method`` of the SC's heatmaps, ``retry_delay`` after a
            disk error, and the destination named in the records.
        on_result: called after each result reaches the outbox (wakes the sender).
    """

    def __init__(
        self,
        spool: Spool,
        predictor: Predictor,
        config: NodeConfig,
        on_result: Callable[[], None] | None = None,
    ) -> None:
        super().__init__("cxr-dicomnode-worker")
        self.spool = spool
        self.predictor = predictor
        self.config = config
        self.on_result = on_result

    def step(self) -> float:
        keys = self.spool.incoming()
        if not keys:
            return IDLE_POLL
        claims = [c for c in map(self.spool.claim, keys[: self.predictor.batch_size]) if c]
        if claims and not self.process(claims):
            return max(self.config.retry_delay, 0.5)  # a disk error: wait, then try again
        return 0.0

    def process(self, claims: list[Claim]) -> bool:
        """Predict ``claims`` as one batch and commit or fail each; False after an error
        writing to disk (the instances are back in ``incoming/``)."""
        start = time.monotonic()
        try:
            result = self.predictor.predict_images([c.source for c in claims])
        except OSError as err:
            LOG.error("cannot predict %d instance(s), will retry: %s", len(claims), err)
            for claim in claims:
                self.spool.unclaim(claim)
            return False
        except Exception as err:  # e.g. a model computing NaN: no result can be made
            for claim in claims:
                self._fail(claim, f"prediction failed: {type(err).__name__}: {err}")
            return True
        ok = True
        for claim, item in zip(claims, result.items, strict=True):
            if not ok:
                self.spool.unclaim(claim)
            elif not item.ok:
                self._fail(claim, f"{item.reason}: {item.detail}")
            else:
                ok = self._write(claim, result, item)
        seconds = time.monotonic() - start
        LOG.debug("processed %d instance(s) in %.2f s", len(claims), seconds)
        return ok

    def _fail(self, claim: Claim, reason: str) -> None:
        LOG.warning("instance %s not processed: %s", claim.key, reason)
        self.spool.fail_claim(claim, "processing", reason)

    def _write(self, claim: Claim, result: PredictionResult, item: ImagePrediction) -> bool:
        from cxr.dicomout.from_prediction import write_dicom_results

        notes: list[str] = []
        one = dataclasses.replace(result, items=[item])
        try:
            written = write_dicom_results(
                self.predictor,
                one,
                claim.folder,
                top_k=min(self.config.top_k, len(self.predictor.labels)),
                method=self.config.method,
                skipped=notes,
            )
        except OSError as err:  # no room on the disk, or the like: try again later
            LOG.error("cannot write the results of %s, will retry: %s", claim.key, err)
            self.spool.unclaim(claim)
            return False
        except Exception as err:  # DicomOutError, ImageReadError, ValueError: no result
            self._fail(claim, f"no result object: {type(err).__name__}: {err}")
            return True
        if not written:
            self._fail(claim, "no result object: " + ("; ".join(notes) or "not a DICOM file"))
            return True
        dest = str(self.config.destination)
        self.spool.commit(claim, [p.name for p in written], dest, notes)
        LOG.info("instance %s processed: SR and SC queued for %s", claim.key, dest)
        if self.on_result is not None:
            self.on_result()
        return True


class Sender(_Loop):
    """Sends the outbox to ``config.destination`` (see the module docstring)."""

    def __init__(self, spool: Spool, config: NodeConfig) -> None:
        super().__init__("cxr-dicomnode-sender")
        self.spool = spool
        self.config = config
        self.settings = SendSettings(
            config.ae_title,
            network_timeout=config.network_timeout,
            acse_timeout=config.acse_timeout,
            dimse_timeout=config.dimse_timeout,
            ca=config.send_ca,
        )

    def step(self) -> float:
        due: list[Record] = []
        for record in self.spool.outbox():
            if record.next_try > time.time() or len(due) >= SEND_BATCH:
                break  # sorted by next try: nothing further is due
            due.append(record)
        if len(due) > 1 and not self.stopping:
            due = [] if self.send_batch(due) else due  # a failed batch: one by one below
        for record in due:
            if self.stopping:
                return 0.0
            self.send(record)
        pending = self.spool.outbox()
        if not pending:
            return IDLE_POLL
        return min(IDLE_POLL, max(pending[0].next_try - time.time(), 0.05))

    def send_batch(self, records: list[Record]) -> bool:
        """Send several results in one association (one STOW-RS request); True when the
        destination confirmed them all (each is then marked sent). False changes nothing:
        the caller sends them one by one, so a failure is told apart and counted per result."""
        import pydicom

        try:
            datasets = [
                pydicom.dcmread(p) for record in records for p in self.spool.result_files(record)
            ]
            send_datasets(datasets, self.config.destination, self.settings)
        except (OSError, ValueError, SendError):
            return False
        for record in records:
            if self.spool.mark_sent(record, str(self.config.destination)):
                LOG.info("results of %s sent to %s", record.key, self.config.destination)
        return True

    def send(self, record: Record) -> bool:
        """Try to send one result once; True when the destination confirmed it."""
        import pydicom

        dest = self.config.destination
        try:
            datasets = [pydicom.dcmread(p) for p in self.spool.result_files(record)]
        except (OSError, ValueError) as err:
            self._failed_try(record, f"cannot read the result files: {err}")
            return False
        try:
            send_datasets(datasets, dest, self.settings)
        except SendError as err:
            self._failed_try(record, str(err))
            return False
        if self.spool.mark_sent(record, str(dest)):
            LOG.info("results of %s sent to %s", record.key, dest)
        return True

    def _failed_try(self, record: Record, error: str) -> None:
        after = self.config.retry_after(record.attempts + 1)
        new = self.spool.mark_attempt(
            record, str(self.config.destination), error, after, self.config.send_attempts
        )
        if new is None:
            return
        if new.state == "failed":
            LOG.error("results of %s not sent, given up: %s", record.key, new.reason)
        else:
            LOG.warning(
                "results of %s not sent (try %d of %d), next in %.1f s: %s",
                record.key,
                new.attempts,
                self.config.send_attempts,
                after,
                error,
            )
