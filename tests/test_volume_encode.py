"""Volumes encode each slice once (issue #27 item 6): ViT passes counted in every volume mode
with several text prompts and a box, slices batched through the ViT with the same answers, and
the slice reader running ahead of the model on a thread (errors named, no deadlock).

The volume is real anatomy: 8 axial slices of the bundled Colin27 T1 (2 mm), the last two of
them empty background (skipped). The model is the tiny random one, at thresholds where its
detections start tracks, so the tracker really runs on the slices it must not encode again."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import medsam3
from medsam3.errors import InputError
from medsam3.io import read_image
from medsam3.model import MedSAM3
from medsam3.orientation import choose_orientation
from medsam3.predict import ImagePredictor
from medsam3.predict import volume as volume_module
from medsam3.predict.merge import MergeRule
from medsam3.predict.propagation import video_tracker
from medsam3.predict.settings import PredictSettings, VolumeSettings, add_arguments, from_args
from medsam3.predict.slice_feed import FeatureCache, encode_pixels, features_nbytes
from medsam3.predict.volume import EmptySliceRule, ObjectPrompt, segment_volume
from medsam3.preprocess import context_planes, normalize_intensity

COLIN = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"
PROMPTS = ["brain", "skull", "ventricle"]
BOX_SLICE = 2


@pytest.fixture(scope="module")
def colin():
    """``(volume, direction, spacing)``: axial slices 82..89 of Colin27 (88 and 89 are empty)."""
    image = read_image(COLIN)
    volume = normalize_intensity(image, modality="MR")[82:90]
    return np.ascontiguousarray(volume), image.direction, image.spacing


@pytest.fixture(scope="module")
def context_model(tiny_model_dir, tmp_path_factory):
    """The tiny model with 2.5D input: each slice goes in with its neighbours 4 mm away (2 slices)."""
    directory = shutil.copytree(tiny_model_dir, tmp_path_factory.mktemp("ctx") / "tiny-ctx")
    (directory / "medsam3.json").write_text(json.dumps({"context_mm": 4.0}))
    return MedSAM3.from_pretrained(directory, device="cpu")


class ViTSpy:
    """Counts ViT calls and fingerprints every image row they encode: the detector's vision
    encoder, the ViT backbone itself (the image tracker shares it), and the trackers' own vision
    encoders (the image tracker's wrapper; the video tracker is built without one)."""

    def __init__(self, model):
        self.calls: list[int] = []
        self.rows: list[str] = []
        self.other_calls = 0
        self.backbone_calls = 0
        self.handles = [model.detector.vision_encoder.register_forward_hook(self._record),
                        model.detector.vision_encoder.backbone.register_forward_hook(self._backbone)]
        for encoder in (getattr(model.tracker, "vision_encoder", None),
                        getattr(video_tracker(model)[1], "vision_encoder", None)):
            if encoder is not None:
                self.handles.append(encoder.register_forward_hook(self._other))

    def _backbone(self, *args):
        self.backbone_calls += 1

    def _record(self, module, args, kwargs_or_output, *rest):
        pixels = args[0]
        self.calls.append(pixels.shape[0])
        self.rows += [fingerprint(row) for row in pixels]

    def _other(self, *args):
        self.other_calls += 1

    def close(self):
        for handle in self.handles:
            handle.remove()


def fingerprint(pixels: torch.Tensor) -> str:
    return hashlib.sha1(pixels.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def expected_inputs(predictor, stack, slices, context):
    """The fingerprints of the distinct model inputs of ``slices`` (each slice with its neighbours)."""
    return {fingerprint(predictor.preprocess(context_planes(stack, z, context))[0]) for z in slices}


def run(model, colin, mode, encode_batch=1, read_ahead=True, objects=True, **options):
    volume, direction, spacing = colin
    predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0)
    boxes = [ObjectPrompt(BOX_SLICE, box=(20, 30, 60, 80))] if objects else []
    spy = ViTSpy(model)
    try:
        result = segment_volume(predictor, volume, PROMPTS, boxes, direction=direction, spacing=spacing,
                                mode=mode, progress=False, rule=MergeRule(key_score=0.0), encode_batch=encode_batch,
                                read_ahead=read_ahead, max_objects=options.pop("max_objects", 1), **options)
    finally:
        spy.close()
    return result, spy, predictor


@pytest.mark.parametrize("mode, options, encode_batch", [
    ("slices", {}, 1), ("propagate", {}, 1), ("merged", {}, 1), ("clips", {"clip_length": 3}, 1),
    ("clips", {"clip_length": 4, "clip_overlap": 2}, 1), ("clips", {"clip_length": 3, "clip_overlap": 1}, 1),
    ("slices", {}, 3), ("merged", {}, 3), ("clips", {"clip_length": 4, "clip_overlap": 2}, 3),
], ids=["slices", "propagate", "merged", "clips", "clips-overlap-2", "clips-overlap-1",
        "slices-batch-3", "merged-batch-3", "clips-overlap-2-batch-3"])
def test_every_slice_is_encoded_once_in_every_mode(tiny_model, colin, mode, options, encode_batch):
    result, spy, predictor = run(tiny_model, colin, mode, encode_batch, objects=mode != "clips", **options)
    stack = result.orientation.stack(colin[0])
    content = [z for z in range(stack.shape[0]) if not EmptySliceRule().is_empty(stack[z])]
    assert result.skipped_slices == [6, 7] and len(content) == 6  # the two background slices are not run
    # each non-empty slice's input went through the ViT exactly once, nothing else did
    assert sorted(spy.rows) == sorted(expected_inputs(predictor, stack, content, 0))
    assert len(spy.rows) == len(set(spy.rows)) == result.stats["slices_encoded"] == 6
    assert spy.other_calls == 0 and spy.backbone_calls == len(spy.calls)  # no ViT pass for the tracker
    if mode != "slices":
        assert result.stats["tracker_steps"] > 0 and result.stats["tracks"] > 0
    if mode != "clips":  # one pass: the 6 slices in ceil(6 / batch) calls (both halves of the pass in one order)
        assert len(spy.calls) == math.ceil(6 / encode_batch) and max(spy.calls) <= encode_batch
    else:
        assert max(spy.calls) <= encode_batch


def test_2_5d_inputs_are_each_computed_once(context_model, colin):
    """A 2.5D model's input of slice z is (z - 2, z, z + 2): a slice is in three inputs, but each
    distinct input is computed once."""
    for mode in ("merged", "slices"):
        result, spy, predictor = run(context_model, colin, mode, encode_batch=2)
        stack = result.orientation.stack(colin[0])
        assert predictor.context_offset(colin[2][2]) == 2
        expected = expected_inputs(predictor, stack, range(6), 2)
        assert len(expected) == 6 and sorted(spy.rows) == sorted(expected)
        assert spy.other_calls == 0 and spy.backbone_calls == len(spy.calls)


@pytest.mark.parametrize("mode, options", [
    ("merged", {}), ("slices", {}),
    pytest.param("clips", {"clip_length": 4, "clip_overlap": 2}, marks=pytest.mark.slow),
])
def test_batched_and_read_ahead_answers_equal_one_at_a_time(tiny_model, colin, mode, options):
    objects = mode != "clips"
    before, spy_before, _ = run(tiny_model, colin, mode, encode_batch=1, read_ahead=False, objects=objects, **options)
    after, spy_after, _ = run(tiny_model, colin, mode, encode_batch=4, read_ahead=True, objects=objects, **options)
    assert len(spy_after.calls) < len(spy_before.calls)
    assert before.labels.any()
    np.testing.assert_array_equal(before.labels, after.labels)
    assert before.stats == after.stats and before.skipped_slices == after.skipped_slices
    assert [s.slices_present for s in before.summaries] == [s.slices_present for s in after.summaries]


def test_batched_vit_output_matches_one_image_at_a_time(tiny_model, colin):
    predictor = ImagePredictor(tiny_model)
    pixels = [predictor.preprocess(plane) for plane in colin[0][:4]]
    together = encode_pixels(tiny_model, pixels)
    for i, p in enumerate(pixels):
        alone = encode_pixels(tiny_model, [p])[0]
        for a, b in zip([alone.last_hidden_state, *alone.fpn_hidden_states],
                        [together[i].last_hidden_state, *together[i].fpn_hidden_states]):
            assert a.shape == b.shape
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # float rounding of batched matmuls only


def test_feature_cache_is_bounded_by_its_budget(tiny_model, colin):
    predictor = ImagePredictor(tiny_model)
    feats = encode_pixels(tiny_model, [predictor.preprocess(colin[0][0])])[0]
    size = features_nbytes(feats)
    assert size == sum(t.numel() * 4 for t in [feats.last_hidden_state, *feats.fpn_hidden_states,
                                                 *feats.fpn_position_encoding])
    cache = FeatureCache(int(2.5 * size))
    for key in range(3):
        assert cache.put(key, feats, size)
    assert 0 not in cache and 1 in cache and 2 in cache and cache.nbytes == 2 * size and cache.evicted == 1
    assert cache.get(1) is feats and cache.put(3, feats, size) and 2 not in cache and 1 in cache  # LRU
    assert not FeatureCache(size - 1).put(0, feats, size)  # bigger than the budget: not kept


@pytest.mark.slow
def test_clip_overlap_beyond_the_cache_budget_encodes_again(tiny_model, colin):
    """With no memory for features, a slice shared by two clips is encoded once per clip (counted)."""
    result, spy, _ = run(tiny_model, colin, "clips", objects=False, clip_length=4, clip_overlap=2,
                         feature_cache_mb=0)
    assert result.stats["slices_encoded"] == len(spy.rows) == 10  # clips [0,4) [2,6) [4,8): 4 + 4 + 2 (6, 7 empty)
    assert len(set(spy.rows)) == 6


# ----------------------------------------------------------------------------- read-ahead


def _live_readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "medsam3-reader" and t.is_alive()]


