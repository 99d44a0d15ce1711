"""``medsam3 evaluate --model M --manifest F --prompt-mode ...`` and ``--predictions DIR --manifest F``,
on real data converted by the data module:

* 2D: pydicom's CT and MR test slices (real DICOM geometry) with hand-drawn label-map PNGs,
  two folder2d datasets (test split by folder name, plus one training item that must not
  be evaluated) merged into one manifest;
* 3D: ITK's KmeansTest T1 volume and its k-means segmentation (Debian
  insighttoolkit5-examples), cropped to 4 x 64 x 64 with its geometry, as an atlas item
  (no test split: the run falls back to all items with a note).

The model is the tiny random SAM3 (``tiny_model``); thresholds at 0 make it draw masks.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image as PILImage
from pydicom.data import get_testdata_file

import medsam3.data.loading as loading
from medsam3.data import convert_dataset, read_manifest, write_manifest
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError
from medsam3.evaluate import compare_reports, evaluate_manifest, evaluate_model, gt_objects
from medsam3.evaluate.cli import register
from medsam3.evaluate.cases import CSV_COLUMNS
from medsam3.evaluate.manifest import item_classes, prediction_stems
from medsam3.io import read_image, read_label_map, sidecar_path
from medsam3.predict import ImagePredictor

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
OPEN = {"threshold": 0.0, "presence_threshold": 0.0}
FAST = {"n_bootstrap": 100, "progress": False, "plots": False}


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def result_model_name(result) -> str:
    return json.loads((result.out / "settings.json").read_text())["run"]["model"]


def _write_mask(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array.astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def manifest_2d(tmp_path_factory) -> Path:
    """Two 2D datasets (CT, MR) in one manifest: 2 test items, 1 training item."""
    root = tmp_path_factory.mktemp("data2d")
    ct, mr = get_testdata_file("CT_small.dcm"), get_testdata_file("MR_small.dcm")
    # CT (128 x 128): liver is a disc; spleen two separate rectangles (two components).
    yy, xx = np.mgrid[:128, :128]
    ct_mask = np.zeros((128, 128), np.uint8)
    ct_mask[(yy - 60) ** 2 + (xx - 45) ** 2 < 20 ** 2] = 1
    ct_mask[30:50, 90:110] = 2
    ct_mask[90:100, 95:105] = 2
    (root / "ct" / "test" / "images").mkdir(parents=True)
    shutil.copy(ct, root / "ct" / "test" / "images" / "slice.dcm")
    _write_mask(root / "ct" / "test" / "masks" / "slice.png", ct_mask)
    # MR (64 x 64): liver is a rectangle, no spleen (a negative case for that class).
    mr_mask = np.zeros((64, 64), np.uint8)
    mr_mask[20:40, 15:45] = 1
    for split in ("test", "train"):
        (root / "mr" / split / "images").mkdir(parents=True)
        shutil.copy(mr, root / "mr" / split / "images" / "slice.dcm")
        _write_mask(root / "mr" / split / "masks" / "slice.png", mr_mask)
    items = []
    for name, modality in (("ct", "CT"), ("mr", "MR")):
        part = convert_dataset("folder2d", root / name, dataset=name, modality=modality,
                               labels={"1": "liver", "2": "spleen"}, progress=False).items
        for item in part:
            item.image, item.label = f"{name}/{item.image}", f"{name}/{item.label}"
        items += part
    return write_manifest(items, root / "manifest.jsonl", root)


@pytest.fixture(scope="module")
def manifest_3d(tmp_path_factory) -> Path:
    """A real MR volume (4 coronal slices of 64 x 64, 2 x 2 x 3 mm) with two classes, as an atlas."""
    root = tmp_path_factory.mktemp("data3d")
    for name in ("KmeansTest_T1UCharRaw.nii.gz", "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"):
        if not (ITK_DATA / name).exists():
            pytest.fail(f"{ITK_DATA / name} missing: install Debian's insighttoolkit5-examples")
    crop = (slice(32, 96), slice(32, 96), slice(28, 32))  # SimpleITK index order x, y, z
    sitk.WriteImage(sitk.ReadImage(str(ITK_DATA / "KmeansTest_T1UCharRaw.nii.gz"))[crop], str(root / "t1.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(ITK_DATA / "KmeansTest_T1KmeansPrelimSegmentation.nii.gz"))[crop],
                    str(root / "seg.nii.gz"))
    (root / "names.json").write_text(json.dumps({"5": "gray matter", "6": "white matter"}))
    convert_dataset("atlas", root, root / "manifest.jsonl", dataset="kmeans", image="t1.nii.gz",
                    label="seg.nii.gz", names="names.json", modality="MR", progress=False)
    return root / "manifest.jsonl"


@pytest.fixture(scope="module")
def text_run(tiny_model, manifest_2d, tmp_path_factory):
    """A text-mode run, recording the order of model calls and ground-truth reads."""
    events: list[str] = []
    mp = pytest.MonkeyPatch()
    original_labels, original_set_image = loading.load_labels, ImagePredictor.set_image

    def labels_spy(*args, **kwargs):
        events.append("labels")
        return original_labels(*args, **kwargs)

    def set_image_spy(self, image):
        events.append("predict")
        return original_set_image(self, image)

    mp.setattr(loading, "load_labels", labels_spy)
    mp.setattr(ImagePredictor, "set_image", set_image_spy)
    try:
        result = evaluate_model(tiny_model, manifest_2d, tmp_path_factory.mktemp("runs") / "text", "text",
                                name="text", **OPEN, **FAST)
    finally:
        mp.undo()
    return result, events


# ----------------------------------------------------------------------------- pure helpers


def test_gt_objects_boxes_points_and_limit():
    mask = np.zeros((20, 30), bool)
    mask[2:8, 3:13] = True      # 60 pixels
    mask[12:15, 20:23] = True   # 9 pixels
    objects, total = gt_objects(mask)
    assert total == 2 and [o.pixels for o in objects] == [60, 9]
    assert objects[0].box == [3.0, 2.0, 13.0, 8.0] and objects[1].box == [20.0, 12.0, 23.0, 15.0]
    assert objects[1].point == [21.5, 13.5]  # the centre pixel of the 3 x 3 square
    x, y = objects[0].point
    assert 3 < x < 13 and 2 < y < 8 and mask[int(y), int(x)]
    limited, total = gt_objects(mask, max_objects=1)
    assert total == 2 and len(limited) == 1 and limited[0].pixels == 60
    assert gt_objects(np.zeros((4, 4), bool)) == ([], 0)


def test_overlapping_classes_go_to_separate_layers_and_ids_to_safe_paths():
    item = ManifestItem(id="brats/c1", dataset="brats", split="test", image="i.nii.gz", label="l.nii.gz",
                        label_format="map", labels={"1": "edema", "2": "necrosis", "3": "enhancing tumor"},
                        modality="MR", dim=3, shape=[2, 2, 2], spacing=[1, 1, 1],
                        regions={"whole tumor": [1, 2, 3], "tumor core": [2, 3]})
    classes = item_classes(item)
    assert [(c.index, c.name, c.layer) for c in classes] == [
        (1, "edema", 0), (2, "necrosis", 0), (3, "enhancing tumor", 0), (4, "whole tumor", 1), (5, "tumor core", 2)]
    stems = prediction_stems(["ds/a b/../x", "ds/A", "ds/a"])
    assert str(stems["ds/a b/../x"]) == "ds/a_b/_/x"
    assert stems["ds/A"] != stems["ds/a"] and str(stems["ds/a"]).startswith("ds/a__")


# ----------------------------------------------------------------------------- 2D, text mode


def test_text_mode_rows_files_and_report(text_run, manifest_2d):
    result, _ = text_run
    rows = _csv_rows(result.cases_csv)
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert result.split == "test" and result.items == ["ct/test/slice", "mr/test/slice"]  # not the train item
    assert sorted((r["case"], r["class"]) for r in rows) == [
        ("ct/test/slice", "liver"), ("ct/test/slice", "spleen"), ("mr/test/slice", "liver"),
        ("mr/test/slice", "spleen")]
    by = {(r["case"], r["class"]): r for r in rows}
    assert by["mr/test/slice", "spleen"]["status"] in ("true_negative", "false_positive")  # no spleen in the truth
    assert by["ct/test/slice", "spleen"]["gt_voxels"] == str(20 * 20 + 10 * 10)
    assert {r["modality"] for r in rows} == {"CT", "MR"} and {r["dimension"] for r in rows} == {"2D"}
    manifest = read_manifest(manifest_2d)
    for case in ("ct/test/slice", "mr/test/slice"):
        pred_path = result.predictions / f"{case}.nii.gz"
        pred = read_label_map(pred_path)
        image = read_image(manifest.resolve(f"{case.split('/')[0]}/test/images/slice.dcm"))
        assert pred.shape == image.shape and pred.origin == pytest.approx(image.origin, abs=1e-4)
        assert pred.spacing == pytest.approx(image.spacing, abs=1e-6)
        side = json.loads(sidecar_path(pred_path).read_text())
        assert side["labels"] == {"1": "liver", "2": "spleen"} and side["prompt_mode"] == "text"
        assert side["model"] == side["run"]["model"] == result_model_name(result)
        assert by[case, "liver"]["prediction"] == str(pred_path)
    settings = json.loads((result.out / "settings.json").read_text())
    assert settings["run"]["prompt_mode"] == "text" and settings["run"]["split"] == "test"
    assert settings["run"]["score_threshold"] == 0.0 and settings["run"]["presence_threshold"] == 0.0
    report = json.loads(result.report_json.read_text())
    assert report["run"]["prompt_mode"] == "text" and report["run"]["sees_ground_truth"] is False
    assert report["run"]["prompts"] == {"liver": "liver", "spleen": "spleen"}
    assert set(report["summary"]["by"]["modality"]) == {"CT", "MR"}
    assert set(report["summary"]["by"]["dataset"]) == {"ct", "mr"}
    for group in report["summary"]["by"]["class"].values():
        assert {"mean", "median", "ci_low", "ci_high"} <= set(group["dice"])
    md = result.report_md.read_text()
    assert "## Run" in md and "prompt mode: **text**" in md and "## Per class" in md


def test_text_mode_reads_ground_truth_only_after_predicting(text_run):
    _, events = text_run
    # Per case: the image is encoded and answered first, the ground truth read afterwards.
    assert events == ["predict", "labels", "predict", "labels"]


def test_resume_skips_done_cases_and_refuses_other_settings(text_run, tiny_model, manifest_2d, tmp_path,
                                                             monkeypatch):
    result, _ = text_run
    out = tmp_path / "text"
    shutil.copytree(result.out, out)

    def refuse(*args, **kwargs):
        raise AssertionError("a done case was predicted again")

    monkeypatch.setattr(ImagePredictor, "set_image", refuse)
    again = evaluate_model(tiny_model, manifest_2d, out, "text", name="text", **OPEN, **FAST)
    assert again.scored_now == [] and again.predicted_now == []
    assert (out / "cases.csv").read_text() == (result.out / "cases.csv").read_text()
    # A prediction without its rows is scored from the file, not predicted again.
    lines = (out / "cases.csv").read_text().splitlines(keepends=True)
    (out / "cases.csv").write_text("".join(line for line in lines if not line.startswith("mr/test/slice,")))
    again = evaluate_model(tiny_model, manifest_2d, out, "text", name="text", **OPEN, **FAST)
    assert again.scored_now == ["mr/test/slice"] and again.predicted_now == []

    def scores(path):  # all but the prediction's path, which moved with the copy
        return sorted(tuple(v for k, v in r.items() if k != "prediction") for r in _csv_rows(path))

    assert scores(out / "cases.csv") == scores(result.out / "cases.csv")
    with pytest.raises(ArgumentError, match="presence_threshold"):
        evaluate_model(tiny_model, manifest_2d, out, "text", threshold=0.0, presence_threshold=0.3, **FAST)
    with pytest.raises(ArgumentError, match="prompt_mode"):
        evaluate_model(tiny_model, manifest_2d, out, "box", **OPEN, **FAST)


def test_absent_answers_are_dice_zero_and_listed(tiny_model, manifest_2d, tmp_path):
    result = evaluate_model(tiny_model, manifest_2d, tmp_path / "absent", "text", threshold=0.0,
                            presence_threshold=1.0, **FAST)
    rows = _csv_rows(result.cases_csv)
    positives = [r for r in rows if int(r["gt_voxels"]) > 0]
    assert len(positives) == 3
    assert all(r["status"] == "absent_answer" and float(r["dice"]) == 0.0 for r in positives)
    negative = next(r for r in rows if int(r["gt_voxels"]) == 0)
    assert negative["status"] == "true_negative"
    report = json.loads(result.report_json.read_text())
    assert sorted((f["case"], f["class"]) for f in report["failures"]) == sorted(
        (r["case"], r["class"]) for r in positives)
    assert "absent_answer" in result.report_md.read_text()


def test_2d_evaluation_gates_classes_outside_the_models_concepts(tiny_model_dir, manifest_2d, text_run, tmp_path):
    """A model trained on ``liver`` only answers ``spleen`` absent (with a warning, never run),
    in 2D evaluation as in ``segment``; ``liver`` is still predicted (thresholds at 0: drawn)."""
    from medsam3.model import MedSAM3

    directory = tmp_path / "liver-only"
    shutil.copytree(tiny_model_dir, directory)
    (directory / "medsam3.json").write_text(json.dumps({"concepts": ["liver"]}))
    model = MedSAM3.from_pretrained(directory, device="cpu")
    with pytest.warns(UserWarning, match="'spleen' is not a concept model .* was trained on"):
        result = evaluate_model(model, manifest_2d, tmp_path / "gated", "text", **OPEN, **FAST)
    rows = {(r["case"], r["class"]): r for r in _csv_rows(result.cases_csv)}
    ungated = {(r["case"], r["class"]): r for r in _csv_rows(text_run[0].cases_csv)}
    assert rows.keys() == ungated.keys()
    for key, row in rows.items():
        if key[1] == "spleen":
            assert row["status"] in ("absent_answer", "true_negative") and row["pred_voxels"] == "0"
        else:
            assert int(row["pred_voxels"]) > 0 and ungated[key]["status"] != "absent_answer"
    assert any(r["status"] == "absent_answer" for k, r in rows.items() if k[1] == "spleen")
    side = json.loads(sidecar_path(result.predictions / "ct/test/slice.nii.gz").read_text())
    assert "spleen" in side["absent"] and side["scores"]["spleen"] == 0.0


# ----------------------------------------------------------------------------- 2D, ground-truth modes


@pytest.mark.parametrize("mode", ["text+box", "box", "point"])
def test_ground_truth_modes_2d(mode, tiny_model, manifest_2d, text_run, tmp_path):
    result = evaluate_model(tiny_model, manifest_2d, tmp_path / mode, mode, name=mode, **OPEN, **FAST)
    rows = _csv_rows(result.cases_csv)
    assert len(rows) == 4 and {r["status"] for r in rows} <= {"scored", "false_negative", "absent_answer",
                                                             "true_negative", "false_positive"}
    side = json.loads(sidecar_path(result.predictions / "ct/test/slice.nii.gz").read_text())
    assert side["prompt_mode"] == mode
    spleen = side["gt_prompts"]["spleen"]
    if mode == "text+box":
        assert spleen == {"objects": 1, "unprompted_components": 0}  # one exemplar: the largest component
    else:
        assert spleen == {"objects": 2, "unprompted_components": 0}  # one prompt per component
        mr = json.loads(sidecar_path(result.predictions / "mr/test/slice.nii.gz").read_text())
        assert mr["not_prompted"] == ["spleen"]  # no spleen in the truth: nothing to box or click
        mr_spleen = next(r for r in rows if r["case"] == "mr/test/slice" and r["class"] == "spleen")
        assert mr_spleen["status"] == "true_negative" and mr_spleen["pred_voxels"] == "0"
    report = json.loads(result.report_json.read_text())
    assert report["run"]["prompt_mode"] == mode and report["run"]["sees_ground_truth"] is True
    assert "SEES THE GROUND TRUTH" in result.report_md.read_text()
    if mode == "text+box":  # the comparison: text vs text+box, paired by case and class
        cmp = compare_reports(text_run[0].report_json, result.report_json, tmp_path / "cmp", n_bootstrap=100,
                              plots=False)
        assert cmp.names == ("text", "text+box") and cmp.result["overall"]["dice"]["n"] >= 3


def test_max_objects_counts_unprompted_components(tiny_model, manifest_2d, tmp_path):
    result = evaluate_model(tiny_model, manifest_2d, tmp_path / "box1", "box", max_objects=1, datasets="ct",
                            **OPEN, **FAST)
    side = json.loads(sidecar_path(result.predictions / "ct/test/slice.nii.gz").read_text())
    assert side["gt_prompts"]["spleen"] == {"objects": 1, "unprompted_components": 1}
    assert any("were not prompted" in n for n in result.notes)
    assert len(_csv_rows(result.cases_csv)) == 2  # the spleen is still scored in full


# ----------------------------------------------------------------------------- existing predictions


def test_predictions_with_manifest_score_like_the_model_run(text_run, manifest_2d, tmp_path):
    result, _ = text_run
    preds = tmp_path / "preds"
    shutil.copytree(result.predictions, preds)
    scored = evaluate_manifest(preds, manifest_2d, tmp_path / "scored", **FAST)
    mine = {(r["case"], r["class"]): r for r in _csv_rows(scored.cases_csv)}
    theirs = {(r["case"], r["class"]): r for r in _csv_rows(result.cases_csv)}
    assert mine.keys() == theirs.keys()
    for key, row in mine.items():
        assert row["dice"] == theirs[key]["dice"] and row["status"] == theirs[key]["status"]
    # A missing prediction is a row per class with Dice 0, not a gap.
    for path in (preds / "ct" / "test").iterdir():
        path.unlink()
    scored = evaluate_manifest(preds, manifest_2d, tmp_path / "scored2", **FAST)
    ct_rows = [r for r in _csv_rows(scored.cases_csv) if r["case"] == "ct/test/slice"]
    assert [r["status"] for r in ct_rows] == ["missing_prediction"] * 2
    assert all(float(r["dice"]) == 0.0 for r in ct_rows)


def test_cli_model_and_manifest_modes(tiny_model, manifest_2d, text_run, tmp_path, monkeypatch, capsys):
    import argparse

    import medsam3.segmentation

    monkeypatch.setattr(medsam3.segmentation, "load_model", lambda *args, **kwargs: tiny_model)
    parser = argparse.ArgumentParser(prog="medsam3")
    register(parser.add_subparsers())
    args = parser.parse_args(["evaluate", "--model", "random:tiny", "--manifest", str(manifest_2d), "--prompt-mode",
                              "point", "--datasets", "mr", "-o", str(tmp_path / "cli"), "--threshold", "0",
                              "--presence-threshold", "0", "--bootstrap", "50", "--no-plots", "--no-progress"])
    assert args.func(args) == 0
    assert "predicted now: 1" in capsys.readouterr().out
    settings = json.loads((tmp_path / "cli" / "settings.json").read_text())
    assert settings["run"]["model"] == "random:tiny" and settings["run"]["prompt_mode"] == "point"
    args = parser.parse_args(["evaluate", "-p", str(text_run[0].predictions), "--manifest", str(manifest_2d),
                              "-o", str(tmp_path / "cli2"), "--bootstrap", "50", "--no-plots", "--no-progress"])
    assert args.func(args) == 0
    assert len(_csv_rows(tmp_path / "cli2" / "cases.csv")) == 4
    for bad in (["--model", "random:tiny"], ["--model", "random:tiny", "--manifest", str(manifest_2d), "-g", "x"],
                ["-p", "x", "--manifest", str(manifest_2d), "--labels", "1=liver"]):
        args = parser.parse_args(["evaluate", *bad, "-o", str(tmp_path / "bad")])
        with pytest.raises(ArgumentError):
            args.func(args)


# ----------------------------------------------------------------------------- 3D


def test_3d_text_mode_runs_segment_on_the_whole_volume(tiny_model, manifest_3d, tmp_path, monkeypatch):
    """segment's own prediction step, on the volume normalised once (no second normalisation)."""
    import medsam3.predict.pipeline
    from medsam3.data.loading import normalised_image

    calls = []
    original = medsam3.predict.pipeline.predict_normalized

    def spy(predictor, image, normalized, *args, **kwargs):
        calls.append((image.shape, normalized))
        return original(predictor, image, normalized, *args, **kwargs)

    monkeypatch.setattr(medsam3.predict.pipeline, "predict_normalized", spy)
    result = evaluate_model(tiny_model, manifest_3d, tmp_path / "t3", "text", threshold=0.5, presence_threshold=0.0,
                            **FAST)
    assert [shape for shape, _ in calls] == [(4, 64, 64)]  # one call, the whole volume
    manifest = read_manifest(manifest_3d)
    np.testing.assert_array_equal(calls[0][1], normalised_image(manifest, manifest.items[0]))
    assert result.split == "all" and any("no test split" in n for n in result.notes)
    rows = _csv_rows(result.cases_csv)
    assert [(r["class"], r["dimension"]) for r in rows] == [("gray matter", "3D"), ("white matter", "3D")]
    assert all(r["spacing"] == "2x2x3" for r in rows)
    for r in rows:  # every class is present in the truth: scored, or a listed failure with Dice 0
        assert r["status"] in ("scored", "false_negative", "absent_answer")
        if r["status"] != "scored":
            assert float(r["dice"]) == 0.0
    pred = read_label_map(result.predictions / "kmeans/t1/seg.nii.gz")
    image = read_image(Path(manifest_3d).parent / "t1.nii.gz")
    assert pred.shape == image.shape == (4, 64, 64)
    assert pred.direction == pytest.approx(image.direction) and pred.origin == pytest.approx(image.origin)
    side = json.loads(sidecar_path(result.predictions / "kmeans/t1/seg.nii.gz").read_text())
    assert side["whole_volume"] is True and side["volume"]["mode"] == "merged"
    assert "note: the manifest has no test split" in result.report_md.read_text()


