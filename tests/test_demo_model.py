"""The bundled demo model, re-measured on its held-out data: any regression in reading,
normalising, slicing, the model, post-processing, writing or scoring changes these numbers.

The numbers asserted are those recorded when the shipped weights were evaluated
(``evaluation.json`` beside the model card in ``src/medsam3/model/demo/``, written by
``recipes/demo/evaluate_demo.py --record``; docs/demo-model.md prints them).
"""

from __future__ import annotations

import json
import math
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers.recipes import DEMO, demo_script

import medsam3
from medsam3.io import read_label_map

ROOT = Path(__file__).resolve().parents[1]
build_data, evaluate = demo_script("build_data"), demo_script("evaluate_demo")
SAMPLE = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"
DICE_MARGIN = 0.01  # CPU runs are deterministic; the margin covers BLAS differences between machines
ABSENT_MARGIN = 0.02


@pytest.fixture(scope="module")
def demo():
    from medsam3.model import MedSAM3

    return MedSAM3.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def heldout(tmp_path_factory):
    if not (build_data.MRICRON / "aal.nii.gz").is_file():
        pytest.fail("the held-out ground truth needs Debian's mricron-data (apt-get install mricron-data)")
    return build_data.build_heldout_set(tmp_path_factory.mktemp("heldout"))


@pytest.fixture(scope="module")
def recorded(demo):
    """The held-out results recorded for the shipped weights."""
    return json.loads((demo.directory / evaluate.EVALUATION_NAME).read_text())


def test_demo_model_is_small_and_knows_its_concepts(demo):
    weights = demo.directory / "model.safetensors"
    assert weights.stat().st_size <= 30 * 2**20
    assert sorted(demo.concepts) == sorted(build_data.DEMO_CLASSES)
    assert demo.info["weights_dtype"] == "float16" and demo.info["masks"] == "semantic"
    assert demo.tracker_trained and "heldout" not in demo.info  # the results live in evaluation.json
    assert (demo.directory / "README.md").is_file() and (demo.directory / evaluate.EVALUATION_NAME).is_file()
    assert next(demo.detector.parameters()).dtype.is_floating_point


@pytest.mark.slow
def test_heldout_numbers_match_the_recorded_ones(demo, heldout, recorded, tmp_path):
    results = evaluate.evaluate_demo(demo, heldout, tmp_path / "eval", baselines=False,
                            absent_stride=recorded["absent_stride"], progress=False)
    for dataset, classes in recorded["scores"]["model"].items():
        for cls, expected in classes.items():
            got = results["scores"]["model"][dataset][cls]
            assert got["dice"] == pytest.approx(expected["dice"], abs=DICE_MARGIN), (dataset, cls)
            if expected["nsd"] is not None and math.isfinite(expected["nsd"]):
                assert got["nsd"] == pytest.approx(expected["nsd"], abs=DICE_MARGIN), (dataset, cls)
    for dataset, rates in recorded["absent"].items():
        for concept, rate in rates.items():
            if concept != "images":
                assert results["absent"][dataset][concept] == pytest.approx(rate, abs=ABSENT_MARGIN), (dataset, concept)


