"""Volume mode ``clips`` (Medical SAM3's official 3D scheme, issue #31 item 3): clip layout,
the per-pixel fusion rule on synthetic probabilities, and real volumes end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import medsam3
from medsam3.cli import build_parser, main
from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.io import read_image, read_label_map, write_image
from medsam3.predict import ImagePredictor
from medsam3.predict import volume as volume_module
from medsam3.predict.clips import check_clip_options, clip_ranges, fuse_clip_probabilities
from medsam3.predict.volume import ObjectPrompt, segment_volume
from medsam3.preprocess import normalize_intensity

COLIN = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"


def test_clip_layout():
    assert clip_ranges(10, 4) == [(0, 4), (4, 8), (8, 10)]  # the official layout: 4-slice clips, the last shorter
    assert clip_ranges(10, 4, 1) == [(0, 4), (3, 7), (6, 10)]
    assert clip_ranges(9, 4, 2) == [(0, 4), (2, 6), (4, 8), (6, 9)]
    assert clip_ranges(3, 4) == [(0, 3)] and clip_ranges(1, 1) == [(0, 1)]
    for bad in ((0, 0, "mean"), (4, 4, "mean"), (4, -1, "mean"), (4, 0, "median"), (2.5, 0, "mean")):
        with pytest.raises(ArgumentError):
            check_clip_options(*bad)


def test_fusion_rule_on_synthetic_probabilities():
    # 2 clips x 2 prompts on a 1 x 4 slice
    p = torch.tensor([
        [[[0.9, 0.6, 0.2, 0.5]], [[0.1, 0.7, 0.3, 0.5]]],   # clip 1: prompt 1, prompt 2
        [[[0.9, 0.2, 0.9, 0.5]], [[0.0, 0.7, 0.3, 0.5]]],   # clip 2
    ])
    # mean: pixel 0 -> 1 (0.9); pixel 1 -> 2 (0.7 > 0.4); pixel 2: 0.55 -> 1; pixel 3: 0.5 is not above 0.5
    np.testing.assert_array_equal(fuse_clip_probabilities(p, "mean"), [[1, 2, 1, 0]])
    # max: pixel 1 -> 2 (0.7 > 0.6); pixel 2: 0.9 -> 1
    np.testing.assert_array_equal(fuse_clip_probabilities(p, "max"), [[1, 2, 1, 0]])
    # a clip that saw nothing (zeros) drags the mean below the threshold, not the max
    q = torch.stack([p[0], torch.zeros_like(p[0])])
    np.testing.assert_array_equal(fuse_clip_probabilities(q, "mean"), [[0, 0, 0, 0]])  # 0.45, 0.35, ...
    np.testing.assert_array_equal(fuse_clip_probabilities(q, "max"), [[1, 2, 0, 0]])
    # ties go to the lower label; one clip = the official per-pixel rule
    np.testing.assert_array_equal(fuse_clip_probabilities(torch.full((1, 2, 1, 1), 0.8)), [[1]])
    np.testing.assert_array_equal(fuse_clip_probabilities(p[:1], "max", threshold=0.65), [[1, 2, 0, 0]])


@pytest.fixture(scope="module")
def colin_block() -> Image:
    """6 axial slices of the bundled colin27 T1 (2 mm), mirrored in x and y (direction diag(-1, -1, 1))."""
    image = read_image(COLIN)
    return Image(np.ascontiguousarray(image.array[40:46]), image.spacing, image.origin, image.direction,
                 modality="MR")


def _run(model, volume, direction, **options):
    predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0)
    return segment_volume(predictor, volume, ["brain", "skull"], direction=direction, empty_slices=None,
                          progress=False, **options)


@pytest.mark.slow
def test_clips_on_a_real_volume(tiny_model, colin_block, monkeypatch):
    volume = normalize_intensity(colin_block, modality="MR")
    ranges = []
    init = volume_module._VolumeRun.__init__

    def spy(run, *a, **k):
        init(run, *a, **k)
        ranges.append((run.lo, run.hi, run.p.backward_slices, run.mode))

    monkeypatch.setattr(volume_module._VolumeRun, "__init__", spy)
    result = _run(tiny_model, volume, colin_block.direction, mode="clips", clip_length=3)
    assert ranges == [(0, 3, 0, "merged"), (3, 6, 0, "merged")]  # independent forward clips
    assert result.mode == "clips" and result.labels.shape == volume.shape and result.labels.dtype == np.uint8
    assert result.stats["clips"] == 2 and result.stats["slices_encoded"] == 6  # each slice encoded once
    assert result.labels.any() and set(np.unique(result.labels)) <= {0, 1, 2}
    again = _run(tiny_model, volume, colin_block.direction, mode="clips", clip_length=3)
    np.testing.assert_array_equal(result.labels, again.labels)  # deterministic
    for s in result.summaries:
        assert s.present == bool(s.voxels) and s.voxels == int((result.labels == result.summaries.index(s) + 1).sum())

    # one clip over the whole volume is the merged mode propagated forwards only: the same foreground
    # (merged resolves overlaps between prompts by nesting first, clips by probability only)
    whole = _run(tiny_model, volume, colin_block.direction, mode="clips", clip_length=6)
    merged = _run(tiny_model, volume, colin_block.direction, mode="merged", backward_slices=0)
    np.testing.assert_array_equal(whole.labels > 0, merged.labels > 0)

    # overlapping clips: shared slices are encoded once (kept for the next clip) and fused; mean and max differ only there
    ranges.clear()
    mean = _run(tiny_model, volume, colin_block.direction, mode="clips", clip_length=4, clip_overlap=2)
    assert [r[:2] for r in ranges] == [(0, 4), (2, 6)]
    assert mean.stats["slices_encoded"] == 6
    top = _run(tiny_model, volume, colin_block.direction, mode="clips", clip_length=4, clip_overlap=2,
               clip_fusion="max")
    np.testing.assert_array_equal(mean.labels[:2], top.labels[:2])  # slices 0, 1: one clip each
    np.testing.assert_array_equal(mean.labels[4:], top.labels[4:])
    # max keeps every pixel one clip calls foreground, so it covers at least the mean's foreground
    assert ((top.labels > 0) | (mean.labels == 0)).all()


def test_clips_cli_writes_the_input_geometry(tiny_model_dir, colin_block, tmp_path):
    source = tmp_path / "colin_block.nii.gz"
    write_image(colin_block, source)
    out = tmp_path / "labels.nii.gz"
    assert main(["segment", "-i", str(source), "-o", str(out), "-p", "brain", "--model", str(tiny_model_dir),
                 "--mode", "clips", "--clip-length", "3", "--clip-overlap", "1", "--clip-fusion", "max",
                 "--threshold", "0", "--presence-threshold", "0", "--keep-empty"]) == 0
    labels = read_label_map(out)
    assert labels.shape == colin_block.shape
    np.testing.assert_allclose(labels.spacing, colin_block.spacing)
    np.testing.assert_allclose(labels.origin, colin_block.origin)
    np.testing.assert_allclose(labels.direction, colin_block.direction)
    sidecar = json.loads(Path(str(out).replace(".nii.gz", ".json")).read_text())
    assert sidecar["volume"]["mode"] == "clips"
    assert sidecar["volume"]["clips"] == {"length": 3, "overlap": 1, "fusion": "max", "count": 3}


def test_bad_clips_inputs(tiny_model, colin_block, tiny_model_dir, tmp_path, capsys):
    volume = normalize_intensity(colin_block, modality="MR")
    predictor = ImagePredictor(tiny_model)
    with pytest.raises(ArgumentError, match="clips is text-prompted"):
        segment_volume(predictor, volume, [], [ObjectPrompt(1, box=[1, 1, 9, 9])], mode="clips", progress=False)
    with pytest.raises(ArgumentError, match="no instance ids"):
        segment_volume(predictor, volume, ["brain"], mode="clips", instances=True, progress=False)
    out = tmp_path / "x.nii.gz"
    assert main(["segment", "-i", str(COLIN), "-o", str(out), "-p", "brain", "--model", str(tiny_model_dir),
                 "--mode", "clips", "--clip-length", "4", "--clip-overlap", "4"]) == 2
    assert "clip overlap must be" in capsys.readouterr().err and not out.exists()


def test_one_list_of_volume_modes():
    from medsam3.model.info import VOLUME_MODES

    parser = build_parser()
    segment = next(a for a in parser._subparsers._group_actions[0].choices["segment"]._actions if a.dest == "mode")
    assert tuple(segment.choices) == volume_module.MODES == VOLUME_MODES
