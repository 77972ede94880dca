"""Named choices shared by the library, the configs and the command line.

One definition of each set of allowed values. This module imports nothing heavy (no
torch, numpy or pandas), so that building the ``cxr`` argument parser stays quick.
"""

from __future__ import annotations

__all__ = [
    "BLANK_POLICIES",
    "CALIBRATIONS",
    "CAM_METHODS",
    "DATASET_FORMATS",
    "DEVICE_HELP",
    "FIT_MODES",
    "MULTIFRAME_MODES",
    "OUTPUT_FORMATS",
    "POOLS",
    "PRECISIONS",
    "RECIPES",
    "THRESHOLD_METHODS",
    "TTA_MODES",
    "UNCERTAIN_POLICIES",
]

#: Head pooling layers: global average or generalised mean (GeM).
POOLS: tuple[str, ...] = ("avg", "gem")
#: Floating-point precisions of a forward pass (autocast for bf16 and fp16).
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
#: How an image is fitted into the model's square: pad the short side, or crop the long.
FIT_MODES: tuple[str, ...] = ("pad", "crop")
#: Dataset formats :func:`cxr.datasets.load_dataset` reads.
DATASET_FORMATS: tuple[str, ...] = ("nih", "chexpert", "csv", "folders", "list", "dicom")
#: CheXpert's uncertain (-1) labels become 1 (U-Ones), 0 (U-Zeros) or unknown (U-Ignore).
UNCERTAIN_POLICIES: tuple[str, ...] = ("ones", "zeros", "ignore")
#: A blank CheXpert label is unknown (nan) or absent (zero).
BLANK_POLICIES: tuple[str, ...] = ("nan", "zero")
#: What to do with a multi-frame DICOM: use its first frame (with a warning), or refuse it.
MULTIFRAME_MODES: tuple[str, ...] = ("first", "refuse")
#: Heatmap methods of :mod:`cxr.explain`.
CAM_METHODS: tuple[str, ...] = ("gradcam", "gradcam++")
#: How operating thresholds are chosen on validation data (:mod:`cxr.evaluation.thresholds`).
THRESHOLD_METHODS: tuple[str, ...] = ("youden", "sensitivity")
#: Probability calibration fitted on validation (:mod:`cxr.calibration`); "none" = off.
CALIBRATIONS: tuple[str, ...] = ("platt", "temperature", "isotonic", "none")
#: How ``cxr train`` makes a model: fine-tune the network (two phases), or fit a linear
#: probe on the frozen pretrained backbone's pooled features (:mod:`cxr.training.probe`).
RECIPES: tuple[str, ...] = ("finetune", "probe")
#: Test-time augmentation (:mod:`cxr.inference.tta`): the original image only, it and its
#: left-right mirror, or all six views (original, mirror, four small shifts).
TTA_MODES: tuple[str, ...] = ("none", "flip", "all")
#: Output formats of prediction results.
OUTPUT_FORMATS: tuple[str, ...] = ("text", "json", "csv")
#: What a ``device`` setting may name.
DEVICE_HELP = "auto (the GPU when there is one), cpu, cuda, cuda:1, ..."
