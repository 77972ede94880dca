"""The decode-once cache: every image decoded and resized once, then read as memory.

``prepare(table, out_dir, size=224)`` writes into ``out_dir``:

- ``pixels.npy``: uint8 array (N, size, size), memory-mappable (``np.load(mmap_mode="r")``);
  row i holds image i of ``labels.csv`` (rows of rejected images stay zero);
- ``labels.csv``: the label table of all N images (:meth:`LabelTable.save_csv` format);
- ``status.npy``: int8 (N,), 0 = not yet decoded, 1 = stored, 2 = rejected;
- ``stamps.npy``: int64 (N, 2), each image file's size in bytes and mtime in ns (-1 if missing);
- ``rejects.csv``: path, reason, detail of every rejected image;
- ``manifest.json``: format version, settings, source, counts, fingerprints, state.

The run is resumable. Progress is checkpointed every few seconds (pixels are written
straight into the shared file mapping by the workers, then ``status.npy`` is replaced
atomically), so a killed run continues where it stopped. A repeated run with the same
inputs and settings does nothing. Changed settings, or a different image list, are
refused with a message saying what changed (``overwrite=True`` rebuilds). Image files
whose size or modification time changed, and images that were missing and now exist,
are decoded again; changed labels are rewritten without decoding anything.

Modules: :mod:`~cxr.cache.preparing` (the :func:`prepare` job),
:mod:`~cxr.cache.manifest` (fingerprints, the state on disk, resuming),
:mod:`~cxr.cache.workers` (the decoding processes), :mod:`~cxr.cache.summary` (settings and
the run's summary), :mod:`~cxr.cache.batches` (:class:`CacheBatches`: batches of a cache
for training and prediction), :mod:`~cxr.cache.subset` (:func:`write_subset`: a cache
of some rows of another, e.g. cross-validation folds). Reading a complete cache:
:class:`PreparedCache` (:mod:`cxr.prepared_cache`). Importing this package does not
import torch (the batch loader does: ``from cxr.cache.batches import CacheBatches``).
"""

from cxr.cache.manifest import file_stamps
from cxr.cache.preparing import prepare
from cxr.cache.subset import cache_digest, write_subset
from cxr.cache.summary import PrepareSettings, PrepareSummary
from cxr.prepared_cache import (
    FORMAT_VERSION,
    PENDING,
    REJECTED,
    STORED,
    CacheError,
    PreparedCache,
)

__all__ = [
    "FORMAT_VERSION",
    "PENDING",
    "REJECTED",
    "STORED",
    "CacheError",
    "PrepareSettings",
    "PrepareSummary",
    "PreparedCache",
    "cache_digest",
    "file_stamps",
    "prepare",
    "write_subset",
]