@pytest.mark.slow
def test_readme_first_command_runs_on_a_fresh_install(tmp_path):
    """The README's main job (after `pip install .`): the demo model on the bundled sample."""
    readme = (ROOT / "README.md").read_text()
    first = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    segment = shlex.split(first[first.index("medsam3 segment"):])[2:]
    assert "--model" in segment and segment[segment.index("--model") + 1] == "demo"
    for flag in ("-o", "--overlay"):  # outputs into tmp_path, not the checkout
        segment[segment.index(flag) + 1] = str(tmp_path / segment[segment.index(flag) + 1])
    done = subprocess.run([sys.executable, "-m", "medsam3.cli", "segment", *segment], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    output = Path(segment[segment.index("-o") + 1])
    overlay = Path(segment[segment.index("--overlay") + 1])
    assert str(output) in done.stdout and str(overlay) in done.stdout
    assert overlay.is_file() and overlay.stat().st_size > 10_000
    labels = read_label_map(output)
    sidecar = json.loads(output.with_name(output.name.replace(".nii.gz", ".json")).read_text())
    prompts = [v for _, v in sorted(sidecar["labels"].items(), key=lambda kv: int(kv[0]))]
    assert len(prompts) >= 2 and not sidecar["absent"]
    counts = np.bincount(labels.array.ravel(), minlength=len(prompts) + 1)
    assert all(counts[k] > 0 for k in range(1, len(prompts) + 1)), counts


@pytest.mark.slow
def test_prompt_outside_the_demo_vocabulary_is_reported_unknown(demo, tmp_path):
    with pytest.warns(UserWarning, match="'spleen' is not a concept model demo was trained on"):
        seg = medsam3.segment(SAMPLE, tmp_path / "s.nii.gz", ["spleen", "brain"], model=demo)
    assert seg.absent[:1] == ["spleen"] and seg.sidecar["unknown_to_model"] == ["spleen"]
    assert (seg.labels.array == 2).sum() > 10_000 and not (seg.labels.array == 1).any()


def _run_demo_errors(heldout, *args: str) -> subprocess.CompletedProcess:
    """recipes/demo/demo_errors.py on the held-out FSL T1 with the shipped model."""
    return subprocess.run([sys.executable, str(DEMO / "demo_errors.py"), "--manifest", str(heldout),
                           "--item", "mni152-fsl-2mm", "--model", "demo", *args],
                          cwd=ROOT, capture_output=True, text=True, check=False)


def _demo_errors(heldout, *args: str) -> dict:
    """Its summary line (the run must succeed)."""
    done = _run_demo_errors(heldout, *args)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_brain_error_diagnostic(heldout):
    """recipes/demo/demo_errors.py, as docs/demo-model.md runs it: on the FSL T1 the "brain" misses are a thin
    rim around the predicted mask, and since the label follows the reference's convention the
    mask errs outward (more false positives than misses; dilating it scores lower)."""
    found = _demo_errors(heldout, "--class", "brain")
    assert found["dice"] == pytest.approx(0.915, abs=DICE_MARGIN)
    assert found["missed_within_2_voxels"] / found["missed"] == pytest.approx(0.94, abs=0.03)
    assert found["dice_prediction_dilated_1_voxel"] == pytest.approx(0.903, abs=DICE_MARGIN)
    assert found["dice_prediction_dilated_1_voxel"] < found["dice"]
    assert found["false_positive"] > found["missed"]
    assert found["reference_dark_share"] == pytest.approx(0.11, abs=0.01)
    assert found["predicted_dark_share"] == pytest.approx(0.11, abs=0.01)
    bad = _run_demo_errors(heldout, "--class", "liver")
    assert bad.returncode == 2 and "does not label 'liver'" in bad.stderr


@pytest.mark.slow
def test_presence_diagnostic(heldout):
    """--oracle-presence keeps the model's masks and takes each slice's present / absent decision
    from the reference: the FSL hippocampus row of docs/demo-model.md's table (each slice alone 0.482,
    the shipped presence window of 3 slices 0.513, the reference's decision 0.568), the pair that
    reaches 0.5 only with the window."""
    alone = _demo_errors(heldout, "--class", "hippocampus", "--presence-window", "1")
    shipped = _demo_errors(heldout, "--class", "hippocampus")
    oracle = _demo_errors(heldout, "--class", "hippocampus", "--oracle-presence")
    assert not shipped["oracle_presence"] and oracle["oracle_presence"]
    assert (alone["presence_window"], shipped["presence_window"]) == (1, 3)
    assert alone["dice"] == pytest.approx(0.482, abs=DICE_MARGIN)
    assert shipped["dice"] == pytest.approx(0.513, abs=DICE_MARGIN)
    assert oracle["dice"] == pytest.approx(0.568, abs=DICE_MARGIN)
    assert alone["dice"] < 0.5 < shipped["dice"] < oracle["dice"]
    # each slice alone, its presence errors go both ways: slices called present outside the
    # structure and slices called absent that hold it; with the window every slice that holds it
    # is called present (the misses are the masks' own), and only false positives are left
    assert oracle["false_positive"] < alone["false_positive"] and oracle["missed"] < alone["missed"]
    assert oracle["missed"] == shipped["missed"] and oracle["false_positive"] < shipped["false_positive"]
