"""Reading label maps (ground truth, predictions) with their geometry: image files holding whole
numbers, indexed-colour PNGs, DICOM SEG and RT Structure Sets.

Apart from :mod:`medsam3.io.read` (images), which the DICOM SEG / RTSTRUCT readers use to read
the series they reference.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from medsam3.errors import InputError, MedSAM3Error
from medsam3.image import Image
from medsam3.io.dicom_derived import derived_kind
from medsam3.io.dicom_seg import read_dicom_seg
from medsam3.io.formats import PNG
from medsam3.io.read import read_image, smallest_label_dtype
from medsam3.io.rtstruct import read_rtstruct


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


def _read_dicom_label_map(path: Path, kind: str, reference) -> Image:
    """A DICOM SEG or RT Structure Set as a label map; foreign failures become InputError."""
    try:
        if kind == "SEG":
            return read_dicom_seg(path, reference)
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
    labels = array.astype(smallest_label_dtype(max_label))
    meta = dict(image.meta)
    meta["rgb"] = False
    return Image(array=labels, spacing=image.spacing, origin=image.origin, direction=image.direction,
                 modality=None, path=source, meta=meta)