def test_3d_presence_window_reaches_segment_and_is_a_run_setting(tiny_model, manifest_3d, tmp_path):
    result = evaluate_model(tiny_model, manifest_3d, tmp_path / "w", "text", volume_mode="slices", presence_window=3,
                            presence_threshold=0.0, **FAST)
    side = json.loads(sidecar_path(result.predictions / "kmeans/t1/seg.nii.gz").read_text())
    assert side["volume"]["mode"] == "slices" and side["volume"]["presence_window"] == 3
    assert json.loads((tmp_path / "w" / "settings.json").read_text())["run"]["presence_window"] == 3
    with pytest.raises(ArgumentError, match="presence-window is for text prompts on volumes"):
        evaluate_model(tiny_model, manifest_3d, tmp_path / "m", "text", presence_window=3, **FAST)
    with pytest.raises(ArgumentError, match="odd whole number"):
        evaluate_model(tiny_model, manifest_3d, tmp_path / "e", "text", volume_mode="slices", presence_window=2,
                       **FAST)
    assert not (tmp_path / "m").exists() and not (tmp_path / "e").exists()


def test_3d_box_mode_is_slice_wise(tiny_model, manifest_3d, tmp_path):
    result = evaluate_model(tiny_model, manifest_3d, tmp_path / "box", "box", max_objects=1, **OPEN, **FAST)
    rows = _csv_rows(result.cases_csv)
    assert [(r["class"], r["dimension"]) for r in rows] == [("gray matter", "3D"), ("white matter", "3D")]
    truth = read_label_map(Path(manifest_3d).parent / "seg.nii.gz").array
    side = json.loads(sidecar_path(result.predictions / "kmeans/t1/seg.nii.gz").read_text())
    assert side["volume"]["axis"] == "coronal"  # the acquisition plane: array axis z here
    for value, name in ((5, "gray matter"), (6, "white matter")):
        present = [k for k in range(truth.shape[0]) if (truth[k] == value).any()]
        info = side["gt_prompts"][name]
        assert info["slices"] == present and info["objects"] == len(present)  # one box per slice (max 1)
        assert info["unprompted_components"] > 0  # k-means classes are fragmented: counted, not hidden
    assert read_label_map(result.predictions / "kmeans/t1/seg.nii.gz").shape == (4, 64, 64)


