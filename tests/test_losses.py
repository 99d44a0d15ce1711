"""The matcher and SAM3's losses on hand-made cases with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from medsam3.train.losses import (
    LossWeights,
    RowTarget,
    SetCriterion,
    dice_loss,
    masked_mean,
    sigmoid_focal,
)
from medsam3.train.matcher import (
    hungarian_match,
    match_cost,
    one_to_many_match,
)

BIG = 30.0


def box(cx, cy, w, h):
    return [cx, cy, w, h]


# ---------------------------------------------------------------------------- matcher
def test_match_cost_of_one_pair_by_hand():
    # p = 0.5: focal_pos = 0.25 * 0.25 * ln 2, focal_neg = 0.75 * 0.25 * ln 2
    # L1 = 0.1 (cx); boxes [.4,.4,.6,.6] vs [.5,.4,.7,.6]: IoU 1/3, enclosing area = union -> GIoU 1/3
    cost = match_cost(torch.tensor([0.0]), torch.tensor([box(.5, .5, .2, .2)]), torch.tensor([box(.6, .5, .2, .2)]))
    expected = 2 * (0.25 - 0.75) * 0.25 * math.log(2) + 5 * 0.1 - 2 * (1 / 3)
    assert cost.shape == (1, 1) and cost.item() == pytest.approx(expected, abs=1e-6)


def test_hungarian_pairs_each_instance_with_its_own_query():
    boxes = torch.tensor([box(.7, .7, .2, .2), box(.1, .1, .05, .05), box(.3, .3, .2, .2)])
    gt = torch.tensor([box(.3, .3, .2, .2), box(.7, .7, .2, .2)])
    q, n = hungarian_match(torch.zeros(3), boxes, gt)
    assert q.tolist() == [2, 0] and n.tolist() == [0, 1]
    # the class cost breaks a tie between two identical boxes: the confident query wins
    q, _ = hungarian_match(torch.tensor([-3.0, 3.0]), torch.tensor([box(.3, .3, .2, .2)] * 2), gt[:1])
    assert q.tolist() == [1]


def test_hungarian_with_more_instances_than_queries_and_none():
    gt = torch.tensor([box(.2, .2, .1, .1), box(.5, .5, .1, .1), box(.8, .8, .1, .1)])
    q, n = hungarian_match(torch.zeros(2), torch.tensor([box(.8, .8, .1, .1), box(.2, .2, .1, .1)]), gt)
    assert sorted(zip(n.tolist(), q.tolist())) == [(0, 1), (2, 0)]
    q, n = hungarian_match(torch.zeros(2), torch.rand(2, 4), torch.zeros(0, 4))
    assert q.numel() == 0 and n.numel() == 0
    # a NaN prediction does not crash the assignment
    q, n = hungarian_match(torch.tensor([float("nan"), 0.0]), torch.tensor([box(.2, .2, .1, .1)] * 2), gt[:1])
    assert len(q) == 1


def test_one_to_many_takes_the_k_cheapest_queries_per_instance():
    boxes = torch.tensor([box(.2, .2, .1, .1), box(.21, .2, .1, .1), box(.8, .8, .1, .1), box(.5, .5, .3, .3)])
    gt = torch.tensor([box(.2, .2, .1, .1), box(.8, .8, .1, .1)])
    q, n = one_to_many_match(torch.zeros(4), boxes, gt, topk=2)
    assert n.tolist() == [0, 0, 1, 1]
    assert q[:2].tolist() == [0, 1] and q[2].item() == 2
    q, n = one_to_many_match(torch.zeros(4), boxes, gt, topk=9)  # capped at Q
    assert len(q) == 8


# ---------------------------------------------------------------------------- elementwise
def test_focal_and_dice_by_hand():
    # logit 0, target 1: CE ln 2, (1 - p_t)^2 = 1/4, alpha 1/4
    assert sigmoid_focal(torch.tensor(0.0), torch.tensor(1.0), 0.25, 2.0).item() == pytest.approx(
        0.25 * 0.25 * math.log(2))
    assert sigmoid_focal(torch.tensor(0.0), torch.tensor(0.0), 0.25, 2.0).item() == pytest.approx(
        0.75 * 0.25 * math.log(2))
    # p = 0.5 on 4 pixels, target on 2: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4
    target = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    assert dice_loss(torch.zeros(2, 2), target).item() == pytest.approx(0.4)
    assert dice_loss(torch.full((2, 2), -BIG) + 2 * BIG * target, target).item() == pytest.approx(0.0, abs=1e-6)
    valid = torch.tensor([[True, False], [True, True]])
    assert masked_mean(torch.tensor([[1.0, 100.0], [2.0, 3.0]]), valid).item() == pytest.approx(2.0)


# ---------------------------------------------------------------------------- the criterion
S, Q = 16, 3


def square_mask(y0, y1, x0, x1):
    m = torch.zeros(S, S, dtype=torch.bool)
    m[y0:y1, x0:x1] = True
    return m


def outputs(logits, boxes, presence, masks=None, semantic=None, layers=1):
    """Criterion inputs for one row; ``masks`` (Q, S, S) probabilities in {0, 1} -> logits."""
    logits = torch.tensor(logits, dtype=torch.float32)[None]
    boxes = torch.tensor(boxes, dtype=torch.float32)[None]
    out = {"pred_logits": logits.expand(layers, -1, -1).clone(), "pred_boxes": boxes.expand(layers, -1, -1, -1).clone(),
           "presence_logits": torch.full((layers, 1), float(presence))}
    if masks is not None:
        out["pred_masks"] = (masks.float() * 2 - 1)[None] * BIG
    if semantic is not None:
        out["semantic_seg"] = (semantic.float() * 2 - 1)[None] * BIG
    return out


def only(**weights):
    """Weights with every term off except those given (to check one term at a time)."""
    zero = {k: 0.0 for k in ("class_weight", "presence_weight", "l1_weight", "giou_weight", "mask_focal_weight",
                             "mask_dice_weight", "semantic_focal_weight", "semantic_dice_weight",
                             "semantic_presence_weight", "o2m_weight", "aux_weight")}
    zero.update(weights)
    return LossWeights(**zero)


def test_classification_and_presence_by_hand():
    gt = RowTarget(torch.tensor([box(.5, .5, .2, .2)]), square_mask(6, 10, 6, 10)[None], square_mask(6, 10, 6, 10),
                   True)
    out = outputs([2.0, -1.0, 0.0], [box(.5, .5, .2, .2), box(.1, .1, .1, .1), box(.9, .9, .1, .1)], presence=1.0)
    terms = SetCriterion(only(class_weight=1.0, presence_weight=1.0))(out, [gt]).terms

    def neg(x):  # (1 - alpha) p^2 (-log(1 - p))
        p = 1 / (1 + math.exp(-x))
        return 0.75 * p ** 2 * -math.log(1 - p)

    p0 = 1 / (1 + math.exp(-2.0))
    pos = 10 * 0.25 * (1 - p0) ** 2 * -math.log(p0)  # query 0 is matched: pos_weight 10
    assert terms["class"].item() == pytest.approx((pos + neg(-1.0) + neg(0.0)) / 3, rel=1e-5)
    assert terms["presence"].item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))), rel=1e-5)


def test_absent_prompt_trains_presence_and_every_query_toward_absent():
    absent = RowTarget(torch.zeros(0, 4), torch.zeros(0, S, S, dtype=torch.bool), torch.zeros(S, S, dtype=torch.bool),
                       False)
    boxes = [box(.5, .5, .2, .2)] * Q
    crit = SetCriterion(only(class_weight=1.0, presence_weight=1.0))
    confident = crit(outputs([3.0] * Q, boxes, presence=3.0), [absent]).terms
    quiet = crit(outputs([-8.0] * Q, boxes, presence=-8.0), [absent]).terms
    p = 1 / (1 + math.exp(-3.0))
    assert confident["class"].item() == pytest.approx(0.75 * p ** 2 * -math.log(1 - p), rel=1e-5)
    assert confident["presence"].item() == pytest.approx(-math.log(1 - p), rel=1e-5)
    assert quiet["class"].item() < 1e-6 and quiet["presence"].item() < 1e-3
    off = SetCriterion(only(class_weight=1.0, classify_absent=False))(outputs([3.0] * Q, boxes, 3.0), [absent])
    assert off.terms["class"].item() == 0.0


def test_box_terms_are_normalised_by_the_instance_count():
    gt = RowTarget(torch.tensor([box(.3, .3, .2, .2), box(.7, .7, .2, .2)]), torch.zeros(2, S, S, dtype=torch.bool),
                   torch.zeros(S, S, dtype=torch.bool), True)
    out = outputs([0.0] * Q, [box(.3, .3, .2, .2), box(.8, .7, .2, .2), box(.05, .9, .05, .05)], presence=0.0)
    terms = SetCriterion(only(l1_weight=5.0, giou_weight=2.0))(out, [gt]).terms
    # one exact box, one shifted by 0.1 in x: L1 0.1, GIoU 1/3 (see the matcher test); 2 instances
    assert terms["l1"].item() == pytest.approx(5 * 0.1 / 2, rel=1e-5)
    assert terms["giou"].item() == pytest.approx(2 * (1 - 1 / 3) / 2, rel=1e-5)
    doubled = SetCriterion(only(l1_weight=5.0))(out, [gt], num_boxes=4.0).terms
    assert doubled["l1"].item() == pytest.approx(5 * 0.1 / 4, rel=1e-5)


def test_mask_terms_on_matched_queries_only():
    inst = square_mask(2, 8, 2, 8)
    gt = RowTarget(torch.tensor([box(5 / S, 5 / S, 6 / S, 6 / S)]), inst[None], inst, True)
    boxes = [box(5 / S, 5 / S, 6 / S, 6 / S), box(.8, .8, .1, .1), box(.2, .8, .1, .1)]
    perfect = torch.stack([inst, ~inst, ~inst])  # unmatched queries are wrong: they must not count
    crit = SetCriterion(only(mask_focal_weight=200.0, mask_dice_weight=10.0))
    good = crit(outputs([0.0] * Q, boxes, 0.0, masks=perfect), [gt]).terms
    assert good["mask_focal"].item() < 1e-6 and good["mask_dice"].item() < 1e-6
    wrong = torch.stack([~inst, inst, inst])
    bad = crit(outputs([0.0] * Q, boxes, 0.0, masks=wrong), [gt]).terms
    # every pixel wrong with |logit| 30: dice = 1 - 1 / (S*S - 36 + 36 + 1), focal = alpha_t * 30 per pixel
    assert bad["mask_dice"].item() == pytest.approx(10 * (1 - 1 / (S * S + 1)), rel=1e-4)
    expected_focal = (36 * 0.25 * BIG + (S * S - 36) * 0.75 * BIG) / (S * S)
    assert bad["mask_focal"].item() == pytest.approx(200 * expected_focal, rel=1e-4)


def test_low_resolution_masks_are_upsampled_and_loss_mask_excludes_pixels():
    inst = square_mask(0, 8, 0, 8)
    valid = square_mask(0, 16, 0, 12)  # the right 4 columns are padding
    gt = RowTarget(torch.tensor([box(.25, .25, .5, .5)]), inst[None], inst, True, valid)
    small = inst[::4, ::4]  # the prediction at 4x lower resolution
    out = outputs([0.0] * Q, [box(.25, .25, .5, .5)] * Q, 0.0,
                  masks=torch.stack([small] * Q), semantic=small)
    crit = SetCriterion(only(mask_dice_weight=1.0, semantic_focal_weight=1.0, semantic_dice_weight=1.0))
    base = crit(out, [gt]).terms
    assert base["mask_dice"].item() < 0.05 and base["semantic_dice"].item() < 0.05
    out["semantic_seg"][0, :, 3] = BIG  # wrong only where there is no ground truth
    assert crit(out, [gt]).terms["semantic_focal"].item() == pytest.approx(base["semantic_focal"].item(), rel=1e-4)
    resized = SetCriterion(only(mask_dice_weight=1.0, mask_loss_size=8))(out, [gt]).terms
    assert resized["mask_dice"].item() < 0.05


def test_semantic_terms_and_absent_rows():
    sem = square_mask(4, 12, 4, 12)
    empty = torch.zeros(S, S, dtype=torch.bool)
    present = RowTarget(torch.tensor([box(.5, .5, .5, .5)]), sem[None], sem, True)
    absent = RowTarget(torch.zeros(0, 4), torch.zeros(0, S, S, dtype=torch.bool), empty, False)
    crit = SetCriterion(only(semantic_focal_weight=20.0, semantic_dice_weight=30.0, semantic_presence_weight=1.0))
    out = outputs([0.0] * Q, [box(.5, .5, .5, .5)] * Q, 3.0, semantic=sem)
    two = {k: torch.cat([v, v], dim=1 if k in ("pred_logits", "pred_boxes", "presence_logits") else 0)
           for k, v in out.items()}
    two["semantic_seg"][1] = -BIG  # the absent row predicts nothing: right
    two["presence_logits"][:, 1] = -3.0
    terms = crit(two, [present, absent]).terms
    assert terms["semantic_focal"].item() < 1e-6 and terms["semantic_dice"].item() < 1e-6
    assert terms["semantic_presence"].item() == pytest.approx(-math.log(1 / (1 + math.exp(-3))), rel=1e-5)
    two["semantic_seg"][1] = BIG  # an absent class painted everywhere: focal on every pixel
    assert crit(two, [present, absent]).terms["semantic_focal"].item() == pytest.approx(
        20 * 0.4 * BIG / 2, rel=1e-4)  # alpha 0.6 -> (1 - alpha) on negatives; mean of two rows


def test_auxiliary_layers_and_one_to_many_terms():
    gt = RowTarget(torch.tensor([box(.5, .5, .2, .2)]), square_mask(6, 10, 6, 10)[None], square_mask(6, 10, 6, 10),
                   True)
    out = outputs([0.0] * Q, [box(.5, .5, .2, .2), box(.52, .5, .2, .2), box(.9, .9, .1, .1)], 0.0, layers=3)
    terms = SetCriterion(LossWeights(mask_focal_weight=0, mask_dice_weight=0, o2m_topk=2))(out, [gt]).terms
    for name in ("class_aux0", "class_aux1", "presence_aux0", "l1_aux1", "giou_aux0"):
        assert name in terms
    assert terms["class_aux0"].item() == pytest.approx(terms["class"].item())  # same predictions in every layer
    # one-to-many: the exact query and the 0.02-shifted one; L1 mean over the 2 pairs
    assert terms["o2m_l1"].item() == pytest.approx(2.0 * 5.0 * 0.02 / 2, rel=1e-4)
    no_aux = SetCriterion(LossWeights(aux_weight=0, o2m_weight=0))(out, [gt]).terms
    assert not any("aux" in k or "o2m" in k for k in no_aux)


def test_iou_aware_targets_and_total():
    gt = RowTarget(torch.tensor([box(.5, .5, .2, .2)]), square_mask(6, 10, 6, 10)[None], square_mask(6, 10, 6, 10),
                   True)
    out = outputs([1.0, -1.0, -1.0], [box(.5, .5, .2, .2), box(.1, .1, .1, .1), box(.9, .9, .1, .1)], 1.0)
    res = SetCriterion(only(class_weight=1.0, iou_aware_targets=True))(out, [gt])
    p = 1 / (1 + math.exp(-1.0))
    t = p ** 0.25 * 1.0 ** 0.75  # IoU 1
    bce = -(t * math.log(p) + (1 - t) * math.log(1 - p))
    q = 1 / (1 + math.exp(1.0))
    neg = q ** 2 * -math.log(1 - q)
    assert res.terms["class"].item() == pytest.approx((10 * bce + 2 * neg) / 3, rel=1e-5)
    assert res.total.item() == pytest.approx(sum(v.item() for v in res.terms.values()), rel=1e-6)


def test_gradients_reach_every_output():
    gt = RowTarget(torch.tensor([box(.5, .5, .2, .2)]), square_mask(6, 10, 6, 10)[None], square_mask(6, 10, 6, 10),
                   True)
    out = {"pred_logits": torch.zeros(2, 1, Q, requires_grad=True),
           "pred_boxes": torch.full((2, 1, Q, 4), 0.3, requires_grad=True),
           "presence_logits": torch.zeros(2, 1, requires_grad=True),
           "pred_masks": torch.zeros(1, Q, 4, 4, requires_grad=True),
           "semantic_seg": torch.zeros(1, 4, 4, requires_grad=True)}
    SetCriterion()(out, [gt]).total.backward()
    for name, tensor in out.items():
        assert tensor.grad is not None and tensor.grad.abs().sum() > 0, name


# ---------------------------------------------------------------------------- Meta's configuration
def sig(x):
    return 1 / (1 + math.exp(-x))


def bce(x, t):
    return -(t * math.log(sig(x)) + (1 - t) * math.log(1 - sig(x)))


ABSENT = RowTarget(torch.zeros(0, 4), torch.zeros(0, S, S, dtype=torch.bool), torch.zeros(S, S, dtype=torch.bool),
                   False)


def meta_only(**weights):
    """Meta's configuration with every term off except those given."""
    zero = {k: 0.0 for k in ("class_weight", "presence_weight", "l1_weight", "giou_weight", "mask_focal_weight",
                             "mask_dice_weight", "semantic_focal_weight", "semantic_dice_weight", "o2m_weight",
                             "aux_weight")}
    zero.update(weights)
    return LossWeights.meta_sam3(**zero)


