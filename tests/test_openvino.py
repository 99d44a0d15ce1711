"""--precision ov (medsam3.model.openvino_backend): the vision encoder as a compiled OpenVINO model,
checked against torch fp32 on the tiny random model; its IR cache (reuse, one entry per size,
incomplete entries rebuilt, interrupted conversions leave nothing); segment() end to end on a
real MRI slice; the refusals (GPU, no openvino)."""

from __future__ import annotations

import json
import os
import sys
import time
import types

import numpy as np
import pytest
import torch

from medsam3.errors import ArgumentError

PIXELS = torch.rand(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))  # batch 2: the IR runs one at a time


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh IR cache directory, also the default one (``$MEDSAM3_OPENVINO_CACHE_DIR``)."""
    from medsam3.model.openvino_backend import CACHE_ENV

    path = tmp_path / "ov-cache"
    monkeypatch.setenv(CACHE_ENV, str(path))
    return path


@pytest.fixture(scope="module")
def reference(tiny_model):
    assert tiny_model.image_size == PIXELS.shape[-1]
    with torch.inference_mode():
        return tiny_model.detector.get_vision_features(pixel_values=PIXELS)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape and b.dtype == torch.float32
    return float((a - b).norm() / a.norm())


def _errors(ref, got) -> list[float]:
    pairs = [(ref.last_hidden_state, got.last_hidden_state), *zip(ref.fpn_hidden_states, got.fpn_hidden_states)]
    assert len(got.fpn_hidden_states) == len(ref.fpn_hidden_states) == 4
    for a, b in zip(ref.fpn_position_encoding, got.fpn_position_encoding):
        torch.testing.assert_close(a, b, rtol=0, atol=0)  # computed in torch: identical
    return [_relative(a, b) for a, b in pairs]


def _fresh_vision(tiny_model):
    """A copy of the tiny model's vision encoder (the backend replaces its forward)."""
    import copy

    return copy.deepcopy(tiny_model.detector.vision_encoder)


def test_f32_hint_matches_torch(tiny_model, reference, tmp_path):
    from medsam3.model.openvino_backend import use_openvino

    vision = _fresh_vision(tiny_model)
    backend = use_openvino(vision, cache_dir=tmp_path, inference_precision="f32")
    with torch.inference_mode():
        got = vision(pixel_values=PIXELS)
    assert backend.inference_precision == "f32" and backend.conversions == 1
    errors = _errors(reference, got)
    assert max(errors) < 1e-4, errors


def test_default_hint_through_from_pretrained(tiny_model_dir, reference, cache):
    """precision="ov" at load: the detector's get_vision_features goes through OpenVINO in the
    CPU's default precision (bf16 with AVX-512 BF16 / AMX, else f32); the tracker keeps torch."""
    from medsam3.model import MedSAM3
    from medsam3.model.openvino_backend import openvino_encoder
    from medsam3.model.precision import native_bf16

    model = MedSAM3.from_pretrained(tiny_model_dir, device="cpu", precision="ov")
    backend = openvino_encoder(model.detector.vision_encoder)
    assert model.precision == "ov" and backend is not None and backend.hint is None
    assert not cache.exists() or not any(cache.iterdir())  # nothing converted before the first image
    with torch.inference_mode():
        got = model.detector.get_vision_features(pixel_values=PIXELS)
    errors = _errors(reference, got)
    if backend.inference_precision == "f32":
        assert max(errors) < 1e-4, errors
    else:  # bf16 (or f16): changed, but close (0.003-0.006 measured here)
        assert backend.inference_precision in ("bf16", "f16"), backend.inference_precision
        assert 1e-6 < max(errors) < 0.03, errors
    if native_bf16("cpu"):
        assert backend.inference_precision == "bf16"
    assert openvino_encoder(model.tracker.vision_encoder) is None
    assert model.tracker._medsam3_precision == "ov"


