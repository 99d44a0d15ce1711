"""The model layer: named configs, the offline tokenizer, model directories, loading."""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
from safetensors import safe_open
from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3VideoModel

from medsam3.errors import ArgumentError, InputError
from medsam3.model import MedSAM3, build_config, config_names, create_random_model
from medsam3.model.loader import resolve_device, resolve_dtype
from medsam3.model.tokenizer import build_tokenizer

MEDICAL_PROMPTS = ["liver", "left kidney", "fetal head", "cell nucleus", "Retinal Blood Vessel",
                   "kidney, left", "polyp", "thyroid nodule", "Liver tumors"]


def test_tokenizer_matches_openai_clip_ids():
    tok = build_tokenizer()
    ours = tok(MEDICAL_PROMPTS, padding="max_length", max_length=32)["input_ids"]
    ref = open_clip.tokenize(MEDICAL_PROMPTS, context_length=32).tolist()
    for a, b, text in zip(ours, ref, MEDICAL_PROMPTS):
        n = b.index(49407) + 1  # open_clip pads with 0 after <|endoftext|>; transformers with <|endoftext|>
        assert a[:n] == b[:n], text
    assert len(tok) == 49408


def test_named_configs_build_models_of_the_documented_sizes():
    assert {"default", "tiny", "small"} <= set(config_names())
    with torch.device("meta"):
        full = Sam3Model(build_config("default").detector_config)
    # the published detector: 840,376,374 parameters (transformers' Sam3Model manifest)
    assert sum(p.numel() for p in full.parameters()) == 840_376_374
    tiny = build_config("tiny")
    assert tiny.image_size == 224 and tiny.tracker_config.image_size == 224
    assert tiny.detector_config.vision_config.backbone_feature_sizes == [[64, 64], [32, 32], [16, 16]]
    with pytest.raises(ArgumentError, match="unknown model configuration 'huge'"):
        build_config("huge")
    with pytest.raises(ArgumentError, match="multiple of the patch size"):
        build_config("tiny", image_size=225)


def test_model_directory_round_trip_is_exact_and_offline(tiny_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    files = {p.name for p in tiny_model_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= files
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pkl"))]  # no pickle anywhere
    assert json.loads((tiny_model_dir / "config.json").read_text())["model_type"] == "sam3_video"
    with safe_open(str(tiny_model_dir / "model.safetensors"), "pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    torch.manual_seed(0)
    reference = Sam3VideoModel(build_config("tiny")).state_dict()
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k]) for k in saved)
    detector = Sam3Model.from_pretrained(tiny_model_dir)
    for k, v in detector.state_dict().items():
        assert torch.equal(v, saved["detector_model." + k]), k
    tracker = Sam3TrackerModel.from_pretrained(tiny_model_dir)
    for k, v in tracker.state_dict().items():
        if k.startswith("vision_encoder.backbone."):
            src = "detector_model." + k
        elif k.startswith("vision_encoder.neck."):
            src = "tracker_neck." + k[len("vision_encoder.neck."):]
        else:
            src = "tracker_model." + k
        assert torch.equal(v, saved[src]), k
    processor = Sam3Processor.from_pretrained(tiny_model_dir)
    assert processor.image_processor.size["height"] == 224
    assert processor.tokenizer("liver")["input_ids"] == build_tokenizer()("liver")["input_ids"]


def test_medsam3_loads_detector_and_shares_the_backbone_with_the_tracker(tiny_model):
    assert tiny_model.image_size == 224 and tiny_model.device.type == "cpu"
    assert not tiny_model.detector.training
    tracker = tiny_model.tracker
    assert tracker.vision_encoder.backbone is tiny_model.detector.vision_encoder.backbone


def test_random_models_are_named_and_loud(caplog):
    with caplog.at_level("WARNING"):
        m = MedSAM3.from_pretrained("random:tiny", device="cpu")
    assert m.source == "random:tiny" and "RANDOM weights" in caplog.text
    with pytest.raises(ArgumentError, match="unknown configuration"):
        MedSAM3.from_pretrained("random:nope")


