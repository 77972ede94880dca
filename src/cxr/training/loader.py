"""The batch loader of a prepared cache, under its older name: it lives in
:mod:`cxr.cache.batches` (inference reads batches too, and must not import training)."""

from cxr.cache.batches import CacheBatches

__all__ = ["CacheBatches"]