def stack_rows(*outs):
    """Concatenate one-row criterion inputs into one batch of rows."""
    return {k: torch.cat([o[k] for o in outs], dim=0 if k in ("pred_masks", "semantic_seg", "pred_masks_o2m") else 1)
            for k in outs[0]}


def test_joint_logits_by_hand():
    from medsam3.train.losses import joint_logits

    # p = 0.5 * 0.5 = 0.25 -> logit ln(1/3); saturated products stop at eps = 1e-3
    got = joint_logits(torch.tensor([[0.0, 20.0, -20.0]]), torch.tensor([0.0]))
    assert got[0, 0].item() == pytest.approx(math.log(1 / 3), rel=1e-6)
    assert got[0, 2].item() == pytest.approx(math.log(1e-3), rel=1e-5)  # ln(eps / (1 - 0))
    both = joint_logits(torch.tensor([[20.0]]), torch.tensor([20.0]))
    assert both.item() == pytest.approx(-math.log(1e-3), rel=1e-5)  # ln(1 / eps)


def test_meta_classification_zeroes_absent_rows_and_pads_queries():
    gt = RowTarget(torch.tensor([box(.5, .5, .2, .2)]), square_mask(6, 10, 6, 10)[None], square_mask(6, 10, 6, 10),
                   True)
    boxes = [box(.5, .5, .2, .2), box(.1, .1, .1, .1), box(.9, .9, .1, .1)]
    out = stack_rows(outputs([1.0, -1.0, 0.5], boxes, 0.0), outputs([2.0, 2.0, 2.0], boxes, 0.0))
    w = meta_only(class_weight=1.0, joint_scores=False, class_pad_queries=4)
    got = SetCriterion(w)(out, [gt, ABSENT]).terms["class"].item()
    t = sig(1.0) ** 0.25 * 1.0 ** 0.75  # IoU-aware target of the matched query (IoU 1)
    present_row = 10 * bce(1.0, t) + bce(-1.0, 0) * sig(-1.0) ** 2 + bce(0.5, 0) * sig(0.5) ** 2
    assert got == pytest.approx(present_row / (2 * 4), rel=1e-5)  # absent row: zero, still counted; 4 slots a row
    # joint scores: the same loss computed on logit(sigmoid(class) sigmoid(presence))
    presence = 1.5
    out_p = stack_rows(outputs([1.0, -1.0, 0.5], boxes, presence), outputs([2.0] * 3, boxes, presence))
    joint = SetCriterion(meta_only(class_weight=1.0, class_pad_queries=4))(out_p, [gt, ABSENT]).terms["class"].item()
    xs = [math.log(sig(x) * sig(presence) / (1 - sig(x) * sig(presence))) for x in (1.0, -1.0, 0.5)]
    t = sig(xs[0]) ** 0.25
    expected = 10 * bce(xs[0], t) + sum(bce(x, 0) * sig(x) ** 2 for x in xs[1:])
    assert joint == pytest.approx(expected / 8, rel=1e-5)