def test_loading_errors_name_the_model(tmp_path):
    with pytest.raises(InputError, match="not found"):
        MedSAM3.from_pretrained(str(tmp_path / "missing-dir"))
    (tmp_path / "notamodel").mkdir()
    with pytest.raises(InputError, match="is not a model directory"):
        MedSAM3.from_pretrained(tmp_path / "notamodel")


def test_create_random_model_replaces_atomically(tmp_path):
    target = tmp_path / "m"
    create_random_model("tiny", target, seed=1)
    first = (target / "model.safetensors").read_bytes()
    create_random_model("tiny", target, seed=2)
    assert (target / "model.safetensors").read_bytes() != first
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # no temporary leftovers


def test_device_and_dtype_resolution():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ArgumentError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ArgumentError, match="no CUDA GPU"):
            resolve_device("cuda")
    assert resolve_dtype("bf16") is torch.bfloat16
    with pytest.raises(ArgumentError, match="unknown dtype"):
        resolve_dtype("int3")


# ------------------------------------------------------------------ strict loading (medsam3.model.weights)
def _copy_with(tiny_model_dir, tmp_path, edit):
    """A copy of the tiny model whose tensors went through ``edit(state)``."""
    import shutil

    from safetensors.torch import load_file, save_file

    target = tmp_path / "model"
    shutil.copytree(tiny_model_dir, target)
    state = load_file(str(target / "model.safetensors"))
    edit(state)
    save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
    return target


def test_recomputed_buffer_allow_list_is_exactly_the_non_persistent_buffers():
    from transformers import Sam3TrackerVideoModel

    from medsam3.model.weights import RECOMPUTED_BUFFERS

    config = build_config("tiny")
    with torch.device("meta"):
        models = [Sam3VideoModel(config), Sam3TrackerVideoModel(config.tracker_config, remove_vision_encoder=True)]
    for model in models:
        state = set(model.state_dict())
        recomputed = [n for n, _ in model.named_buffers() if n not in state]
        assert recomputed, "expected RoPE tables and position ids among the buffers"
        assert all(RECOMPUTED_BUFFERS.search(n) for n in recomputed), recomputed
        assert not [k for k in state if RECOMPUTED_BUFFERS.search(k)]  # it can never hide a weight


def test_header_check_tracker_all_or_nothing_and_recomputed_buffers(tiny_model_dir, tmp_path):
    from medsam3.model.weights import check_weights

    assert check_weights(tiny_model_dir) is True
    position_ids = "detector_model.text_encoder.text_model.embeddings.position_ids"
    extra = _copy_with(tiny_model_dir, tmp_path / "a", lambda s: s.__setitem__(position_ids, torch.arange(32)))
    assert check_weights(extra) is True  # a recomputed buffer in the file is ignored, not an error

    def detector_only(state):
        for k in [k for k in state if k.startswith(("tracker_model.", "tracker_neck."))]:
            del state[k]

    bare = _copy_with(tiny_model_dir, tmp_path / "b", detector_only)
    assert check_weights(bare) is False
    model = MedSAM3.from_pretrained(bare, device="cpu")
    assert not model.has_tracker
    with pytest.raises(InputError, match="no tracker weights"):
        model.tracker
    from medsam3.predict.propagation import video_tracker

    with pytest.raises(InputError, match="no tracker weights"):
        video_tracker(model)

    def some_tracker(state):
        for k in [k for k in state if k.startswith("tracker_model.memory_")]:
            del state[k]

    partial = _copy_with(tiny_model_dir, tmp_path / "c", some_tracker)
    with pytest.raises(InputError, match=r"missing tensors \(tracker_model\.memory_.*all present, or all absent"):
        check_weights(partial)


