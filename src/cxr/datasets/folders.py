"""Folder-per-class datasets: ``root/CLASS/**/*.png|jpg|jpeg|dcm``.

Each class folder's name, canonicalised (``PNEUMONIA`` -> ``Pneumonia``), becomes a
label. An image is 1 for the class(es) it lies in and 0 for every other class: the
folders are read as complete, exclusive annotations, so nothing is NaN.

A class whose name means "no finding" (``NORMAL``, ``No Finding``, ``healthy``,
``negative``; see :func:`cxr.labels.is_normal_class`) is not a label: its images are 0
for every label. Pass ``normal_classes=()`` to keep such a class as a label.

When the subfolders of ``root`` are split names (``train``, ``val``, ``valid``,
``validation``, ``test``) each holding class folders (the Kermany layout
``chest_xray/train/NORMAL``), all splits are read and ``split`` is the split folder's
name.

An image whose path relative to its class folder appears in two class folders of the
same split (``Mass/p1/a.png`` and ``Nodule/p1/a.png``) is one image with both labels
(multi-label); its ``path`` is the copy in the first class folder in sorted order. This
never applies to a no-finding class: its images are always images of their own, even when
a class folder holds a file of the same relative name.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from cxr.datasets.common import (
    DatasetError,
    as_path_str,
    column_key,
    is_image_file,
    list_dir,
    nih_patient,
    stem,
)
from cxr.labels import canonical_label, is_normal_class
from cxr.table import LabelTable

#: Folder names read as splits (compared in lower case).
SPLIT_FOLDER_NAMES: frozenset[str] = frozenset({"train", "val", "valid", "validation", "test"})

#: Default patient patterns, tried in order on the file name; group 1 is the patient.
DEFAULT_PATIENT_PATTERNS: tuple[re.Pattern[str], ...] = (
    re.compile(r"^(person\d+)_"),  # Kermany: person123_bacteria_456.jpeg
    re.compile(r"^((?:NORMAL\d*-)?IM-\d+)-"),  # Kermany: IM-0115-0001.jpeg, NORMAL2-IM-0383-...
)


def patient_from_name(name: str, pattern: re.Pattern[str] | None = None) -> str:
    """The patient a file name belongs to.

    With ``pattern`` (one group): its match, else the file stem. Without: Kermany names
    (``person123_bacteria_456.jpeg`` -> ``person123``, ``IM-0115-0001.jpeg`` ->
    ``IM-0115``, ``NORMAL2-IM-0383-0001.jpeg`` -> ``NORMAL2-IM-0383``), NIH names
    (``00000075_000.png`` -> ``75``), else the file stem.
    """
    base = os.path.basename(name)
    if pattern is not None:
        m = pattern.search(base)
        return m.group(1) if m else stem(base)
    for pat in DEFAULT_PATIENT_PATTERNS:
        m = pat.match(base)
        if m:
            return m.group(1)
    return nih_patient(base) or stem(base)


def _normal_test(normal_classes: Callable[[str], bool] | Iterable[str]) -> Callable[[str], bool]:
    if callable(normal_classes):
        return normal_classes
    if isinstance(normal_classes, str):
        normal_classes = (normal_classes,)
    keys = {column_key(n) for n in normal_classes}
    return lambda name: column_key(name) in keys


def _compile(patient_pattern: str | re.Pattern[str] | None) -> re.Pattern[str] | None:
    if patient_pattern is None:
        return None
    pat = re.compile(patient_pattern) if isinstance(patient_pattern, str) else patient_pattern
    if pat.groups != 1:
        raise ValueError(
            f"patient_pattern {pat.pattern!r} has {pat.groups} groups; it needs exactly one, "
            r"capturing the patient (e.g. r'^(person\d+)_')"
        )
    return pat


def _images_under(folder: str) -> list[str]:
    """Image files below ``folder`` (recursive, hidden entries skipped), as paths relative
    to it, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith((".", "__"))]
        rel = os.path.relpath(dirpath, folder)
        out += [os.path.normpath(os.path.join(rel, f)) for f in filenames if is_image_file(f)]
    return sorted(out)


