"""Writing label maps and images on the reference grid, atomically, never over the input.

The format comes from the output file name (see :data:`SUPPORTED_OUTPUT_FORMATS`). PNG
and TIFF keep pixels and spacing only; NIfTI, NRRD and MetaImage also keep origin and
direction, so a label map lands exactly on the scan it was made from.

Label maps of DICOM inputs can also go back as DICOM (:data:`DICOM_LABEL_FORMATS`): a
``.dcm`` name means DICOM SEG (:mod:`medsam3.io.dicom_seg`); ``format="dicom-rt"`` gives
an RT Structure Set (:mod:`medsam3.io.rtstruct`), ``format="dicom-seg"`` a SEG under any name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from medsam3.errors import ArgumentError, MedSAM3Error
from medsam3.image import Image
from medsam3.io.atomic import atomic_file_set, atomic_output
from medsam3.io.dicom_derived import segments_to_write, source_series
from medsam3.io.dicom_seg import build_dicom_seg
from medsam3.io.formats import (
    PNG,
    SUPPORTED_OUTPUT_FORMATS,
    ImageFormat,
    output_format,
    strip_image_extension,
)
from medsam3.io.itk_bridge import image_to_simpleitk, itk_error_text
from medsam3.io.outputs import OutputPlan
from medsam3.io.rtstruct import build_rtstruct

# The pixel types a PNG file can hold; the other output formats take any integer or float type.
_PNG_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))

#: ``format=`` values of :func:`write_label_map` for DICOM outputs; a ``.dcm`` name alone means
#: ``"dicom-seg"``.
DICOM_LABEL_FORMATS = ("dicom-seg", "dicom-rt")
_DICOM_LABEL_WHAT = {"dicom-seg": "DICOM SEG", "dicom-rt": "an RT Structure Set"}


def sidecar_path(path: str | os.PathLike) -> Path:
    """The JSON file that goes with an output image: its image extension replaced by ``.json``.

    ``seg.nii.gz`` -> ``seg.json``, ``x.png`` -> ``x.json``, ``labels`` -> ``labels.json``.
    """
    stem = strip_image_extension(path)
    return stem.with_name(stem.name + ".json")


def _output_path(path: str | os.PathLike) -> tuple[Path, ImageFormat]:
    path = Path(os.path.expanduser(os.fspath(path)))
    fmt = output_format(path)
    if fmt is None:
        raise ArgumentError(f"cannot write {path}: unsupported output file type; "
                            f"use one of {SUPPORTED_OUTPUT_FORMATS}")
    if path.is_dir():
        raise ArgumentError(f"cannot write {path}: it is a directory; give a file name ending in "
                            f"one of {SUPPORTED_OUTPUT_FORMATS}")
    return path, fmt


def _check_outputs(path: Path, reference: Image, sidecar: bool) -> None:
    """Stop a write whose files (image, data file, sidecar) would touch a file of the image
    it was made from (see :class:`medsam3.io.outputs.OutputPlan`)."""
    plan = OutputPlan()
    plan.add_input(reference)
    plan.add_image(path, "label map")
    if sidecar:
        plan.add(sidecar_path(path), "sidecar")
    plan.check()


def _label_array(labels: np.ndarray, reference: Image, path: Path) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise ArgumentError(f"cannot write {path}: label map shape {labels.shape} does not match "
                            f"the reference image shape {reference.shape} ([z,] y, x)")
    if labels.dtype.kind not in "biu":
        raise ArgumentError(f"cannot write {path}: labels must be an integer or boolean array, "
                            f"got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ArgumentError(f"cannot write {path}: labels must be >= 0, got minimum {labels.min()}")
    max_label = int(labels.max()) if labels.size else 0
    if max_label > np.iinfo(np.uint16).max:
        raise ArgumentError(f"cannot write {path}: label {max_label} is larger than 65535, "
                            "the most a uint16 label map holds")
    return labels.astype(np.uint8 if max_label < 256 else np.uint16)


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArgumentError(f"could not write {path}: cannot create its directory "
                            f"({exc.strerror or exc})") from None


def _check_dims(path: Path, fmt: ImageFormat, ndim: int) -> None:
    if ndim > fmt.max_ndim:
        raise ArgumentError(f"cannot write {path}: {fmt.name} holds 2D images only, this is "
                            f"{ndim}D; use .nii.gz, .nrrd or .mha for volumes")


def _sidecar_text(sidecar: dict[str, Any], path: Path) -> str:
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, np.ndarray):
            return value.tolist()
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        raise TypeError(f"{type(value).__name__} is not JSON serialisable")

    try:
        return json.dumps(sidecar, indent=2, default=plain, allow_nan=False) + "\n"
    except (TypeError, ValueError) as exc:
        raise ArgumentError(f"cannot write sidecar {sidecar_path(path)}: {exc}") from None


def _as_simpleitk(image: Image, path: Path, array: np.ndarray | None = None) -> sitk.Image:
    """``image`` (or ``array`` on its grid) for SimpleITK; refusals become ArgumentError."""
    try:
        return image_to_simpleitk(image, array)
    except (RuntimeError, TypeError, ValueError) as exc:
        pixels = image.array if array is None else array
        raise ArgumentError(f"cannot write {path}: SimpleITK cannot hold this image ({pixels.dtype}, "
                            f"shape {pixels.shape}): {itk_error_text(exc)}") from None


def _write_sitk(itk_image: sitk.Image, path: Path, fmt: ImageFormat,
                sidecar_text: str | None = None) -> None:
    """Write one SimpleITK image (and the sidecar JSON, if any) atomically."""
    try:
        with ExitStack() as stack:
            writing = atomic_file_set(path) if fmt.several_files else atomic_output(path)
            tmp_image = stack.enter_context(writing)
            tmp_sidecar = stack.enter_context(atomic_output(sidecar_path(path))) if sidecar_text else None
            sitk.WriteImage(itk_image, str(tmp_image), True)
            if tmp_sidecar is not None:
                tmp_sidecar.write_text(sidecar_text, encoding="utf-8")
    except MedSAM3Error:
        raise
    except RuntimeError as exc:
        raise ArgumentError(f"could not write {path}: {itk_error_text(exc)}") from None
    except OSError as exc:
        raise ArgumentError(f"could not write {path}: {exc.strerror or exc}") from None


def dicom_label_format(path: str | os.PathLike, format: str | None = None) -> str | None:
    """``"dicom-seg"`` / ``"dicom-rt"`` when ``path`` / ``format`` ask for DICOM, else ``None``.

    The rule of :func:`write_label_map`: ``format`` wins; without it a ``.dcm`` name means
    ``"dicom-seg"``. Cheap, so callers can check an output before the work that makes it.

    Raises:
        ArgumentError: an unknown ``format``, or a DICOM format for a name ending like
            another format (``seg.nii.gz``).
    """
    if format is None:
        return "dicom-seg" if os.fspath(path).lower().endswith(".dcm") else None
    name = str(format).strip().lower()
    if name not in DICOM_LABEL_FORMATS:
        raise ArgumentError(f"cannot write {path}: unknown format {format!r}; use one of "
                            f"{', '.join(DICOM_LABEL_FORMATS)}, or leave it out to choose by file name")
    fmt = output_format(path)
    if fmt is not None:
        raise ArgumentError(f"cannot write {path} as {name}: the name ends like a {fmt.name} file; "
                            "use a .dcm name (or none)")
    return name


def _write_dicom_label_map(array: np.ndarray, series, path: Path, dicom_format: str,
                           sidecar: dict[str, Any] | None, sidecar_text: str | None,
                           names: dict | None, model_id: str | None, colors: dict | None) -> None:
    """Build the DICOM SEG / RTSTRUCT on the source ``series`` and write it (and the sidecar)
    atomically."""
    what = _DICOM_LABEL_WHAT[dicom_format]
    if names is None:
        names = dict((sidecar or {}).get("labels") or {})
    if model_id is None:
        model_id = str((sidecar or {}).get("model") or "unknown")
    segments = segments_to_write(array, names, colors, path)
    try:
        if dicom_format == "dicom-seg":
            dataset = build_dicom_seg(array, series, segments, model_id)
        else:
            dataset = build_rtstruct(array, series, segments, model_id, path)
    except MedSAM3Error:
        raise
    except Exception as exc:  # highdicom / pydicom refusals: one clear line
        raise ArgumentError(f"cannot write {path} as {what}: {type(exc).__name__}: "
                            f"{' '.join(str(exc).split())}") from None
    try:
        with ExitStack() as stack:
            tmp = stack.enter_context(atomic_output(path))
            tmp_sidecar = stack.enter_context(atomic_output(sidecar_path(path))) if sidecar_text else None
            dataset.save_as(tmp, enforce_file_format=True)
            if tmp_sidecar is not None:
                tmp_sidecar.write_text(sidecar_text, encoding="utf-8")
    except OSError as exc:
        raise ArgumentError(f"could not write {path}: {exc.strerror or exc}") from None


def write_label_map(labels: np.ndarray, reference: Image, path: str | os.PathLike,
                    sidecar: dict[str, Any] | None = None, overwrite: bool = True, *,
                    format: str | None = None, names: dict[int, str] | None = None,
                    model_id: str | None = None, colors: dict[int, tuple[int, int, int]] | None = None) -> Path:
    """Write an integer label map on exactly the reference image's grid.

    Args:
        labels: ``reference.shape`` integer or boolean array, 0 = background.
        reference: the image the labels belong to; its spacing, origin and direction are
            written (PNG/TIFF keep spacing only). 2D references give 2D files.
        path: output file; the format comes from its ending
            (see :data:`SUPPORTED_OUTPUT_FORMATS`); ``.dcm`` means DICOM SEG.
            Missing parent directories are created.
        sidecar: facts to store as JSON beside it (``seg.nii.gz`` -> ``seg.json``).
        overwrite: replace an existing output file.
        format: ``"dicom-seg"`` or ``"dicom-rt"`` (RT Structure Set) to write DICOM whatever
            the name (which must not end like another format); ``None``: by file name.
        names, model_id, colors: DICOM outputs only: ``{label: name}`` (default: the
            sidecar's ``"labels"``), the model id stored as the algorithm (default: the
            sidecar's ``"model"``), ``{label: (r, g, b)}`` (default: the overlay colours).
            DICOM outputs need a ``reference`` read from DICOM (see
            :func:`write_dicom_seg`).

    Returns:
        The path written. The file is ``uint8`` when the largest label is < 256, else
        ``uint16``. Image and sidecar appear atomically; after a failure neither is left.

    Raises:
        ArgumentError: wrong shape or type of ``labels``, unsupported extension, a 3D map
            to PNG, ``path`` is (or is inside) the reference input, the file exists and
            ``overwrite`` is False, or the file system refused the write; for DICOM, a
            reference not read from DICOM.
    """
    dicom_format = dicom_label_format(path, format)
    if dicom_format is None:
        path, fmt = _output_path(path)
    else:
        path = Path(os.path.expanduser(os.fspath(path)))
        if path.is_dir():
            raise ArgumentError(f"cannot write {path}: it is a directory; give a file name such as seg.dcm")
    array = _label_array(labels, reference, path)
    if dicom_format is None:
        _check_dims(path, fmt, reference.ndim)
    _check_outputs(path, reference, sidecar is not None)
    if not overwrite:
        for existing in (path, sidecar_path(path) if sidecar is not None else None):
            if existing is not None and existing.exists():
                raise ArgumentError(f"refusing to write {existing}: it exists (allow overwriting "
                                    "to replace it)")
    text = _sidecar_text(sidecar, path) if sidecar is not None else None
    if dicom_format is not None:
        series = source_series(reference, path, _DICOM_LABEL_WHAT[dicom_format])
    _make_parent(path)
    if dicom_format is not None:
        _write_dicom_label_map(array, series, path, dicom_format, sidecar, text, names, model_id, colors)
        return path
    _write_sitk(_as_simpleitk(reference, path, array), path, fmt, text)
    return path


def write_dicom_seg(labels: np.ndarray, reference: Image, path: str | os.PathLike,
                    names: Mapping[int, str] | None, *, model_id: str,
                    colors: Mapping[int, Sequence[int]] | None = None, overwrite: bool = True) -> Path:
    """Write a label map as a DICOM Segmentation of the series ``reference`` was read from.

    Args:
        labels: ``reference.shape`` integer array, 0 = background, label k = segment "names[k]".
        reference: the image as :func:`medsam3.io.read_image` returned it for a DICOM series or
            file; its source files are re-read (headers only) and must still exist.
        path: the ``.dcm`` file to write (atomically; parent directories are created).
        names: ``{label value: name}``; every named label becomes a segment, even an empty one;
            unnamed labels present in ``labels`` are called "label K".
        model_id: the model that made the labels (stored with medsam3's name and version as
            the segmentation algorithm).
        colors: ``{label value: (r, g, b)}`` 0-255; default :func:`medsam3.palette.label_colors`.
        overwrite: replace an existing file.

    Returns:
        The path written. Segment numbers are 1..n in increasing label value, so label maps
        whose labels are 1..n (as :func:`medsam3.segment` writes) read back unchanged.

    Raises:
        ArgumentError: ``reference`` was not read from DICOM (the SEG needs the source UIDs
            and per-slice positions), wrong labels, or the file cannot be written.
    """
    return write_label_map(labels, reference, path, overwrite=overwrite, format="dicom-seg",
                           names=dict(names or {}), model_id=model_id, colors=colors)


def write_rtstruct(labels: np.ndarray, reference: Image, path: str | os.PathLike,
                   names: Mapping[int, str] | None, *, model_id: str,
                   colors: Mapping[int, Sequence[int]] | None = None, overwrite: bool = True) -> Path:
    """Write a label map as an RT Structure Set on the series ``reference`` was read from.

    Args and errors as :func:`write_dicom_seg`; the ROI numbers are
    the label values. The source series needs patient positions (ImagePositionPatient /
    ImageOrientationPatient) and a Frame of Reference, as every RT structure set does.
    """
    return write_label_map(labels, reference, path, overwrite=overwrite, format="dicom-rt",
                           names=dict(names or {}), model_id=model_id, colors=colors)


def write_image(image: Image, path: str | os.PathLike, overwrite: bool = True) -> Path:
    """Write ``image`` (grey 2D/3D or RGB 2D) with its geometry, atomically.

    The format comes from the ending of ``path`` (see :data:`SUPPORTED_OUTPUT_FORMATS`);
    PNG takes 2D ``uint8`` / ``uint16`` images only.

    Raises:
        ArgumentError: unsupported extension, a volume or other pixel type to PNG, the
            file exists and ``overwrite`` is False, or the file system refused the write.
    """
    path, fmt = _output_path(path)
    _check_dims(path, fmt, image.ndim)
    if fmt is PNG and image.array.dtype not in _PNG_DTYPES:
        raise ArgumentError(f"cannot write {path}: PNG holds uint8 or uint16 pixels, this image is "
                            f"{image.array.dtype}; use .nii.gz, .nrrd, .mha or .tif")
    if not overwrite and path.exists():
        raise ArgumentError(f"refusing to write {path}: it exists (allow overwriting to replace it)")
    _make_parent(path)
    _write_sitk(_as_simpleitk(image, path), path, fmt)
    return path
