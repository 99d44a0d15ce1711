"""Bad inputs to ``medsam3 segment``: the table (see :mod:`bad_inputs.harness`)."""

from __future__ import annotations

import numpy as np
import pytest
from bad_inputs.harness import Case, params


def _png(tmp, ctx):
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(tmp / "in.png")
    return {"png": str(tmp / "in.png")}


CASES = [
    Case("missing-input", argv=("segment", "-i", "{tmp}/nope.png", "-o", "{tmp}/out.png", "-p", "brain",
                                "--model", "{model}", "--device", "cpu"),
         message=("nope.png",), absent=("{tmp}/out.png", "{tmp}/out.json")),
    Case("output-is-input", build=_png,
         argv=("segment", "-i", "{png}", "-o", "{png}", "-p", "brain", "--model", "{model}", "--device", "cpu"),
         message=("in.png",), unchanged=("{png}",), absent=("{tmp}/in.json",)),
]


@pytest.mark.parametrize("case", params(CASES))
def test_segment_bad_input(case, run):
    run(case)
