"""SAM3's set-prediction losses for text-prompted segmentation (our own implementation).

One *row* is one (image, prompt) pair: the detector's ``Q`` queries for that prompt and the
ground truth of the prompted class in that image (``N >= 0`` instances; ``N = 0`` is a
prompt whose class is absent). Queries are assigned to instances by
:func:`medsam3.train.matcher.hungarian_match`; the terms (weights: :class:`LossWeights`) are
below. :meth:`LossWeights.meta_sam3` is Meta's own training configuration of SAM3 (its
``Sam3LossWrapper`` with ``IABCEMdetr``, ``Boxes``, ``Masks`` and ``SemanticSegCriterion``),
which ``scripts/parity_losses.py`` checks term by term against Meta's code; docs/losses.md
lists every term, its weight and every deliberate difference.

scores (``joint_scores``)
    Meta supervises the *joint* score: each query's class logit becomes
    ``logit(sigmoid(class) * sigmoid(presence))`` (eps 1e-3, clamped to +-10), so the presence
    token gates every query; matching and classification then use the joint logits.
classification (``class``, 20)
    with ``iou_aware_targets`` (Meta's IoU-aware BCE): a matched query's target is
    ``clamp(p^alpha * IoU^(1-alpha), 0.01)`` (``p`` its score, IoU with its instance's box),
    its BCE multiplied by ``pos_weight`` 10; other queries get ``BCE(., 0) * p^gamma``.
    Without: sigmoid focal BCE (alpha 0.25, gamma 2), positives times ``pos_weight``.
    Averaged over all rows x queries (over ``class_pad_queries`` per row when there are
    fewer queries). Rows of an absent class train every query toward 0
    (``classify_absent``) or count as zero (Meta: the presence term handles them).
presence (``presence``, 20)
    focal BCE (``presence_alpha``, ``presence_gamma``; Meta 0.5 and 0, i.e. half the BCE;
    ``alpha < 0``: plain BCE) of the presence logit toward "the class is in the image",
    averaged over rows.
boxes (``l1`` 5, ``giou`` 2)
    L1 of matched ``cx, cy, w, h`` boxes and ``1 - GIoU``, summed over matches and divided by
    the number of instances (``num_boxes``, all rows, all processes).
instance masks (``mask_focal`` 200, ``mask_dice`` 10)
    per matched query, sigmoid focal (0.25, 2) averaged over the pixels that carry ground
    truth (the row's ``loss_mask``) and dice, summed over matches / ``num_boxes``. Predicted
    low-resolution logits are upsampled (bilinear) to the ground truth's size, or both are
    resized to ``mask_loss_size``. Last decoder layer only.
semantic mask (``semantic_focal`` 20, ``semantic_dice`` 30, ``semantic_presence``)
    the semantic (union) head against the class's mask: focal (alpha 0.6, gamma 2) and dice
    per row. ``semantic_present_only`` (Meta): both averaged over the rows whose mask is not
    empty; otherwise focal over every row (absent rows learn an empty map) and dice over
    present rows. ``semantic_presence`` is a BCE of the presence logit (off in Meta's SAM3
    configuration, where the decoder's presence term does this).
auxiliary decoder layers (``aux_weight`` 1)
    classification, presence and box terms on every earlier decoder layer with its own
    matching (SAM3 computes no auxiliary mask losses).
one-to-many (``o2m_weight`` 2)
    With the model's separate one-to-many queries (``pred_logits_o2m``, ``pred_boxes_o2m``,
    ``pred_masks_o2m``; Meta's DAC queries): classification (without presence), box and mask
    terms on them, matched by ``o2m_rule`` on the last layer and one-to-one on earlier layers,
    normalised by ``num_boxes``, times ``o2m_weight``. transformers' SAM3 has no such query
    group; then box and mask terms fall on the last layer's one-to-one queries (classification
    stays one-to-one there). ``o2m_rule``: ``"quality"`` (Meta: score-and-IoU quality above
    ``o2m_threshold`` among about ``o2m_topk`` queries per instance, normalised by
    ``num_boxes``) or ``"topk_cost"`` (the ``o2m_topk`` cheapest queries by matching cost,
    averaged over those pairs).
batch scaling (``scale_by_rows``)
    Meta multiplies the total (not the terms) by ``sqrt(rows)``.

Every term is reported unweighted-times-weight, i.e. exactly what enters the total (before
``scale_by_rows``). A term whose weight is zero is not computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou

from medsam3.train.matcher import (
    MatchCosts,
    cxcywh_to_xyxy,
    hungarian_match,
    one_to_many_match,
    quality_one_to_many_match,
)

O2M_RULES = ("quality", "topk_cost")


@dataclass
class LossWeights:
    """Loss weights and hyper-parameters (defaults: our earlier recipe; :meth:`meta_sam3`:
    Meta's SAM3 training configuration; see the module docstring)."""

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
    joint_scores: bool = False
    presence_alpha: float = -1.0
    presence_gamma: float = 0.0
    class_pad_queries: int | None = None
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
    semantic_present_only: bool = False
    aux_weight: float = 1.0
    o2m_weight: float = 2.0
    o2m_topk: int = 4
    o2m_rule: str = "topk_cost"
    o2m_alpha: float = 0.3
    o2m_threshold: float = 0.4
    scale_by_rows: bool = False
    mask_loss_size: int | None = None

    @property
    def match_costs(self) -> MatchCosts:
        return MatchCosts(self.match_class, self.match_l1, self.match_giou, self.focal_alpha, self.focal_gamma)

    @classmethod
    def meta_sam3(cls, **overrides) -> LossWeights:
        """Meta's SAM3 training loss (sam3 0.1.4's ``Sam3LossWrapper`` as its full fine-tuning
        configs set it up, with the segmentation losses on): matcher class 2 / L1 5 / GIoU 2
        (focal 0.25, 2); ``IABCEMdetr`` (IoU-aware, ``loss_ce`` 20, ``pos_weight`` 10, alpha
        0.25, gamma 2, presence 20 as focal alpha 0.5 gamma 0, absent rows zeroed, 200 padded
        queries) on joint scores; ``Boxes`` 5 / 2; ``Masks`` 200 / 10 (0.25, 2, full
        resolution, last layer); ``SemanticSegCriterion`` (focal 0.6 / 2 weight 20, dice 30,
        present rows only, no presence term); one-to-many weight 2 (quality 0.3, threshold
        0.4, top 4); total times sqrt(rows)."""
        values = dict(match_class=2.0, match_l1=5.0, match_giou=2.0, class_weight=20.0, presence_weight=20.0,
                      pos_weight=10.0, focal_alpha=0.25, focal_gamma=2.0, iou_aware_targets=True,
                      classify_absent=False, joint_scores=True, presence_alpha=0.5, presence_gamma=0.0,
                      class_pad_queries=200, l1_weight=5.0, giou_weight=2.0, mask_focal_weight=200.0,
                      mask_dice_weight=10.0, mask_focal_alpha=0.25, mask_focal_gamma=2.0,
                      semantic_focal_weight=20.0, semantic_dice_weight=30.0, semantic_presence_weight=0.0,
                      semantic_focal_alpha=0.6, semantic_focal_gamma=2.0, semantic_present_only=True,
                      aux_weight=1.0, o2m_weight=2.0, o2m_topk=4, o2m_rule="quality", o2m_alpha=0.3,
                      o2m_threshold=0.4, scale_by_rows=True, mask_loss_size=None)
        values.update(overrides)
        return cls(**values)


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


def joint_logits(class_logits: torch.Tensor, presence_logits: torch.Tensor, eps: float = 1e-3,
                 bound: float = 10.0) -> torch.Tensor:
    """``logit(sigmoid(class) * sigmoid(presence))``, the score SAM3 is trained on.

    ``class_logits (..., Q)``, ``presence_logits (...)``. The product is clamped to
    ``[eps, 1 - eps]`` before the logit and the result to ``+-bound`` (Meta's constants).
    """
    p = (class_logits.sigmoid() * presence_logits.sigmoid()[..., None]).clamp(0, 1)
    return torch.log(p.clamp(min=eps) / (1 - p).clamp(min=eps)).clamp(-bound, bound)


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
        pred_logits_o2m, pred_boxes_o2m (L, P, Q2[, 4]), pred_masks_o2m (P, Q2, h, w)
                                       optional one-to-many query group

    and one :class:`RowTarget` per row ``P``. ``num_boxes`` normalises the box and mask terms;
    pass the mean over processes in distributed training (default: this batch's count).
    """

    def __init__(self, weights: LossWeights | None = None):
        self.w = weights or LossWeights()
        if self.w.o2m_rule not in O2M_RULES:
            raise ValueError(f"o2m_rule {self.w.o2m_rule!r} is not one of {', '.join(O2M_RULES)}")

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
        scores = joint_logits(logits, presence) if w.joint_scores else logits
        pred_masks = outputs.get("pred_masks")
        with_masks = pred_masks is not None and bool(w.mask_focal_weight or w.mask_dice_weight)
        o2m_logits = outputs.get("pred_logits_o2m")
        o2m_group = o2m_logits is not None and bool(w.o2m_weight)
        if o2m_group:
            o2m_logits = o2m_logits.float().reshape(layers, rows, -1)
            o2m_boxes = outputs["pred_boxes_o2m"].float().reshape(layers, rows, -1, 4)
            o2m_scores = joint_logits(o2m_logits, presence) if w.joint_scores else o2m_logits
        terms: dict[str, torch.Tensor] = {}

        last = layers - 1
        for layer in range(layers):
            if layer != last and w.aux_weight == 0:
                continue
            scale = 1.0 if layer == last else w.aux_weight
            suffix = "" if layer == last else f"_aux{layer}"
            matches = [hungarian_match(scores[layer, r], boxes[layer, r], gt_boxes[r], w.match_costs)
                       for r in range(rows)]
            cls, l1, giou = self._class_and_boxes(scores[layer], boxes[layer], gt_boxes, matches, present, norm)
            self._put(terms, "class" + suffix, scale * w.class_weight, cls)
            if w.presence_weight:
                terms["presence" + suffix] = scale * w.presence_weight * sigmoid_focal(
                    presence[layer], present, w.presence_alpha, w.presence_gamma).mean()
            self._put(terms, "l1" + suffix, scale * w.l1_weight, l1)
            self._put(terms, "giou" + suffix, scale * w.giou_weight, giou)
            if layer == last and with_masks:
                focal, dice = self._instance_masks(pred_masks.float(), targets, matches)
                self._put(terms, "mask_focal", w.mask_focal_weight, focal / norm)
                self._put(terms, "mask_dice", w.mask_dice_weight, dice / norm)
            if o2m_group:
                if layer == last:
                    o2m = self._one_to_many(o2m_scores[layer], o2m_boxes[layer], gt_boxes)
                else:  # Meta matches the earlier layers' one-to-many queries one-to-one
                    o2m = [hungarian_match(o2m_scores[layer, r], o2m_boxes[layer, r], gt_boxes[r], w.match_costs)
                           for r in range(rows)]
                o2m_norm = norm if w.o2m_rule == "quality" else max(sum(len(q) for q, _ in o2m), 1)
                cls, l1, giou = self._class_and_boxes(o2m_scores[layer], o2m_boxes[layer], gt_boxes, o2m,
                                                      present, o2m_norm)
                o2m_scale = scale * w.o2m_weight
                self._put(terms, "o2m_class" + suffix, o2m_scale * w.class_weight, cls)
                self._put(terms, "o2m_l1" + suffix, o2m_scale * w.l1_weight, l1)
                self._put(terms, "o2m_giou" + suffix, o2m_scale * w.giou_weight, giou)
                o2m_masks = outputs.get("pred_masks_o2m")
                if layer == last and o2m_masks is not None and with_masks:
                    focal, dice = self._instance_masks(o2m_masks.float(), targets, o2m)
                    self._put(terms, "o2m_mask_focal", w.o2m_weight * w.mask_focal_weight, focal / o2m_norm)
                    self._put(terms, "o2m_mask_dice", w.o2m_weight * w.mask_dice_weight, dice / o2m_norm)

        if not o2m_group and w.o2m_weight and w.o2m_topk > 0:
            # no one-to-many query group: box and mask terms on the one-to-one queries
            o2m = self._one_to_many(scores[last], boxes[last], gt_boxes)
            o2m_norm = norm if w.o2m_rule == "quality" else max(sum(len(q) for q, _ in o2m), 1)
            _, l1, giou = self._class_and_boxes(scores[last], boxes[last], gt_boxes, o2m, present, o2m_norm,
                                                with_class=False)
            self._put(terms, "o2m_l1", w.o2m_weight * w.l1_weight, l1)
            self._put(terms, "o2m_giou", w.o2m_weight * w.giou_weight, giou)
            if with_masks:
                focal, dice = self._instance_masks(pred_masks.float(), targets, o2m)
                self._put(terms, "o2m_mask_focal", w.o2m_weight * w.mask_focal_weight, focal / o2m_norm)
                self._put(terms, "o2m_mask_dice", w.o2m_weight * w.mask_dice_weight, dice / o2m_norm)

        semantic = outputs.get("semantic_seg")
        if semantic is not None:
            semantic = semantic.float().reshape(rows, *semantic.shape[-2:])
            if w.semantic_focal_weight or w.semantic_dice_weight:
                focal, dice = self._semantic(semantic, targets)
                self._put(terms, "semantic_focal", w.semantic_focal_weight, focal)
                self._put(terms, "semantic_dice", w.semantic_dice_weight, dice)
            if w.semantic_presence_weight:
                terms["semantic_presence"] = w.semantic_presence_weight * F.binary_cross_entropy_with_logits(
                    presence[last], present)

        total = torch.stack(list(terms.values())).sum() if terms else logits.sum() * 0.0
        if w.scale_by_rows:
            total = total * math.sqrt(rows)
        return LossOutput(total, terms, float(num_boxes))

    # ------------------------------------------------------------------ parts
    @staticmethod
    def _put(terms, name, weight, value):
        if weight:
            terms[name] = weight * value

    def _one_to_many(self, scores, boxes, gt_boxes):
        """One-to-many pairs of every row by ``o2m_rule``; ``scores (P, Q)``, ``boxes (P, Q, 4)``."""
        w = self.w
        if w.o2m_rule == "quality":
            return [quality_one_to_many_match(scores[r], boxes[r], gt_boxes[r], w.o2m_alpha, w.o2m_threshold,
                                              w.o2m_topk) for r in range(len(gt_boxes))]
        return [one_to_many_match(scores[r], boxes[r], gt_boxes[r], w.match_costs, w.o2m_topk)
                for r in range(len(gt_boxes))]

    def _class_and_boxes(self, logits, boxes, gt_boxes, matches, present, norm, with_class=True):
        """Classification (mean over rows x queries) and summed L1 / (1 - GIoU) / norm.

        ``matches`` may pair a query with several instances (one-to-many): it counts as one
        positive whose target is its last pair's (Meta's indexed assignment)."""
        w = self.w
        zero = logits.sum() * 0.0  # keeps the graph (and DDP) happy when a term is empty
        cls_total = zero
        l1_total, giou_total = zero, zero
        rows, queries = logits.shape
        for r, (q, n) in enumerate(matches):
            if len(q):
                q_dev, n_dev = q.to(logits.device), n.to(logits.device)
                src, tgt = boxes[r, q_dev], gt_boxes[r][n_dev]
                l1_total = l1_total + (src - tgt).abs().sum()
                giou = generalized_box_iou(cxcywh_to_xyxy(src), cxcywh_to_xyxy(tgt)).diagonal()
                giou_total = giou_total + (1 - giou).sum()
            if not with_class or not (bool(present[r]) or w.classify_absent):
                continue
            x = logits[r]
            target = torch.zeros_like(x)
            is_pos = torch.zeros_like(x, dtype=torch.bool)
            if len(q):
                last = {}  # query -> its last pair
                for i, query in enumerate(q.tolist()):
                    last[query] = i
                keep = torch.tensor(list(last.values()), dtype=torch.long)
                q_dev, n_dev = q[keep].to(x.device), n[keep].to(x.device)
                is_pos[q_dev] = True
                if w.iou_aware_targets:
                    with torch.no_grad():
                        iou = box_iou(cxcywh_to_xyxy(boxes[r, q_dev]),
                                      cxcywh_to_xyxy(gt_boxes[r][n_dev])).diagonal()
                        t = x[q_dev].sigmoid() ** w.focal_alpha * iou.clamp(min=0) ** (1 - w.focal_alpha)
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
            cls_total = cls_total + loss.sum()
        per_row = max(queries, w.class_pad_queries or 0)  # Meta pads to a fixed query count
        cls = cls_total / (rows * per_row)
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
        """Focal and dice of the semantic map, reduced over rows (see the module docstring)."""
        w = self.w
        focal_rows, dice_rows, has_mask = [], [], []
        for r, t in enumerate(targets):
            gt = t.semantic.to(semantic.device).float()[None]
            valid = None if t.loss_mask is None else t.loss_mask.to(semantic.device)
            pred, gt, valid = self._resize_pair(semantic[r:r + 1], gt, valid)
            focal_rows.append(masked_mean(sigmoid_focal(pred, gt, w.semantic_focal_alpha,
                                                        w.semantic_focal_gamma), valid)[0])
            dice_rows.append(dice_loss(pred, gt, None if valid is None else valid.to(pred.dtype))[0])
            has_mask.append(bool(gt.any()) if w.semantic_present_only else bool(t.present))
        focal_rows, dice_rows = torch.stack(focal_rows), torch.stack(dice_rows)
        keep = torch.tensor(has_mask, device=semantic.device, dtype=semantic.dtype)
        if w.semantic_present_only:  # Meta: the presence head answers for empty maps
            count = keep.sum() + 1e-6
            return (focal_rows * keep).sum() / count, (dice_rows * keep).sum() / count
        dice = (dice_rows * keep).sum() / keep.sum() if keep.sum() > 0 else semantic.sum() * 0.0
        return focal_rows.mean(), dice
