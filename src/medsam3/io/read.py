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
from medsam3.io.formats import DICOM, PNG, SUPPORTED_INPUT_FORMATS, TIFF, input_format
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


def _palette_png_indices(path: Path) -> np.ndarray | None:
    """Palette indices of an indexed-colour PNG (the usual way to store labels in PNG)."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as picture:
            if picture.mode != "P":
                return None
            return np.asarray(picture)
    except Exception:
        return None


def _smallest_label_dtype(max_label: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32):
        if max_label <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.uint64)


def _read_dicom_label_map(path: Path, kind: str, reference) -> Image:
    """A DICOM SEG or RT Structure Set as a label map; foreign failures become InputError."""
    try:
        if kind == "SEG":
            from medsam3.io.dicom_seg import read_dicom_seg

            return read_dicom_seg(path, reference)
        from medsam3.io.rtstruct import read_rtstruct

        return read_rtstruct(path, reference)
    except MedSAM3Error:
        raise
    except MemoryError:
        raise InputError(f"cannot read {path}: not enough memory to hold the label map") from None
    except Exception as exc:
        reason = " ".join(str(exc).split())
        raise InputError(f"cannot read {path}: not a readable DICOM {kind} "
                         f"({type(exc).__name__}: {reason})") from None


def read_label_map(path: str | os.PathLike, reference: Image | str | os.PathLike | None = None) -> Image:
    """Read an integer label map (0 = background) for evaluation, with its geometry.

    Float files holding whole numbers (as some tools save labels) are accepted; the array
    becomes ``uint8`` / ``uint16`` / ``uint32``, the narrowest that holds the largest label.
    Indexed-colour PNGs give their palette indices; an RGB file whose three channels are
    equal gives one channel.

    DICOM Segmentation (SEG) and RT Structure Set files are read too: values are segment /
    ROI numbers and ``meta["labels"]`` maps them to segment labels / ROI names (see
    :func:`medsam3.io.dicom_seg.read_dicom_seg`, :func:`medsam3.io.rtstruct.read_rtstruct`).

    Args:
        path: the label map file.
        reference: DICOM SEG / RTSTRUCT only: the image series they belong to (an
            :class:`Image` or its series directory / file); the labels land on its grid.
            Required for RTSTRUCT (contours are polygons in patient space); for SEG without
            it, the grid is the SEG's own frame stack. Ignored for other formats.

    Raises:
        InputError: as :func:`read_image`, or the file does not hold non-negative whole
            numbers in one channel.
        ArgumentError: an RT Structure Set without ``reference``.
    """
    from medsam3.io.dicom_derived import derived_kind

    dicom_path = Path(os.path.expanduser(os.fspath(path)))
    kind = derived_kind(dicom_path)
    if kind is not None:
        return _read_dicom_label_map(dicom_path, kind, reference)
    image = read_image(path)
    source = image.path
    array = image.array
    if image.meta.get("format") == PNG.name and image.is_rgb:
        indices = _palette_png_indices(Path(source))
        if indices is not None and indices.shape == image.shape:
            array = indices
    if array.ndim == image.ndim + 1 and image.is_rgb:
        grey = array[..., 0]
        if not (np.array_equal(grey, array[..., 1]) and np.array_equal(grey, array[..., 2])):
            raise InputError(f"cannot use {source} as a label map: it is a colour image; "
                             "label maps hold one integer label per pixel")
        array = grey
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"cannot use {source} as a label map: it holds non-integer values "
                             f"({array.dtype}); label maps hold whole numbers 0, 1, 2, ...")
    elif array.dtype.kind not in "iub":
        raise InputError(f"cannot use {source} as a label map: unsupported pixel type {array.dtype}")
    if array.size and array.min() < 0:
        raise InputError(f"cannot use {source} as a label map: it holds negative values "
                         f"(minimum {array.min()}); labels are 0 (background), 1, 2, ...")
    max_label = int(array.max()) if array.size else 0
    labels = array.astype(_smallest_label_dtype(max_label))
    meta = dict(image.meta)
    meta["rgb"] = False
    return Image(array=labels, spacing=image.spacing, origin=image.origin, direction=image.direction,
                 modality=None, path=source, meta=meta)
