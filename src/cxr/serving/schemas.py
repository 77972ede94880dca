"""The JSON the REST API answers with, as pydantic models (they make the OpenAPI document).

A prediction is the record ``cxr predict --format json`` prints
(:meth:`cxr.inference.PredictionResult.to_dict`), each image with a few more keys for
people and pages: the labels ranked, the headline, the not-a-chest-X-ray check and the
research-use notice. Models allow extra keys, so fields that later versions of the
prediction record gain pass through unchanged.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ErrorResponse",
    "ExplainResponse",
    "Explanation",
    "Health",
    "ImageResult",
    "ModelInfo",
    "OutOfDistribution",
    "PredictResponse",
    "RankedLabel",
    "SkippedFile",
    "TopFinding",
]


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class Health(BaseModel):
    status: str = Field(description="`ok` (healthz); `ready` or `starting` (readyz)")


class SkippedFile(BaseModel):
    path: str = Field(description="the client's file name (display only)")
    reason: str = Field(description="empty, truncated, too-large, unsupported or unreadable")
    detail: str


class ErrorResponse(_Open):
    detail: str = Field(description="what was wrong, in one sentence")
    files: list[SkippedFile] | None = Field(
        default=None, description="per file, why it could not be read (415/422 of images)"
    )


class TopFinding(BaseModel):
    label: str
    probability: float
    threshold: float | None
    above_threshold: bool | None


class RankedLabel(BaseModel):
    rank: int = Field(description="1 = most probable")
    label: str
    probability: float
    threshold: float | None = Field(description="stored in the model file; null = none")
    above_threshold: bool | None = Field(description="null when no threshold is stored")


class OutOfDistributionCheck(_Open):
    """Whether the model file carries the not-a-chest-X-ray gate, and its threshold."""

    available: bool
    threshold: float | None = None


class OutOfDistribution(_Open):
    available: bool = Field(description="whether the model file carries the check")
    flag: bool | None = Field(description="true: the image does not look like a chest X-ray")
    score: float | None = Field(description="the check's score; higher = less chest-like")


class ImageResult(_Open):
    path: str = Field(description="the client's file name (display only, never a path)")
    probabilities: dict[str, float]
    above_threshold: list[str]
    top_finding: TopFinding
    ranked: list[RankedLabel]
    headline: str
    ood: OutOfDistribution
    notice: str
    sr: str | None = Field(
        default=None,
        description="for a DICOM upload: the URL path (GET, same API key) of the DICOM SR "
        "(Comprehensive 3D SR, TID 1500) of exactly this prediction, kept for a limited time "
        "(see the API description); null for a PNG or JPEG (an SR must reference a DICOM "
        "source image's study, series and SOP instance UIDs), for a DICOM without those UIDs, "
        "and without highdicom installed; `sr_note` says why",
    )
    sr_note: str = Field(default="", description="empty, or why `sr` is null")


class PredictResponse(_Open):
    notice: str
    model: dict[str, Any]
    labels: list[str]
    thresholds: dict[str, float]
    images: list[ImageResult]
    skipped: list[SkippedFile]
    n_predicted: int
    n_skipped: int
    notes: list[str]


class Explanation(BaseModel):
    label: str
    probability: float
    threshold: float | None
    above_threshold: bool | None
    note: str = Field(description="empty, or why the heatmap is not informative")
    heatmap_png: str = Field(
        description="base64 PNG, RGBA, input_size square (the Grad-CAM grid): the heatmap in "
        "the jet colour map, alpha = its value; scale it onto image_png to overlay it"
    )
    overlay_png: str = Field(
        description="base64 PNG, RGB, display_size square: the image with the heatmap blended"
    )


class ExplainResponse(BaseModel):
    notice: str
    path: str
    method: str
    input_size: int = Field(description="the model's input side, pixels (the heatmap grid)")
    display_size: int = Field(description="side of the PNGs, pixels")
    image_png: str = Field(description="base64 PNG, gray: the image fitted as the model sees it")
    explanations: list[Explanation]


class ModelInfo(_Open):
    notice: str
    labels: list[str]
    backbone: str
    input_size: int
    fit: str
    preprocessing: dict[str, Any]
    head: dict[str, Any] | None
    thresholds: dict[str, float]
    training: dict[str, Any]
    file: dict[str, Any] = Field(description="name, bytes and SHA-256 of the model file")
    backend: dict[str, Any]
    versions: dict[str, str | None]
    explanations: dict[str, Any]
    ood: OutOfDistributionCheck
    limits: dict[str, Any]
