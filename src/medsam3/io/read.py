"""Reading images and label maps: choose the reader for a path, check what came back.

Every failure becomes an :class:`~medsam3.errors.InputError` that names the file and the
accepted formats; no SimpleITK, pydicom or tifffile exception reaches the caller.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from medsam3.errors import ArgumentError, InputError, MedSAM3Error
from medsam3.image import Image, check_modality
from medsam3.io.dicom import read_dicom_directory, read_dicom_file
from medsam3.io.formats import DICOM, SUPPORTED_INPUT_FORMATS, TIFF, input_format
from medsam3.io.itk_bridge import read_with_simpleitk
from medsam3.io.limits import max_pixels as resolve_max_pixels
from medsam3.io.tiff import read_tiff


def _read_any(path: Path, series_uid: str | None, channel: int | None, limit: int) -> Image:
    if not path.exists():
        raise InputError(f"cannot read {path}: no such file or directory. "
                         f"Supported inputs: {SUPPORTED_INPUT_FORMATS}")
    if path.is_dir():
        return read_dicom_directory(path, series_uid, max_pixels=limit)
    if not os.access(path, os.R_OK):
        raise InputError(f"cannot read {path}: permission denied")
    if path.stat().st_size == 0:
        raise InputError(f"cannot read {path}: empty file (0 bytes); copy or download it again")
    fmt = input_format(path)
    if fmt is None:
        raise InputError(f"cannot read {path}: unsupported file type (extension "
                         f"{path.suffix or 'none'!r}, and not DICOM). "
                         f"Supported inputs: {SUPPORTED_INPUT_FORMATS}")
    if fmt is DICOM:
        return read_dicom_file(path, series_uid, max_pixels=limit)
    if series_uid is not None:
        raise ArgumentError(f"series_uid only applies to DICOM inputs, but {path} is {fmt.name}")
    if fmt is TIFF:
        return read_tiff(path, max_pixels=limit)
    return read_with_simpleitk(path, fmt, channel=channel, max_pixels=limit)


def _check_values(image: Image) -> None:
    """Refuse an image without pixels or without one finite value; warn about (and say what
    becomes of) NaN/inf."""
    array = image.array
    if array.size == 0:
        raise InputError(f"cannot read {image.path}: it holds no pixels (array shape {array.shape}); "
                         "the file is corrupt or truncated")
    if array.dtype.kind not in "fc":
        return
    finite = np.isfinite(array)
    count = int(finite.sum())
    if count == array.size:
        return
    if count == 0:
        raise InputError(f"cannot read {image.path}: every one of its {array.size:,} values is NaN or "
                         "infinite: there is no image to segment (a failed conversion or reconstruction?)")
    bad = array.size - count
    warnings.warn(f"{image.path}: {bad:,} of {array.size:,} values ({100.0 * bad / array.size:.3g}%) are "
                  "NaN or infinite; they take no part in intensity statistics and are treated as the "
                  "darkest value (+inf as the brightest)", stacklevel=3)


def read_image(path: str | os.PathLike, modality: str | None = None,
               series_uid: str | None = None, channel: int | None = None,
               max_pixels: int | None = None) -> Image:
    """Read a medical image file or DICOM series directory with its geometry.

    Args:
        path: a DICOM file, a directory holding a DICOM series, or a NIfTI / NRRD /
            MetaImage / PNG / JPEG / TIFF file (see :data:`SUPPORTED_INPUT_FORMATS`).
        modality: overrides the modality found in the file; one of
            :data:`medsam3.image.MODALITIES`.
        series_uid: the SeriesInstanceUID to read when a directory holds several series.
        channel: for 4D NIfTI / NRRD / MetaImage files (Decathlon multi-sequence MRI, time
            series): the index along the 4th axis to read as a 3D volume.
        max_pixels: the most values (pixels x samples per pixel) the header may announce;
            ``None``: ``$MEDSAM3_MAX_PIXELS``, else 2**29 (see :mod:`medsam3.io.limits`).
            Checked before anything is decoded (compressed files can announce billions).

    Returns:
        An :class:`~medsam3.Image`: ``array`` is ``[y, x]``, ``[y, x, 3]`` (RGB, with
        ``meta["rgb"]``) or ``[z, y, x]``; spacing / origin / direction as SimpleITK reports
        them (LPS mm). DICOM values are in modality units (CT in HU) and MONOCHROME1 is
        inverted so that high values are bright. ``meta["format"]`` names the format;
        ``meta["dicom"]`` keeps UIDs (SOP Instance UIDs in slice order), window and
        photometric interpretation. ``modality`` comes from the argument, else from the
        DICOM Modality tag (CR/DX/MG/XA/RF -> "XR"), "RGB" for colour pictures, else None.

    Raises:
        InputError: missing, empty, unreadable, corrupt or unsupported input; over the
            size limit; a sheared grid; no finite value; 4D data; several DICOM series and
            no ``series_uid``.
        ArgumentError: unknown ``modality``; ``series_uid`` for a non-DICOM file; a bad
            ``max_pixels`` / ``$MEDSAM3_MAX_PIXELS``.

    Warns:
        UserWarning: some values are NaN or infinite; an alpha channel was dropped.
    """
    modality = check_modality(modality)
    limit = resolve_max_pixels(max_pixels)
    path = Path(os.path.expanduser(os.fspath(path)))
    try:
        image = _read_any(path, series_uid, channel, limit)
    except MedSAM3Error:
        raise
    except MemoryError:
        raise InputError(f"cannot read {path}: not enough memory to hold the image") from None
    except Exception as exc:  # a reader failed in a way we did not foresee: still one clear line
        reason = " ".join(str(exc).split())
        raise InputError(f"cannot read {path}: {type(exc).__name__}: {reason}. "
                         f"Supported inputs: {SUPPORTED_INPUT_FORMATS}") from None
    _check_values(image)
    if modality is not None:
        image.modality = modality
    return image


def smallest_label_dtype(max_label: int) -> np.dtype:
    """The narrowest of ``uint8`` / ``uint16`` / ``uint32`` / ``uint64`` holding labels up to ``max_label``."""
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)
