"""The stratified patient split (:func:`split_by_patient`)."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Literal, cast

import numpy as np
import pandas as pd

from cxr.split.common import (
    DEFAULT_FRACTIONS,
    check_fractions,
    patient_keys,
    split_order,
)
from cxr.table import LabelTable

__all__ = ["split_by_patient"]


# --------------------------------------------------------------------------------------
# the stratified split
# --------------------------------------------------------------------------------------
def split_by_patient(
    table: LabelTable,
    fractions: Mapping[str, float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    keep_existing: bool | Iterable[str] = False,
) -> np.ndarray:
    """Assign every image a split name, whole patients at a time, stratified by label.

    Multi-label iterative stratification over patients: each patient is one item carrying,
    per label, the count of its images positive for that label (NaN counts as neither
    positive nor negative). Each split wants ``fraction x total`` of every label's
    positives and of the images. Repeatedly the label with the fewest unassigned patients
    is taken; its patients (most positives first, then most images, then seeded random
    order) each go to the split that still wants most positives of that label, ties
    broken by the split that still wants most images, then at random (seeded). Each
    assignment lowers that split's wants for all the patient's labels and images.
    Patients with no positive label finally fill the splits' remaining image wants,
    largest patients first.

    Args:
        table: the images; ``meta['patient_id']`` groups them (an empty patient id makes
            that image a patient of its own).
        fractions: split name -> fraction of the images; positive, summing to 1 (within
            1e-6), names non-empty and unique. Order is kept in :func:`split_tables`
            only when passed there as ``order``.
        seed: seeds the tie-breaking; the same seed and table give the same split, and the
            result does not depend on the order of the rows.
        keep_existing: ``False`` ignores ``meta['split']``. ``True`` keeps every
            non-empty ``meta['split']``; a collection of names keeps only rows whose split
            is one of them (``keep_existing={"test"}`` keeps NIH's official test list and
            re-splits its ``train_val`` rows). A split that receives kept rows is closed:
            it gets no other patients, and the remaining patients are shared among the
            other splits of ``fractions`` in proportion to their fractions (so with NIH's
            official test list kept, ``{"train": 0.8, "val": 0.1, "test": 0.1}`` splits the
            rest 8:1 into train and val). Kept names need not be in ``fractions``. A
            patient's images with no kept split follow that patient's kept split (with a
            warning); a patient whose rows keep two different splits is an error.

    Returns:
        A string array (N,) of split names, one per image, in row order.

    Raises:
        ValueError: bad fractions; with ``keep_existing``, a patient with two kept
            splits, or images left to split when every split of ``fractions`` is closed.
    """
    names, frac = check_fractions(fractions)
    n_images = len(table)
    if n_images == 0:
        return np.array([], dtype=str)

    keys = patient_keys(table)
    # np.unique sorts the keys, so patients (and the random draws) do not depend on row order
    patients, inverse = np.unique(keys.astype(str), return_inverse=True)
    n_patients = len(patients)
    sizes = np.bincount(inverse, minlength=n_patients).astype(np.int64)
    positive = np.nan_to_num(table.labels, nan=0.0) == 1
    counts = np.zeros((n_patients, table.labels.shape[1]), dtype=np.int64)
    np.add.at(counts, inverse, positive.astype(np.int64))

    # patient -> split index into `all_names`; -1 = still to split
    all_names = list(names)
    assigned = np.full(n_patients, -1, dtype=np.int64)
    open_splits = np.ones(len(names), dtype=bool)
    if keep_existing is not False and keep_existing is not None:
        assigned, all_names, open_splits = _kept_assignment(
            table, keep_existing, inverse, patients, names
        )

    free = np.flatnonzero(assigned < 0)
    if free.size:
        if not open_splits.any():
            raise ValueError(
                f"{int(sizes[free].sum())} images of {free.size} patients have no kept split, "
                f"but every split of fractions ({', '.join(names)}) already holds kept rows "
                "and takes no other patients; add an open split to fractions"
            )
        targets = np.flatnonzero(open_splits)
        share = frac[targets] / frac[targets].sum()
        rng = np.random.default_rng(seed)
        chosen = _stratify(counts[free], sizes[free], share, rng)
        assigned[free] = targets[chosen]

    return np.asarray(all_names, dtype=str)[assigned[inverse]]


def _kept_assignment(
    table: LabelTable,
    keep_existing: Literal[True] | Iterable[str],
    inverse: np.ndarray,
    patients: np.ndarray,
    names: tuple[str, ...],
) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Patients' kept splits (-1 where none), all split names, and which splits are open."""
    existing = table.meta["split"].str.strip().to_numpy(dtype=object)
    if keep_existing is True:
        kept_rows = existing != ""
    else:
        if isinstance(keep_existing, str):
            keep_existing = [keep_existing]
        wanted = {str(n) for n in keep_existing}
        kept_rows = np.isin(existing, list(wanted)) & (existing != "")
    kept_names = split_order(existing[kept_rows].tolist())
    all_names = list(names) + [n for n in kept_names if n not in names]
    n_patients = len(patients)
    assigned = np.full(n_patients, -1, dtype=np.int64)
    open_splits = np.array([n not in kept_names for n in names], dtype=bool)
    if not kept_rows.any():
        return assigned, all_names, open_splits

    rows = np.flatnonzero(kept_rows)
    codes = pd.Categorical(existing[rows], categories=all_names).codes.astype(np.int64)
    pairs = pd.DataFrame({"patient": inverse[rows], "code": codes}).drop_duplicates()
    multi = pairs["patient"].duplicated(keep=False).to_numpy()
    if multi.any():
        bad = pairs[multi].groupby("patient")["code"].agg(lambda c: sorted(all_names[i] for i in c))
        # the groupby keys are the integer patient codes (pandas stubs type them Hashable)
        examples = "; ".join(
            f"patient {str(patients[cast(int, p)])!r} in {', '.join(s)}"
            for p, s in list(bad.items())[:5]
        )
        raise ValueError(
            f"cannot keep the existing splits: {len(bad)} patients have images kept in "
            f"different splits, which would leak them across splits ({examples})"
        )
    assigned[pairs["patient"].to_numpy()] = pairs["code"].to_numpy()
    pulled = ~kept_rows & (assigned[inverse] >= 0)
    if pulled.any():
        n_pat = len(np.unique(inverse[pulled]))
        row = int(np.flatnonzero(pulled)[0])
        warnings.warn(
            f"{int(pulled.sum())} images of {n_pat} patients have no kept split but their "
            f"patient has; they follow the patient's kept split (first: "
            f"{table.meta.at[row, 'path']!r} -> {all_names[assigned[inverse[row]]]!r})",
            stacklevel=3,
        )
    return assigned, all_names, open_splits


