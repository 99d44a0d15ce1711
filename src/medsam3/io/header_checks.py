"""Checks on MetaImage and NRRD header text, before ITK interprets it.

ITK's MetaImage reader (MetaIO) trusts its header's counts: ``NDims = 1e308`` or a
``DimSize`` with fewer numbers than ``NDims`` crashes the process (a segmentation fault,
found by tests/bad_inputs/test_fuzz.py). The fields that size arrays are checked here first.

ITK's NIfTI reader refuses a sheared or skewed affine ("only orthonormal direction cosines"),
but its MetaImage and NRRD readers take a sheared ``TransformMatrix`` / ``space directions``
as they are, and the geometry is later orthogonalised somewhere on the way to the output:
voxels silently move by millimetres. We read the matrix from the header text ourselves and
refuse a non-orthogonal one the same way for all three formats.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medsam3.errors import InputError
from medsam3.io.formats import METAIMAGE, NRRD, ImageFormat
from medsam3.io.geometry import is_orthonormal

# Headers are short text; a data file attached after them is not read.
_HEADER_BYTES = 1 << 16
_META_DIRECTION_KEYS = ("TransformMatrix", "Rotation", "Orientation")


def _header_text(path: Path) -> str:
    with open(path, "rb") as fh:
        return fh.read(_HEADER_BYTES).decode("latin-1")


def _meta_fields(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key = key.strip()
        values[key] = value.strip()
        if key == "ElementDataFile":  # the header ends here; binary data may follow
            break
    return values


# MetaImage fields holding NDims numbers, NDims x NDims numbers, or one whole number (with its range)
_META_VECTORS = ("DimSize", "ElementSpacing", "ElementSize", "Offset", "Position", "Origin", "CenterOfRotation")
_META_MATRICES = _META_DIRECTION_KEYS
_META_INTEGERS = {"NDims": (1, 10), "ElementNumberOfChannels": (1, 4096), "HeaderSize": (-1, 2**40),
                  "CompressedDataSize": (0, 2**50)}


def _malformed(path: Path, what: str, key: str, value: str, expected: str) -> InputError:
    shown = value if len(value) <= 60 else value[:57] + "..."
    return InputError(f"cannot read {path}: malformed {what} header ({key} = {shown}: expected {expected})")


def _whole(value: str) -> int | None:
    return int(value) if re.fullmatch(r"[+-]?\d{1,18}", value.strip()) else None


def _check_meta_fields(path: Path, values: dict[str, str]) -> None:
    """Refuse a MetaImage header whose counts would make MetaIO read past its arrays."""
    for key, (low, high) in _META_INTEGERS.items():
        if key in values:
            number = _whole(values[key])
            if number is None or not low <= number <= high:
                raise _malformed(path, "MetaImage", key, values[key], f"a whole number {low}..{high}")
    if "NDims" not in values:
        return  # MetaIO reports it
    ndims = int(values["NDims"])
    for keys, count in ((_META_VECTORS, ndims), (_META_MATRICES, ndims * ndims)):
        for key in keys:
            if key not in values:
                continue
            items = values[key].split()
            try:
                numbers = [float(v) for v in items]
            except ValueError:
                numbers = []
            if len(numbers) != count or not all(np.isfinite(numbers)):
                raise _malformed(path, "MetaImage", key, values[key], f"{count} finite numbers (NDims = {ndims})")
            if key == "DimSize" and any(_whole(v) is None or int(v) < 1 for v in items):
                raise _malformed(path, "MetaImage", key, values[key], f"{ndims} whole numbers >= 1")


def _meta_direction(text: str) -> tuple[str, np.ndarray] | None:
    """The MetaImage direction as written (row-major, one row per index axis), or ``None``."""
    values = _meta_fields(text)
    for key in _META_DIRECTION_KEYS:
        if key in values:
            try:
                numbers = [float(v) for v in values[key].split()]
            except ValueError:
                return None  # malformed: ITK's own parser decides
            n = int(round(len(numbers) ** 0.5))
            if n * n != len(numbers) or n < 2:
                return None
            return f"{key} = {values[key]}", np.array(numbers).reshape(n, n)
    return None


def _nrrd_direction(text: str) -> tuple[str, np.ndarray] | None:
    """The NRRD ``space directions`` vectors as columns (spacing included), or ``None``."""
    header = re.split(r"\r?\n\r?\n", text, maxsplit=1)[0]
    match = re.search(r"^space directions:\s*(.*)$", header, flags=re.M)
    if not match:
        return None
    vectors = []
    for vector in re.findall(r"\(([^)]*)\)", match.group(1)):
        try:
            vectors.append([float(v) for v in vector.split(",")])
        except ValueError:
            return None
    if len(vectors) < 2 or any(len(v) != len(vectors[0]) for v in vectors):
        return None
    matrix = np.array(vectors, dtype=float).T
    if matrix.shape[0] != matrix.shape[1]:
        return None
    return f"space directions: {match.group(1).strip()}", matrix


def check_text_header(path: Path, fmt: ImageFormat) -> None:
    """Refuse a MetaImage / NRRD file with a malformed header or non-orthogonal axes.

    Raises:
        InputError: MetaImage counts that do not match ``NDims``; the header's direction
            matrix is not a rotation / reflection once each axis is scaled to unit length.
    """
    if fmt.name not in (METAIMAGE.name, NRRD.name):
        return
    try:
        text = _header_text(path)
    except OSError:
        return  # unreadable: ITK reports it
    if fmt.name == METAIMAGE.name:
        _check_meta_fields(path, _meta_fields(text))
    found = _meta_direction(text) if fmt.name == METAIMAGE.name else _nrrd_direction(text)
    if found is None:
        return
    written, matrix = found
    if not np.all(np.isfinite(matrix)):
        raise InputError(f"cannot read {path}: its direction ({written}) holds non-finite numbers")
    # MetaImage rows and NRRD columns are the axes; columns-orthonormal <=> rows-orthonormal
    axes = matrix.T if fmt.name == METAIMAGE.name else matrix
    lengths = np.linalg.norm(axes, axis=0)
    if np.any(lengths < 1e-12):
        raise InputError(f"cannot read {path}: its direction ({written}) has an axis of length 0")
    unit = axes / lengths
    if not is_orthonormal(unit):
        cosines = np.clip(np.abs(unit.T @ unit - np.eye(len(unit))), 0.0, 1.0)
        skew = float(np.degrees(np.arcsin(cosines.max())))
        raise InputError(
            f"cannot read {path}: its direction ({written}) is sheared (axes {skew:.3g} degrees "
            "off perpendicular); only orthogonal grids are supported (as for NIfTI): resample "
            "the image onto an orthogonal grid first"
        )
