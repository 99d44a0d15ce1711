"""The one decode rule (medsam3.predict.decode): scores, thresholds, masks, union; the predictor,
training validation and volumes answer a detector row the same way."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medsam3.predict.decode import (
    DetectorRow,
    confident_queries,
    decode_row,
    detector_row,
    mask_boxes,
    mask_components,
)
from medsam3.predict.image import ImagePredictor
from medsam3.train.validate import row_predictions


def _square(shape, rows, cols, inside=10.0, outside=-10.0):
    m = torch.full(shape, outside)
    m[rows, cols] = inside
    return m


def test_scores_are_quality_times_presence_and_both_thresholds_apply():
    quality = torch.tensor([0.9, 0.4, 0.8])
    row = DetectorRow(0.8, quality, torch.zeros(3, 2, 2))
    torch.testing.assert_close(row.scores, torch.tensor([0.72, 0.32, 0.64]))
    assert confident_queries(row.scores, 0.8, 0.5, 0.5).tolist() == [True, False, True]
    assert confident_queries(row.scores, 0.8, 0.7, 0.5).tolist() == [True, False, False]
    assert not confident_queries(row.scores, 0.8, 0.5, 0.81).any()  # presence below its threshold: none
    assert confident_queries(row.scores, 0.8, 0.5, 0.8).any()  # at the threshold: present


def test_decode_row_keeps_upsamples_and_unites_the_confident_queries():
    logits = torch.stack([_square((4, 4), slice(0, 2), slice(0, 2)), _square((4, 4), slice(2, 4), slice(2, 4)),
                          torch.full((4, 4), 10.0)])
    row = DetectorRow(0.9, torch.tensor([0.95, 0.9, 0.1]), logits)
    decoded = decode_row(row, (8, 8), 0.5, 0.5, 0.5)
    assert decoded.keep.tolist() == [0, 1] and decoded.present
    torch.testing.assert_close(decoded.scores, torch.tensor([0.95, 0.9]) * 0.9)
    assert decoded.masks.shape == (2, 8, 8)
    expected = np.zeros((8, 8), bool)
    expected[:4, :4] = expected[4:, 4:] = True  # the 2x upsampled squares; the low scorer left out
    np.testing.assert_array_equal(decoded.union((8, 8)).numpy(), expected)
    absent = decode_row(DetectorRow(0.3, row.quality, logits), (8, 8))
    assert not absent.present and absent.masks.shape == (0, 8, 8) and not absent.union((8, 8)).any()


def test_detector_row_reads_instances_or_the_semantic_head():
    out = SimpleNamespace(presence_logits=torch.tensor([[0.0], [2.0]]), pred_logits=torch.tensor([[0.0, 2.0]] * 2),
                          pred_masks=torch.zeros(2, 2, 3, 3), semantic_seg=torch.ones(2, 1, 3, 3))
    row = detector_row(out, 1)
    assert row.presence == pytest.approx(float(torch.sigmoid(torch.tensor(2.0))))
    torch.testing.assert_close(row.quality, torch.sigmoid(torch.tensor([0.0, 2.0])))
    semantic = detector_row(out, 1, semantic=True)
    assert semantic.logits.shape == (1, 3, 3) and semantic.quality.tolist() == [1.0]


def test_components_and_boxes_of_a_semantic_mask():
    mask = torch.zeros(6, 6, dtype=torch.bool)
    mask[0, 0] = True
    mask[2:5, 3:6] = True
    masks, probs, scores, idx = mask_components(mask, torch.full((6, 6), 0.7), 0.9)
    assert [int(m.sum()) for m in masks] == [9, 1]  # largest first
    assert scores.tolist() == pytest.approx([0.9, 0.9]) and idx.tolist() == [0, 1]
    assert mask_boxes(masks).tolist() == [[3, 2, 6, 5], [0, 0, 1, 1]]
    assert float(probs[0].max()) == pytest.approx(0.7)


def test_training_validation_answers_as_the_predictor_does(tiny_model):
    """Same outputs, same thresholds: the validation's instance union is the predictor's semantic
    mask (it was once a hand copy that resized probabilities instead of logits)."""
    gen = torch.Generator().manual_seed(0)
    q, h, w, size = 5, 9, 9, (40, 30)
    pred_logits = torch.randn(2, q, generator=gen) * 3
    masks = torch.randn(2, q, h, w, generator=gen) * 4
    presence = torch.tensor([[2.0], [1.5]])
    outputs = {"pred_logits": pred_logits[None], "presence_logits": presence[None], "pred_masks": masks,
               "semantic_seg": torch.randn(2, h, w, generator=gen)}
    predictor = ImagePredictor(tiny_model, score_threshold=0.3, presence_threshold=0.5, mask_threshold=0.5)
    predictor.original_size = size
    out = SimpleNamespace(presence_logits=presence, pred_logits=pred_logits, pred_masks=masks,
                          pred_boxes=torch.zeros(2, q, 4))
    rows = row_predictions(outputs, size, score_threshold=0.3, presence_threshold=0.5, mask_threshold=0.5)
    answered = 0
    for r, (union, _, _) in enumerate(rows):
        result = predictor._result_from_detector("x", out, r)
        np.testing.assert_array_equal(union.numpy(), result.semantic)
        answered += int(result.present)
    assert answered == 2
