"""Packaging a trained model (``medsam3 model export``) and the manifest's ``absent`` concepts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from helpers.data import LPS_DIRECTION, write_volume

from medsam3.cli import main
from medsam3.data import PromptSegmentationDataset, convert_dataset
from medsam3.data.loading import load_item
from medsam3.data.manifest import ManifestItem, read_manifest, write_manifest
from medsam3.errors import InputError


def test_export_writes_half_precision_weights_and_the_concepts(tiny_model_dir, tmp_path, capsys):
    manifest = write_manifest([ManifestItem(id="a", dataset="d", split="train", image="a.nii.gz", label="l.nii.gz",
                                            label_format="map", labels={"1": "Hippocampus_L", "2": "brain mask"},
                                            modality="MR", dim=3, shape=[2, 2, 2], spacing=[1, 1, 1])],
                              tmp_path / "m.jsonl", tmp_path)
    out = tmp_path / "exported"
    assert main(["model", "export", str(tiny_model_dir), "-o", str(out), "--manifest", str(manifest),
                 "--untrained-tracker", "--info", "masks=semantic", "--info", "trained_steps=12",
                 "--info", "presence_window=3"]) == 0
    info = json.loads((out / "medsam3.json").read_text())
    assert info["concepts"] == ["brain", "hippocampus"]  # canonical names, sides dropped
    assert info["tracker_trained"] is False and info["masks"] == "semantic" and info["trained_steps"] == 12
    assert info["presence_window"] == 3
    source, half = load_file(str(tiny_model_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert source.keys() == half.keys() and all(v.dtype == torch.float16 for v in half.values() if v.is_floating_point())
    assert (out / "model.safetensors").stat().st_size < 0.6 * (tiny_model_dir / "model.safetensors").stat().st_size
    # a model directory is for sharing (a package, a lab's server): everyone may read its files
    assert all(p.stat().st_mode & 0o444 == 0o444 for p in out.iterdir()), {p.name: oct(p.stat().st_mode) for p in out.iterdir()}
    from medsam3.model import MedSAM3

    model = MedSAM3.from_pretrained(out, device="cpu")
    assert model.concepts == ["brain", "hippocampus"] and not model.tracker_trained
    assert next(model.detector.parameters()).dtype == torch.float32
    key = "detr_decoder.layers.0.mlp.fc1.weight"
    torch.testing.assert_close(model.detector.state_dict()[key], source[f"detector_model.{key}"], atol=2e-3, rtol=1e-3)
    assert "concepts: brain, hippocampus" in capsys.readouterr().out
    bad = tmp_path / "bad-window"
    assert main(["model", "export", str(tiny_model_dir), "-o", str(bad), "--info", "presence_window=2"]) == 2
    assert "odd whole number" in capsys.readouterr().err and not bad.exists()
    (out / "medsam3.json").write_text("{not json")
    with pytest.raises(InputError, match="medsam3.json is not valid JSON"):
        MedSAM3.from_pretrained(out, device="cpu")


def test_absent_concepts_become_negative_prompts(tmp_path):
    root = tmp_path / "Dataset001_Brain"
    image = np.zeros((6, 16, 16), np.int16)
    label = np.zeros(image.shape, np.uint8)
    label[1:5, 4:12, 4:12] = 1
    image[label == 1] = 100
    write_volume(root / "imagesTr" / "c_0000.nii.gz", image)
    write_volume(root / "labelsTr" / "c.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "MR"}, "labels": {"background": 0, "brain": 1},
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    manifest = convert_dataset("nnunet", root, tmp_path / "m.jsonl", progress=False)
    lines = (tmp_path / "m.jsonl").read_text().splitlines()
    item = json.loads(lines[1])
    item["absent"] = ["cell nucleus", "liver"]
    (tmp_path / "m.jsonl").write_text(lines[0] + "\n" + json.dumps(item) + "\n")
    manifest = read_manifest(tmp_path / "m.jsonl")
    assert manifest[0].absent == ["cell nucleus", "liver"]
    ds = PromptSegmentationDataset(manifest, 32, augment=False, absent_probability=0.0)
    sample = ds[0]
    assert sample["present"] and set(sample["negative_prompts"]) == {"cell nucleus", "liver"}
    item["absent"] = ["brain"]
    (tmp_path / "m.jsonl").write_text(lines[0] + "\n" + json.dumps(item) + "\n")
    with pytest.raises(InputError, match="both labelled and listed as absent"):
        read_manifest(tmp_path / "m.jsonl")


def test_volumes_load_as_the_predictors_axial_stack(tmp_path):
    """Training sees a volume's slices exactly as the volume predictor shows them to the model."""
    from medsam3.io import read_image
    from medsam3.orientation import choose_orientation
    from medsam3.preprocess import normalize_intensity

    rng = np.random.default_rng(0)
    coronal = (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0)  # array z runs anterior -> posterior
    for name, direction in (("lps", LPS_DIRECTION), ("coronal", coronal)):
        root = tmp_path / name
        image = rng.normal(0, 100, (5, 7, 9)).astype(np.int16)
        write_volume(root / "img.nii.gz", image, direction=direction)
        write_volume(root / "lab.nii.gz", (image > 0).astype(np.uint8), direction=direction)
        m = write_manifest([ManifestItem(id=name, dataset="d", split="train", image="img.nii.gz", label="lab.nii.gz",
                                         label_format="map", labels={"1": "brain"}, modality="MR", dim=3,
                                         shape=[5, 7, 9], spacing=[0.8, 0.8, 2.5])], root / "m.jsonl", root)
        loaded = load_item(read_manifest(m), read_manifest(m)[0])
        source = read_image(root / "img.nii.gz")
        orientation = choose_orientation(source.direction, "axial")
        np.testing.assert_array_equal(loaded.image, orientation.stack(normalize_intensity(source, modality="MR")))
        np.testing.assert_array_equal(loaded.label, orientation.stack(np.asarray(source.array) > 0))
        if name == "coronal":
            assert loaded.image.shape == (7, 5, 9)  # the axial slices of a coronal acquisition
