"""Converting Meta-format checkpoints (sam3.pt, Medical SAM3) into model directories.

Without the real weights: (a) the key/shape manifests of the real layouts (tests/data/sam3-keys,
from Meta's module definitions and transformers' full-size classes) must map onto each other
completely, in both directions; (b) a tiny transformers model exported to Meta's naming with the
inverse mapping and converted back must give identical outputs on a real image.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3VideoModel

from medsam3.errors import ArgumentError, InputError
from medsam3.model import convert as cv
from medsam3.model import convert_cli, hub
from medsam3.model import keymap as km
from medsam3.model.configs import build_config
from medsam3.model.directory import save_model_directory
from medsam3.model.weights import directory_has_tracker

KEYS = Path(__file__).parent / "data" / "sam3-keys"
DTYPES = {"float32": torch.float32, "complex64": torch.complex64}


def manifest(name: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    with gzip.open(KEYS / f"{name}.json.gz", "rt") as f:
        tensors = json.load(f)["tensors"]
    return {k: (tuple(v["shape"]), DTYPES[v["dtype"].replace("torch.", "")]) for k, v in tensors.items()}


def on_meta(m: dict) -> dict[str, torch.Tensor]:
    return {k: torch.empty(shape, dtype=dtype, device="meta") for k, (shape, dtype) in m.items()}


def shapes(state: dict) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------
# (a) the real layouts, key by key
# ---------------------------------------------------------------------------------------------

def test_manifests_map_completely_in_both_directions():
    meta_video = manifest("meta_sam3_video_checkpoint_keys")
    hf_video = manifest("hf_sam3_video_model_keys")
    config = build_config("default")
    keymap = km.build_keymap(config)

    # the target model built on the meta device from our 'default' config is the real layout
    assert keymap.hf_shapes == {k: s for k, (s, _) in hf_video.items()}
    # Meta -> transformers: every Meta key is mapped with its exact shape, or dropped with a reason
    expected = keymap.meta_shapes()
    dropped = {k: km.meta_only_reason(k) for k in meta_video if k not in expected}
    assert all(dropped.values()), [k for k, r in dropped.items() if not r]
    assert sum("freqs_cis" in k for k in dropped) == 32 and sum("points_" in k for k in dropped) == 6
    assert len(dropped) == 38 and set(expected) <= set(meta_video)
    assert all(meta_video[k][0] == s for k, s in expected.items())

    # converting the manifest's (meta-device) tensors gives exactly transformers' Sam3VideoModel
    out, report = cv.convert_state_dict(on_meta(meta_video))
    assert shapes(out) == {k: s for k, (s, _) in hf_video.items()}
    assert report.layout == "video" and report.has_tracker and report.config_name == "default"
    assert (len(report.mapped), len(report.dropped), len(report.missing)) == (1427, 38, 0)
    # the published totals (COMPARISON.md): 860,055,224 = 859,921,848 + 132,352 + 1,024
    assert report.source_parameters == 860_055_224 and report.target_parameters == 859_921_848
    assert report.dropped_parameters == 133_376 and report.cls_row_values == 1_024
    assert "1427 mapped, 38 dropped" in report.summary_line() and "0 missing" in report.summary_line()

    # transformers -> Meta: the inverse gives back Meta's key set, shapes and dtypes
    back = km.hf_to_meta_state_dict(on_meta(hf_video), config)
    assert {k: (tuple(v.shape), v.dtype) for k, v in back.items()} == meta_video


def test_image_model_manifests_map_onto_sam3model():
    meta_image = manifest("meta_sam3_image_model_keys")
    hf_image = {"detector_model." + k: s for k, (s, _) in manifest("hf_sam3_model_keys").items()}
    # with the tracker (enable_inst_interactivity=True): detector + tracker
    out, report = cv.convert_state_dict(on_meta(meta_image))
    assert report.layout == "image" and report.has_tracker and len(out) == 1797
    assert {k: s for k, s in shapes(out).items() if k.startswith("detector_model.")} == hf_image
    # without it (1134 keys): exactly Sam3Model, 840,509,750 -> 840,376,374 parameters
    no_tracker = {k: v for k, v in meta_image.items()
                  if not k.startswith("inst_interactive_predictor.") and ".sam2_convs." not in k}
    assert len(no_tracker) == 1134
    out, report = cv.convert_state_dict(on_meta(no_tracker))
    assert shapes(out) == hf_image and not report.has_tracker
    assert (report.source_parameters, report.target_parameters) == (840_509_750, 840_376_374)
    # --kind image drops the tracker tensors of a full checkpoint, with the reason
    out, report = cv.convert_state_dict(on_meta(meta_image), kind="image")
    assert shapes(out) == hf_image
    assert sum(d.reason.startswith("tracker tensor") for d in report.dropped) == 331


# ---------------------------------------------------------------------------------------------
# (b) numeric round trip on the tiny configuration
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny model (one Gaussian PE matrix, as in every real model), its directory and its Meta export."""
    root = tmp_path_factory.mktemp("convert")
    config = build_config("tiny")
    torch.manual_seed(1)
    state = Sam3VideoModel(config).state_dict()
    state[km.GAUSSIAN_HF[1]] = state[km.GAUSSIAN_HF[0]].clone()
    original = save_model_directory(state, config, root / "original")
    meta = km.hf_to_meta_state_dict(state, config)
    torch.save(meta, root / "sam3.pt")
    return {"root": root, "config": config, "state": state, "dir": original, "meta": meta,
            "sam3.pt": root / "sam3.pt"}


