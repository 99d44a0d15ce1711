"""What DICOM SEG and RT Structure Set files share: the source series they are derived from.

A derived object must name the series it was made from (Study / Series / SOP Instance UIDs,
Frame of Reference) and put every frame or contour on the plane of its source slice. Both
need the source headers, re-read here from ``reference.meta["dicom"]["files"]`` (kept by
:func:`medsam3.io.read_image`, in slice order). Reading goes the other way: frames and
contours are placed on the slices of a reference image by their patient positions.

Geometry: a :class:`PlaneGrid` is one slice's pixel grid in patient (LPS, mm) space; pixel
``(row r, column c)`` lies at ``position + c * spacing[0] * row_dir + r * spacing[1] * col_dir``
(DICOM's Image Plane module; ``row_dir`` is the first triplet of ImageOrientationPatient).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medsam3.errors import ArgumentError, InputError
from medsam3.image import Image
from medsam3.io.dicom import plane_of_file, plane_of_frame
from medsam3.io.dicom_pixels import number_of_frames
from medsam3.io.formats import DICOM, input_format
from medsam3.io.geometry import SlicePlane, direction_from_orientation, stack_slices
from medsam3.io.read import read_image, smallest_label_dtype
from medsam3.palette import label_colors

#: SOP Class UIDs of the segmentation objects read as label maps.
SEG_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation Storage",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation Storage",
}
RTSTRUCT_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

# Positions in DICOM files are decimal strings; 1e-3 mm is far below any voxel.
_POSITION_TOL_MM = 1e-3


@dataclass
class PlaneGrid:
    """One slice's pixel grid in patient space (LPS millimetres).

    Attributes:
        position: ``(3,)`` centre of the first pixel (row 0, column 0): ImagePositionPatient.
        row_dir: ``(3,)`` unit vector along a row, the direction in which the column index grows.
        col_dir: ``(3,)`` unit vector down a column, the direction in which the row index grows.
        spacing: ``(2,)`` mm between columns and between rows (PixelSpacing reversed).
    """

    position: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    spacing: np.ndarray

    @property
    def normal(self) -> np.ndarray:
        """Unit slice normal ``row_dir x col_dir`` (ITK's z axis for DICOM stacks)."""
        return np.cross(self.row_dir, self.col_dir)

    def to_patient(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """``[N, 3]`` patient positions of (fractional) pixel coordinates ``rows``, ``cols``."""
        rows = np.asarray(rows, dtype=float)[:, None]
        cols = np.asarray(cols, dtype=float)[:, None]
        return (self.position[None, :] + cols * self.spacing[0] * self.row_dir[None, :]
                + rows * self.spacing[1] * self.col_dir[None, :])

    def to_pixels(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fractional ``(rows, cols)`` of ``[N, 3]`` patient points, and their distance (mm)
        from the plane along its normal."""
        rel = np.asarray(points, dtype=float).reshape(-1, 3) - self.position[None, :]
        cols = rel @ self.row_dir / self.spacing[0]
        rows = rel @ self.col_dir / self.spacing[1]
        return rows, cols, rel @ self.normal

    def same_grid_as(self, other: PlaneGrid) -> bool:
        """Parallel axes and equal pixel spacing (positions may differ)."""
        return bool(np.allclose(self.row_dir, other.row_dir, atol=1e-4)
                    and np.allclose(self.col_dir, other.col_dir, atol=1e-4)
                    and np.allclose(self.spacing, other.spacing, rtol=1e-4, atol=1e-6))

    @classmethod
    def from_slice_plane(cls, plane: SlicePlane) -> PlaneGrid | None:
        """From a DICOM :class:`SlicePlane`; ``None`` without position or orientation."""
        if plane.position is None or plane.orientation is None:
            return None
        orientation = np.asarray(plane.orientation, dtype=float)
        spacing = plane.pixel_spacing if plane.pixel_spacing is not None else np.ones(2)
        return cls(position=np.asarray(plane.position, dtype=float),
                   row_dir=orientation[:3] / np.linalg.norm(orientation[:3]),
                   col_dir=orientation[3:6] / np.linalg.norm(orientation[3:6]),
                   spacing=np.asarray(spacing, dtype=float))


# ------------------------------------------------------------------ the source series


@dataclass
class SourceSlice:
    """One slice of the source series: the file that holds it and where it lies.

    Attributes:
        dataset: the file's header (read without pixel data).
        frame: 1-based frame number inside an enhanced multi-frame file, ``None`` otherwise.
        plane: its pixel grid, ``None`` when the file has no position / orientation.
    """

    dataset: Dataset
    frame: int | None
    plane: PlaneGrid | None

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)


@dataclass
class SourceSeries:
    """The DICOM series a label map was made from, slice ``k`` for array index ``k``."""

    slices: list[SourceSlice]
    datasets: list[Dataset]  # the files, each once (one for an enhanced multi-frame)
    files: list[Path]

    @property
    def first(self) -> Dataset:
        return self.slices[0].dataset

    @property
    def multi_frame(self) -> bool:
        return any(s.frame is not None for s in self.slices)

    def gaps(self) -> list[float]:
        """Distances (mm) between consecutive slices along the normal; empty for one slice."""
        planes = [s.plane for s in self.slices]
        if len(planes) < 2 or any(p is None for p in planes):
            return []
        normal = planes[0].normal
        return [float(np.dot(b.position - a.position, normal)) for a, b in itertools.pairwise(planes)]


def _not_from_dicom(reference: Image, target: Path, what: str) -> ArgumentError:
    source = reference.path or "an image in memory"
    return ArgumentError(
        f"cannot write {target} as {what}: it must reference the DICOM series the labels were made "
        f"from (its Study/Series/SOP Instance UIDs and per-slice positions), but the reference image "
        f"({source}) was not read from DICOM files. Read the series with medsam3.io.read_image(SERIES_DIR), "
        "or write .nii.gz / .nrrd / .mha instead")


def source_series(reference: Image, target: Path, what: str) -> SourceSeries:
    """Re-read the headers of the files ``reference`` was read from, one slice per array slice.

    Args:
        reference: an image from :func:`medsam3.io.read_image` of a DICOM file or series.
        target: the output being written (for error messages).
        what: "DICOM SEG" or "an RT Structure Set" (for error messages).

    Raises:
        ArgumentError: ``reference`` was not read from DICOM, its files are gone or changed,
            or its array no longer matches them (shape).
    """
    dicom = reference.meta.get("dicom") if isinstance(reference.meta, dict) else None
    files = [Path(f) for f in (dicom or {}).get("files") or []]
    if not files:
        raise _not_from_dicom(reference, target, what)
    if reference.is_rgb and reference.ndim != 2:
        raise ArgumentError(f"cannot write {target} as {what}: colour volumes are not supported")
    datasets = []
    for f in files:
        try:
            datasets.append(pydicom.dcmread(f, stop_before_pixels=True, force=True))
        except Exception as exc:
            raise ArgumentError(f"cannot write {target} as {what}: the source DICOM file {f} cannot be "
                                f"read any more ({' '.join(str(exc).split())}); it must stay in place "
                                "until the output is written") from None
    expected = list((dicom or {}).get("SOPInstanceUIDs") or [])
    found = [str(ds.get("SOPInstanceUID", "")) for ds in datasets]
    if expected and expected != found:
        raise ArgumentError(f"cannot write {target} as {what}: the source DICOM files changed since "
                            f"the image was read from {reference.path} (other SOP Instance UIDs)")
    shape = reference.shape
    n_slices = 1 if reference.ndim == 2 else shape[0]
    if len(datasets) == 1 and number_of_frames(datasets[0]) > 1:
        ds = datasets[0]
        planes = [plane_of_frame(ds, i) for i in range(number_of_frames(ds))]
        order = stack_slices(planes, None).order  # the reader's slice order
        slices = [SourceSlice(ds, i + 1, PlaneGrid.from_slice_plane(planes[i])) for i in order]
    else:
        slices = [SourceSlice(ds, None, PlaneGrid.from_slice_plane(plane_of_file(ds))) for ds in datasets]
    rows, cols = int(datasets[0].get("Rows", 0)), int(datasets[0].get("Columns", 0))
    if len(slices) != n_slices or (rows, cols) != tuple(shape[-2:]):
        raise ArgumentError(f"cannot write {target} as {what}: the reference image (shape {shape}) no "
                            f"longer matches its {len(slices)} DICOM slice(s) of {rows}x{cols} pixels; "
                            "pass the image exactly as read_image returned it")
    return SourceSeries(slices=slices, datasets=datasets, files=files)


# ------------------------------------------------------------------ segments to write


@dataclass(frozen=True)
class Segment:
    """One structure of the output: its value in the label map, name and display colour."""

    value: int
    name: str
    color: tuple[int, int, int]


def _label_key(key: Any, target: Path) -> int:
    try:
        value = int(key)
    except (TypeError, ValueError):
        raise ArgumentError(f"cannot write {target}: label names must be keyed by label value "
                            f"(1, 2, ...), got key {key!r}") from None
    if value <= 0 or str(key).strip() != str(value):
        raise ArgumentError(f"cannot write {target}: label names must be keyed by label values >= 1, "
                            f"got {key!r}")
    return value


def segments_to_write(array: np.ndarray, names: Mapping[Any, str] | None,
                      colors: Mapping[Any, Sequence[int]] | None, target: Path) -> list[Segment]:
    """Every named label and every label present in ``array``, in increasing value.

    Named labels that are absent from the map still become (empty) segments / ROIs, so a
    structure that was looked for and not found is visible in the output; labels without
    a name are called ``"label K"``. Colours come from ``colors`` ({value: (r, g, b)},
    0-255) or else :func:`medsam3.palette.label_colors`, as in the overlay pictures.
    """
    named = {_label_key(k, target): str(v) for k, v in (names or {}).items()}
    present = {int(v) for v in np.unique(array) if v != 0}
    values = sorted(set(named) | present)
    if not values:
        raise ArgumentError(f"cannot write {target}: no segments (the label map is empty and no label "
                            "has a name); DICOM SEG and RT Structure Sets need at least one")
    given = {_label_key(k, target): v for k, v in (colors or {}).items()}
    palette = label_colors(max(values))
    segments = []
    for value in values:
        color = given.get(value, palette[value - 1])
        try:
            rgb = tuple(int(c) for c in color)
        except (TypeError, ValueError):
            rgb = ()
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise ArgumentError(f"cannot write {target}: colour of label {value} must be three "
                                f"integers 0-255, got {color!r}")
        name = " ".join(named.get(value, "").split()) or f"label {value}"
        segments.append(Segment(value=value, name=name, color=rgb))
    return segments


def derived_series_number(first: Dataset, offset: int) -> int:
    """Series Number of an output: the source's plus ``offset``, so it lists next to its source."""
    try:
        number = int(first.get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return min(max(number, 0), 2**31 - 1 - offset) + offset


def truncate(text: str, limit: int = 64) -> str:
    """``text`` cut to a DICOM LO/SH length (64/16 characters)."""
    return text if len(text) <= limit else text[: limit - 1] + "~"


# ------------------------------------------------------------------ reading: kinds and references


def derived_kind(path: Path) -> str | None:
    """``"SEG"`` or ``"RTSTRUCT"`` when ``path`` is such a DICOM file, else ``None`` (cheap)."""
    try:
        if not path.is_file() or input_format(path) is not DICOM:
            return None
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                             specific_tags=["SOPClassUID", "Modality"])
    except Exception:
        return None
    sop_class = str(ds.get("SOPClassUID", "") or "")
    modality = str(ds.get("Modality", "") or "").upper()
    if sop_class in SEG_SOP_CLASSES or (modality == "SEG" and not sop_class):
        return "SEG"
    if sop_class == RTSTRUCT_SOP_CLASS or (modality == "RTSTRUCT" and not sop_class):
        return "RTSTRUCT"
    return None


def load_reference(reference: Image | str | os.PathLike, series_uid: str | None, path: Path) -> Image:
    """``reference`` as an :class:`Image`: as given, or read (a series directory or file).

    A directory holding several series is read for ``series_uid`` (the series the SEG or
    RTSTRUCT at ``path`` references); when that series is not there, the directory's only
    series is used, and geometry decides.
    """
    if isinstance(reference, Image):
        return reference
    if not isinstance(reference, (str, os.PathLike)):
        raise ArgumentError(f"cannot read {path}: reference must be an Image or the path of its "
                            f"image series, got {type(reference).__name__}")
    ref_path = Path(os.path.expanduser(os.fspath(reference)))
    if ref_path.is_dir() and series_uid:
        try:
            return read_image(ref_path, series_uid=series_uid)
        except InputError as first:
            try:
                return read_image(ref_path)
            except InputError:
                raise first from None
    return read_image(ref_path)


def reference_slices(reference: Image) -> tuple[list[PlaneGrid], list[tuple[str, int | None]], list[str]]:
    """Per array slice of ``reference``: its plane, its (SOP Instance UID, frame) and notes.

    Planes come from the DICOM headers when ``reference`` was read from DICOM (exact even
    for unevenly spaced slices), else from its grid (origin, spacing, direction). UIDs are
    ``("", None)`` for non-DICOM references.
    """
    notes: list[str] = []
    n = 1 if reference.ndim == 2 else reference.shape[0]
    if (reference.meta.get("dicom") or {}).get("files"):
        try:
            series = source_series(reference, Path(reference.path or "reference"), "reference")
            planes = [s.plane for s in series.slices]
            if all(p is not None for p in planes):
                return planes, [(s.sop_instance_uid, s.frame) for s in series.slices], notes
        except ArgumentError as exc:
            notes.append(f"reference DICOM headers not usable ({exc}); using its grid")
    return _grid_planes(reference, n), [("", None)] * n, notes


def _grid_planes(reference: Image, n: int) -> list[PlaneGrid]:
    if reference.ndim == 3:
        direction = np.asarray(reference.direction, dtype=float).reshape(3, 3)
        origin = np.asarray(reference.origin, dtype=float)
        sx, sy, sz = reference.spacing
        return [PlaneGrid(position=origin + k * sz * direction[:, 2], row_dir=direction[:, 0],
                          col_dir=direction[:, 1], spacing=np.array([sx, sy])) for k in range(n)]
    dicom = reference.meta.get("dicom") or {}
    if dicom.get("ImagePositionPatient") and dicom.get("ImageOrientationPatient"):
        plane = PlaneGrid.from_slice_plane(SlicePlane(np.asarray(dicom["ImagePositionPatient"]),
                                                      np.asarray(dicom["ImageOrientationPatient"]),
                                                      np.asarray(reference.spacing)))
        return [plane]
    d2 = np.asarray(reference.direction, dtype=float).reshape(2, 2)
    return [PlaneGrid(position=np.array([*reference.origin, 0.0]), row_dir=np.array([*d2[:, 0], 0.0]),
                      col_dir=np.array([*d2[:, 1], 0.0]), spacing=np.asarray(reference.spacing))]


def slice_tolerance(planes: list[PlaneGrid]) -> float:
    """How far (mm, along the normal) a frame or contour may lie from a slice and still be on it."""
    if len(planes) < 2:
        return 0.5
    positions = np.sort([float(np.dot(p.position, planes[0].normal)) for p in planes])
    return max(0.5 * float(np.min(np.diff(positions))), _POSITION_TOL_MM)


def nearest_slice(point: np.ndarray, planes: list[PlaneGrid], tolerance: float) -> int | None:
    """Index of the slice whose plane ``point`` lies on (within ``tolerance`` mm), else ``None``."""
    normal = planes[0].normal
    distances = np.array([float(np.dot(point - p.position, normal)) for p in planes])
    k = int(np.argmin(np.abs(distances)))
    return k if abs(distances[k]) <= tolerance else None


def check_frame_of_reference(reference: Image, uid: str, path: Path, what: str) -> None:
    """Refuse a reference image in another Frame of Reference (when both say which)."""
    ref_uid = (reference.meta.get("dicom") or {}).get("FrameOfReferenceUID") or ""
    if uid and ref_uid and uid != ref_uid:
        raise InputError(f"cannot read {path}: its {what} lie in Frame of Reference {uid}, but the "
                         f"reference image {reference.path or ''} is in {ref_uid}; pass the image "
                         "series it was drawn on")


@dataclass
class LabelMapParts:
    """A label map assembled by a DICOM SEG / RTSTRUCT reader, before it becomes an Image."""

    array: np.ndarray
    labels: dict[int, str]
    colors: dict[int, list[int]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def label_image(parts: LabelMapParts, spacing, origin, direction, path: Path, fmt: str,
                dicom: dict[str, Any]) -> Image:
    """The :class:`Image` a reader returns: labels, their names and colours, DICOM facts."""
    max_label = max(parts.labels, default=0)
    array = parts.array.astype(smallest_label_dtype(max(max_label, int(parts.array.max(initial=0)))))
    meta: dict[str, Any] = {"format": fmt, "rgb": False, "labels": dict(parts.labels), "dicom": dicom}
    if parts.colors:
        meta["colors"] = dict(parts.colors)
    if parts.warnings:
        meta["warnings"] = list(parts.warnings)
    return Image(array=array, spacing=spacing, origin=origin, direction=direction, modality=None,
                 path=str(path), meta=meta)


def grid_of_planes(planes: list[PlaneGrid], spacing_hint: float | None) -> tuple[list[PlaneGrid], tuple, list[str]]:
    """A regular slice stack covering ``planes`` (parallel, same in-plane grid), gaps filled.

    Used when a SEG is read without a reference image: its frames may skip empty slices, so
    the slice distance comes from ``spacing_hint`` (SpacingBetweenSlices) or else the
    smallest gap between frames; frames off that regular grid fall back to the frames' own
    positions (with a warning, as for unevenly spaced series).

    Returns:
        the planes of the stack's slices, ``(spacing, origin, direction)`` in ITK order,
        and notes.
    """
    notes: list[str] = []
    first = planes[0]
    normal = first.normal
    distances = np.array([float(np.dot(p.position - first.position, normal)) for p in planes])
    unique = np.unique(np.round(distances, 3))
    for p in planes:
        rows, cols, _ = first.to_pixels(p.position[None, :])
        if abs(rows[0]) > 1e-2 or abs(cols[0]) > 1e-2 or not p.same_grid_as(first):
            raise InputError("its frames do not share one in-plane grid (different orientation, pixel "
                             "spacing or offsets); pass reference=the image series to place them")
    direction = direction_from_orientation(np.concatenate([first.row_dir, first.col_dir]))
    if unique.size == 1:
        step = spacing_hint if spacing_hint and spacing_hint > 0 else 1.0
        stack = [first]
    else:
        gaps = np.diff(unique)
        step = spacing_hint if spacing_hint and spacing_hint > 0 else float(gaps.min())
        steps = (unique - unique[0]) / step
        if np.allclose(steps, np.round(steps), atol=0.05) and steps[-1] < 100000:
            count = int(round(steps[-1])) + 1
            step = float((unique[-1] - unique[0]) / (count - 1))
            if count > unique.size:
                missing = count - unique.size
                notes.append(f"{missing} slice{'s' if missing != 1 else ''} without frames between the "
                             "frames filled with background")
            offsets = unique[0] + step * np.arange(count)
        else:
            offsets = unique
            step = float((unique[-1] - unique[0]) / (unique.size - 1))
            notes.append(f"frames are not evenly spaced (gaps {gaps.min():.4g} to {gaps.max():.4g} mm); "
                         f"one slice per frame position, spacing reported as the mean {step:.4g} mm")
        stack = [PlaneGrid(first.position + d * normal, first.row_dir, first.col_dir, first.spacing)
                 for d in offsets]
    spacing = (float(first.spacing[0]), float(first.spacing[1]), float(step))
    origin = tuple(float(v) for v in stack[0].position)
    return stack, (spacing, origin, tuple(float(v) for v in direction.ravel())), notes
