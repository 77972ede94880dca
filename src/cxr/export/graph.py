"""The exported graph: tracing the classifier and packing cxr's metadata into it.

The graph (torch's TorchScript-based exporter, ``torch.onnx.export(..., dynamo=False)``:
about 2 s for DenseNet-121 where the dynamo exporter took 28 s on the same CPU):

- input ``input``: float32 (B, 1, S, S) = uint8 pixels / 255, B dynamic: the output of
  :func:`cxr.preprocessing.to_model_input`, so that preprocessing keeps one definition; the
  graph holds the rest (gray to RGB, mean/std, backbone, head);
- outputs ``logits`` (B, L) (for an ensemble head, the logit of the members' mean
  probability: one graph), ``probabilities`` (B, L) = sigmoid(logits), ``features``
  (B, C, h, w) = the last feature map (the Grad-CAM target layer's output) and ``pooled``
  (B, C) = its pooling by the head.

torch and onnx are imported when called.
"""

from __future__ import annotations

import io
import json
import warnings
from typing import TYPE_CHECKING, Any

from cxr import RESEARCH_NOTICE, __version__
from cxr.modelformat.onnx_metadata import (
    HEAD_KEY,
    INPUT_NAME,
    META_KEY,
    OUTPUT_NAMES,
    HeadWeights,
    require,
)

if TYPE_CHECKING:
    import torch

    from cxr.models import ChestClassifier

__all__ = ["head_weights", "trace_graph", "with_metadata"]


def _graph_module(model: ChestClassifier) -> Any:
    """A module whose forward returns the four outputs of :data:`OUTPUT_NAMES`."""
    import torch
    from torch import nn

    class _Graph(nn.Module):
        def __init__(self, inner: ChestClassifier) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
            features = self.inner.features(x)
            pooled = self.inner.head.pool(features)
            logits = self.inner.head.logits_from_pooled(pooled)  # members averaged
            return logits, torch.sigmoid(logits), features, pooled

    return _Graph(model).eval()


def trace_graph(model: ChestClassifier, opset: int) -> bytes:
    """The fp32 graph (no metadata) as bytes."""
    import torch

    size = model.spec.input_size
    example = torch.zeros(2, 1, size, size)
    buf = io.BytesIO()
    axes = {name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # the input checks of ChestClassifier.normalise are traced as constants (the graph
        # has a fixed S); the exporter's deprecation notices are not for the user
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _graph_module(model),
            (example,),
            buf,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects
            input_names=[INPUT_NAME],
            output_names=list(OUTPUT_NAMES),
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def head_weights(model: ChestClassifier) -> HeadWeights | None:
    """The head's pooling and output layer when it is pooling + one linear layer (no
    hidden layers, one member), for CAM without autograd; None otherwise (an ensemble's
    averaged logit is not linear in the pooled features)."""
    from cxr.models.classifier import GeM

    if model.spec.head.hidden or model.spec.head.members != 1:
        return None
    pool = model.head.pool
    p = float(pool.p.detach().clamp(min=1.0)) if isinstance(pool, GeM) else 1.0
    eps = float(pool.eps) if isinstance(pool, GeM) else 1e-6
    return HeadWeights(
        model.spec.head.pool,
        model.head.out.weight.detach().float().cpu().numpy(),
        model.head.out.bias.detach().float().cpu().numpy(),
        p,
        eps,
    )


def with_metadata(graph: bytes, header: dict[str, Any], head: HeadWeights | None) -> bytes:
    """The serialised ``graph`` with cxr's metadata (replacing any other): the ``header``
    (:mod:`cxr.modelformat.onnx_metadata`) and, when given, the head's weights; not sealed
    yet (:func:`cxr.modelformat.onnx_metadata.seal`)."""
    onnx = require("onnx", "exporting to ONNX")

    proto = onnx.load_from_string(graph)
    del proto.metadata_props[:]
    proto.producer_name, proto.producer_version = "cxr", __version__
    proto.doc_string = f"cxr chest X-ray classifier ({header['spec']['backbone']}). " + (
        RESEARCH_NOTICE
    )
    entries = {META_KEY: json.dumps(header, sort_keys=True)}
    if head is not None:
        entries[HEAD_KEY] = json.dumps(head.to_dict(), sort_keys=True)
    onnx.helper.set_model_props(proto, entries)
    return bytes(proto.SerializeToString())
