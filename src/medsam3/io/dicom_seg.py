"""DICOM Segmentation objects (SEG) out of and into label maps, through highdicom.

Writing: one BINARY segment per label (its name as Segment Label, its overlay colour as the
recommended display colour, medsam3 + version + model id as the segmentation algorithm),
one frame per slice and segment that holds any voxel (highdicom leaves empty frames out),
each frame referencing its source image and carrying that image's position and orientation.
Viewers (3D Slicer, OHIF) and PACS accept these.

Reading: a SEG file (BINARY, FRACTIONAL or LABELMAP) becomes a label map whose values are
the segment numbers; ``meta["labels"]`` maps them to segment labels. The grid is the
reference image's when one is given, else the stack of the SEG's own frame positions with
the slices between them filled in.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from medsam3 import __version__
from medsam3.errors import InputError
from medsam3.image import Image
from medsam3.io.dicom import plane_of_frame
from medsam3.io.dicom_derived import (
    LabelMapParts,
    PlaneGrid,
    Segment,
    SourceSeries,
    check_frame_of_reference,
    derived_series_number,
    grid_of_planes,
    label_image,
    load_reference,
    nearest_slice,
    reference_slices,
    slice_tolerance,
    truncate,
)
from medsam3.io.dicom_pixels import functional_group, number_of_frames
from medsam3.io.geometry import Grid, squeeze_singleton_axes

WHAT = "DICOM SEG"


def build_dicom_seg(array: np.ndarray, series: SourceSeries, segments: list[Segment],
                    model_id: str) -> Dataset:
    """The highdicom Segmentation dataset for ``array`` (``[z, y, x]`` or ``[y, x]``).

    ``array`` must hold only the values of ``segments``; slices are in ``series`` order.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = array.reshape((-1,) + array.shape[-2:])
    lut = np.zeros(int(array.max(initial=0)) + 1, dtype=np.uint16)
    for number, segment in enumerate(segments, start=1):
        if segment.value < lut.size:
            lut[segment.value] = number
    segment_numbers = lut[frames]
    if series.multi_frame:
        # highdicom pairs pixel frames with the source file's frames in their stored order
        by_frame = np.zeros_like(segment_numbers)
        for k, source in enumerate(series.slices):
            by_frame[source.frame - 1] = segment_numbers[k]
        segment_numbers = by_frame
    dtype = np.uint8 if len(segments) < 256 else np.uint16
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medsam3", family=codes.cid7162.ArtificialIntelligence, version=__version__,
        source="medsam3", parameters={"model": str(model_id)})
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=truncate(segment.name),
            # the prompt is free text; "Tissue" is 3D Slicer's default for a structure without a code
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=codes.SCT.Tissue,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            display_color=hd.color.CIELabColor.from_rgb(*segment.color),
        )
        for number, segment in enumerate(segments, start=1)
    ]
    first = series.first
    seg = hd.seg.Segmentation(
        source_images=series.datasets,
        pixel_array=segment_numbers.astype(dtype),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=derived_series_number(first, 1000),
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medsam3",
        manufacturer_model_name="medsam3",
        software_versions=__version__,
        device_serial_number="none",
        content_label="MEDSAM3",
        content_description=truncate(f"medsam3 {__version__}, model {model_id}"),
        series_description=truncate(f"medsam3 segmentation ({model_id})"),
        pixel_measures=_pixel_measures(series),
        # a SEG needs at least one frame: an all-empty result keeps its (empty) frames
        omit_empty_frames=bool(segment_numbers.any()),
        specific_character_set="ISO_IR 192",  # UTF-8: prompts may use any language
    )
    return seg


def _pixel_measures(series: SourceSeries):
    """Pixel measures with SpacingBetweenSlices added when the source spacing is even.

    Readers need the slice distance to restore the slices a SEG leaves out (empty ones);
    many CT files do not state it. Enhanced multi-frame sources keep their own measures.
    """
    import highdicom as hd

    first = series.first
    gaps = series.gaps()
    if series.multi_frame or "PixelSpacing" not in first or not gaps:
        return None
    if "SpacingBetweenSlices" in first:
        return None  # highdicom copies it
    mean = float(np.mean(gaps))
    if mean <= 0 or not np.allclose(gaps, mean, rtol=1e-2, atol=1e-2):
        return None  # uneven: frame positions alone say where slices are
    thickness = first.get("SliceThickness")
    try:
        thickness = float(thickness) if thickness not in (None, "") else None
    except (TypeError, ValueError):
        thickness = None
    return hd.PixelMeasuresSequence(pixel_spacing=[float(v) for v in first.PixelSpacing],
                                    slice_thickness=thickness if thickness and thickness > 0 else None,
                                    spacing_between_slices=round(mean, 6))


