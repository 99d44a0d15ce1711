"""Bad command lines of batch ``medsam3 segment`` (folders, lists, manifests, jobs): the table
(see :mod:`bad_inputs.harness`). Each is refused before any case runs: exit 2, one line,
no output directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from bad_inputs.harness import Case, params

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")
MODEL = ("--model", "{model}", "--device", "cpu")


def _cohort(tmp, ctx):
    (tmp / "in").mkdir()
    for name in ("Circle.png", "BinaryImage.png"):
        shutil.copy(ITK_DATA / name, tmp / "in" / name)
    (tmp / "list.txt").write_text("in/Circle.png\nin/missing.png\n")
    (tmp / "jobs.jsonl").write_text(json.dumps({"case": "Circel", "prompts": ["circle"]}) + "\n")
    (tmp / "fields.csv").write_text("case,prompts,colour\nCircle,circle,red\n")
    (tmp / "broken.jsonl").write_text('{"input": "in/Circle.png"}\n{"input": \n')
    (tmp / "noinput.jsonl").write_text(json.dumps({"case": "a", "prompts": ["x"]}) + "\n")
    (tmp / "empty").mkdir()
    (tmp / "empty" / "notes.txt").write_text("no images here\n")
    (tmp / "outfile").write_text("mine\n")
    return {}


def _segment(source, *args, out="{tmp}/out"):
    return ("segment", "-i", source, "-o", out, *MODEL, *args)


CASES = [
    Case("batch-jobs-row-names-no-case", build=_cohort,
         argv=_segment("{tmp}/in", "--jobs", "{tmp}/jobs.jsonl"),
         message=("jobs.jsonl row 1", "no case 'Circel'", "BinaryImage, Circle"), absent=("{tmp}/out",)),
    Case("batch-jobs-unknown-field", build=_cohort, argv=_segment("{tmp}/in", "--jobs", "{tmp}/fields.csv"),
         message=("fields.csv row 2", "unknown field 'colour'", "prompts"), absent=("{tmp}/out",)),
    Case("batch-manifest-line-not-json", build=_cohort, argv=_segment("{tmp}/broken.jsonl", "-p", "x"),
         message=("broken.jsonl line 2", "not JSON"), absent=("{tmp}/out",)),
    Case("batch-manifest-row-without-input", build=_cohort, argv=_segment("{tmp}/noinput.jsonl"),
         message=("noinput.jsonl row 1", "no 'input'"), absent=("{tmp}/out",)),
    Case("batch-list-path-missing", build=_cohort, argv=_segment("{tmp}/list.txt", "-p", "x"),
         message=("list.txt", "line 2: in/missing.png"), absent=("{tmp}/out",)),
    Case("batch-folder-without-images", build=_cohort, argv=_segment("{tmp}/empty", "-p", "x"),
         message=("no cases in", "empty"), absent=("{tmp}/out",)),
    Case("batch-no-prompt-for-some-cases", build=_cohort, argv=_segment("{tmp}/in"),
         message=("2 case(s) have no prompt", "--jobs"), absent=("{tmp}/out",)),
    Case("batch-part-id-out-of-range", build=_cohort,
         argv=_segment("{tmp}/in", "-p", "x", "--num-parts", "2", "--part-id", "2"),
         message=("--part-id must be in 0..1",), absent=("{tmp}/out",)),
    Case("batch-output-is-a-file", build=_cohort, argv=_segment("{tmp}/in", "-p", "x", "--jobs", "{tmp}/jobs.jsonl",
                                                                 out="{tmp}/outfile"),
         message=("outfile is a file", "directory"), unchanged=("{tmp}/outfile",)),
    Case("batch-extension-not-written", build=_cohort, argv=_segment("{tmp}/in", "-p", "x", "--ext", ".jpg"),
         message=("'.jpg'", "NIfTI"), absent=("{tmp}/out",)),
    Case("batch-single-overlay-png", build=_cohort, argv=_segment("{tmp}/in", "-p", "x", "--overlay", "{tmp}/o.png"),
         message=("--overlays",), absent=("{tmp}/out", "{tmp}/o.png")),
]


@pytest.mark.parametrize("case", params(CASES))
def test_batch_bad_command_line(case, run):
    run(case)
