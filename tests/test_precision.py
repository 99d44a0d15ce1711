"""Inference precision (medsam3.model.precision): bf16 autocast and int8 dynamic quantisation
on the tiny random model, against fp32; the --precision / --fast options; SDPA vs eager attention."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from medsam3.errors import ArgumentError
from medsam3.model.loader import MedSAM3
from medsam3.precision_options import check_precision, resolve_precision

IMAGE = np.random.default_rng(0).random((100, 120)).astype(np.float32)


def _detector_logits(model) -> torch.Tensor:
    from medsam3.predict import ImagePredictor, TextPrompt

    predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0)
    predictor.set_image(IMAGE)
    _, out = next(predictor.detect([TextPrompt("liver"), TextPrompt("spleen")]))
    return out.pred_masks.float()


@pytest.fixture(scope="module")
def fp32_logits(tiny_model):
    return _detector_logits(tiny_model)


@pytest.mark.parametrize("precision, tolerance", [("bf16", 0.03), ("int8", 0.06)])
def test_reduced_precision_close_to_fp32(tiny_model_dir, fp32_logits, precision, tolerance):
    from medsam3.model import MedSAM3

    model = MedSAM3.from_pretrained(tiny_model_dir, device="cpu", precision=precision)
    assert model.precision == precision
    if precision == "int8":  # every Linear of the detector became a dynamically quantised one
        layer = model.detector.detr_encoder.layers[0].self_attn.q_proj
        assert isinstance(layer, torch.ao.nn.quantized.dynamic.Linear)
        assert not any(type(m) is torch.nn.Linear for m in model.detector.modules())
    logits = _detector_logits(model)
    assert logits.dtype == torch.float32 and logits.shape == fp32_logits.shape
    relative = float((logits - fp32_logits).norm() / fp32_logits.norm())
    assert 0 < relative < tolerance, relative  # changed (it did run reduced), but close


def test_bf16_outputs_come_back_in_the_weights_dtype(tiny_model_dir):
    from medsam3.model import MedSAM3

    model = MedSAM3.from_pretrained(tiny_model_dir, device="cpu", precision="bf16")
    pixels = torch.rand(1, 3, model.image_size, model.image_size)
    with torch.inference_mode():
        features = model.detector.get_vision_features(pixel_values=pixels)
    assert all(t.dtype == torch.float32 for t in features.fpn_hidden_states)
    # the tracker, built on first use, gets the same precision and shares the detector's backbone
    assert model.tracker._medsam3_precision == "bf16"
    assert model.tracker.vision_encoder.backbone is model.detector.vision_encoder.backbone


def test_bad_precision_is_refused():
    from medsam3.model import MedSAM3

    assert check_precision(None) == "fp32" and check_precision("BFloat16") == "bf16"
    with pytest.raises(ArgumentError, match="unknown precision 'int4'.*fp32, bf16, int8"):
        MedSAM3.from_pretrained("random:tiny", device="cpu", precision="int4")


def test_int8_needs_float32_weights(tiny_model_dir):
    from medsam3.model import MedSAM3

    with pytest.raises(ArgumentError, match="int8 quantises float32 weights"):
        MedSAM3.from_pretrained(tiny_model_dir, device="cpu", dtype="bfloat16", precision="int8")


def test_fast_picks_by_hardware():
    from argparse import Namespace

    from medsam3.model.precision import fast_precision, native_bf16

    assert resolve_precision(Namespace(precision=None, fast=False)) == "fp32"
    assert resolve_precision(Namespace(precision="int8", fast=True)) == "fast:int8"  # explicit wins (tests/test_fast.py)
    expected = "bf16" if native_bf16("cpu") else "int8"
    assert fast_precision("cpu") == expected
    assert resolve_precision(Namespace(precision=None, fast=True), "cpu") == "fast"  # chosen at load
    assert MedSAM3.from_pretrained("random:tiny", device="cpu", precision="fast").precision == expected


def test_segment_records_precision_in_sidecar(tiny_model_dir, tmp_path, capsys):
    from medsam3.cli import main

    code = main(["segment", "-i", str(_sample_png(tmp_path)), "-o", str(tmp_path / "seg.png"),
                 "-p", "liver", "--model", str(tiny_model_dir), "--device", "cpu", "--precision", "int8",
                 "--threshold", "0", "--presence-threshold", "0"])
    assert code == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "seg.json").read_text())["precision"] == "int8"
    code = main(["segment", "-i", str(_sample_png(tmp_path)), "-o", str(tmp_path / "bad.png"), "-p", "liver",
                 "--model", str(tiny_model_dir), "--device", "cpu", "--precision", "fp8"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("medsam3: error: unknown precision 'fp8'") and "\n" not in err
    assert not (tmp_path / "bad.png").exists() and not (tmp_path / "bad.json").exists()


def test_precision_options_on_evaluate_and_serve():
    from medsam3.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["serve", "--precision", "int8"]).precision == "int8"
    assert parser.parse_args(["serve", "--fast"]).fast
    args = parser.parse_args(["evaluate", "--manifest", "m.json", "--model", "demo", "-o", "x", "--fast"])
    assert args.fast and args.precision is None


def test_sdpa_attention_equals_eager(tiny_model):
    """The model runs transformers' SDPA attention (the default); eager gives the same outputs."""
    detector = tiny_model.detector
    assert detector.config._attn_implementation == "sdpa"
    assert detector.config.detr_encoder_config._attn_implementation == "sdpa"
    sdpa = _detector_logits(tiny_model)
    configs = [detector.config, detector.config.vision_config, detector.config.vision_config.backbone_config,
               detector.config.detr_encoder_config, detector.config.detr_decoder_config,
               detector.config.mask_decoder_config, detector.config.geometry_encoder_config]
    try:
        for c in configs:
            c._attn_implementation = "eager"
        eager = _detector_logits(tiny_model)
    finally:
        for c in configs:
            c._attn_implementation = "sdpa"
    torch.testing.assert_close(sdpa, eager, rtol=1e-4, atol=1e-4)


def _sample_png(tmp_path):
    from PIL import Image

    path = tmp_path / "in.png"
    if not path.exists():
        Image.fromarray((IMAGE * 255).astype(np.uint8)).save(path)
    return path


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_input_size_change_keeps_the_precision(tiny_model_dir, precision):
    from medsam3.model import MedSAM3
    from medsam3.predict import ImagePredictor
    from medsam3.predict.input_size import with_input_size

    model = MedSAM3.from_pretrained(tiny_model_dir, device="cpu", precision=precision)
    resized = with_input_size(model, 112)
    assert resized.image_size == 112 and resized.precision == precision
    assert resized.tracker._medsam3_precision == precision
    predictor = ImagePredictor(resized, score_threshold=0.0, presence_threshold=0.0)
    predictor.set_image(IMAGE)
    assert predictor.predict(["liver"])[0].semantic.shape == IMAGE.shape
