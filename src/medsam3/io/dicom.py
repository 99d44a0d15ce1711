"""DICOM files and series directories to :class:`medsam3.Image`, via pydicom.

One path for every DICOM input: a single-frame file is a stack of one slice, an enhanced
multi-frame file is a stack of its frames, a series directory is a stack of its files.
Each stack is sorted along the slice normal and given ITK geometry (the same spacing,
origin and direction SimpleITK's series reader reports), then squeezed to 2D when it has
one slice. The full 3D position of a single slice stays in ``meta["dicom"]``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from medsam3.errors import ArgumentError, InputError
from medsam3.image import Image
from medsam3.io.dicom_pixels import PixelValues, decode_pixels, functional_group, number_of_frames
from medsam3.io.formats import DICOM, SUPPORTED_INPUT_FORMATS, looks_like_dicom
from medsam3.io.geometry import SlicePlane, direction_from_orientation, squeeze_singleton_axes, stack_slices
from medsam3.io.limits import check_decoded_size

#: DICOM (0008,0060) Modality -> medsam3 modality.
MODALITY_FROM_DICOM = {
    "CT": "CT",
    "MR": "MR",
    "PT": "PT",
    "CR": "XR", "DX": "XR", "MG": "XR", "XA": "XR", "RF": "XR", "DR": "XR",
    "US": "US",
}

# Objects that carry no image to segment, even when some of them hold pixel data.
_NON_IMAGE_MODALITIES = {
    "SEG", "RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SR", "KO", "PR", "REG", "DOC",
    "ECG", "HD", "AU", "PLAN", "RWV", "FID",
}

# Longest list of series shown in an error message.
_MAX_LISTED_SERIES = 20


def map_modality(dicom_modality: str | None, rgb: bool) -> str | None:
    """medsam3 modality for a DICOM Modality value; colour secondary captures are "RGB"."""
    code = (dicom_modality or "").strip().upper()
    if code in MODALITY_FROM_DICOM:
        return MODALITY_FROM_DICOM[code]
    return "RGB" if rgb else None


# Elements every DICOM image header has; a forced parse of other bytes finds none of them.
_CORE_KEYWORDS = ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID", "SeriesInstanceUID",
                  "Rows", "Columns", "PixelData", "TransferSyntaxUID")


def _looks_parsed(ds: Dataset) -> bool:
    """True when a forced parse found real DICOM elements, not noise read as private tags."""
    meta = getattr(ds, "file_meta", None)
    return any(k in ds for k in _CORE_KEYWORDS) or bool(meta is not None and "TransferSyntaxUID" in meta)


def _read_dataset(path: Path, header_only: bool = False) -> Dataset:
    """Parse a DICOM file; files named .dcm without the Part 10 preamble are read too."""
    force = not looks_like_dicom(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only, force=force)
    except Exception as exc:
        raise InputError(
            f"cannot read {path}: not a readable DICOM file: corrupt or truncated "
            f"({' '.join(str(exc).split())}). Supported inputs: {SUPPORTED_INPUT_FORMATS}"
        ) from None
    if force and not _looks_parsed(ds):
        raise InputError(
            f"cannot read {path}: not a DICOM file (no DICM marker and no DICOM header elements: "
            f"corrupt, or another kind of file). Supported inputs: {SUPPORTED_INPUT_FORMATS}"
        )
    return ds


def _announced_size(ds: Dataset) -> tuple[list[int], int] | None:
    """``([columns, rows, frames], samples per pixel)`` from the header, ``None`` if malformed."""
    try:
        dims = [int(ds.Columns), int(ds.Rows), number_of_frames(ds)]
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    return dims, samples


def _non_image_reason(ds: Dataset) -> str | None:
    """Why ``ds`` is not an image to segment, or ``None`` when it is one."""
    modality = str(ds.get("Modality", "") or "").upper()
    sop_class = ds.get("SOPClassUID")
    kind = getattr(sop_class, "name", None) or modality or "data set"
    if "DirectoryRecordSequence" in ds:
        return "it is a DICOMDIR index, not an image; pass the directory that holds the series"
    if modality in _NON_IMAGE_MODALITIES:
        return f"it is a DICOM {kind} object, not an image"
    if "Rows" not in ds or "Columns" not in ds:
        return f"it is a DICOM {kind} without pixel data"
    return None


def _floats(value: Any) -> np.ndarray | None:
    """A DICOM multi-valued decimal as floats, ``None`` when absent or malformed."""
    if value is None or value == "":
        return None
    items = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    try:
        return np.array([float(v) for v in items])
    except (TypeError, ValueError):
        return None


def _first_float(value: Any) -> float | None:
    values = _floats(value)
    return float(values[0]) if values is not None and values.size else None


def _pixel_spacing(source: Dataset | None) -> np.ndarray | None:
    """(x, y) spacing in mm from PixelSpacing (row, column order) or ImagerPixelSpacing."""
    if source is None:
        return None
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        values = _floats(source.get(keyword))
        if values is not None and values.size == 2 and np.all(values > 0):
            return values[::-1].copy()
    return None


def plane_of_file(ds: Dataset) -> SlicePlane:
    """Plane (position, orientation) of a single-frame DICOM file."""
    position = _floats(ds.get("ImagePositionPatient"))
    orientation = _floats(ds.get("ImageOrientationPatient"))
    return SlicePlane(
        position=position if position is not None and position.size == 3 else None,
        orientation=orientation if orientation is not None and orientation.size == 6 else None,
        pixel_spacing=_pixel_spacing(ds),
    )


def plane_of_frame(ds: Dataset, frame: int) -> SlicePlane:
    """Plane of one frame of an enhanced multi-frame object (functional groups)."""
    position_item = functional_group(ds, frame, "PlanePositionSequence")
    orientation_item = functional_group(ds, frame, "PlaneOrientationSequence")
    measures = functional_group(ds, frame, "PixelMeasuresSequence")
    position = _floats(position_item.get("ImagePositionPatient")) if position_item else None
    orientation = _floats(orientation_item.get("ImageOrientationPatient")) if orientation_item else None
    top = plane_of_file(ds)  # classic multi-frames keep one plane at the top level
    if position is None or position.size != 3:
        # a classic multi-frame's top-level position is that of its first frame
        position = top.position if frame == 0 else None
    return SlicePlane(
        position=position,
        orientation=orientation if orientation is not None and orientation.size == 6 else top.orientation,
        pixel_spacing=_pixel_spacing(measures) if measures is not None else top.pixel_spacing,
    )


def _slice_spacing_hint(ds: Dataset) -> float | None:
    """Slice distance when positions are missing: SpacingBetweenSlices, else SliceThickness."""
    measures = functional_group(ds, 0, "PixelMeasuresSequence")
    for source in (measures, ds):
        if source is None:
            continue
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _first_float(source.get(keyword))
            if value is not None and value > 0:
                return value
    return None


def _window(ds: Dataset) -> tuple[float | None, float | None]:
    """First WindowCenter / WindowWidth, from the top level or the Frame VOI LUT group."""
    voi = functional_group(ds, 0, "FrameVOILUTSequence")
    for source in (ds, voi):
        if source is not None and "WindowCenter" in source and "WindowWidth" in source:
            return _first_float(source.get("WindowCenter")), _first_float(source.get("WindowWidth"))
    return None, None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _dicom_meta(first: Dataset, datasets: list[Dataset], files: list[Path], pixels: PixelValues,
                plane: SlicePlane | None) -> dict[str, Any]:
    """The DICOM facts later steps need (UIDs for DICOM SEG output, windowing), as plain types."""
    center, width = _window(first)
    meta: dict[str, Any] = {
        "Modality": _text(first.get("Modality")),
        "StudyInstanceUID": _text(first.get("StudyInstanceUID")),
        "SeriesInstanceUID": _text(first.get("SeriesInstanceUID")),
        "FrameOfReferenceUID": _text(first.get("FrameOfReferenceUID")),
        "SOPClassUID": _text(first.get("SOPClassUID")),
        "SOPInstanceUIDs": [_text(ds.get("SOPInstanceUID")) for ds in datasets],
        "SeriesDescription": _text(first.get("SeriesDescription")),
        "PhotometricInterpretation": _text(first.get("PhotometricInterpretation")),
        "files": [str(f) for f in files],
    }
    if center is not None and width is not None:
        # after a MONOCHROME1 flip the window must be flipped with the values
        meta["WindowCenter"] = pixels.mirror - center if pixels.inverted else center
        meta["WindowWidth"] = width
    if pixels.inverted:
        meta["inverted"] = True
    if plane is not None and plane.position is not None:
        meta["ImagePositionPatient"] = [float(v) for v in plane.position]
    if plane is not None and plane.orientation is not None:
        meta["ImageOrientationPatient"] = [float(v) for v in plane.orientation]
    return meta


def _assemble(frames: np.ndarray, rgb: bool, planes: list[SlicePlane], slice_hint: float | None,
              source: Path, what: str) -> tuple[np.ndarray, tuple, list[int], list[str]]:
    """Order ``frames`` (``[n, rows, cols(, 3)]``) into a 2D/3D array with ITK geometry.

    Returns the array, ``(spacing, origin, direction)``, the slice order and warnings.
    """
    notes: list[str] = []
    if rgb and len(planes) > 1:
        raise InputError(f"cannot read {source}: it holds {len(planes)} colour frames (a colour "
                         "cine or volume); only single colour images are supported")
    try:
        stack = stack_slices(planes, slice_hint)
    except ValueError as exc:
        raise InputError(f"cannot read {source}: {what}: {exc}; only one 2D image or one 3D "
                         "volume can be read at a time") from None
    if not stack.uniform:
        note = (f"non-uniform slice spacing in {source} (gaps {min(stack.gaps):.4g} to "
                f"{max(stack.gaps):.4g} mm; using the mean {stack.grid.spacing[2]:.4g} mm): "
                "slices may be missing")
        notes.append(note)
        warnings.warn(note, stacklevel=3)
    if planes[0].pixel_spacing is None:
        notes.append("no pixel spacing in the DICOM header; assuming 1 mm")
    array = frames[stack.order]
    array, grid = squeeze_singleton_axes(array, stack.grid, has_channels=rgb)
    return array, grid.as_tuples(), stack.order, notes


def _image(array: np.ndarray, geometry: tuple, rgb: bool, path: Path, fmt_name: str,
           dicom_meta: dict[str, Any], notes: list[str]) -> Image:
    spacing, origin, direction = geometry
    meta: dict[str, Any] = {"format": fmt_name, "rgb": rgb, "dicom": dicom_meta}
    if notes:
        meta["warnings"] = notes
    return Image(
        array=array,
        spacing=spacing,
        origin=origin,
        direction=direction,
        modality=map_modality(dicom_meta["Modality"], rgb),
        path=str(path),
        meta=meta,
    )


def read_dicom_file(path: Path, series_uid: str | None = None, max_pixels: int | None = None) -> Image:
    """One DICOM file: a 2D image, a colour image, or an enhanced multi-frame volume.

    Rows x Columns x frames x samples is checked against ``max_pixels``
    (:mod:`medsam3.io.limits`) before the pixel data is decoded.

    Raises:
        InputError: not DICOM, not an image object, undecodable, over the size limit, or 4D
            / colour multi-frame.
        ArgumentError: ``series_uid`` names a different series than the file's.
    """
    ds = _read_dataset(path)
    reason = _non_image_reason(ds)
    if reason:
        raise InputError(f"cannot read {path}: {reason}. Supported inputs: {SUPPORTED_INPUT_FORMATS}")
    if series_uid is not None and _text(ds.get("SeriesInstanceUID")) != series_uid:
        raise ArgumentError(f"series_uid {series_uid} does not match DICOM file {path}, whose "
                            f"SeriesInstanceUID is {_text(ds.get('SeriesInstanceUID'))}")
    announced = _announced_size(ds)
    if announced is not None:
        dims, samples = announced
        check_decoded_size(path, dims if dims[2] > 1 else dims[:2], samples, max_pixels)
    pixels = decode_pixels(ds, path)
    n = pixels.frames.shape[0]
    if n == 1:
        planes = [plane_of_file(ds)]
    else:
        planes = [plane_of_frame(ds, i) for i in range(n)]
    array, geometry, _, notes = _assemble(pixels.frames, pixels.rgb, planes, _slice_spacing_hint(ds),
                                          path, f"its {n} frames" if n > 1 else "its image")
    meta = _dicom_meta(ds, [ds], [path], pixels, planes[0] if n == 1 else None)
    if n > 1:
        meta["frames"] = n
    return _image(array, geometry, pixels.rgb, path, DICOM.name, meta, notes)


@dataclass
class _SeriesFile:
    path: Path
    header: Dataset


def _scan_directory(directory: Path) -> tuple[dict[str, list[_SeriesFile]], int]:
    """DICOM image files under ``directory`` grouped by SeriesInstanceUID, and how many were skipped."""
    series: dict[str, list[_SeriesFile]] = defaultdict(list)
    skipped = 0
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            path = Path(root) / name
            if not looks_like_dicom(path) and not name.lower().endswith((".dcm", ".dicom", ".ima")):
                continue
            try:
                header = pydicom.dcmread(path, stop_before_pixels=True, force=True)
            except Exception:  # unreadable files are not part of a series
                skipped += 1
                continue
            if _non_image_reason(header):
                skipped += 1
                continue
            series[_text(header.get("SeriesInstanceUID"))].append(_SeriesFile(path, header))
    return dict(series), skipped


def _describe_series(uid: str, files: list[_SeriesFile]) -> str:
    header = files[0].header
    modality = _text(header.get("Modality")) or "?"
    description = _text(header.get("SeriesDescription")).strip() or "no description"
    number = _text(header.get("SeriesNumber"))
    count = len(files)
    return (f"{uid} ({modality}, series {number or '?'} '{description}', "
            f"{count} image file{'s' if count != 1 else ''})")


def _series_listing(series: dict[str, list[_SeriesFile]]) -> str:
    def sort_key(item):
        number = _first_float(item[1][0].header.get("SeriesNumber"))
        return (number if number is not None else float("inf"), item[0])

    entries = [_describe_series(uid, files) for uid, files in sorted(series.items(), key=sort_key)]
    shown = entries[:_MAX_LISTED_SERIES]
    more = len(entries) - len(shown)
    return "; ".join(shown) + (f"; and {more} more" if more > 0 else "")


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _drop_duplicate_instances(chosen: list[_SeriesFile], directory: Path) -> tuple[list[_SeriesFile], list[str]]:
    """Drop byte-identical copies of one instance (a file copied twice), with a note naming both.

    Raises:
        InputError: two different files claim the same SOPInstanceUID.
    """
    kept: list[_SeriesFile] = []
    notes: list[str] = []
    by_uid: dict[str, _SeriesFile] = {}
    for item in chosen:
        uid = _text(item.header.get("SOPInstanceUID"))
        first = by_uid.get(uid) if uid else None
        if first is None:
            if uid:
                by_uid[uid] = item
            kept.append(item)
            continue
        if _file_digest(first.path) != _file_digest(item.path):
            raise InputError(f"cannot read {directory}: {first.path} and {item.path} are different files "
                             f"with the same SOPInstanceUID {uid} (a duplicate instance); remove one")
        note = f"duplicate DICOM instance {item.path} (a copy of {first.path}) skipped"
        notes.append(note)
        warnings.warn(note, stacklevel=3)
    return kept, notes


def _check_distinct_positions(chosen: list[_SeriesFile], directory: Path, what: str) -> None:
    """Name the first two files that lie at the same position (before any pixel is decoded)."""
    planes = [plane_of_file(item.header) for item in chosen]
    first = planes[0]
    if first.orientation is None or any(
        p.position is None or p.orientation is None or not np.allclose(p.orientation, first.orientation, atol=1e-4)
        for p in planes
    ):
        return  # no positions, or mixed orientations: stack_slices explains
    normal = direction_from_orientation(first.orientation)[:, 2]
    seen: dict[float, Path] = {}
    for item, plane in zip(chosen, planes):
        key = round(float(np.dot(plane.position, normal)), 3)
        if key in seen:
            distinct = len({round(float(np.dot(p.position, normal)), 3) for p in planes})
            raise InputError(
                f"cannot read {directory}: {seen[key]} and {item.path} of {what} lie at the same "
                f"position ({key:g} mm along the slice normal; {len(chosen)} images at {distinct} "
                "positions): a duplicate instance, or several echoes, phases or time points (4D "
                "data); only one 2D image or 3D volume can be read at a time"
            )
        seen[key] = item.path


def read_dicom_directory(directory: Path, series_uid: str | None = None,
                         max_pixels: int | None = None) -> Image:
    """A directory of DICOM files (searched recursively) as one series.

    Non-DICOM files and non-image objects (structured reports, RT structure sets, SEG, ...)
    are skipped. With several image series, ``series_uid`` picks one.

    Byte-identical copies of one instance are skipped with a warning; the total size is
    checked against ``max_pixels`` before any pixel data is decoded.

    Raises:
        InputError: no DICOM image files, several series and no (or an unknown)
            ``series_uid``, different files with one SOPInstanceUID, two images at one
            position, over the size limit, or files that do not form one 2D image or 3D volume.
    """
    series, skipped = _scan_directory(directory)
    if not series:
        extra = f" ({skipped} DICOM files without images skipped)" if skipped else ""
        raise InputError(f"cannot read {directory}: the directory contains no DICOM image files"
                         f"{extra}. Supported inputs: {SUPPORTED_INPUT_FORMATS}")
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(f"cannot read {directory}: it has no DICOM series with "
                             f"SeriesInstanceUID {series_uid}; series found: {_series_listing(series)}")
        chosen = series[series_uid]
    elif len(series) > 1:
        raise InputError(f"cannot read {directory}: it contains {len(series)} DICOM image series; "
                         f"choose one with series_uid (--series-uid): {_series_listing(series)}")
    else:
        chosen = next(iter(series.values()))

    chosen, duplicate_notes = _drop_duplicate_instances(chosen, directory)
    if len(chosen) == 1:  # one file, possibly an enhanced multi-frame volume
        image = read_dicom_file(chosen[0].path, max_pixels=max_pixels)
        if duplicate_notes:
            image.meta.setdefault("warnings", []).extend(duplicate_notes)
        image.path = str(directory)
        image.meta["format"] = "DICOM series"
        return image

    uid = _text(chosen[0].header.get("SeriesInstanceUID"))
    what = f"series {uid}"
    sizes = {(int(f.header.Rows), int(f.header.Columns)) for f in chosen}
    if len(sizes) > 1:
        raise InputError(f"cannot read {directory}: the images of {what} have different sizes "
                         f"{sorted(sizes)}; only one 2D image or 3D volume can be read at a time")
    rows, columns = next(iter(sizes))
    samples = max(int(f.header.get("SamplesPerPixel") or 1) for f in chosen)
    check_decoded_size(directory, [columns, rows, len(chosen)], samples, max_pixels, what="voxels")
    _check_distinct_positions(chosen, directory, what)
    datasets: list[Dataset] = []
    frames: list[np.ndarray] = []
    inverted = False
    mirror = 0.0
    rgb = False
    for item in chosen:
        ds = _read_dataset(item.path)
        if number_of_frames(ds) > 1:
            raise InputError(f"cannot read {directory}: {what} mixes multi-frame file {item.path} "
                             "with other files; read that file on its own")
        pixels = decode_pixels(ds, item.path)
        datasets.append(ds)
        frames.append(pixels.frames[0])
        inverted, mirror, rgb = pixels.inverted, pixels.mirror, pixels.rgb
    dtype = np.result_type(*[f.dtype for f in frames])
    stacked = np.stack([f.astype(dtype, copy=False) for f in frames])
    planes = [plane_of_file(ds) for ds in datasets]
    array, geometry, order, notes = _assemble(stacked, rgb, planes, _slice_spacing_hint(datasets[0]),
                                              directory, what)
    ordered = [datasets[i] for i in order]
    files = [chosen[i].path for i in order]
    pixels_summary = PixelValues(frames=np.empty(0), rgb=rgb, inverted=inverted, mirror=mirror)
    meta = _dicom_meta(ordered[0], ordered, files, pixels_summary, None)
    if skipped:
        notes.append(f"{skipped} non-image or unreadable DICOM files skipped")
    notes.extend(duplicate_notes)
    return _image(array, geometry, rgb, directory, "DICOM series", meta, notes)
