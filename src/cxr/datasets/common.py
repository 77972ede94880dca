"""Shared pieces of the dataset readers: the error type and small file helpers."""

from __future__ import annotations

import csv
import gzip
import io
import os
import re
import warnings
from collections.abc import Iterable, Sequence

import pandas as pd

from cxr.errors import CxrError

#: File suffixes (lower case) that count as images.
IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".dcm"})

_NIH_NAME = re.compile(r"^(\d{8})_\d{3}\.\w+$")


class DatasetError(CxrError, ValueError):
    """A dataset on disk cannot be read as asked.

    The message always names the file and the field, column or row at fault and says
    how to fix it.
    """


def column_key(name: str) -> str:
    """A column name compared ignoring case, spaces, underscores and punctuation."""
    return re.sub(r"[^a-z0-9]", "", str(name).lower())


def is_image_file(name: str) -> bool:
    """True for ``*.png|jpg|jpeg|dcm`` (any case), false for hidden files."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def abspath(path: str | os.PathLike[str]) -> str:
    """Absolute, normalised path as str (symlinks are kept, not resolved)."""
    return os.path.abspath(os.fspath(path))


def is_csv_name(name: str) -> bool:
    lower = name.lower()
    return lower.endswith(".csv") or lower.endswith(".csv.gz")


def csv_header(path: str | os.PathLike[str]) -> list[str]:
    """The header row of a (possibly gzipped) CSV, or ``[]`` when it cannot be read."""
    path = os.fspath(path)
    try:
        if path.lower().endswith(".gz"):
            with gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="") as f:
                line = f.readline()
        else:
            with open(path, encoding="utf-8-sig", errors="replace", newline="") as f:
                line = f.readline()
    except (OSError, EOFError, gzip.BadGzipFile):
        return []
    rows = list(csv.reader(io.StringIO(line)))
    return [c.strip() for c in rows[0]] if rows else []


def read_csv_strings(
    path: str | os.PathLike[str], what: str, allow_extra_fields: bool = False
) -> pd.DataFrame:
    """Read a CSV with every cell as a string and empty cells as ``""``.

    ``what`` names the kind of file in error messages (e.g. "NIH metadata CSV").
    ``allow_extra_fields`` silences pandas' warning about rows with one more (trailing,
    empty) field than the header, as in some copies of NIH's ``Data_Entry_2017.csv``.
    """
    path = os.fspath(path)
    try:
        with warnings.catch_warnings():
            if allow_extra_fields:
                warnings.simplefilter("ignore", pd.errors.ParserWarning)
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                na_filter=False,
                index_col=False,
                skipinitialspace=True,
                encoding="utf-8-sig",
            )
    except FileNotFoundError as err:
        raise DatasetError(f"{what} {path} does not exist") from err
    except pd.errors.EmptyDataError as err:
        raise DatasetError(f"{what} {path} is empty: it needs a header row") from err
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, EOFError) as err:
        raise DatasetError(f"{what} {path} cannot be parsed as CSV: {err}") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def drop_empty_unnamed(frame: pd.DataFrame) -> pd.DataFrame:
    """Drop columns without a real name (``Unnamed: 11`` from a trailing comma) that hold
    nothing; such columns carry no data."""
    drop = [
        c
        for c in frame.columns
        if (c == "" or c.startswith("Unnamed:")) and not frame[c].astype(str).str.strip().any()
    ]
    return frame.drop(columns=drop) if drop else frame


def find_column(
    frame: pd.DataFrame, keys: Iterable[str], path: str, role: str, option: str | None
) -> str | None:
    """The one column whose :func:`column_key` is in ``keys``; None when there is none,
    an error naming both when two match."""
    wanted = set(keys)
    hits = [c for c in frame.columns if column_key(c) in wanted]
    if len(hits) > 1:
        fix = f"pass {option}='...' to say which" if option else "rename all but one"
        raise DatasetError(f"{path}: columns {hits} could each be the {role} column; {fix}")
    return hits[0] if hits else None


def require_column(frame: pd.DataFrame, name: str, path: str, option: str) -> str:
    """The column called ``name`` (exactly, else ignoring case/spaces/underscores)."""
    if name in frame.columns:
        return name
    hits = [c for c in frame.columns if column_key(c) == column_key(name)]
    if len(hits) == 1:
        return hits[0]
    raise DatasetError(
        f"{path}: {option}={name!r} is not a column; the columns are {list(frame.columns)}"
    )


def line_of(row: int) -> int:
    """CSV line number (1 = header) of data row ``row`` (0-based)."""
    return row + 2


def refuse_duplicate_images(keys: Sequence[str], path: str) -> None:
    """A DatasetError naming the lines of the first image listed twice in the CSV at
    ``path`` (``keys``: one image path per data row, as resolved), whether the repeated
    rows agree or not: one image, one row."""
    seen: dict[str, int] = {}
    for row, key in enumerate(keys):
        if key in seen:
            raise DatasetError(
                f"{path}, lines {line_of(seen[key])} and {line_of(row)}: image {key} appears "
                "more than once; keep one row per image"
            )
        seen[key] = row


def nih_patient(name: str) -> str | None:
    """Patient of an NIH image name: ``00000075_000.png`` -> ``"75"``; None otherwise."""
    m = _NIH_NAME.match(os.path.basename(name))
    return str(int(m.group(1))) if m else None


def stem(name: str) -> str:
    """File name without folder and suffix(es) like ``.png`` / ``.nii.gz``."""
    base = os.path.basename(name)
    return base.split(".", 1)[0] if not base.startswith(".") else base


def scan_images(folders: Sequence[str]) -> dict[str, str]:
    """Map image file name -> absolute path over ``folders`` (not recursive); the first
    folder holding a name wins. Missing folders are skipped."""
    index: dict[str, str] = {}
    for folder in folders:
        try:
            entries = os.scandir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for e in entries:
                if e.name not in index and is_image_file(e.name):
                    index[e.name] = os.path.join(folder, e.name)
    return index


def nih_image_folders(root: str) -> list[str]:
    """Where NIH images may lie, in order: ``root/images``, the official download's
    ``root/images_001/images`` ... ``images_012/images`` (or ``images_001`` itself),
    then ``root``."""
    folders = [os.path.join(root, "images")]
    try:
        with os.scandir(root) as it:
            subs = sorted(e.name for e in it if e.is_dir() and e.name.startswith("images_"))
    except FileNotFoundError:
        subs = []
    for sub in subs:
        folders += [os.path.join(root, sub, "images"), os.path.join(root, sub)]
    folders.append(root)
    return folders


def resolve_relative(paths: Sequence[str], base: str, probe: int = 5) -> str:
    """The folder relative paths are taken from: ``base`` unless none of the first
    ``probe`` relative paths exist there but some do under ``base/images``."""
    rel = [p for p in paths if p and not os.path.isabs(p)][:probe]
    if not rel or any(os.path.exists(os.path.join(base, p)) for p in rel):
        return base
    images = os.path.join(base, "images")
    if any(os.path.exists(os.path.join(images, p)) for p in rel):
        return images
    return base


def climbs_out(path: str) -> bool:
    """Whether a relative path leaves the folder it is relative to (``../x``, ``a/../../x``);
    decided from the text alone, so nothing about other folders is revealed."""
    if os.path.isabs(path):
        return False
    parts = os.path.normpath(path.replace("\\", "/")).split("/")
    return bool(parts) and parts[0] == ".."


def refuse_climbing(paths: Sequence[str], source: str, folder: str, allow: bool) -> None:
    """Refuse relative image paths of ``source`` that climb out of ``folder`` (the dataset
    folder) unless ``allow``. The message names the line and the path as written, never
    whether the file it points at exists. Absolute paths (cxr's own split files) are kept."""
    if allow:
        return
    for row, p in enumerate(paths):
        if p and climbs_out(p):
            raise DatasetError(
                f"{source}, line {line_of(row)}: image path {p!r} climbs out of the dataset "
                f"folder {folder}; cxr reads only images inside it unless paths outside are "
                "allowed (allow_outside=True, --allow-outside-paths)"
            )


def join_paths(paths: Sequence[str], base: str) -> list[str]:
    """Absolute normalised paths; absolute inputs stay, relative ones join ``base``.
    Windows separators in relative paths are accepted on POSIX."""
    out = []
    for p in paths:
        if os.sep == "/" and "\\" in p and not os.path.isabs(p):
            p = p.replace("\\", "/")
        out.append(os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p)))
    return out


def as_path_str(source: str | os.PathLike[str]) -> str:
    """``source`` as an absolute str path, with ``~`` expanded."""
    return abspath(os.path.expanduser(os.fspath(source)))


def list_dir(path: str) -> list[os.DirEntry[str]]:
    """Non-hidden entries of a folder, sorted by name."""
    with os.scandir(path) as it:
        return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
