"""SAM3's set-prediction losses for text-prompted segmentation (our own implementation).

One *row* is one (image, prompt) pair: the detector's ``Q`` queries for that prompt and the
ground truth of the prompted class in that image (``N >= 0`` instances; ``N = 0`` is a
prompt whose class is absent). Queries are assigned to instances by
:func:`medsam3.train.matcher.hungarian_match`; the terms (weights: :class:`LossWeights`,
defaults from the paper's recipe) are

classification (``class``, 20)
    per query, sigmoid focal BCE (alpha 0.25, gamma 2) toward 1 for matched queries (their
    term multiplied by ``pos_weight`` 10) and toward 0 for all others, averaged over queries
    and rows. With ``iou_aware_targets`` the matched target is SAM3's IoU-aware
    ``clamp(p^alpha * IoU^(1-alpha), 0.01)`` with plain BCE. Rows of an absent class train
    every query toward 0 (``classify_absent``).
presence (``presence``, 20)
    BCE of the presence logit toward "the class is in the image", averaged over rows.
boxes (``l1`` 5, ``giou`` 2)
    L1 of matched ``cx, cy, w, h`` boxes and ``1 - GIoU``, summed over matches and divided by
    the number of instances (``num_boxes``, all rows, all processes).
instance masks (``mask_focal`` 200, ``mask_dice`` 10)
    per matched query, sigmoid focal (0.25, 2) averaged over the pixels that carry ground
    truth (the row's ``loss_mask``) and dice, summed over matches / ``num_boxes``. Predicted
    low-resolution logits are upsampled (bilinear) to the ground truth's size, or both are
    resized to ``mask_loss_size``.
semantic mask (``semantic_focal`` 20, ``semantic_dice`` 30, ``semantic_presence`` 1)
    the semantic (union) head against the class's mask: focal (alpha 0.6, gamma 2) on every
    row (absent rows learn an empty map), dice on rows where the class is present, and BCE of
    the presence logit (the medical run's semantic criterion).
auxiliary decoder layers (``aux_weight`` 1)
    classification, presence and box terms on every earlier decoder layer with its own
    matching (SAM3 computes no auxiliary mask losses).
one-to-many (``o2m_weight`` 2, ``o2m_topk`` 4)
    box and mask terms on each instance's ``topk`` cheapest queries (last layer), averaged
    over those pairs. transformers' SAM3 has no separate one-to-many query group, so these
    queries are the same ones the one-to-one classification de-duplicates; classification
    therefore stays one-to-one.

Every term is reported unweighted-times-weight, i.e. exactly what enters the total.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou

from medsam3.train.matcher import (
    MatchCosts,
    cxcywh_to_xyxy,
    hungarian_match,
    one_to_many_match,
)


@dataclass
class LossWeights:
    """Loss weights and hyper-parameters (defaults: the paper's recipe, see the module docstring)."""

    match_class: float = 2.0
    match_l1: float = 5.0
    match_giou: float = 2.0
    class_weight: float = 20.0
    presence_weight: float = 20.0
    pos_weight: float = 10.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    iou_aware_targets: bool = False
    classify_absent: bool = True
    l1_weight: float = 5.0
    giou_weight: float = 2.0
    mask_focal_weight: float = 200.0
    mask_dice_weight: float = 10.0
    mask_focal_alpha: float = 0.25
    mask_focal_gamma: float = 2.0
    semantic_focal_weight: float = 20.0
    semantic_dice_weight: float = 30.0
    semantic_presence_weight: float = 1.0
    semantic_focal_alpha: float = 0.6
    semantic_focal_gamma: float = 2.0
    aux_weight: float = 1.0
    o2m_weight: float = 2.0
    o2m_topk: int = 4
    mask_loss_size: int | None = None

    @property
    def match_costs(self) -> MatchCosts:
        return MatchCosts(self.match_class, self.match_l1, self.match_giou, self.focal_alpha, self.focal_gamma)


@dataclass
class RowTarget:
    """The ground truth of one (image, prompt) row.

    Attributes:
        boxes: ``float (N, 4)`` instance boxes ``cx, cy, w, h`` normalised by the input size.
        masks: ``bool (N, H, W)`` instance masks.
        semantic: ``bool (H, W)`` the class's pixels.
        present: the class is in the image (``N > 0``).
        loss_mask: ``bool (H, W)`` pixels that carry ground truth (``None``: all).
    """

    boxes: torch.Tensor
    masks: torch.Tensor
    semantic: torch.Tensor
    present: bool
    loss_mask: torch.Tensor | None = None


@dataclass
class LossOutput:
    total: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    num_boxes: float = 0.0


# ---------------------------------------------------------------------------- elementwise
def sigmoid_focal(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Elementwise sigmoid focal loss (Lin et al. 2017); ``alpha < 0`` disables the balance."""
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor | None = None,
              smooth: float = 1.0) -> torch.Tensor:
    """``1 - (2 sum(p t) + s) / (sum(p) + sum(t) + s)`` per leading index over the last two
    axes, ``p = sigmoid(logits)``; ``valid`` (broadcastable) masks pixels out."""
    p = logits.sigmoid()
    if valid is not None:
        p = p * valid
        targets = targets * valid
    inter = (p * targets).flatten(-2).sum(-1)
    return 1 - (2 * inter + smooth) / (p.flatten(-2).sum(-1) + targets.flatten(-2).sum(-1) + smooth)


def masked_mean(values: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    """Mean over the last two axes, of the pixels where ``valid`` is true."""
    if valid is None:
        return values.flatten(-2).mean(-1)
    valid = valid.to(values.dtype)
    return (values * valid).flatten(-2).sum(-1) / valid.flatten(-2).sum(-1).clamp(min=1.0)


# ---------------------------------------------------------------------------- the criterion
class SetCriterion:
    """SAM3's training losses (see the module docstring).

    Call it with the training forward's outputs (see
    :class:`medsam3.train.model.DetectorForTraining`)::

        pred_logits      (L, P, Q)     class logits of every decoder layer
        pred_boxes       (L, P, Q, 4)  boxes cx, cy, w, h normalised, every layer
        presence_logits  (L, P)        presence logits, every layer
        pred_masks       (P, Q, h, w)  instance mask logits (last layer)
        semantic_seg     (P, h, w)     semantic mask logits

    and one :class:`RowTarget` per row ``P``. ``num_boxes`` normalises the box and mask terms;
    pass the mean over processes in distributed training (default: this batch's count).
    """

    def __init__(self, weights: LossWeights | None = None):
        self.w = weights or LossWeights()

    def __call__(self, outputs: dict[str, torch.Tensor], targets: list[RowTarget],
                 num_boxes: float | None = None) -> LossOutput:
        w = self.w
        logits = outputs["pred_logits"].float()
        boxes = outputs["pred_boxes"].float()
        presence = outputs["presence_logits"].float()
        if logits.dim() == 2:  # a single layer
            logits, boxes, presence = logits[None], boxes[None], presence.reshape(1, -1)
        presence = presence.reshape(presence.shape[0], -1)
        layers, rows, _ = logits.shape
        if len(targets) != rows:
            raise ValueError(f"{rows} prediction rows but {len(targets)} targets")
        device = logits.device
        gt_boxes = [t.boxes.to(device=device, dtype=torch.float32).reshape(-1, 4) for t in targets]
        present = torch.tensor([bool(t.present) for t in targets], device=device, dtype=torch.float32)
        if num_boxes is None:
            num_boxes = float(sum(len(b) for b in gt_boxes))
        norm = max(float(num_boxes), 1.0)
        terms: dict[str, torch.Tensor] = {}

        last = layers - 1
        for layer in range(layers):
            if layer != last and w.aux_weight == 0:
                continue
            scale = 1.0 if layer == last else w.aux_weight
            suffix = "" if layer == last else f"_aux{layer}"
            matches = [hungarian_match(logits[layer, r], boxes[layer, r], gt_boxes[r], w.match_costs)
                       for r in range(rows)]
            cls, l1, giou = self._class_and_boxes(logits[layer], boxes[layer], gt_boxes, matches, present, norm)
            terms["class" + suffix] = scale * w.class_weight * cls
            terms["presence" + suffix] = scale * w.presence_weight * F.binary_cross_entropy_with_logits(
                presence[layer], present)
            terms["l1" + suffix] = scale * w.l1_weight * l1
            terms["giou" + suffix] = scale * w.giou_weight * giou
            if layer == last:
                final_matches = matches

        pred_masks = outputs.get("pred_masks")
        if pred_masks is not None and (w.mask_focal_weight or w.mask_dice_weight):
            focal, dice = self._instance_masks(pred_masks.float(), targets, final_matches)
            terms["mask_focal"] = w.mask_focal_weight * focal / norm
            terms["mask_dice"] = w.mask_dice_weight * dice / norm

        if w.o2m_weight and w.o2m_topk > 0:
            o2m = [one_to_many_match(logits[last, r], boxes[last, r], gt_boxes[r], w.match_costs, w.o2m_topk)
                   for r in range(rows)]
            pairs = max(sum(len(q) for q, _ in o2m), 1)
            _, l1, giou = self._class_and_boxes(logits[last], boxes[last], gt_boxes, o2m, present, pairs,
                                                with_class=False)
            terms["o2m_l1"] = w.o2m_weight * w.l1_weight * l1
            terms["o2m_giou"] = w.o2m_weight * w.giou_weight * giou
            if pred_masks is not None and (w.mask_focal_weight or w.mask_dice_weight):
                focal, dice = self._instance_masks(pred_masks.float(), targets, o2m)
                terms["o2m_mask_focal"] = w.o2m_weight * w.mask_focal_weight * focal / pairs
                terms["o2m_mask_dice"] = w.o2m_weight * w.mask_dice_weight * dice / pairs

        semantic = outputs.get("semantic_seg")
        if semantic is not None:
            semantic = semantic.float().reshape(rows, *semantic.shape[-2:])
            focal, dice = self._semantic(semantic, targets)
            terms["semantic_focal"] = w.semantic_focal_weight * focal
            terms["semantic_dice"] = w.semantic_dice_weight * dice
            terms["semantic_presence"] = w.semantic_presence_weight * F.binary_cross_entropy_with_logits(
                presence[last], present)

        total = torch.stack(list(terms.values())).sum()
        return LossOutput(total, terms, float(num_boxes))

    # ------------------------------------------------------------------ parts
    def _class_and_boxes(self, logits, boxes, gt_boxes, matches, present, norm, with_class=True):
        """Classification (mean over queries and counted rows) and summed L1 / (1 - GIoU) / norm."""
        w = self.w
        zero = logits.sum() * 0.0  # keeps the graph (and DDP) happy when a term is empty
        cls_total, cls_rows = zero, 0
        l1_total, giou_total = zero, zero
        for r, (q, n) in enumerate(matches):
            if with_class and (bool(present[r]) or w.classify_absent):
                x = logits[r]
                target = torch.zeros_like(x)
                is_pos = torch.zeros_like(x, dtype=torch.bool)
                if len(q):
                    q_dev = q.to(x.device)
                    is_pos[q_dev] = True
                    if w.iou_aware_targets:
                        with torch.no_grad():
                            iou = box_iou(cxcywh_to_xyxy(boxes[r, q_dev]),
                                          cxcywh_to_xyxy(gt_boxes[r][n.to(x.device)])).diagonal()
                            t = (x[q_dev].sigmoid() ** w.focal_alpha * iou.clamp(min=0) ** (1 - w.focal_alpha))
                            target[q_dev] = t.clamp(min=0.01)
                    else:
                        target[q_dev] = 1.0
                if w.iou_aware_targets:
                    bce = F.binary_cross_entropy_with_logits(x, target, reduction="none")
                    neg = bce * x.sigmoid() ** w.focal_gamma
                    loss = torch.where(is_pos, w.pos_weight * bce, neg)
                else:
                    loss = sigmoid_focal(x, target, w.focal_alpha, w.focal_gamma)
                    loss = torch.where(is_pos, w.pos_weight * loss, loss)
                cls_total = cls_total + loss.mean()
                cls_rows += 1
            if len(q):
                q_dev, n_dev = q.to(logits.device), n.to(logits.device)
                src, tgt = boxes[r, q_dev], gt_boxes[r][n_dev]
                l1_total = l1_total + (src - tgt).abs().sum()
                giou = generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)).diagonal()
                giou_total = giou_total + (1 - giou).sum()
        cls = cls_total / max(cls_rows, 1)
        return cls, l1_total / norm, giou_total / norm

    def _resize_pair(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None):
        """Bring ``(K, h, w)`` logits and ``(K, H, W)`` targets (and ``(H, W)`` valid) to one size."""
        size = self.w.mask_loss_size
        if size is None:
            if pred.shape[-2:] != target.shape[-2:]:
                pred = F.interpolate(pred[None], size=target.shape[-2:], mode="bilinear", align_corners=False)[0]
            return pred, target, valid
        if pred.shape[-2:] != (size, size):
            pred = F.interpolate(pred[None], size=(size, size), mode="bilinear", align_corners=False)[0]
        if target.shape[-2:] != (size, size):
            target = F.interpolate(target[None], size=(size, size), mode="area")[0]
            if valid is not None:
                valid = F.interpolate(valid[None, None].float(), size=(size, size), mode="area")[0, 0] > 0.5
        return pred, target, valid

    def _instance_masks(self, pred_masks, targets, matches):
        """Summed focal (mean over valid pixels) and dice of matched (query, instance) pairs."""
        w = self.w
        zero = pred_masks.sum() * 0.0
        focal_total, dice_total = zero, zero
        for r, (q, n) in enumerate(matches):
            if not len(q):
                continue
            t = targets[r]
            pred = pred_masks[r, q.to(pred_masks.device)]
            gt = t.masks.to(pred.device)[n.to(pred.device)].float()
            valid = None if t.loss_mask is None else t.loss_mask.to(pred.device)
            pred, gt, valid = self._resize_pair(pred, gt, valid)
            focal = masked_mean(sigmoid_focal(pred, gt, w.mask_focal_alpha, w.mask_focal_gamma), valid)
            dice = dice_loss(pred, gt, None if valid is None else valid.to(pred.dtype))
            focal_total = focal_total + focal.sum()
            dice_total = dice_total + dice.sum()
        return focal_total, dice_total

    def _semantic(self, semantic, targets):
        """Focal over every row and dice over rows whose class is present, both averaged."""
        w = self.w
        focal_rows, dice_rows = [], []
        for r, t in enumerate(targets):
            gt = t.semantic.to(semantic.device).float()[None]
            valid = None if t.loss_mask is None else t.loss_mask.to(semantic.device)
            pred, gt, valid = self._resize_pair(semantic[r:r + 1], gt, valid)
            focal_rows.append(masked_mean(sigmoid_focal(pred, gt, w.semantic_focal_alpha,
                                                        w.semantic_focal_gamma), valid)[0])
            if t.present:
                dice_rows.append(dice_loss(pred, gt, None if valid is None else valid.to(pred.dtype))[0])
        focal = torch.stack(focal_rows).mean()
        dice = torch.stack(dice_rows).mean() if dice_rows else semantic.sum() * 0.0
        return focal, dice