# ------------------------------------------------------------------ reading


def _frame_segment_numbers(ds: Dataset, n_frames: int) -> list[int | None]:
    numbers = []
    for i in range(n_frames):
        item = functional_group(ds, i, "SegmentIdentificationSequence")
        numbers.append(int(item.ReferencedSegmentNumber) if item is not None else None)
    return numbers


def _frame_plane(ds: Dataset, i: int) -> PlaneGrid | None:
    return PlaneGrid.from_slice_plane(plane_of_frame(ds, i))


def _frame_source(ds: Dataset, i: int) -> tuple[str, int | None]:
    """(SOP Instance UID, frame number) of the image that frame ``i`` was derived from."""
    item = functional_group(ds, i, "DerivationImageSequence")
    if item is None or not item.get("SourceImageSequence"):
        return "", None
    source = item.SourceImageSequence[0]
    frame = source.get("ReferencedFrameNumber")
    try:
        frame = int(frame[0] if isinstance(frame, (list, tuple, pydicom.multival.MultiValue)) else frame) \
            if frame not in (None, "") else None
    except (TypeError, ValueError):
        frame = None
    return str(source.get("ReferencedSOPInstanceUID", "")), frame


def _masks(ds: Dataset, path: Path) -> np.ndarray:
    """``[frames, rows, cols]`` decoded frames: bool for BINARY/FRACTIONAL, segment numbers for LABELMAP."""
    try:
        pixels = ds.pixel_array
    except Exception as exc:
        raise InputError(f"cannot read {path}: its segmentation frames cannot be decoded "
                         f"({' '.join(str(exc).split())})") from None
    pixels = pixels.reshape((number_of_frames(ds),) + pixels.shape[-2:])
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    if kind == "FRACTIONAL":
        maximum = float(ds.get("MaximumFractionalValue", 255) or 255)
        return pixels >= maximum / 2.0
    if kind == "LABELMAP":
        return pixels
    return pixels > 0


def _segment_labels(ds: Dataset) -> tuple[dict[int, str], dict[int, list[int]]]:
    import highdicom as hd

    labels: dict[int, str] = {}
    colors: dict[int, list[int]] = {}
    for item in ds.get("SegmentSequence") or []:
        number = int(item.SegmentNumber)
        labels[number] = str(item.get("SegmentLabel", "") or f"segment {number}")
        lab = item.get("RecommendedDisplayCIELabValue")
        if lab is not None and len(lab) == 3:
            try:
                colors[number] = [int(c) for c in hd.color.CIELabColor.from_dicom_value(lab).to_rgb()]
            except Exception:  # a malformed colour must not stop reading the labels
                pass
    return labels, colors


