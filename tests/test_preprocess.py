"""Intensity normalisation: exact values on hand-made arrays and on a real CT slice."""

from __future__ import annotations

import numpy as np
import pytest

from medsam3.errors import ArgumentError
from medsam3.image import MODALITIES, Image
from medsam3.preprocess import (
    CT_DEFAULT_WINDOW,
    CT_WINDOWS,
    normalize_intensity,
    parse_window,
)


def ct(values, **kw):
    return Image.from_array(np.asarray(values, dtype=np.int16), modality="CT", **kw)


# --- parse_window -------------------------------------------------------------------------

@pytest.mark.parametrize(
    "value, expected",
    [
        ("soft-tissue", (40.0, 400.0)),
        ("Soft_Tissue", (40.0, 400.0)),
        ("soft tissue", (40.0, 400.0)),
        ("LUNG", (-600.0, 1500.0)),
        ("bone", (400.0, 1800.0)),
        ("brain", (40.0, 80.0)),
        ("40,400", (40.0, 400.0)),
        ("-600,1500", (-600.0, 1500.0)),
        (" 35.5 , 350 ", (35.5, 350.0)),
        ((40, 400), (40.0, 400.0)),
        ([-600, 1500.0], (-600.0, 1500.0)),
        (None, None),
    ],
)
def test_parse_window_accepts_presets_and_numbers(value, expected):
    assert parse_window(value) == expected


def test_presets_are_standard_radiology_windows():
    for name in ("soft-tissue", "lung", "bone", "brain"):
        assert name in CT_WINDOWS
    assert CT_WINDOWS[CT_DEFAULT_WINDOW] == (40.0, 400.0)


@pytest.mark.parametrize(
    "value", ["liverish", "40", "40,400,3", "40;400", "a,b", "40,0", "40,-10", "nan,400",
              "40,inf", (40,), (40, 0), "", ("x", 1)]
)
def test_parse_window_rejects_bad_values_with_a_helpful_message(value):
    with pytest.raises(ArgumentError) as info:
        parse_window(value)
    message = str(info.value)
    assert repr(value) in message
    assert "soft-tissue" in message and "lung" in message  # the presets
    assert "'40,400'" in message and "width > 0" in message  # the L,W form


# --- CT windowing -------------------------------------------------------------------------

def test_window_edges_map_to_0_and_1_middle_to_half_and_outside_clips():
    # soft tissue L=40 W=400 -> [-160, 240]
    image = ct([[-160, 240, 40], [-1000, 3000, 140]])
    out = normalize_intensity(image, window="soft-tissue")
    assert out.dtype == np.float32 and out.shape == (2, 3)
    np.testing.assert_array_equal(out, np.float32([[0.0, 1.0, 0.5], [0.0, 1.0, 0.75]]))


def test_numeric_window_and_lung_preset():
    image = ct([[-1350, 150, -600, -975]])  # lung L=-600 W=1500 -> [-1350, 150]
    expected = np.float32([[0.0, 1.0, 0.5, 0.25]])
    np.testing.assert_array_equal(normalize_intensity(image, window="lung"), expected)
    np.testing.assert_array_equal(normalize_intensity(image, window="-600,1500"), expected)
    np.testing.assert_array_equal(normalize_intensity(image, window=(-600, 1500)), expected)


def test_ct_without_window_uses_the_fixed_soft_tissue_default():
    image = ct([[-160, 40, 240, -1000]])
    np.testing.assert_array_equal(normalize_intensity(image), np.float32([[0, 0.5, 1, 0]]))
    # a DICOM display window in the metadata does not change the default
    image.meta["dicom"] = {"WindowCenter": -600, "WindowWidth": 1500}
    np.testing.assert_array_equal(normalize_intensity(image), np.float32([[0, 0.5, 1, 0]]))


def test_modality_argument_wins_over_image_modality():
    mr_labelled = Image.from_array(np.int16([[-160, 40, 240, 1000]]), modality="MR")
    np.testing.assert_array_equal(
        normalize_intensity(mr_labelled, modality="ct"), np.float32([[0, 0.5, 1, 1]])
    )
    ct_labelled = ct([[0, 10, 20]])
    np.testing.assert_array_equal(
        normalize_intensity(ct_labelled, modality="XR"), np.float32([[0, 0.5, 1]])
    )