def _stratify(
    counts: np.ndarray, sizes: np.ndarray, share: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Iterative stratification of P items (patients) into K splits.

    counts: (P, L) positives per item and label; sizes: (P,) images per item;
    share: (K,) fractions summing to 1. Returns (P,) split indices.
    """
    n_items, n_labels = counts.shape
    k = len(share)
    choice = np.full(n_items, -1, dtype=np.int64)
    if k == 1:
        choice[:] = 0
        return choice
    # wants: remaining demand per split, for images and for each label's positives
    image_want = share * float(sizes.sum())
    label_want = share[:, None] * counts.sum(axis=0, dtype=np.float64)[None, :]
    # random rank per item (tie-breaking of the processing order) and per item and split
    rank = rng.permutation(n_items)
    coin = rng.random((n_items, k))
    image_want_l = image_want.tolist()
    label_want_l = label_want.T.tolist()  # [label][split], Python floats: fast scalar access
    counts_l = counts.tolist()
    sizes_l = sizes.tolist()
    coin_l = coin.tolist()
    splits = range(k)

    def give(item: int, split: int) -> None:
        choice[item] = split
        image_want_l[split] -= sizes_l[item]
        row = counts_l[item]
        for j in range(n_labels):
            c = row[j]
            if c:
                label_want_l[j][split] -= c

    has = counts > 0
    remaining = has.sum(axis=0)
    done = np.zeros(n_labels, dtype=bool)
    while True:
        open_labels = np.flatnonzero(~done & (remaining > 0))
        if open_labels.size == 0:
            break
        # the rarest label by unassigned patients, then by positives, then by column
        free = choice < 0
        pos_left = counts[free].sum(axis=0)
        label = int(min(open_labels, key=lambda j: (remaining[j], pos_left[j], j)))
        done[label] = True
        items = np.flatnonzero(free & has[:, label])
        order = np.lexsort((rank[items], -sizes[items], -counts[items, label]))
        want = label_want_l[label]
        for item in items[order].tolist():
            c = coin_l[item]
            best = max(splits, key=lambda s: (want[s], image_want_l[s], c[s]))
            give(item, best)
        remaining = (has & (choice < 0)[:, None]).sum(axis=0)

    # items with no positive label fill the remaining image demand, largest first
    items = np.flatnonzero(choice < 0)
    order = np.lexsort((rank[items], -sizes[items]))
    for item in items[order].tolist():
        c = coin_l[item]
        best = max(splits, key=lambda s: (image_want_l[s], c[s]))
        choice[item] = best
        image_want_l[best] -= sizes_l[item]
    return choice