def test_overlapping_classes_are_predicted_in_layer_files(tiny_model, manifest_2d, tmp_path):
    manifest = read_manifest(manifest_2d)
    items = [it for it in manifest.items if it.id == "mr/test/slice"]
    items[0].regions = {"abdominal organs": [1, 2]}  # overlaps liver and spleen: a second label map
    path = write_manifest(items, tmp_path / "regions.jsonl", manifest.root)
    result = evaluate_model(tiny_model, path, tmp_path / "layers", "text", **OPEN, **FAST)
    main = result.predictions / "mr/test/slice.nii.gz"
    layer = result.predictions / "mr/test/slice.layer1.nii.gz"
    assert json.loads(sidecar_path(main).read_text())["layers"] == [layer.name]
    assert json.loads(sidecar_path(layer).read_text())["labels"] == {"3": "abdominal organs"}
    assert set(np.unique(read_label_map(layer).array)) <= {0, 3}
    rows = {r["class"]: r for r in _csv_rows(result.cases_csv)}
    assert list(rows) == ["liver", "spleen", "abdominal organs"]
    assert rows["abdominal organs"]["gt_voxels"] == rows["liver"]["gt_voxels"] == "600"
    assert rows["abdominal organs"]["prediction"] == str(layer) and rows["abdominal organs"]["pred_label"] == "3"
    again = evaluate_manifest(result.predictions, path, tmp_path / "layers_scored", **FAST)
    assert [r["dice"] for r in _csv_rows(again.cases_csv)] == [r["dice"] for r in rows.values()]