def test_meta_presence_is_half_the_bce_on_every_layer():
    out = stack_rows(outputs([0.0] * Q, [box(.5, .5, .2, .2)] * Q, 1.0, layers=2),
                     outputs([0.0] * Q, [box(.5, .5, .2, .2)] * Q, 2.0, layers=2))
    gt = RowTarget(torch.tensor([box(.5, .5, .2, .2)]), square_mask(6, 10, 6, 10)[None], square_mask(6, 10, 6, 10),
                   True)
    terms = SetCriterion(meta_only(presence_weight=20.0, aux_weight=1.0))(out, [gt, ABSENT]).terms
    expected = 20 * 0.5 * (bce(1.0, 1) + bce(2.0, 0)) / 2
    assert terms["presence"].item() == pytest.approx(expected, rel=1e-5)
    assert terms["presence_aux0"].item() == pytest.approx(expected, rel=1e-5)


def test_quality_one_to_many_by_hand():
    from medsam3.train.matcher import quality_one_to_many_match

    # p = 0.5 everywhere: quality = 0.15 + 0.7 IoU = [0.85, 0.3833, 0.15, 0.85, 0.15]
    boxes = torch.tensor([box(.5, .5, .2, .2), box(.6, .5, .2, .2), box(.1, .1, .05, .05), box(.5, .5, .2, .2),
                          box(.9, .9, .05, .05)])
    gt = torch.tensor([box(.5, .5, .2, .2)])
    # top 2 of 5: the 0.6-quantile is 0.3833 + 0.4 (0.85 - 0.3833) = 0.57
    q, n = quality_one_to_many_match(torch.zeros(5), boxes, gt, alpha=0.3, threshold=0.4, topk=2)
    assert q.tolist() == [0, 3] and n.tolist() == [0, 0]
    # top 3: the 0.4-quantile is 0.15 + 0.6 (0.3833 - 0.15) = 0.29; threshold 0.3 keeps query 1 too
    q, _ = quality_one_to_many_match(torch.zeros(5), boxes, gt, alpha=0.3, threshold=0.3, topk=3)
    assert q.tolist() == [0, 1, 3]
    q, _ = quality_one_to_many_match(torch.zeros(5), boxes, gt, alpha=0.3, threshold=0.4, topk=3)
    assert q.tolist() == [0, 3]  # 0.3833 is under the threshold
    assert quality_one_to_many_match(torch.zeros(5), boxes, torch.zeros(0, 4))[0].numel() == 0


