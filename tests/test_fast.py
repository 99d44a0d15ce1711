"""``--fast``: what it resolves to (medsam3.model.precision.resolve_fast), how an explicit
``--precision`` / ``--size`` wins, and what the sidecar records; on tiny random models."""

from __future__ import annotations

import json
from argparse import Namespace

import numpy as np
import pytest

from medsam3.errors import ArgumentError
from medsam3.model.precision import (FAST_MIN_SIZE, FAST_SIZE_FACTOR, apply_precision, fast_input_size,
                                     fast_precision, resolve_fast)
from medsam3.precision_options import check_precision, resolve_precision, split_fast


@pytest.fixture(scope="module")
def model_336(tmp_path_factory):
    """The tiny configuration at 336 px, the demo model's input size: --fast shrinks it."""
    from medsam3.model import create_random_model

    return create_random_model("tiny", tmp_path_factory.mktemp("models") / "tiny336", seed=0, image_size=336)


def test_fast_input_size_scales_the_native_size():
    assert FAST_SIZE_FACTOR <= 1
    for native in (336, 504, 1008):
        size = fast_input_size(native)
        assert size % 14 == 0 and FAST_MIN_SIZE <= size <= native
        assert abs(size - native * FAST_SIZE_FACTOR) <= 7  # the nearest multiple of 14
    assert fast_input_size(1008) == round(1008 * FAST_SIZE_FACTOR / 14) * 14
    assert fast_input_size(224) == 224 and fast_input_size(112) == 112  # never below 224, never above native


def test_fast_resolves_to_the_devices_fastest_precision_and_a_smaller_size():
    fast = resolve_fast("cpu", 336)
    assert fast.precision == fast_precision("cpu") and fast.precision in ("bf16", "int8")
    assert fast.size == fast_input_size(336) and fast.native_size == 336
    assert fast.precision_reason.startswith("this CPU has native bf16" if fast.precision == "bf16"
                                            else "a CPU without native bf16")
    assert "Dice" in fast.size_reason or fast.size == 336
    assert json.loads(json.dumps(fast.to_json())) == fast.to_json()


def test_explicit_precision_and_size_win_over_fast():
    fast = resolve_fast("cpu", 336, precision="fp32", size=308)
    assert (fast.precision, fast.size) == ("fp32", 308)
    assert "--precision" in fast.precision_reason and "--size" in fast.size_reason
    assert resolve_precision(Namespace(precision=None, fast=True)) == "fast"
    assert resolve_precision(Namespace(precision="INT8", fast=True)) == "fast:int8"
    assert resolve_precision(Namespace(precision="bf16", fast=False)) == "bf16"
    assert check_precision("fast:BFloat16") == "fast:bf16"
    assert split_fast("fast") == (True, None) and split_fast("fast:fp32") == (True, "fp32")
    assert split_fast(None) == (False, "fp32")
    for bad in ("fast:int4", "fast:fast", "fast:"):
        with pytest.raises(ArgumentError, match="unknown precision"):
            check_precision(bad)


def test_load_model_runs_fast_at_its_size_with_its_precision(model_336):
    from medsam3.segmentation import load_model

    model = load_model(str(model_336), device="cpu", precision="fast")
    assert model.image_size == fast_input_size(336) < 336
    assert model.precision == fast_precision("cpu") and model.fast.precision == model.precision
    assert model.fast.size == model.image_size and model.fast.native_size == 336
    explicit = load_model(str(model_336), device="cpu", precision="fast:fp32")
    assert explicit.precision == "fp32" and explicit.image_size == fast_input_size(336)
    plain = load_model(str(model_336), device="cpu", precision="fp32")
    assert plain.fast is None and plain.image_size == 336
    with pytest.raises(ArgumentError, match="resolved when the model loads"):
        apply_precision(plain, "fast")


def _volume(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    array = rng.random((40, 36, 4)).astype(np.float32) * 100  # x, y, z: four axial slices
    path = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(array, np.eye(4)), path)
    return path


def test_sidecar_records_what_fast_resolved_to(model_336, tmp_path, capsys):
    from medsam3.cli import main

    common = ["-i", str(_volume(tmp_path)), "-p", "liver", "--model", str(model_336), "--device", "cpu",
              "--mode", "slices", "--threshold", "0", "--presence-threshold", "0"]
    assert main(["segment", *common, "-o", str(tmp_path / "a.nii.gz"), "--fast"]) == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "a.json").read_text())
    assert sidecar["fast"] == resolve_fast("cpu", 336).to_json()
    assert sidecar["precision"] == fast_precision("cpu")
    assert sidecar["volume"]["model_input_size"] == fast_input_size(336)

    assert main(["segment", *common, "-o", str(tmp_path / "b.nii.gz"), "--fast", "--precision", "fp32",
                 "--size", "252"]) == 0, capsys.readouterr().err
    sidecar = json.loads((tmp_path / "b.json").read_text())
    assert sidecar["precision"] == "fp32" and sidecar["volume"]["model_input_size"] == 252
    assert sidecar["fast"]["precision"] == "fp32" and sidecar["fast"]["size"] == 252
    assert "--precision" in sidecar["fast"]["precision_reason"] and "--size" in sidecar["fast"]["size_reason"]

    assert main(["segment", *common, "-o", str(tmp_path / "c.nii.gz")]) == 0
    sidecar = json.loads((tmp_path / "c.json").read_text())
    assert "fast" not in sidecar and sidecar["precision"] == "fp32" and sidecar["volume"]["model_input_size"] == 336
