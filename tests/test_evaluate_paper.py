"""``medsam3 evaluate --protocol paper`` (issue #31 item 4): text, text + GT exemplar box and GT
box in one pass (each image / slice encoded once), scored like single-mode runs, with the
paired comparison per dataset and modality. Real data: the 2D (pydicom CT + MR slices) and 3D
(ITK KmeansTest MR volume) manifests of test_evaluate_model; the tiny random model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medsam3.cli import main
from medsam3.evaluate import evaluate_model
from medsam3.evaluate.paper import MODE_DIRS, PAPER_MODES, evaluate_paper
from medsam3.io import read_label_map
from medsam3.predict import ImagePredictor
from test_evaluate_model import FAST, OPEN, manifest_2d, manifest_3d  # noqa: F401 - fixtures


@pytest.fixture
def encodings(monkeypatch):
    calls = []
    original = ImagePredictor.set_image

    def spy(self, image):
        calls.append(np.asarray(image).shape)
        return original(self, image)

    monkeypatch.setattr(ImagePredictor, "set_image", spy)
    return calls


def _rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_paper_protocol_2d_in_one_pass(tiny_model, manifest_2d, tmp_path, encodings):  # noqa: F811
    result = evaluate_paper(tiny_model, manifest_2d, tmp_path / "paper", name="tiny", **OPEN,
                            **{**FAST, "plots": True})
    assert len(encodings) == result.encoded == 2  # two test images, each encoded once for the three modes
    assert sorted(result.predicted_now) == ["ct/test/slice", "mr/test/slice"]
    for mode in PAPER_MODES:
        rows = _rows(tmp_path / "paper" / MODE_DIRS[mode] / "cases.csv")
        assert len(rows) == 4 and {r["dataset"] for r in rows} == {"ct", "mr"}
        report = json.loads((tmp_path / "paper" / MODE_DIRS[mode] / "report.json").read_text())
        assert report["run"]["prompt_mode"] == mode

    # the encode-once predictions are those of separate single-mode runs
    encodings.clear()
    alone = evaluate_model(tiny_model, manifest_2d, tmp_path / "alone", "text+box", **OPEN, **FAST)
    assert len(encodings) == 2
    for case in ("ct/test/slice", "mr/test/slice"):
        ours = read_label_map(tmp_path / "paper" / "text-box" / "predictions" / f"{case}.nii.gz").array
        np.testing.assert_array_equal(ours, read_label_map(alone.predictions / f"{case}.nii.gz").array)

    # the paired comparison: per dataset and per modality, differences with bootstrap CIs, plots
    content = json.loads(result.paper_json.read_text())
    assert set(content["comparisons"]) == {"text+box vs text", "box vs text", "box vs text+box"}
    for key, by in content["comparisons"].items():
        assert set(by) == {"dataset", "modality"}
        assert set(by["dataset"]["by"]) == {"ct", "mr"} and set(by["modality"]["by"]) == {"CT", "MR"}
        d = by["dataset"]["overall"]["dice"]
        # 4 tasks; the MR spleen (absent from the truth) is undefined (nan) when a mode predicts nothing there
        assert d["n"] in (3, 4) and d["ci_low"] <= d["mean_diff"] <= d["ci_high"]
        assert d["mean_diff"] == pytest.approx(d["mean_b"] - d["mean_a"])
        if d["n"] == content["modes"][key.split(" vs ")[1]]["overall"]["dice"]["n"]:  # no task dropped
            assert d["mean_a"] == pytest.approx(content["modes"][key.split(" vs ")[1]]["overall"]["dice"]["mean"])
    md = result.paper_md.read_text()
    assert "box vs text, by modality" in md and "| CT |" in md
    assert result.plots and all(p.is_file() and p.suffix == ".png" for p in result.plots)

    # resumed: nothing is predicted or encoded again
    encodings.clear()
    again = evaluate_paper(tiny_model, manifest_2d, tmp_path / "paper", name="tiny", **OPEN, **FAST)
    assert again.predicted_now == [] and again.encoded == 0 and encodings == []


@pytest.mark.slow
def test_paper_protocol_volume_encodes_each_slice_once(tiny_model, manifest_3d, tmp_path, encodings):  # noqa: F811
    # the k-means classes have many small components per slice: one box each (the largest) keeps it fast
    result = evaluate_paper(tiny_model, manifest_3d, tmp_path / "paper", max_objects=1, **OPEN, **FAST)
    assert result.encoded == len(encodings) == 4  # 4 slices, three prompt modes on each
    for mode in PAPER_MODES:
        prediction = next((tmp_path / "paper" / MODE_DIRS[mode] / "predictions").rglob("*.nii.gz"))
        side = json.loads(prediction.with_name(prediction.name.replace(".nii.gz", ".json")).read_text())
        assert side["prompt_mode"] == mode and side["volume"]["mode"].startswith("slice-wise")
        assert read_label_map(prediction).shape == (4, 64, 64)
        assert side["run"]["max_objects"] == 1
    assert set(json.loads(result.paper_json.read_text())["comparisons"]["box vs text"]) == {"dataset", "modality"}


def test_paper_protocol_cli(tiny_model_dir, manifest_2d, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "cli"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--manifest", str(manifest_2d), "--out", str(out),
                 "--protocol", "paper", "--threshold", "0", "--presence-threshold", "0", "--bootstrap", "50",
                 "--no-plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "paper protocol: 2 items predicted now, 2 ViT passes" in printed and "text+box: dice mean" in printed
    assert (out / "paper.md").is_file()
    for extra in (["--prompt-mode", "box"], ["--volume-mode", "clips"]):
        assert main(["evaluate", "--model", str(tiny_model_dir), "--manifest", str(manifest_2d), "--out",
                     str(tmp_path / "bad"), "--protocol", "paper", *extra]) == 2
        assert "--protocol paper sets the prompt modes" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_external_suite_runs_the_protocol_per_local_copy(tiny_model_dir, manifest_2d, tmp_path, capsys):  # noqa: F811
    from medsam3.data import read_manifest, write_manifest

    full = read_manifest(manifest_2d)
    one = [it for it in full.items if it.id == "mr/test/slice"]
    local = write_manifest(one, tmp_path / "hc18.jsonl", full.root)  # stands in for a converted HC18 copy
    out = tmp_path / "suite"
    assert main(["evaluate", "--model", str(tiny_model_dir), "--protocol", "paper", "--suite", "external",
                 "--local", f"HC18={local}", "--out", str(out), "--threshold", "0", "--presence-threshold", "0",
                 "--bootstrap", "20", "--no-plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "external suite: hc18 run" in printed and "not run (no --local copy): tn3k" in printed
    content = json.loads((out / "suite.json").read_text())
    assert list(content["datasets"]) == ["hc18"] and content["datasets"]["hc18"]["paper_text_dice_percent"] == [23.9, 92.6]
    assert set(content["datasets"]["hc18"]["modes"]) == set(PAPER_MODES) and "stare" in content["missing"]
    assert (out / "hc18" / "paper.md").is_file() and "| hc18 |" in (out / "suite.md").read_text()
    for bad, message in ((["--local", "kvasir-seg=" + str(local)], "is not in the external suite"),
                         (["--local", "hc18"], "must be NAME=PATH"),
                         (["--local", f"ph2={tmp_path / 'nowhere'}"], "does not exist")):
        assert main(["evaluate", "--model", str(tiny_model_dir), "--protocol", "paper", "--suite", "external",
                     "--out", str(tmp_path / "bad"), *bad]) == 2
        assert message in capsys.readouterr().err