def test_one_to_many_query_group_is_normalised_by_the_instance_count():
    gt = RowTarget(torch.tensor([box(.5, .5, .2, .2)]), square_mask(6, 10, 6, 10)[None], square_mask(6, 10, 6, 10),
                   True)
    boxes = [box(.5, .5, .2, .2), box(.9, .9, .1, .1), box(.1, .9, .1, .1)]
    out = outputs([0.0] * Q, boxes, 0.0, layers=2)
    o2m_boxes = [box(.5, .5, .2, .2), box(.52, .5, .2, .2), box(.1, .1, .05, .05)]
    out["pred_logits_o2m"] = torch.zeros(2, 1, Q)
    out["pred_boxes_o2m"] = torch.tensor(o2m_boxes)[None, None].expand(2, 1, -1, -1).clone()
    w = meta_only(l1_weight=5.0, o2m_weight=2.0, aux_weight=1.0, o2m_topk=2, joint_scores=False)
    terms = SetCriterion(w)(out, [gt]).terms
    # last layer, quality rule: queries 0 and 1 (quality 0.85 and 0.72 > the 1/3-quantile 0.53); L1 0.02 / 1 box
    assert terms["o2m_l1"].item() == pytest.approx(2 * 5 * 0.02, rel=1e-4)
    # earlier layer: one-to-one on the o2m queries -> the exact box, L1 0
    assert terms["o2m_l1_aux0"].item() == pytest.approx(0.0, abs=1e-7)
    assert terms["l1"].item() == pytest.approx(0.0, abs=1e-7)
    # without the query group the o2m terms fall on the one-to-one queries (last layer only)
    del out["pred_logits_o2m"], out["pred_boxes_o2m"]
    fallback = SetCriterion(w)(out, [gt]).terms
    assert "o2m_l1" in fallback and "o2m_l1_aux0" not in fallback and "o2m_class" not in fallback


