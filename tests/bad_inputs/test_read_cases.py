"""Bad inputs on the reading side: the table (see :mod:`bad_inputs.harness`).

Size bombs, channel counts, sheared grids, NaN volumes, empty and random files, duplicated
DICOM instances, alpha channels, manifests naming missing files. CLI rows run
``medsam3 segment`` and check that nothing is written; ``call`` rows use the Python API.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
from bad_inputs import read_inputs as ri
from bad_inputs.harness import Case, params

SEGMENT = ("segment", "-i", "{input}", "-o", "{tmp}/out.nii.gz", "-p", "brain",
           "--model", "{model}", "--device", "cpu")
OUT = ("{tmp}/out.nii.gz", "{tmp}/out.json")


def _one(name, make):
    """A builder writing one input file ``name`` with ``make(path)``."""
    def build(tmp, ctx):
        path = tmp / name
        make(path)
        return {"input": str(path)}
    return build


def _read(ctx, **kwargs):
    from medsam3.io import read_image

    return read_image(ctx["input"], **kwargs)


def _read_warned(ctx, **kwargs):
    """Read ``{input}``; keep the warnings in ``ctx["warnings"]``."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        image = _read(ctx, **kwargs)
    ctx["warnings"] = [str(w.message) for w in caught]
    return image


def _warned(*fragments):
    def check(ctx):
        text = " ".join(ctx["warnings"])
        for fragment in fragments:
            assert fragment.lower() in text.lower(), f"{fragment!r} not warned: {ctx['warnings']}"
    return check


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(7).bytes(4096))


def _empty(path):
    path.write_bytes(b"")


def _volume(seed=0):
    return np.random.default_rng(seed).normal(100, 20, (6, 20, 24)).astype(np.float32)


# ---------------------------------------------------------------------- builders
def _png_bomb(path):
    path.write_bytes(ri.png_bomb_bytes())


def _mha_bomb(path):
    ri.write_itk(path, _volume())
    ri.edit_header(path, "DimSize = 24 20 6", "DimSize = 3000 3000 3000")


def _nrrd_bomb(path):
    ri.write_itk(path, _volume())
    ri.edit_header(path, "sizes: 24 20 6", "sizes: 3000 3000 3000")


def _mha_ndims_huge(path):
    ri.write_itk(path, _volume())
    ri.edit_header(path, "NDims = 3", "NDims = 1e308")  # MetaIO crashed the process (segfault)


def _mha_dimsize_short(path):
    ri.write_itk(path, _volume())
    ri.edit_header(path, "DimSize = 24 20 6", "DimSize = 24 20")


def _tiff_bad_length_tag(path):
    """Fuzz case 1162: the ImageLength entry's count overwritten; ITK then read 0 rows."""
    import struct

    from PIL import Image as PILImage

    with PILImage.open(ri.ITK_DATA / "BrainProtonDensitySlice.png") as picture:
        picture.save(path)
    data = bytearray(path.read_bytes())
    assert struct.unpack_from("<IH", data, 4)[0] == 8 and struct.unpack_from("<H", data, 22)[0] == 257
    data[26:30] = bytes([115, 104, 229, 129])
    path.write_bytes(bytes(data))


def _sheared_mhd(path):
    ri.write_itk(path, _volume(), spacing=(1.5, 1.5, 3.0))
    ri.edit_header(path, "TransformMatrix = 1 0 0 0 1 0 0 0 1", "TransformMatrix = 1 0.5 0 0 1 0 0 0 1")


def _sheared_mha(path):
    ri.write_itk(path, _volume())
    ri.edit_header(path, "TransformMatrix = 1 0 0 0 1 0 0 0 1", "TransformMatrix = 1 0 0 0 1 0 0.2 0 1")


def _sheared_nrrd(path):
    ri.write_itk(path, _volume(), spacing=(1.5, 1.5, 3.0))
    ri.edit_header(path, "space directions: (1.5,0,0) (0,1.5,0) (0,0,3)",
                   "space directions: (1.5,0,0) (0.75,1.5,0) (0,0,3)")


def _sheared_nifti(path):
    affine = np.eye(4)
    affine[0, 1] = 0.5
    ri.write_nifti(path, _volume(), affine)


def _all_nan_nifti(path):
    ri.write_nifti(path, np.full((24, 20, 6), np.nan, np.float32))


def _all_nan_nrrd(path):
    ri.write_itk(path, np.full((6, 20, 24), np.nan, np.float32))