def test_ir_is_cached_per_weights_and_size(tiny_model, tiny_model_dir, reference, cache, monkeypatch):
    import openvino

    from medsam3.model import MedSAM3
    from medsam3.model.openvino_backend import openvino_encoder, use_openvino
    from medsam3.predict.input_size import with_input_size

    first = use_openvino(_fresh_vision(tiny_model))
    with torch.inference_mode():
        first.vision(pixel_values=PIXELS[:1])
    assert first.conversions == 1
    entries = sorted(p.name for p in cache.iterdir())
    assert len(entries) == 1 and entries[0].startswith("vision-224x224-")
    # a second backend (another process, say) reads the IR: no conversion
    with monkeypatch.context() as patch:
        patch.setattr(openvino, "convert_model", lambda *a, **k: pytest.fail("converted again"))
        second = use_openvino(_fresh_vision(tiny_model))
        with torch.inference_mode():
            got = second.vision(pixel_values=PIXELS)
    assert second.conversions == 0 and second.entries[(224, 224)] == first.entries[(224, 224)]
    assert max(_errors(reference, got)) < 0.03
    # another input size is another entry
    model = with_input_size(MedSAM3.from_pretrained(tiny_model_dir, device="cpu", precision="ov"), 112)
    assert model.precision == "ov"
    backend = openvino_encoder(model.detector.vision_encoder)
    with torch.inference_mode():
        out = model.detector.get_vision_features(pixel_values=torch.rand(1, 3, 112, 112))
    assert backend.conversions == 1 and out.last_hidden_state.shape == (1, 8 * 8, reference.last_hidden_state.shape[-1])
    assert len(list(cache.glob("vision-112x112-*"))) == 1 and len(list(cache.iterdir())) == 2
    # other weights are another entry at the same size
    vision = _fresh_vision(tiny_model)
    with torch.no_grad():
        next(vision.neck.parameters()).add_(1.0)
    third = use_openvino(vision)
    assert third.entry((224, 224)) != first.entry((224, 224))


def test_incomplete_entries_are_rebuilt(tiny_model, reference, cache, monkeypatch):
    import openvino

    from medsam3.model.openvino_backend import BIN, use_openvino

    first = use_openvino(_fresh_vision(tiny_model))
    entry = first.entry((224, 224))
    # a conversion killed while writing leaves no entry and no temporary directory
    real_save = openvino.save_model

    def killed(model, path, **kwargs):
        real_save(model, path, **kwargs)
        with open(path.replace(".xml", ".bin"), "r+b") as f:
            f.truncate(100)  # half the weights written
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(openvino, "save_model", killed)
        with pytest.raises(KeyboardInterrupt), torch.inference_mode():
            first.vision(pixel_values=PIXELS[:1])
    assert list(cache.iterdir()) == []
    # an entry missing its weights (and a leftover temporary directory, fresh and stale) is not used
    with torch.inference_mode():
        first.vision(pixel_values=PIXELS[:1])
    (entry / BIN).unlink()
    fresh = cache / f".tmp-{entry.name}-fresh"
    stale = cache / f".tmp-{entry.name}-stale"
    for leftover in (fresh, stale):
        leftover.mkdir()
        (leftover / "encoder.xml").write_text("<half")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    again = use_openvino(_fresh_vision(tiny_model))
    with torch.inference_mode():
        got = again.vision(pixel_values=PIXELS)
    assert again.conversions == 1 and again.complete(entry)
    assert max(_errors(reference, got)) < 0.03
    assert fresh.exists() and not stale.exists()  # a running conversion's directory is left alone
    # a truncated .bin (its size no longer the recorded one) is incomplete too
    with open(entry / BIN, "r+b") as f:
        f.truncate(10)
    assert not again.complete(entry)
    meta = json.loads((entry / "medsam3-openvino.json").read_text())
    assert meta["size"] == [224, 224] and meta["bytes"]["encoder.bin"] > 10


