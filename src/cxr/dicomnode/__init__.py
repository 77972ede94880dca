"""A DICOM node: a PACS sends chest X-rays, cxr answers with DICOM SR and Secondary
Capture objects in the same study (``cxr dicom listen``; research use only).

- :mod:`cxr.dicomnode.config`: :class:`NodeConfig`, the checked settings, and
  :class:`Destination` (``AET@HOST:PORT`` for C-STORE, ``http(s)://…/dicom-web`` for
  STOW-RS).
- :mod:`cxr.dicomnode.spool`: :class:`Spool`, the durable state on disk (received
  instances, the outbox, sent and failed records) and its crash recovery.
- :mod:`cxr.dicomnode.scp`: the pynetdicom Storage SCP (CR, DX) and Verification SCP;
  the C-STORE handler only checks and spools.
- :mod:`cxr.dicomnode.worker`: the worker (the model through
  :class:`cxr.inference.Predictor`, results with :mod:`cxr.dicomout`) and the sender
  (retries with exponential backoff); :mod:`cxr.dicomnode.send`: C-STORE and STOW-RS.
- :mod:`cxr.dicomnode.node`: :class:`DicomNode`, all of it as one object.

pynetdicom, highdicom and dicomweb-client come with the ``dicom-node`` extra
(``pip install 'cxr[dicom-node]'``) and are imported only when a node starts or sends.
"""

from __future__ import annotations

from cxr.dicomnode.config import Destination, DicomNodeError, NodeConfig, parse_destination
from cxr.dicomnode.node import DicomNode, DicomNodeWarning
from cxr.dicomnode.spool import Spool, SpoolFull
from cxr.dicomnode.status import spool_status

__all__ = [
    "Destination",
    "DicomNode",
    "DicomNodeError",
    "DicomNodeWarning",
    "NodeConfig",
    "Spool",
    "SpoolFull",
    "parse_destination",
    "spool_status",
]
