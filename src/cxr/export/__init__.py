"""Export cxr models to other runtimes: ONNX (``cxr export MODEL --format onnx``).

>>> from cxr.export import export_onnx
>>> report = export_onnx("runs/d121/best.safetensors", "d121.onnx")   # doctest: +SKIP
>>> print(report.to_text())                                            # doctest: +SKIP

- :func:`export_onnx` / :class:`ExportReport` (:mod:`cxr.export.onnx`): the graph (dynamic
  batch; logits, probabilities, last feature map, pooled features), the model file's whole
  header in the ONNX metadata, the parity check against torch, optional int8;
- :mod:`cxr.export.quantize`: static int8 (QDQ, per channel) calibrated on a prepared cache;
- :mod:`cxr.export.graph`: tracing the graph and packing cxr's metadata into it;
- the cxr metadata and integrity seal of an ONNX file live with the model file formats
  (:mod:`cxr.modelformat.onnx_metadata`, read without torch or the ``onnx`` package;
  :func:`read_onnx_info` is re-exported here).

Only the metadata is imported eagerly: reading an ONNX file's header needs no torch.
Research use only: the exported models are not a medical device.
"""

from typing import TYPE_CHECKING, Any

from cxr.modelformat.onnx_metadata import HeadWeights, OnnxFileError, OnnxInfo, read_onnx_info

if TYPE_CHECKING:
    from cxr.export.onnx import (
        DEFAULT_OPSET,
        PARITY_TOLERANCE,
        ExportError,
        ExportReport,
        export_onnx,
    )

__all__ = [
    "DEFAULT_OPSET",
    "PARITY_TOLERANCE",
    "ExportError",
    "ExportReport",
    "HeadWeights",
    "OnnxFileError",
    "OnnxInfo",
    "export_onnx",
    "read_onnx_info",
]


def __getattr__(name: str) -> Any:
    # the exporter imports torch and onnx: loaded on first use
    if name in ("DEFAULT_OPSET", "PARITY_TOLERANCE", "ExportError", "ExportReport", "export_onnx"):
        from cxr.export import onnx

        return getattr(onnx, name)
    raise AttributeError(f"module 'cxr.export' has no attribute {name!r}")
