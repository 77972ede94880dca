"""The records a prediction produces: one per file, and the whole result with its renderings.

Research use only: the outputs are not a diagnosis.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cxr import RESEARCH_NOTICE
from cxr.thresholds import format_pair, headline

__all__ = ["ImagePrediction", "PredictionResult", "format_pair", "headline"]


def _tta_words(model: dict[str, Any]) -> str:
    """``off``, ``flip`` or ``all`` (a description without ``tta_mode``: on/off)."""
    mode = model.get("tta_mode")
    if mode is None:
        return "on" if model.get("tta") else "off"
    return "off" if mode == "none" else str(mode)


@dataclass(frozen=True)
class ImagePrediction:
    """One input file: probabilities float32 (L,) in model label order, or why it failed
    (``reason``: an :class:`~cxr.images.ImageReadError` reason, ``detail``: free text).

    ``ood_score`` / ``ood_flag``: the not-a-chest-X-ray check (:mod:`cxr.gate`): its score
    and whether the image is out of distribution; None when the model file has no gate."""

    path: str
    probabilities: np.ndarray | None = None
    reason: str = ""
    detail: str = ""
    ood_score: float | None = None
    ood_flag: bool | None = None

    @property
    def ok(self) -> bool:
        return self.probabilities is not None

    def values(self) -> np.ndarray:
        """The probabilities float32 (L,); a ValueError naming the file when it was skipped."""
        if self.probabilities is None:
            raise ValueError(f"{self.path} has no probabilities ({self.reason}: {self.detail})")
        return self.probabilities


@dataclass
class PredictionResult:
    """Predictions of a set of files, in input order, with the model's labels and thresholds.

    ``ood_threshold``: the not-a-chest-X-ray gate's threshold (None: the model file has no
    gate, and every image's check is unavailable)."""

    labels: tuple[str, ...]
    thresholds: dict[str, float]
    items: list[ImagePrediction] = field(default_factory=list)
    model: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    ood_threshold: float | None = None

    @property
    def predicted(self) -> list[ImagePrediction]:
        return [it for it in self.items if it.ok]

    @property
    def skipped(self) -> list[ImagePrediction]:
        return [it for it in self.items if not it.ok]

    @property
    def all_succeeded(self) -> bool:
        return bool(self.items) and not self.skipped

    @property
    def paths(self) -> list[str]:
        """Paths of the predicted images."""
        return [it.path for it in self.predicted]

    @property
    def probs(self) -> np.ndarray:
        """float32 (N, L) probabilities of the predicted images."""
        rows = [it.values() for it in self.predicted]
        return (
            np.stack(rows).astype(np.float32)
            if rows
            else np.zeros((0, len(self.labels)), np.float32)
        )

    def above(self, probabilities: np.ndarray) -> list[bool | None]:
        """Per label: probability >= its stored threshold, None where none is stored."""
        return [
            None if n not in self.thresholds else bool(p >= self.thresholds[n])
            for n, p in zip(self.labels, probabilities, strict=True)
        ]

    def headline(self, probabilities: np.ndarray) -> str:
        """The one headline of an image (:func:`headline`): the findings at or above their
        thresholds, or that none is."""
        return headline(self.labels, probabilities, self.thresholds)

    def _image_dict(self, it: ImagePrediction) -> dict[str, Any]:
        p = it.values()
        flags = self.above(p)
        i = int(np.argmax(p))
        return {
            "path": it.path,
            "probabilities": {n: float(v) for n, v in zip(self.labels, p, strict=True)},
            "above_threshold": [n for n, f in zip(self.labels, flags, strict=True) if f],
            "top_finding": {
                "label": self.labels[i],
                "probability": float(p[i]),
                "threshold": self.thresholds.get(self.labels[i]),
                "above_threshold": flags[i],
            },
            "ood_score": None if it.ood_score is None else float(it.ood_score),
            "out_of_distribution": None if it.ood_flag is None else bool(it.ood_flag),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "notice": RESEARCH_NOTICE,
            "model": dict(self.model),
            "labels": list(self.labels),
            "thresholds": dict(self.thresholds),
            "ood_threshold": self.ood_threshold,
            "images": [self._image_dict(it) for it in self.predicted],
            "skipped": [
                {"path": it.path, "reason": it.reason, "detail": it.detail} for it in self.skipped
            ],
            "n_predicted": len(self.predicted),
            "n_skipped": len(self.skipped),
            "notes": list(self.notes),
        }

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def to_csv(self) -> str:
        """CSV text: ``Image Index``, ``prob_<Label>`` per label (the layout of
        :func:`cxr.evaluation.predictions.write_predictions`, readable by ``cxr evaluate``), then
        ``above_<Label>`` (1/0, empty when no threshold is stored), ``ood_score`` and
        ``out_of_distribution`` (1/0; both empty when the model has no not-a-chest-X-ray
        gate) and ``notice`` (the research-use notice). Skipped images have no row."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(
            [
                "Image Index",
                *(f"prob_{n}" for n in self.labels),
                *(f"above_{n}" for n in self.labels),
                "ood_score",
                "out_of_distribution",
                "notice",
            ]
        )
        for it in self.predicted:
            flags = ["" if f is None else int(f) for f in self.above(it.values())]
            score = "" if it.ood_score is None else f"{float(it.ood_score):.6g}"
            ood = "" if it.ood_flag is None else int(it.ood_flag)
            w.writerow(
                [
                    it.path,
                    *(f"{float(v):.9g}" for v in it.values()),
                    *flags,
                    score,
                    ood,
                    RESEARCH_NOTICE,
                ]
            )
        return buf.getvalue()

    def to_text(self, force: bool = False) -> str:
        """Per image: headline, all labels ranked by probability (``*`` marks those at or
        above the stored threshold), then the skipped files and the research notice.

        An image the not-a-chest-X-ray gate flags shows that first, and its headline and
        table only with ``force``."""
        lines = [RESEARCH_NOTICE]
        m = self.model
        if m:
            lines.append(
                f"model: {m.get('path', '?')} ({m.get('backbone', '?')}, "
                f"{m.get('input_size', '?')} px, fit {m.get('fit', '?')}, "
                f"TTA {_tta_words(m)})"
            )
            calibration = m.get("calibration")
            if calibration and calibration != "none":
                lines.append(
                    f"probabilities calibrated on validation ({calibration}); thresholds on "
                    "the same scale (--raw shows the model's raw scores)"
                )
            elif calibration == "none":
                lines.append("raw model scores (not calibrated probabilities)")
        if self.predicted and all(it.ood_flag is None for it in self.predicted):
            lines.append(
                "not-a-chest-X-ray check: unavailable (model file has no feature description; "
                "run cxr gate)"
            )
        missing = [n for n in self.labels if n not in self.thresholds]
        width = max(len("label"), *(len(n) for n in self.labels))
        for it in self.predicted:
            p = it.values()
            flags = self.above(p)
            lines += ["", it.path]
            if it.ood_flag:
                limit = "?" if self.ood_threshold is None else f"{self.ood_threshold:.3f}"
                lines.append(
                    f"  NOT A CHEST X-RAY? (out-of-distribution score {it.ood_score or 0:.3f} "
                    f"> threshold {limit})"
                )
                if not force:
                    lines.append(
                        "  findings not shown: the model's scores mean nothing for an image "
                        "unlike its training images (--force shows them)"
                    )
                    continue
            lines.append("  " + self.headline(p))
            lines.append(f"  {'rank':>4}  {'label':<{width}}  {'prob':>6}  {'threshold':>9}  above")
            for rank, i in enumerate(np.argsort(-p, kind="stable"), start=1):
                name = self.labels[i]
                t = self.thresholds.get(name)
                mark = "-" if flags[i] is None else ("*" if flags[i] else "")
                tt = "none" if t is None else f"{t:.3f}"
                lines.append(f"  {rank:>4}  {name:<{width}}  {p[i]:>6.3f}  {tt:>9}  {mark}")
        if self.predicted:
            lines.append("")
            lines.append(
                "* = probability at or above the model's stored threshold"
                + (f"; - = no threshold stored ({', '.join(missing)})" if missing else "")
            )
        if self.skipped:
            lines += ["", f"skipped {len(self.skipped)} file(s):"]
            lines += [f"  {it.path}: {it.reason}: {it.detail}" for it in self.skipped]
        lines += [f"note: {n}" for n in self.notes]
        lines += [
            "",
            f"{len(self.predicted)} image(s) predicted, {len(self.skipped)} skipped. "
            + RESEARCH_NOTICE,
        ]
        return "\n".join(lines) + "\n"

    def render(self, format: str = "text", force: bool = False) -> str:
        """The result as ``text``, ``json`` or ``csv`` (``force``: the text shows the
        findings of images the not-a-chest-X-ray gate flags too)."""
        if format == "text":
            return self.to_text(force)
        if format == "json":
            return self.to_json() + "\n"
        if format == "csv":
            return self.to_csv()
        raise ValueError(f"format must be text, json or csv, got {format!r}")
