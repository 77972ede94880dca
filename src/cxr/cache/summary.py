"""The settings of a prepare run and what it did."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from cxr.choices import FIT_MODES

__all__ = ["PrepareSettings", "PrepareSummary"]


@dataclass(frozen=True)
class PrepareSettings:
    """What determines the pixels: output side in pixels and how the aspect ratio is kept."""

    size: int = 224
    fit: str = "pad"

    def __post_init__(self) -> None:
        if not isinstance(self.size, int) or not 16 <= self.size <= 4096:
            raise ValueError(f"size must be an integer from 16 to 4096 pixels, got {self.size!r}")
        if self.fit not in FIT_MODES:
            raise ValueError(f"fit must be one of {FIT_MODES}, got {self.fit!r}")


@dataclass
class PrepareSummary:
    """What a prepare run did. ``decoded`` counts images decoded by this run; ``rejects``
    holds (path, reason, detail) of every rejected image; ``seconds`` is wall time."""

    out_dir: Path
    total: int
    stored: int
    rejected: int
    decoded: int
    seconds: float
    rejects: list[tuple[str, str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_second(self) -> float:
        return self.decoded / self.seconds if self.seconds > 0 else 0.0

    def to_text(self) -> str:
        lines = [
            f"cache: {self.out_dir}",
            f"images: {self.total}  stored: {self.stored}  rejected: {self.rejected}",
            f"decoded this run: {self.decoded} in {self.seconds:.1f} s"
            + (f" ({self.images_per_second:.0f} images/s)" if self.decoded else ""),
        ]
        lines += self.notes
        if self.rejects:
            lines.append(f"rejected images (all listed in {self.out_dir / 'rejects.csv'}):")
            lines += [f"  {p}: {r}: {d}" for p, r, d in self.rejects[:10]]
            if len(self.rejects) > 10:
                lines.append(f"  ... and {len(self.rejects) - 10} more")
        return "\n".join(lines)
