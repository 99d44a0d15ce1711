"""DICOM SEG and RT Structure Set output (and reading them back as ground truth) on a real CT.

The CT is the head scan of InVesalius' "Cranium" example project (Debian package
``invesalius-examples``; int16 HU, 108 x 256 x 256, 0.957 x 0.957 x 1.5 mm) with its two
threshold masks (bone, head). Twenty slices, pooled 2 x 2 to 128 x 128, are written here as
DICOM CT series with pydicom (axial, coronal and oblique, file names shuffled), read with
:func:`medsam3.io.read_image`, and a head / bone label map from the real masks goes out as
DICOM SEG and RTSTRUCT and comes back voxel for voxel. These tests fail, never skip, without
the package.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from scipy import ndimage

from medsam3 import __version__
from medsam3.errors import ArgumentError, InputError
from medsam3.image import Image
from medsam3.io import (
    dicom_label_format,
    read_image,
    read_label_map,
    write_dicom_seg,
    write_label_map,
    write_rtstruct,
)
from medsam3.overlay import label_colors

CRANIUM = Path("/usr/share/doc/invesalius-examples/examples/Cranium.inv3")
SLICES = slice(40, 60)  # through the skull and brain
SPACING = (0.95703125 * 2, 0.95703125 * 2, 1.5)  # (x, y, z) after 2 x 2 pooling
NAMES = {1: "head", 2: "bone", 3: "tumour"}  # 3 is looked for, never found: an empty segment
MODEL = "random:tiny"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"


def _rotation(degrees_z: float, degrees_x: float) -> np.ndarray:
    a, b = np.deg2rad(degrees_z), np.deg2rad(degrees_x)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    return rx @ rz


OBLIQUE = _rotation(25, 10)
ORIENTATIONS = {  # (row direction, column direction) in LPS
    "axial": ((1, 0, 0), (0, 1, 0)),
    "coronal": ((1, 0, 0), (0, 0, -1)),
    "oblique": (tuple(OBLIQUE[:, 0]), tuple(OBLIQUE[:, 1])),
}


def _pool(volume: np.ndarray) -> np.ndarray:
    z, y, x = volume.shape
    return volume.reshape(z, y // 2, 2, x // 2, 2).mean(axis=(2, 4))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labelled, _ = ndimage.label(mask)
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    return labelled == sizes.argmax()


@pytest.fixture(scope="module")
def cranium():
    """``(ct, labels)``: 20 x 128 x 128 int16 HU and uint8 labels 1 = head soft tissue, 2 = bone."""
    if not CRANIUM.is_file():
        pytest.fail(f"{CRANIUM} is missing: these tests need the real head CT of Debian's "
                    "invesalius-examples package (apt-get install invesalius-examples; images "
                    "that drop /usr/share/doc must keep this file)")
    from helpers.recipes import demo_script

    ct, bone, head = demo_script("build_data").cranium_project(CRANIUM)
    ct = np.round(_pool(ct[SLICES].astype(np.float32))).astype(np.int16)
    head = _largest_component(_pool(head[SLICES]) >= 0.5)
    bone = _largest_component((_pool(bone[SLICES]) >= 0.5) & head)  # the skull: a ring with holes
    labels = np.zeros(ct.shape, np.uint8)
    labels[head] = 1
    labels[bone] = 2
    return ct, labels


def write_ct_series(folder: Path, ct: np.ndarray, row, col, *, seed: int = 0, series_uid: str | None = None,
                    study_uid: str | None = None, frame_uid: str | None = None, series_number: int = 3,
                    skip: tuple[int, ...] = ()) -> Path:
    """``ct`` (``[z, y, x]``) as one CT file per slice; slice k at ``origin + k * 1.5 mm * normal``.

    File names are shuffled (``seed``), so their order on disk says nothing about positions.
    """
    folder.mkdir(parents=True, exist_ok=True)
    row, col = np.asarray(row, float), np.asarray(col, float)
    normal = np.cross(row, col)
    study_uid, frame_uid = study_uid or generate_uid(), frame_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    order = list(range(ct.shape[0]))
    random.Random(seed).shuffle(order)
    for k in range(ct.shape[0]):
        if k in skip:
            continue
        uid = generate_uid()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Cranium^InVesalius", "PROMED0051", "", "O"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = \
            "20120914", "151208", "1", "", ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", series_number, k + 1
        ds.SeriesDescription = "Cranium"
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*row, *col)]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in np.array([-120.0, -110.0, 30.0]) + k * SPACING[2] * normal]
        ds.PixelSpacing = [SPACING[1], SPACING[0]]
        ds.SliceThickness = SPACING[2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = ct.shape[1:]
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = np.ascontiguousarray(ct[k]).tobytes()
        ds.save_as(folder / f"IM{order[k]:04d}", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def series(cranium, tmp_path_factory):
    """The cropped CT as DICOM series in three orientations: ``{name: directory}``."""
    ct, _ = cranium
    root = tmp_path_factory.mktemp("series")
    return {name: write_ct_series(root / name, ct, row, col, seed=i)
            for i, (name, (row, col)) in enumerate(ORIENTATIONS.items())}


def _headers(image: Image) -> list[Dataset]:
    return [pydicom.dcmread(f, stop_before_pixels=True) for f in image.meta["dicom"]["files"]]


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * np.logical_and(a, b).sum() / total


# ------------------------------------------------------------------ DICOM SEG


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_dicom_seg_round_trip_on_real_ct(cranium, series, orientation, tmp_path):
    ct, labels = cranium
    image = read_image(series[orientation])
    np.testing.assert_array_equal(image.array, ct)  # sorted by position, not by file name
    sidecar = {"labels": {str(k): v for k, v in NAMES.items()}, "model": MODEL}
    out = write_label_map(labels, image, tmp_path / "seg.dcm", sidecar=sidecar)  # .dcm: SEG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.dcm", "seg.json"]
    assert json.loads((tmp_path / "seg.json").read_text()) == sidecar

    import highdicom as hd

    seg = hd.seg.segread(out)
    source = _headers(image)
    assert seg.SOPClassUID == SEG_CLASS and seg.SegmentationType == "BINARY"
    assert seg.StudyInstanceUID == source[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    assert seg.PatientID == "PROMED0051"
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source[0].SeriesInstanceUID
    assert seg.SeriesInstanceUID != source[0].SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence} \
        == {ds.SOPInstanceUID for ds in source}
    assert seg.Manufacturer == "medsam3" and seg.SoftwareVersions == __version__
    palette = label_colors(3)
    for number, (value, name) in enumerate(NAMES.items(), start=1):
        description = seg.get_segment_description(number)
        assert description.segment_label == name
        assert description.algorithm_type.value == "AUTOMATIC"
        algorithm = description.SegmentationAlgorithmIdentificationSequence[0]
        assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("medsam3", __version__)
        assert MODEL in algorithm.AlgorithmParameters
        rgb = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb()
        assert np.abs(np.subtract(rgb, palette[value - 1])).max() <= 2

    # every frame sits exactly on its source slice
    by_uid = {ds.SOPInstanceUID: ds for ds in source}
    for frame in seg.PerFrameFunctionalGroupsSequence:
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        np.testing.assert_allclose([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient],
                                   [float(v) for v in by_uid[uid].ImagePositionPatient], atol=1e-4)
    orientation_item = seg.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0]
    np.testing.assert_allclose([float(v) for v in orientation_item.ImageOrientationPatient],
                               [float(v) for v in source[0].ImageOrientationPatient], atol=1e-6)

    # highdicom's own decoding, slice by source slice: exactly the label map
    decoded = seg.get_pixels_by_source_instance([ds.SOPInstanceUID for ds in source], segment_numbers=[1, 2],
                                                combine_segments=True)
    np.testing.assert_array_equal(decoded, labels)

    # and medsam3's reader, with and without the series
    for back in (read_label_map(out, reference=series[orientation]), read_label_map(out)):
        assert back.same_geometry(image)
        np.testing.assert_array_equal(back.array, labels)
        assert _dice(back.array == 2, labels == 2) == 1.0
        assert back.meta["labels"] == NAMES
        assert back.meta["format"] == "DICOM SEG"
        assert back.meta["dicom"]["ReferencedSeriesInstanceUID"] == source[0].SeriesInstanceUID


def test_liver_seg_from_pydicom_data_reads_as_a_label_map():
    import highdicom as hd

    path = get_testdata_file("liver.dcm")
    labels = read_label_map(path)
    assert labels.meta["labels"] == {1: "Liver"}
    assert labels.shape == (3, 512, 512)  # one frame per slice, 3 slices 1 mm apart
    assert labels.spacing == pytest.approx((0.810547, 0.810547, 1.0))
    assert labels.origin == pytest.approx((-235.2, -226.8, -128.69))
    assert labels.array.dtype == np.uint8 and set(np.unique(labels.array)) == {0, 1}
    seg = hd.seg.segread(path)
    frames = seg.pixel_array.reshape(3, 512, 512)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in seg.PerFrameFunctionalGroupsSequence]
    for i, k in enumerate(np.argsort(z)):  # the label map runs along +z
        np.testing.assert_array_equal(labels.array[i], frames[k])
    assert (labels.array == 1).sum() == frames.sum() > 100000


# ------------------------------------------------------------------ RT Structure Set


def _rasterise_independently(rt: Dataset, headers: list[Dataset], shape) -> dict[int, np.ndarray]:
    """Each ROI's contours filled even-odd at pixel centres with matplotlib, from the headers."""
    from matplotlib.path import Path as Polygon

    index = {ds.SOPInstanceUID: k for k, ds in enumerate(headers)}
    masks = {}
    for roi in rt.ROIContourSequence:
        mask = np.zeros(shape, bool)
        for contour in roi.get("ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            k = index[contour.ContourImageSequence[0].ReferencedSOPInstanceUID]
            ds = headers[k]
            raw = contour.get_item("ContourData").value  # parsed here, not by pydicom's slow DS objects
            points = np.array(raw.decode().strip().split("\\"), dtype=float).reshape(-1, 3)
            assert len(points) == contour.NumberOfContourPoints
            ipp = np.asarray(ds.ImagePositionPatient, float)
            iop = np.asarray(ds.ImageOrientationPatient, float)
            normal = np.cross(iop[:3], iop[3:])
            assert np.abs((points - ipp) @ normal).max() < 1e-3  # on its slice's plane
            c = (points - ipp) @ iop[:3] / float(ds.PixelSpacing[1])
            r = (points - ipp) @ iop[3:] / float(ds.PixelSpacing[0])
            assert c.min() >= -0.5 and r.min() >= -0.5 and c.max() <= shape[2] - 0.5 and r.max() <= shape[1] - 0.5
            r0, r1 = int(np.ceil(r.min())), int(np.floor(r.max())) + 1  # pixel centres in reach
            c0, c1 = int(np.ceil(c.min())), int(np.floor(c.max())) + 1
            rows, cols = np.mgrid[r0:r1, c0:c1]
            centres = np.column_stack([cols.ravel(), rows.ravel()]).astype(float)
            inside = Polygon(np.column_stack([c, r])).contains_points(centres).reshape(rows.shape)
            mask[k, r0:r1, c0:c1] ^= inside
        masks[int(roi.ReferencedROINumber)] = mask
    return masks


@pytest.mark.parametrize("orientation", list(ORIENTATIONS))
def test_rtstruct_round_trip_on_real_ct(cranium, series, orientation, tmp_path):
    _, labels = cranium
    image = read_image(series[orientation])
    out = write_rtstruct(labels, image, tmp_path / "structures.dcm", NAMES, model_id=MODEL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["structures.dcm"]

    rt = pydicom.dcmread(out)
    source = _headers(image)
    assert rt.SOPClassUID == RTSTRUCT_CLASS and rt.Modality == "RTSTRUCT"
    assert rt.StudyInstanceUID == source[0].StudyInstanceUID and rt.PatientName == "Cranium^InVesalius"
    assert rt.ApprovalStatus == "UNAPPROVED"
    frame_ref = rt.ReferencedFrameOfReferenceSequence[0]
    assert frame_ref.FrameOfReferenceUID == source[0].FrameOfReferenceUID
    study_ref = frame_ref.RTReferencedStudySequence[0]
    assert study_ref.ReferencedSOPInstanceUID == source[0].StudyInstanceUID
    series_ref = study_ref.RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == source[0].SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series_ref.ContourImageSequence] == \
        [ds.SOPInstanceUID for ds in source]
    palette = label_colors(3)
    rois = {int(r.ROINumber): r for r in rt.StructureSetROISequence}
    assert {k: str(r.ROIName) for k, r in rois.items()} == NAMES
    for value, roi in rois.items():
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC"
        assert __version__ in roi.ROIGenerationDescription and MODEL in roi.ROIGenerationDescription
    colours = {int(r.ReferencedROINumber): [int(c) for c in r.ROIDisplayColor] for r in rt.ROIContourSequence}
    assert colours == {v: list(palette[v - 1]) for v in NAMES}
    assert "ContourSequence" not in rt.ROIContourSequence[2]  # "tumour": named, not found
    # holes and separate pieces: more contours than slices holding each label
    assert len(rt.ROIContourSequence[1].ContourSequence) > np.count_nonzero((labels == 2).any(axis=(1, 2)))

    # independent rasterisation of the contours: within one voxel of the label map
    masks = _rasterise_independently(rt, source, labels.shape)
    for value in (1, 2):
        truth = labels == value
        assert _dice(masks[value], truth) > 0.99
        boundary = ndimage.binary_dilation(truth) & ~ndimage.binary_erosion(truth)
        assert not np.any((masks[value] != truth) & ~boundary)
    assert not masks[3].any()

    # medsam3's reader fills them back exactly
    for reference in (series[orientation], image):
        back = read_label_map(out, reference=reference)
        assert back.same_geometry(image)
        np.testing.assert_array_equal(back.array, labels)
        assert back.meta["labels"] == NAMES
        assert back.meta["colors"] == {v: list(palette[v - 1]) for v in NAMES}
        assert back.meta["format"] == "DICOM RTSTRUCT"


def test_rtstruct_needs_its_image_series(cranium, series, tmp_path):
    _, labels = cranium
    image = read_image(series["axial"])
    out = write_label_map(labels, image, tmp_path / "structures", format="dicom-rt",
                          names=NAMES, model_id=MODEL)
    assert pydicom.dcmread(out).Modality == "RTSTRUCT"
    with pytest.raises(ArgumentError, match="reference"):
        read_label_map(out)
    other = read_image(series["coronal"])  # another Frame of Reference
    with pytest.raises(InputError, match="Frame of Reference"):
        read_label_map(out, reference=other)


# ------------------------------------------------------------------ refusals and format rules


def test_dicom_outputs_need_a_reference_read_from_dicom(cranium, tmp_path):
    _, labels = cranium
    nifti_like = Image.from_array(labels.astype(np.int16), spacing=SPACING)
    for write in (lambda p: write_dicom_seg(labels, nifti_like, p, NAMES, model_id=MODEL),
                  lambda p: write_rtstruct(labels, nifti_like, p, NAMES, model_id=MODEL),
                  lambda p: write_label_map(labels, nifti_like, p)):
        with pytest.raises(ArgumentError, match="not read from DICOM"):
            write(tmp_path / "seg.dcm")
    assert list(tmp_path.iterdir()) == []


def test_format_rule_and_refusals(cranium, series, tmp_path):
    _, labels = cranium
    assert [dicom_label_format(p) for p in ("a.dcm", "A.DCM", "a.nii.gz", "a")] == ["dicom-seg", "dicom-seg", None, None]
    assert dicom_label_format("a", "dicom-rt") == "dicom-rt"
    image = read_image(series["axial"])
    seg_out = write_label_map(labels, image, tmp_path / "noext", format="dicom-seg", names=NAMES, model_id=MODEL)
    assert pydicom.dcmread(seg_out).SOPClassUID == SEG_CLASS
    with pytest.raises(ArgumentError, match="dicom-seg, dicom-rt"):
        write_label_map(labels, image, tmp_path / "x.dcm", format="dicom-sr")
    with pytest.raises(ArgumentError, match="NIfTI"):
        write_label_map(labels, image, tmp_path / "x.nii.gz", format="dicom-rt")
    with pytest.raises(ArgumentError, match="DICOM directory"):
        write_label_map(labels, image, Path(series["axial"]) / "seg.dcm", names=NAMES)
    with pytest.raises(ArgumentError, match="shape"):
        write_dicom_seg(labels[:-1], image, tmp_path / "y.dcm", NAMES, model_id=MODEL)
    with pytest.raises(ArgumentError, match="no segments"):
        write_dicom_seg(np.zeros_like(labels), image, tmp_path / "z.dcm", {}, model_id=MODEL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["noext"]
    # an all-empty result still makes a valid SEG that says what was looked for
    empty = write_dicom_seg(np.zeros_like(labels), image, tmp_path / "empty.dcm", {1: "tumour"}, model_id=MODEL)
    back = read_label_map(empty, reference=image)
    assert back.meta["labels"] == {1: "tumour"} and not back.array.any()
    # unnamed labels are written as "label K"
    five = np.where(labels == 2, 5, labels).astype(np.uint8)
    back = read_label_map(write_rtstruct(five, image, tmp_path / "five.dcm", {1: "head"}, model_id=MODEL),
                          reference=image)
    assert back.meta["labels"] == {1: "head", 5: "label 5"}
    np.testing.assert_array_equal(back.array, five)


# ------------------------------------------------------------------ input checks


def test_mixed_series_folder_lists_series_and_reads_the_referenced_one(cranium, tmp_path):
    ct, labels = cranium
    folder = tmp_path / "study"
    study, frame = generate_uid(), generate_uid()
    first = write_ct_series(folder, ct, *ORIENTATIONS["axial"], study_uid=study, frame_uid=frame,
                            series_uid=generate_uid())
    second_uid = generate_uid()
    write_ct_series(tmp_path / "second", ct[:4], *ORIENTATIONS["axial"], study_uid=study, frame_uid=frame,
                    series_uid=second_uid, series_number=4)
    for f in (tmp_path / "second").iterdir():
        shutil.move(f, folder / f"b_{f.name}")
    (folder / "notes.txt").write_text("not DICOM")
    with pytest.raises(InputError, match="2 DICOM image series.*--series-uid") as info:
        read_image(folder)
    assert second_uid in str(info.value) and "20 image files" in str(info.value)

    first_uid = pydicom.dcmread(next(p for p in first.iterdir() if p.name.startswith("IM"))).SeriesInstanceUID
    image = read_image(folder, series_uid=first_uid)
    np.testing.assert_array_equal(image.array, ct)
    seg = write_dicom_seg(labels, image, tmp_path / "seg.dcm", NAMES, model_id=MODEL)
    shutil.copy(seg, folder / "seg.dcm")  # a SEG among the images: skipped as an image
    image = read_image(folder, series_uid=first_uid)
    assert any("non-image" in note for note in image.meta["warnings"])
    # the SEG names its series: the right one is found in the mixed folder
    np.testing.assert_array_equal(read_label_map(folder / "seg.dcm", reference=folder).array, labels)


def test_missing_slice_warns_and_outputs_keep_true_positions(cranium, tmp_path):
    ct, labels = cranium
    folder = write_ct_series(tmp_path / "gap", ct, *ORIENTATIONS["oblique"], skip=(7,))
    with pytest.warns(UserWarning, match="non-uniform slice spacing"):
        image = read_image(folder)
    assert any("slices may be missing" in note for note in image.meta["warnings"])
    kept = np.delete(labels, 7, axis=0)
    seg = write_dicom_seg(kept, image, tmp_path / "seg.dcm", NAMES, model_id=MODEL)
    rt = write_rtstruct(kept, image, tmp_path / "rt.dcm", NAMES, model_id=MODEL)
    for out in (seg, rt):
        with pytest.warns(UserWarning, match="non-uniform"):  # the series is read again
            back = read_label_map(out, reference=folder)
        np.testing.assert_array_equal(back.array, kept)
        assert back.same_geometry(image)
    # without the series, the SEG's own frame positions give the regular grid with the gap
    alone = read_label_map(seg)
    assert alone.shape == labels.shape and alone.spacing[2] == pytest.approx(SPACING[2])
    np.testing.assert_array_equal(np.delete(alone.array, 7, axis=0), kept)
    assert not alone.array[7].any()
    assert any("filled with background" in note for note in alone.meta["warnings"])
