"""Optimiser groups with layer-wise decay, the schedule, the training config, the training
forward (every decoder layer's outputs), activation checkpointing and LoRA merging."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medsam3.errors import ArgumentError, InputError
from medsam3.train.config import (
    TrainingConfig,
    apply_overrides,
    config_from_dict,
    load_config,
)
from medsam3.train.optim import (
    InverseSqrtSchedule,
    build_optimizer,
    build_scheduler,
    layer_id,
    parameter_group,
)

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "demo" / "configs"


@pytest.fixture(scope="module")
def tiny_detector():
    from transformers import Sam3Model

    from medsam3.model.configs import build_config

    torch.manual_seed(0)
    return Sam3Model(build_config("tiny", image_size=112))


# ---------------------------------------------------------------------------- groups
def test_groups_and_layer_ids_of_parameter_names():
    assert parameter_group("vision_encoder.backbone.layers.3.mlp.fc1.weight") == "vision"
    assert parameter_group("vision_encoder.neck.fpn_layers.0.proj1.weight") == "vision"
    assert parameter_group("text_projection.weight") == "text"
    assert parameter_group("geometry_encoder.final_proj.weight") == "geometry"
    for name in ("detr_encoder.layers.0.mlp.fc1.weight", "mask_decoder.semantic_projection.bias",
                 "dot_product_scoring.query_proj.weight", "detr_decoder.presence_token.weight"):
        assert parameter_group(name) == "decoder"
    assert layer_id("vision_encoder.backbone.embeddings.patch_embeddings.projection.weight", 32) == 0
    assert layer_id("vision_encoder.backbone.layer_norm.weight", 32) == 0
    assert layer_id("vision_encoder.backbone.layers.0.attention.q_proj.weight", 32) == 1
    assert layer_id("vision_encoder.backbone.layers.31.mlp.fc2.bias", 32) == 32
    assert layer_id("vision_encoder.neck.fpn_layers.2.proj2.weight", 32) == 33
    assert layer_id("text_encoder.text_model.embeddings.token_embedding.weight", 24) == 0
    assert layer_id("text_encoder.text_model.encoder.layers.23.mlp.fc1.weight", 24) == 24
    assert layer_id("text_encoder.text_model.final_layer_norm.weight", 24) == 25
    assert layer_id("text_projection.weight", 24) == 25


def test_parameter_groups_learning_rates_and_weight_decay(tiny_detector):
    from medsam3.train.optim import parameter_groups

    lr = {"decoder": 3e-4, "geometry": 1e-4, "vision": 5e-5, "text": 5e-5}
    groups, infos = parameter_groups(tiny_detector, lr, {"vision": 0.85, "text": 0.85}, 0.05)
    by_name = {g["name"]: g for g in groups}
    # tiny: 2 ViT blocks -> embeddings 0.85^3, block 0 0.85^2, block 1 0.85, neck 1
    assert by_name["vision.layer0.decay"]["lr"] == pytest.approx(5e-5 * 0.85 ** 3)
    assert by_name["vision.layer1.decay"]["lr"] == pytest.approx(5e-5 * 0.85 ** 2)
    assert by_name["vision.layer2.decay"]["lr"] == pytest.approx(5e-5 * 0.85)
    assert by_name["vision.layer3.decay"]["lr"] == pytest.approx(5e-5)
    assert by_name["text.layer1.decay"]["lr"] == pytest.approx(5e-5 * 0.85)  # 1 text block
    assert by_name["geometry.layer0.decay"]["lr"] == pytest.approx(1e-4)
    assert by_name["decoder.layer0.decay"]["lr"] == pytest.approx(3e-4)
    for g in groups:
        assert g["weight_decay"] == (0.05 if g["name"].endswith(".decay") else 0.0)
        assert all((p.ndim > 1) == g["name"].endswith(".decay") for p in g["params"])
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(tiny_detector.parameters()))
    assert sum(i.count for i in infos) == sum(p.numel() for p in tiny_detector.parameters())


def test_frozen_parameters_stay_out_of_the_optimizer(tiny_detector):
    import copy

    from medsam3.train.loop import freeze_parameters

    model = copy.deepcopy(tiny_detector)
    n = freeze_parameters(model, ["vision", "geometry"])
    assert n == sum(1 for k, _ in model.named_parameters()
                    if k.startswith(("vision_encoder.backbone", "geometry_encoder")))
    _, infos = build_optimizer(model, {"decoder": 1e-4, "geometry": 1e-4, "vision": 1e-4, "text": 1e-4},
                                       {}, 0.05)
    assert not any(i.group == "geometry" for i in infos)
    assert all(i.layer == 3 for i in infos if i.group == "vision")  # only the neck is left
    with pytest.raises(ArgumentError, match="names no parameters"):
        freeze_parameters(model, ["no_such_module"])


def test_inverse_sqrt_schedule_by_hand():
    f = InverseSqrtSchedule(total_steps=100, warmup_steps=10, cooldown_steps=20, timescale=10)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(20) == pytest.approx(1 / math.sqrt(2))
    assert f(50) == pytest.approx(1 / math.sqrt(5))
    assert f(90) == pytest.approx(1 / math.sqrt(9) * 10 / 20)
    assert f(100) == 0.0
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = build_scheduler(opt, 100, 10, 20, 10)
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(2.0 / math.sqrt(2))
    restored = build_scheduler(torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2.0), 100, 10, 20, 10)
    restored.load_state_dict(sched.state_dict())
    assert restored.last_epoch == 20


# ---------------------------------------------------------------------------- config
def test_example_configs_parse():
    names = sorted(p.name for p in CONFIGS.glob("train-*.yaml"))
    assert {"train-tiny-cpu.yaml", "train-paper-gpu.yaml", "train-lora.yaml"} <= set(names)
    demo = sorted(DEMO_CONFIGS.glob("train-demo-*.yaml"))
    assert len(demo) == 15  # the demo model's shipped chain: 9 detector stages, 6 tracker runs
    for path in [CONFIGS / name for name in names] + demo:
        cfg = load_config(path)
        assert cfg.model and cfg.output_dir and cfg.data.manifest
    paper = load_config(CONFIGS / "train-paper-gpu.yaml")
    assert paper.optim.lr == {"decoder": 3e-4, "geometry": 1e-4, "vision": 5e-5, "text": 5e-5}
    assert paper.optim.layer_decay == {"vision": 0.85, "text": 0.85} and paper.train.grad_clip == 0.1
    assert paper.loss.class_weight == 20.0 and paper.loss.o2m_topk == 4 and paper.seed == 42
    assert load_config(CONFIGS / "train-lora.yaml").train.mode == "lora"


def test_config_defaults_are_the_paper_recipe():
    cfg = TrainingConfig()
    assert cfg.optim.weight_decay == 0.05 and cfg.train.grad_clip == 0.1 and cfg.train.mode == "full"
    assert (cfg.loss.match_class, cfg.loss.match_l1, cfg.loss.match_giou) == (2.0, 5.0, 2.0)
    assert (cfg.loss.l1_weight, cfg.loss.giou_weight, cfg.loss.pos_weight) == (5.0, 2.0, 10.0)
    assert (cfg.loss.semantic_focal_weight, cfg.loss.semantic_dice_weight, cfg.loss.semantic_focal_alpha) == \
        (20.0, 30.0, 0.6)
    assert (cfg.loss.o2m_weight, cfg.loss.o2m_topk) == (2.0, 4)


def test_config_errors_name_the_key(tmp_path):
    base = {"model": "random:tiny", "output_dir": "out", "data": {"manifest": "m.jsonl"}}
    cfg = config_from_dict({**base, "optim": {"lr": {"decoder": "3e-4"}}})  # YAML 1.1 reads 3e-4 as text
    assert cfg.optim.lr["decoder"] == 3e-4
    with pytest.raises(ArgumentError, match="train.max_stepz"):
        config_from_dict({**base, "train": {"max_stepz": 3}})
    with pytest.raises(ArgumentError, match="train.mode"):
        config_from_dict({**base, "train": {"mode": "qlora"}})
    with pytest.raises(ArgumentError, match="data.manifest"):
        config_from_dict({"model": "x", "output_dir": "y"})
    with pytest.raises(ArgumentError, match="optim.lr names unknown group"):
        config_from_dict({**base, "optim": {"lr": {"backbone": 1e-4}}})
    with pytest.raises(ArgumentError, match="train.max_steps must be a whole number"):
        config_from_dict({**base, "train": {"max_steps": "many"}})
    cfg = config_from_dict({**base, "data": {"manifest": "m.jsonl", "modality_weights": {"MR": "2"}}})
    assert cfg.data.modality_weights == {"MR": 2.0}
    with pytest.raises(ArgumentError, match="data.modality_weights.CT must be > 0"):
        config_from_dict({**base, "data": {"manifest": "m.jsonl", "modality_weights": {"CT": 0}}})
    with pytest.raises(ArgumentError, match="needs data.balanced"):
        config_from_dict({**base, "data": {"manifest": "m.jsonl", "balanced": False, "modality_weights": {"MR": 2}}})
    cfg = config_from_dict({**base, "data": {"manifest": "m.jsonl", "class_weights": {"hippocampus": "3"}}})
    assert cfg.data.class_weights == {"hippocampus": 3.0}
    with pytest.raises(ArgumentError, match="data.class_weights.putamen must be > 0"):
        config_from_dict({**base, "data": {"manifest": "m.jsonl", "class_weights": {"putamen": -1}}})
    with pytest.raises(ArgumentError, match=r"data.small_slice_bias must be in \[0, 1\]"):
        config_from_dict({**base, "data": {"manifest": "m.jsonl", "small_slice_bias": 2}})
    with pytest.raises(ArgumentError, match=r"data.near_absent_bias must be in \[0, 1\]"):
        config_from_dict({**base, "data": {"manifest": "m.jsonl", "near_absent_bias": -0.1}})
    with pytest.raises(ArgumentError, match="data.near_absent_mm must be > 0"):
        config_from_dict({**base, "data": {"manifest": "m.jsonl", "near_absent_mm": 0}})
    data = apply_overrides({**base}, ["train.max_steps=7", "data.batch_size=3", "train.freeze=[vision, text]"])
    cfg = config_from_dict(data)
    assert cfg.train.max_steps == 7 and cfg.data.batch_size == 3 and cfg.train.freeze == ["vision", "text"]
    # an unquoted `no` is YAML's false: read as the precision "no", as a user means it
    assert config_from_dict(apply_overrides({**base}, ["train.mixed_precision=no"])).train.mixed_precision == "no"
    (tmp_path / "bad.yaml").write_text("model: [unclosed\n")
    with pytest.raises(InputError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(InputError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_cli_refuses_a_bad_config_with_one_line(tmp_path, capsys):
    from medsam3.train.cli import main

    (tmp_path / "c.yaml").write_text("model: random:tiny\noutput_dir: o\ndata: {manifest: m.jsonl}\ntrain: {modee: full}\n")
    assert main(["--config", str(tmp_path / "c.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.modee" in err[0] and "c.yaml" in err[0]


def test_register_adds_the_train_subcommand():
    import argparse

    from medsam3.train.cli import register, run

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["train", "--config", "x.yaml", "--resume", "--set", "train.max_steps=3"])
    assert args.func is run and args.resume is True and args.overrides == ["train.max_steps=3"]
    args = parser.parse_args(["train", "-c", "x.yaml", "--resume", "runs/a/checkpoints/step-0000010"])
    assert args.resume == "runs/a/checkpoints/step-0000010"


# ---------------------------------------------------------------------------- the model side
def _batch(detector):
    from medsam3.model.tokenizer import build_tokenizer

    tok = build_tokenizer()(["brain", "liver", "brain"], padding="max_length", max_length=32, truncation=True,
                            return_tensors="pt")
    torch.manual_seed(1)
    return {"pixel_values": torch.randn(2, 3, 112, 112), "image_index": torch.tensor([0, 0, 1]),
            "input_ids": tok["input_ids"], "attention_mask": tok["attention_mask"],
            "input_boxes": torch.tensor([[[0.5, 0.5, 0.3, 0.3]], [[0.0, 0.0, 0.0, 0.0]], [[0.4, 0.4, 0.2, 0.2]]]),
            "input_boxes_labels": torch.tensor([[1], [-10], [1]])}


def test_training_forward_returns_every_decoder_layer(tiny_detector):
    from torchvision.ops import box_convert

    from medsam3.train.model import DetectorForTraining

    model = DetectorForTraining(tiny_detector).eval()
    batch = _batch(tiny_detector)
    with torch.no_grad():
        out = model(**batch)
        # rows sharing an image reuse its features: the same as running the images per row
        plain = tiny_detector(pixel_values=batch["pixel_values"][batch["image_index"]], input_ids=batch["input_ids"],
                              attention_mask=batch["attention_mask"], input_boxes=batch["input_boxes"],
                              input_boxes_labels=batch["input_boxes_labels"])
    layers, q = 1, 10
    assert out["pred_logits"].shape == (layers, 3, q) and out["pred_boxes"].shape == (layers, 3, q, 4)
    assert out["presence_logits"].shape == (layers, 3) and out["semantic_seg"].shape == (3, 32, 32)
    assert torch.allclose(out["pred_logits"][-1], plain.pred_logits, atol=1e-5)
    assert torch.allclose(out["presence_logits"][-1], plain.presence_logits[:, 0], atol=1e-5)
    assert torch.allclose(box_convert(out["pred_boxes"][-1], "cxcywh", "xyxy"), plain.pred_boxes, atol=1e-5)
    assert torch.allclose(out["pred_masks"], plain.pred_masks, atol=1e-4)


def test_activation_checkpointing_gives_the_same_gradients(tiny_detector):
    import copy

    from medsam3.train.losses import RowTarget, SetCriterion
    from medsam3.train.model import DetectorForTraining, enable_activation_checkpointing

    batch = _batch(tiny_detector)
    mask = torch.zeros(112, 112, dtype=torch.bool)
    mask[30:60, 40:80] = True
    targets = [RowTarget(torch.tensor([[60 / 112, 45 / 112, 40 / 112, 30 / 112]]), mask[None], mask, True),
               RowTarget(torch.zeros(0, 4), torch.zeros(0, 112, 112, dtype=torch.bool),
                         torch.zeros(112, 112, dtype=torch.bool), False),
               RowTarget(torch.tensor([[60 / 112, 45 / 112, 40 / 112, 30 / 112]]), mask[None], mask, True)]
    grads = []
    for checkpointing in (False, True):
        detector = copy.deepcopy(tiny_detector).eval()  # eval: no dropout, comparable
        if checkpointing:
            assert enable_activation_checkpointing(detector) == 3  # 2 ViT + 1 text block
        model = DetectorForTraining(detector)
        model.train()
        for m in model.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        SetCriterion()(model(**batch), targets).total.backward()
        grads.append({n: p.grad.clone() for n, p in detector.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 200
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name


def test_lora_adapters_and_merged_weights(tiny_detector):
    import copy

    from medsam3.train.lora import apply_lora, merge_lora_state, merged_state_dict

    detector = copy.deepcopy(tiny_detector)
    plain_keys = set(detector.state_dict())
    n = apply_lora(detector, r=4, alpha=8, target_modules=["q_proj", "v_proj"], train_modules=["mask_decoder"])
    assert n > 10
    trainable = [k for k, p in detector.named_parameters() if p.requires_grad]
    assert all(".lora_" in k or k.startswith("mask_decoder.") for k in trainable)
    with torch.no_grad():
        for k, p in detector.named_parameters():
            if ".lora_B." in k:
                p.normal_()  # B starts at zero; make the adapters do something
    merged = merge_lora_state(detector.state_dict(), 8 / 4)
    assert set(merged) == plain_keys
    reference = merged_state_dict(detector)  # through peft's own get_delta_weight
    for k in plain_keys:
        assert torch.allclose(merged[k], reference[k], atol=1e-5), k
    q = "detr_decoder.layers.0.self_attn.q_proj"
    assert not torch.allclose(merged[f"{q}.weight"], tiny_detector.state_dict()[f"{q}.weight"])
    # the merged plain model computes what the adapted one computes
    plain = copy.deepcopy(tiny_detector).eval()
    plain.load_state_dict(merged)
    from medsam3.train.model import DetectorForTraining

    batch = _batch(tiny_detector)
    with torch.no_grad():
        a = DetectorForTraining(detector).eval()(**batch)
        b = DetectorForTraining(plain).eval()(**batch)
    assert torch.allclose(a["pred_logits"], b["pred_logits"], atol=1e-4)
    assert torch.allclose(a["pred_masks"], b["pred_masks"], atol=1e-3)
    with pytest.raises(ArgumentError, match="no_such_layer"):
        apply_lora(copy.deepcopy(tiny_detector), target_modules=["no_such_layer"])