def test_window_on_a_non_ct_image_is_applied_in_its_own_units():
    image = Image.from_array(np.float32([[0, 50, 100, 200]]), modality="MR")
    np.testing.assert_array_equal(
        normalize_intensity(image, window="100,100"), np.float32([[0, 0.0, 0.5, 1.0]])
    )


def test_unknown_modality_lists_the_known_ones():
    image = Image.from_array(np.zeros((4, 4)))
    with pytest.raises(ArgumentError) as info:
        normalize_intensity(image, modality="MRI")
    assert "'MRI'" in str(info.value)
    for name in MODALITIES:
        assert name in str(info.value)
    image.modality = "SPECT"
    with pytest.raises(ArgumentError, match="SPECT"):
        normalize_intensity(image)


def test_bad_window_raises():
    with pytest.raises(ArgumentError):
        normalize_intensity(ct([[0, 1]]), window="fat")


# --- percentile and min-max rules ---------------------------------------------------------

def test_mr_percentiles_are_computed_over_the_whole_volume_not_per_slice():
    # background zeros, slice 0 holds 1..100, slice 1 holds 101..200 (plus zeros)
    volume = np.zeros((2, 10, 20), dtype=np.float32)
    volume[0, :5, :20] = np.arange(1, 101).reshape(5, 20)
    volume[1, :5, :20] = np.arange(101, 201).reshape(5, 20)
    out = normalize_intensity(Image.from_array(volume, modality="MR"))
    nonzero = np.arange(1, 201, dtype=np.float64)
    lo, hi = np.percentile(nonzero, [0.5, 99.5])  # 1.995 and 199.005
    expected = np.clip((volume - lo) / (hi - lo), 0, 1)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-6)
    # one scale for both slices: slice 0's brightest voxel (100) sits in the middle of the
    # range, not at 1 as per-slice scaling would put it
    assert out.shape == (2, 10, 20)
    assert out[0, 0, 0] == 0.0 and out[1, 4, 19] == 1.0
    assert out[0, 4, 19] == pytest.approx((100 - lo) / (hi - lo), abs=1e-6)  # 0.4975...
    assert out[1, 0, 0] == pytest.approx((101 - lo) / (hi - lo), abs=1e-6)
    # background stays 0
    assert np.all(out[:, 5:, :] == 0)


def test_percentiles_ignore_zero_background():
    image = np.zeros((100, 100), dtype=np.uint16)
    image[:10, :10] = np.arange(1000, 1100).reshape(10, 10)
    out = normalize_intensity(Image.from_array(image))  # unknown modality -> like MR
    lo, hi = np.percentile(np.arange(1000, 1100), [0.5, 99.5])
    np.testing.assert_allclose(out[5, 5], (1055 - lo) / (hi - lo), atol=1e-6)
    assert out[50, 50] == 0.0


def test_two_level_image_falls_back_to_min_max():
    image = np.zeros((4, 4), dtype=np.uint8)
    image[1:3, 1:3] = 7
    out = normalize_intensity(Image.from_array(image, modality="PT"))
    np.testing.assert_array_equal(out, (image == 7).astype(np.float32))


@pytest.mark.parametrize("modality", ["XR", "US"])
def test_xr_and_us_use_the_range_actually_present(modality):
    image = np.uint16([[1000, 1500], [2000, 3000]])  # 12-bit data in a 16-bit container
    out = normalize_intensity(Image.from_array(image, modality=modality))
    np.testing.assert_array_equal(out, np.float32([[0, 0.25], [0.5, 1.0]]))


@pytest.mark.parametrize("modality", ["CT", "MR", "PT", "XR", "US", "OTHER", None])
@pytest.mark.parametrize("value", [0, 5, -1000])
def test_constant_images_give_zeros(modality, value):
    image = Image.from_array(np.full((3, 4, 5), value, dtype=np.int16), modality=modality)
    out = normalize_intensity(image)
    assert out.shape == (3, 4, 5) and out.dtype == np.float32
    assert not np.isnan(out).any()
    if modality != "CT":  # CT is windowed, not min-max: -1000 and 0 HU are meaningful
        np.testing.assert_array_equal(out, 0.0)


def test_nan_pixels_become_zero():
    image = np.float32([[np.nan, 1.0, 2.0, 3.0]])
    out = normalize_intensity(Image.from_array(image, modality="XR"))
    np.testing.assert_array_equal(out, np.float32([[0, 0, 0.5, 1]]))


