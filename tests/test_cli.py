"""The command line: help, a real run, and every bad input -> one clear line, exit 2, no output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from pydicom.data import get_testdata_file

from medsam3.cli import build_parser, main

CT = get_testdata_file("CT_small.dcm")


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medsam3.cli", *args], capture_output=True, text=True, timeout=300)


def test_help_of_every_subcommand_is_complete():
    parser = build_parser()
    text = parser.format_help()
    for command in ("segment", "model"):
        assert command in text
    sub = parser._subparsers._group_actions[0].choices
    seg_help = sub["segment"].format_help()
    for flag in ("--input", "--output", "--prompt", "--box", "--point", "--negative", "--exemplar", "--model",
                 "--device", "--modality", "--window", "--threshold", "--overlay", "--slice"):
        assert flag in seg_help, flag
    for name, p in sub.items():
        assert p.format_help().strip(), name


def test_segment_runs_end_to_end_in_a_subprocess(tiny_model_dir, tmp_path):
    out = tmp_path / "ct_seg.nii.gz"
    r = run_cli("segment", "-i", CT, "-o", str(out), "-p", "liver", "-p", "spleen", "--model", str(tiny_model_dir),
                "--device", "cpu", "--threshold", "0", "--presence-threshold", "0", "--overlay",
                str(tmp_path / "ov.png"), "--json")
    assert r.returncode == 0, r.stderr
    assert out.exists() and (tmp_path / "ct_seg.json").exists() and (tmp_path / "ov.png").exists()
    assert f"label map: {out}" in r.stdout
    side = json.loads((tmp_path / "ct_seg.json").read_text())
    assert side["labels"] == {"1": "liver", "2": "spleen"}


def test_point_and_negative_flags_parse_in_order():
    args = build_parser().parse_args(["segment", "-i", "a.png", "-o", "b.png", "--point", "1", "2", "--point", "3",
                                      "4", "--negative", "--point", "5", "6"])
    assert args.points == [[1, 2], [3, 4], [5, 6]] and args.point_labels == [1, 0, 1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["segment", "-i", "a.png", "-o", "b.png", "--negative"])


def _bad(tmp_path, capsys, *args):
    code = main(["segment", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("medsam3: error:") and err.count("\n") == 0, err
    assert not (tmp_path / "out.nii.gz").exists() and not (tmp_path / "out.json").exists()
    return err


@pytest.fixture()
def four_d(tmp_path):
    path = tmp_path / "dwi.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), path)
    return path


def test_bad_inputs_fail_cleanly(tiny_model_dir, tmp_path, capsys, four_d):
    out = str(tmp_path / "out.nii.gz")
    model = ["--model", str(tiny_model_dir)]
    assert "missing.nii.gz" in _bad(tmp_path, capsys, "-i", str(tmp_path / "missing.nii.gz"), "-o", out, "-p", "x", *model)
    corrupt = tmp_path / "corrupt.nii.gz"
    corrupt.write_bytes(Path(CT).read_bytes()[:300])
    assert "corrupt.nii.gz" in _bad(tmp_path, capsys, "-i", str(corrupt), "-o", out, "-p", "x", *model)
    odd = tmp_path / "scan.xyz"
    odd.write_text("hello")
    assert "scan.xyz" in _bad(tmp_path, capsys, "-i", str(odd), "-o", out, "-p", "x", *model)
    assert "dwi.nii.gz" in _bad(tmp_path, capsys, "-i", str(four_d), "-o", out, "-p", "x", *model)
    assert "no prompt" in _bad(tmp_path, capsys, "-i", CT, "-o", out, *model)
    assert "not inside the image" in _bad(tmp_path, capsys, "-i", CT, "-o", out, "--box", "0", "0", "500", "50", *model)
    assert "unknown device 'tpu'" in _bad(tmp_path, capsys, "-i", CT, "-o", out, "-p", "x", "--device", "tpu", *model)
    assert "window" in _bad(tmp_path, capsys, "-i", CT, "-o", out, "-p", "x", "--window", "nonsense", *model)
    assert "model" in _bad(tmp_path, capsys, "-i", CT, "-o", out, "-p", "x", "--model", str(tmp_path / "nomodel"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.nii.gz", "dwi.nii.gz", "scan.xyz"]


def test_model_create_and_info(tmp_path, capsys):
    assert main(["model", "create", "tiny", "-o", str(tmp_path / "m")]) == 0
    assert main(["model", "info", str(tmp_path / "m")]) == 0
    assert '"image_size": 224' in capsys.readouterr().out
    assert main(["model", "create", "tiny", "-o", str(tmp_path / "m")]) == 2  # never overwrites