def _colin_slice_png(tmp_path):
    """A real MRI image: the middle axial slice of the bundled Colin27 T1, as an 8-bit PNG."""
    from pathlib import Path

    from PIL import Image

    import medsam3
    from medsam3.io import read_image

    volume = read_image(Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz").array
    plane = np.asarray(volume[volume.shape[0] // 2], dtype=np.float32)
    plane = (plane - plane.min()) / max(float(plane.max() - plane.min()), 1e-6)
    path = tmp_path / "colin27_axial.png"
    Image.fromarray((plane * 255).astype(np.uint8)).save(path)
    return path


def test_segment_with_ov_matches_fp32(tiny_model_dir, cache, tmp_path):
    from medsam3 import segment
    from medsam3.io.sidecar import read_sidecar

    image = _colin_slice_png(tmp_path)
    common = dict(prompts=["brain", "ventricle"], model=str(tiny_model_dir), device="cpu", threshold=0.0,
                  presence_threshold=0.0, progress=False)
    ref = segment(image, tmp_path / "fp32.png", **common)
    got = segment(image, tmp_path / "ov.png", precision="ov", **common)
    for a, b in zip(ref.results, got.results):
        assert a.semantic.shape == b.semantic.shape and a.semantic.any()
        dice = 2 * np.logical_and(a.semantic, b.semantic).sum() / (a.semantic.sum() + b.semantic.sum())
        assert dice >= 0.99, (a.prompt, dice)
    sidecar = read_sidecar(tmp_path / "ov.png", missing_ok=False)
    assert sidecar["precision"] == "ov"
    assert sidecar["openvino"]["inference_precision"] in ("bf16", "f32", "f16")
    assert sidecar["openvino"]["version"].startswith("2026.4.1")
    assert "openvino" not in read_sidecar(tmp_path / "fp32.png", missing_ok=False)


def test_ov_refused_on_a_gpu_and_for_half_weights(tiny_model):
    from medsam3.model.precision import apply_precision

    on_gpu = types.SimpleNamespace(device=torch.device("cuda", 0), dtype=torch.float32, detector=None)
    with pytest.raises(ArgumentError, match=r"precision ov runs the vision encoder on OpenVINO's CPU device only "
                                            r"\(device cuda:0\); on a GPU use bf16"):
        apply_precision(on_gpu, "ov")
    half = types.SimpleNamespace(device=torch.device("cpu"), dtype=torch.bfloat16, detector=None)
    with pytest.raises(ArgumentError, match="precision ov converts float32 weights; got dtype bfloat16"):
        apply_precision(half, "ov")


def test_missing_openvino_is_a_clear_error(tiny_model, tiny_model_dir, tmp_path, monkeypatch, capsys):
    from medsam3.cli import main
    from medsam3.model import MedSAM3
    from medsam3.model.openvino_backend import use_openvino

    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino -> ImportError
    message = r"precision ov needs OpenVINO, which is not installed: pip install 'medsam3\[openvino\]'"
    with pytest.raises(ArgumentError, match=message):  # refused by name, before anything loads
        MedSAM3.from_pretrained(tiny_model_dir, device="cpu", precision="ov")
    with pytest.raises(ArgumentError, match=message):  # and by the backend itself
        use_openvino(_fresh_vision(tiny_model))
    png = _colin_slice_png(tmp_path)
    code = main(["segment", "-i", str(png), "-o", str(tmp_path / "seg.png"), "-p", "brain", "--model",
                 "random:tiny", "--device", "cpu", "--precision", "ov"])  # not a model loaded by another test
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'medsam3[openvino]'" in err and "\n" not in err
    assert not (tmp_path / "seg.png").exists()


def test_ov_is_a_precision_choice():
    from medsam3.precision_options import PRECISIONS, check_precision

    assert "ov" in PRECISIONS and check_precision("OpenVINO") == "ov" and check_precision("ov") == "ov"
