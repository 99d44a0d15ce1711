"""Moving images between SimpleITK and :class:`medsam3.Image`, geometry included.

SimpleITK already speaks the geometry convention :class:`~medsam3.Image` uses (index order
``x, y, z``; LPS millimetres; direction columns per index axis), so only the array axis
order flips: ``sitk.GetArrayFromImage`` gives ``[z, y, x]``.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medsam3.errors import InputError, MedSAM3Error
from medsam3.image import Image
from medsam3.io.formats import JPEG, NIFTI, PNG, SUPPORTED_INPUT_FORMATS, TIFF, ImageFormat
from medsam3.io.geometry import Grid, squeeze_singleton_axes
from medsam3.io.header_checks import check_text_header
from medsam3.io.limits import check_decoded_size
from medsam3.io.nifti import check_nifti_complete, nifti_non_finite_mask

# Formats whose 2- and 4-component pixels are grey+alpha and RGBA (alpha is dropped).
_PICTURE_FORMATS = (PNG, JPEG, TIFF)


def itk_error_text(exc: BaseException) -> str:
    """The informative line of a SimpleITK exception, without source paths and addresses."""
    text = str(exc)
    match = re.search(r"(?:ITK ERROR|sitk::ERROR):\s*(.*)", text, flags=re.S)
    if match:
        text = match.group(1)
    text = re.sub(r"\w+\s*\(0x[0-9a-fA-F]+\):\s*", "", text)
    # "Exception thrown in SimpleITK ...: /build/.../file.cxx:239:" says where in ITK, not why
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not re.search(r"\.(cxx|hxx|cpp|h):\d+", line)]
    return lines[0] if lines else type(exc).__name__


def _unreadable_reason(fmt: ImageFormat, exc: BaseException) -> str:
    """Why ITK could not open a file, in a user's words."""
    detail = itk_error_text(exc)
    if "Unable to determine ImageIO reader" in str(exc):
        return (f"not a readable {fmt.name} file: its content is not an image of any supported "
                "format (corrupt, or another kind of file renamed)")
    if detail == type(exc).__name__:
        return f"not a readable {fmt.name} file"
    return f"not a readable {fmt.name} file ({detail})"


