"""The one settings object (:mod:`medsam3.predict.settings`) and the one reader of ``medsam3.json``
(:mod:`medsam3.model.info`): checked once, shared by ``segment``, ``evaluate`` and ``serve``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

import medsam3
from medsam3.errors import ArgumentError, InputError
from medsam3.model.info import INFO_NAME, VOLUME_MODES, ModelInfo
from medsam3.predict.settings import PredictSettings, VolumeSettings, from_args

SAMPLE = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"


@pytest.mark.parametrize("fields, message", [
    ({"threshold": 1.5}, r"score threshold 1.5 is outside \[0, 1\]"),
    ({"presence_threshold": -0.1}, r"presence threshold -0.1 is outside \[0, 1\]"),
    ({"mask_threshold": "high"}, r"mask threshold 'high' is outside \[0, 1\]"),
    ({"batch_size": 0}, r"batch size 0 must be a whole number >= 1"),
])
def test_predict_settings_refuse_bad_values_naming_them(fields, message):
    with pytest.raises(ArgumentError, match=message):
        PredictSettings(**fields)


@pytest.mark.parametrize("fields, message", [
    ({"mode": "fast"}, r"unknown volume mode 'fast'; accepted: merged, propagate, slices"),
    ({"axis": "oblique"}, r"unknown slicing axis 'oblique'; accepted: axial, coronal, sagittal"),
    ({"presence_window": 2}, r"odd whole number of slices >= 1 .* got 2"),
    ({"size": 500}, r"input size 500 is not a positive multiple of the 14-pixel patch"),
    ({"iou_threshold": 0.0}, r"IoU threshold 0.0 is outside \(0, 1\]"),
    ({"key_score": 2}, r"key score 2 is outside \[0, 1\]"),
    ({"max_unsupported": -1}, r"max unsupported slices -1 must be a whole number >= 0"),
    ({"backward_slices": 1.5}, r"backward slices 1.5 must be a whole number >= 0"),
])
def test_volume_settings_refuse_bad_values_naming_them(fields, message):
    with pytest.raises(ArgumentError, match=message):
        VolumeSettings(**fields)


def test_build_replaces_only_the_options_given():
    base = PredictSettings(threshold=0.2, volume=VolumeSettings(mode="slices", axis="CORONAL"))
    assert base.volume.axis == "coronal"
    built = PredictSettings.build(base, presence_threshold=0.1, mode=None, size=168)
    assert (built.threshold, built.presence_threshold) == (0.2, 0.1)
    assert (built.volume.mode, built.volume.axis, built.volume.size) == ("slices", "coronal", 168)
    assert PredictSettings.build(None) == PredictSettings()
    with pytest.raises(ArgumentError, match="unknown setting"):
        PredictSettings.build(None, treshold=0.1)


def test_one_argument_group_for_segment_evaluate_and_serve():
    """The three subcommands read the same options into the same object; errors name the flag."""
    from medsam3.cli import build_parser

    parser = build_parser()
    common = ["--threshold", "0.25", "--presence-threshold", "0.1", "--axis", "coronal", "--size", "168",
              "--presence-window", "3", "--keep-empty", "--batch-size", "2"]
    expected = PredictSettings(threshold=0.25, presence_threshold=0.1, batch_size=2, volume=VolumeSettings(
        mode="slices", axis="coronal", size=168, presence_window=3, skip_empty=False))
    segment = parser.parse_args(["segment", "-i", "x", "-o", "y", "-p", "a", "--mode", "slices", *common])
    evaluate = parser.parse_args(["evaluate", "-o", "x", "--model", "m", "--manifest", "f",
                                  "--volume-mode", "slices", *common])
    serve = parser.parse_args(["serve", "--mode", "slices", *common])
    assert from_args(segment) == from_args(evaluate) == from_args(serve) == expected
    assert evaluate.instances is True  # evaluate's own --no-instances (scoring) is untouched
    assert from_args(parser.parse_args(["segment", "-i", "x", "-o", "y", "--instances"])).volume.instances
    with pytest.raises(ArgumentError, match=r"^--threshold 2.0 is outside \[0, 1\]"):
        from_args(parser.parse_args(["segment", "-i", "x", "-o", "y", "--threshold", "2"]))
    with pytest.raises(ArgumentError, match=r"^--max-unsupported -1 must be a whole number"):
        from_args(parser.parse_args(["serve", "--max-unsupported", "-1"]))


def test_one_list_of_volume_modes():
    from medsam3.predict import volume

    assert volume.MODES is VOLUME_MODES == ("merged", "propagate", "slices", "clips")


def test_model_info_reads_every_field_and_keeps_the_others(tmp_path):
    (tmp_path / INFO_NAME).write_text(json.dumps({
        "concepts": ["brain"], "masks": "semantic", "context_mm": 8, "presence_window": 3, "tracker_trained": False,
        "volume_mode": "slices", "weights_dtype": "float16", "heldout": {"scores": {}}}))
    info = ModelInfo.read(tmp_path)
    assert info.concepts == ("brain",) and info.masks == "semantic" and info.context_mm == 8.0
    assert info.presence_window == 3 and info.tracker_trained is False and info.volume_mode == "slices"
    assert info["weights_dtype"] == "float16" and "heldout" in info and info.path == tmp_path / INFO_NAME
    assert info.resolve_volume_mode(None) == ("slices", "model")
    assert info.resolve_volume_mode("merged") == ("merged", "given")
    assert ModelInfo.read(tmp_path / "none") == ModelInfo() and ModelInfo().resolve_volume_mode(None) == (
        "merged", "default")
    assert info.knows("Hippocampus_L") is False and info.knows("whole brain") and ModelInfo().knows("anything")


@pytest.mark.parametrize("content, field", [
    ({"concepts": "brain"}, "concepts"), ({"masks": "both"}, "masks"), ({"context_mm": "wide"}, "context_mm"),
    ({"context_mm": 500}, "context_mm"), ({"presence_window": 4}, "presence_window"),
    ({"tracker_trained": "no"}, "tracker_trained"), ({"volume_mode": "fast"}, "volume_mode"),
])
def test_malformed_model_info_names_the_file_and_the_field(tmp_path, content, field):
    (tmp_path / INFO_NAME).write_text(json.dumps(content))
    with pytest.raises(InputError, match=rf"{INFO_NAME}: '{field}' must be"):
        ModelInfo.read(tmp_path)
    (tmp_path / INFO_NAME).write_text("[1, 2]")
    with pytest.raises(InputError, match=rf"{INFO_NAME}: expected a JSON object"):
        ModelInfo.read(tmp_path)


def test_the_demo_model_names_slices_as_its_volume_mode():
    from medsam3.model.loader import DEMO_DIRECTORY

    assert ModelInfo.read(DEMO_DIRECTORY).volume_mode == "slices"


def test_export_refuses_info_that_would_not_load(tiny_model_dir, tmp_path, capsys):
    from medsam3.cli import main

    code = main(["model", "export", str(tiny_model_dir), "-o", str(tmp_path / "out"), "--info", "volume_mode=fast"])
    assert code == 2 and "'volume_mode' must be one of merged, propagate, slices" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def slices_model(tiny_model_dir, tmp_path_factory):
    from medsam3.model import MedSAM3

    directory = tmp_path_factory.mktemp("mode") / "slices-model"
    shutil.copytree(tiny_model_dir, directory)
    (directory / INFO_NAME).write_text(json.dumps({"volume_mode": "slices"}))
    return MedSAM3.from_pretrained(directory, device="cpu")


def test_volume_mode_default_is_the_models_own_and_the_sidecar_says_why(slices_model, tiny_model, tmp_path):
    from medsam3.io import read_image, write_image

    block = read_image(SAMPLE)
    small = write_image(block.with_array(block.array[10:13, 20:40, 20:40]), tmp_path / "block.nii.gz")
    own = medsam3.segment(small, None, ["brain"], model=slices_model, progress=False)
    assert own.sidecar["volume"]["mode"] == "slices"
    assert own.sidecar["volume"]["mode_reason"] == "the model's own (medsam3.json volume_mode)"
    given = medsam3.segment(small, None, ["brain"], model=slices_model, mode="merged", progress=False)
    assert given.sidecar["volume"]["mode"] == "merged" and given.sidecar["volume"]["mode_reason"] == "asked for"
    plain = medsam3.segment(small, None, ["brain"], model=tiny_model, progress=False)
    assert plain.sidecar["volume"]["mode"] == "merged"
    assert plain.sidecar["volume"]["mode_reason"] == "the default (the model names none)"


def test_segment_settings_object_equals_its_keyword_arguments(tiny_model):
    from pydicom.data import get_testdata_file

    source = get_testdata_file("CT_small.dcm")
    settings = PredictSettings(threshold=0.0, presence_threshold=0.0, mask_threshold=0.4)
    by_object = medsam3.segment(source, None, ["liver", "spleen"], model=tiny_model, settings=settings)
    by_keywords = medsam3.segment(source, None, ["liver", "spleen"], model=tiny_model, threshold=0.0,
                                  presence_threshold=0.0, mask_threshold=0.4)
    assert (by_object.labels.array == by_keywords.labels.array).all() and by_object.labels.array.any()
    assert by_object.sidecar["thresholds"] == {"score": 0.0, "presence": 0.0, "mask": 0.4}
    overridden = medsam3.segment(source, None, ["liver"], model=tiny_model, settings=settings, mask_threshold=0.9)
    assert overridden.sidecar["thresholds"]["mask"] == 0.9
    with pytest.raises(ArgumentError, match="--axis coronal given, but .* is a 2D image"):
        medsam3.segment(source, None, ["liver"], model=tiny_model,
                        settings=PredictSettings(volume=VolumeSettings(axis="coronal")))


def test_volume_prompts_outside_the_concepts_are_gated_by_the_volume_predictor(tiny_model_dir, tmp_path):
    """On a volume, the unknown prompt is answered absent without running and the known one keeps
    its label number: the same voxels as asking the known prompt alone, under label 2."""
    import numpy as np

    from medsam3.io import read_image, write_image
    from medsam3.model import MedSAM3

    directory = tmp_path / "brain-only"
    shutil.copytree(tiny_model_dir, directory)
    (directory / INFO_NAME).write_text(json.dumps({"concepts": ["brain"]}))
    model = MedSAM3.from_pretrained(directory, device="cpu")
    block = read_image(SAMPLE)
    small = write_image(block.with_array(block.array[10:13, 20:40, 20:40]), tmp_path / "block.nii.gz")
    open_ = {"threshold": 0.0, "presence_threshold": 0.0, "mode": "slices", "instances": True, "progress": False}
    with pytest.warns(UserWarning, match="'spleen' is not a concept model"):
        gated = medsam3.segment(small, tmp_path / "g.nii.gz", ["spleen", "whole brain"], model=model, **open_)
    alone = medsam3.segment(small, None, ["brain"], model=model, **open_)
    assert alone.labels.array.any()
    np.testing.assert_array_equal(gated.labels.array, np.where(alone.labels.array == 1, 2, 0))
    assert [r.prompt for r in gated.results] == ["spleen", "whole brain"]
    assert not gated.results[0].present and gated.results[0].presence_score == 0.0
    assert set(gated.extra["instance_labels"].values()) == {2}
    assert gated.sidecar["unknown_to_model"] == ["spleen"]
