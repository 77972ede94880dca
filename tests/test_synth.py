"""Phantom chest radiographs: determinism, files, masks, anatomy, learnability."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cxr.synth import (
    SYNTH_LABELS,
    PatientAnatomy,
    SynthConfig,
    generate_phantoms,
    phantom_for,
    render_phantom,
    render_phantom_details,
    table_from_dir,
)

LESIONS = ("Mass", "Nodule")


# helpers ----------------------------------------------------------------------------------
def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def dilate(mask: np.ndarray, r: int) -> np.ndarray:
    """Binary dilation by a (2r+1)^2 square."""
    out = mask.copy()
    padded = np.pad(mask, r)
    h, w = mask.shape
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out |= padded[r + dy : r + dy + h, r + dx : r + dx + w]
    return out


def pair(seed: int, finding: str, size: int = 128):
    """The same patient and image drawn without and with one finding."""
    anatomy = PatientAnatomy.sample(np.random.default_rng(seed))
    without = render_phantom_details(np.random.default_rng(seed + 1), size, (), anatomy)
    with_ = render_phantom_details(np.random.default_rng(seed + 1), size, (finding,), anatomy)
    return without, with_


def auc(y: np.ndarray, score: np.ndarray) -> float:
    order = np.argsort(score)
    ranks = np.empty(len(score))
    ranks[order] = np.arange(1, len(score) + 1)
    pos = y.sum()
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * (len(y) - pos)))


@pytest.fixture(scope="module")
def small_sets(tmp_path_factory):
    """One config generated twice (1 and 2 workers) and once with another seed."""
    root = tmp_path_factory.mktemp("synth")
    config = SynthConfig(n_images=40, size=48, seed=3, images_per_patient=2.0)
    one = generate_phantoms(root / "w1", config, workers=1)
    two = generate_phantoms(root / "w2", config, workers=2)
    other = generate_phantoms(
        root / "s4", SynthConfig(n_images=40, size=48, seed=4, images_per_patient=2.0), workers=1
    )
    return root, config, one, two, other


@pytest.fixture(scope="module")
def big_set(tmp_path_factory):
    """600 small images: enough for label frequencies and patient structure."""
    root = tmp_path_factory.mktemp("synth600")
    return root, generate_phantoms(root, SynthConfig(n_images=600, size=32, seed=11), workers=1)


# configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": 16}, "size"),
        ({"size": 64.0}, "size"),
        ({"n_images": 0}, "n_images"),
        ({"seed": -1}, "seed"),
        ({"prevalence": 0.0}, "prevalence"),
        ({"prevalence": 1.0}, "prevalence"),
        ({"images_per_patient": 0.5}, "images_per_patient"),
        ({"labels": ("Mass", "Hernia")}, "Hernia"),
        ({"labels": ()}, "at least one"),
        ({"labels": ("Mass", "masses")}, "repeat"),
        ({"labels": "Mass"}, "string"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SynthConfig(**kwargs)


def test_config_canonicalises_labels_and_workers_are_checked(tmp_path):
    assert SynthConfig(labels=["pleural effusion", "MASS"]).labels == ("Effusion", "Mass")
    with pytest.raises(ValueError, match="workers"):
        generate_phantoms(tmp_path, SynthConfig(n_images=2, size=32), workers=0)


# determinism and files ---------------------------------------------------------------------
def test_same_config_same_bytes_whatever_the_workers(small_sets):
    root, _, one, two, other = small_sets
    d1, d2 = tree_digest(root / "w1"), tree_digest(root / "w2")
    assert len(d1) > 40 + 2 and d1 == d2
    assert one.labels.tolist() == two.labels.tolist()
    d4 = tree_digest(root / "s4")
    images = [k for k in d1 if k.startswith("images")]
    assert sum(d1[k] != d4.get(k) for k in images) == len(images)  # every image differs
    assert not np.array_equal(one.labels, other.labels)


def test_labels_csv_table_and_masks_agree(small_sets):
    root, config, table, _, _ = small_sets
    out = root / "w1"
    frame = pd.read_csv(out / "labels.csv", dtype={"Image": str, "PatientId": str})
    assert list(frame.columns) == ["Image", *config.labels, "PatientId"]
    assert table.pathologies == config.labels
    assert [Path(p).name for p in table.paths] == frame["Image"].tolist()
    assert all(
        Path(p).is_absolute() and Path(p).parent == (out / "images").resolve() for p in table.paths
    )
    assert table.patient_ids.tolist() == frame["PatientId"].tolist()
    assert set(table.meta["view"]) == {"PA"} and set(table.meta["split"]) == {""}
    np.testing.assert_array_equal(table.labels, frame[list(config.labels)].to_numpy())
    assert table_from_dir(out).to_frame().equals(table.to_frame())
    record = json.loads((out / "synth.json").read_text())
    assert record["config"]["seed"] == 3 and record["config"]["labels"] == list(config.labels)

    for path, row in zip(table.paths, table.labels, strict=True):
        image = Image.open(path)
        assert image.mode == "L" and image.size == (48, 48)
        stem = Path(path).stem
        for name, value in zip(table.pathologies, row, strict=True):
            mask_path = out / "masks" / f"{stem}_{name}.png"
            assert mask_path.exists() == (value == 1), (mask_path, value)
            if value == 1:
                mask = np.asarray(Image.open(mask_path))
                assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
                assert (mask == 255).any()
    n_masks = len(list((out / "masks").iterdir()))
    assert n_masks == int(table.labels.sum())


def test_rerun_into_the_same_folder_leaves_no_stale_masks(tmp_path):
    first = generate_phantoms(tmp_path, SynthConfig(n_images=12, size=32, seed=1), workers=1)
    second = generate_phantoms(tmp_path, SynthConfig(n_images=12, size=32, seed=2), workers=1)
    assert not np.array_equal(first.labels, second.labels)
    expected = {
        f"{Path(p).stem}_{n}.png"
        for p, row in zip(second.paths, second.labels, strict=True)
        for n, v in zip(second.pathologies, row, strict=True)
        if v == 1
    }
    assert {p.name for p in (tmp_path / "masks").iterdir()} == expected
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(
        Path(p).name for p in second.paths
    )
    # a folder that is not a phantom set keeps its other files
    other = tmp_path / "mine"
    (other / "images").mkdir(parents=True)
    (other / "images" / "p99999_000.png").write_bytes(b"x")
    generate_phantoms(other, SynthConfig(n_images=2, size=32), workers=1)
    assert (other / "images" / "p99999_000.png").read_bytes() == b"x"


def test_label_subset_plants_only_those(tmp_path):
    table = generate_phantoms(
        tmp_path,
        SynthConfig(n_images=20, size=32, seed=5, labels=("Nodule", "Cardiomegaly")),
        workers=1,
    )
    assert table.pathologies == ("Nodule", "Cardiomegaly")
    names = {p.name.split("_", 2)[2] for p in (tmp_path / "masks").iterdir()}
    assert names <= {"Nodule.png", "Cardiomegaly.png"}


# data-set structure ---------------------------------------------------------------------
def test_prevalence_and_co_occurrence(big_set):
    _, table = big_set
    assert len(table) == 600
    freq = table.labels.mean(axis=0)
    assert np.all(np.abs(freq - 0.3) < 0.06), freq
    per_image = table.labels.sum(axis=1)
    assert 0.06 < np.mean(per_image == 0) < 0.18  # "No Finding": 0.7^6 = 0.12
    assert np.mean(per_image >= 2) > 0.3


def test_patients_have_follow_ups(big_set):
    _, table = big_set
    counts = pd.Series(table.patient_ids).value_counts()
    assert 1.3 < counts.mean() < 1.7 and counts.max() >= 3
    assert (counts >= 2).sum() > 50
    # images of a patient are consecutive and named after it
    for path, pid in zip(table.paths, table.patient_ids, strict=True):
        assert Path(path).name.startswith(pid + "_")


def test_follow_ups_share_the_anatomy():
    config = SynthConfig(size=64, seed=9)
    same, other = [], []
    for p in range(8):
        a = phantom_for(config, p, 0, ())[0].astype(float)
        b = phantom_for(config, p, 1, ())[0].astype(float)
        c = phantom_for(config, p + 100, 0, ())[0].astype(float)
        same.append(np.abs(a - b).mean())
        other.append(np.abs(a - c).mean())
        assert not np.array_equal(a, b)  # not a copy either
    assert np.mean(same) < 0.6 * np.mean(other), (same, other)


# rendering and masks ----------------------------------------------------------------------
def test_render_phantom_interface():
    rng = np.random.default_rng(0)
    image, masks = render_phantom(rng, 96, ["pleural effusion", "Mass"])
    assert image.dtype == np.uint8 and image.shape == (96, 96)
    assert set(masks) == {"Effusion", "Mass"}
    assert all(m.dtype == bool and m.shape == (96, 96) for m in masks.values())
    image, masks = render_phantom(rng, 96, ())
    assert masks == {}
    with pytest.raises(ValueError, match="Hernia"):
        render_phantom(rng, 96, ["Hernia"])
    with pytest.raises(ValueError, match="size"):
        render_phantom(rng, 8, ())


def test_looks_like_a_chest():
    r = render_phantom_details(np.random.default_rng(1), 128, (), None)
    img = r.image.astype(float)
    lungs = img[r.lungs & ~r.heart].mean()
    assert img[:6, :6].mean() < 40 and img[:6, -6:].mean() < 40  # dark background
    assert lungs < img[r.heart].mean() - 80  # dark lungs, bright heart
    spine = img[20:60, 62:66].mean()  # mediastinum above the heart
    assert spine > lungs + 80
    rows = img[30:90, r.thorax[0] + 8]  # ribs: bright bands over the lung
    assert rows.max() - rows.min() > 30


@pytest.mark.parametrize("size", [32, 64, 256])
def test_every_finding_has_a_non_empty_mask_at_any_size(size):
    for seed in range(3 if size == 256 else 10):
        image, masks = render_phantom(np.random.default_rng(seed), size, SYNTH_LABELS)
        assert set(masks) == set(SYNTH_LABELS)
        assert all(m.any() for m in masks.values()), seed


@pytest.mark.parametrize("finding", SYNTH_LABELS)
def test_finding_changes_the_image_only_in_and_around_its_mask(finding):
    """Same rng state and anatomy with and without the finding: the pixels that change
    lie (almost all) within a couple of pixels of the mask, and the mask covers them."""
    for seed in range(0, 12, 2):
        without, with_ = pair(seed, finding)
        mask = with_.masks[finding]
        diff = np.abs(with_.image.astype(int) - without.image.astype(int)) > 12
        assert diff.sum() > 0.25 * mask.sum(), (finding, seed)
        near = dilate(mask, 2)
        assert diff[~near].sum() <= 0.03 * diff.sum() + 2, (finding, seed)
        if finding != "Cardiomegaly":  # the enlarged heart covers the normal one
            assert diff[mask].mean() > 0.5, (finding, seed)


@pytest.mark.parametrize("finding", LESIONS)
def test_lesion_masks_are_tight(finding):
    for seed in range(10):
        r = render_phantom_details(np.random.default_rng(seed), 128, (finding,))
        img, mask = r.image.astype(float), r.masks[finding]
        ring = dilate(mask, 3) & ~dilate(mask, 1)
        assert img[mask].mean() > img[ring].mean() + 15, seed
        # every connected piece is a disc: filled bounding box ~ pi/4
        ys, xs = np.nonzero(mask)
        assert mask.sum() < 2 * (np.pi / 4) * (np.ptp(ys) + 1) * (np.ptp(xs) + 1)


def test_lesion_sizes():
    for seed in range(10):
        for finding, (lo, hi) in {"Mass": (0.08, 0.15), "Nodule": (0.04, 0.075)}.items():
            r = render_phantom_details(np.random.default_rng(seed), 256, (finding,))
            mask = r.masks[finding]
            n_discs = 1 if finding == "Mass" else 2
            d = 2 * np.sqrt(mask.sum() / np.pi) / 256  # mean disc diameter
            assert lo * 0.8 <= d <= hi * np.sqrt(n_discs) * 1.25, (finding, seed, d)
            assert not (mask & r.heart).any()
            assert (mask & r.lungs).sum() >= 0.9 * mask.sum()


def test_pneumothorax_is_darker_than_the_same_lung_without_it():
    for seed in range(8):
        without, with_ = pair(seed, "Pneumothorax")
        mask = with_.masks["Pneumothorax"]
        assert (mask & without.lungs).sum() == mask.sum()  # a rim of the lung
        before = without.image[mask].astype(float)
        after = with_.image[mask].astype(float)
        assert after.mean() < before.mean() - 8, seed
        assert after.std() < before.std(), seed  # no lung markings left
        # lateral/apical: the rim touches the lung's outer edge
        cols = np.flatnonzero(mask.any(axis=0))
        assert cols[0] <= with_.thorax[0] + 1 or cols[-1] >= with_.thorax[1] - 1


def test_effusion_is_basal_bright_and_meniscus_shaped():
    for seed in range(8):
        without, with_ = pair(seed, "Effusion")
        mask = with_.masks["Effusion"]
        rows = np.flatnonzero(mask.any(axis=1))
        lung_rows = np.flatnonzero(without.lungs.any(axis=1))
        assert rows[0] > (lung_rows[0] + lung_rows[-1]) / 2  # lower half of the lungs
        assert with_.image[mask].mean() > without.image[mask].mean() + 40
        # meniscus, on each side: the fluid climbs highest at the chest wall and its
        # upper border is concave (the middle lies below the chord of its two ends)
        centre = (with_.thorax[0] + with_.thorax[1]) // 2
        sides = 0
        for half in (slice(0, centre), slice(centre, None)):
            part = np.zeros_like(mask)
            part[:, half] = mask[:, half]
            # columns where the fluid's upper border is free (aerated lung above it, not
            # the heart's edge), in the run that reaches the chest wall
            cols = [
                c
                for c in np.flatnonzero(part.any(axis=0))
                if not with_.heart[np.flatnonzero(part[:, c])[0] - 1, c]
            ]
            runs = np.split(np.array(cols), np.flatnonzero(np.diff(cols) > 1) + 1)
            cols = runs[0] if half.start == 0 else runs[-1]
            if cols.size < 6:
                continue
            sides += 1
            top = np.array([np.flatnonzero(part[:, c])[0] for c in cols], dtype=float)
            lateral, medial = (0, -1) if half.start == 0 else (-1, 0)
            assert top[lateral] < top[medial] - 3, seed
            assert top[len(cols) // 2] >= (top[0] + top[-1]) / 2, (seed, top)
        assert sides >= 1


def test_consolidation_is_inside_a_lung_and_brighter():
    for seed in range(8):
        without, with_ = pair(seed, "Consolidation")
        mask = with_.masks["Consolidation"]
        assert (mask & without.lungs).sum() == mask.sum()
        assert with_.image[mask].mean() > without.image[mask].mean() + 30


def test_cardiothoracic_ratio():
    """Heart width from the mask over the thorax width (lateral lung edges)."""
    for seed in range(12):
        for finding in ((), ("Cardiomegaly",)):
            r = render_phantom_details(np.random.default_rng(seed), 128, finding)
            heart = r.masks["Cardiomegaly"] if finding else r.heart
            cols = np.flatnonzero(heart.any(axis=0))
            ratio = (cols[-1] - cols[0] + 1) / (r.thorax[1] - r.thorax[0] + 1)
            assert abs(ratio - r.ctr) < 0.03, (seed, ratio, r.ctr)
            if finding:
                assert ratio > 0.53, (seed, ratio)
            else:
                assert ratio < 0.49, (seed, ratio)


# learnability ----------------------------------------------------------------------------
def test_linear_model_on_downsampled_pixels_learns_some_labels():
    """Ridge regression on 32x32 pixels, held-out AUC: the easy findings are learnable;
    the small, anywhere-in-the-lung ones are not linearly separable (the CNN's job)."""
    rng = np.random.default_rng(0)
    n, labels = 360, np.random.default_rng(1).random((360, 6)) < 0.3
    x = np.empty((n, 32 * 32))
    for i in range(n):
        image, _ = render_phantom(
            rng, 64, [lab for lab, on in zip(SYNTH_LABELS, labels[i], strict=True) if on]
        )
        x[i] = image.reshape(32, 2, 32, 2).mean(axis=(1, 3)).ravel() / 255
    train, test = slice(0, 260), slice(260, None)
    mu, sd = x[train].mean(0), x[train].std(0) + 1e-3
    z = (x - mu) / sd
    y = labels.astype(float)
    w = np.linalg.solve(
        z[train].T @ z[train] + 100 * np.eye(z.shape[1]), z[train].T @ (y[train] - y[train].mean(0))
    )
    score = z[test] @ w
    aucs = {name: auc(labels[test, j], score[:, j]) for j, name in enumerate(SYNTH_LABELS)}
    assert aucs["Cardiomegaly"] > 0.9 and aucs["Effusion"] > 0.9, aucs
    # shuffled labels: chance
    w0 = np.linalg.solve(
        z[train].T @ z[train] + 100 * np.eye(z.shape[1]),
        z[train].T @ (y[train][::-1] - y[train].mean(0)),
    )
    assert abs(auc(labels[test, 0], z[test] @ w0[:, 0]) - 0.5) < 0.2