def read_dicom_seg(path: str | os.PathLike, reference: Image | str | os.PathLike | None = None) -> Image:
    """A DICOM SEG file as a label map; value = segment number, ``meta["labels"]`` its label.

    Args:
        path: the SEG file.
        reference: the image series it segments (an :class:`Image`, or a series directory /
            file to read). Given: the label map lies on exactly that grid, frames placed by
            their position (or, without positions, their source image UID). Not given: the
            grid is the SEG's own frame stack (slices the SEG leaves out are filled with 0),
            which may cover only the part of the series that holds segments.

    Raises:
        InputError: not a SEG, undecodable frames, frames off the reference grid, or a
            reference in another Frame of Reference.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    ds = pydicom.dcmread(path, force=True)
    n_frames = number_of_frames(ds)
    labels, colors = _segment_labels(ds)
    masks = _masks(ds, path)
    kind = str(ds.get("SegmentationType", "BINARY")).upper()
    numbers = _frame_segment_numbers(ds, n_frames)
    if kind != "LABELMAP" and any(n is None for n in numbers):
        if len(labels) == 1:
            numbers = [next(iter(labels))] * n_frames
        else:
            raise InputError(f"cannot read {path}: its frames do not say which segment they belong to "
                             "(no Segment Identification Sequence)")
    planes = [_frame_plane(ds, i) for i in range(n_frames)]
    referenced_series = ""
    if ds.get("ReferencedSeriesSequence"):
        referenced_series = str(ds.ReferencedSeriesSequence[0].get("SeriesInstanceUID", ""))
    frame_of_reference = str(ds.get("FrameOfReferenceUID", "") or "")
    dicom = {
        "Modality": "SEG",
        "SOPInstanceUID": str(ds.get("SOPInstanceUID", "")),
        "SeriesInstanceUID": str(ds.get("SeriesInstanceUID", "")),
        "StudyInstanceUID": str(ds.get("StudyInstanceUID", "")),
        "FrameOfReferenceUID": frame_of_reference,
        "ReferencedSeriesInstanceUID": referenced_series,
        "SegmentationType": kind,
    }
    parts = LabelMapParts(array=np.empty(0), labels=labels, colors=colors)

    if reference is not None:
        image = load_reference(reference, referenced_series, path)
        check_frame_of_reference(image, frame_of_reference, path, "segments")
        targets, uids, notes = reference_slices(image)
        parts.warnings.extend(notes)
        shape = image.shape if image.ndim == 3 else (1,) + image.shape
        out = np.zeros(shape, dtype=np.uint32)
        _place_frames(out, masks, numbers, kind, planes, [_frame_source(ds, i) for i in range(n_frames)],
                      targets, uids, path, parts)
        parts.array = out.reshape(image.shape)
        return label_image(parts, image.spacing, image.origin, image.direction, path, WHAT, dicom)

    if any(p is None for p in planes):
        raise InputError(f"cannot read {path}: its frames carry no patient positions; pass "
                         "reference=the image series it segments")
    spacing_hint = None
    measures = functional_group(ds, 0, "PixelMeasuresSequence")
    if measures is not None and measures.get("SpacingBetweenSlices") not in (None, ""):
        spacing_hint = float(measures.SpacingBetweenSlices)
    try:
        stack, geometry, notes = grid_of_planes(planes, spacing_hint)
    except InputError as exc:
        raise InputError(f"cannot read {path}: {exc}") from None
    parts.warnings.extend(notes)
    out = np.zeros((len(stack),) + masks.shape[-2:], dtype=np.uint32)
    _place_frames(out, masks, numbers, kind, planes, [("", None)] * n_frames, stack,
                  [("", None)] * len(stack), path, parts)
    spacing, origin, direction = geometry
    grid = Grid(np.asarray(spacing), np.asarray(origin), np.asarray(direction).reshape(3, 3))
    array, grid = squeeze_singleton_axes(out, grid, has_channels=False)
    parts.array = array
    spacing, origin, direction = grid.as_tuples()
    return label_image(parts, spacing, origin, direction, path, WHAT, dicom)


def _place_frames(out: np.ndarray, masks: np.ndarray, numbers: list[int | None], kind: str,
                  planes: list[PlaneGrid | None], sources: list[tuple[str, int | None]],
                  targets: list[PlaneGrid], target_uids: list[tuple[str, int | None]], path: Path,
                  parts: LabelMapParts) -> None:
    """Paint each frame into ``out`` (``[slices, rows, cols]``) on the slice it lies on."""
    tolerance = slice_tolerance(targets)
    by_uid = {uid: k for k, uid in enumerate(target_uids) if uid[0]}
    overlap = 0
    outside = 0
    rows, cols = out.shape[1:]
    for i, mask in enumerate(masks):
        plane = planes[i]
        k = by_uid.get(sources[i]) if sources[i][0] else None
        if k is None and plane is not None:
            k = nearest_slice(plane.position, targets, tolerance)
        if k is None:
            if plane is None:
                raise InputError(f"cannot read {path}: frame {i + 1} has no position and its source "
                                 "image is not in the reference series")
            outside += 1
            continue
        target = targets[k]
        r0, c0 = 0, 0
        if plane is not None:
            if not plane.same_grid_as(target):
                raise InputError(f"cannot read {path}: frame {i + 1} has another orientation or pixel "
                                 "spacing than the reference image; resampling is not supported")
            r, c, _ = target.to_pixels(plane.position[None, :])
            if abs(r[0] - round(r[0])) > 1e-2 or abs(c[0] - round(c[0])) > 1e-2:
                raise InputError(f"cannot read {path}: frame {i + 1} is shifted by a fraction of a pixel "
                                 "against the reference image grid")
            r0, c0 = int(round(r[0])), int(round(c[0]))
        # the frame's window on the slice, clipped to the slice
        fr0, fc0 = max(0, -r0), max(0, -c0)
        tr0, tc0 = max(0, r0), max(0, c0)
        h = min(mask.shape[0] - fr0, rows - tr0)
        w = min(mask.shape[1] - fc0, cols - tc0)
        if h <= 0 or w <= 0:
            outside += 1
            continue
        window = mask[fr0:fr0 + h, fc0:fc0 + w]
        region = out[k, tr0:tr0 + h, tc0:tc0 + w]
        if kind == "LABELMAP":
            hit = window > 0
            values = window[hit]
        else:
            hit = window
            values = numbers[i]
        overlap += int(np.count_nonzero(region[hit]))
        region[hit] = values
    if overlap:
        parts.warnings.append(f"{overlap} voxels belong to more than one segment; the segment of the "
                              "later frame was kept")
    if outside:
        parts.warnings.append(f"{outside} frames lie outside the reference image and were left out")
