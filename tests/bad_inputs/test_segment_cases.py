"""Bad inputs to ``medsam3 segment``: the table (see :mod:`bad_inputs.harness`)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from bad_inputs.harness import Case, params

CT5N = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
MODEL = ("--model", "{model}", "--device", "cpu")


def _png(tmp, ctx):
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(tmp / "in.png")
    return {"png": str(tmp / "in.png")}


def _png_and(*links):
    """``in.png`` plus ``("sym"|"hard", name)`` links to it."""
    def build(tmp, ctx):
        out = _png(tmp, ctx)
        for kind, name in links:
            (os.symlink if kind == "sym" else os.link)(tmp / "in.png", tmp / name)
        return out
    return build


def _png_with_dir(name):
    def build(tmp, ctx):
        (tmp / name).mkdir()
        (tmp / name / "keep.txt").write_text("mine")
        return _png(tmp, ctx)
    return build


def _volume_array():
    return np.random.default_rng(1).integers(0, 400, (6, 32, 32)).astype(np.int16)


def _mhd(data_name, header="vol.mhd"):
    """A MetaImage volume whose header names ``data_name`` as its data file."""
    def build(tmp, ctx):
        sitk.WriteImage(sitk.GetImageFromArray(_volume_array()), str(tmp / "vol.mhd"), True)
        if header != "vol.mhd":
            (tmp / "vol.mhd").rename(tmp / header)
        text = (tmp / header).read_text().replace("ElementDataFile = vol.zraw", f"ElementDataFile = {data_name}")
        (tmp / header).write_text(text)
        (tmp / "vol.zraw").rename(tmp / data_name)
        return {"vol": str(tmp / header), "data": str(tmp / data_name)}
    return build


def _nhdr(data_name):
    """A detached NRRD volume whose header names ``data_name`` (raw encoding) as its data file."""
    def build(tmp, ctx):
        a = _volume_array()
        (tmp / data_name).write_bytes(a.astype("<i2").tobytes())
        (tmp / "vol.nhdr").write_text(
            "NRRD0004\ntype: short\ndimension: 3\nspace: left-posterior-superior\n"
            f"sizes: {a.shape[2]} {a.shape[1]} {a.shape[0]}\n"
            "space directions: (1,0,0) (0,1,0) (0,0,2)\nendian: little\nencoding: raw\n"
            f"space origin: (0,0,0)\ndata file: {data_name}\n")
        return {"vol": str(tmp / "vol.nhdr"), "data": str(tmp / data_name)}
    return build


def _nifti(name):
    def build(tmp, ctx):
        sitk.WriteImage(sitk.GetImageFromArray(_volume_array()), str(tmp / name))
        return {"vol": str(tmp / name)}
    return build


def _dicom(link=None):
    """CT5N copied to ``series/``; ``link``: ("sym"|"hard", name) of its first file outside it."""
    def build(tmp, ctx):
        shutil.copytree(CT5N, tmp / "series")
        first = sorted((tmp / "series").iterdir())[0]
        if link:
            (os.symlink if link[0] == "sym" else os.link)(first, tmp / link[1])
        return {"series": str(tmp / "series"), "first": str(first)}
    return build


def _segment(*args):
    return ("segment", *args, *MODEL)


def _api(prompts=("brain",), **kwargs):
    """``medsam3.segment`` on the case's ``in.png`` with the tiny model, writing ``o.png``."""
    def call(ctx):
        import medsam3

        return medsam3.segment(ctx["png"], Path(ctx["tmp"]) / "o.png", prompts, model=ctx["model"],
                               device="cpu", progress=False, **kwargs)
    return call


def _one_prompt(ctx):
    seg = ctx["result"]
    assert seg.prompts == ["liver"], seg.prompts
    assert seg.sidecar["labels"] == {"1": "liver"}


API_ABSENT = ("{tmp}/o.png", "{tmp}/o.json")

