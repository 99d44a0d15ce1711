"""Batch inference (medsam3.batch): finding cases, per-case settings, resume, fault isolation,
deterministic shares and a real 2-process torchrun run, on real files."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from medsam3 import read_image
from medsam3.batch import find_cases, segment_many
from medsam3.batch.cases import apply_jobs
from medsam3.batch.parts import current_share
from medsam3.cli import main
from medsam3.errors import ArgumentError

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
CT5N = Path(pydicom.data.__file__).parent / "test_files" / "dicomdirtests" / "98892001" / "CT5N"
CT5N_UID = "1.3.6.1.4.1.5962.1.1.0.0.0.1194734704.16302.0.6"
PNGS = ["BrainT1SliceBorder20.png", "BrainProtonDensitySliceBorder20.png", "VisibleWomanEyeSlice.png",
        "Circle.png", "BinaryImage.png", "HoughTransformTwoCircles.png", "DiagonalLines.png", "VentricleModel.png",
        "WatershedSegmentation.png", "BrainProtonDensitySliceR10X13Y17.png", "FivePointsDilated.png",
        "BrainProtonDensitySliceShifted13x17y.png"]


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture()
def mixed(tmp_path) -> Path:
    """Real files in nested folders: 2D PNG and MetaImage, a NIfTI volume, a 5-slice DICOM
    series, one DICOM file, a truncated DICOM file, a non-image file, a hidden file."""
    root = tmp_path / "cohort"
    (root / "site1").mkdir(parents=True)
    (root / "site2" / "ct5n").mkdir(parents=True)
    shutil.copy(ITK_DATA / "BrainT1SliceBorder20.png", root / "site1" / "t1.png")
    shutil.copy(ITK_DATA / "VisibleWomanEyeSlice.png", root / "eye.png")
    for name in ("BrainProtonDensitySliceBorder20.mhd", "BrainProtonDensitySliceBorder20.raw"):
        shutil.copy(ITK_DATA / name, root / "site1" / name)
    for f in CT5N.iterdir():
        shutil.copy(f, root / "site2" / "ct5n" / f.name)
    shutil.copy(get_testdata_file("CT_small.dcm"), root / "site2" / "ct_small.dcm")
    data = Path(get_testdata_file("MR_small.dcm")).read_bytes()
    (root / "site2" / "truncated.dcm").write_bytes(data[:3000])
    (root / "notes.txt").write_text("not an image\n")
    (root / ".hidden.png").write_bytes((ITK_DATA / "Circle.png").read_bytes())
    return root


def test_folder_cases_one_per_file_and_series_with_stable_names(mixed, tmp_path):
    out = mixed / "out"  # an output folder inside the input folder is never searched
    out.mkdir()
    shutil.copy(ITK_DATA / "Circle.png", out / "old.png")
    cases = find_cases(mixed, exclude=out)
    assert [c.name for c in cases] == ["eye", "site1/BrainProtonDensitySliceBorder20", "site1/t1", "site2/ct5n",
                                       "site2/ct_small", "site2/truncated"]
    by = {c.name: c for c in cases}
    assert by["site2/ct5n"].input == mixed / "site2" / "ct5n"
    assert by["site2/ct5n"].settings == {"series_uid": CT5N_UID}
    assert by["site1/BrainProtonDensitySliceBorder20"].input.suffix == ".mhd"  # the .raw is its data, not a case
    assert [c.name for c in find_cases(mixed, exclude=out)] == [c.name for c in cases]  # stable


def test_names_keep_the_whole_file_name_when_two_files_would_share_one(tmp_path):
    shutil.copy(ITK_DATA / "Circle.png", tmp_path / "a.png")
    shutil.copy(ITK_DATA / "KmeansTest_T1RawSkullStrip.nii.gz", tmp_path / "a.nii.gz")
    assert [c.name for c in find_cases(tmp_path)] == ["a.nii.gz", "a.png"]


def test_text_list_and_manifest_and_jobs(tmp_path):
    for name in ("Circle.png", "BinaryImage.png"):
        shutil.copy(ITK_DATA / name, tmp_path / name)
    (tmp_path / "sub").mkdir()
    shutil.copy(ITK_DATA / "Circle.png", tmp_path / "sub" / "Circle.png")
    listing = tmp_path / "cases.txt"
    listing.write_text("# cohort\nCircle.png\n\nsub/Circle.png\n" + str(tmp_path / "BinaryImage.png") + "\n")
    assert [c.name for c in find_cases(listing)] == ["BinaryImage", "Circle", "sub/Circle"]

    manifest = tmp_path / "cases.jsonl"
    manifest.write_text(json.dumps({"input": "Circle.png", "prompts": "circle", "window": [40, 400]}) + "\n" +
                        json.dumps({"input": "BinaryImage.png", "case": "bin", "box": [1, 2, 30, 40], "slice": "0"})
                        + "\n")
    cases = {c.name: c for c in find_cases(manifest)}
    assert cases["Circle"].settings == {"prompts": ["circle"], "window": (40, 400)}
    assert cases["bin"].settings == {"box": [1, 2, 30, 40], "slice_index": 0}

    jobs = tmp_path / "jobs.csv"
    jobs.write_text("case,prompts,box,points,point_labels,window\n"
                    "Circle,left kidney; liver,,10 20; 30 40,1 0,abdomen\n"
                    "sub/Circle,,5 6 7 8,,,\"40,400\"\n")
    cases = {c.name: c for c in apply_jobs(find_cases(listing), jobs)}
    assert cases["Circle"].settings == {"prompts": ["left kidney", "liver"], "points": [[10.0, 20.0], [30.0, 40.0]],
                                        "point_labels": [1, 0], "window": "abdomen"}
    assert cases["sub/Circle"].settings == {"box": [5.0, 6.0, 7.0, 8.0], "window": (40.0, 400.0)}
    assert cases["BinaryImage"].settings == {}

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"case": "nope", "prompts": ["x"]}) + "\n")
    with pytest.raises(ArgumentError, match=r"bad.jsonl row 1: no case 'nope'"):
        apply_jobs(find_cases(listing), bad)
    bad.write_text(json.dumps({"case": "Circle", "colour": "red"}) + "\n")
    with pytest.raises(ArgumentError, match=r"unknown field 'colour'"):
        apply_jobs(find_cases(listing), bad)
    listing.write_text("Circle.png\nmissing.png\n")
    with pytest.raises(ArgumentError, match=r"line 2: missing.png"):
        find_cases(listing)


def test_python_api_is_medsam3_segment_many():
    import medsam3

    assert medsam3.segment_many is segment_many


def test_shares_are_a_deterministic_partition():
    items = list(range(23))
    taken = []
    for part in range(3):
        for rank in range(2):
            share = current_share(3, part, {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank)})
            assert share.count == 6 and share.index == part * 2 + rank
            taken += share.take(items)
    assert sorted(taken) == items  # every case in exactly one share
    assert current_share(3, 1, {}).take(items) == [1, 4, 7, 10, 13, 16, 19, 22]
    with pytest.raises(ArgumentError, match="--part-id must be in 0..2"):
        current_share(3, 3, {})
    with pytest.raises(ArgumentError, match="RANK=2 WORLD_SIZE=2"):
        current_share(1, 0, {"RANK": "2", "WORLD_SIZE": "2"})


@pytest.mark.slow
def test_folder_end_to_end_geometry_failures_and_resume(mixed, tiny_model, tmp_path, capsys):
    out = tmp_path / "seg"
    result = segment_many(mixed, out, ["brain"], model=tiny_model, progress=False, mode="slices")
    status = {r["case"]: r for r in rows(out / "summary.csv")}
    assert {k: v["status"] for k, v in status.items()} == {
        "eye": "ok", "site1/BrainProtonDensitySliceBorder20": "ok", "site1/t1": "ok", "site2/ct5n": "ok",
        "site2/ct_small": "ok", "site2/truncated": "failed"}
    assert "truncated.dcm" in status["site2/truncated"]["reason"]
    assert status["site2/truncated"]["output"] == "" and not (out / "site2" / "truncated.nii.gz").exists()
    assert len(result.failed) == 1 and result.merged_failed == 1
    for name, source in (("site2/ct5n", CT5N), ("site1/BrainProtonDensitySliceBorder20",
                                                 mixed / "site1" / "BrainProtonDensitySliceBorder20.mhd")):
        seg, image = read_image(out / f"{name}.nii.gz"), read_image(source)
        assert seg.shape == image.shape
        np.testing.assert_allclose(seg.spacing, image.spacing, atol=1e-5)
        np.testing.assert_allclose(seg.origin, image.origin, atol=1e-4)
        np.testing.assert_allclose(seg.direction, image.direction, atol=1e-6)
    sidecar = json.loads((out / "site2" / "ct5n.json").read_text())
    assert sidecar["labels"] == {"1": "brain"} and sidecar["batch"]["case"] == "site2/ct5n"
    assert sidecar["input"] == str(mixed / "site2" / "ct5n")

    # resume: finished cases are skipped untouched; the failed one is tried again
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")}
    segment_many(mixed, out, ["brain"], model=tiny_model, progress=False, mode="slices")
    again = {r["case"]: r["status"] for r in rows(out / "summary.csv")}
    assert again == {k: ("failed" if k == "site2/truncated" else "skipped") for k in status}
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.nii.gz")} == stamps
    # a lost output is redone alone; changed settings redo everything; --overwrite redoes all
    (out / "eye.nii.gz").unlink()
    segment_many(mixed, out, ["brain"], model=tiny_model, progress=False, mode="slices")
    again = {r["case"]: r["status"] for r in rows(out / "summary.csv")}
    assert [k for k, v in again.items() if v == "ok"] == ["eye"]
    # changed settings redo a case (here on part 0 of 3: cases 0 and 3, to keep the test short)
    part = segment_many(mixed, out, ["brain"], model=tiny_model, progress=False, mode="slices", threshold=0.6,
                        num_parts=3, part_id=0)
    assert [(r.case, r.status) for r in part.cases] == [("eye", "ok"), ("site2/ct5n", "ok")]
    assert json.loads((out / "eye.json").read_text())["thresholds"]["score"] == 0.6
    assert not list(out.rglob(".*.tmp-*"))


def test_cli_batch_per_case_jobs_exit_codes_and_bad_command_lines(tiny_model_dir, tmp_path, capsys):
    cohort = tmp_path / "in"
    cohort.mkdir()
    for name in PNGS[:3]:
        shutil.copy(ITK_DATA / name, cohort / name)
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text(json.dumps({"case": "Circle", "prompts": ["circle"]}) + "\n")
    out = tmp_path / "out"
    base = ["segment", "-i", str(cohort), "-o", str(out), "--model", str(tiny_model_dir), "--device", "cpu"]
    # bad command lines: exit 2, one line, nothing written
    for extra, message in ((["--jobs", str(jobs)], "no case 'Circle'"),
                           (["-p", "x", "--part-id", "1"], "give --num-parts N and --part-id K together"),
                           (["-p", "x", "--ext", ".jpg"], "output extension '.jpg'"),
                           ([], "have no prompt")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert err.startswith("medsam3: error: ") and message in err, err
        assert not out.exists()
    shutil.copy(ITK_DATA / "Circle.png", cohort / "Circle.png")
    (cohort / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 40)
    assert main(base + ["-p", "brain", "--jobs", str(jobs), "--ext", ".nrrd"]) == 1
    captured = capsys.readouterr()
    assert "1 of 5 cases failed" in captured.err and "case broken failed" in captured.err
    assert json.loads((out / "Circle.json").read_text())["labels"] == {"1": "circle"}
    assert json.loads((out / "VisibleWomanEyeSlice.json").read_text())["labels"] == {"1": "brain"}
    assert read_image(out / "Circle.nrrd").shape == read_image(cohort / "Circle.png").shape
    (cohort / "broken.png").unlink()
    assert main(base + ["-p", "brain", "--jobs", str(jobs), "--ext", ".nrrd"]) == 0
    assert "4 cases: 0 segmented, 4 already done, 0 failed" in capsys.readouterr().out


def test_a_dicom_series_folder_with_an_image_output_stays_one_case(tiny_model_dir, tmp_path, capsys):
    assert main(["segment", "-i", str(CT5N), "-o", str(tmp_path / "seg.nii.gz"), "-p", "liver", "--model",
                 str(tiny_model_dir), "--device", "cpu", "--mode", "slices"]) == 0
    assert read_image(tmp_path / "seg.nii.gz").shape == (5, 16, 16)
    assert not (tmp_path / "summary.csv").exists()


def _torchrun(cohort: Path, out: Path, model: Path) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "medsam3.cli", "segment", "-i", str(cohort), "-o", str(out),
                             "-p", "brain", "--model", str(model), "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


@pytest.mark.slow
def test_torchrun_two_ranks_write_every_case_once_and_resume_after_a_killed_rank(tiny_model_dir, tmp_path):
    import psutil

    cohort = tmp_path / "cohort"
    (cohort / "b").mkdir(parents=True)
    for i, name in enumerate(PNGS):
        shutil.copy(ITK_DATA / name, cohort / ("b" if i % 3 == 0 else "") / name)
    out = tmp_path / "out"
    names = [c.name for c in find_cases(cohort)]

    # a first run: rank 1 is killed (SIGKILL) once it has finished a case
    run = _torchrun(cohort, out, tiny_model_dir)
    part1 = out / ".medsam3-batch" / "summary-part-001-of-002.csv"
    deadline = time.time() + 240
    victim = None
    while time.time() < deadline and victim is None:
        if part1.is_file() and len(rows(part1)) >= 1:
            for child in psutil.Process(run.pid).children(recursive=True):
                try:
                    if child.environ().get("RANK") == "1":
                        victim = child
                except psutil.Error:
                    continue
        time.sleep(0.02)
    assert victim is not None, run.communicate()[0]
    os.kill(victim.pid, signal.SIGKILL)
    run.communicate(timeout=120)
    assert run.returncode != 0
    before = {r["case"] for r in rows(part1)}
    done = {n for n in names if (out / f"{n}.nii.gz").is_file() and (out / f"{n}.json").is_file()}
    missing = set(names) - done
    assert before and missing, (before, missing)  # the kill left work undone
    stamps = {n: (out / f"{n}.nii.gz").stat().st_mtime_ns for n in done}

    # resume: only the missing cases run, each once, and the summaries are merged
    run = _torchrun(cohort, out, tiny_model_dir)
    log = run.communicate(timeout=300)[0]
    assert run.returncode == 0, log
    summary = rows(out / "summary.csv")
    assert [r["case"] for r in summary] == names
    assert {r["case"] for r in summary if r["status"] == "ok"} == missing
    assert {r["case"] for r in summary if r["status"] == "skipped"} == done
    parts = [rows(out / ".medsam3-batch" / f"summary-part-00{k}-of-002.csv") for k in range(2)]
    assert sorted(r["case"] for p in parts for r in p) == names  # each case in exactly one rank's share
    for k, part in enumerate(parts):
        assert sorted(r["case"] for r in part) == names[k::2]
        for r in part:
            if r["status"] == "ok":
                assert json.loads((out / f"{r['case']}.json").read_text())["batch"]["part"] == [k, 2]
    assert {n: (out / f"{n}.nii.gz").stat().st_mtime_ns for n in done} == stamps
    assert not list(out.rglob(".*.tmp-*"))


def test_a_model_run_at_another_size_is_fingerprinted_by_its_weights_folder(tmp_path):
    """--size / --fast name the resized model "DIR@280px"; resume must still see DIR's files change."""
    from types import SimpleNamespace

    from medsam3.batch.engine import _model_fingerprint

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "model.safetensors").write_bytes(b"weights")
    native = _model_fingerprint(SimpleNamespace(source=str(model_dir)))
    resized = _model_fingerprint(SimpleNamespace(source=f"{model_dir}@280px"))
    assert native == resized and [row[0] for row in resized] == ["model.safetensors"]
    (model_dir / "model.safetensors").write_bytes(b"new weights, longer")
    assert _model_fingerprint(SimpleNamespace(source=f"{model_dir}@280px")) != resized
