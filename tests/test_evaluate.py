"""Folder evaluation, resume, reports, comparison and the CLI, on real label maps.

The real data is nilearn's MNI152 brain mask (ICBM 2009a), subsampled to 4 x 4 x 3 mm with
its affine kept, written as NIfTI; predictions are shifted / eroded copies of it.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image as PILImage
from scipy import ndimage

import medsam3.evaluate.folder as folder_module
from medsam3 import Image
from medsam3.errors import ArgumentError, InputError
from medsam3.evaluate import compare_reports, evaluate_folder, score_masks
from medsam3.evaluate.cli import register
from medsam3.evaluate.cases import CSV_COLUMNS, read_cases_csv
from medsam3.io import read_label_map, write_label_map

FAST = {"n_bootstrap": 200, "progress": False}


def _save_like(reference: nib.Nifti1Image, array_ijk: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(array_ijk.astype(np.uint8), reference.affine), str(path))


@pytest.fixture(scope="module")
def mni_folders(tmp_path_factory):
    """GT folder of 4 real brain masks and a prediction folder with one of each failure kind."""
    from nilearn.datasets import load_mni152_brain_mask

    root = tmp_path_factory.mktemp("mni")
    small = load_mni152_brain_mask().slicer[::4, ::4, ::3]  # 50 x 59 x 63 voxels, 4 x 4 x 3 mm
    brain = np.asarray(small.dataobj) > 0                   # nibabel axes (i, j, k) = (x, y, z)
    gt_dir, pred_dir = root / "gt", root / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    for case in ("absent", "eroded", "missing", "shifted"):
        _save_like(small, brain, gt_dir / f"{case}.nii.gz")
    _save_like(small, np.roll(brain, 2, axis=0), pred_dir / "shifted.nii.gz")          # 2 voxels along x = 8 mm
    _save_like(small, ndimage.binary_erosion(brain, iterations=1), pred_dir / "eroded.nii.gz")
    _save_like(small, np.zeros_like(brain), pred_dir / "absent.nii.gz")
    (pred_dir / "absent.json").write_text(json.dumps({"labels": {"1": "brain"}, "absent": ["brain"]}))
    _save_like(small, brain, pred_dir / "extra.nii.gz")  # no ground truth for it
    return {"root": root, "gt": gt_dir, "pred": pred_dir, "nifti": small}


@pytest.fixture(scope="module")
def first_run(mni_folders):
    out = mni_folders["root"] / "eval"
    result = evaluate_folder(mni_folders["pred"], mni_folders["gt"], out, labels="1=brain", name="vanilla", **FAST)
    return result


def _csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _valid_png(path: Path) -> None:
    assert path.is_file(), path
    with PILImage.open(path) as im:
        im.verify()
    with PILImage.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 150


# ----------------------------------------------------------------------------- folder scoring


def test_csv_matches_metrics_computed_directly(mni_folders, first_run):
    rows = _csv_rows(first_run.cases_csv)
    assert list(rows[0])[:7] == ["case", "class", "dice", "iou", "nsd", "hd95", "assd"]
    assert list(rows[0]) == list(CSV_COLUMNS)
    by_case = {r["case"]: r for r in rows}
    assert sorted(by_case) == ["absent", "eroded", "missing", "shifted"]  # "extra" has no ground truth
    for case in ("shifted", "eroded"):
        gt = read_label_map(mni_folders["gt"] / f"{case}.nii.gz")
        pred = read_label_map(mni_folders["pred"] / f"{case}.nii.gz")
        assert gt.spacing == pytest.approx((4.0, 4.0, 3.0))
        direct = score_masks(pred.array == 1, gt.array == 1, gt.spacing, nsd_tolerance=2.0)
        row = by_case[case]
        assert row["class"] == "brain" and row["status"] == "scored" and row["spacing"] == "4x4x3"
        for metric in ("dice", "iou", "nsd", "hd95", "assd", "instance_f1"):
            assert float(row[metric]) == pytest.approx(getattr(direct, metric), rel=1e-6, abs=1e-9), metric
        assert int(row["gt_voxels"]) == direct.gt_voxels
    # A 2-voxel shift along x (4 mm voxels): the leading face is exactly 8 mm away.
    assert float(by_case["shifted"]["hd95"]) <= 8.0 + 1e-6
    assert float(by_case["shifted"]["dice"]) < 1.0


def test_failures_are_rows_with_dice_zero(mni_folders, first_run):
    by_case = {r["case"]: r for r in _csv_rows(first_run.cases_csv)}
    for case, status in (("missing", "missing_prediction"), ("absent", "absent_answer")):
        row = by_case[case]
        assert row["status"] == status and float(row["dice"]) == 0.0 and float(row["nsd"]) == 0.0
        assert float(row["hd95"]) > 300  # the grid's diagonal, not NaN: failures weigh in the means
    report = json.loads((first_run.out / "report.json").read_text())
    assert {(f["case"], f["status"]) for f in report["failures"]} == {("missing", "missing_prediction"),
                                                                     ("absent", "absent_answer")}
    assert report["missing_predictions"] == ["missing"]
    assert [Path(p).name for p in report["unmatched_predictions"]] == ["extra.nii.gz"]
    md = first_run.report_md.read_text()
    assert "absent_answer" in md and "missing_prediction" in md and "extra.nii.gz" in md
    assert report["summary"]["by"]["class"]["brain"]["dice"]["n"] == 4


def test_report_summary_and_plots(first_run):
    report = json.loads((first_run.out / "report.json").read_text())
    dice = [r["dice"] for r in report["cases"]]
    stats = report["summary"]["overall"]["dice"]
    assert stats["mean"] == pytest.approx(np.mean(dice)) and stats["median"] == pytest.approx(np.median(dice))
    assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
    assert report["settings"]["nsd_tolerance"] == 2.0 and report["monai_version"]
    assert "| brain |" in first_run.report_md.read_text()
    assert [p.name for p in first_run.plots] == ["boxplots_by_class.png"]
    _valid_png(first_run.plots[0])


# ----------------------------------------------------------------------------- resume


def test_resume_does_not_rescore(mni_folders, first_run, monkeypatch, tmp_path):
    out = tmp_path / "eval"
    shutil.copytree(first_run.out, out)
    before = (out / "cases.csv").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a scored case was scored again")

    monkeypatch.setattr(folder_module, "score_case", refuse)
    again = evaluate_folder(mni_folders["pred"], mni_folders["gt"], out, labels="1=brain", **FAST)
    assert again.scored_now == [] and (out / "cases.csv").read_text() == before
    assert len(again.rows) == 4

    # Changing a setting that changes scores would mix results: refused.
    with pytest.raises(ArgumentError, match="nsd_tolerance"):
        evaluate_folder(mni_folders["pred"], mni_folders["gt"], out, labels="1=brain", nsd_tolerance=1.0, **FAST)


def test_resume_rescored_missing_prediction_and_cut_line(mni_folders, first_run, monkeypatch, tmp_path):
    pred = tmp_path / "pred"
    shutil.copytree(mni_folders["pred"], pred)
    out = tmp_path / "eval"
    shutil.copytree(first_run.out, out)
    shutil.copy(mni_folders["gt"] / "missing.nii.gz", pred / "missing.nii.gz")  # the prediction appears
    csv_path = out / "cases.csv"
    text = csv_path.read_text()
    csv_path.write_text(text[: text.rstrip("\n").rfind(",")])  # an interrupted write: last case cut

    calls = []
    real = folder_module.score_case
    monkeypatch.setattr(folder_module, "score_case", lambda *a, **k: calls.append(a[3]) or real(*a, **k))
    again = evaluate_folder(pred, mni_folders["gt"], out, labels="1=brain", **FAST)
    assert sorted(calls) == ["missing", "shifted"]
    by_case = {r["case"]: r for r in read_cases_csv(csv_path)}
    assert by_case["missing"]["status"] == "scored" and by_case["missing"]["dice"] == 1.0
    assert len(again.rows) == 4


# ----------------------------------------------------------------------------- compare


def test_compare_two_runs(mni_folders, first_run, tmp_path):
    perfect = evaluate_folder(mni_folders["gt"], mni_folders["gt"], tmp_path / "perfect", labels="1=brain",
                              name="finetuned", **FAST)
    cmp = compare_reports(first_run.report_json, perfect.out, tmp_path / "cmp", n_bootstrap=200)
    assert cmp.names == ("vanilla", "finetuned")
    a = {r["case"]: r["dice"] for r in first_run.rows}
    overall = cmp.result["overall"]["dice"]
    assert overall["n"] == 4
    assert overall["mean_diff"] == pytest.approx(np.mean([1.0 - d for d in a.values()]))
    assert overall["ci_low"] <= overall["mean_diff"] <= overall["ci_high"]
    assert cmp.result["overall"]["hd95"]["mean_diff"] < 0
    content = json.loads(cmp.compare_json.read_text())
    assert content["difference"] == "second - first" and content["by"]["brain"]["dice"]["n"] == 4
    assert "finetuned − vanilla" in cmp.compare_md.read_text()
    assert {p.name for p in cmp.plots} == {"compare_bars_dice.png", "compare_bars_nsd.png",
                                          "compare_differences.png", "compare_boxplots.png"}
    for p in cmp.plots:
        _valid_png(p)


# ----------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medsam3")
    register(parser.add_subparsers(dest="command"))
    return parser


def test_cli_evaluate_and_compare(mni_folders, first_run, tmp_path, capsys):
    parser = _parser()
    args = parser.parse_args(["evaluate", "-p", str(mni_folders["gt"]), "-g", str(mni_folders["gt"]),
                              "-o", str(tmp_path / "cli"), "--labels", "1=brain", "--nsd-tolerance", "3",
                              "--bootstrap", "100", "--no-progress", "--no-plots", "--no-instances"])
    assert args.func(args) == 0
    rows = _csv_rows(tmp_path / "cli" / "cases.csv")
    assert {r["nsd_tolerance"] for r in rows} == {"3"} and {r["dice"] for r in rows} == {"1"}
    assert {r["instance_f1"] for r in rows} == {"nan"} and {r["gt_instances"] for r in rows} == {""}
    args = parser.parse_args(["evaluate", "--compare", str(first_run.report_json), str(tmp_path / "cli"),
                              "-o", str(tmp_path / "cmp"), "--names", "text,text+box", "--bootstrap", "100",
                              "--no-plots"])
    assert args.func(args) == 0
    printed = capsys.readouterr().out
    assert "text" in printed and "nsd_tolerance" in printed  # the differing tolerance is warned about
    assert (tmp_path / "cmp" / "compare.md").is_file()
    args = parser.parse_args(["evaluate", "-p", str(mni_folders["pred"]), "-o", str(tmp_path / "x")])
    with pytest.raises(ArgumentError, match="--ground-truth"):
        args.func(args)


# ----------------------------------------------------------------------------- matching rules (synthetic)


def _volume(values: dict[int, tuple[slice, ...]], shape=(6, 8, 10)) -> np.ndarray:
    a = np.zeros(shape, np.uint8)
    for value, box in values.items():
        a[box] = value
    return a


def test_classes_matched_by_sidecar_names_and_dataset_json(tmp_path):
    gt_dir, pred_dir = tmp_path / "labelsTs", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    liver, spleen = (slice(1, 4), slice(1, 5), slice(1, 5)), (slice(1, 4), slice(5, 8), slice(6, 9))
    ref = Image.from_array(np.zeros((6, 8, 10), np.uint8), spacing=(1.0, 1.0, 2.5))
    write_label_map(_volume({1: liver, 2: spleen}), ref, gt_dir / "c1.nii.gz")
    (tmp_path / "dataset.json").write_text(json.dumps(
        {"name": "Toy", "labels": {"background": 0, "liver": 1, "spleen": 2, "tumour": 3}}))
    # medsam3 wrote the prompts in another order, and one it could not place in the truth.
    write_label_map(_volume({1: spleen, 2: liver, 3: (slice(5, 6), slice(0, 2), slice(0, 2))}), ref,
                    pred_dir / "c1.nii", sidecar={"labels": {"1": "Spleen", "2": "liver", "3": "kidney"},
                                                  "absent": []})
    result = evaluate_folder(pred_dir, gt_dir, tmp_path / "out", **FAST)
    rows = {r["class"]: r for r in result.rows}
    assert set(rows) == {"liver", "spleen", "tumour", "kidney"}
    assert (rows["liver"]["label"], rows["liver"]["pred_label"], rows["liver"]["dice"]) == (1, 2, 1.0)
    assert (rows["spleen"]["label"], rows["spleen"]["pred_label"], rows["spleen"]["dice"]) == (2, 1, 1.0)
    assert rows["tumour"]["status"] == "true_negative" and math.isnan(rows["tumour"]["dice"])
    assert rows["kidney"]["status"] == "not_in_ground_truth" and rows["kidney"]["pred_voxels"] == 4
    assert {r["dataset"] for r in result.rows} == {"Toy"} and {r["dimension"] for r in result.rows} == {"3D"}
    assert "kidney" in result.report_md.read_text()


def test_unnamed_labels_2d_png_and_false_positive(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    ref = Image.from_array(np.zeros((16, 20), np.uint8))
    gt = np.zeros((16, 20), np.uint8)
    gt[2:8, 2:8] = 1
    pred = gt.copy()
    pred[10:12, 10:12] = 2  # a class the truth does not have: a false positive
    write_label_map(gt, ref, gt_dir / "img.png")
    write_label_map(pred, ref, pred_dir / "img.png")
    result = evaluate_folder(pred_dir, gt_dir, tmp_path / "out", both_empty="perfect", **FAST)
    rows = {r["class"]: r for r in result.rows}
    assert rows["label_1"]["dice"] == 1.0 and rows["label_1"]["dimension"] == "2D"
    assert rows["label_2"]["status"] == "false_positive" and rows["label_2"]["dice"] == 0.0


def test_grid_mismatch_is_a_clear_error(tmp_path):
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    labels = _volume({1: (slice(1, 4), slice(1, 5), slice(1, 5))})
    write_label_map(labels, Image.from_array(labels, spacing=(1.0, 1.0, 2.5)), gt_dir / "c.nii.gz")
    write_label_map(labels, Image.from_array(labels, spacing=(1.0, 1.0, 1.0)), pred_dir / "c.nii.gz")
    with pytest.raises(InputError, match=r"pred/c\.nii\.gz does not lie on the grid of .*gt/c\.nii\.gz"):
        evaluate_folder(pred_dir, gt_dir, tmp_path / "out", **FAST)
    with pytest.raises(InputError, match="does not exist"):
        evaluate_folder(tmp_path / "nowhere", gt_dir, tmp_path / "out", **FAST)
    with pytest.raises(ArgumentError, match="VALUE=NAME"):
        evaluate_folder(pred_dir, gt_dir, tmp_path / "out", labels="liver", **FAST)
