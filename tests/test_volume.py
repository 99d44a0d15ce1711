"""Volumes: the merge rule (exactly, with hand-made detector and tracker masks), slicing in
physical orientation, the SAM3 tracker's memory bank really used, real volumes end to end
(MNI152 T1 from nilearn, a DICOM CT series), and bad inputs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import numpy as np
import pydicom
import pytest
import torch

import medsam3
from medsam3.cli import main
from medsam3.errors import ArgumentError, InputError
from medsam3.image import Image
from medsam3.io import read_image, read_label_map, write_image
from medsam3.predict import ImagePredictor
from medsam3.predict import volume as volume_module
from medsam3.predict.input_size import with_input_size
from medsam3.predict.merge import (
    EMPTY,
    SUPPORTED,
    UNSUPPORTED,
    MergeRule,
    TrackLedger,
    fold_duplicates,
    greedy_match,
    mask_iou,
    resolve_voxels,
)
from medsam3.orientation import choose_orientation
from medsam3.predict.decode import DetectorRow
from medsam3.predict.propagation import TrackedObject, VolumeTracker, video_tracker
from medsam3.predict.volume import (
    EmptySliceRule,
    ObjectPrompt,
    VolumePredictor,
    _Candidate,
    _VolumeRun,
    segment_volume,
)

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
CT5N = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"


def _nilearn_mni_t1() -> Path:
    import nilearn

    path = Path(nilearn.__file__).parent / "datasets" / "data" / "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
    assert path.exists(), f"{path} missing: pip install nilearn"
    return path


def crop(image: Image, z: slice, y: slice, x: slice) -> Image:
    """A sub-volume on the same physical grid (origin moved to the first kept voxel)."""
    start = np.array([x.start, y.start, z.start], float)  # index (x, y, z)
    d = np.asarray(image.direction).reshape(3, 3)
    origin = np.asarray(image.origin) + d @ (start * np.asarray(image.spacing))
    return Image(np.ascontiguousarray(image.array[z, y, x]), image.spacing, tuple(origin), image.direction,
                 modality=image.modality)


def reorder(image: Image, perm: tuple[int, int, int], flips: tuple[bool, bool, bool]) -> Image:
    """The same physical image stored in another array order: ``new = old.transpose(perm)``, then
    array axis ``b`` reversed where ``flips[b]``; every voxel keeps its physical position."""
    d = np.asarray(image.direction).reshape(3, 3)
    spacing, shape = np.asarray(image.spacing), image.shape
    array = np.transpose(image.array, perm)
    new_d, new_s, first = np.zeros((3, 3)), np.zeros(3), np.zeros(3)  # first: old index (x, y, z) of new [0,0,0]
    for b in range(3):
        old_axis = perm[b]
        j_old, j_new = 2 - old_axis, 2 - b
        sign = -1.0 if flips[b] else 1.0
        new_d[:, j_new] = sign * d[:, j_old]
        new_s[j_new] = spacing[j_old]
        if flips[b]:
            array = np.flip(array, axis=b)
            first[j_old] = shape[old_axis] - 1
    origin = np.asarray(image.origin) + d @ (first * spacing)
    return Image(np.ascontiguousarray(array), tuple(new_s), tuple(origin), tuple(new_d.ravel()),
                 modality=image.modality)


@pytest.fixture(scope="module")
def mni_crop() -> Image:
    """A real T1 block through the basal ganglia: 6 axial slices of 40 x 48 mm (1 mm voxels)."""
    image = read_image(_nilearn_mni_t1())
    return crop(image, slice(70, 76), slice(95, 135), slice(75, 123))


# ------------------------------------------------------------------ the merge rule, exactly

def test_greedy_matching_is_one_to_one_by_decreasing_iou():
    iou = np.array([[0.9, 0.8, 0.0],
                    [0.85, 0.1, 0.0],
                    [0.3, 0.3, 0.2]])
    assert greedy_match(iou, 0.25) == [(0, 0), (2, 1)]  # row 1 lost column 0 to row 0 (0.9 > 0.85)
    assert greedy_match(iou, 0.95) == []
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2] = True
    b = torch.zeros(3, 4, 4, dtype=torch.bool)
    b[0, :1] = True
    b[2] = True
    np.testing.assert_allclose(mask_iou(a, b).numpy(), [[0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])


def test_ledger_bridges_misses_extends_ends_and_removes_drift():
    ledger = TrackLedger(max_unsupported=2)
    assert ledger.add(5, SUPPORTED).keep == []
    assert ledger.add(6, UNSUPPORTED).keep == [] and not ledger.stopped
    assert ledger.add(7, UNSUPPORTED).keep == []
    bridged = ledger.add(8, SUPPORTED)
    assert bridged.keep == [6, 7] and not bridged.stop
    ledger.add(9, UNSUPPORTED)
    end = ledger.add(10, EMPTY)  # the tracker lost it: the extension by one slice is kept
    assert end.keep == [9] and end.stop and ledger.stopped

    drift = TrackLedger(max_unsupported=2)
    drift.add(3, SUPPORTED)
    assert drift.add(2, UNSUPPORTED).drop == [] and drift.add(1, UNSUPPORTED).drop == []
    removed = drift.add(0, UNSUPPORTED)  # N + 1 = 3 unsupported masks in a row
    assert removed.drop == [2, 1, 0] and removed.keep == [] and removed.stop

    tail = TrackLedger(max_unsupported=2)
    tail.add(0, SUPPORTED)
    tail.add(1, UNSUPPORTED)
    assert tail.finish().keep == [1]  # the volume ended within N slices

    strict = TrackLedger(max_unsupported=0)
    assert strict.add(4, UNSUPPORTED).drop == [4]

    keep_all = TrackLedger(max_unsupported=1, drop_drift=False)
    assert [keep_all.add(i, UNSUPPORTED).stop for i in range(5)] == [False] * 5
    assert keep_all.add(5, EMPTY).keep == [0, 1, 2, 3, 4]
    with pytest.raises(RuntimeError):
        keep_all.add(6, SUPPORTED)


def test_duplicates_fold_and_voxels_go_to_the_most_probable_instance():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2] = True
    masks[1, :3] = True  # IoU 2/3 with 0
    masks[2, 3] = True
    assert fold_duplicates(torch.tensor([0.6, 0.9, 0.7]), masks, 0.5) == [[1, 0], [2]]
    assert fold_duplicates(torch.tensor([0.6, 0.9, 0.7]), masks, 0.7) == [[1], [2], [0]]

    probs = torch.tensor([[[0.9, 0.6, 0.2, 0.55]],
                          [[0.8, 0.6, 0.4, 0.7]]])
    labels, ids = resolve_voxels(probs, [1, 2], [7, 3], threshold=0.5)
    assert labels.tolist() == [[1, 1, 0, 2]]  # the tie at 0.6 goes to the earlier instance
    assert ids.tolist() == [[7, 7, 0, 3]]
    # a prompt whose mask lies inside another's larger one keeps its pixels (brain 0.9 around a
    # caudate of 0.6 made of two instances); partial overlap stays with the more probable
    brain = torch.full((1, 4, 6), 0.9)
    caudate = torch.zeros(2, 4, 6)
    caudate[0, 1, 1:3] = 0.6
    caudate[1, 2, 2] = 0.7
    labels, ids = resolve_voxels(torch.cat([brain, caudate]), [1, 2, 2], [5, 8, 9], threshold=0.5)
    assert labels[1:3, :4].tolist() == [[1, 2, 2, 1], [1, 1, 2, 1]] and (labels == 1).sum() == 21
    assert ids[1, 1:3].tolist() == [8, 8] and ids[2, 2] == 9
    left, right = torch.zeros(1, 4, 6), torch.zeros(1, 4, 6)
    left[0, :, :3], right[0, :, 2:] = 0.9, 0.6  # sharing one column: a third of left, a quarter of right
    labels, _ = resolve_voxels(torch.cat([left, right]), [1, 2], [5, 8], threshold=0.5)
    assert labels[0].tolist() == [1, 1, 1, 2, 2, 2]
    with pytest.raises(ArgumentError, match="IoU"):
        MergeRule(iou_threshold=0)
    with pytest.raises(ArgumentError, match="whole number"):
        MergeRule(max_unsupported=-1)


# -------------------------------- the pass, with a scripted detector and tracker (exact)

H = W = 16
A_BOX = (slice(2, 8), slice(2, 8))      # object A: found by the tracker on slices 1..9
B_BOX = (slice(10, 14), slice(10, 14))  # object B: one detection (slice 5); the tracker "sees" it everywhere


def box_logits(*boxes) -> torch.Tensor:
    out = torch.full((H, W), -10.0)
    for rows, cols in boxes:
        out[rows, cols] = 10.0
    return out


def cand(score, logits, strong) -> _Candidate:
    return _Candidate(score, logits, logits > 0, strong)


A_WIDE = (slice(2, 8), slice(2, 9))  # the detector's A on slice 4: one column wider than the tracker's
A_WEAK = (slice(2, 9), slice(2, 8))  # a weak detection of A on slice 9: one row taller
C_BOX = (slice(10, 14), slice(2, 6))  # object C: detected on 10 and 11 with a score below the key score


def scripted_detections(z: int) -> list[list[_Candidate]]:
    """Per prompt ("a", "b"): strong A on 3, 4 (wider), 5, 7, 8 (missed on 6), weak A on 9, C (0.45,
    below the 0.5 key score) on 10 and 11; B on 5 only."""
    a, b = [], []
    if z in (3, 5, 7, 8):
        a.append(cand(0.9, box_logits(A_BOX), True))
    if z == 4:
        a.append(cand(0.9, box_logits(A_WIDE), True))
    if z == 9:
        a.append(cand(0.3, box_logits(A_WEAK), False))  # below the 0.5 threshold, above support 0.25
    if z in (10, 11):
        a.append(cand(0.45, box_logits(C_BOX), True))
    if z == 5:
        b.append(cand(0.8, box_logits(B_BOX), True))
    return [a, b]


class ScriptedObject:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def step(self, index, features):
        self.log.append((self.name, index))
        present = 1 <= index <= 9 if self.name == "A" else True
        box = A_BOX if self.name == "A" else B_BOX
        return (box_logits(box), 5.0) if present else (torch.full((H, W), -1024.0), -5.0)

    def remember(self, index, logits, score):
        pass

    def fork(self, reverse):
        return ScriptedObject(self.name, self.log)

    def close(self):
        pass


class ScriptedTracker:
    """Stands in for :class:`VolumeTracker`: A and B move as the docstrings above say."""

    log: ClassVar[list] = []

    def __init__(self, model, num_slices, plane_shape):
        ScriptedTracker.log = []

    def slice_features(self, hidden):
        return None

    def start(self, index, features, reverse=False, mask=None, **prompt):
        name = "A" if bool(mask[4, 4]) else "B"
        return ScriptedObject(name, self.log), torch.where(mask, 20.0, -10.0).float(), 10.0


class FakeViT:
    """Stands in for the model in a volume's slice feed: the 'ViT output' is the pixels themselves."""

    device, dtype = torch.device("cpu"), torch.float32

    class detector:  # noqa: N801 - the attribute the feed reads
        @staticmethod
        def get_vision_features(pixel_values):
            from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

            return Sam3VisionEncoderOutput(last_hidden_state=pixel_values, fpn_hidden_states=(),
                                           fpn_position_encoding=())


