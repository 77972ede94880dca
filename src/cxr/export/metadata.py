"""The cxr metadata of an exported ONNX model: moved to :mod:`cxr.modelformat.onnx_metadata`.

Kept so that imports written before the move (``from cxr.export.metadata import
HeadWeights``) keep working; new code imports :mod:`cxr.modelformat.onnx_metadata`.
"""

from cxr.modelformat.onnx_metadata import *  # noqa: F403  # the same names, __all__ included
from cxr.modelformat.onnx_metadata import __all__ as __all__
