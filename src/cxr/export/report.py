"""What an ONNX export did and measured: :class:`ExportReport`, as a dict or as text."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cxr import RESEARCH_NOTICE

__all__ = ["PARITY_TOLERANCE", "ExportReport"]

#: Largest |Δp| allowed between the fp32 ONNX graph and the torch model.
PARITY_TOLERANCE = 1e-4


@dataclass
class ExportReport:
    """What :func:`export_onnx` did and measured.

    Attributes:
        path: the ONNX file written.
        source: the source model file (None for an in-memory model).
        precision: ``fp32`` or ``int8``.
        opset: ONNX opset of the graph.
        size_bytes: the file's size.
        parity: batch size -> max |Δp| of the fp32 ONNX graph against torch (fp32).
        parity_images: where the parity images came from.
        tolerance: the largest |Δp| allowed (:data:`PARITY_TOLERANCE`).
        int8_parity: batch size -> max |Δp| of the int8 graph against torch (reported, not
            checked: the AUC check decides).
        quantization: calibration cache, image count and method (int8 only).
        auc_check: cache, images, labels scored, macro AUC fp32 / int8, the drop, the
            largest drop allowed and whether it was forced (int8 only).
        seconds: wall time of the export.
        notes: anything the user should know.
    """

    path: Path
    source: Path | None
    precision: str
    opset: int
    size_bytes: int
    parity: dict[int, float]
    parity_images: str
    tolerance: float = PARITY_TOLERANCE
    int8_parity: dict[int, float] = field(default_factory=dict)
    quantization: dict[str, Any] | None = None
    auc_check: dict[str, Any] | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        """Max |Δp| of the fp32 graph against torch over every parity batch."""
        return max(self.parity.values(), default=float("nan"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["path"] = str(self.path)
        out["source"] = None if self.source is None else str(self.source)
        out["max_abs_diff"] = self.max_abs_diff
        return out

    def to_text(self) -> str:
        lines = [
            f"wrote {self.path} ({self.precision}, opset {self.opset}, "
            f"{self.size_bytes / 1e6:.1f} MB) in {self.seconds:.1f} s"
            + (f" from {self.source}" if self.source else ""),
            "parity of the fp32 ONNX graph with torch (fp32) on "
            f"{self.parity_images}: "
            + ", ".join(f"batch {b} max |Δp| {d:.2e}" for b, d in self.parity.items())
            + f" (tolerance {self.tolerance:.0e}): ok",
        ]
        if self.int8_parity:
            lines.append(
                "int8 graph vs torch: "
                + ", ".join(f"batch {b} max |Δp| {d:.3f}" for b, d in self.int8_parity.items())
            )
        if self.quantization:
            q = self.quantization
            lines.append(
                f"int8 static quantisation ({q['format']}, per-channel weights, {q['method']} "
                f"calibration on {q['images']} images of {q['cache']})"
            )
        if self.auc_check:
            a = self.auc_check
            forced = " (forced)" if a["forced"] and a["drop"] > a["max_drop"] else ""
            lines.append(
                f"macro AUC on {a['images']} images of {a['cache']} ({len(a['labels'])} labels): "
                f"fp32 {a['macro_auc_fp32']:.4f}, int8 {a['macro_auc_int8']:.4f}, change "
                f"{-a['drop']:+.4f} (largest drop allowed {a['max_drop']}){forced}"
            )
        lines += [f"note: {n}" for n in self.notes]
        lines.append(RESEARCH_NOTICE)
        return "\n".join(lines) + "\n"