CASES = [
    Case("missing-input", argv=_segment("-i", "{tmp}/nope.png", "-o", "{tmp}/out.png", "-p", "brain"),
         message=("nope.png",), absent=("{tmp}/out.png", "{tmp}/out.json")),
    Case("output-is-input", build=_png, argv=_segment("-i", "{png}", "-o", "{png}", "-p", "brain"),
         message=("in.png",), unchanged=("{png}",), absent=("{tmp}/in.json",)),
    # --overlay is one of the run's outputs: never an input, never another output, always a PNG
    Case("overlay-is-input", build=_png,
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain", "--overlay", "{png}"),
         message=("overlay", "in.png", "input"), unchanged=("{png}",),
         absent=("{tmp}/lab.png", "{tmp}/lab.json")),
    Case("overlay-is-label-map", build=_png,
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain", "--overlay", "{tmp}/lab.png"),
         message=("overlay", "lab.png", "label map"), unchanged=("{png}",),
         absent=("{tmp}/lab.png", "{tmp}/lab.json")),
    Case("overlay-is-sidecar", build=_png,
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain", "--overlay", "{tmp}/lab.json"),
         message=("overlay", "lab.json", ".png"), absent=("{tmp}/lab.png", "{tmp}/lab.json")),
    Case("overlay-named-nifti", build=_png,
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain", "--overlay", "{tmp}/x.nii.gz"),
         message=("x.nii.gz", "png"), absent=("{tmp}/x.nii.gz", "{tmp}/lab.png", "{tmp}/lab.json")),
    Case("overlay-is-directory", build=_png_with_dir("pics"),
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain", "--overlay", "{tmp}/pics"),
         message=("pics", "directory"), unchanged=("{tmp}/pics",), absent=("{tmp}/lab.png", "{tmp}/lab.json")),
    Case("overlay-is-symlink-to-input", build=_png_and(("sym", "link.png")),
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain", "--overlay", "{tmp}/link.png"),
         message=("link.png", "symbolic link", "in.png"), unchanged=("{png}",),
         absent=("{tmp}/lab.png", "{tmp}/lab.json")),
    Case("overlay-in-new-folder", build=_png,
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain", "--overlay", "{tmp}/new/o.png"),
         exit_code=0, unchanged=("{png}",),
         check=lambda ctx: Path(ctx["tmp"], "new", "o.png").read_bytes().startswith(b"\x89PNG")),
    # inputs reached through links
    Case("output-is-symlink-to-input", build=_png_and(("sym", "link.png")),
         argv=_segment("-i", "{png}", "-o", "{tmp}/link.png", "-p", "brain"),
         message=("label map", "link.png", "in.png"), unchanged=("{png}", "{tmp}/link.png"),
         absent=("{tmp}/link.json",)),
    Case("input-is-symlink-output-its-target", build=_png_and(("sym", "link.png")),
         argv=_segment("-i", "{tmp}/link.png", "-o", "{png}", "-p", "brain"),
         message=("label map", "in.png", "link.png"), unchanged=("{png}",), absent=("{tmp}/in.json",)),
    Case("output-is-hard-link-of-input", build=_png_and(("hard", "hard.png")),
         argv=_segment("-i", "{png}", "-o", "{tmp}/hard.png", "-p", "brain"),
         message=("hard.png", "hard link", "in.png"), unchanged=("{png}", "{tmp}/hard.png"),
         absent=("{tmp}/hard.json",)),
    # outputs that are directories
    Case("sidecar-is-directory", build=_png_with_dir("lab.json"),
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.png", "-p", "brain"),
         message=("sidecar", "lab.json", "directory"), unchanged=("{tmp}/lab.json",), absent=("{tmp}/lab.png",)),
    Case("mhd-data-file-is-directory", build=_png_with_dir("lab.zraw"),
         argv=_segment("-i", "{png}", "-o", "{tmp}/lab.mhd", "-p", "brain"),
         message=("lab.zraw", "directory"), unchanged=("{tmp}/lab.zraw",),
         absent=("{tmp}/lab.mhd", "{tmp}/lab.json")),
    # data files named by a header are inputs too
    Case("mhd-output-data-file-is-input-data-file", build=_mhd("target.zraw"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/target.mhd", "-p", "brain", "--mode", "slices"),
         message=("target.zraw", "data file of the input", "vol.mhd"), unchanged=("{vol}", "{data}"),
         absent=("{tmp}/target.mhd", "{tmp}/target.json")),
    Case("nhdr-data-file-is-output-data-file", build=_nhdr("target.zraw"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/target.mhd", "-p", "brain", "--mode", "slices"),
         message=("target.zraw", "vol.nhdr"), unchanged=("{vol}", "{data}"),
         absent=("{tmp}/target.mhd", "{tmp}/target.json")),
    Case("output-is-nhdr-data-file", build=_nhdr("pixels.nrrd"),
         argv=_segment("-i", "{vol}", "-o", "{data}", "-p", "brain", "--mode", "slices"),
         message=("pixels.nrrd", "data file of the input"), unchanged=("{vol}", "{data}"), absent=("{tmp}/pixels.json",)),
    Case("output-is-mhd-header", build=_mhd("vol.zraw"),
         argv=_segment("-i", "{vol}", "-o", "{vol}", "-p", "brain", "--mode", "slices"),
         message=("vol.mhd",), unchanged=("{vol}", "{data}"), absent=("{tmp}/vol.json",)),
    # --instances: its map, data file and sidecar are checked before the label map is written
    Case("instances-is-input", build=_nifti("lab_instances.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--mode", "slices", "--instances"),
         message=("instance map", "lab_instances.nii.gz", "input"), unchanged=("{vol}",),
         absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json", "{tmp}/lab_instances.json")),
    Case("instances-data-file-is-input-data-file", build=_mhd("lab_instances.zraw"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.mhd", "-p", "brain", "--mode", "slices", "--instances"),
         message=("instance map data file", "lab_instances.zraw"), unchanged=("{vol}", "{data}"),
         absent=("{tmp}/lab.mhd", "{tmp}/lab.zraw", "{tmp}/lab.json", "{tmp}/lab_instances.mhd")),
    Case("instances-sidecar-is-directory", build=lambda tmp, ctx: (
            (tmp / "lab_instances.json").mkdir(), _nifti("vol.nii.gz")(tmp, ctx))[1],
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--mode", "slices", "--instances"),
         message=("instance map's sidecar", "directory"), unchanged=("{vol}",),
         absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json", "{tmp}/lab_instances.nii.gz")),
    # DICOM series: every file of the series is an input, wherever it is linked from
    Case("dicom-output-inside-series", build=_dicom(),
         argv=_segment("-i", "{series}", "-o", "{series}/seg.dcm", "-p", "brain", "--mode", "slices"),
         message=("seg.dcm", "inside", "series"), unchanged=("{series}",)),
    Case("dicom-output-is-hard-link-of-series-file", build=_dicom(("hard", "out.dcm")),
         argv=_segment("-i", "{series}", "-o", "{tmp}/out.dcm", "-p", "brain", "--mode", "slices"),
         message=("out.dcm", "hard link"), unchanged=("{series}", "{tmp}/out.dcm"), absent=("{tmp}/out.json",)),
    Case("output-is-symlink-to-series-file", build=_dicom(("sym", "out.dcm")),
         argv=_segment("-i", "{series}", "-o", "{tmp}/out.dcm", "-p", "brain", "--mode", "slices"),
         message=("out.dcm", "symbolic link"), unchanged=("{series}",), absent=("{tmp}/out.json",)),
    Case("overlay-inside-series", build=_dicom(),
         argv=_segment("-i", "{series}", "-o", "{tmp}/seg.nii.gz", "-p", "brain", "--mode", "slices",
                       "--overlay", "{series}/look.png"),
         message=("overlay", "inside"), unchanged=("{series}",), absent=("{tmp}/seg.nii.gz", "{tmp}/seg.json")),
    # --size is bounded: a typo must not ask for 120 GB
    Case("size-far-too-large", build=_nifti("vol.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--size", "100002"),
         message=("100002", "4032"), unchanged=("{vol}",), absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json")),
    Case("size-one-above-limit", build=_nifti("vol.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--size", "4046"),
         message=("4046", "4032"), absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json")),
    Case("size-not-multiple-of-patch", build=_nifti("vol.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--size", "500"),
         message=("500", "multiple of the 14"), absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json")),
    # speed options: refused before the input is read
    Case("precision-unknown", build=_nifti("vol.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--precision", "fp8"),
         message=("fp8", "fp32"), unchanged=("{vol}",), absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json")),
    Case("fast-with-unknown-precision", build=_nifti("vol.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--fast", "--precision", "int4"),
         message=("int4",), absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json")),
    Case("fast-with-size-not-multiple-of-patch", build=_nifti("vol.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--fast", "--size", "500"),
         message=("500", "multiple of the 14"), absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json")),
    Case("encode-batch-zero", build=_nifti("vol.nii.gz"),
         argv=_segment("-i", "{vol}", "-o", "{tmp}/lab.nii.gz", "-p", "brain", "--encode-batch", "0"),
         message=("--encode-batch 0", "whole number of slices >= 1"), unchanged=("{vol}",), absent=("{tmp}/lab.nii.gz", "{tmp}/lab.json")),
    # the Python API: click and box shapes are checked, with the expected shape in the message
    Case("api-points-flat-pair", build=_png, call=_api(points=[5, 5]),
         message=("points", "[[x, y], ...]", "[5, 5]"), absent=API_ABSENT),
    Case("api-points-one-number", build=_png, call=_api(points=[[5]]),
         message=("points", "[[x, y], ...]"), absent=API_ABSENT),
    Case("api-points-string", build=_png, call=_api(points="5,5"),
         message=("points", "[[x, y], ...]"), absent=API_ABSENT),
    Case("api-points-nan", build=_png, call=_api(points=[[5, float("nan")]]),
         message=("points", "finite"), absent=API_ABSENT),
    Case("api-box-three-numbers", build=_png, call=_api(box=[1, 2, 3]),
         message=("box", "[x0, y0, x1, y1]"), absent=API_ABSENT),
    Case("api-box-nested", build=_png, call=_api(box=[[1, 2, 3, 4]]),
         message=("box", "[x0, y0, x1, y1]"), absent=API_ABSENT),
    Case("api-exemplars-flat", build=_png, call=_api(exemplars=[1, 2, 30, 40]),
         message=("exemplars", "[[x0, y0, x1, y1], ...]"), absent=API_ABSENT),
    Case("api-point-labels-not-binary", build=_png, call=_api(points=[[5, 5]], point_labels=[2]),
         message=("point_labels", "1 (positive) or 0 (negative)"), absent=API_ABSENT),
    Case("api-point-labels-count", build=_png, call=_api(points=[[5, 5]], point_labels=[1, 0]),
         message=("2 point_labels for 1 points",), absent=API_ABSENT),
    Case("api-size-too-large", build=_png, call=_api(size=100002),
         message=("100002", "4032"), absent=API_ABSENT),
    # a string is one prompt, not one per letter
    Case("api-prompts-one-string", build=_png, call=_api(prompts="liver"), exit_code=0, check=_one_prompt),
]


@pytest.mark.parametrize("case", params(CASES))
def test_segment_bad_input(case, run):
    run(case)
