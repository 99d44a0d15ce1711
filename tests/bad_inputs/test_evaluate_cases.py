"""Bad inputs to ``medsam3 evaluate``: the table (see :mod:`bad_inputs.harness`)."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from bad_inputs.harness import Case, params


def _label(path, seed=0):
    labels = (np.random.default_rng(seed).random((4, 24, 24)) > 0.6).astype(np.uint8)
    sitk.WriteImage(sitk.GetImageFromArray(labels), str(path))


def _folders(corrupt_gt: str | None = None, cases=("a", "b")):
    """``pred/`` and ``gt/`` with one label map per case; ``corrupt_gt``: that GT is garbage."""
    def build(tmp, ctx):
        for folder in ("pred", "gt"):
            (tmp / folder).mkdir()
        for i, case in enumerate(cases):
            _label(tmp / "pred" / f"{case}.nii.gz", i)
            _label(tmp / "gt" / f"{case}.nii.gz", i + 10)
        if corrupt_gt:
            (tmp / "gt" / f"{corrupt_gt}.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
        return {"pred": str(tmp / "pred"), "gt": str(tmp / "gt")}
    return build


def _evaluate(out):
    return ("evaluate", "-p", "{pred}", "-g", "{gt}", "-o", out)


CASES = [
    # a run that stops before its first case leaves no header-only cases.csv behind
    Case("evaluate-first-ground-truth-unreadable", build=_folders(corrupt_gt="a"), argv=_evaluate("{tmp}/out"),
         message=("a.nii.gz",), absent=("{tmp}/out/cases.csv", "{tmp}/out/report.md"),
         unchanged=("{pred}", "{gt}")),
    # the report must not land in the folders being scored
    Case("evaluate-out-is-predictions-folder", build=_folders(), argv=_evaluate("{pred}"),
         message=("predictions folder", "inside"), unchanged=("{pred}", "{gt}")),
    Case("evaluate-out-inside-ground-truth", build=_folders(), argv=_evaluate("{gt}/eval"),
         message=("ground-truth folder", "inside"), unchanged=("{pred}", "{gt}"), absent=("{gt}/eval",)),
    Case("evaluate-out-is-a-file", build=_folders(), argv=_evaluate("{pred}/a.nii.gz"),
         message=("a.nii.gz", "not a directory"), unchanged=("{pred}", "{gt}")),
]


@pytest.mark.parametrize("case", params(CASES))
def test_evaluate_bad_input(case, run):
    run(case)
