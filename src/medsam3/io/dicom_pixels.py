"""DICOM pixel data to meaningful values: decode, colour to RGB, rescale to HU, MONOCHROME1.

Decoding goes through pydicom, which hands compressed transfer syntaxes (JPEG, JPEG-LS,
JPEG 2000, RLE) to the pylibjpeg plugins and converts YBR colour to RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import apply_color_lut, apply_modality_lut

from medsam3.errors import InputError


@dataclass
class PixelValues:
    """Decoded frames and how they relate to the stored values.

    Attributes:
        frames: ``[frame, row, column]`` (grey) or ``[frame, row, column, 3]`` (RGB).
        rgb: colour pixels.
        inverted: MONOCHROME1 data was flipped so that high values are bright; window
            centres must be mirrored with ``mirror - centre``.
        mirror: ``min + max`` of the value range used for the flip (0 when not inverted).
    """

    frames: np.ndarray
    rgb: bool
    inverted: bool = False
    mirror: float = 0.0


def number_of_frames(ds: Dataset) -> int:
    """(0028,0008) Number of Frames, 1 when absent or malformed."""
    try:
        return max(int(ds.get("NumberOfFrames", 1) or 1), 1)
    except (TypeError, ValueError):
        return 1


def functional_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of functional group ``sequence`` that applies to ``frame`` (enhanced objects).

    Per-frame groups override shared ones; ``None`` when neither has it.
    """
    for container, index in (("PerFrameFunctionalGroupsSequence", frame),
                             ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(container)
        if groups and len(groups) > index:
            seq = groups[index].get(sequence)
            if seq:
                return seq[0]
    return None


def rescale_of_frame(ds: Dataset, frame: int) -> tuple[float, float]:
    """``(slope, intercept)`` for ``frame``: functional groups first, then the top level."""
    item = functional_group(ds, frame, "PixelValueTransformationSequence")
    source = item if item is not None and "RescaleSlope" in item else ds
    slope = source.get("RescaleSlope")
    intercept = source.get("RescaleIntercept")
    return (float(slope) if slope not in (None, "") else 1.0,
            float(intercept) if intercept not in (None, "") else 0.0)


def _smallest_int_dtype(low: float, high: float, preferred: np.dtype) -> np.dtype:
    """The stored dtype when the values still fit it, else the narrowest signed type that does."""
    for dtype in (np.dtype(preferred), np.dtype(np.int16), np.dtype(np.int32)):
        if dtype.kind in "iu":
            info = np.iinfo(dtype)
            if info.min <= low and high <= info.max:
                return dtype
    return np.dtype(np.int64)


def _stored_range(ds: Dataset) -> tuple[int, int]:
    """Smallest and largest value the stored pixels can take (BitsStored, PixelRepresentation)."""
    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 16)
    if int(ds.get("PixelRepresentation") or 0) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def decode_pixels(ds: Dataset, path: Path) -> PixelValues:
    """Decode all frames of ``ds`` into modality values (HU for CT) or RGB.

    * colour (RGB, YBR_*, PALETTE COLOR) becomes 8-bit RGB when it was 8-bit or palette;
    * grey values get the Modality LUT or Rescale Slope/Intercept (per frame for enhanced
      objects): integers stay integers when slope is 1 and the intercept whole, else float32;
    * MONOCHROME1 is flipped within its value range so that high values are bright.

    Raises:
        InputError: the pixel data cannot be decoded (corrupt, truncated, unknown codec).
    """
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises ValueError, RuntimeError, NotImplementedError...
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = f" ({syntax.name})" if syntax is not None else ""
        raise InputError(
            f"cannot decode the pixel data of DICOM file {path}{syntax_name}: "
            + " ".join(str(exc).split())  # plugin reports span lines; errors are one line
        ) from None

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel") or 1)

    if photometric == "PALETTE COLOR":
        # pydicom returns 16-bit RGB from the LUT; palettes describe 8-bit display colours
        stored = (apply_color_lut(stored, ds) >> 8).astype(np.uint8)
        samples = 3
    rgb = samples == 3
    if stored.ndim == (3 if rgb else 2):  # single frame: give it the frame axis
        stored = stored[np.newaxis]
    if rgb:
        return PixelValues(frames=stored, rgb=True)

    if ds.get("ModalityLUTSequence"):
        values = np.stack([apply_modality_lut(frame, ds) for frame in stored])
        low, high = 0, int(values.max()) if values.size else 0
    else:
        params = [rescale_of_frame(ds, i) for i in range(stored.shape[0])]
        slopes = np.array([p[0] for p in params])
        intercepts = np.array([p[1] for p in params])
        shape = (-1,) + (1,) * (stored.ndim - 1)
        range_low, range_high = _stored_range(ds)
        low = float(np.min(range_low * slopes + intercepts))
        high = float(np.max(range_high * slopes + intercepts))
        if np.all(slopes == 1) and np.all(intercepts == np.round(intercepts)):
            if np.all(intercepts == 0):
                values = stored
            else:
                wide = stored.astype(np.int64) + intercepts.astype(np.int64).reshape(shape)
                values = wide.astype(_smallest_int_dtype(wide.min(), wide.max(), stored.dtype))
        else:
            values = (stored.astype(np.float64) * slopes.reshape(shape)
                      + intercepts.reshape(shape)).astype(np.float32)

    if photometric != "MONOCHROME1":
        return PixelValues(frames=values, rgb=False)
    mirror = low + high
    if values.dtype.kind in "iu":
        flipped = int(mirror) - values.astype(np.int64)
        values = flipped.astype(_smallest_int_dtype(flipped.min(), flipped.max(), values.dtype))
    else:
        values = (mirror - values).astype(values.dtype)
    return PixelValues(frames=values, rgb=False, inverted=True, mirror=float(mirror))
