"""Tests of medsam3.io on real files: pydicom's DICOM test data, nilearn's MNI152 template,
the ITK example images of Debian's insighttoolkit5-examples, and files derived from them."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_color_lut

from medsam3 import ArgumentError, Image, InputError
from medsam3.io import (
    SUPPORTED_INPUT_FORMATS,
    SUPPORTED_OUTPUT_FORMATS,
    atomic_file_set,
    atomic_output,
    read_image,
    read_label_map,
    sidecar_path,
    write_image,
    write_label_map,
)

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
PYDICOM_DIRS = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests"
CT5N = PYDICOM_DIRS / "98892001" / "CT5N"  # 5 axial CT slices, 2.5 mm apart, files in z-descending order
CT5N_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
CT2 = PYDICOM_DIRS / "77654033" / "CT2"  # 4 CT slices with a 202.5 mm gap
CT2_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1196530851.28319.0.2"
MR2 = PYDICOM_DIRS / "98892003" / "MR2"  # localisers: 3 series, one with 3 orientations


def dicom_file(name: str) -> Path:
    path = get_testdata_file(name)
    assert path is not None, f"{name} missing: pip install pydicom-data"
    return Path(path)


@pytest.fixture(scope="session")
def itk_data() -> Path:
    """ITK example images; missing files are a broken test environment, not a skip."""
    wanted = ["BrainProtonDensitySliceBorder20DirectionPlus30.nhdr",
              "BrainProtonDensitySliceBorder20DirectionPlus30.mhd",
              "KmeansTest_T1UCharRaw.nii.gz", "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"]
    missing = [name for name in wanted if not (ITK_DATA / name).exists()]
    if missing:
        pytest.fail(f"ITK example data missing ({', '.join(missing)} in {ITK_DATA}): install it with "
                    "`apt-get install insighttoolkit5-examples`")
    return ITK_DATA


def assert_same_grid(a: Image, b: Image, atol: float = 1e-6) -> None:
    assert a.shape == b.shape
    np.testing.assert_allclose(a.spacing, b.spacing, atol=atol)
    np.testing.assert_allclose(a.origin, b.origin, atol=atol)
    np.testing.assert_allclose(a.direction, b.direction, atol=atol)


def raises_naming(error, path, *fragments):
    """Context manager: ``error`` whose message names ``path`` (and each fragment)."""

    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(error)
            self.info = self._ctx.__enter__()
            return self.info

        def __exit__(self, *exc):
            suppressed = self._ctx.__exit__(*exc)
            message = str(self.info.value)
            assert str(path) in message, message
            for fragment in fragments:
                assert fragment in message, message
            assert "\n" not in message, "errors are printed on one line"
            return suppressed

    return _Check()


# ---------------------------------------------------------------- single DICOM files


def test_ct_slice_in_hounsfield_units_with_patient_geometry():
    path = dicom_file("CT_small.dcm")
    image = read_image(path)
    # RescaleIntercept -1024, slope 1: stored 175 at [0, 0] and 1928 at the centre
    assert image.array.shape == (128, 128)
    assert image.array.dtype.kind == "i"
    assert image.array[0, 0] == 175 - 1024
    assert image.array[64, 64] == 1928 - 1024
    assert image.spacing == (0.661468, 0.661468)  # PixelSpacing
    assert image.origin == (-158.135803, -179.035797)  # ImagePositionPatient x, y
    assert image.direction == (1.0, 0.0, 0.0, 1.0)  # ImageOrientationPatient 1,0,0 / 0,1,0
    assert image.modality == "CT"
    assert image.path == str(path)
    dicom = image.meta["dicom"]
    assert image.meta["format"] == "DICOM"
    assert dicom["SOPInstanceUIDs"] == ["1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]
    assert dicom["SeriesInstanceUID"] == "1.3.6.1.4.1.5962.1.3.1.1.20040119072730.12322"
    assert dicom["StudyInstanceUID"] == "1.3.6.1.4.1.5962.1.2.1.20040119072730.12322"
    assert dicom["FrameOfReferenceUID"] == "1.3.6.1.4.1.5962.1.4.1.1.20040119072730.12322"
    assert dicom["PhotometricInterpretation"] == "MONOCHROME2"
    assert dicom["ImagePositionPatient"] == [-158.135803, -179.035797, -75.699997]
    # the same numbers as SimpleITK's own DICOM reader (which keeps a 1-slice 3D image)
    itk = sitk.ReadImage(str(path))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk)[0], image.array)
    np.testing.assert_allclose(itk.GetOrigin()[:2], image.origin)
    np.testing.assert_allclose(itk.GetSpacing()[:2], image.spacing)


def test_mr_slice_keeps_stored_values_and_window():
    path = dicom_file("MR_small.dcm")
    image = read_image(path)
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(image.array, stored)
    assert image.array.dtype == np.int16
    assert image.modality == "MR"
    assert image.spacing == (0.3125, 0.3125)
    assert image.meta["dicom"]["WindowCenter"] == 600.0


def test_jpeg2000_compressed_reads_like_uncompressed_with_rescale_slope():
    compressed = read_image(dicom_file("MR2_J2KR.dcm"))  # JPEG 2000 lossless
    plain = read_image(dicom_file("MR2_UNCR.dcm"))
    stored = pydicom.dcmread(dicom_file("MR2_UNCR.dcm")).pixel_array
    np.testing.assert_array_equal(compressed.array, plain.array)
    assert compressed.array.dtype == np.float32  # RescaleSlope 3.774114, intercept 0.000061
    np.testing.assert_array_equal(plain.array, (stored * 3.774114 + 0.000061).astype(np.float32))
    # an oblique single slice: 2D geometry falls back to identity, the 3D plane is kept
    assert compressed.direction == (1.0, 0.0, 0.0, 1.0)
    assert compressed.meta["dicom"]["ImageOrientationPatient"] == [0.569486, 0.822001, 0.0, -0.0, 0.0, -1.0]
    multi_j2k = read_image(dicom_file("emri_small_jpeg_2k_lossless.dcm"))
    np.testing.assert_array_equal(multi_j2k.array, read_image(dicom_file("emri_small.dcm")).array)


def test_monochrome1_is_inverted_so_high_is_bright():
    path = dicom_file("RG3_UNCR.dcm")  # CR, MONOCHROME1, 10 bits stored
    image = read_image(path)
    stored = pydicom.dcmread(path).pixel_array
    np.testing.assert_array_equal(image.array.astype(np.int64), 1023 - stored.astype(np.int64))
    assert image.modality == "XR"
    dicom = image.meta["dicom"]
    assert dicom["PhotometricInterpretation"] == "MONOCHROME1"
    assert dicom["inverted"] is True
    assert dicom["WindowCenter"] == 1023 - 550  # the window flips with the values
    assert dicom["WindowWidth"] == 1024
    np.testing.assert_array_equal(read_image(dicom_file("RG3_J2KR.dcm")).array, image.array)


def test_colour_ultrasound_ybr_becomes_rgb():
    compressed = read_image(dicom_file("US1_J2KR.dcm"))  # JPEG 2000, YBR_RCT
    plain = read_image(dicom_file("US1_UNCR.dcm"))  # RGB
    assert compressed.array.shape == (480, 640, 3)
    assert compressed.array.dtype == np.uint8
    np.testing.assert_array_equal(compressed.array, plain.array)
    np.testing.assert_array_equal(plain.array, pydicom.dcmread(dicom_file("US1_UNCR.dcm")).pixel_array)
    assert compressed.is_rgb and compressed.meta["rgb"] is True
    assert compressed.modality == "US"
    assert compressed.ndim == 2 and compressed.spacing == (1.0, 1.0)


def test_secondary_capture_colour_and_palette_colour():
    sc = read_image(dicom_file("SC_rgb.dcm"))
    assert sc.modality == "RGB" and sc.is_rgb and sc.array.shape == (100, 100, 3)
    path = dicom_file("OBXXXX1A.dcm")  # ultrasound, PALETTE COLOR
    palette = read_image(path)
    ds = pydicom.dcmread(path)
    expected = (apply_color_lut(ds.pixel_array, ds) >> 8).astype(np.uint8)
    np.testing.assert_array_equal(palette.array, expected)
    assert palette.is_rgb and palette.modality == "US"


def test_enhanced_ct_multiframe_is_a_sorted_volume():
    path = dicom_file("eCT_Supplemental.dcm")
    image = read_image(path)
    stored = pydicom.dcmread(path).pixel_array  # frames at z = -159 and -149
    assert image.array.shape == (2, 512, 512)
    # normal = row x column = (-1,0,0) x (0,1,0) = (0,0,-1): z = -149 comes first
    assert image.direction == (-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)
    assert image.origin == (99.5, -301.5, -149.0)
    assert image.spacing == (0.388672, 0.388672, 10.0)
    np.testing.assert_array_equal(image.array[0], stored[1].astype(np.int32) - 1024)
    np.testing.assert_array_equal(image.array[1], stored[0].astype(np.int32) - 1024)
    assert image.array[0, 256, 256] == 1022 - 1024
    assert image.modality == "CT"
    assert image.meta["dicom"]["WindowCenter"] == 49.0


def test_enhanced_mr_without_plane_information_stacks_frames():
    path = dicom_file("emri_small.dcm")
    image = read_image(path)
    np.testing.assert_array_equal(image.array, pydicom.dcmread(path).pixel_array)
    assert image.array.shape == (10, 64, 64)
    assert image.spacing == (1.0, 1.0, 1.2)  # SpacingBetweenSlices; no PixelSpacing in file
    assert any("pixel spacing" in note for note in image.meta["warnings"])
    assert image.modality == "MR"


@pytest.mark.parametrize("name, fragment", [
    ("liver.dcm", "Segmentation"),
    ("rtplan.dcm", "RT Plan"),
    ("examples_ybr_color.dcm", "30 colour frames"),
    ("MR_truncated.dcm", "pixel data"),
])
def test_dicom_objects_that_are_not_one_image_are_refused(name, fragment):
    path = dicom_file(name)
    with raises_naming(InputError, path, fragment):
        read_image(path)


def test_modality_argument_wins_and_is_checked():
    path = dicom_file("CT_small.dcm")
    assert read_image(path, modality="mr").modality == "MR"
    with pytest.raises(ArgumentError, match="CT, MR"):
        read_image(path, modality="banana")


# ---------------------------------------------------------------- DICOM series directories


def test_series_directory_sorted_along_normal_like_simpleitk():
    image = read_image(CT5N)
    assert image.array.shape == (5, 16, 16)
    assert image.spacing == (0.488281, 0.488281, 2.5)
    assert image.origin == (-72.199997, -143.0, -1.2375)  # lowest z first
    assert image.direction == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    assert image.meta["format"] == "DICOM series"
    assert image.path == str(CT5N)
    files = [Path(f).name for f in image.meta["dicom"]["files"]]
    assert files == ["3353", "3023", "2693", "2392", "2062"]
    uids = [pydicom.dcmread(CT5N / f, stop_before_pixels=True).SOPInstanceUID for f in files]
    assert image.meta["dicom"]["SOPInstanceUIDs"] == uids
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT5N)))
    itk = reader.Execute()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(itk), image.array)
    np.testing.assert_allclose(itk.GetSpacing(), image.spacing, atol=1e-6)
    np.testing.assert_allclose(itk.GetOrigin(), image.origin, atol=1e-6)
    np.testing.assert_allclose(itk.GetDirection(), image.direction, atol=1e-6)


@pytest.fixture()
def two_series_dir(tmp_path) -> Path:
    """CT5N under shuffled names, a second series, a structured report and a text file."""
    folder = tmp_path / "study"
    folder.mkdir()
    for i, source in enumerate(sorted(CT5N.iterdir())):  # 2062 (top slice) becomes z_4, ...
        shutil.copy(source, folder / f"{'zcaxb'[i]}_{4 - i}.dcm")
    sub = folder / "other"
    sub.mkdir()
    for source in sorted(CT2.iterdir()):
        shutil.copy(source, sub / source.name)
    shutil.copy(dicom_file("test-SR.dcm"), folder / "report.dcm")
    (folder / "README.txt").write_text("not an image\n")
    return folder


def test_series_directory_with_two_series_lists_them(two_series_dir):
    with raises_naming(InputError, two_series_dir, CT5N_UID, CT2_UID, "SmartScore - Gated 0.5 sec",
                       "Routine Brain", "5 image files", "4 image files", "series_uid"):
        read_image(two_series_dir)
    chosen = read_image(two_series_dir, series_uid=CT5N_UID)
    reference = read_image(CT5N)
    np.testing.assert_array_equal(chosen.array, reference.array)
    assert_same_grid(chosen, reference, atol=0)
    assert any("skipped" in note for note in chosen.meta["warnings"])
    with raises_naming(InputError, two_series_dir, "1.2.3.4", CT5N_UID):
        read_image(two_series_dir, series_uid="1.2.3.4")


def test_real_localiser_folder_series_choice_and_orientation_check():
    with raises_naming(InputError, MR2, "3 DICOM image series", "FAST LOCALIZER", "3 image files"):
        read_image(MR2)
    with raises_naming(InputError, MR2, "different orientations"):
        read_image(MR2, series_uid="1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.136")
    single = read_image(MR2, series_uid="1.3.6.1.4.1.5962.1.1.0.0.0.1196533885.18148.0.481")
    assert single.array.shape == (16, 16) and single.modality == "MR"


def test_series_with_missing_slices_warns_like_itk():
    with pytest.warns(UserWarning, match="non-uniform slice spacing"):
        image = read_image(CT2)
    assert image.array.shape == (4, 16, 16)
    assert image.spacing[2] == pytest.approx((105.519997 + 99.480003) / 3)  # as ITK: (last-first)/(n-1)
    assert image.origin[2] == pytest.approx(-99.480003)


def test_directory_without_dicom_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    shutil.copy(dicom_file("rtplan.dcm"), tmp_path / "plan.dcm")
    with raises_naming(InputError, tmp_path, "no DICOM image files"):
        read_image(tmp_path)


# ---------------------------------------------------------------- NIfTI, NRRD, MetaImage


def _nilearn_file(name: str) -> Path:
    import nilearn.datasets

    path = Path(nilearn.datasets.__file__).parent / "data" / name
    assert path.exists(), f"{path} missing: pip install nilearn"
    return path


@pytest.mark.parametrize("name", ["mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
                                  "image_10426.nii.gz"])
def test_nifti_geometry_is_nibabel_affine_in_lps(name):
    path = _nilearn_file(name)
    image = read_image(path)
    nifti = nib.load(path)
    lps = np.diag([-1.0, -1.0, 1.0]) @ nifti.affine[:3]  # RAS -> LPS
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    assert image.array.shape == nifti.shape[::-1]
    np.testing.assert_allclose(image.spacing, spacing, atol=1e-6)
    np.testing.assert_allclose(image.origin, lps[:, 3], atol=1e-6)
    np.testing.assert_allclose(np.reshape(image.direction, (3, 3)), lps[:, :3] / spacing, atol=1e-6)
    np.testing.assert_array_equal(image.array, np.asanyarray(nifti.dataobj).transpose(2, 1, 0))
    assert image.meta["format"] == "NIfTI" and image.modality is None


def test_mni_template_known_geometry():
    image = read_image(_nilearn_file("mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"))
    assert image.array.shape == (189, 233, 197)
    assert image.spacing == (1.0, 1.0, 1.0)
    assert image.origin == (98.0, 134.0, -72.0)  # affine translation (-98, -134, -72) in LPS
    assert image.direction == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def test_rotated_direction_cosines_from_itk_examples(itk_data):
    nhdr = read_image(itk_data / "BrainProtonDensitySliceBorder20DirectionPlus30.nhdr")
    # space directions: (0.866025,0.5) (-0.5,0.866025), the columns of the direction matrix
    length = math.hypot(0.866025, 0.5)
    assert nhdr.array.shape == (257, 221)
    np.testing.assert_allclose(nhdr.spacing, (length, length), atol=1e-12)
    np.testing.assert_allclose(nhdr.direction, np.array([0.866025, -0.5, 0.5, 0.866025]) / length,
                               atol=1e-12)
    mhd = read_image(itk_data / "BrainProtonDensitySliceBorder20DirectionPlus30.mhd")
    assert mhd.direction == (0.8660254, -0.5, 0.5, 0.8660254)
    assert mhd.spacing == (1.0, 1.0) and mhd.meta["format"] == "MetaImage"
    minus = read_image(itk_data / "BrainProtonDensitySliceBorder20DirectionMinus30.mhd")
    assert minus.direction == (0.8660254, 0.5, -0.5, 0.8660254)
    np.testing.assert_array_equal(nhdr.array, mhd.array)


def test_nifti_with_rotated_3d_direction(itk_data):
    image = read_image(itk_data / "KmeansTest_T1UCharRaw.nii.gz")
    assert image.array.shape == (62, 128, 128)
    assert image.spacing == (2.0, 2.0, 3.0)
    assert image.origin == (0.0, 254.0, 0.0)
    np.testing.assert_allclose(image.direction, (1, 0, 0, 0, 0, -1, 0, 1, 0), atol=1e-12)


def test_singleton_axes_are_squeezed_and_4d_refused(tmp_path):
    affine = np.diag([0.5, 0.75, 2.0, 1.0])
    affine[:3, 3] = (10.0, 20.0, 30.0)
    data = np.arange(4 * 5, dtype=np.int16).reshape(4, 5, 1)  # x=4, y=5, one slice
    nib.save(nib.Nifti1Image(data, affine), tmp_path / "slice.nii.gz")
    flat = read_image(tmp_path / "slice.nii.gz")
    assert flat.array.shape == (5, 4)
    np.testing.assert_array_equal(flat.array, data[:, :, 0].T)
    assert flat.spacing == (0.5, 0.75)
    assert flat.origin == (-10.0, -20.0)  # RAS (10, 20) is LPS (-10, -20)
    assert flat.direction == (-1.0, 0.0, 0.0, -1.0)

    one_frame = np.zeros((4, 5, 6, 1), dtype=np.uint8)
    nib.save(nib.Nifti1Image(one_frame, affine), tmp_path / "one_frame.nii.gz")
    assert read_image(tmp_path / "one_frame.nii.gz").array.shape == (6, 5, 4)

    nib.save(nib.Nifti1Image(np.zeros((4, 5, 6, 2), dtype=np.uint8), affine), tmp_path / "dwi.nii.gz")
    with raises_naming(InputError, tmp_path / "dwi.nii.gz", "4D", "NIfTI (.nii, .nii.gz)"):
        read_image(tmp_path / "dwi.nii.gz")


def test_picture_formats_rgba_jpeg_and_16_bit(itk_data, tmp_path):
    rgba = read_image(itk_data / "FivePointsDilated.png")  # RGBA: alpha is dropped
    assert rgba.array.shape == (512, 512, 3) and rgba.is_rgb and rgba.modality == "RGB"

    from PIL import Image as PILImage

    ultrasound = pydicom.dcmread(dicom_file("US1_UNCR.dcm")).pixel_array
    PILImage.fromarray(ultrasound).save(tmp_path / "us.jpg", quality=95)
    colour = read_image(tmp_path / "us.jpg")
    assert colour.array.shape == (480, 640, 3) and colour.is_rgb and colour.modality == "RGB"
    assert colour.meta["format"] == "JPEG"
    assert np.abs(colour.array.astype(int) - ultrasound).mean() < 3  # lossy, but close
    PILImage.fromarray(ultrasound[..., 0]).save(tmp_path / "grey.jpeg", quality=95)
    grey = read_image(tmp_path / "grey.jpeg", modality="US")
    assert grey.array.shape == (480, 640) and not grey.is_rgb and grey.modality == "US"

    frame = read_image(dicom_file("emri_small.dcm")).array[5]  # uint16 MR slice
    sixteen = read_image(write_image(Image.from_array(frame), tmp_path / "mr16.png"))
    assert sixteen.array.dtype == np.uint16
    np.testing.assert_array_equal(sixteen.array, frame)


def test_dicomdir_index_file_points_to_the_directory():
    path = PYDICOM_DIRS / "DICOMDIR"
    with raises_naming(InputError, path, "DICOMDIR", "directory"):
        read_image(path)


def test_palette_png_label_map_gives_indices(itk_data, tmp_path):
    from PIL import Image as PILImage

    labels = read_label_map(itk_data / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz").array[30]
    picture = PILImage.fromarray(labels, mode="P")
    picture.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255, 255, 255, 0, 0, 255, 255, 255, 0, 255])
    picture.save(tmp_path / "labels.png")
    assert read_image(tmp_path / "labels.png").is_rgb  # shown as colours...
    np.testing.assert_array_equal(read_label_map(tmp_path / "labels.png").array, labels)  # ...read as labels


# ---------------------------------------------------------------- writing label maps


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".mhd", ".nii"])
def test_label_map_round_trip_3d_keeps_geometry_and_values(itk_data, tmp_path, ext):
    reference = read_image(itk_data / "KmeansTest_T1UCharRaw.nii.gz")
    labels = read_label_map(itk_data / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz")
    assert labels.array.dtype == np.uint8
    assert sorted(np.unique(labels.array)) == [0, 1, 2, 3, 4, 5, 6]
    out = write_label_map(labels.array, reference, tmp_path / f"seg{ext}")
    assert out == tmp_path / f"seg{ext}"
    back = read_label_map(out)
    assert back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, labels.array)
    assert_same_grid(back, reference)
    leftovers = sorted(p.name for p in tmp_path.iterdir())
    assert leftovers == (["seg.mhd", "seg.zraw"] if ext == ".mhd" else [f"seg{ext}"])


@pytest.mark.parametrize("ext", [".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_label_map_round_trip_rotated_2d(itk_data, tmp_path, ext):
    reference = read_image(itk_data / "BrainProtonDensitySliceBorder20DirectionPlus30.mhd")
    labels = np.zeros(reference.shape, dtype=np.int64)
    labels[reference.array > 100] = 1
    labels[reference.array > 200] = 300  # needs uint16
    out = write_label_map(labels, reference, tmp_path / f"seg{ext}")
    back = read_label_map(out)
    assert back.ndim == 2 and back.array.dtype == np.uint16
    np.testing.assert_array_equal(back.array, labels)
    assert_same_grid(back, reference)


@pytest.mark.parametrize("ext", [".png", ".tif"])
def test_label_map_round_trip_picture_formats(itk_data, tmp_path, ext):
    reference = read_image(itk_data / "BrainProtonDensitySliceBorder20.png")
    assert reference.is_rgb and reference.modality == "RGB"  # grey stored as RGB stays RGB
    labels = (reference.array[..., 0] > 90).astype(bool)
    out = write_label_map(labels, reference, tmp_path / f"mask{ext}")
    back = read_label_map(out)
    np.testing.assert_array_equal(back.array, labels.astype(np.uint8))
    assert_same_grid(back, reference)
    assert back.meta["format"] == ("PNG" if ext == ".png" else "TIFF")


def test_label_map_from_dicom_series_and_sidecar(tmp_path):
    reference = read_image(CT5N)
    labels = (reference.array > 0).astype(np.uint8)
    facts = {"labels": {"1": "tissue"}, "series": reference.meta["dicom"]["SeriesInstanceUID"],
             "volume_ml": np.float32(1.5), "voxels": np.int64(labels.sum())}
    out = write_label_map(labels, reference, tmp_path / "seg.nii.gz", sidecar=facts)
    side = tmp_path / "seg.json"
    assert sidecar_path(out) == side
    assert json.loads(side.read_text()) == {"labels": {"1": "tissue"}, "series": CT5N_UID,
                                            "volume_ml": 1.5, "voxels": int(labels.sum())}
    assert_same_grid(read_label_map(out), reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.json", "seg.nii.gz"]


@pytest.mark.parametrize("name, expected", [
    ("seg.nii.gz", "seg.json"), ("x.png", "x.json"), ("case.01.nrrd", "case.01.json"),
    ("a.mhd", "a.json"), ("labels", "labels.json"), ("scan.TIF", "scan.json"),
])
def test_sidecar_path(name, expected):
    assert sidecar_path(Path("out") / name) == Path("out") / expected


def test_failed_write_leaves_nothing_and_keeps_old_file(itk_data, tmp_path, monkeypatch):
    reference = read_image(itk_data / "KmeansTest_T1UCharRaw.nii.gz")
    labels = np.ones(reference.shape, dtype=np.uint8)
    target = tmp_path / "seg.nii.gz"
    target.write_bytes(b"previous result")

    def half_write(image, filename, *args, **kwargs):
        Path(filename).write_bytes(b"\x1f\x8b partial")  # the writer got halfway, then died
        raise RuntimeError("Exception thrown in SimpleITK WriteImage: ITK ERROR: disk full")

    monkeypatch.setattr(sitk, "WriteImage", half_write)
    with raises_naming(ArgumentError, target, "disk full"):
        write_label_map(labels, reference, target, sidecar={"a": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]
    assert target.read_bytes() == b"previous result"
    with pytest.raises(ArgumentError):
        write_label_map(labels, reference, tmp_path / "pair.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.nii.gz"]


def test_unserialisable_sidecar_writes_nothing(itk_data, tmp_path):
    reference = read_image(itk_data / "KmeansTest_T1UCharRaw.nii.gz")
    with raises_naming(ArgumentError, tmp_path / "seg.json", "serialisable"):
        write_label_map(np.zeros(reference.shape, np.uint8), reference, tmp_path / "seg.nii.gz",
                        sidecar={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def test_atomic_output_renames_on_success_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "report.nii.gz"
    with atomic_output(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".nii.gz") and tmp != target
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(ValueError):
        with atomic_output(target) as tmp:
            tmp.write_text("half")
            raise ValueError("boom")
    assert target.read_text() == "done"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.nii.gz"]
    with pytest.raises(ValueError):
        with atomic_file_set(tmp_path / "x.mhd") as tmp:
            tmp.with_suffix(".zraw").write_text("data")
            raise ValueError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.nii.gz"]


def test_never_overwrites_the_input(tmp_path):
    source = tmp_path / "mni.nii.gz"
    shutil.copy(_nilearn_file("image_10426.nii.gz"), source)
    before = source.read_bytes()
    reference = read_image(source)
    labels = np.zeros(reference.shape, dtype=np.uint8)
    with raises_naming(ArgumentError, source, "input image"):
        write_label_map(labels, reference, source)
    with raises_naming(ArgumentError, source, "input image"):
        write_label_map(labels, reference, tmp_path / "sub" / ".." / "mni.nii.gz")
    assert source.read_bytes() == before

    series = tmp_path / "series"
    shutil.copytree(CT5N, series)
    volume = read_image(series)
    inside = series / "seg.nii.gz"
    with raises_naming(ArgumentError, inside, "DICOM directory"):
        write_label_map(np.zeros(volume.shape, np.uint8), volume, inside)
    assert not inside.exists()

    existing = tmp_path / "seg.nrrd"
    write_label_map(labels, reference, existing)
    with raises_naming(ArgumentError, existing, "exists"):
        write_label_map(labels, reference, existing, overwrite=False)


def test_label_map_argument_errors(itk_data, tmp_path):
    reference = read_image(itk_data / "KmeansTest_T1UCharRaw.nii.gz")
    with raises_naming(ArgumentError, tmp_path / "a.nii.gz", "(62, 128, 128)", "(128, 128, 62)"):
        write_label_map(np.zeros((128, 128, 62), np.uint8), reference, tmp_path / "a.nii.gz")
    with raises_naming(ArgumentError, tmp_path / "a.nii.gz", "float32"):
        write_label_map(np.zeros(reference.shape, np.float32), reference, tmp_path / "a.nii.gz")
    with raises_naming(ArgumentError, tmp_path / "a.jpg", ".nii.gz"):
        write_label_map(np.zeros(reference.shape, np.uint8), reference, tmp_path / "a.jpg")
    with raises_naming(ArgumentError, tmp_path / "a.png", "2D"):
        write_label_map(np.zeros(reference.shape, np.uint8), reference, tmp_path / "a.png")
    with raises_naming(ArgumentError, tmp_path / "a.nii.gz", "65535"):
        write_label_map(np.full(reference.shape, 70000), reference, tmp_path / "a.nii.gz")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- write_image


def test_write_image_round_trips(itk_data, tmp_path):
    volume = read_image(itk_data / "KmeansTest_T1UCharRaw.nii.gz")
    for ext in (".mha", ".nrrd", ".nii.gz"):
        back = read_image(write_image(volume, tmp_path / f"vol{ext}"))
        np.testing.assert_array_equal(back.array, volume.array)
        assert back.array.dtype == np.int16
        assert_same_grid(back, volume)
    picture = read_image(itk_data / "BrainT1Slice.png")
    back = read_image(write_image(picture, tmp_path / "copy.png"))
    assert back.is_rgb
    np.testing.assert_array_equal(back.array, picture.array)
    with raises_naming(ArgumentError, tmp_path / "f.png", "int16"):
        write_image(Image.from_array(np.zeros((4, 4), np.int16)), tmp_path / "f.png")


# ---------------------------------------------------------------- bad inputs


def test_missing_file(tmp_path):
    missing = tmp_path / "nothing.nii.gz"
    with raises_naming(InputError, missing, "no such file", SUPPORTED_INPUT_FORMATS):
        read_image(missing)
    with raises_naming(InputError, missing, "no such file"):
        read_label_map(missing)


def test_unsupported_extension(itk_data, tmp_path):
    odd = tmp_path / "scan.xyz"
    shutil.copy(itk_data / "BrainT1Slice.png", odd)
    with raises_naming(InputError, odd, "unsupported", "NIfTI (.nii, .nii.gz)", "DICOM"):
        read_image(odd)


@pytest.mark.parametrize("source, name", [
    ("nilearn:image_10426.nii.gz", "cut.nii.gz"),
    ("pydicom:CT_small.dcm", "cut.dcm"),
    ("itk:BrainT1Slice.png", "cut.png"),
    ("itk:BrainProtonDensity3Slices.mha", "cut.mha"),
])
def test_truncated_files(itk_data, tmp_path, source, name):
    kind, file_name = source.split(":")
    original = {"nilearn": _nilearn_file, "pydicom": dicom_file,
                "itk": lambda n: itk_data / n}[kind](file_name)
    content = Path(original).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(content[: len(content) // 2])
    with raises_naming(InputError, cut):
        read_image(cut)


def test_garbage_with_image_extension(tmp_path):
    fake = tmp_path / "fake.nii.gz"
    fake.write_text("this is not an image")
    with raises_naming(InputError, fake, "NIfTI"):
        read_image(fake)


def test_non_integer_label_map_refused(itk_data):
    path = itk_data / "CorpusCallosumMeanShape.mha"  # float signed-distance map
    with raises_naming(InputError, path, "non-integer"):
        read_label_map(path)


def test_multicomponent_images_refused(itk_data):
    path = itk_data / "itkBrainSliceComplex.mha"
    with raises_naming(InputError, path, "2-component"):
        read_image(path)


def test_supported_format_strings_name_the_formats():
    for name in ("DICOM", "NIfTI", "NRRD", "MetaImage", "PNG", "JPEG", "TIFF"):
        assert name in SUPPORTED_INPUT_FORMATS
    for ext in (".nii.gz", ".nrrd", ".mha", ".mhd", ".png", ".tif"):
        assert ext in SUPPORTED_OUTPUT_FORMATS


def test_one_channel_of_a_4d_decathlon_style_file(tmp_path):
    """Decathlon BrainTumour / Prostate images are 4D (x, y, z, sequence): read one sequence."""
    data = np.arange(4 * 5 * 6 * 3, dtype=np.int16).reshape(4, 5, 6, 3)
    affine = np.diag([1.5, 2.0, 3.0, 1.0])
    affine[:3, 3] = (1.0, 2.0, 3.0)
    path = tmp_path / "BRATS_001.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), path)
    for channel in range(3):
        image = read_image(path, channel=channel)
        np.testing.assert_array_equal(image.array, data[..., channel].transpose(2, 1, 0))
        assert image.spacing == (1.5, 2.0, 3.0) and image.origin == (-1.0, -2.0, 3.0)  # RAS -> LPS
    with pytest.raises(InputError, match="channels are 0..2"):
        read_image(path, channel=3)
    with pytest.raises(InputError, match="pick one with channel="):
        read_image(path)
