"""SAM3's one-to-many (DAC) training queries on transformers' decoder (medsam3.train.dac)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from test_train_optim import _batch


@pytest.fixture(scope="module")
def detector():
    from transformers import Sam3Model

    from medsam3.model.configs import build_config

    torch.manual_seed(0)
    model = Sam3Model(build_config("tiny", image_size=112))
    for module in model.modules():  # deterministic training-mode forwards
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    return model


def _forward(detector, one_to_many, training=True):
    from medsam3.train.model import DetectorForTraining

    model = DetectorForTraining(detector, one_to_many=one_to_many).train(training)
    with torch.no_grad():
        return model(**_batch(detector))


def test_one_to_many_copies_leave_the_one_to_one_queries_unchanged(detector):
    plain = _forward(detector, one_to_many=False)
    dac = _forward(detector, one_to_many=True)
    assert not any(k.endswith("_o2m") for k in plain)
    for key in ("pred_logits", "pred_boxes", "presence_logits", "pred_masks", "semantic_seg"):
        assert dac[key].shape == plain[key].shape and torch.allclose(dac[key], plain[key], atol=1e-5), key
    layers, rows, q = plain["pred_logits"].shape
    assert dac["pred_logits_o2m"].shape == (layers, rows, q)
    assert dac["pred_boxes_o2m"].shape == (layers, rows, q, 4)
    assert dac["pred_masks_o2m"].shape == plain["pred_masks"].shape
    # the copies skip self-attention, so they answer differently ...
    assert not torch.allclose(dac["pred_logits_o2m"], dac["pred_logits"], atol=1e-4)
    # ... and exactly like the one-to-one queries once self-attention contributes nothing
    saved = {}
    for i, layer in enumerate(detector.detr_decoder.layers):
        saved[i] = (layer.self_attn.o_proj.weight.clone(), layer.self_attn.o_proj.bias.clone())
        layer.self_attn.o_proj.weight.data.zero_()
        layer.self_attn.o_proj.bias.data.zero_()
    try:
        silent = _forward(detector, one_to_many=True)
    finally:
        for i, layer in enumerate(detector.detr_decoder.layers):
            layer.self_attn.o_proj.weight.data.copy_(saved[i][0])
            layer.self_attn.o_proj.bias.data.copy_(saved[i][1])
    for key in ("pred_logits", "pred_boxes", "pred_masks"):
        assert torch.allclose(silent[key + "_o2m"], silent[key], atol=1e-5), key


def test_one_to_many_copies_only_in_training_and_losses_reach_the_queries(detector):
    from medsam3.train.losses import LossWeights, RowTarget, SetCriterion
    from medsam3.train.model import DetectorForTraining

    assert not any(k.endswith("_o2m") for k in _forward(detector, one_to_many=True, training=False))
    model = DetectorForTraining(detector, one_to_many=True).train()
    out = model(**_batch(detector))
    mask = torch.zeros(112, 112, dtype=torch.bool)
    mask[30:70, 40:80] = True
    present = RowTarget(torch.tensor([[0.535, 0.445, 0.357, 0.357]]), mask[None], mask, True)
    absent = RowTarget(torch.zeros(0, 4), torch.zeros(0, 112, 112, dtype=torch.bool),
                       torch.zeros(112, 112, dtype=torch.bool), False)
    res = SetCriterion(LossWeights.meta_sam3(o2m_threshold=0.0))(out, [present, absent, present])
    assert {"o2m_class", "o2m_l1", "o2m_giou", "o2m_mask_focal", "o2m_mask_dice"} <= set(res.terms)
    detector.zero_grad()
    sum(v for k, v in res.terms.items() if k.startswith("o2m_")).backward()
    # the one-to-many terms train the shared queries, box head and scoring
    assert detector.detr_decoder.query_embed.weight.grad.abs().sum() > 0
    assert detector.detr_decoder.box_head.layer1.weight.grad.abs().sum() > 0
    detector.zero_grad()


def test_a_run_with_metas_loss_and_one_to_many_queries(tmp_path):
    """Two steps of the paper's loss configuration on the tiny model: the one-to-many terms are
    logged, no step is skipped, validation (eval mode: no copies) runs."""
    import dataclasses

    from helpers.train import brain_manifest, tiny_config

    from medsam3.model import create_random_model
    from medsam3.train.config import config_from_dict
    from medsam3.train.loop import train
    from medsam3.train.losses import LossWeights

    model = create_random_model("tiny", tmp_path / "tiny112", seed=0, image_size=112)
    cfg = tiny_config(model, brain_manifest(tmp_path / "brain"), tmp_path / "run",
                      train={"max_steps": 2, "checkpoint_every": 0, "validate_every": 2,
                             "one_to_many_queries": True},
                      data={"val_samples": 2}, loss=dataclasses.asdict(LossWeights.meta_sam3()))
    result = train(config_from_dict(cfg))
    assert result.steps == 2 and result.skipped_steps == 0 and len(result.validation) == 1
    import csv

    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        tags = {row["tag"] for row in csv.DictReader(f)}
    assert {"loss/o2m_class", "loss/o2m_l1", "loss/o2m_mask_dice", "loss/class", "loss/presence"} <= tags
