"""Prompt inputs of SAM3's geometry (exemplar) encoder shared by inference and training."""

from __future__ import annotations

import torch

#: The label of a padding box (ignored by the geometry encoder, as in transformers' Sam3Model).
PAD_BOX_LABEL = -10
#: The coordinates given to a padding box (cx, cy, w, h): any finite box; it is masked out.
PAD_BOX = (0.5, 0.5, 1.0, 1.0)


def no_box_inputs(rows: int, device=None, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """``input_boxes`` / ``input_boxes_labels`` for ``Sam3Model`` rows without exemplar boxes.

    Meta's SAM3 runs its geometry encoder on every prompt: with no box it still encodes the
    CLS token (cross-attending to the image) and appends it to the text tokens, and the DETR
    encoder, decoder, scoring and mask heads all attend to it. transformers' ``Sam3Model``
    skips the geometry encoder when ``input_boxes`` is empty, which changes every output of a
    text prompt (measured on full-size random weights: query logits 0.28, presence 0.17
    relative). One padding box (label -10, masked everywhere) makes transformers run the
    encoder and add the CLS token, so text prompts compute what Meta's model computes.
    Shapes: ``(rows, 1, 4)`` and ``(rows, 1)``.
    """
    boxes = torch.tensor(PAD_BOX, dtype=dtype, device=device).expand(rows, 1, 4).clone()
    labels = torch.full((rows, 1), PAD_BOX_LABEL, dtype=torch.long, device=device)
    return {"input_boxes": boxes, "input_boxes_labels": labels}