class FakePredictor:
    """Thresholds of the 2D predictor; the 'image' is just the slice number."""

    score_threshold, presence_threshold, mask_threshold = 0.5, 0.5, 0.5
    model = FakeViT()

    def preprocess(self, plane):
        return torch.tensor([[float(plane[0, 0])]])

    def set_pixel_values(self, pixels, size, features=None):
        self.current = int(pixels.flatten()[0])
        self.vision_hidden_state = None

    def context_offset(self, slice_spacing):  # single slices, as a model without 2.5D input
        return 0


@pytest.fixture()
def scripted(monkeypatch):
    monkeypatch.setattr(volume_module, "VolumeTracker", ScriptedTracker)
    monkeypatch.setattr(_VolumeRun, "_detect", lambda run: [])
    monkeypatch.setattr(_VolumeRun, "_candidates",
                        lambda run, rows, presence: scripted_detections(run.predictor.current))
    volume = np.repeat(np.arange(12, dtype=np.float32)[:, None, None], H, 1).repeat(W, 2)

    def run(mode, **options):
        ScriptedTracker.log = []
        predictor = VolumePredictor(FakePredictor(), mode=mode, rule=MergeRule(max_unsupported=2),
                                    empty_slices=None, progress=False, **options)
        return predictor.segment(volume, ["a", "b"], instances=True)

    return run


