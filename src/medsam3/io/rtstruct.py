"""RT Structure Sets (RTSTRUCT) out of and into label maps, with pydicom.

highdicom (0.28) has no RT Structure Set class, so the object is built here from the DICOM
RT Structure Set IOD: one ROI per label (ROI Number = label value, its name, its overlay
colour as ROI Display Color, generation algorithm AUTOMATIC with medsam3 + version + model id),
and for every slice that holds the label, closed planar contours in patient coordinates, each
referencing its source image. Approval status is UNAPPROVED: a person must review it.

Contours are traced with marching squares (:func:`skimage.measure.find_contours`) at level
0.5 around the label's pixels, so they pass half-way between pixel centres inside and outside;
a hole becomes a contour of its own inside the outer one, as planning systems expect (they
fill nested contours of one ROI even-odd). Reading fills contours with the same even-odd rule
at pixel centres, which gives back exactly the written label map.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

from medsam3 import __version__
from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.io.dicom_derived import (
    RTSTRUCT_SOP_CLASS,
    LabelMapParts,
    PlaneGrid,
    Segment,
    SourceSeries,
    check_frame_of_reference,
    derived_series_number,
    label_image,
    load_reference,
    nearest_slice,
    reference_slices,
    slice_tolerance,
    truncate,
)

WHAT = "DICOM RTSTRUCT"

# RT Referenced Study Sequence items name the study by this (retired) SOP class, as TPSs expect.
_STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"

# Patient and study attributes copied from the source images (type 2: empty when missing).
_COPIED = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
           "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber")


# ------------------------------------------------------------------ contours of a mask


def _drop_collinear(points: np.ndarray) -> np.ndarray:
    """A closed polygon without vertices that lie on the straight line through their neighbours."""
    if len(points) <= 3:
        return points
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    keep = np.abs(cross) > 1e-9
    return points[keep] if keep.sum() >= 3 else points


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours around the ``True`` pixels of a 2D mask, as ``[N, 2]`` (row, col) arrays.

    Outer boundaries and hole boundaries alike; filling them even-odd at pixel centres gives
    ``mask`` back. Pixels touching only at a corner are separate objects (4-connected).
    """
    from skimage.measure import find_contours

    padded = np.pad(mask.astype(np.uint8), 1)  # so contours at the image border close
    contours = []
    for contour in find_contours(padded, 0.5, fully_connected="low"):
        if len(contour) < 4:
            continue
        points = _drop_collinear(contour[:-1] - 1.0)  # last point repeats the first
        contours.append(points)
    return contours


def _set_decimals(item: Dataset, keyword: str, values: np.ndarray) -> None:
    """Store ``values`` as a DS element, already encoded (pydicom's per-value DS objects are slow
    for the many thousand coordinates of a structure set). 0.1 micrometre, within 16 characters."""
    text = "\\".join(f"{v:.4f}".rstrip("0").rstrip(".") for v in np.asarray(values).ravel())
    raw = text.encode("ascii")
    if len(raw) % 2:
        raw += b" "
    tag = Tag(keyword)
    item[tag] = RawDataElement(tag, "DS", len(raw), raw, 0, False, True)


def decimals(item: Dataset, keyword: str) -> np.ndarray:
    """A DS element's values as floats, parsed from its bytes when still undecoded (fast)."""
    if keyword not in item:
        return np.empty(0)
    elem = item.get_item(keyword)
    if getattr(elem, "is_raw", False) and isinstance(elem.value, bytes):
        text = elem.value.decode("ascii", "replace").strip(" \x00")
        return np.array([v for v in text.split("\\") if v.strip()], dtype=float)
    value = item[keyword].value
    values = value if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else [value]
    return np.array([float(v) for v in values], dtype=float)


# ------------------------------------------------------------------ writing


def _now() -> tuple[str, str]:
    now = datetime.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _image_ref(slice_) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = slice_.sop_class_uid
    item.ReferencedSOPInstanceUID = slice_.sop_instance_uid
    if slice_.frame is not None:
        item.ReferencedFrameNumber = slice_.frame
    return item