def _inf_and_nan_mha(path):
    data = np.full((6, 20, 24), np.nan, np.float32)
    data[::2] = np.inf
    ri.write_itk(path, data)


def _half_nan_nifti(path):
    data = np.transpose(_volume(), (2, 1, 0)).copy()  # nibabel order x, y, z
    data[:, :, :2] = np.nan
    ri.write_nifti(path, data)


def _two_channel_tiff(path):
    ri.write_tiff(path, samples=2)


def _five_channel_tiff(path):
    ri.write_tiff(path, samples=5)


def _cmyk_tiff(path):
    ri.write_tiff(path, samples=4, photometric="separated")


def _grey_alpha_tiff(path):
    np.save(path.with_suffix(".npy"), ri.write_tiff(path, samples=2, extrasamples=["unassalpha"]))


def _grey_alpha_png(path):
    ri.write_png(path, mode="LA")


def _dicom_series_dup_copy(tmp, ctx):
    paths = ri.dicom_series(tmp / "series")
    ri.copy(paths[1], tmp / "series" / "slice1_copy.dcm")
    return {"input": str(tmp / "series")}


def _series_with_edited_copy(tmp, index, name, **tags):
    """A real DICOM series plus a copy of slice ``index`` with some tags changed."""
    import pydicom

    paths = ri.dicom_series(tmp / "series")
    ds = pydicom.dcmread(paths[index])
    for tag, value in tags.items():
        setattr(ds, tag, value)
    ds.save_as(tmp / "series" / name)
    return {"input": str(tmp / "series")}


def _dicom_series_dup_uid(tmp, ctx):  # same SOPInstanceUID, other content
    return _series_with_edited_copy(tmp, 1, "slice1_edited.dcm", PatientName="Someone^Else")


def _dicom_series_same_position(tmp, ctx):  # another instance at the same position
    return _series_with_edited_copy(tmp, 2, "slice2_again.dcm", SOPInstanceUID="1.2.826.0.1.3680043.8.498.99")


def _dicom_series_bomb(tmp, ctx):
    import pydicom

    paths = ri.dicom_series(tmp / "series", n=2)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.Rows, ds.Columns = 20000, 20000
        ds.save_as(path)
    return {"input": str(tmp / "series")}


def _manifest(tmp, ctx, missing=1):
    """A manifest of 6 PNG items of which the last ``missing`` image files are deleted."""
    from medsam3.data.manifest import ManifestItem, write_manifest

    items = []
    for i in range(6):
        ri.write_png(tmp / f"img{i}.png", (32, 32), seed=i)
        label = np.zeros((32, 32), np.uint8)
        label[8:20, 8:20] = 1
        from PIL import Image as PILImage

        PILImage.fromarray(label).save(tmp / f"lab{i}.png")
        items.append(ManifestItem(id=f"case{i}", dataset="toy", split="train", image=f"img{i}.png",
                                  label=f"lab{i}.png", label_format="map", labels={"1": "square"},
                                  modality=None, dim=2, shape=[32, 32], spacing=[1.0, 1.0]))
    write_manifest(items, tmp / "m.jsonl", root=tmp)
    for i in range(6 - missing, 6):
        (tmp / f"img{i}.png").unlink()
    config = tmp / "train.yaml"
    config.write_text(f"model: {ctx['model']}\noutput_dir: {tmp}/run\ndata:\n  manifest: {tmp}/m.jsonl\n"
                      "  val_split: null\n  batch_size: 1\n  num_workers: 0\n"
                      "train:\n  max_steps: 1\n  mixed_precision: 'no'\n")
    return {"manifest": str(tmp / "m.jsonl"), "config": str(config)}


def _dataset(ctx):
    from medsam3.data import PromptSegmentationDataset

    return PromptSegmentationDataset(ctx["manifest"], 64)


def _with_env(value, call):
    def run(ctx):
        old = os.environ.get("MEDSAM3_MAX_PIXELS")
        os.environ["MEDSAM3_MAX_PIXELS"] = value
        try:
            return call(ctx)
        finally:
            if old is None:
                del os.environ["MEDSAM3_MAX_PIXELS"]
            else:
                os.environ["MEDSAM3_MAX_PIXELS"] = old
    return run


def _check_grey_alpha_tiff(ctx):
    expected = np.load(ctx["input"].replace(".tif", ".npy"))[..., 0]
    assert np.array_equal(ctx["result"].array, expected)
    _warned("ga.tif", "alpha")(ctx)