def test_meta_semantic_terms_skip_empty_rows_and_total_scales_with_rows():
    sem = square_mask(4, 12, 4, 12)
    present = RowTarget(torch.tensor([box(.5, .5, .5, .5)]), sem[None], sem, True)
    out = stack_rows(outputs([0.0] * Q, [box(.5, .5, .5, .5)] * Q, 3.0, semantic=sem),
                     outputs([0.0] * Q, [box(.5, .5, .5, .5)] * Q, -3.0, semantic=torch.ones(S, S, dtype=torch.bool)))
    w = meta_only(semantic_focal_weight=20.0, semantic_dice_weight=30.0)
    res = SetCriterion(w)(out, [present, ABSENT])
    # the absent row paints everything (wrong) but only the present, perfect row counts
    assert res.terms["semantic_focal"].item() < 1e-6 and res.terms["semantic_dice"].item() < 1e-6
    assert "semantic_presence" not in res.terms  # Meta's decoder presence term does this
    legacy = SetCriterion(only(semantic_focal_weight=20.0))(out, [present, ABSENT]).terms["semantic_focal"]
    assert legacy.item() == pytest.approx(20 * 0.4 * BIG / 2, rel=1e-4)
    out["semantic_seg"][0] = -BIG  # the present row misses its mask: dice (1 - 1/(64+1)) / (1 + 1e-6)
    res = SetCriterion(w)(out, [present, ABSENT])
    assert res.terms["semantic_dice"].item() == pytest.approx(30 * (1 - 1 / 65) / (1 + 1e-6), rel=1e-5)
    assert res.total.item() == pytest.approx(math.sqrt(2) * sum(v.item() for v in res.terms.values()), rel=1e-6)


def test_meta_configuration_is_the_paper_config():
    from pathlib import Path

    from medsam3.train.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "train-paper-gpu.yaml")
    assert cfg.loss == LossWeights.meta_sam3()
    with pytest.raises(ValueError, match="o2m_rule"):
        SetCriterion(LossWeights(o2m_rule="nearest"))
    from medsam3.errors import ArgumentError
    from medsam3.train.config import config_from_dict

    with pytest.raises(ArgumentError, match="loss.o2m_rule 'nearest' is not one of quality, topk_cost"):
        config_from_dict({"model": "random:tiny", "output_dir": "out", "data": {"manifest": "m.jsonl"},
                          "loss": {"o2m_rule": "nearest"}})
