"""NIfTI completeness check: ITK reads a truncated .nii or .nii.gz without complaint.

ITK's NIfTI reader fills whatever the file no longer holds with zeros or garbage, so a
half-copied scan would be segmented as if it were whole. Before reading we compare the
bytes the header promises (data offset + voxels x bytes per voxel) with what is there.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medsam3.errors import InputError

_CHUNK = 1 << 20


def _expected_bytes(path: Path) -> int | None:
    """Header offset plus voxel data size, or ``None`` when nibabel cannot parse the header."""
    try:
        header = nib.load(path).header
        shape = header.get_data_shape()
        return int(header.get_data_offset()) + int(np.prod(shape)) * header.get_data_dtype().itemsize
    except Exception:
        return None  # leave the verdict to ITK


def _gzip_content_size(path: Path, needed: int) -> tuple[int, bool]:
    """Bytes the gzip member(s) decompress to, stopping once ``needed`` are seen, and whether
    the compressed data ended cleanly (not cut off inside a member)."""
    total = 0
    with open(path, "rb") as fh:
        decompressor = zlib.decompressobj(wbits=31)
        pending = b""
        while True:
            data = decompressor.unconsumed_tail or pending or fh.read(_CHUNK)
            pending = b""
            if not data:
                return total, decompressor.eof
            total += len(decompressor.decompress(data, _CHUNK))
            if total >= needed:
                return total, True
            if decompressor.eof:
                rest = decompressor.unused_data or fh.read(_CHUNK)
                if not rest.strip(b"\0"):  # nothing (or zero padding) after the last member
                    return total, True
                decompressor = zlib.decompressobj(wbits=31)
                pending = rest


def check_nifti_complete(path: Path) -> None:
    """Raise :class:`InputError` when ``path`` holds fewer bytes than its header announces.

    For ``.nii.gz`` the gzip trailer's length field answers at once in the usual case; only
    when it disagrees is the stream decompressed (and discarded) to count.
    """
    expected = _expected_bytes(path)
    if expected is None:
        return
    if not path.name.lower().endswith(".gz"):
        actual = path.stat().st_size
        complete = actual >= expected
    else:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            if fh.tell() >= 4:
                fh.seek(-4, 2)
                (trailer_size,) = struct.unpack("<I", fh.read(4))
                if trailer_size == expected % (1 << 32):
                    return
        try:
            actual, clean = _gzip_content_size(path, expected)
        except zlib.error as exc:
            raise InputError(f"cannot read {path}: the NIfTI file is corrupt (gzip: {exc})") from None
        complete = actual >= expected and clean
    if not complete:
        raise InputError(f"cannot read {path}: the NIfTI file is truncated or corrupt (its header "
                         f"announces {expected} bytes of header and voxels, the file holds "
                         f"{actual} bytes); copy or download it again")


def nifti_non_finite_mask(path: Path, channel: int | None = None) -> np.ndarray | None:
    """Where a float NIfTI file stores NaN or inf, in numpy order ``[(t,) z, y, x]``; ``None``
    when it stores none (or nibabel cannot tell).

    ITK's NIfTI reader turns NaN into 0 without a word, so a volume of NaN would be read as
    zeros (and segmented as empty) and partial NaN would look like real zeros; the readers
    put NaN back where this mask says, so every format treats them alike.
    """
    try:
        image = nib.load(path)
        if image.header.get_data_dtype().kind != "f":
            return None
        raw = np.asanyarray(image.dataobj.get_unscaled())
    except Exception:
        return None
    if channel is not None and raw.ndim == 4:
        raw = raw[..., channel]
    mask = ~np.isfinite(raw)
    if not mask.any():
        return None
    return mask.transpose(tuple(reversed(range(mask.ndim))))
