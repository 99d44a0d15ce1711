"""From SAM3 detector outputs to instances and masks: the one decode rule.

Used by the 2D predictor (:class:`medsam3.predict.image.ImagePredictor`), volumes
(:mod:`medsam3.predict.volume`, which scores and thresholds at low resolution) and training
validation (:mod:`medsam3.train.validate`), so all three answer a prompt the same way:

1. A detector row (one prompt on one image) holds the presence probability ``p``, each
   query's quality ``sigmoid(class logit)`` (``Q`` queries) and its low-resolution mask
   logits ``(Q, h, w)``. With ``masks: semantic`` (a model's ``medsam3.json``) the row has one
   "query", the semantic head, of quality 1.
2. A query's score is ``quality x p``; the prompt is present when ``p >= presence_threshold``
   and at least one query scores above ``score_threshold``; those queries are kept.
3. A kept query's mask is its logits resized bilinearly to the image, then the sigmoid
   (Meta's order), above ``mask_threshold``; the prompt's semantic mask is their union.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class DetectorRow:
    """One prompt's raw detector answer on one image.

    Attributes:
        presence: presence probability in [0, 1].
        quality: ``(Q,)`` per-query ``sigmoid(class logit)`` (1 for the semantic head); a query's
            score is ``quality x presence``, so a caller that decides presence otherwise (a
            volume's presence window) can rescore.
        logits: ``(Q, h, w)`` low-resolution mask logits (float32).
    """

    presence: float
    quality: torch.Tensor
    logits: torch.Tensor

    @property
    def scores(self) -> torch.Tensor:
        """``(Q,)`` query scores ``quality x presence``."""
        return query_scores(self.quality, self.presence)


def detector_row(out, i: int, semantic: bool = False) -> DetectorRow:
    """Row ``i`` of a batched ``Sam3ImageSegmentationOutput`` (or any object with its fields
    ``presence_logits (B, 1)``, ``pred_logits (B, Q)``, ``pred_masks (B, Q, h, w)``,
    ``semantic_seg (B, 1, h, w)``); ``semantic``: the semantic head is the row's one query."""
    presence = float(out.presence_logits[i].float().sigmoid().squeeze())
    if semantic:
        logits = out.semantic_seg[i].float().reshape(1, *out.semantic_seg.shape[-2:])
        return DetectorRow(presence, torch.ones(1, device=logits.device), logits)
    return DetectorRow(presence, out.pred_logits[i].float().sigmoid(), out.pred_masks[i].float())


def query_scores(quality: torch.Tensor, presence) -> torch.Tensor:
    """``(Q,)`` query scores: ``quality x presence`` (``presence`` a float or a 0-d tensor)."""
    return quality * presence


def confident_queries(scores: torch.Tensor, presence: float, score_threshold: float,
                      presence_threshold: float) -> torch.Tensor:
    """``(Q,)`` bool: the queries kept as instances (score above ``score_threshold``), none when
    the presence is below ``presence_threshold``."""
    return (scores > score_threshold) & (float(presence) >= presence_threshold)


def upsample_mask_logits(mask_logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` mask logits -> ``(N, *size)`` probabilities: bilinearly resized logits, then
    the sigmoid, in the order of Meta's SAM3 processor (``Sam3Processor._forward_grounding``), so
    a pixel is in the mask exactly when Meta's is. (transformers' post-processing resizes the
    probabilities instead, which moves mask edges by a fraction of a low-resolution pixel.)"""
    return F.interpolate(mask_logits[None].float(), size=tuple(size), mode="bilinear",
                         align_corners=False)[0].sigmoid()


@dataclass
class DecodedRow:
    """The instances of one detector row on the image grid (``N`` kept queries, ``(H, W)`` grid).

    Attributes:
        presence: the row's presence probability.
        keep: ``(N,)`` indices of the kept queries (ascending).
        scores: ``(N,)`` their scores.
        probabilities: ``(N, H, W)`` mask probabilities.
        masks: ``(N, H, W)`` bool, ``probabilities > mask_threshold`` (a mask may be empty).
    """

    presence: float
    keep: torch.Tensor
    scores: torch.Tensor
    probabilities: torch.Tensor
    masks: torch.Tensor

    @property
    def present(self) -> bool:
        """At least one query kept."""
        return self.keep.numel() > 0

    def union(self, size: tuple[int, int]) -> torch.Tensor:
        """``(H, W)`` bool: the semantic mask, the union of the instance masks (empty when absent)."""
        if not self.present:
            return torch.zeros(tuple(size), dtype=torch.bool, device=self.masks.device)
        return self.masks.any(0)


def decode_row(row: DetectorRow, size: tuple[int, int], score_threshold: float = 0.5,
               presence_threshold: float = 0.5, mask_threshold: float = 0.5) -> DecodedRow:
    """A detector row's kept queries with their masks on the ``(H, W)`` grid ``size`` (module rule)."""
    scores = row.scores
    keep = confident_queries(scores, row.presence, score_threshold, presence_threshold).nonzero().squeeze(1)
    if keep.numel():
        probs = upsample_mask_logits(row.logits[keep], size)
    else:
        probs = torch.zeros((0, *size), dtype=torch.float32, device=row.logits.device)
    return DecodedRow(row.presence, keep, scores[keep], probs, probs > mask_threshold)


def mask_components(mask: torch.Tensor, probability: torch.Tensor, score: float):
    """A semantic mask's connected components as instances: ``(masks (N, H, W), probabilities
    (N, H, W), scores (N,), indices (N,))``, largest first, each scored ``score``."""
    from scipy import ndimage

    labelled, n = ndimage.label(mask.cpu().numpy())
    if n == 0:
        empty = torch.zeros((0, *mask.shape), dtype=torch.bool, device=mask.device)
        return empty, empty.float(), torch.zeros(0, device=mask.device), torch.zeros(0, dtype=torch.long)
    sizes = np.bincount(labelled.ravel())[1:]
    order = np.argsort(-sizes, kind="stable") + 1
    masks = torch.from_numpy(labelled[None] == order[:, None, None]).to(mask.device)
    probs = probability[None] * masks
    return masks, probs, torch.full((n,), float(score), device=mask.device), torch.arange(n)


def mask_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``(N, 4)`` ``x0, y0, x1, y1`` pixel boxes (exclusive ends) of ``(N, H, W)`` masks."""
    boxes = torch.zeros((masks.shape[0], 4))
    for j, m in enumerate(masks):
        ys, xs = torch.nonzero(m, as_tuple=True)
        boxes[j] = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
    return boxes