def test_transformers_loading_report_is_refused_even_without_the_header_check(tiny_model_dir, tmp_path):
    """load_detector/load_tracker check transformers' own report: nothing is random-initialised
    even if the header check were skipped."""
    from medsam3.model.weights import load_detector, load_tracker, refuse_loading_report

    key = "detr_decoder.layers.0.mlp.fc1.weight"
    broken = _copy_with(tiny_model_dir, tmp_path / "a", lambda s: s.pop("detector_model." + key))
    with pytest.raises(InputError, match=f"detector weights do not load exactly: 1 missing tensor \\({key}\\)"):
        load_detector(broken, checked=True)
    tracker_key = "tracker_model.mask_decoder.iou_prediction_head.proj_out.weight"
    broken = _copy_with(tiny_model_dir, tmp_path / "b", lambda s: s.pop(tracker_key))
    with pytest.raises(InputError, match="tracker weights do not load exactly: 1 missing tensor"):
        load_tracker(broken, checked=True)
    refuse_loading_report({"missing_keys": set(), "unexpected_keys": {"x.rotary_emb.inv_freq"},
                           "mismatched_keys": set(), "error_msgs": []}, tmp_path, "detector")
    with pytest.raises(InputError, match="1 wrongly shaped tensor"):
        refuse_loading_report({"mismatched_keys": [("a.weight", (1,), (2,))]}, tmp_path, "detector")


def test_load_strict_refuses_missing_extra_and_misshaped_tensors():
    from medsam3.model.weights import load_strict

    module = torch.nn.Linear(3, 2)
    good = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    load_strict(module, good, "test", "SRC")
    assert torch.equal(module.weight, torch.ones(2, 3))
    with pytest.raises(InputError, match=r"SRC: the test weights .*1 missing tensor \(p\.bias\)"):
        load_strict(module, {"weight": torch.ones(2, 3)}, "test", "SRC", prefix="p.")
    with pytest.raises(InputError, match=r"1 unexpected tensor \(extra\)"):
        load_strict(module, {**good, "extra": torch.ones(1)}, "test", "SRC")
    with pytest.raises(InputError, match=r"1 wrongly shaped tensor \(weight \[3, 2\] \(expected \[2, 3\]\)\)"):
        load_strict(module, {**good, "weight": torch.ones(3, 2)}, "test", "SRC")


def test_float16_overflow_is_named_as_such(tiny_model_dir, tmp_path):
    key = "detector_model.detr_decoder.layers.0.mlp.fc1.weight"
    big = _copy_with(tiny_model_dir, tmp_path, lambda s: s.__setitem__(key, torch.full_like(s[key], 1e6)))
    assert MedSAM3.from_pretrained(big, device="cpu").detector is not None  # finite in float32
    with pytest.raises(InputError, match=f"1 finite tensor overflows float16 when loaded \\({key}\\).*float32"):
        MedSAM3.from_pretrained(big, device="cpu", dtype="float16")


def test_vit_layer_norms_use_metas_epsilon(tiny_model_dir, tmp_path):
    """Meta's ViT normalises with LayerNorm(eps=1e-5); transformers' Sam3ViTConfig (and
    facebook/sam3's config.json) say 1e-6. Every configuration we build says 1e-5, and a
    directory whose config.json says 1e-6 still loads with Meta's value."""
    import shutil

    from medsam3.model.configs import VIT_LAYER_NORM_EPS

    assert VIT_LAYER_NORM_EPS == 1e-5
    for name in config_names():
        config = build_config(name)
        for vision in (config.detector_config.vision_config, config.tracker_config.vision_config):
            assert vision.backbone_config.layer_norm_eps == 1e-5, name
    hub_like = shutil.copytree(tiny_model_dir, tmp_path / "hub-like")
    config = json.loads((hub_like / "config.json").read_text())
    config["detector_config"]["vision_config"]["backbone_config"]["layer_norm_eps"] = 1e-6
    (hub_like / "config.json").write_text(json.dumps(config))
    model = MedSAM3.from_pretrained(hub_like, device="cpu")
    norms = [m for m in model.detector.vision_encoder.backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert len(norms) == 2 * 2 + 1 and {m.eps for m in norms} == {1e-5}  # 2 blocks x 2 + ln_pre
    assert model.tracker.vision_encoder.backbone is model.detector.vision_encoder.backbone