@pytest.fixture(scope="module")
def converted(tiny):
    out = tiny["root"] / "converted"
    report = cv.convert_checkpoint(tiny["sam3.pt"], out)
    return out, report


def ct_image() -> np.ndarray:
    """A real CT slice (pydicom's CT_small), soft-tissue window, as RGB in [0, 1]."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    gray = np.clip((hu + 160.0) / 400.0, 0.0, 1.0)
    return np.repeat(gray[..., None], 3, axis=-1)


def test_round_trip_gives_identical_tensors_and_outputs(tiny, converted):
    out, report = converted
    assert report.layout == "video" and report.config_name == "tiny" and report.missing == []
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json", "conversion.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".pkl"))]  # no pickle anywhere
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    assert saved.keys() == tiny["state"].keys()
    assert all(torch.equal(saved[k], tiny["state"][k]) for k in saved)
    assert json.loads((out / "conversion.json").read_text())["summary"] == report.summary_line()
    assert directory_has_tracker(out)
    # Meta has one Gaussian PE matrix: two different ones (a fresh random model) cannot be exported
    untied = dict(tiny["state"])
    untied[km.GAUSSIAN_HF[1]] = untied[km.GAUSSIAN_HF[1]] + 1
    with pytest.raises(ValueError, match="differ"):
        km.hf_to_meta_state_dict(untied, tiny["config"])

    image = ct_image()
    processor = Sam3Processor.from_pretrained(out)
    inputs = processor(images=image, text="liver", return_tensors="pt", do_rescale=False)
    results = []
    for directory in (tiny["dir"], out):
        detector = Sam3Model.from_pretrained(directory).eval()
        tracker = Sam3TrackerModel.from_pretrained(directory).eval()
        with torch.no_grad():
            det = detector(**inputs)
            box = torch.tensor([[[40.0, 50.0, 150.0, 170.0]]])  # model pixels (224 px input)
            trk = tracker(pixel_values=inputs["pixel_values"], input_boxes=box, multimask_output=False)
        results.append((det, trk))
    (d0, t0), (d1, t1) = results
    for name in ("pred_masks", "pred_logits", "presence_logits", "pred_boxes"):
        torch.testing.assert_close(d1[name], d0[name], atol=1e-5, rtol=0)
    for name in ("pred_masks", "iou_scores", "object_score_logits"):
        torch.testing.assert_close(t1[name], t0[name], atol=1e-5, rtol=0)
    assert d0["pred_masks"].abs().sum() > 0 and t0["pred_masks"].abs().sum() > 0


def test_every_accepted_layout_gives_the_same_model(tiny, tmp_path):
    meta, state = tiny["meta"], tiny["state"]
    image_layout = {km.image_layout_key(k): v for k, v in meta.items()}
    cases = {
        "image layout with tracker": (image_layout, "image", True),
        "image layout, DDP": ({"module." + k: v for k, v in image_layout.items()}, "image", True),
        "sam3.pt layout, DDP": ({"module." + k: v for k, v in meta.items()}, "video", True),
        # Medical SAM3's trainer checkpoints: image-model keys under "model" / "state_dict"
        "trainer dict, image layout": ({"model": image_layout, "epoch": 3}, "image", True),
        "trainer dict, image layout, DDP": ({"model": {"module." + k: v for k, v in image_layout.items()},
                                             "epoch": 3}, "image", True),
        "trainer 'state_dict', image layout, DDP": ({"state_dict": {"module." + k: v
                                                                    for k, v in image_layout.items()}},
                                                    "image", True),
        "trainer dict, sam3.pt layout": ({"model": meta, "epoch": 0}, "video", True),
        # last: the file checked with --kind video below
        "image layout without tracker": ({k: v for k, v in image_layout.items()
                                          if not k.startswith("inst_interactive_predictor.")
                                          and ".sam2_convs." not in k}, "image", False),
    }
    for name, (sd, layout, has_tracker) in cases.items():
        path = tmp_path / "ckpt.pt"
        torch.save(sd, path)
        out, report = cv.read_converted(path)
        assert (report.layout, report.has_tracker, report.ddp_prefix) == (layout, has_tracker, "DDP" in name), name
        assert report.mmap
        expected = state if has_tracker else {k: v for k, v in state.items() if k.startswith("detector_model.")}
        assert out.keys() == expected.keys(), name
        assert all(torch.equal(out[k], expected[k]) for k in out), name
        line = report.detection_line()
        assert ("DDP 'module.' prefix stripped" in line) == ("DDP" in name)
        assert ("no 'detector.' prefix" in line) == (layout == "image")
    # a file without tracker weights cannot be converted as a video model
    with pytest.raises(InputError, match="no tracker weights"):
        cv.read_converted(path, kind="video")
    # legacy (non-zip) torch.save files are read whole, not memory-mapped
    torch.save(meta, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    out, report = cv.read_converted(tmp_path / "legacy.pt")
    assert not report.mmap and out.keys() == state.keys()


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs /proc for the memory check")
def test_trainer_checkpoint_never_reads_the_optimizer_state(tiny, tmp_path, monkeypatch):
    meta = tiny["meta"]
    # an optimizer state of 256 MB (the real one is ~2/3 of a 10 GB file)
    big = torch.ones(64 * 1024 * 1024)
    optimizer = {"state": {0: {"exp_avg": big, "exp_avg_sq": torch.ones(4), "step": torch.tensor(3.0)}},
                 "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "params": [0]}]}
    trainer = {"model": {"module." + k: v for k, v in meta.items()}, "optimizer": optimizer,
               "epoch": 9, "scaler": {"scale": 1024.0}}
    path = tmp_path / "checkpoint.pt"
    torch.save(trainer, path)
    del big, optimizer, trainer

    kept = {}
    load = cv.load_checkpoint

    def keep(p):  # keep the loaded (memory-mapped) object alive to measure what was read
        kept["obj"] = load(p)
        return kept["obj"]

    monkeypatch.setattr(cv, "load_checkpoint", keep)
    before = _rss_bytes()
    out, report = cv.read_converted(path)
    after = _rss_bytes()
    assert out.keys() == tiny["state"].keys()
    assert report.container.startswith("trainer dict (weights under 'model'") and report.ddp_prefix
    dropped = {d.key: d for d in report.trainer_dropped}
    assert set(dropped) == {"optimizer", "epoch", "scaler"}
    assert dropped["optimizer"].tensors == 3 and dropped["optimizer"].reason.startswith("optimizer state")
    assert dropped["optimizer"].values == 64 * 1024 * 1024 + 5
    assert "memory-mapped, never read" in report.summary_line() and "'optimizer' (3 tensors)" in report.summary_line()
    assert after - before < 96 * 2**20, "the optimizer state was read into memory"
    # the measurement can see a read: touching the optimizer tensor costs its 256 MB
    assert float(kept["obj"][0]["optimizer"]["state"][0]["exp_avg"].sum()) == 64 * 1024 * 1024
    assert _rss_bytes() - after > 200 * 2**20


# ---------------------------------------------------------------------------------------------
# errors name the file and the offending keys
# ---------------------------------------------------------------------------------------------

def test_missing_unexpected_and_misshapen_keys_are_errors(tiny, tmp_path):
    meta = tiny["meta"]
    gone = "detector.transformer.decoder.query_embed.weight"
    bent = "tracker.sam_mask_decoder.iou_token.weight"
    broken = {k: v for k, v in meta.items() if k != gone}
    broken[bent] = torch.zeros(2, 3)
    broken["detector.mystery.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pt"
    torch.save(broken, path)
    with pytest.raises(cv.CheckpointMismatchError) as info:
        cv.read_converted(path)
    err = info.value
    assert err.missing == [gone] and err.unexpected == ["detector.mystery.weight"] and err.wrong_shape == [bent]
    text = str(err)
    assert str(path) in text and gone in text and "detector.mystery.weight" in text
    assert f"{bent} (2, 3) (expected (1, 128))" in text
    assert isinstance(err, InputError)
    # in the image layout the keys are named as they are spelled in the file
    torch.save({"module." + km.image_layout_key(k): v for k, v in meta.items() if k != gone}, path)
    with pytest.raises(cv.CheckpointMismatchError, match="module.transformer.decoder.query_embed.weight"):
        cv.read_converted(path)


def test_files_that_are_not_sam3_checkpoints_are_input_errors(tmp_path):
    cases = {
        "text.pt": lambda p: p.write_text("not a checkpoint"),
        "list.pt": lambda p: torch.save([torch.zeros(1)], p),
        "no_tensors.pt": lambda p: torch.save({"epoch": 3}, p),
        "other_model.pt": lambda p: torch.save({"fc.weight": torch.zeros(2, 2)}, p),
        "hf_names.pt": lambda p: torch.save({"detector_model.text_projection.weight": torch.zeros(2)}, p),
        "pickled_object.pt": lambda p: torch.save({"model": {"detector.x": torch.zeros(1)},
                                                   "args": argparse.Namespace(lr=1)}, p),
    }
    messages = {"text.pt": "not a PyTorch checkpoint", "list.pt": "holds a list",
                "no_tensors.pt": "without tensors", "other_model.pt": "no SAM3 weights recognised",
                "hf_names.pt": "already uses transformers", "pickled_object.pt": "argparse.Namespace"}
    for name, make in cases.items():
        path = tmp_path / name
        make(path)
        with pytest.raises(InputError, match=messages[name]) as info:
            cv.read_converted(path)
        assert str(path) in str(info.value)
    with pytest.raises(InputError, match="not found"):
        cv.read_converted(tmp_path / "absent.pt")
    with pytest.raises(ArgumentError, match="unknown kind"):
        cv.read_converted(tmp_path / "text.pt", kind="3d")
    with pytest.raises(ArgumentError, match="unknown configuration"):
        cv.read_converted(tmp_path / "text.pt", config="huge")


def test_non_finite_weights_are_an_error_unless_a_fallback_supplies_them(tiny, tmp_path):
    meta = dict(tiny["meta"])
    key = "detector.backbone.language_backbone.encoder.transformer.resblocks.0.attn.in_proj_weight"
    meta[key] = meta[key].clone()
    meta[key][0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(meta, path)
    with pytest.raises(InputError, match="NaN or Inf") as info:
        cv.read_converted(path)
    assert key in str(info.value) and "text_model.encoder.layers.0.self_attn.q_proj.weight" in str(info.value)
    out, report = cv.read_converted(path, nan_fallback=tiny["dir"])
    patched = {"detector_model.text_encoder.text_model.encoder.layers.0.self_attn." + p + "_proj.weight"
               for p in "qkv"}
    assert set(report.patched) == patched
    assert all(torch.equal(out[k], tiny["state"][k]) for k in out)
    assert "3 non-finite tensors replaced" in report.summary_line()
    # the fallback model directory is loaded strictly too: a truncated or incomplete one is refused
    import shutil

    from safetensors.torch import save_file

    broken = tmp_path / "fallback"
    shutil.copytree(tiny["dir"], broken)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(InputError, match="model.safetensors is not a readable safetensors file"):
        cv.read_converted(path, nan_fallback=broken)
    save_file({k: v for k, v in tiny["state"].items() if not k.endswith("mlp.fc1.weight")}, str(weights))
    with pytest.raises(InputError, match=f"model directory {broken}: .* missing tensors"):
        cv.read_converted(path, nan_fallback=broken)


# ---------------------------------------------------------------------------------------------
# hub repositories with original-format files, the loader, the CLI
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def fake_hub(tiny, monkeypatch, tmp_path):
    """Hub functions replaced: ChongCong/Medical-SAM3 with both checkpoints (the tiny export)."""
    calls = {"download": [], "online": True}
    files = [".gitattributes", "README.md", "checkpoint_2D.pt", "checkpoint_3D.pt"]

    def file_id(repo, filename, revision):
        if not calls["online"]:
            raise ConnectionError("offline")
        return {"checkpoint_2D.pt": "2d", "checkpoint_3D.pt": "3d"}[filename] * 10

    def list_files(repo, revision):
        if not calls["online"]:
            raise ConnectionError("offline")
        return files

    def download(repo, filename, revision):
        calls["download"].append((repo, filename, revision))
        return str(tiny["sam3.pt"])

    monkeypatch.setattr(hub, "hub_file_id", file_id)
    monkeypatch.setattr(hub, "hub_list_files", list_files)
    monkeypatch.setattr(hub, "hub_download", download)
    monkeypatch.setenv("MEDSAM3_CACHE_DIR", str(tmp_path / "cache"))
    return calls


def test_hub_repo_is_converted_once_and_cached(fake_hub, tmp_path):
    first = hub.convert_hub_repo("ChongCong/Medical-SAM3")
    assert first == tmp_path / "cache" / "ChongCong--Medical-SAM3" / "checkpoint_2D.pt" / "2d2d2d2d2d2d2d2d"
    assert fake_hub["download"] == [("ChongCong/Medical-SAM3", "checkpoint_2D.pt", None)]
    assert json.loads((first / "conversion.json").read_text())["config_name"] == "tiny"
    assert hub.convert_hub_repo("ChongCong/Medical-SAM3") == first and len(fake_hub["download"]) == 1
    three_d = hub.convert_hub_repo("ChongCong/Medical-SAM3:checkpoint_3D.pt")
    assert three_d.parent.name == "checkpoint_3D.pt" and len(fake_hub["download"]) == 2
    fake_hub["online"] = False  # offline: the newest cached conversion
    assert hub.convert_hub_repo("ChongCong/Medical-SAM3") == first
    assert hub.cached_conversion("ChongCong/Medical-SAM3:checkpoint_3D.pt") == three_d
    with pytest.raises(InputError, match="no converted copy is cached"):
        hub.convert_hub_repo("someone/other-model")
    fake_hub["online"] = True
    with pytest.raises(ArgumentError, match="several checkpoints"):  # no known default
        hub.convert_hub_repo("someone/other-model")


def test_loader_converts_hub_repos_without_transformers_files(fake_hub, monkeypatch):
    import huggingface_hub

    from medsam3.model import MedSAM3

    monkeypatch.setattr(huggingface_hub, "list_repo_files",
                        lambda repo, **kw: [".gitattributes", "checkpoint_2D.pt", "checkpoint_3D.pt"])
    model = MedSAM3.from_pretrained("ChongCong/Medical-SAM3", device="cpu")
    assert model.directory.parent.name == "checkpoint_2D.pt" and model.image_size == 224
    assert isinstance(model.detector, Sam3Model)
    assert MedSAM3.from_pretrained("ChongCong/Medical-SAM3:checkpoint_3D.pt", device="cpu").directory \
        .parent.name == "checkpoint_3D.pt"
    assert len(fake_hub["download"]) == 2


def test_cli_convert_prints_detection_and_summary(tiny, tmp_path, capsys):
    from medsam3.cli import main

    parser = argparse.ArgumentParser()
    convert_cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["convert", "-i", str(tiny["sam3.pt"]), "--check"])
    assert args.func is convert_cli.run and args.kind == "auto"
    assert convert_cli.run(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{tiny['sam3.pt']}: plain state dict; Meta video layout")
    assert "0 missing" in lines[1]
    out = tmp_path / "model"
    assert main(["convert", "-i", str(tiny["sam3.pt"]), "-o", str(out), "--kind", "image"]) == 0
    assert (out / "model.safetensors").is_file() and "wrote" in capsys.readouterr().out
    assert not directory_has_tracker(out)  # --kind image: detector only
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("x")
    assert main(["convert", "-i", str(tiny["sam3.pt"]), "-o", str(tmp_path / "notes")]) == 2
    assert "refusing to replace" in capsys.readouterr().err
    assert (tmp_path / "notes" / "keep.txt").exists()
    assert main(["convert", "-i", str(tmp_path / "absent.pt"), "-o", str(out)]) == 2
    assert "absent.pt not found" in capsys.readouterr().err


def test_cli_convert_writes_the_prompt_vocabulary(tiny, tmp_path, capsys):
    """``--vocabulary medical-sam3``: medsam3.json says so, and typed text then reaches the
    converted model as Medical SAM3's own prompts; an unknown name is refused before anything
    is written."""
    from medsam3.cli import main
    from medsam3.model import MedSAM3
    from medsam3.prompt_mapping import map_prompts

    out = tmp_path / "medsam3-2d"
    assert main(["convert", "-i", str(tiny["sam3.pt"]), "-o", str(out), "--kind", "image",
                 "--vocabulary", "medical-sam3"]) == 0
    assert "prompt vocabulary medical-sam3" in capsys.readouterr().out
    assert json.loads((out / "medsam3.json").read_text()) == {"vocabulary": "medical-sam3"}
    sent, _ = map_prompts(["kidneys", "polyps"], MedSAM3.from_pretrained(out, device="cpu"))
    assert sent == ["Kidney", "Polyp"]
    assert main(["convert", "-i", str(tiny["sam3.pt"]), "-o", str(tmp_path / "x"), "--vocabulary", "sam9"]) == 2
    assert "--vocabulary 'sam9' is not a known vocabulary; accepted: medical-sam3, none" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()
    assert convert_cli._vocabulary(None, "ChongCong/Medical-SAM3:checkpoint_3D.pt") == "medical-sam3"
    assert convert_cli._vocabulary(None, "sam3.pt") is None and convert_cli._vocabulary("none", "x") is None
