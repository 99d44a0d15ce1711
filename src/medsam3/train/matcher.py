"""Assigning SAM3's object queries to ground-truth instances.

For one prompt the detector proposes ``Q`` queries, each with a class logit and a box;
the ground truth is ``N`` instance boxes of the prompted class (``N = 0`` when it is
absent). :func:`hungarian_match` pairs each instance with exactly one query (DETR's
one-to-one matching, minimum total cost); :func:`one_to_many_match` pairs each instance
with its ``k`` cheapest queries and :func:`quality_one_to_many_match` with the queries of
highest score-and-IoU quality (SAM3's own one-to-many rule): auxiliary, denser signals.

The cost of pairing query ``i`` with instance ``j`` (SAM3's matcher, weights from the
paper: class 2, L1 5, GIoU 2)::

    C[i, j] = w_class * (focal_pos(p_i) - focal_neg(p_i))
            + w_l1    * |b_i - g_j|_1                 (cx, cy, w, h, normalised)
            - w_giou  * GIoU(b_i, g_j)

with ``p_i = sigmoid(logit_i)``, ``focal_pos(p) = alpha (1 - p)^gamma (-log p)`` and
``focal_neg(p) = (1 - alpha) p^gamma (-log(1 - p))`` (Deformable-DETR's focal class cost).
Boxes are ``cx, cy, w, h`` normalised by the model input size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torchvision.ops import box_convert, box_iou, generalized_box_iou


@dataclass(frozen=True)
class MatchCosts:
    """Weights of the matching cost terms (paper: class 2, L1 5, GIoU 2; focal 0.25 / 2)."""

    class_weight: float = 2.0
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


def cxcywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "cxcywh", "xyxy")


def xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return box_convert(boxes, "xyxy", "cxcywh")


def match_cost(logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor,
               costs: MatchCosts = MatchCosts()) -> torch.Tensor:
    """The ``(Q, N)`` pairing cost of ``Q`` queries and ``N`` instances.

    Args:
        logits: ``(Q,)`` class logits.
        boxes: ``(Q, 4)`` predicted boxes, ``cx, cy, w, h`` normalised.
        gt_boxes: ``(N, 4)`` instance boxes, same format.
    """
    logits = logits.detach().float()
    boxes = boxes.detach().float()
    gt_boxes = gt_boxes.detach().float().to(boxes.device)
    p = logits.sigmoid()
    a, g = costs.focal_alpha, costs.focal_gamma
    pos = a * (1 - p) ** g * -torch.nn.functional.logsigmoid(logits)
    neg = (1 - a) * p ** g * -torch.nn.functional.logsigmoid(-logits)
    cost_class = (pos - neg)[:, None]
    cost_l1 = torch.cdist(boxes, gt_boxes, p=1)
    giou = generalized_box_iou(cxcywh_to_xyxy(boxes), cxcywh_to_xyxy(gt_boxes))
    return costs.class_weight * cost_class + costs.l1_weight * cost_l1 - costs.giou_weight * giou


def _empty() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)


def hungarian_match(logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor,
                    costs: MatchCosts = MatchCosts()) -> tuple[torch.Tensor, torch.Tensor]:
    """One-to-one assignment of queries to instances (minimum total :func:`match_cost`).

    Returns ``(query_index, instance_index)``, two ``(min(Q, N),)`` long tensors on the CPU,
    sorted by instance. With more instances than queries, only ``Q`` instances are matched.
    """
    if gt_boxes.shape[0] == 0 or logits.shape[0] == 0:
        return _empty()
    cost = match_cost(logits, boxes, gt_boxes, costs).cpu().numpy()
    cost = np.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)  # a NaN prediction must not break scipy
    q, n = linear_sum_assignment(cost)
    order = np.argsort(n, kind="stable")
    return torch.as_tensor(q[order], dtype=torch.long), torch.as_tensor(n[order], dtype=torch.long)


def one_to_many_match(logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor,
                      costs: MatchCosts = MatchCosts(), topk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Each instance paired with its ``topk`` cheapest queries (a query may serve several
    instances). Returns ``(query_index, instance_index)`` of length ``N * min(topk, Q)``,
    grouped by instance, cheapest first."""
    if gt_boxes.shape[0] == 0 or logits.shape[0] == 0 or topk <= 0:
        return _empty()
    cost = match_cost(logits, boxes, gt_boxes, costs).cpu()
    cost = torch.nan_to_num(cost, nan=1e6, posinf=1e6, neginf=-1e6)
    k = min(topk, cost.shape[0])
    q = cost.topk(k, dim=0, largest=False).indices  # (k, N)
    n = torch.arange(cost.shape[1]).expand(k, -1)
    return q.t().reshape(-1).long(), n.t().reshape(-1).long()


def quality_one_to_many_match(logits: torch.Tensor, boxes: torch.Tensor, gt_boxes: torch.Tensor,
                              alpha: float = 0.3, threshold: float = 0.4,
                              topk: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM3's one-to-many assignment (DAC-DETR style, Meta's ``BinaryOneToManyMatcher``).

    The quality of query ``i`` for instance ``j`` is ``alpha * sigmoid(logit_i) + (1 - alpha)
    * IoU(b_i, g_j)``; a pair is kept when its quality is above ``threshold`` and strictly above
    the ``1 - topk / Q`` quantile (linear interpolation) of that instance's column, so about
    ``topk`` queries per instance. A query may serve several instances.

    Returns ``(query_index, instance_index)`` long tensors on the CPU, ordered by query, then
    instance.
    """
    if gt_boxes.shape[0] == 0 or logits.shape[0] == 0 or topk <= 0:
        return _empty()
    p = logits.detach().float().sigmoid()
    iou = box_iou(cxcywh_to_xyxy(boxes.detach().float()), cxcywh_to_xyxy(gt_boxes.detach().float().to(boxes.device)))
    quality = alpha * p[:, None] + (1 - alpha) * iou
    cut = torch.quantile(quality, 1 - topk / quality.shape[0], dim=0, keepdim=True)
    q, n = torch.nonzero((quality > cut) & (quality > threshold), as_tuple=True)
    return q.cpu().long(), n.cpu().long()