def test_slices_are_prepared_on_a_thread_ahead_of_the_model(tiny_model, colin, monkeypatch):
    volume, direction, spacing = colin
    prepared, taken, threads, ahead = [], [], set(), []
    lock = threading.Condition()
    preprocess, set_pixels = ImagePredictor.preprocess, ImagePredictor.set_pixel_values

    def spy_preprocess(self, image):
        out = preprocess(self, image)
        with lock:
            threads.add(threading.current_thread().name)
            prepared.append(out)
            lock.notify_all()
        return out

    def spy_set(self, pixels, size, features=None):
        with lock:
            # the reader works while the model does: before the first slice is answered it has prepared
            # more slices (a reader in the model's thread would wait here forever: the timeout fails it)
            if not taken:
                assert lock.wait_for(lambda: len(prepared) >= 3, timeout=30)
            ahead.append(len(prepared) - len(taken))
            taken.append(pixels)
        return set_pixels(self, pixels, size, features=features)

    monkeypatch.setattr(ImagePredictor, "preprocess", spy_preprocess)
    monkeypatch.setattr(ImagePredictor, "set_pixel_values", spy_set)
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0)
    result = segment_volume(predictor, volume, PROMPTS, direction=direction, mode="slices", progress=False,
                            empty_slices=None)
    assert threads == {"medsam3-reader"} and len(taken) == 8 and result.stats["slices_encoded"] == 8
    assert [t is p for t, p in zip(taken, prepared)] == [True] * 8  # in the pass's order, each once
    # bounded: at most the queue's 2 waiting + the one the reader holds beyond the one being answered
    assert max(ahead) <= 4
    assert not _live_readers()


