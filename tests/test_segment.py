"""End to end on real files: read -> segment -> write keeps the input's geometry exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import medsam3
from medsam3.errors import ArgumentError
from medsam3.io import read_image, read_label_map, sidecar_path
from medsam3.predict import ImagePredictor, combine_label_map
from medsam3.preprocess import normalize_intensity

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
CT5N = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
SAMPLE = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"
# thresholds at 0 make a random-weight model draw every query, so the geometry is really exercised
OPEN = {"threshold": 0.0, "presence_threshold": 0.0}


def itk_file(name: str) -> Path:
    path = ITK_DATA / name
    if not path.exists():
        pytest.fail(f"{path} missing: install Debian's insighttoolkit5-examples (`apt-get install insighttoolkit5-examples`)")
    return path


def assert_written_on_input_grid(output: Path, source) -> None:
    written, original = read_label_map(output), read_image(source)
    assert written.shape == original.shape
    assert written.spacing == pytest.approx(original.spacing, abs=1e-6)
    assert written.origin == pytest.approx(original.origin, abs=1e-6)
    assert written.direction == pytest.approx(original.direction, abs=1e-6)


def test_2d_dicom_ct_to_nifti_labels_and_sidecar(tiny_model, tmp_path):
    source = get_testdata_file("CT_small.dcm")
    out = tmp_path / "seg.nii.gz"
    seg = medsam3.segment(source, out, ["liver", "spleen"], model=tiny_model, **OPEN)
    assert_written_on_input_grid(out, source)
    side = json.loads(sidecar_path(out).read_text())
    assert side["labels"] == {"1": "liver", "2": "spleen"}
    assert set(side["scores"]) == {"liver", "spleen"} and side["absent"] == []
    assert side["model"] == tiny_model.source and side["modality"] == "CT"
    # label k is the k-th prompt; the map equals the predictor's own union-based combination
    image = read_image(source)
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0)
    predictor.set_image(normalize_intensity(image))
    expected = combine_label_map(predictor.predict(["liver", "spleen"]))
    np.testing.assert_array_equal(read_label_map(out).array, expected)
    np.testing.assert_array_equal(seg.labels.array, expected)
    assert seg.results[0].semantic.sum() == int((seg.results[0].masks.any(0)).sum())  # union of instances


def test_2d_png_output_and_overlay(tiny_model, tmp_path):
    source = get_testdata_file("MR_small.dcm")
    seg = medsam3.segment(source, tmp_path / "mr.png", ["brain"], model=tiny_model,
                          overlay=tmp_path / "mr_overlay.png", **OPEN)
    written, original = read_label_map(tmp_path / "mr.png"), read_image(source)
    assert written.shape == original.shape  # PNG holds no origin/direction: the sidecar keeps them
    geometry = json.loads((tmp_path / "mr.json").read_text())["geometry"]
    assert geometry == {"size": list(original.size), "spacing": list(original.spacing),
                        "origin": list(original.origin), "direction": list(original.direction)}
    assert seg.overlay.exists() and seg.overlay.stat().st_size > 1000
    assert (tmp_path / "mr.json").exists()


def test_absent_prompts_give_empty_labels_and_are_listed(tiny_model, tmp_path):
    source = get_testdata_file("CT_small.dcm")
    seg = medsam3.segment(source, tmp_path / "a.nii.gz", ["liver", "cell nucleus"], model=tiny_model,
                          presence_threshold=0.99)
    assert seg.absent == ["liver", "cell nucleus"]
    assert not seg.labels.array.any()
    assert json.loads((tmp_path / "a.json").read_text())["absent"] == ["liver", "cell nucleus"]


def test_rotated_direction_2d_mha_geometry(tiny_model, tmp_path):
    source = itk_file("BrainProtonDensitySliceBorder20DirectionPlus30.mhd")
    out = tmp_path / "rot.mha"
    medsam3.segment(source, out, ["brain"], model=tiny_model, **OPEN)
    assert_written_on_input_grid(out, source)
    assert read_label_map(out).direction == pytest.approx((0.8660254, -0.5, 0.5, 0.8660254), abs=1e-6)


def test_rotated_direction_3d_nifti_geometry(tiny_model, tmp_path):
    source = itk_file("KmeansTest_T1UCharRaw.nii.gz")  # direction (1,0,0, 0,0,-1, 0,1,0), spacing 2x2x3
    out = tmp_path / "kmeans_seg.nrrd"
    seg = medsam3.segment(source, out, ["white matter"], model=tiny_model, progress=False, **OPEN)
    assert_written_on_input_grid(out, source)
    assert seg.labels.array.shape == (62, 128, 128) and seg.labels.array.any()


def test_dicom_series_volume_geometry(tiny_model, tmp_path):
    out = tmp_path / "ct5n.nii.gz"
    medsam3.segment(CT5N, out, ["liver", "bone"], model=tiny_model, progress=False, **OPEN)
    assert_written_on_input_grid(out, CT5N)
    assert set(np.unique(read_label_map(out).array)) <= {0, 1, 2}


def test_mni152_template_volume(tiny_model, tmp_path):
    from nilearn.datasets import load_mni152_template

    path = tmp_path / "mni152_2mm.nii.gz"
    load_mni152_template(resolution=2).to_filename(path)
    out = tmp_path / "mni_seg.mha"
    seg = medsam3.segment(path, out, ["brain"], model=tiny_model, progress=False, **OPEN)
    assert_written_on_input_grid(out, path)
    assert seg.results[0].present and seg.results[0].voxels == int((seg.labels.array == 1).sum())


def test_bundled_sample_is_the_colin27_template():
    image = read_image(SAMPLE)
    assert image.shape == (90, 108, 90) and image.spacing == (2.0, 2.0, 2.0)
    assert image.array.dtype == np.uint8 and image.array.max() > 200


def test_box_and_points_become_the_label_after_the_text_prompts(tiny_model, tmp_path):
    source = get_testdata_file("CT_small.dcm")
    seg = medsam3.segment(source, tmp_path / "b.nii.gz", ["liver"], box=[20, 20, 100, 100],
                          points=[[60, 60]], model=tiny_model, presence_threshold=0.0)
    assert seg.prompts == ["liver", "box"]
    assert json.loads((tmp_path / "b.json").read_text())["labels"] == {"1": "liver", "2": "box"}


def test_api_argument_errors(tiny_model, tmp_path):
    source = get_testdata_file("CT_small.dcm")
    with pytest.raises(ArgumentError, match="no prompt given"):
        medsam3.segment(source, tmp_path / "x.nii.gz", [], model=tiny_model)
    with pytest.raises(ArgumentError, match="is empty"):
        medsam3.segment(source, tmp_path / "x.nii.gz", ["  "], model=tiny_model)
    with pytest.raises(ArgumentError, match="it is the input image"):
        medsam3.segment(source, source, ["liver"], model=tiny_model)
    with pytest.raises(ArgumentError, match="2D image"):
        medsam3.segment(source, tmp_path / "x.nii.gz", ["liver"], slice_index=3, model=tiny_model)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("fmt", ["dicom-seg", "dicom-rt"])
def test_dicom_series_to_dicom_seg_and_rtstruct(tiny_model, tmp_path, fmt):
    """Clinical output: the label map goes back as DICOM referencing the source series."""
    out = tmp_path / f"ct5n_{fmt}.dcm"
    seg = medsam3.segment(CT5N, out, ["liver", "bone"], model=tiny_model, progress=False, mode="slices",
                          output_format=fmt, **OPEN)
    ds = pydicom.dcmread(out)
    assert ds.Modality == ("SEG" if fmt == "dicom-seg" else "RTSTRUCT")
    source = read_image(CT5N)
    assert ds.StudyInstanceUID == source.meta["dicom"]["StudyInstanceUID"]
    back = read_label_map(out, reference=CT5N)
    assert back.shape == source.shape and back.origin == pytest.approx(source.origin, abs=1e-4)
    if fmt == "dicom-seg":  # voxel-exact; RT contours are polygons (tested to one voxel in test_dicom_out)
        np.testing.assert_array_equal(back.array, seg.labels.array)
    assert set(back.meta["labels"].values()) <= {"liver", "bone"}


def test_dicom_output_needs_a_dicom_input(tiny_model, tmp_path):
    with pytest.raises(ArgumentError, match="DICOM"):
        medsam3.segment(SAMPLE, tmp_path / "x.dcm", ["brain"], model=tiny_model)
    assert not list(tmp_path.iterdir())


@pytest.fixture(scope="module")
def brain_only_model(tiny_model_dir, tmp_path_factory):
    """The tiny random model with a concept list, as the demo model ships one."""
    import shutil

    from medsam3.model import MedSAM3

    directory = tmp_path_factory.mktemp("vocab") / "brain-only"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "medsam3.json").write_text(json.dumps({"concepts": ["brain", "hippocampus"]}))
    return MedSAM3.from_pretrained(directory, device="cpu")


def test_prompt_outside_the_models_concepts_is_unknown_and_absent(brain_only_model, tmp_path):
    source = get_testdata_file("MR_small.dcm")
    with pytest.warns(UserWarning, match="'spleen' is not a concept model .* was trained on"):
        seg = medsam3.segment(source, tmp_path / "v.nii.gz", ["spleen", "Hippocampus_L", "whole brain"],
                              model=brain_only_model, **OPEN)
    assert brain_only_model.knows("Hippocampus_L") and brain_only_model.knows("brain mask")
    assert not brain_only_model.knows("spleen") and not brain_only_model.knows("glioma")
    assert seg.prompts == ["spleen", "Hippocampus_L", "whole brain"]
    assert [r.prompt for r in seg.results] == seg.prompts  # the user's words, not the canonical ones
    assert not seg.results[0].present and seg.results[0].presence_score == 0.0
    sidecar = json.loads((tmp_path / "v.json").read_text())
    assert sidecar["unknown_to_model"] == ["spleen"] and "spleen" in sidecar["absent"]
    assert sidecar["labels"] == {"1": "spleen", "2": "Hippocampus_L", "3": "whole brain"}
    values = set(np.unique(seg.labels.array).tolist())
    assert 1 not in values and values <= {0, 2, 3}
    # the known prompts ran as the vocabulary's canonical text, with the open thresholds: same
    # answer as asking the canonical prompts directly, now under labels 1 and 2
    direct = medsam3.segment(source, None, ["left hippocampus", "brain"], model=brain_only_model, **OPEN)
    np.testing.assert_array_equal(np.where(seg.labels.array > 0, seg.labels.array - 1, 0), direct.labels.array)


def test_only_unknown_prompts_write_an_empty_label_map(brain_only_model, tmp_path):
    with pytest.warns(UserWarning, match="not a concept"):
        seg = medsam3.segment(SAMPLE, tmp_path / "none.nii.gz", ["liver"], model=brain_only_model)
    assert seg.absent == ["liver"] and not seg.labels.array.any()
    assert_written_on_input_grid(tmp_path / "none.nii.gz", SAMPLE)


def test_untrained_tracker_is_never_used(tiny_model_dir, tmp_path):
    """A model whose medsam3.json says its tracker is untrained: merged volumes fall back to
    slice detection with a warning; propagation and box/point prompts are refused."""
    import shutil

    from medsam3.errors import InputError
    from medsam3.model import MedSAM3

    directory = tmp_path / "no-tracker"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "medsam3.json").write_text(json.dumps({"tracker_trained": False}))
    model = MedSAM3.from_pretrained(directory, device="cpu")
    assert not model.tracker_trained
    with pytest.warns(UserWarning, match="no trained tracker: --mode merged falls back"):
        seg = medsam3.segment(SAMPLE, tmp_path / "v.nii.gz", ["brain"], model=model, **OPEN)
    assert seg.sidecar["volume"]["mode"] == "slices"
    with pytest.raises(InputError, match="untrained tracker"):
        medsam3.segment(SAMPLE, tmp_path / "p.nii.gz", ["brain"], model=model, mode="propagate")
    with pytest.raises(InputError, match="untrained tracker"):
        medsam3.segment(get_testdata_file("CT_small.dcm"), tmp_path / "b.nii.gz", box=[10, 10, 40, 40], model=model)
    assert not (tmp_path / "p.nii.gz").exists() and not (tmp_path / "b.nii.gz").exists()


def test_semantic_mask_source(tiny_model_dir, tiny_model, tmp_path):
    """``"masks": "semantic"`` in medsam3.json: the semantic head is the mask, its connected
    components the instances, in 2D and through the volume pipeline."""
    import shutil

    import torch.nn.functional as F
    from scipy import ndimage

    from medsam3.model import MedSAM3
    from medsam3.predict.image import TextPrompt

    directory = tmp_path / "semantic"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "medsam3.json").write_text(json.dumps({"masks": "semantic"}))
    model = MedSAM3.from_pretrained(directory, device="cpu")
    image = normalize_intensity(read_image(get_testdata_file("MR_small.dcm")))
    predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0, mask_threshold=0.5)
    assert predictor.mask_source == "semantic"
    predictor.set_image(image)
    result = predictor.predict(["brain"])[0]
    (_, out), = list(predictor.detect([TextPrompt("brain")]))
    expected = F.interpolate(out.semantic_seg[0].reshape(1, 1, *out.semantic_seg.shape[-2:]).float().sigmoid(),
                             size=image.shape, mode="bilinear", align_corners=False)[0, 0].numpy() > 0.5
    np.testing.assert_array_equal(result.semantic, expected)
    _, n = ndimage.label(expected)
    assert result.masks.shape[0] == n and (result.masks.sum(0) == expected).all()
    assert np.allclose(result.scores, result.presence_score)
    seg = medsam3.segment(SAMPLE, tmp_path / "v.nii.gz", ["brain"], model=model, mode="slices", **OPEN)
    assert seg.labels.array.shape == read_image(SAMPLE).array.shape
