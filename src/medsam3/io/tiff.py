"""TIFF files: SimpleITK (libtiff) first, tifffile for the layouts libtiff's ITK reader refuses.

ITK reads the common TIFFs, LZW and JPEG compressed included (tifffile alone would need
``imagecodecs`` for those), but not planar-configured colour or some multi-page layouts;
tifffile reads those. Both report spacing the ITK way: from the resolution tags, pixels
per inch or per centimetre converted to millimetres, 1 mm without a unit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam3.errors import InputError
from medsam3.image import Image
from medsam3.io.formats import SUPPORTED_INPUT_FORMATS, TIFF
from medsam3.io.geometry import Grid, squeeze_singleton_axes
from medsam3.io.itk_bridge import read_with_simpleitk, warn_alpha_dropped
from medsam3.io.limits import check_decoded_size

_MM_PER_UNIT = {2: 25.4, 3: 10.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
# TIFF Photometric values: 0/1 white/black is zero (grey), 2 RGB, 6 YCbCr (JPEG colour)
_GREY_PHOTOMETRIC = (0, 1)
_COLOUR_PHOTOMETRIC = (2, 6)
_PHOTOMETRIC_NAMES = {0: "grey", 1: "grey", 2: "RGB", 3: "palette", 4: "mask", 5: "CMYK", 6: "YCbCr",
                      8: "CIELab"}
# ExtraSamples: 1 associated alpha, 2 unassociated alpha (0 = unspecified: not alpha)
_ALPHA_EXTRASAMPLES = (1, 2)


def _spacing_from_resolution(page) -> tuple[float, float]:
    tags = page.tags
    unit = tags.get("ResolutionUnit")
    mm = _MM_PER_UNIT.get(int(unit.value) if unit is not None else 1)
    spacing = []
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name)
        if mm is None or tag is None:
            spacing.append(1.0)
            continue
        numerator, denominator = tag.value
        pixels_per_unit = numerator / denominator if denominator else 0.0
        spacing.append(mm / pixels_per_unit if pixels_per_unit > 0 else 1.0)
    return spacing[0], spacing[1]


def _check_layout(path: Path, max_pixels: int | None) -> int | None:
    """Refuse, from the TIFF tags alone, sample layouts we would misread and oversized files.

    ITK reads the first sample of a 2- or 5-sample pixel (or interleaves them) as grey without
    a word, so the samples per pixel are checked here: 1 (grey or palette), 3 (RGB), or an
    alpha channel (grey+alpha, RGBA) that is dropped. Unparseable files are left to the
    readers, which report them.

    Returns:
        The samples per pixel, ``None`` when tifffile cannot parse the file.
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            page = tif.pages.first
            samples = int(page.samplesperpixel)
            photometric = int(page.photometric)
            extras = [int(e) for e in (page.extrasamples or ())]
            shape = tuple(int(d) for d in tif.series[0].shape)
    except Exception:
        return None
    check_decoded_size(path, shape, 1, max_pixels, what="values")
    colour = samples - len(extras)
    alpha_only = all(e in _ALPHA_EXTRASAMPLES for e in extras) and len(extras) <= 1
    ok = ((samples == 1)
          or (samples == 3 and photometric in _COLOUR_PHOTOMETRIC)
          or (samples == 4 and photometric in _COLOUR_PHOTOMETRIC and colour == 3 and alpha_only)
          or (samples == 2 and photometric in _GREY_PHOTOMETRIC and colour == 1 and alpha_only))
    if not ok:
        kind = _PHOTOMETRIC_NAMES.get(photometric, f"photometric {photometric}")
        raise InputError(
            f"cannot read {path}: the TIFF has {samples} samples per pixel ({kind}"
            + (f", {len(extras)} extra sample(s) not marked as alpha" if extras and not alpha_only else "")
            + "); medsam3 reads grey (1 sample), RGB (3) and grey+alpha / RGBA (alpha dropped): "
            "save each channel as its own grey file"
        )
    return samples


def _read_with_tifffile(path: Path) -> Image:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        array = series.asarray()
        axes = series.axes
        page = tif.pages[0]
        spacing_xy = _spacing_from_resolution(page)
    if "S" in axes:  # colour samples last
        array = np.moveaxis(array, axes.index("S"), -1)
        axes = axes.replace("S", "") + "S"
    stack_axes = [i for i, a in enumerate(axes) if a not in "YXS" and array.shape[i] > 1]
    if len(stack_axes) > 1:
        raise InputError(f"cannot read {path}: the TIFF holds {axes} data of shape {array.shape} "
                         "(more than one stack axis); only 2D images and 3D volumes are supported")
    singleton = tuple(i for i, a in enumerate(axes) if a not in "YXS" and array.shape[i] == 1)
    array = np.squeeze(array, axis=singleton)
    components = array.shape[-1] if axes.endswith("S") else 1
    has_channels = components > 1
    if components in (2, 4):
        array = array[..., 0] if components == 2 else array[..., :3]
        components = 1 if components == 2 else 3
        has_channels = components > 1
        warn_alpha_dropped(path)
    spatial_ndim = array.ndim - (1 if has_channels else 0)
    if has_channels and (components != 3 or spatial_ndim != 2):
        raise InputError(f"cannot read {path}: the TIFF holds {components}-component pixels in "
                         f"{spatial_ndim}D; only grey 2D/3D images and 2D RGB images are supported")
    spacing = list(spacing_xy) + [1.0] * (spatial_ndim - 2)
    grid = Grid(np.array(spacing), np.zeros(spatial_ndim), np.eye(spatial_ndim))
    array, grid = squeeze_singleton_axes(array, grid, has_channels=has_channels)
    spacing_t, origin, direction = grid.as_tuples()
    rgb = components == 3
    return Image(array=array, spacing=spacing_t, origin=origin, direction=direction,
                 modality="RGB" if rgb else None, path=str(path),
                 meta={"format": TIFF.name, "rgb": rgb})


def read_tiff(path: Path, max_pixels: int | None = None) -> Image:
    """A TIFF file as a 2D image, an RGB image, or a 3D volume (one page per slice).

    Raises:
        InputError: neither reader can read it, it is over the size limit, its pixels have
            channels other than grey / RGB / alpha, or it is not a 2D/3D/RGB image.
    """
    if _check_layout(path, max_pixels) == 2:
        return _read_with_tifffile(path)  # ITK reads grey+alpha samples interleaved as grey
    try:
        return read_with_simpleitk(path, TIFF, max_pixels=max_pixels)
    except InputError as itk_error:
        try:
            return _read_with_tifffile(path)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(
                f"cannot read {path}: not a readable TIFF file ({exc}). "
                f"Supported inputs: {SUPPORTED_INPUT_FORMATS}"
            ) from itk_error