def planes(*boxes) -> np.ndarray:
    out = np.zeros((H, W), np.uint8)
    for rows, cols in boxes:
        out[rows, cols] = 1
    return out


def test_merged_keeps_detections_bridges_misses_and_removes_drift(scripted):
    result = scripted("merged")
    a = lambda z: result.labels[z] == 1
    b = lambda z: result.labels[z] == 2
    # A: key slice 3; back-propagated to 2 and 1 (2 unsupported, then lost on 0: kept);
    # slice 4 is the union with the wider detection; 6 bridges the detector's miss;
    # 9 is supported by the weak detection (union: one row taller); lost on 10.
    for z in range(12):
        if z in (1, 2, 3, 5, 6, 7, 8):
            np.testing.assert_array_equal(a(z), planes(A_BOX), err_msg=f"slice {z}")
        elif z == 4:
            np.testing.assert_array_equal(a(z), planes(A_WIDE), err_msg="slice 4")
        elif z == 9:
            np.testing.assert_array_equal(a(z), planes(A_WEAK), err_msg="slice 9")
        elif z in (10, 11):  # C: kept as detections, no track
            np.testing.assert_array_equal(a(z), planes(C_BOX), err_msg=f"slice {z}")
        else:
            assert not a(z).any(), f"slice {z}"
    # B: detected on slice 5 only; the tracker's 3 unsupported masks each way are drift.
    assert [z for z in range(12) if b(z).any()] == [5]
    np.testing.assert_array_equal(b(5), planes(B_BOX))
    # one id per object across slices
    assert result.key_slices == {1: 3, 2: 5} and result.instance_labels == {1: 1, 2: 2, 3: 1}
    assert set(np.unique(result.instances[:10][result.labels[:10] == 1])) == {1}
    assert set(np.unique(result.instances[10:][result.labels[10:] == 1])) == {3}  # C keeps one id
    assert set(np.unique(result.instances[result.labels == 2])) == {2}
    assert result.summaries[0].slices_present == list(range(1, 12))
    assert result.summaries[0].instance_ids == [1, 3] and result.summaries[1].slices_present == [5]
    # B's drift: 3 tracker steps back (4, 3, 2) and 3 forward (6, 7, 8), then it is stopped
    assert sorted(i for name, i in ScriptedTracker.log if name == "B") == [2, 3, 4, 6, 7, 8]
    assert result.stats == {"slices_encoded": 12, "tracks": 2, "tracker_steps": 16}


