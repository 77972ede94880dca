"""Devices and precisions: one place that turns ``"auto"``/``"cuda"``/``"bf16"`` into torch.

torch is imported inside the functions, so importing this module costs nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cxr.choices import PRECISIONS

if TYPE_CHECKING:
    import torch

__all__ = ["autocast_dtype", "resolve_device", "resolve_precision"]


def resolve_device(name: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """A torch device from a setting.

    ``"auto"`` = this process's CUDA GPU (``cuda:local_rank``) when torch sees one, else the
    CPU; ``"cuda"`` without an index = ``cuda:local_rank``; anything else is parsed by torch.
    A CUDA device asked for on a machine without one is a ``RuntimeError`` that says so.
    """
    import torch

    if isinstance(name, torch.device):
        device = name
    elif name == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    else:
        try:
            device = torch.device(name)
        except (RuntimeError, TypeError):
            raise ValueError(
                f"device {name!r} is not a torch device name; use auto, cpu, cuda or cuda:N"
            ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {str(name)!r} was asked for, but torch sees no CUDA GPU")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    return device


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` = ``"bf16"`` on a GPU, ``"fp32"`` elsewhere; other values are checked."""
    if precision == "auto":
        return "bf16" if device.type == "cuda" else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {['auto', *PRECISIONS]}, got {precision!r}")
    return precision


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision: bfloat16, float16, or None for fp32 (no autocast)."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
