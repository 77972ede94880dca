"""What a training run settles before its first step: the caches and the labels they must
hold, the batch loaders, the callbacks, the saved state a resume continues from, the CPU
threads, and the line that says what the run is about to do."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from cxr.cache.batches import CacheBatches
from cxr.prepared_cache import PreparedCache
from cxr.training import distributed as dd
from cxr.training.callbacks import TrainingCallback, as_callbacks
from cxr.training.config import TrainConfig, TrainError
from cxr.training.records import STATE_VERSION

__all__ = [
    "Callback",
    "cache_batches",
    "default_callbacks",
    "label_index",
    "load_state",
    "open_cache",
    "plan_line",
    "resume_threads",
]

#: A :class:`~cxr.training.callbacks.TrainingCallback`, or a function ``fn(event, info)``.
Callback = TrainingCallback | Callable[[str, Any], None]


def open_cache(cache: str | Path | PreparedCache) -> PreparedCache:
    """``cache`` opened (a folder), or as given."""
    return cache if isinstance(cache, PreparedCache) else PreparedCache(cache)


def label_index(
    config: TrainConfig, train_c: PreparedCache, val_c: PreparedCache
) -> tuple[tuple[str, ...], list[int], list[int]]:
    """The labels learned (``config.labels``, else the training cache's), and their columns
    in the training and in the validation cache. TrainError when a cache lacks one or the
    caches' image sides differ."""
    names = tuple(config.labels or train_c.table.pathologies)
    index = {}
    for which, cache in (("training", train_c), ("validation", val_c)):
        have = cache.table.pathologies
        missing = [n for n in names if n not in have]
        if missing:
            raise TrainError(
                f"the {which} cache {cache.path} lacks label(s) {missing}; it has {list(have)}"
            )
        index[which] = [have.index(n) for n in names]
    if train_c.size != val_c.size:
        raise TrainError(
            f"the training cache is {train_c.size}px but the validation cache "
            f"is {val_c.size}px; prepare both at the same --size"
        )
    return names, index["training"], index["validation"]


def cache_batches(
    config: TrainConfig,
    cache: PreparedCache,
    info: dd.Dist,
    columns: Sequence[int],
    training: bool,
) -> CacheBatches:
    """The batches of this rank: shuffled, whole batches of ``config.batch_size`` read
    ahead by ``config.loader_threads`` (training), or every image in order in batches of
    ``config.val_batch_size`` (validation); pinned for a GPU."""
    return CacheBatches(
        cache,
        config.batch_size if training else config.val_batch_size,
        shuffle=training,
        seed=config.seed if training else 0,
        rank=info.rank,
        world_size=info.world_size,
        drop_last=training,
        label_index=columns,
        pin_memory=info.device.type == "cuda",
        prefetch=2 * config.loader_threads if training else 2,
    )


def default_callbacks(callbacks: Sequence[Callback]) -> list[TrainingCallback]:
    """``callbacks`` as objects, with TensorBoard logging added when TensorBoard is
    installed and none was given."""
    from cxr.training.tensorboard import TensorBoardCallback, tensorboard_available

    out = as_callbacks(callbacks)
    if tensorboard_available() and not any(isinstance(c, TensorBoardCallback) for c in out):
        out.append(TensorBoardCallback())
    return out


def load_state(run_dir: Path, info: dd.Dist) -> dict[str, Any]:
    """The resume state ``state.pt`` of ``run_dir`` (tensors and plain values only; nothing
    is unpickled); TrainError when it cannot be read, is of another version, or was written
    by another number of processes."""
    path = run_dir / "state.pt"
    try:
        state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise TrainError(
            f"{path} holds pickled objects other than tensors and plain values; "
            "cxr never unpickles code, so it cannot resume from it; start a new run"
        ) from None
    except (OSError, RuntimeError, EOFError) as err:
        raise TrainError(f"{path} cannot be read ({type(err).__name__}); start a new run") from None
    if state.get("version") != STATE_VERSION:
        raise TrainError(f"{path} was written by another cxr version; start a new run")
    if int(state["world_size"]) != info.world_size:
        raise TrainError(
            f"{run_dir} was trained with {state['world_size']} processes; resume it "
            f"with the same number (now {info.world_size})"
        )
    return state


def resume_threads(
    saved: int, asked: int | None, info: dd.Dist, echo: Callable[[str], None]
) -> None:
    """CPU kernels sum in an order that depends on the thread count: by default use the
    run's own, so that the resumed run ends exactly where an uninterrupted one would."""
    if info.device.type != "cpu" or not saved:
        return
    if asked is not None:
        torch.set_num_threads(int(asked))
        if int(asked) != saved and info.is_main:
            echo(
                f"using {asked} CPU threads as asked; the run used {saved}, so from here its "
                "numbers may differ in the last digits from an uninterrupted run"
            )
    elif saved != torch.get_num_threads():
        torch.set_num_threads(saved)
        if info.is_main:
            echo(f"using {saved} CPU threads, as the run did before")


def plan_line(
    config: TrainConfig,
    info: dd.Dist,
    names: Sequence[str],
    train_c: PreparedCache,
    val_c: PreparedCache,
    run_dir: Path,
    start: int,
) -> str:
    """What the run is about to do, printed before its first step."""
    where = str(info.device)
    if info.device.type == "cpu":
        where += f" ({torch.get_num_threads()} threads)"
    if info.enabled:
        where += f", {info.world_size} processes"
    weights = config.pretrained or "none (random initialisation)"
    return (
        f"training {config.backbone} on {where}: {len(train_c)} training and {len(val_c)} "
        f"validation images at {train_c.size} px ({train_c.fit}), {len(names)} labels "
        f"({', '.join(names)}); pretrained weights: {weights}; epochs {start + 1} to "
        f"{config.epochs} into {run_dir}"
    )
