"""The frozen backbone's pooled features of a prepared cache, per view: the probe's input.

:func:`pooled_features` runs a :class:`~cxr.models.ChestClassifier` over every image of a
cache and keeps what its head's output layer sees: the backbone's feature map pooled by the
head's own pooling (``model.head.pool(model.features(x))``; a global average for the
probe). Views: ``"original"`` and ``"mirror"`` (the image flipped left-right before the
model). fp32, eval mode, no gradients.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cxr.models import ChestClassifier
from cxr.prepared_cache import PreparedCache
from cxr.preprocessing import to_model_input

__all__ = ["VIEWS", "pooled_features"]

#: The views :func:`pooled_features` knows.
VIEWS: tuple[str, ...] = ("original", "mirror")


def pooled_features(
    model: ChestClassifier,
    cache: PreparedCache,
    *,
    views: Sequence[str] = ("original", "mirror"),
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Pooled features of every image of ``cache``, one slice per view.

    Args:
        model: the classifier whose backbone and head pooling are used (run in eval mode on
            ``device``; its mode and device are restored afterwards).
        cache: a prepared cache of the model's input size.
        views: names from :data:`VIEWS`, in the order of the result's first axis.
        batch_size: images per forward pass.
        device: where the model runs.
        progress: show a progress bar.

    Returns:
        float32 (V, N, C): V views, N images in cache order, C = ``model.num_features``.

    Raises:
        ValueError: an unknown view, or a batch size below 1.
    """
    from tqdm.auto import tqdm

    views = tuple(views)
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"views must be names from {list(VIEWS)}, got {list(views)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be 1 or more, got {batch_size}")
    dev = torch.device(device)
    first = next(model.parameters(), None)
    home = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.to(dev).eval()
    n = len(cache)
    out = np.empty((len(views), n, model.num_features), dtype=np.float32)
    try:
        with (
            torch.inference_mode(),
            tqdm(total=n * len(views), unit="img", desc="features", disable=not progress) as bar,
        ):
            for start in range(0, n, batch_size):
                rows = np.arange(start, min(start + batch_size, n))
                x = to_model_input(torch.from_numpy(cache.read(rows)), dev)
                for v, view in enumerate(views):
                    seen = x.flip(-1) if view == "mirror" else x
                    pooled = model.head.pool(model.features(seen)).float()
                    out[v, rows] = pooled.cpu().numpy()
                    bar.update(len(rows))
    finally:
        model.to(home).train(was_training)
    return out
