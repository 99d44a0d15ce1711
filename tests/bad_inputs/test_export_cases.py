"""Bad inputs to ``medsam3 model export``: the table (see :mod:`bad_inputs.harness`).

The output directory is replaced whole, so it must not be, hold, or lie inside an input.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from bad_inputs.harness import Case, params


def _model_copy(tmp, ctx):
    shutil.copytree(ctx["model"], tmp / "m")
    (tmp / "out").mkdir()
    (tmp / "out" / "card.md").write_text("# my model\n")
    return {"m": str(tmp / "m")}


def _export(*args):
    return ("model", "export", "{m}", "--concepts", "brain", *args)


CASES = [
    Case("export-output-is-source-model", build=_model_copy, argv=_export("-o", "{m}"),
         message=("exported model directory", "source model"), unchanged=("{m}",)),
    Case("export-output-holds-the-card", build=_model_copy, argv=_export("-o", "{tmp}/out", "--card", "{tmp}/out/card.md"),
         message=("card.md", "delete"), unchanged=("{tmp}/out",)),
    Case("export-output-inside-source-model", build=_model_copy, argv=_export("-o", "{m}/export"),
         message=("inside", "source model"), unchanged=("{m}",), absent=("{m}/export",)),
    Case("export-to-new-folder-works", build=_model_copy, argv=_export("-o", "{tmp}/new"), exit_code=0,
         unchanged=("{m}",), check=lambda ctx: (Path(ctx["tmp"], "new", "model.safetensors").is_file()
                                                or pytest.fail("no model written"))),
]


@pytest.mark.parametrize("case", params(CASES))
def test_export_bad_input(case, run):
    run(case)


def _checkpoint(tmp, ctx):
    """A Meta-layout checkpoint file (any bytes: the output check comes before reading it)."""
    (tmp / "sam3.pt").write_bytes(b"not read: the output check comes first")
    (tmp / "models").mkdir()
    return {"ckpt": str(tmp / "sam3.pt")}


CONVERT_CASES = [
    Case("convert-output-is-the-checkpoint", build=_checkpoint,
         argv=("convert", "-i", "{ckpt}", "-o", "{ckpt}"),
         message=("sam3.pt", "checkpoint"), unchanged=("{ckpt}",)),
    Case("convert-output-holds-the-checkpoint", build=_checkpoint,
         argv=("convert", "-i", "{ckpt}", "-o", "{tmp}"),
         message=("checkpoint",), unchanged=("{ckpt}",)),
]


@pytest.mark.parametrize("case", params(CONVERT_CASES))
def test_convert_bad_output(case, run):
    run(case)