def test_propagate_keeps_tracker_masks_and_slices_keeps_detections(scripted):
    propagated = scripted("propagate")
    a = [z for z in range(12) if (propagated.labels[z] == 1).any()]
    assert a == list(range(1, 12))
    np.testing.assert_array_equal(propagated.labels[4] == 1, planes(A_BOX))  # the tracker's mask, no union
    assert [z for z in range(12) if (propagated.labels[z] == 2).any()] == list(range(12))  # no drift rule

    slices = scripted("slices")
    assert [z for z in range(12) if (slices.labels[z] == 1).any()] == [3, 4, 5, 7, 8, 10, 11]
    np.testing.assert_array_equal(slices.labels[4] == 1, planes(A_WIDE))
    ids = [int(slices.instances[z][4, 4]) for z in (3, 4, 5, 7, 8)]
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[4] != ids[0]  # linked by IoU; the gap at 6 breaks it
    assert ScriptedTracker.log == []


#: Scripted presence of one text prompt on slices 0..11 (its mask: A_BOX on every slice).
PRESENCE = [0.1, 0.9, 0.2, 0.8, 0.8, 0.3, 0.9, 0.9, 0.9, 0.2, 0.1, 0.7]


class SkipSlices(EmptySliceRule):
    """The slices listed are 'empty background' (the fake volume's plane holds its slice number)."""

    def __init__(self, skipped):
        super().__init__()
        object.__setattr__(self, "skipped", tuple(skipped))

    def is_empty(self, plane):
        return int(plane[0, 0]) in self.skipped


@pytest.fixture()
def scripted_presence(monkeypatch):
    """``slices`` mode on 12 slices whose detector says PRESENCE (semantic head: one query scored
    by the presence), through the real candidate, linking and output code."""
    def rows(run):
        z = run.predictor.current
        return [DetectorRow(PRESENCE[z], torch.ones(1), box_logits(A_BOX)[None])]

    monkeypatch.setattr(_VolumeRun, "_detect", rows)
    volume = np.repeat(np.arange(12, dtype=np.float32)[:, None, None], H, 1).repeat(W, 2)

    def run(window, skipped=()):
        predictor = VolumePredictor(FakePredictor(), mode="slices", presence_window=window,
                                    empty_slices=SkipSlices(skipped), progress=False)
        result = predictor.segment(volume, ["a"])
        present = [z for z in range(12) if (result.labels[z] == 1).any()]
        for z in present:
            np.testing.assert_array_equal(result.labels[z], planes(A_BOX), err_msg=f"slice {z}")
        return present, result

    return run


def test_presence_window_takes_the_median_presence_of_neighbouring_slices(scripted_presence):
    alone, result = scripted_presence(1)
    assert alone == [1, 3, 4, 6, 7, 8, 11] and result.summaries[0].presence_score == pytest.approx(0.9)
    # window 3 (ends clamped: slice 11's window is 10, 11, 11): slice 1 alone between absent
    # ones goes, the one-slice gap at 5 (and 2, between 1 and 3) is filled; 11 keeps its own answer
    smoothed, result = scripted_presence(3)
    assert smoothed == [2, 3, 4, 5, 6, 7, 8, 11]
    assert result.summaries[0].slices_present == smoothed and result.summaries[0].present
    assert result.summaries[0].presence_score == pytest.approx(0.9)
    # window 5: slice 9's window 7-11 has median 0.7, and so do 10's (8-11, 11) and 11's (9-11, 11, 11)
    assert scripted_presence(5)[0] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    # a skipped (empty background) slice counts as absent in its neighbours' windows
    assert scripted_presence(1, skipped=[4])[0] == [1, 3, 6, 7, 8, 11]
    assert scripted_presence(3, skipped=[4])[0] == [2, 6, 7, 8, 11]


def test_presence_window_settings(tiny_model_dir, mni_crop, tmp_path, capsys):
    """A model's medsam3.json sets the default window of slices mode; the CLI overrides it; bad
    windows, and a window for a mode that tracks, are refused before anything is written."""
    import shutil

    directory = shutil.copytree(tiny_model_dir, tmp_path / "windowed")
    (directory / "medsam3.json").write_text(json.dumps({"presence_window": 3}))
    source = write_image(crop(mni_crop, slice(0, 4), slice(10, 15), slice(10, 16)), tmp_path / "block.nii.gz")
    for extra, window in (([], 3), (["--presence-window", "1"], 1)):
        out = tmp_path / f"w{window}.nii.gz"
        code = main(["segment", "-i", str(source), "-o", str(out), "-p", "putamen", "--model", str(directory),
                     "--mode", "slices", *extra])
        assert code == 0, capsys.readouterr().err
        assert json.loads((tmp_path / f"w{window}.json").read_text())["volume"]["presence_window"] == window
    model = medsam3.MedSAM3.from_pretrained(directory, device="cpu")
    merged = medsam3.segment(source, None, ["putamen"], model=model, mode="merged", progress=False)
    assert merged.sidecar["volume"]["presence_window"] == 1  # the model's window is for slices mode
    for window, message in ((2, "odd whole number"), (0, "odd whole number"), (3, "is for volume mode slices")):
        with pytest.raises(ArgumentError, match=message):
            medsam3.segment(source, tmp_path / "bad.nii.gz", ["putamen"], model=model, mode="merged",
                            presence_window=window, progress=False)
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    with pytest.raises(ArgumentError, match="--presence-window is for volumes"):
        medsam3.segment(ct, tmp_path / "bad.nii.gz", ["liver"], presence_window=3, model=model)
    assert not (tmp_path / "bad.nii.gz").exists()
    (directory / "medsam3.json").write_text(json.dumps({"presence_window": 4}))
    with pytest.raises(InputError, match=r"medsam3.json: 'presence_window' must be an odd"):
        medsam3.MedSAM3.from_pretrained(directory, device="cpu")