def test_a_bad_item_stops_the_run_naming_it_and_the_items_before_it_are_kept(tiny_model, manifest_2d, tmp_path):
    """Items are read ahead of the model (medsam3.runner.run_cases), but an unreadable item still
    ends the run with an InputError naming it, after the items before it were predicted and scored;
    once fixed, the run resumes with that item alone."""
    from medsam3.errors import InputError

    root = tmp_path / "data"
    shutil.copytree(manifest_2d.parent, root)
    manifest = root / "manifest.jsonl"  # its header names its root: point it at the copy
    manifest.write_text(manifest.read_text().replace(json.dumps(str(manifest_2d.parent)), json.dumps(str(root))))
    image = root / "mr" / "test" / "images" / "slice.dcm"
    good = image.read_bytes()
    image.write_bytes(b"not a DICOM file" * 8)
    out = tmp_path / "run"
    with pytest.raises(InputError, match="^mr/test/slice: "):
        evaluate_model(tiny_model, manifest, out, "text", **OPEN, **FAST)
    assert {r["case"] for r in _csv_rows(out / "cases.csv")} == {"ct/test/slice"}
    assert not list((out / "predictions").glob("mr*"))
    image.write_bytes(good)
    again = evaluate_model(tiny_model, manifest, out, "text", **OPEN, **FAST)
    assert again.predicted_now == ["mr/test/slice"] and again.scored_now == ["mr/test/slice"]
    assert {r["case"] for r in again.rows} == {"ct/test/slice", "mr/test/slice"}
