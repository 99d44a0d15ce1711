"""Validation during training: Dice of what the predictor would answer, on fixed samples.

For each (image, text prompt) row the prediction is what
:class:`medsam3.predict.ImagePredictor` returns, by the same code (:mod:`medsam3.predict.decode`):
queries whose score ``sigmoid(class) * sigmoid(presence)`` exceeds ``score_threshold`` (and a
presence of at least ``presence_threshold``), their masks (logits resized bilinearly to the input
size, then the sigmoid, > ``mask_threshold``) united. Reported:

``dice``
    mean Dice over rows whose class is present (pixels outside the row's ``loss_mask``, i.e.
    padding and ignore labels, are left out);
``semantic_dice``
    the same for the semantic head (``sigmoid(semantic_seg) > mask_threshold``);
``top1_dice``
    the same for the mask of the best-scoring query alone, whatever its score (the public
    Medical-SAM3 evaluation; a threshold-free view of the instance masks early in training);
``absent_accuracy``
    share of rows of an absent class answered with an empty mask.

Each is ``None`` when there are no rows of its kind.
"""

from __future__ import annotations

import torch

from medsam3.predict.decode import DetectorRow, decode_row, upsample_mask_logits


def _dice(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None) -> float:
    if valid is not None:
        pred, gt = pred & valid, gt & valid
    denom = int(pred.sum()) + int(gt.sum())
    return 1.0 if denom == 0 else 2.0 * int((pred & gt).sum()) / denom


@torch.no_grad()
def row_predictions(outputs: dict[str, torch.Tensor], size: tuple[int, int], score_threshold: float = 0.5,
                    presence_threshold: float = 0.5, mask_threshold: float = 0.5):
    """Per row: ``(instance_union, semantic, top1)`` ``(H, W)`` bool masks at the input size, decoded
    by the predictor's rule (:func:`medsam3.predict.decode.decode_row`) from the last decoder layer."""
    quality = outputs["pred_logits"][-1].float().sigmoid()
    presence = outputs["presence_logits"][-1].float().sigmoid()
    masks = outputs["pred_masks"].float()
    semantic = outputs["semantic_seg"].float()
    out = []
    for r in range(quality.shape[0]):
        row = DetectorRow(float(presence[r]), quality[r], masks[r])
        union = decode_row(row, size, score_threshold, presence_threshold, mask_threshold).union(size)
        sem = upsample_mask_logits(semantic[r][None], size)[0] > mask_threshold
        best = int(row.scores.argmax())
        top1 = upsample_mask_logits(masks[r, best][None], size)[0] > mask_threshold
        out.append((union, sem, top1))
    return out


class DiceTally:
    """Sums of the validation numbers (to add across batches and processes)."""

    def __init__(self):
        # dice, semantic dice, top-1 dice, present rows, absent rows answered empty, absent rows
        self.values = torch.zeros(6, dtype=torch.float64)

    def add(self, outputs, batch, **thresholds) -> None:
        size = tuple(batch.targets[0].semantic.shape[-2:])
        for (union, sem, top1), target in zip(row_predictions(outputs, size, **thresholds), batch.targets):
            if target.present:
                gt = target.semantic.bool()
                self.values[0] += _dice(union, gt, target.loss_mask)
                self.values[1] += _dice(sem, gt, target.loss_mask)
                self.values[2] += _dice(top1, gt, target.loss_mask)
                self.values[3] += 1
            else:
                valid = target.loss_mask
                empty = not bool((union & valid).any()) if valid is not None else not bool(union.any())
                self.values[4] += float(empty)
                self.values[5] += 1

    def result(self) -> dict[str, float]:
        d, s, t, n, ok, na = self.values.tolist()
        return {"dice": d / n if n else None, "semantic_dice": s / n if n else None, "top1_dice": t / n if n else None,
                "absent_accuracy": ok / na if na else None, "present_rows": int(n), "absent_rows": int(na)}