def test_backward_reach_is_limited_to_the_open_slices(scripted):
    result = scripted("merged", backward_slices=1)
    assert [z for z in range(12) if (result.labels[z] == 1).any()] == list(range(2, 12))
    assert (result.labels[1] == 0).all()


# ------------------------------------------------------------------ orientation

def test_orientation_follows_the_physical_axes():
    identity = np.eye(3).ravel()
    o = choose_orientation(identity)
    assert (o.axis, o.axes, o.flips) == ("axial", (0, 1, 2), (False, False))
    assert choose_orientation(identity, "coronal").axes == (1, 0, 2)
    assert choose_orientation(identity, "coronal").flips == (True, False)  # rows run superior -> inferior
    assert choose_orientation(identity, "sagittal").axes == (2, 0, 1)
    ras = choose_orientation((-1, 0, 0, 0, -1, 0, 0, 0, 1))  # NIfTI stored RAS: flipped in-plane
    assert ras.axes == (0, 1, 2) and ras.flips == (True, True)
    with pytest.raises(ArgumentError, match="unknown slicing axis"):
        choose_orientation(identity, "oblique")


def test_real_coronal_acquisition_from_itk_examples():
    path = ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz"
    if not path.exists():
        pytest.fail(f"{path} missing: apt-get install insighttoolkit5-examples")
    image = read_image(path)  # direction columns: x -> L, y -> S, z -> A
    assert choose_orientation(image.direction).axis == "coronal"
    axial = choose_orientation(image.direction, "axial")
    assert axial.slice_axis == 1 and axial.stack(image.array).shape == (128, 62, 128)
    sagittal = choose_orientation(image.direction, "sagittal")
    assert sagittal.slice_axis == 2


@pytest.mark.parametrize("perm, flips", [((2, 0, 1), (False, True, False)), ((1, 2, 0), (True, False, True)),
                                         ((0, 2, 1), (True, False, True))])
def test_a_reordered_volume_gives_the_same_slices_on_every_axis(mni_crop, perm, flips):
    moved = reorder(mni_crop, perm, flips)
    da, db = (np.asarray(i.direction).reshape(3, 3) for i in (mni_crop, moved))
    for axis, normal in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        a = choose_orientation(mni_crop.direction, axis)
        b = choose_orientation(moved.direction, axis)
        sa, sb = a.stack(mni_crop.array), b.stack(moved.array)
        # in-plane views are identical; slices follow each file's own order along the slicing axis
        same_way = np.sign(da[normal, 2 - a.slice_axis]) == np.sign(db[normal, 2 - b.slice_axis])
        np.testing.assert_array_equal(sb, sa if same_way else sa[::-1], err_msg=axis)
        assert b.slice_axis == perm.index(a.slice_axis)


def test_labels_land_in_the_input_array_order(tiny_model, mni_crop):
    """The same anatomy stored transposed and flipped gives the same labels, voxel for voxel."""
    from medsam3.preprocess import normalize_intensity

    block = crop(mni_crop, slice(0, 3), slice(0, 40), slice(0, 48))
    moved = reorder(block, (1, 0, 2), (True, False, True))  # array axes y, z, x: a "coronal" file
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0)
    results = []
    for image in (block, moved):
        volume = normalize_intensity(image, modality="MR")
        results.append(segment_volume(predictor, volume, ["putamen"], direction=image.direction, axis="axial",
                                      mode="slices", progress=False))
    assert results[1].orientation.slice_axis == 1 and results[1].labels.shape == moved.shape
    back = reorder(block.with_array(results[0].labels), (1, 0, 2), (True, False, True)).array
    assert results[0].labels.any()
    np.testing.assert_array_equal(results[1].labels, back)


def test_prompt_coordinates_are_pixels_of_the_input_array_plane():
    o = choose_orientation(np.eye(3).ravel(), "coronal")  # slices along array y; stack rows = -z
    shape = (10, 20, 30)  # (z, y, x)
    assert o.plane_shape(shape) == (10, 30)  # the plane array[:, k, :]
    assert o.plane_to_slice_xy(4.0, 2.0, shape) == (4.0, 8.0)  # row 2 of z counted from the top: 10 - 2
    mask = np.zeros((10, 30), bool)
    mask[0, 5] = True
    moved = o.plane_mask_to_slice(mask)
    assert moved.shape == (10, 30) and moved[9, 5]
    np.testing.assert_array_equal(o.stack(np.arange(6000).reshape(shape))[3][9, 5],
                                  np.arange(6000).reshape(shape)[0, 3, 5])