def test_a_reader_error_names_the_slice_and_stops_the_reader(tiny_model, colin, monkeypatch):
    volume, direction, spacing = colin
    preprocess = ImagePredictor.preprocess
    stack = choose_orientation(direction, None).stack(volume)

    def failing(kind):
        def spy(self, image):
            if np.array_equal(image, stack[4]):
                raise kind("cannot resize this")
            return preprocess(self, image)
        return spy

    for kind, expected in ((ValueError, RuntimeError), (InputError, InputError)):
        monkeypatch.setattr(ImagePredictor, "preprocess", failing(kind))
        predictor = ImagePredictor(tiny_model)
        with pytest.raises(expected, match=r"axial slice 4 of colin.*cannot resize this"):
            segment_volume(predictor, volume, PROMPTS, direction=direction, mode="merged", progress=False,
                           description="colin")
        assert not _live_readers()


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_an_error_in_the_model_thread_ends_the_pass_without_deadlock(tiny_model, colin, monkeypatch, error):
    """The reader is blocked on its full queue (prefetch 2) when the model's thread fails at slice 1:
    the failure (or Ctrl-C) reaches the caller and the reader thread ends."""
    volume, direction, _ = colin
    detect = volume_module._VolumeRun._detect

    def failing(run):
        if run.visiting == 1:
            raise error("stop at slice 1")
        return detect(run)

    monkeypatch.setattr(volume_module._VolumeRun, "_detect", failing)
    predictor = ImagePredictor(tiny_model)
    with pytest.raises(error, match="stop at slice 1"):
        segment_volume(predictor, volume, PROMPTS, direction=direction, mode="merged", progress=False,
                       empty_slices=None)
    assert not _live_readers()


# ----------------------------------------------------------------------------- settings


def test_encode_batch_setting_and_flag():
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings = from_args(parser.parse_args(["--encode-batch", "4"]))
    assert settings.volume.encode_batch == 4 and settings.volume.read_ahead
    assert from_args(parser.parse_args([])).volume.encode_batch is None  # automatic: 1 on a CPU
    for bad in (0, -2, 1.5, True):
        with pytest.raises(medsam3.errors.ArgumentError, match="encode batch"):
            VolumeSettings(encode_batch=bad)
    with pytest.raises(medsam3.errors.ArgumentError, match="--encode-batch"):
        from_args(parser.parse_args(["--encode-batch", "0"]))
    assert PredictSettings.build(encode_batch=2).volume.encode_batch == 2