def _check_half_nan(ctx):
    image = ctx["result"]
    nan = np.isnan(image.array)
    assert nan[:2].all() and not nan[2:].any(), "NaN must stay where the file has them (ITK reads them as 0)"
    _warned("NaN", "darkest")(ctx)


def _check_rotated(ctx):
    direction = np.array(ctx["result"].direction).reshape(2, 2)
    assert np.allclose(direction, [[np.cos(np.pi / 6), -np.sin(np.pi / 6)], [np.sin(np.pi / 6), np.cos(np.pi / 6)]],
                       atol=1e-3)


def _check_dup_copy(ctx):
    assert ctx["result"].shape == (3, 128, 128)
    _warned("duplicate", "slice1_copy.dcm", "slice1.dcm")(ctx)


LIMIT = ("MEDSAM3_MAX_PIXELS",)

CASES = [
    # ---- item 6: size bombs, refused from the header before decoding
    Case("png-bomb-30000x30000", build=_one("bomb.png", _png_bomb), argv=SEGMENT,
         message=("bomb.png", "30000 x 30000", "536,870,912") + LIMIT, absent=OUT),
    Case("jpeg-bomb", build=_one("bomb.jpg", ri.write_jpeg_bomb), argv=SEGMENT,
         message=("bomb.jpg", "60000 x 60000") + LIMIT, absent=OUT),
    Case("tiff-bomb", build=_one("bomb.tif", ri.write_tiff_bomb), argv=SEGMENT,
         message=("bomb.tif", "40000 x 40000") + LIMIT, absent=OUT),
    Case("dicom-bomb", build=_one("bomb.dcm", ri.write_dicom_bomb), argv=SEGMENT,
         message=("bomb.dcm", "60000 x 60000") + LIMIT, absent=OUT),
    Case("dicom-series-bomb", build=_dicom_series_bomb, argv=SEGMENT,
         message=("series", "20000 x 20000 x 2") + LIMIT, absent=OUT),
    Case("nifti-bomb", build=_one("bomb.nii.gz", ri.write_nifti_bomb), argv=SEGMENT,
         message=("bomb.nii.gz", "3000 x 3000 x 3000") + LIMIT, absent=OUT),
    Case("mha-bomb", build=_one("bomb.mha", _mha_bomb), call=_read, message=("bomb.mha", "3000 x 3000 x 3000") + LIMIT),
    Case("nrrd-bomb", build=_one("bomb.nrrd", _nrrd_bomb), call=_read, message=("bomb.nrrd",) + LIMIT),
    Case("limit-argument", build=_one("in.png", ri.write_png), call=lambda ctx: _read(ctx, max_pixels=1000),
         message=("in.png", "80 x 64", "limit of 1,000")),
    Case("limit-env", build=_one("in.png", ri.write_png), call=_with_env("1000", _read),
         message=("in.png", "limit of 1,000")),
    Case("limit-env-exactly-met", build=_one("in.png", ri.write_png), call=_with_env("5120", _read), exit_code=0,
         check=lambda ctx: ctx["result"].shape == (64, 80) or pytest.fail("not read")),
    Case("limit-env-malformed", build=_one("in.png", ri.write_png), call=_with_env("lots", _read),
         message=("MEDSAM3_MAX_PIXELS", "lots")),
    # ---- found by test_fuzz.py
    Case("mha-ndims-1e308", build=_one("ndims.mha", _mha_ndims_huge), argv=SEGMENT,
         message=("ndims.mha", "malformed MetaImage header", "NDims = 1e308"), absent=OUT),
    Case("mha-dimsize-short", build=_one("short.mha", _mha_dimsize_short), call=_read,
         message=("short.mha", "DimSize", "3 finite numbers")),
    Case("tiff-bad-length-tag", build=_one("flat.tif", _tiff_bad_length_tag), call=_read,
         message=("flat.tif", "no pixels")),
    # ---- item 7: silent garbage
    Case("tiff-2-channels", build=_one("two.tif", _two_channel_tiff), argv=SEGMENT,
         message=("two.tif", "2 samples per pixel"), absent=OUT),
    Case("tiff-5-channels", build=_one("five.tif", _five_channel_tiff), argv=SEGMENT,
         message=("five.tif", "5 samples per pixel"), absent=OUT),
    Case("tiff-cmyk", build=_one("cmyk.tif", _cmyk_tiff), call=_read, message=("cmyk.tif", "CMYK")),
    Case("tiff-grey-alpha", build=_one("ga.tif", _grey_alpha_tiff), call=_read_warned, exit_code=0,
         check=_check_grey_alpha_tiff),
    Case("mhd-sheared", build=_one("shear.mhd", _sheared_mhd), argv=SEGMENT,
         message=("shear.mhd", "TransformMatrix = 1 0.5 0", "sheared"), absent=OUT),
    Case("mha-sheared", build=_one("shear.mha", _sheared_mha), call=_read, message=("shear.mha", "sheared")),
    Case("nrrd-sheared", build=_one("shear.nrrd", _sheared_nrrd), argv=SEGMENT,
         message=("shear.nrrd", "space directions", "sheared"), absent=OUT),
    Case("nifti-sheared", build=_one("shear.nii.gz", _sheared_nifti), argv=SEGMENT,
         message=("shear.nii.gz", "orthonormal"), absent=OUT),
    Case("mhd-rotated-30-degrees", call=lambda ctx: _read(
            {"input": str(ri.ITK_DATA / "BrainProtonDensitySliceBorder20DirectionPlus30.mhd")}),
         exit_code=0, check=_check_rotated),
    Case("nifti-all-nan", build=_one("nan.nii.gz", _all_nan_nifti), argv=SEGMENT,
         message=("nan.nii.gz", "NaN"), absent=OUT),
    Case("nrrd-all-nan", build=_one("nan.nrrd", _all_nan_nrrd), call=_read, message=("nan.nrrd", "NaN or infinite")),
    Case("mha-nan-and-inf", build=_one("naninf.mha", _inf_and_nan_mha), call=_read, message=("naninf.mha",)),
    Case("nifti-some-nan", build=_one("half.nii.gz", _half_nan_nifti), call=_read_warned, exit_code=0,
         check=_check_half_nan),
    # ---- item 12: clearer words
    Case("empty-png", build=_one("empty.png", _empty), argv=SEGMENT, message=("empty.png", "empty file"), absent=OUT),
    Case("empty-nifti", build=_one("empty.nii.gz", _empty), argv=SEGMENT, message=("empty.nii.gz", "empty file"),
         absent=OUT),
    Case("empty-dicom", build=_one("empty.dcm", _empty), argv=SEGMENT, message=("empty.dcm", "empty file"),
         absent=OUT),
    Case("random-png", build=_one("noise.png", _random_bytes), argv=SEGMENT,
         message=("noise.png", "not an image of any supported format"), absent=OUT),
    Case("random-nifti", build=_one("noise.nii.gz", _random_bytes), argv=SEGMENT,
         message=("noise.nii.gz", "not a readable NIfTI"), absent=OUT),
    Case("random-jpeg", build=_one("noise.jpg", _random_bytes), call=_read, message=("noise.jpg", "not a readable JPEG")),
    Case("random-tiff", build=_one("noise.tif", _random_bytes), call=_read, message=("noise.tif", "TIFF")),
    Case("random-dicom", build=_one("noise.dcm", _random_bytes), argv=SEGMENT,
         message=("noise.dcm", "not a DICOM file"), absent=OUT),
    Case("dicom-duplicate-copy", build=_dicom_series_dup_copy, call=_read_warned, exit_code=0,
         check=_check_dup_copy),
    Case("dicom-duplicate-uid", build=_dicom_series_dup_uid, argv=SEGMENT,
         message=("slice1.dcm", "slice1_edited.dcm", "same SOPInstanceUID", "duplicate instance"), absent=OUT),
    Case("dicom-same-position", build=_dicom_series_same_position, argv=SEGMENT,
         message=("slice2.dcm", "slice2_again.dcm", "same position", "duplicate instance"), absent=OUT),
    Case("png-grey-alpha", build=_one("ga.png", _grey_alpha_png), call=_read_warned, exit_code=0,
         check=lambda ctx: (_warned("ga.png", "alpha")(ctx), ctx["result"].shape == (64, 80) or pytest.fail())),
    Case("manifest-missing-file", build=_manifest, call=_dataset,
         message=("m.jsonl", "1 of 12", "img5.png", "case5", "missing")),
    Case("manifest-missing-files-train", build=lambda tmp, ctx: _manifest(tmp, ctx, missing=3),
         argv=("train", "--config", "{config}"), message=("3 of 12", "img3.png", "img4.png", "img5.png")),
]


@pytest.mark.parametrize("case", params(CASES))
def test_read_bad_input(case, run):
    run(case)
