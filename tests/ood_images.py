"""Images that are not chest X-rays, for the not-a-chest-X-ray gate's tests and benchmark.

Kinds (all uint8 (N, S, S), gray, fitted as cxr fits a file: :func:`cxr.images.fit_square`):

- ``photos``: the sample images bundled in scikit-image's wheel (``skimage.data``'s folder,
  read from disk: nothing is downloaded) plus 40 of its LFW face crops;
- ``noise``: uniform noise; ``blank``: constant images (0, 255 and levels between);
- ``text``: rendered text (PIL), dark on light and light on dark, plus skimage's page/text.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from cxr.images import fit_square

KINDS = ("photos", "noise", "blank", "text")
_TEXT_FILES = ("page.png", "text.png")
_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "the",
    "lazy",
    "dog",
    "invoice",
    "total",
    "amount",
    "due",
    "screenshot",
    "settings",
    "login",
    "password",
    "report",
    "page",
    "chapter",
    "figure",
    "table",
    "results",
    "2026",
    "hello",
    "world",
]


def skimage_folder() -> Path:
    import skimage.data

    return Path(skimage.data.__file__).parent


def _gray(image: Image.Image) -> np.ndarray:
    if image.mode in ("RGBA", "LA", "P"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return np.asarray(image.convert("L"), dtype=np.uint8)


def _rendered_text(seed: int, side: int = 256) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dark = bool(seed % 2)
    image = Image.new("L", (side, side), 20 if dark else 240)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=int(rng.integers(12, 28)))
    y = int(rng.integers(2, 20))
    while y < side - 10:
        line = " ".join(rng.choice(_WORDS, size=int(rng.integers(2, 6))))
        draw.text((int(rng.integers(2, 30)), y), line, fill=235 if dark else 15, font=font)
        y += int(rng.integers(18, 40))
    return np.asarray(image)


def ood_images(size: int, fit: str = "pad", seed: int = 0) -> dict[str, np.ndarray]:
    """{kind: uint8 (N, size, size)} for :data:`KINDS`."""
    rng = np.random.default_rng(seed)
    folder = skimage_folder()
    photos, text = [], []
    for path in sorted(folder.glob("*.png")) + sorted(folder.glob("*.jpg")):
        with Image.open(path) as im:
            gray = _gray(im)
        (text if path.name in _TEXT_FILES else photos).append(fit_square(gray, size, fit))
    faces = np.load(folder / "lfw_subset.npy")[:40]
    photos += [fit_square(np.asarray(f, dtype=np.float64), size, fit) for f in faces]
    noise = [rng.integers(0, 256, (size, size), dtype=np.uint8) for _ in range(20)]
    blank = [np.full((size, size), v, np.uint8) for v in (0, 32, 64, 96, 128, 160, 192, 224, 255)]
    text += [fit_square(_rendered_text(seed * 1000 + i), size, fit) for i in range(20)]
    return {
        "photos": np.stack(photos),
        "noise": np.stack(noise),
        "blank": np.stack(blank),
        "text": np.stack(text),
    }