def test_empty_slice_rule():
    rule = EmptySliceRule()
    assert rule.is_empty(np.zeros((32, 32)))
    assert rule.is_empty(np.full((32, 32), 0.7))
    noise = np.random.default_rng(0).uniform(0, 0.04, (100, 100))
    assert rule.is_empty(noise)
    noise[50, 50] = 0.9  # 1 pixel of 10000 is below the 0.1 % (10 pixels) needed
    assert rule.is_empty(noise)
    noise[50, 40:60] = 0.9
    assert not rule.is_empty(noise)


# ------------------------------------------------------------------ the real tracker

@pytest.fixture()
def present_tracker(tiny_model):
    """The tiny model's video tracker with its object-score head biased to "present": random
    weights otherwise report every object lost, and nothing would be propagated."""
    _, video = video_tracker(tiny_model)
    bias = video.mask_decoder.pred_obj_score_head.proj_out.bias
    with torch.no_grad():
        bias += 20.0
    yield video
    with torch.no_grad():
        bias -= 20.0


def sphere_volume(z=6, size=32, centre=2.5, radius=4.5):
    zz, yy, xx = np.mgrid[:z, :size, :size]
    ball = (zz - centre) ** 2 + (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius ** 2
    return (0.1 + 0.3 * xx / size + 0.5 * ball).astype(np.float32), ball


def test_a_mask_on_one_slice_is_propagated_through_the_memory_bank(tiny_model, present_tracker, monkeypatch):
    volume, ball = sphere_volume()
    prompt = ObjectPrompt(2, mask=ball[2])
    predictor = ImagePredictor(tiny_model)
    memory_sizes, tracker_masks = [], {}
    attention = present_tracker.memory_attention.forward
    monkeypatch.setattr(present_tracker.memory_attention, "forward",
                        lambda *a, **k: memory_sizes.append(k["memory"].shape[0]) or attention(*a, **k))
    step = TrackedObject.step

    def spy(obj, index, features):
        out = step(obj, index, features)
        tracker_masks.setdefault(index, out[0].clone())
        return out

    monkeypatch.setattr(TrackedObject, "step", spy)
    result = segment_volume(predictor, volume, [], [prompt], instances=True, empty_slices=None, progress=False)

    assert result.summaries[0].kind == "interactive" and result.key_slices == {1: 2}
    np.testing.assert_array_equal(result.labels[2] == 1, ball[2])  # the given mask on its slice
    assert sorted(tracker_masks) == [0, 1, 3, 4, 5]  # forward to the end, then back from slice 2
    assert result.stats["tracker_steps"] == 5 and result.stats["slices_encoded"] == 6
    # every propagated slice read the memory bank: the conditioning slice, then more and more
    # slices (256 memory tokens each on the 16 x 16 grid, plus object pointers)
    assert len(memory_sizes) == 5 and all(m >= 256 for m in memory_sizes)
    assert memory_sizes[:3] == sorted(memory_sizes[:3]) and memory_sizes[2] > 2 * 256
    assert all((result.labels[z] == 1).any() for z in range(6))  # nonempty on every slice
    assert set(np.unique(result.instances)) == {0, 1}

    # without the memory (every slice conditioned as if it were the first) the masks change
    with_memory = {z: m for z, m in tracker_masks.items()}
    tracker_masks.clear()
    prepare = present_tracker._prepare_memory_conditioned_features
    monkeypatch.setattr(present_tracker, "_prepare_memory_conditioned_features",
                        lambda **k: prepare(**{**k, "is_initial_conditioning_frame": True}))
    segment_volume(predictor, volume, [], [prompt], empty_slices=None, progress=False)
    assert sorted(tracker_masks) == sorted(with_memory)
    assert all(not torch.allclose(with_memory[z], tracker_masks[z]) for z in with_memory)


def test_the_memory_bank_stays_bounded(tiny_model, present_tracker):
    volume, _ = sphere_volume(z=3)
    predictor = ImagePredictor(tiny_model)
    tracker = VolumeTracker(tiny_model, num_slices=40, plane_shape=(32, 32))
    tracker.keep_frames = 3
    predictor.set_image(volume[1])
    features = tracker.slice_features(predictor._features.last_hidden_state)
    obj, logits, score = tracker.start(0, features, mask=torch.ones(32, 32, dtype=torch.bool))
    obj.remember(0, logits, score)
    for index in range(1, 9):
        logits, score = obj.step(index, features)
        obj.remember(index, logits, score)
        held = obj.session.output_dict_per_obj[0]["non_cond_frame_outputs"]
        assert all("high_res_masks" not in out for out in held.values())
    assert obj.memory_frames() == [0, 5, 6, 7, 8]  # the key slice and the last keep_frames + 1
    assert obj.session.processed_frames == dict.fromkeys(range(40))  # no pixels are stored


def test_another_input_size_shares_the_weights(tiny_model):
    assert with_input_size(tiny_model, None) is tiny_model and with_input_size(tiny_model, 224) is tiny_model
    small = with_input_size(tiny_model, 168)
    assert small.image_size == 168 and small.config.tracker_config.memory_attention_rope_feat_sizes == [12, 12]
    for a, b in zip(tiny_model.detector.parameters(), small.detector.parameters()):
        assert a.data_ptr() == b.data_ptr()
    predictor = ImagePredictor(small, score_threshold=0.0, presence_threshold=0.0)
    predictor.set_image(np.random.default_rng(0).random((40, 50)).astype(np.float32))
    assert predictor._pixel_values.shape[-1] == 168 and predictor.predict(["x"])[0].semantic.shape == (40, 50)
    with pytest.raises(ArgumentError, match="multiple of the 14-pixel patch"):
        with_input_size(tiny_model, 100)


# ------------------------------------------------------------------ real volumes end to end

OPEN = {"threshold": 0.0, "presence_threshold": 0.0}


def assert_on_grid(path, reference: Image):
    written = read_label_map(path)
    assert written.shape == reference.shape
    assert written.spacing == pytest.approx(reference.spacing, abs=1e-6)
    assert written.origin == pytest.approx(reference.origin, abs=1e-5)
    assert written.direction == pytest.approx(reference.direction, abs=1e-6)
    return written


def test_mni152_merged_labels_and_instance_map_keep_the_geometry(tiny_model, mni_crop, tmp_path):
    source = write_image(mni_crop, tmp_path / "mni_block.nii.gz")
    out = tmp_path / "seg.nii.gz"
    seg = medsam3.segment(source, out, ["putamen", "thalamus"], model=tiny_model, progress=False,
                          instances=True, **OPEN)
    written = assert_on_grid(out, read_image(source))
    np.testing.assert_array_equal(written.array, seg.labels.array)
    instances = assert_on_grid(tmp_path / "seg_instances.nii.gz", read_image(source))
    assert seg.labels.array.any() and set(np.unique(written.array)) <= {0, 1, 2}
    assert ((instances.array > 0) == (written.array > 0)).all()
    side = json.loads((tmp_path / "seg.json").read_text())
    assert side["volume"]["mode"] == "merged" and side["volume"]["axis"] == "axial"
    inst_side = json.loads((tmp_path / "seg_instances.json").read_text())
    for i, info in inst_side["instances"].items():
        assert set(np.unique(written.array[instances.array == int(i)])) == {info["label"]}
    assert seg.extra["instances_output"] == tmp_path / "seg_instances.nii.gz"


def test_dicom_series_box_propagated_through_the_volume(tiny_model, tmp_path, present_tracker):
    out = tmp_path / "ct.nrrd"
    seg = medsam3.segment(CT5N, out, ["bone"], box=[2, 3, 12, 14], slice_index=2, model=tiny_model,
                          progress=False, axis="axial")
    assert_on_grid(out, read_image(CT5N))
    box = seg.results[1]
    assert seg.prompts == ["bone", "box"] and box.kind == "interactive"
    assert box.slices_present == [0, 1, 2, 3, 4]  # drawn on slice 2, propagated both ways


def test_cli_volume_flags(tiny_model_dir, mni_crop, tmp_path, capsys):
    source = write_image(crop(mni_crop, slice(0, 4), slice(10, 15), slice(10, 16)), tmp_path / "block.nii.gz")
    out = tmp_path / "ct.nii.gz"
    code = main(["segment", "-i", str(source), "-o", str(out), "-p", "putamen", "--model", str(tiny_model_dir),
                 "--mode", "slices", "--axis", "coronal", "--instances", "--keep-empty", "--threshold", "0",
                 "--presence-threshold", "0", "--backward-slices", "2", "--max-unsupported", "1", "--size", "168"])
    assert code == 0, capsys.readouterr().err
    assert "instances:" in capsys.readouterr().out
    assert_on_grid(out, read_image(source))
    side = json.loads((tmp_path / "ct.json").read_text())
    assert side["volume"]["axis"] == "coronal" and side["volume"]["slice_axis"] == "y"
    assert side["volume"]["model_input_size"] == 168
    assert side["volume"]["merge_rule"] == {"iou_threshold": 0.3, "max_unsupported": 1, "backward_slices": 2,
                                            "key_score": 0.5}
    assert (tmp_path / "ct_instances.nii.gz").exists()


def test_bad_volume_inputs(tiny_model, tmp_path, capsys):
    ct = pydicom.data.get_testdata_file("CT_small.dcm")
    with pytest.raises(ArgumentError, match="--axis axial given, but .* is a 2D image"):
        medsam3.segment(ct, tmp_path / "x.nii.gz", ["liver"], axis="axial", model=tiny_model)
    with pytest.raises(ArgumentError, match="--instances is for volumes"):
        medsam3.segment(ct, tmp_path / "x.nii.gz", ["liver"], instances=True, model=tiny_model)
    with pytest.raises(ArgumentError, match="--size is for volumes"):
        medsam3.segment(ct, tmp_path / "x.nii.gz", ["liver"], size=504, model=tiny_model)
    with pytest.raises(ArgumentError, match="input size 500"):
        medsam3.segment(CT5N, tmp_path / "x.nii.gz", ["liver"], size=500, model=tiny_model)
    with pytest.raises(ArgumentError, match=r"--slice 5 is out of range: .* has 5 axial slices \(0..4\)"):
        medsam3.segment(CT5N, tmp_path / "x.nii.gz", [], box=[1, 1, 5, 5], slice_index=5, model=tiny_model)
    with pytest.raises(ArgumentError, match=r"16 coronal slices \(0..15\)"):
        medsam3.segment(CT5N, tmp_path / "x.nii.gz", [], box=[1, 1, 5, 4], slice_index=20, axis="coronal",
                        model=tiny_model)
    with pytest.raises(ArgumentError, match="need --slice"):
        medsam3.segment(CT5N, tmp_path / "x.nii.gz", [], points=[[3, 3]], model=tiny_model)
    with pytest.raises(ArgumentError, match="not inside slice 1"):
        medsam3.segment(CT5N, tmp_path / "x.nii.gz", [], box=[1, 1, 40, 5], slice_index=1, model=tiny_model)
    with pytest.raises(ArgumentError, match="unknown volume mode"):
        medsam3.segment(CT5N, tmp_path / "x.nii.gz", ["liver"], mode="video", model=tiny_model)
    predictor = ImagePredictor(tiny_model)
    with pytest.raises(ArgumentError, match="must be 3D"):
        segment_volume(predictor, np.zeros((4, 4)), ["x"])
    with pytest.raises(ArgumentError, match="mask on slice 0 is empty"):
        segment_volume(predictor, np.zeros((2, 4, 4)), [], [ObjectPrompt(0, mask=np.zeros((4, 4), bool))])
    assert not list(tmp_path.iterdir())
    code = main(["segment", "-i", ct, "-o", str(tmp_path / "y.nii.gz"), "-p", "x", "--axis", "sagittal",
                 "--model", "random:tiny"])
    assert code == 2 and "2D image" in capsys.readouterr().err


def test_a_model_with_context_gets_each_slice_with_its_neighbours(tiny_model_dir, mni_crop, tmp_path, monkeypatch):
    """``context_mm`` in medsam3.json: every slice is encoded as (slice - k, slice, slice + k) on
    red, green, blue, k = round(context_mm / the slicing axis's spacing), whatever the file's array
    order; a model without it gets the grey slice."""
    import shutil

    from medsam3.model import MedSAM3
    from medsam3.preprocess import normalize_intensity

    directory = shutil.copytree(tiny_model_dir, tmp_path / "ctx")
    (directory / "medsam3.json").write_text(json.dumps({"context_mm": 5.0}))
    model = MedSAM3.from_pretrained(directory, device="cpu")
    block = mni_crop.with_array(mni_crop.array)
    block = Image(block.array, (1.0, 1.0, 2.5), block.origin, block.direction, modality="MR")  # k = 2
    moved = reorder(block, (1, 0, 2), (True, False, True))  # the slicing axis is now array axis 1
    fed = []  # the model inputs, prepared in order on the slice feed's reader thread
    original = ImagePredictor.preprocess
    monkeypatch.setattr(ImagePredictor, "preprocess", lambda self, image: (fed.append(np.array(image)),
                                                                           original(self, image))[1])
    labels = []
    for image in (block, moved):
        fed.clear()
        predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0)
        assert predictor.context_mm == 5.0
        seg = segment_volume(predictor, normalize_intensity(image, modality="MR"), ["putamen"],
                             direction=image.direction, spacing=image.spacing, axis="axial", mode="slices",
                             progress=False)
        labels.append(seg.labels)
        stack = seg.orientation.stack(normalize_intensity(image, modality="MR"))
        assert len(fed) == 6 and all(f.shape == stack.shape[1:] + (3,) for f in fed)
        for z, f in enumerate(fed):
            for channel, source in enumerate((max(z - 2, 0), z, min(z + 2, 5))):
                np.testing.assert_array_equal(f[..., channel], stack[source])
    back = reorder(block.with_array(labels[0]), (1, 0, 2), (True, False, True)).array
    np.testing.assert_array_equal(labels[1], back)
    fed.clear()
    segment_volume(ImagePredictor(MedSAM3.from_pretrained(tiny_model_dir, device="cpu")),
                   normalize_intensity(block, modality="MR"), ["putamen"], spacing=block.spacing, mode="slices",
                   progress=False)
    assert fed and all(f.ndim == 2 for f in fed)
    (directory / "medsam3.json").write_text(json.dumps({"context_mm": "wide"}))
    with pytest.raises(InputError, match="medsam3.json: 'context_mm' must be a number of mm"):
        MedSAM3.from_pretrained(directory, device="cpu")  # refused when loaded, before any prediction
