"""medsam3.io.outputs (the output plan) and the stale-temporary cleanup of medsam3.io.atomic."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from medsam3 import ArgumentError
from medsam3.io import atomic_file_set, atomic_output, read_image
from medsam3.io.atomic import remove_stale_temporaries
from medsam3.io.outputs import OutputPlan, input_files


def _killed_writer(target: Path, several_files: bool = False) -> None:
    """Run a writer in another process that is SIGKILLed in the middle of its write."""
    opener = "atomic_file_set" if several_files else "atomic_output"
    code = textwrap.dedent(f"""
        import os, signal
        from medsam3.io.atomic import {opener}
        with {opener}({str(target)!r}) as tmp:
            tmp.write_bytes(b"half")
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    result = subprocess.run([sys.executable, "-c", code], env={**os.environ}, capture_output=True)
    assert result.returncode == -9, result.stderr


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_kill_9_temporary_is_removed_by_the_next_write(tmp_path):
    target = tmp_path / "seg.nii.gz"
    _killed_writer(target)
    left = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(left) == 1 and left[0].name.startswith(".seg.nii.gz.tmp-") and left[0].name.endswith(".nii.gz")
    # other files that look alike must survive: not ours, a live writer's, another target's
    others = [tmp_path / ".seg.nii.gz.tmp-notours", tmp_path / f".seg.nii.gz.tmp-{os.getpid()}-0badcafe.nii.gz",
              tmp_path / f".other.nii.gz.tmp-{_dead_pid()}-0badcafe.nii.gz", tmp_path / "seg.nii.gz.tmp-1-0badcafe"]
    for other in others:
        other.write_bytes(b"keep")
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not left[0].exists()
    assert all(o.read_bytes() == b"keep" for o in others)


def test_kill_9_file_set_directory_is_removed(tmp_path):
    target = tmp_path / "seg.mhd"
    _killed_writer(target, several_files=True)
    left = [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    assert len(left) == 1 and left[0].is_dir()
    assert remove_stale_temporaries(target) == left
    assert not left[0].exists()
    with atomic_file_set(target) as tmp:
        tmp.write_text("header")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.mhd"]


def test_live_process_temporary_is_kept(tmp_path):
    target = tmp_path / "x.png"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        live = tmp_path / f".x.png.tmp-{sleeper.pid}-12345678.png"
        live.write_bytes(b"writing")
        assert remove_stale_temporaries(target) == []
        assert live.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert remove_stale_temporaries(target) == [live]


def _mhd_with(tmp_path: Path, element_data_file: str, files: dict[str, bytes]) -> Path:
    header = tmp_path / "vol.mhd"
    header.write_text("ObjectType = Image\nNDims = 3\nDimSize = 4 4 2\nElementType = MET_UCHAR\n"
                      f"ElementDataFile = {element_data_file}\n")
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return header


def test_mhd_data_files_list_and_pattern(tmp_path):
    header = _mhd_with(tmp_path, "LIST 2D\ns0.raw\ns1.raw", {"s0.raw": bytes(16), "s1.raw": bytes(16)})
    assert [p.name for p in input_files(header)] == ["vol.mhd", "s0.raw", "s1.raw"]
    np.testing.assert_array_equal(read_image(header).array, np.zeros((2, 4, 4)))  # the reader agrees
    header = _mhd_with(tmp_path, "slice%02d.raw 1 2 1", {"slice01.raw": bytes(16), "slice02.raw": bytes(16)})
    assert [p.name for p in input_files(header)] == ["vol.mhd", "slice01.raw", "slice02.raw"]
    header = _mhd_with(tmp_path, "LOCAL", {})
    assert [p.name for p in input_files(header)] == ["vol.mhd"]


def test_nhdr_data_file(tmp_path):
    (tmp_path / "v.raw").write_bytes(bytes(8))
    (tmp_path / "v.nhdr").write_text("NRRD0004\ntype: uchar\ndimension: 2\nsizes: 4 2\nencoding: raw\n"
                                     "data file: v.raw\n")
    assert [p.name for p in input_files(tmp_path / "v.nhdr")] == ["v.nhdr", "v.raw"]


def test_plan_refuses_clashes_and_accepts_distinct_files(tmp_path):
    source = tmp_path / "in.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((3, 4, 4), np.uint8)), str(source))
    plan = OutputPlan()
    plan.add_input(source)
    plan.add_image(tmp_path / "seg.mhd", "label map")
    plan.add(tmp_path / "seg.json", "sidecar")
    plan.check()
    assert [p.name for p in plan.outputs] == ["seg.mhd", "seg.zraw", "seg.json"]

    plan.add(tmp_path / "sub" / ".." / "seg.zraw", "overlay")
    with pytest.raises(ArgumentError, match="it is also the label map data file"):
        plan.check()

    os.link(source, tmp_path / "hard.nii.gz")
    plan = OutputPlan()
    plan.add_input(read_image(source))
    plan.add(tmp_path / "hard.nii.gz", "label map")
    with pytest.raises(ArgumentError, match="hard link of the input image"):
        plan.check()