def _class_dirs(folder: str) -> list[os.DirEntry[str]]:
    """Subfolders, without hidden ones and archive debris such as ``__MACOSX``."""
    return [e for e in list_dir(folder) if e.is_dir() and not e.name.startswith("__")]


def read_class_folders(
    root: str | os.PathLike[str],
    normal_classes: Callable[[str], bool] | Iterable[str] = is_normal_class,
    patient_pattern: str | re.Pattern[str] | None = None,
) -> LabelTable:
    """Read a folder-per-class dataset (the only reader that lists image files).

    Args:
        root: the folder holding one subfolder per class, or one subfolder per split
            (``train``/``val``/``valid``/``test``) each holding class folders.
        normal_classes: which class folders mean "no finding" (all labels 0, no label of
            their own): a predicate on the folder name or a collection of names
            (compared ignoring case/spaces/underscores). ``()`` keeps every class a label.
        patient_pattern: regex with one group, searched in the file name, giving the
            patient; a name it does not match uses its stem. None: see
            :func:`patient_from_name`.

    Returns:
        A :class:`LabelTable` sorted by path; views ``""``; ``split`` the split folder
        name (``""`` without split folders).

    Raises:
        DatasetError: root missing, no class folders, no images, split and class folders
            mixed, or two class folders naming the same label.
    """
    root_path = as_path_str(root)
    if not os.path.isdir(root_path):
        raise DatasetError(f"class-folder root {root_path} is not a folder")
    is_normal = _normal_test(normal_classes)
    pattern = _compile(patient_pattern)

    subs = _class_dirs(root_path)
    if not subs:
        raise DatasetError(
            f"{root_path} has no subfolders; a folder-per-class dataset needs "
            "root/CLASS/image files (or root/SPLIT/CLASS/image files)"
        )
    split_subs = [e for e in subs if e.name.lower() in SPLIT_FOLDER_NAMES]
    if split_subs and len(split_subs) != len(subs):
        others = [e.name for e in subs if e not in split_subs]
        raise DatasetError(
            f"{root_path} mixes split folders {[e.name for e in split_subs]} with other "
            f"folders {others}; put every class folder inside a split folder, or pass one "
            "split folder as the root"
        )
    groups = [(e.name, e.path) for e in split_subs] if split_subs else [("", root_path)]

    # (split, relative path) of a labelled class, or (split, path) of a no-finding image
    # -> (path, set of labels)
    images: dict[tuple[str, str], tuple[str, set[str]]] = {}
    labels: list[str] = []
    for split_name, folder in groups:
        classes = _class_dirs(folder)
        if split_name and not classes:
            raise DatasetError(f"split folder {folder} holds no class folders")
        seen: dict[str, str] = {}
        for entry in classes:
            normal = is_normal(entry.name)
            label = "" if normal else canonical_label(entry.name)
            if label:
                if label in seen:
                    raise DatasetError(
                        f"class folders {seen[label]!r} and {entry.name!r} in {folder} both "
                        f"mean the label {label!r}; merge them"
                    )
                seen[label] = entry.name
                if label not in labels:
                    labels.append(label)
            for rel in _images_under(entry.path):
                path = os.path.join(entry.path, rel)
                # only labelled classes merge by relative name (the multi-label layout): a
                # no-finding image is its own image, whatever other class folders hold
                key = (split_name, rel) if label else (split_name, "\0" + path)
                if key not in images:
                    images[key] = (path, set())
                if label:
                    images[key][1].add(label)
    if not images:
        raise DatasetError(
            f"no images (*.png, *.jpg, *.jpeg, *.dcm) found in the class folders of {root_path}"
        )

    labels.sort()
    col = {name: j for j, name in enumerate(labels)}
    rows = sorted(images.items(), key=lambda kv: kv[1][0])
    matrix = np.zeros((len(rows), len(labels)), dtype=np.float32)
    for i, (_, (_, found)) in enumerate(rows):
        for name in found:
            matrix[i, col[name]] = 1.0
    meta = pd.DataFrame(
        {
            "path": [p for _, (p, _) in rows],
            "patient_id": [patient_from_name(p, pattern) for _, (p, _) in rows],
            "view": "",
            "split": [s for (s, _), _ in rows],
        }
    )
    return LabelTable(meta, matrix, tuple(labels), source=root_path)