# --- RGB ----------------------------------------------------------------------------------

def test_rgb_uint8_is_divided_by_255():
    rgb = np.zeros((2, 2, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 51)
    rgb[1, 1] = (102, 204, 255)
    out = normalize_intensity(Image.from_array(rgb, rgb=True))
    assert out.shape == (2, 2, 3) and out.dtype == np.float32
    np.testing.assert_allclose(out, rgb / 255.0, atol=1e-7)


def test_rgba_drops_alpha_and_uint16_uses_its_range():
    rgba = np.zeros((2, 2, 4), dtype=np.uint16)
    rgba[0, 0] = (65535, 0, 0, 65535)
    out = normalize_intensity(Image.from_array(rgba, rgb=True))
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [1, 0, 0])


def test_float_rgb_in_unit_range_passes_through():
    rgb = np.random.default_rng(0).random((3, 3, 3)).astype(np.float32)
    out = normalize_intensity(Image.from_array(rgb, rgb=True))
    np.testing.assert_array_equal(out, rgb)


def test_grey_image_declared_rgb_is_scaled_by_its_type():
    out = normalize_intensity(Image.from_array(np.uint8([[0, 51, 255]]), modality="RGB"))
    np.testing.assert_allclose(out, [[0, 0.2, 1]], atol=1e-7)


# --- a real CT slice ----------------------------------------------------------------------

def test_real_ct_slice_soft_tissue_window():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    assert float(ds.RescaleSlope) == 1 and float(ds.RescaleIntercept) == -1024
    hu = ds.pixel_array.astype(np.int32) * 1 - 1024
    image = Image.from_array(hu.astype(np.int16), modality="CT",
                             spacing=[float(s) for s in ds.PixelSpacing])
    out = normalize_intensity(image, window="soft-tissue")
    assert out.shape == (128, 128) and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    # pixels checked by hand: HU = stored - 1024, value = (HU + 160) / 400, clipped
    assert ds.pixel_array[32, 32] == 487  # -537 HU (air/lung), below -160 -> 0
    assert out[32, 32] == 0.0
    assert ds.pixel_array[10, 50] == 1447  # 423 HU (bone), above 240 -> 1
    assert out[10, 50] == 1.0
    assert ds.pixel_array[60, 60] == 1013  # -11 HU -> 149 / 400
    assert out[60, 60] == pytest.approx(0.3725, abs=1e-6)
    assert ds.pixel_array[70, 40] == 1055  # 31 HU -> 191 / 400
    assert out[70, 40] == pytest.approx(0.4775, abs=1e-6)
    # the default CT rule is this same window
    np.testing.assert_array_equal(normalize_intensity(image), out)


def test_real_ct_read_with_medsam3_io_uses_the_default_window():
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from medsam3.io import read_image

    image = read_image(get_testdata_file("CT_small.dcm"))
    assert image.modality == "CT"
    out = normalize_intensity(image)  # modality from the file, default soft-tissue window
    assert out.shape == (128, 128) and out.dtype == np.float32
    assert out[32, 32] == 0.0 and out[10, 50] == 1.0
    assert out[60, 60] == pytest.approx(0.3725, abs=1e-6)  # -11 HU
    assert out[70, 40] == pytest.approx(0.4775, abs=1e-6)  # 31 HU


def test_context_planes_put_the_neighbours_on_red_and_blue():
    from medsam3.preprocess import context_offset, context_planes

    stack = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((6, 4, 5), np.float32)
    assert context_planes(stack, 2, 0).shape == (4, 5)  # no context: the grey plane itself
    planes = context_planes(stack, 2, 1)
    assert planes.shape == (4, 5, 3) and planes[0, 0].tolist() == [1, 2, 3]
    assert context_planes(stack, 2, 1, swap=True)[0, 0].tolist() == [3, 2, 1]
    assert context_planes(stack, 0, 2)[0, 0].tolist() == [0, 0, 2]  # the ends stand in beyond the stack
    assert context_planes(stack, 5, 2)[0, 0].tolist() == [3, 5, 5]
    assert context_offset(0, 2.5) == 0
    assert [context_offset(4, s) for s in (1.0, 2.0, 2.5, 3.0, 5.0, 12.0)] == [4, 2, 2, 1, 1, 1]
    with pytest.raises(ArgumentError, match="slice spacing"):
        context_offset(4, 0.0)
