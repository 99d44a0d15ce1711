"""Modality-aware intensity normalisation: raw pixel values -> float32 in ``[0, 1]``.

The same function serves training, evaluation, prediction and the overlay pictures, so a
model always sees one intensity scale for one kind of image:

* **CT** is windowed in Hounsfield units. A window is ``(level, width)``; values are
  clipped to ``[level - width/2, level + width/2]`` and scaled linearly, so the lower edge
  maps to 0, the upper edge to 1 and the level to 0.5. Without a window the fixed
  :data:`CT_DEFAULT_WINDOW` (soft tissue, L=40/W=400) is used; see
  :func:`normalize_intensity` for why.
* **MR, PT, OTHER and unknown** grey images: robust percentiles, 0.5 -> 0 and 99.5 -> 1,
  of the non-zero voxels of the *whole* image (never per slice, so the slices of a volume
  share one scale).
* **XR, US**: min-max of the values actually present.
* **RGB**: divided by the maximum of the pixel type (255 for uint8), i.e. passed through.
"""

from __future__ import annotations

import math

import numpy as np

from medsam3.errors import ArgumentError
from medsam3.image import MODALITIES, Image

#: Standard radiology CT windows as ``(level, width)`` in HU.
CT_WINDOWS: dict[str, tuple[float, float]] = {
    "soft-tissue": (40.0, 400.0),
    "abdomen": (50.0, 400.0),
    "liver": (30.0, 150.0),
    "mediastinum": (50.0, 350.0),
    "lung": (-600.0, 1500.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}

#: The window used for CT when none is asked for (a key of :data:`CT_WINDOWS`).
CT_DEFAULT_WINDOW = "soft-tissue"

#: Percentiles of the non-zero voxels mapped to 0 and 1 for MR, PT and unknown grey images.
ROBUST_PERCENTILES = (0.5, 99.5)


def _window_help() -> str:
    return (
        f"expected a preset ({', '.join(CT_WINDOWS)}) or 'level,width' in HU "
        "such as '40,400' or '-600,1500', with width > 0"
    )


def parse_window(value: str | tuple | list | None) -> tuple[float, float] | None:
    """Turn a window given by name or numbers into ``(level, width)``.

    Args:
        value: ``None`` (no window), a preset name from :data:`CT_WINDOWS`
            (case-insensitive; ``_`` or a space may stand for ``-``: ``"Soft_Tissue"``),
            a string ``"level,width"`` such as ``"40,400"`` or ``"-600,1500"``, or a pair
            of numbers ``(level, width)``.

    Returns:
        ``(level, width)`` as floats, or ``None`` when ``value`` is ``None``.

    Raises:
        ArgumentError: unknown preset, malformed numbers, non-finite values or width <= 0.
    """
    if value is None:
        return None
    if isinstance(value, str):
        key = value.strip().lower().replace("_", "-").replace(" ", "-")
        if key in CT_WINDOWS:
            return CT_WINDOWS[key]
        parts = value.split(",")
        if len(parts) != 2:
            raise ArgumentError(f"invalid window {value!r}: {_window_help()}")
        try:
            level, width = float(parts[0]), float(parts[1])
        except ValueError:
            raise ArgumentError(f"invalid window {value!r}: {_window_help()}") from None
    else:
        try:
            level, width = (float(v) for v in value)
        except (TypeError, ValueError):
            raise ArgumentError(f"invalid window {value!r}: {_window_help()}") from None
    if not (math.isfinite(level) and math.isfinite(width)) or width <= 0:
        raise ArgumentError(f"invalid window {value!r}: {_window_help()}")
    return level, width


def _resolve_modality(image: Image, modality: str | None) -> str | None:
    """The modality to use, upper-cased: the argument wins over ``image.modality``."""
    chosen = modality if modality is not None else image.modality
    if chosen is None:
        return None
    canonical = str(chosen).strip().upper()
    if canonical not in MODALITIES:
        source = "modality argument" if modality is not None else f"modality of {image.path or 'the image'}"
        raise ArgumentError(
            f"unknown {source} {chosen!r}: expected one of {', '.join(MODALITIES)} "
            "(or none for an unknown grey image)"
        )
    return canonical


def _scale(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map ``lo`` -> 0 and ``hi`` -> 1 linearly, clip; zeros when ``hi <= lo``."""
    if not hi > lo:
        return np.zeros(values.shape, dtype=np.float32)
    out = (values.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def _finite(values: np.ndarray) -> np.ndarray:
    return values if np.issubdtype(values.dtype, np.integer) else values[np.isfinite(values)]


def _robust_range(values: np.ndarray) -> tuple[float, float]:
    """0.5/99.5 percentiles of the finite non-zero values; min-max if those coincide."""
    finite = _finite(values.ravel())
    nonzero = finite[finite != 0]
    if nonzero.size == 0:
        return 0.0, 0.0
    lo, hi = np.percentile(nonzero, ROBUST_PERCENTILES)
    if hi <= lo:  # e.g. a two-level image (0 and one value): fall back to the full range
        lo, hi = finite.min(), finite.max()
    return float(lo), float(hi)


def _full_range(values: np.ndarray) -> tuple[float, float]:
    finite = _finite(values.ravel())
    if finite.size == 0:
        return 0.0, 0.0
    return float(finite.min()), float(finite.max())


def _type_max(values: np.ndarray) -> float:
    """Full scale of the pixel type: dtype max for integers, 1 or 255 for floats."""
    if values.dtype == bool:
        return 1.0
    if np.issubdtype(values.dtype, np.integer):
        return float(np.iinfo(values.dtype).max)
    finite = _finite(values.ravel())
    return 1.0 if finite.size == 0 or finite.max() <= 1.0 else 255.0


def normalize_intensity(image: Image, modality: str | None = None, window=None) -> np.ndarray:
    """Intensities of ``image`` as float32 in ``[0, 1]``, chosen by modality.

    Args:
        image: a grey 2D/3D image or a 2D RGB(A) image.
        modality: one of :data:`medsam3.image.MODALITIES` (case-insensitive); when given
            it wins over ``image.modality``. ``None`` and ``image.modality is None`` means
            an unknown grey image.
        window: a CT window as accepted by :func:`parse_window` (preset name, ``"L,W"``
            or ``(level, width)``). It is applied to the raw pixel values whatever the
            modality: on a non-CT image the user asked for it, so it is honoured in that
            image's own units (on RGB, to each channel).

    Returns:
        float32 array in ``[0, 1]``: the image's spatial shape (``[y, x]`` or
        ``[z, y, x]``) for grey images, ``[y, x, 3]`` for RGB (an alpha channel is dropped).
        Constant images (and non-finite pixels) give zeros, never NaN.

    Rules:
        * a window given: clip to ``[L - W/2, L + W/2]`` and scale to ``[0, 1]``.
        * CT without a window: the fixed soft-tissue window L=40/W=400 HU
          (:data:`CT_DEFAULT_WINDOW`; -160 HU -> 0, 240 HU -> 1). A fixed window keeps the
          HU calibration, so the same tissue gets the same value in every scan, which is
          what a segmentation model needs; percentiles would shift with the field of view
          and the amount of air or metal, and the DICOM WindowCenter/Width is a display
          choice that differs between series (a lung-kernel series carries a lung window)
          and is therefore not used. Soft tissue is where most targets lie; lung
          parenchyma goes to 0 and cortical bone to 1, which keeps both outlined. It is
          also the CT window of the MedSAM family. Pass ``window="lung"``/``"bone"`` for
          targets inside those ranges.
        * MR, PT, OTHER, unknown grey: the 0.5 and 99.5 percentiles of the finite non-zero
          voxels of the whole image (one scale for all slices of a volume) map to 0 and 1,
          with clipping; the zero background stays 0 for non-negative data. When the two
          percentiles coincide (e.g. a two-level image) the full min-max range is used.
        * XR, US: min-max of the values present (0th to 100th percentile): detectors and
          scanners use only part of the 12/16-bit container, so dividing by the type's
          maximum would give a dark image, while min-max keeps every value unclipped.
          An inverted MONOCHROME1 image must be flipped by the reader, not here.
        * RGB images (or modality ``"RGB"``): divided by the pixel type's maximum (255 for
          uint8, 65535 for uint16; float images already in ``[0, 1]`` are kept, other
          floats are divided by 255), then clipped.

    Raises:
        ArgumentError: unknown modality or invalid window.
    """
    chosen = _resolve_modality(image, modality)
    level_width = parse_window(window)
    array = image.array
    if image.is_rgb:
        array = array[..., :3]

    if level_width is not None:
        level, width = level_width
        out = _scale(array, level - width / 2.0, level + width / 2.0)
    elif image.is_rgb or chosen == "RGB":
        out = _scale(array, 0.0, _type_max(array))
    elif chosen == "CT":
        level, width = CT_WINDOWS[CT_DEFAULT_WINDOW]
        out = _scale(array, level - width / 2.0, level + width / 2.0)
    elif chosen in ("XR", "US"):
        out = _scale(array, *_full_range(array))
    else:  # MR, PT, OTHER, unknown
        out = _scale(array, *_robust_range(array))
    # NaN pixels survive the arithmetic and the clip; they carry no intensity.
    return np.nan_to_num(out, nan=0.0, posinf=1.0, neginf=0.0).astype(np.float32, copy=False)


def context_offset(context_mm: float, slice_spacing: float) -> int:
    """Slices between a plane and each of its two context neighbours (2.5D input): the
    nearest whole number of slices to ``context_mm`` millimetres, at least 1; 0 when
    ``context_mm`` is 0 (plain 2D input)."""
    if not context_mm:
        return 0
    if not slice_spacing or slice_spacing <= 0 or not math.isfinite(slice_spacing):
        raise ArgumentError(f"slice spacing must be a positive number of mm, got {slice_spacing}")
    return max(1, round(float(context_mm) / float(slice_spacing)))


def context_planes(stack: np.ndarray, index: int, offset: int, swap: bool = False) -> np.ndarray:
    """Plane ``index`` of a ``[slice, row, column]`` stack as the model's 2.5D input.

    ``offset`` 0: the plane itself ``(rows, columns)`` (grey; the model repeats it on its
    three channels). Otherwise ``(rows, columns, 3)``: the planes ``offset`` slices before
    it, the plane, and ``offset`` slices after it on the red, green and blue channels (the
    first and last planes of the stack stand in for neighbours beyond the ends).
    ``swap`` exchanges the two neighbours (training draws both orders, so a model does not
    depend on which way a file stores its slices)."""
    if not offset:
        return stack[index]
    last = stack.shape[0] - 1
    before, after = stack[max(index - offset, 0)], stack[min(index + offset, last)]
    if swap:
        before, after = after, before
    return np.stack([before, stack[index], after], axis=-1)