def build_rtstruct(array: np.ndarray, series: SourceSeries, segments: list[Segment], model_id: str,
                   target: Path) -> Dataset:
    """The RT Structure Set dataset for ``array`` (``[z, y, x]`` or ``[y, x]``) on ``series``.

    Raises:
        ArgumentError: source images without patient position / orientation or without a
            Frame of Reference UID.
    """
    first = series.first
    frame_of_reference = str(first.get("FrameOfReferenceUID", "") or "")
    if not frame_of_reference or any(s.plane is None for s in series.slices):
        raise ArgumentError(f"cannot write {target} as an RT Structure Set: the source images have no "
                            "patient coordinates (Frame of Reference, ImagePositionPatient, "
                            "ImageOrientationPatient); write DICOM SEG (format 'dicom-seg') or .nii.gz instead")
    frames = array.reshape((-1,) + array.shape[-2:])
    date, time = _now()
    sop_instance = generate_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RTSTRUCT_SOP_CLASS
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: prompts may use any language
    ds.SOPClassUID = RTSTRUCT_SOP_CLASS
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    for keyword in _COPIED:
        setattr(ds, keyword, first.get(keyword, ""))
    # RT Series and General Equipment
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = derived_series_number(first, 2000)
    ds.SeriesDescription = truncate(f"medsam3 structures ({model_id})")
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.OperatorsName = ""
    ds.Manufacturer = "medsam3"
    ds.ManufacturerModelName = "medsam3"
    ds.SoftwareVersions = __version__
    ds.InstanceNumber = 1
    # Frame of Reference (in the IOD since 2019): that of the images the contours lie on
    ds.FrameOfReferenceUID = frame_of_reference
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    # Structure Set
    ds.StructureSetLabel = "MEDSAM3"
    ds.StructureSetName = truncate(f"medsam3 {model_id}")
    ds.StructureSetDescription = f"Automatic segmentation by medsam3 {__version__}, model {model_id}"
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.ApprovalStatus = "UNAPPROVED"

    contour_images = DicomSequence([_image_ref(s) for s in series.slices])
    series_ref = Dataset()
    series_ref.SeriesInstanceUID = str(first.SeriesInstanceUID)
    series_ref.ContourImageSequence = contour_images
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study_ref.RTReferencedSeriesSequence = DicomSequence([series_ref])
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame_of_reference
    frame_ref.RTReferencedStudySequence = DicomSequence([study_ref])
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([frame_ref])

    description = truncate(f"medsam3 {__version__}, model {model_id}")
    rois, contours, observations = [], [], []
    for number, segment in enumerate(segments, start=1):
        roi = Dataset()
        roi.ROINumber = segment.value
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = truncate(segment.name)
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = description
        rois.append(roi)

        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(segment.color)
        roi_contour.ReferencedROINumber = segment.value
        items = _roi_contours(frames == segment.value, series)
        if items:
            roi_contour.ContourSequence = DicomSequence(items)
        contours.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = segment.value
        observation.RTROIInterpretedType = ""  # organ, target, ...: not known from a prompt
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = DicomSequence(rois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    return ds


def _roi_contours(mask: np.ndarray, series: SourceSeries) -> list[Dataset]:
    items = []
    number = 0
    for k in np.flatnonzero(mask.reshape(mask.shape[0], -1).any(axis=1)):
        source = series.slices[k]
        for contour in mask_contours(mask[k]):
            points = source.plane.to_patient(contour[:, 0], contour[:, 1])
            number += 1
            item = Dataset()
            item.ContourImageSequence = DicomSequence([_image_ref(source)])
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = number
            _set_decimals(item, "ContourData", points)
            items.append(item)
    return items


# ------------------------------------------------------------------ reading


def _fill_even_odd(shape: tuple[int, int], polygons: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """Pixels whose centres lie inside an odd number of the ``(rows, cols)`` polygons.

    A scanline fill over all edges at once: on each pixel row, every edge crossing toggles
    the pixels to its right, so nested contours become holes (and islands in holes) without
    telling outer from inner contours. Edges count half-open in the row direction, so a
    vertex on a pixel row is crossed once.
    """
    height, width = shape
    starts = np.concatenate([np.column_stack([r, c]) for r, c in polygons])
    ends = np.concatenate([np.roll(np.column_stack([r, c]), -1, axis=0) for r, c in polygons])
    top = np.minimum(starts[:, 0], ends[:, 0])
    bottom = np.maximum(starts[:, 0], ends[:, 0])
    first_row = np.clip(np.ceil(top), 0, height).astype(np.int64)
    last_row = np.clip(np.ceil(bottom), 0, height).astype(np.int64)  # exclusive
    counts = np.maximum(last_row - first_row, 0)
    toggles = np.zeros((height, width + 1), dtype=np.int64)
    if counts.sum():
        edge = np.repeat(np.arange(len(starts)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        rows = first_row[edge] + offsets
        r0, c0 = starts[edge, 0], starts[edge, 1]
        r1, c1 = ends[edge, 0], ends[edge, 1]
        cross = c0 + (rows - r0) * (c1 - c0) / (r1 - r0)
        first_col = np.clip(np.floor(cross).astype(np.int64) + 1, 0, width)  # centres right of it
        np.add.at(toggles, (rows, first_col), 1)
    return (np.cumsum(toggles, axis=1)[:, :width] % 2).astype(bool)


def read_rtstruct(path: str | os.PathLike, reference: Image | str | os.PathLike | None = None) -> Image:
    """An RT Structure Set as a label map on the grid of the image series it was drawn on.

    Args:
        path: the RTSTRUCT file.
        reference: that image series: an :class:`Image`, or its directory / file. Required:
            contours are polygons in patient space, and only the image says which voxels exist.

    Returns:
        A label map on ``reference``'s grid whose value for each ROI is its ROI Number;
        ``meta["labels"]`` maps ROI numbers to ROI names (ROIs without contours included),
        ``meta["colors"]`` to their display colours. Closed planar contours of one ROI on one
        slice are filled even-odd (nested contours are holes); each goes to the slice its
        Contour Image Sequence names, else the slice its points lie on. Where ROIs overlap,
        the later ROI wins (noted in ``meta["warnings"]``), as a label map holds one label
        per voxel.

    Raises:
        ArgumentError: no ``reference``.
        InputError: not an RTSTRUCT, or the reference is in another Frame of Reference.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if reference is None:
        raise ArgumentError(f"cannot read RT Structure Set {path} as a label map without its image "
                            "series: its contours are polygons in patient space; pass reference=the "
                            "series directory (or the Image read from it)")
    ds = pydicom.dcmread(path, force=True)
    names: dict[int, str] = {}
    frames_of_reference = set()
    for item in ds.get("StructureSetROISequence") or []:
        names[int(item.ROINumber)] = str(item.get("ROIName", "") or f"ROI {int(item.ROINumber)}")
        if item.get("ReferencedFrameOfReferenceUID"):
            frames_of_reference.add(str(item.ReferencedFrameOfReferenceUID))
    referenced_series = ""
    for frame_ref in ds.get("ReferencedFrameOfReferenceSequence") or []:
        for study in frame_ref.get("RTReferencedStudySequence") or []:
            for series in study.get("RTReferencedSeriesSequence") or []:
                referenced_series = referenced_series or str(series.get("SeriesInstanceUID", ""))
    image = load_reference(reference, referenced_series, path)
    for uid in frames_of_reference:
        check_frame_of_reference(image, uid, path, "contours")
    targets, uids, notes = reference_slices(image)
    by_uid = {uid: k for k, uid in enumerate(uids) if uid[0]}
    by_sop = {uid[0]: k for k, uid in enumerate(uids) if uid[0] and uid[1] is None}
    tolerance = slice_tolerance(targets)
    shape = image.shape if image.ndim == 3 else (1,) + image.shape

    parts = LabelMapParts(array=np.zeros(shape, dtype=np.uint32), labels=names, warnings=list(notes))
    skipped_kinds: dict[str, int] = {}
    off_grid = 0
    overlap = 0
    for roi in ds.get("ROIContourSequence") or []:
        number = int(roi.ReferencedROINumber)
        names.setdefault(number, f"ROI {number}")
        color = roi.get("ROIDisplayColor")
        if color is not None and len(color) == 3:
            parts.colors[number] = [int(c) for c in color]
        per_slice: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
        for contour in roi.get("ContourSequence") or []:
            kind = str(contour.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            if kind not in ("CLOSED_PLANAR", "CLOSEDPLANAR_XOR"):
                skipped_kinds[kind] = skipped_kinds.get(kind, 0) + 1
                continue
            points = decimals(contour, "ContourData")
            points = points[: points.size // 3 * 3].reshape(-1, 3)
            if len(points) < 3:
                continue
            k = _contour_slice(contour, points, targets, by_uid, by_sop, tolerance)
            if k is None:
                off_grid += 1
                continue
            rows, cols, _ = targets[k].to_pixels(points)
            per_slice.setdefault(k, []).append((rows, cols))
        for k, polygons in per_slice.items():
            mask = _fill_even_odd(shape[1:], polygons)
            overlap += int(np.count_nonzero(parts.array[k][mask]))
            parts.array[k][mask] = number
    if overlap:
        parts.warnings.append(f"{overlap} voxels lie in more than one ROI; the later ROI was kept")
    if off_grid:
        parts.warnings.append(f"{off_grid} contours lie on no slice of the reference image and were "
                              "left out")
    for kind, count in sorted(skipped_kinds.items()):
        parts.warnings.append(f"{count} {kind} contours left out (only closed planar contours are areas)")
    parts.array = parts.array.reshape(image.shape)
    dicom = {
        "Modality": "RTSTRUCT",
        "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")),
        "FrameOfReferenceUID": next(iter(frames_of_reference), ""),
        "ReferencedSeriesInstanceUID": referenced_series,
    }
    return label_image(parts, image.spacing, image.origin, image.direction, path, WHAT, dicom)


def _contour_slice(contour: Dataset, points: np.ndarray, targets: list[PlaneGrid],
                   by_uid: dict, by_sop: dict, tolerance: float) -> int | None:
    for item in contour.get("ContourImageSequence") or []:
        uid = str(item.get("ReferencedSOPInstanceUID", ""))
        frame = item.get("ReferencedFrameNumber")
        k = by_uid.get((uid, int(frame))) if frame not in (None, "") else by_sop.get(uid)
        if k is not None:
            return k
    return nearest_slice(points.mean(axis=0), targets, tolerance)
