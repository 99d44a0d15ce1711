"""The demo model's training build (``recipes/demo/build_data.py``) on the real sources: Colin27 from
Debian's mricron-data (with skull and skull-stripped copies), the InVesalius head CT, the stardist
nuclei tiles. Small (one deformed and two skull-stripped copies) to stay fast."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from helpers.recipes import DEMO, demo_script

from medsam3.data import read_manifest

build_data = demo_script("build_data")
CRANIUM, MRICRON, colin27 = build_data.CRANIUM, build_data.MRICRON, build_data.colin27
build_training_set, mni_brain_mask, resample_labels = (build_data.build_training_set, build_data.mni_brain_mask,
                                                       build_data.resample_labels)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    for path, package in ((MRICRON / "ch2bet.nii.gz", "mricron-data"), (CRANIUM, "invesalius-examples")):
        if not path.is_file():
            pytest.fail(f"the demo training build needs Debian's {package} (apt-get install {package})")
    out = tmp_path_factory.mktemp("demo-train")
    return out, build_training_set(out, variants=1, stripped=2, progress=False)


@pytest.mark.slow  # builds real volumes
def test_training_build_items(build):
    out, manifest = build
    items = {item.id: item for item in read_manifest(manifest).items}
    assert sorted(items) == ["colin27/s00", "colin27/s01", "colin27/v00", "colin27/v01", "cranium/v0",
                             "cranium/v1", "nuclei/q0", "nuclei/q1", "nuclei/q2"]
    for name in ("colin27/v00", "colin27/s00", "colin27/s01"):
        assert items[name].modality == "MR" and items[name].dataset == "colin27"
        assert items[name].absent == ["cell nucleus"]
    assert items["cranium/v0"].modality == "CT" and items["nuclei/q0"].dim == 2


@pytest.mark.slow  # builds real volumes
def test_skull_stripped_copies_keep_the_brain_and_nothing_else(build):
    out, _ = build
    with_skull = np.asarray(nib.load(out / "colin27/v00_t1.nii.gz").dataobj)
    labels = np.asarray(nib.load(out / "colin27/v00_labels.nii.gz").dataobj)
    bare = np.asarray(nib.load(out / "colin27/s00_t1.nii.gz").dataobj)
    assert np.array_equal(np.asarray(nib.load(out / "colin27/s00_labels.nii.gz").dataobj), labels)
    brain = labels > 0
    assert np.array_equal(bare[brain], with_skull[brain])  # the T1 inside the brain, as it is
    assert not bare[~brain].any()  # and nothing outside: no skull, scalp or neck
    assert with_skull[~brain].astype(float).mean() > 0.1 * with_skull[brain].astype(float).mean()
    # the deformed copy: its image still ends where its (moved) brain labels end
    moved = np.asarray(nib.load(out / "colin27/s01_t1.nii.gz").dataobj)
    moved_labels = np.asarray(nib.load(out / "colin27/s01_labels.nii.gz").dataobj)
    assert not np.array_equal(moved_labels, labels)
    outside = moved[moved_labels == 0]
    assert np.mean(outside > 0.2 * moved[moved_labels > 0].mean()) < 0.01
    voxel_ml = np.prod(nib.load(out / "colin27/s01_t1.nii.gz").header.get_zooms()) / 1000
    assert 0.75 < (moved_labels > 0).sum() * voxel_ml / (brain.sum() / 1000) < 1.35  # scale 0.9-1.1 per axis


def test_build_data_rejects_negative_counts(tmp_path):
    script = str(DEMO / "build_data.py")
    run = subprocess.run([sys.executable, script, "-o", str(tmp_path / "d"), "--stripped", "-1"],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "--stripped must be >= 0, got -1" in run.stderr
    assert not (tmp_path / "d").exists()
    run = subprocess.run([sys.executable, script, "-o", str(tmp_path / "d"), "--brain-margin-mm", "-1"],
                         capture_output=True, text=True)
    assert run.returncode == 2 and "--brain-margin-mm must be in [0, 10], got -1.0" in run.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.slow  # builds real volumes
def test_brain_margin_follows_the_mni_mask_convention():
    """--brain-margin-mm 1.5 grows BET's Colin27 brain by up to 1.5 mm, nothing else changes, and
    gives it the volume of nilearn's MNI152 brain mask (the held-out reference) on Colin27's grid."""
    from scipy import ndimage

    t1, plain, affine = colin27()
    t1_again, grown, affine_again = colin27(1.5)
    assert np.array_equal(t1, t1_again) and np.array_equal(affine, affine_again)
    structures = plain > 1
    assert np.array_equal(grown[structures], plain[structures]) and not (grown[~structures] > 1).any()
    before, after = plain > 0, grown > 0
    assert not (before & ~after).any()  # grown, never shrunk
    distance = ndimage.distance_transform_edt(~before)
    assert distance[after & ~before].min() >= 1 and distance[after & ~before].max() <= 1.5
    mask = mni_brain_mask()
    mni = resample_labels(np.asarray(mask.dataobj).astype(np.uint8), mask.affine, plain.shape, affine) > 0
    assert 1.07 < after.sum() / before.sum() < 1.10
    assert 0.99 < after.sum() / mni.sum() < 1.01  # BET's mask alone: 0.92 of it

    def dice(a, b):
        return 2 * (a & b).sum() / (a.sum() + b.sum())

    assert dice(before, mni) < 0.945 < 0.955 < dice(after, mni)