def to_simpleitk(array: np.ndarray, spacing, origin, direction, is_vector: bool = False) -> sitk.Image:
    """A SimpleITK image holding ``array`` (numpy order) on the given grid."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=is_vector)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetOrigin(tuple(float(o) for o in origin))
    image.SetDirection(tuple(float(d) for d in direction))
    return image


def image_to_simpleitk(image: Image, array: np.ndarray | None = None) -> sitk.Image:
    """``image`` (or ``array`` on its grid) as a SimpleITK image, RGB as a 3-vector pixel."""
    data = image.array if array is None else array
    is_vector = array is None and image.is_rgb
    return to_simpleitk(data, image.spacing, image.origin, image.direction, is_vector=is_vector)


def warn_alpha_dropped(path: Path) -> None:
    """Say once per file that its transparency is not used."""
    warnings.warn(f"{path}: the alpha (transparency) channel is dropped; the grey or colour "
                  "values are read as they are", stacklevel=3)


def read_png_with_pil(path: Path, max_pixels: int | None = None) -> Image:
    """A grey+alpha PNG (which SimpleITK cannot read) through Pillow, alpha dropped.

    Raises:
        InputError: too large, or Pillow cannot read it either.
    """
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as picture:
            check_decoded_size(path, picture.size, len(picture.getbands()), max_pixels)
            if picture.mode not in ("LA", "La"):
                raise _fail(path, f"PNG colour mode {picture.mode} is not supported "
                                  "(grey, grey+alpha, RGB, RGBA and indexed colour are)")
            array = np.asarray(picture.getchannel("L"))
    except MedSAM3Error:
        raise
    except Exception as exc:
        raise _fail(path, f"the PNG file is corrupt or truncated ({' '.join(str(exc).split())})") from None
    warn_alpha_dropped(path)
    return Image(array=array, spacing=(1.0, 1.0), origin=(0.0, 0.0), direction=(1.0, 0.0, 0.0, 1.0),
                 modality=None, path=str(path), meta={"format": PNG.name, "rgb": False})


def _restore_nifti_nan(path: Path, array: np.ndarray, channel: int | None) -> np.ndarray:
    """``array`` with NaN where the NIfTI file holds NaN / inf (ITK read them as 0)."""
    mask = nifti_non_finite_mask(path, channel)
    if mask is None or mask.size != array.size:
        return array
    array = np.array(array, copy=True)
    array[mask.reshape(array.shape)] = np.nan
    return array


def _fail(path: Path, reason: str) -> InputError:
    return InputError(f"cannot read {path}: {reason}. Supported inputs: {SUPPORTED_INPUT_FORMATS}")


def read_with_simpleitk(path: Path, fmt: ImageFormat, channel: int | None = None,
                        max_pixels: int | None = None) -> Image:
    """Read a NIfTI / NRRD / MetaImage / PNG / JPEG file into a 2D, 3D or RGB :class:`Image`.

    Singleton axes are squeezed (a one-slice volume becomes 2D, a one-frame 4D file 3D);
    true 4D/5D data (unless ``channel`` picks one volume of a 4D file), colour volumes and
    other multi-component pixels are refused.

    The size the header announces is checked against ``max_pixels`` (see
    :mod:`medsam3.io.limits`) and the direction against shear before any pixel is decoded.
    Alpha (grey+alpha, RGBA pictures) is dropped with a warning.

    Raises:
        InputError: unreadable or corrupt file, too large, sheared, or data that is not a
            2D/3D/RGB image.
    """
    check_text_header(path, fmt)  # before ITK: MetaIO crashes on some malformed headers
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        if fmt is PNG and "Unknown PixelType" in str(exc):
            return read_png_with_pil(path, max_pixels)  # grey+alpha: ITK has no 2-sample type
        raise _fail(path, _unreadable_reason(fmt, exc)) from None
    size = reader.GetSize()
    components = reader.GetNumberOfComponents()
    kept = size[:3] if channel is not None else size
    check_decoded_size(path, kept, components, max_pixels,
                       what="voxels" if len([s for s in kept if s > 1]) > 2 else "pixels")
    if fmt is NIFTI:
        check_nifti_complete(path)
    if channel is not None:
        if len(size) != 4 or not 0 <= channel < size[3]:
            raise _fail(path, f"channel {channel} asked for, but the file's size is {tuple(size)} "
                              f"(x, y, z[, channels]); channels are 0..{size[3] - 1 if len(size) == 4 else 0}")
        reader.SetExtractIndex([0, 0, 0, int(channel)])
        reader.SetExtractSize([size[0], size[1], size[2], 0])  # size 0: that axis is dropped
    elif any(s > 1 for s in size[3:]):
        raise _fail(path, f"it holds {len(size)}D data of size {tuple(size)} (x, y, z, t, ...); "
                          "only 2D images and 3D volumes are supported - pick one with channel= "
                          "(Decathlon-style multi-sequence files) or extract one volume first")
    try:
        itk_image = reader.Execute()
    except RuntimeError as exc:
        raise _fail(path, f"the {fmt.name} file is corrupt or truncated ({itk_error_text(exc)})") from None

    array = sitk.GetArrayFromImage(itk_image)
    if fmt is NIFTI and array.dtype.kind == "f" and components == 1 and not array.all():
        array = _restore_nifti_nan(path, array, channel)
    ndim = itk_image.GetDimension()
    grid = Grid(
        spacing=np.array(itk_image.GetSpacing(), dtype=float),
        origin=np.array(itk_image.GetOrigin(), dtype=float),
        direction=np.array(itk_image.GetDirection(), dtype=float).reshape(ndim, ndim),
    )
    has_channels = components > 1
    array, grid = squeeze_singleton_axes(array, grid, has_channels=has_channels)
    spatial_ndim = len(grid.spacing)

    rgb = False
    if has_channels:
        if fmt in _PICTURE_FORMATS and components in (2, 4):
            # grey+alpha or RGBA: keep what is displayed, drop transparency
            array = array[..., 0] if components == 2 else array[..., :3]
            warn_alpha_dropped(path)
            components = 1 if components == 2 else 3
        if components == 3 and spatial_ndim == 2:
            rgb = True
        elif components > 1:
            kind = "a colour volume" if components == 3 else f"{components}-component pixels"
            raise _fail(path, f"it holds {kind} ({itk_image.GetPixelIDTypeAsString()}); "
                              "only grey 2D/3D images and 2D RGB images are supported")

    spacing, origin, direction = grid.as_tuples()
    return Image(
        array=array,
        spacing=spacing,
        origin=origin,
        direction=direction,
        modality="RGB" if rgb else None,
        path=str(path),
        meta={"format": fmt.name, "rgb": rgb},
    )
