"""Grad-CAM and Grad-CAM++ heatmaps of a cxr model: by autograd (torch) or, for an exported
ONNX model, in closed form from its feature map; the pictures of them; and the explanation
files of a prediction run.

A heatmap says which parts of the image raised one label's *logit* (the score before the
sigmoid), at the last convolutional block, upsampled to the model's input resolution and
normalised per image to [0, 1]. Heatmaps are on the model's input grid: for an image fitted
with ``pad`` (the default), the heatmap covers the padded square;
:mod:`cxr.evaluation.localization` maps it back to the original.

Modules, each importing only those above it in this list:

- :mod:`~cxr.explain.records` — :class:`CamMaps`, :class:`Explanation`;
- :mod:`~cxr.explain.checks` — the one check of method, label indices and chosen labels;
- :mod:`~cxr.explain.maps` — the Grad-CAM / Grad-CAM++ formula from activations and
  gradients to normalised maps (numpy), :func:`resize_bilinear`;
- :mod:`~cxr.explain.gradcam` — torch: :func:`explain`, :func:`grad_cam`,
  :func:`grad_cam_maps`;
- :mod:`~cxr.explain.cam` — numpy, for ONNX models: :func:`explain_onnx`, :func:`cam_maps`,
  :func:`check_cam_head`, :class:`CamUnavailable`;
- :mod:`~cxr.explain.figures` — :func:`overlay`, :func:`heatmap_rgba`,
  :func:`explanation_figure`, :func:`save_explanation_png`;
- :mod:`~cxr.explain.writer` — :func:`explainer_for` (a predictor's heatmaps on its output
  scale) and :func:`write_explanations` (the files of ``cxr predict --explain``).

Importing this package imports neither torch nor matplotlib.
Research use only: a heatmap shows what drove the model, not where a disease is.
"""

from cxr.choices import CAM_METHODS
from cxr.explain.cam import CamUnavailable, cam_maps, check_cam_head, explain_onnx
from cxr.explain.checks import check_method
from cxr.explain.figures import explanation_figure, heatmap_rgba, overlay, save_explanation_png
from cxr.explain.gradcam import explain, grad_cam, grad_cam_maps
from cxr.explain.maps import resize_bilinear
from cxr.explain.records import CONSTANT_NOTE, CamMaps, Explanation
from cxr.explain.writer import Explainer, explainer_for, write_explanations

__all__ = [
    "CAM_METHODS",
    "CONSTANT_NOTE",
    "CamMaps",
    "CamUnavailable",
    "Explainer",
    "Explanation",
    "cam_maps",
    "check_cam_head",
    "check_method",
    "explain",
    "explain_onnx",
    "explainer_for",
    "explanation_figure",
    "grad_cam",
    "grad_cam_maps",
    "heatmap_rgba",
    "overlay",
    "resize_bilinear",
    "save_explanation_png",
    "write_explanations",
]
