"""Image headers without pixels: shape and geometry, to check pairs and fill the manifest.

A converter must look at every image and label of a dataset (hundreds of CT volumes) to
check that they pair up; reading the pixels would take longer than the training epoch.
This module reads only headers: SimpleITK's ``ReadImageInformation`` for NIfTI / NRRD /
MetaImage, PIL's lazy open for pictures. Anything else (DICOM, TIFF stacks) goes through
:func:`medsam3.io.read_image`. Geometry follows :class:`medsam3.Image`: shapes in array
order, spacing / origin / direction in ITK order; singleton axes are squeezed as
``read_image`` does, and a 4th axis (Decathlon's multi-modal volumes) is ``channels``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsam3.errors import InputError

_ITK_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_PICTURE_ENDINGS = (".png", ".jpg", ".jpeg")


@dataclass(frozen=True)
class ImageHeader:
    """Shape and geometry of an image file.

    Attributes:
        path: the file.
        shape: spatial shape in array order (``(y, x)`` or ``(z, y, x)``).
        spacing, origin: ITK order, mm (pictures: spacing 1, origin 0).
        direction: flattened direction cosines of the spatial axes.
        components: values per pixel (1 grey, 3 RGB).
        channels: length of a 4th (non-spatial) axis, 1 when there is none.
    """

    path: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    components: int = 1
    channels: int = 1

    @property
    def ndim(self) -> int:
        return len(self.shape)


def _ends_with(path: Path, endings) -> bool:
    name = path.name.lower()
    return any(name.endswith(e) for e in endings)


def _squeeze(size: list[int], spacing: list[float], origin: list[float], direction: np.ndarray):
    """Drop singleton spatial axes while more than 2 remain (as :func:`read_image` does)."""
    keep = list(range(len(size)))
    for axis in reversed(range(len(size))):
        if len(keep) > 2 and size[axis] == 1:
            keep.remove(axis)
    sub = direction[np.ix_(keep, keep)]
    return ([size[i] for i in keep], [spacing[i] for i in keep], [origin[i] for i in keep], sub)


def _itk_header(path: Path) -> ImageHeader:
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise InputError(f"cannot read the header of {path}: "
                         f"{first[-1] if first else 'not a readable image'}") from None
    size = list(reader.GetSize())
    nd = len(size)
    spacing = list(reader.GetSpacing())
    origin = list(reader.GetOrigin())
    direction = np.asarray(reader.GetDirection(), dtype=float).reshape(nd, nd)
    channels = 1
    if nd == 4:
        channels = size[3]
        size, spacing, origin, direction = size[:3], spacing[:3], origin[:3], direction[:3, :3]
    elif nd > 4:
        raise InputError(f"cannot use {path}: it holds {nd}D data of size {tuple(size)}")
    size, spacing, origin, direction = _squeeze(size, spacing, origin, direction)
    return ImageHeader(str(path), tuple(reversed(size)), tuple(spacing), tuple(origin),
                       tuple(direction.ravel()), reader.GetNumberOfComponents(), channels)


def _picture_header(path: Path) -> ImageHeader:
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as picture:
            width, height = picture.size
            bands = len(picture.getbands())
            mode = picture.mode
    except Exception as exc:  # PIL raises many kinds; the user needs one line
        raise InputError(f"cannot read {path}: not a readable picture ({type(exc).__name__}: {exc})") from None
    components = 1 if mode in ("P", "L", "LA", "I", "I;16", "F", "1") else min(bands, 3)
    return ImageHeader(str(path), (height, width), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0),
                       components, 1)


def read_header(path: str | os.PathLike) -> ImageHeader:
    """The shape and geometry of an image file, reading as little as possible.

    Raises:
        InputError: missing or unreadable file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read {path}: no such file")
    if _ends_with(path, _ITK_ENDINGS):
        return _itk_header(path)
    if _ends_with(path, _PICTURE_ENDINGS):
        return _picture_header(path)
    from medsam3.io import read_image

    image = read_image(path)
    return ImageHeader(str(path), image.shape, image.spacing, image.origin, image.direction,
                       3 if image.is_rgb else 1, 1)


def check_pair(image: ImageHeader, label: ImageHeader, geometry: bool = True,
               spacing_rtol: float = 1e-3, origin_atol: float = 1e-2,
               direction_atol: float = 1e-3) -> None:
    """Refuse a label that does not lie on its image's grid.

    Shapes must be equal; with ``geometry`` also spacing (relative tolerance), origin (mm)
    and direction cosines. 2D pictures carry no geometry, so only their shapes count.

    Raises:
        InputError: naming both files and the values that differ.
    """
    pair = f"image {image.path} and label {label.path}"
    if image.shape != label.shape:
        raise InputError(f"{pair} differ in shape: {image.shape} vs {label.shape} (array order); "
                         "a label map must lie on its image's grid")
    if not geometry:
        return
    if not np.allclose(image.spacing, label.spacing, rtol=spacing_rtol, atol=1e-6):
        raise InputError(f"{pair} differ in spacing: {_fmt(image.spacing)} vs {_fmt(label.spacing)} mm")
    if not np.allclose(image.origin, label.origin, atol=origin_atol, rtol=0):
        raise InputError(f"{pair} differ in origin: {_fmt(image.origin)} vs {_fmt(label.origin)} mm "
                         "(resample the label onto the image, or pass check_geometry=False / "
                         "--no-geometry-check if only the headers disagree)")
    if not np.allclose(image.direction, label.direction, atol=direction_atol, rtol=0):
        raise InputError(f"{pair} differ in direction: {_fmt(image.direction)} vs {_fmt(label.direction)}")


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"
