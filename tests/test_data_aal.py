"""End to end on a real brain atlas: Colin27 T1 + AAL (116 regions) + the ch2bet brain mask from
Debian's mricron-data. The volumes are subsampled 3x to keep the test fast; everything else
(registry entry, atlas converter, vocabulary, samples, cache, inspect, preview) is the real path."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from medsam3.data import (
    PromptSegmentationDataset,
    build_cache,
    inspect_manifest,
    prepare_dataset,
    preview_manifest,
)
from medsam3.data.augment import resize_to_canvas
from medsam3.data.loading import load_item
from medsam3.prompts import resolve_prompt

TEMPLATES = Path("/usr/share/mricron/templates")
FILES = ("ch2.nii.gz", "ch2bet.nii.gz", "aal.nii.gz", "aal.nii.txt")
STEP = 3


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory) -> Path:
    missing = [f for f in FILES if not (TEMPLATES / f).is_file()]
    if missing:
        pytest.fail(f"the real-atlas test needs {', '.join(str(TEMPLATES / f) for f in missing)}: install the "
                    "Debian package mricron-data (apt-get install mricron-data)")
    from medsam3.image import Image
    from medsam3.io import read_image, read_label_map, write_image

    out = tmp_path_factory.mktemp("mricron")
    for name, reader in (("ch2.nii.gz", read_image), ("ch2bet.nii.gz", read_image), ("aal.nii.gz", read_label_map)):
        image = reader(TEMPLATES / name)
        small = np.ascontiguousarray(image.array[::STEP, ::STEP, ::STEP])
        # same first voxel and axes, STEP times the spacing: the subsampled grid in the same space
        write_image(Image(small, tuple(s * STEP for s in image.spacing), image.origin, image.direction), out / name)
    shutil.copy(TEMPLATES / "aal.nii.txt", out / "aal.nii.txt")
    return out


@pytest.fixture(scope="module")
def atlas(atlas_dir):
    return prepare_dataset("colin27-aal", atlas_dir, atlas_dir / "aal.jsonl", progress=False)


def test_system_copy_prepares_without_reading_pixels():
    if not (TEMPLATES / "aal.nii.gz").is_file():
        pytest.fail("install the Debian package mricron-data (apt-get install mricron-data)")
    m = prepare_dataset("colin27-aal", None, None, progress=False)  # default root: the system templates
    assert [it.id for it in m] == ["colin27-aal/ch2/aal", "colin27-aal/ch2/ch2bet"]
    assert m[0].shape == [181, 217, 181] and m[0].spacing == [1.0, 1.0, 1.0] and m.root == TEMPLATES


def test_manifest_of_the_atlas(atlas):
    regions, brain = atlas[0], atlas[1]
    assert len(regions.labels) == 116 and regions.labels["37"] == "Hippocampus_L"
    assert regions.modality == "MR" and regions.dim == 3 and regions.shape == [61, 73, 61]
    assert brain.label_format == "mask" and brain.labels == {"1": "brain"} and brain.source == {"threshold": 0.0}
    prompts = {name: resolve_prompt(name) for name in regions.labels.values()}
    assert all(p.known for p in prompts.values())
    assert prompts["Hippocampus_L"].prompt == "left hippocampus"
    assert prompts["Thalamus_R"].prompt == "right thalamus"


def test_left_regions_lie_in_the_left_hemisphere(atlas):
    """Real-data check of the side words: AAL '_L' regions are at patient-left (LPS x > 0)."""
    loaded = load_item(atlas, atlas[0])
    # loaded volumes are radiological axial stacks: columns run from the patient's right to left,
    # so column j of the 3 mm grid (61 columns centred on the midline) lies at LPS x = 3 * (j - 30)
    lps_x = 3.0 * (np.arange(loaded.label.shape[2]) - 30)
    counts = loaded.slice_label_counts()
    assert counts.shape == (61, 117)
    present = 0
    for value, name in atlas[0].labels.items():
        side = resolve_prompt(name).side
        xs = np.nonzero(loaded.label == int(value))[2]
        if side is None or not len(xs):
            continue
        present += 1
        mean_x = lps_x[xs].mean()
        assert (mean_x > 0) == (side == "left"), (name, mean_x)
    assert present >= 100  # a few tiny regions vanish at 3 mm


def test_atlas_regions_lie_inside_the_brain_mask(atlas):
    regions = load_item(atlas, atlas[0]).label > 0
    brain = load_item(atlas, atlas[1]).label.astype(bool)
    assert brain.sum() > regions.sum() * 0.9
    # at full resolution 90.5 % of the AAL voxels lie inside ch2bet > 0 (the rest is cortex the
    # skull stripping cut off); the subsampled grid keeps that share
    assert 0.88 < (regions & brain).sum() / regions.sum() < 0.93


def test_samples_of_the_hippocampus(atlas):
    ds = PromptSegmentationDataset(atlas, 112, augment=False, absent_probability=0.0, box_prompt_probability=1.0)
    index = [n for n, (i, k) in enumerate(ds.index) if ds.targets[i][k][0] == "Hippocampus_L"][0]
    s = ds[index]
    assert s["prompt"] == "left hippocampus" and s["present"] and s["box_prompt"] is not None
    z = s["meta"]["slice_index"]
    label = load_item(atlas, atlas[0]).label
    assert (label[z] == 37).any()
    _, (expected,) = resize_to_canvas(np.zeros(label[z].shape), [label[z] == 37], 112, 112)
    assert torch.equal(s["semantic_mask"], expected)
    assert len(s["negative_prompts"]) == 3 and "left hippocampus" not in s["negative_prompts"]
    # absent samples: slices without the hippocampus, inside the head
    ds = PromptSegmentationDataset(atlas, 112, augment=True, absent_probability=1.0)
    s = ds[index]
    assert not s["present"] and not (label[s["meta"]["slice_index"]] == 37).any()
    brain = [n for n, (i, k) in enumerate(ds.index) if ds.targets[i][k][0] == "brain"][0]
    assert PromptSegmentationDataset(atlas, 112, absent_probability=0.0)[brain]["prompt"] in (
        "brain", "whole brain", "brain mask", "intracranial")


def test_cache_inspect_preview_of_the_atlas(atlas, atlas_dir):
    cache = build_cache(atlas, atlas_dir / "cache", progress=False)
    plain = PromptSegmentationDataset(atlas, 64, seed=1)
    cached = PromptSegmentationDataset(atlas, 64, seed=1, cache=cache)
    for k in (0, 36, 116):
        a, b = plain[k], cached[k]
        assert a["meta"] == b["meta"] and torch.equal(a["semantic_mask"], b["semantic_mask"])
        assert (a["image"] - b["image"]).abs().max() <= 2 / 255 + 1e-6
    summary = inspect_manifest(atlas, scan=True, progress=False)
    assert len(summary["classes"]) == 117 and all(c["known"] for c in summary["classes"].values())
    assert summary["classes"]["Hippocampus_L"]["items_present"] == 1
    assert summary["by_modality"] == {"MR": 2}
    png = preview_manifest(atlas, atlas_dir / "preview.png", count=2, columns=2, progress=False)
    assert png.stat().st_size > 10_000


def test_preview_tiles_are_radiological(atlas):
    """Axial tiles: patient left on the picture's right, anterior (frontal lobe) at the top."""
    from medsam3.data.preview import _tile

    ids: dict[str, int] = {}
    _, painted, _, _, shown = _tile(atlas, 0, ids, None)
    centre = {name: np.nonzero(painted == ids[name]) for name in shown}
    width, height = painted.shape[1], painted.shape[0]
    left = [n for n in shown if n.endswith("_L")]
    assert left and all(centre[n][1].mean() > width / 2 for n in left)
    assert all(centre[n][1].mean() < width / 2 for n in shown if n.endswith("_R"))
    frontal = [n for n in shown if n.startswith("Frontal")]
    occipital = [n for n in shown if n.startswith(("Occipital", "Calcarine", "Lingual"))]
    assert frontal and occipital
    assert max(centre[n][0].mean() for n in frontal) < height / 2 < min(centre[n][0].mean() for n in occipital)
