"""The detector as a training module: one forward from a batch of rows to every layer's outputs.

:class:`DetectorForTraining` wraps a :class:`transformers.Sam3Model` so that distributed
wrappers (DDP, FSDP) see a single ``forward``. It runs the vision backbone once per image,
repeats the features for every prompt row of that image (text prompt, negative prompts),
and returns what :class:`medsam3.train.losses.SetCriterion` needs, including the per-layer
class logits, boxes and presence logits that ``Sam3Model.forward`` computes but does not
return (read from its ``detr_decoder`` and ``dot_product_scoring`` submodules by forward
hooks, so the model's own forward is used unchanged). With ``one_to_many`` it also runs, in
training, SAM3's one-to-many copies of the queries (:mod:`medsam3.train.dac`) and returns their
outputs as ``*_o2m``.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers import Sam3Model
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.models.sam3.modeling_sam3 import (
    Sam3VisionEncoderOutput,
    inverse_sigmoid,
)

from medsam3.model.geometry import no_box_inputs
from medsam3.train.dac import dac_decoder_forward


class DetectorForTraining(nn.Module):
    """``forward(pixel_values, image_index, input_ids, attention_mask, input_boxes=None,
    input_boxes_labels=None)`` -> dict of tensors.

    Args (of ``forward``):
        pixel_values: ``(B, 3, S, S)`` normalised images.
        image_index: ``(P,)`` long, the image of each prompt row.
        input_ids, attention_mask: ``(P, T)`` tokenised prompts.
        input_boxes: ``(P, K, 4)`` box prompts ``cx, cy, w, h`` normalised, or ``None``.
        input_boxes_labels: ``(P, K)`` 1 positive, 0 negative, -10 padding.

    Returns ``pred_logits (L, P, Q)``, ``pred_boxes (L, P, Q, 4)`` (cx, cy, w, h),
    ``presence_logits (L, P)``, ``pred_masks (P, Q, h, w)``, ``semantic_seg (P, h, w)``,
    ``pred_boxes_xyxy (P, Q, 4)`` (the model's own last-layer output). With ``one_to_many``, in
    training mode, also ``pred_logits_o2m (L, P, Q)``, ``pred_boxes_o2m (L, P, Q, 4)`` and
    ``pred_masks_o2m (P, Q, h, w)`` of the one-to-many query copies (Meta's DAC).
    """

    def __init__(self, detector: Sam3Model, one_to_many: bool = False):
        super().__init__()
        self.detector = detector
        self.one_to_many = one_to_many
        self._captured: dict[str, object] = {}
        core = base_detector(detector)
        core.detr_decoder.register_forward_hook(self._capture("decoder"))
        core.dot_product_scoring.register_forward_hook(self._capture("scores"))

    def _capture(self, key):
        def hook(module, args, output):
            self._captured[key] = output
        return hook

    def forward(self, pixel_values, image_index, input_ids, attention_mask, input_boxes=None,
                input_boxes_labels=None):
        core = base_detector(self.detector)
        vision = core.get_vision_features(pixel_values=pixel_values)
        rows = image_index.shape[0]
        if rows != pixel_values.shape[0] or not torch.equal(
                image_index, torch.arange(rows, device=image_index.device)):
            pick = lambda t: t.index_select(0, image_index)
            vision = Sam3VisionEncoderOutput(
                last_hidden_state=pick(vision.last_hidden_state),
                fpn_hidden_states=tuple(pick(t) for t in vision.fpn_hidden_states),
                fpn_position_encoding=tuple(pick(t) for t in vision.fpn_position_encoding))
        self._captured.clear()
        if input_boxes is not None:
            kwargs = {"input_boxes": input_boxes, "input_boxes_labels": input_boxes_labels}
        else:  # the geometry encoder's CLS token joins every prompt, as in Meta's SAM3
            kwargs = no_box_inputs(rows, input_ids.device, pixel_values.dtype)
        dac = self.one_to_many and self.training
        if dac:  # the model's forward, with the decoder running the query copies too
            core.detr_decoder.forward = partial(dac_decoder_forward, core.detr_decoder)
        try:
            out = self.detector(vision_embeds=vision, input_ids=input_ids, attention_mask=attention_mask, **kwargs)
        finally:
            if dac:
                del core.detr_decoder.forward
        decoder = self._captured.pop("decoder")
        scores = self._captured.pop("scores").squeeze(-1)
        offsets = core.detr_decoder.box_head(decoder.intermediate_hidden_states)
        boxes = (inverse_sigmoid(decoder.reference_boxes) + offsets).sigmoid()
        q = scores.shape[-1] // 2 if dac else scores.shape[-1]  # one-to-one queries first
        result = {
            "pred_logits": scores[..., :q],
            "pred_boxes": boxes[..., :q, :],
            "presence_logits": decoder.presence_logits.reshape(decoder.presence_logits.shape[0], rows),
            "pred_masks": out.pred_masks[:, :q],
            "semantic_seg": out.semantic_seg.reshape(rows, *out.semantic_seg.shape[-2:]),
            "pred_boxes_xyxy": out.pred_boxes[:, :q],
        }
        if dac:
            result.update(pred_logits_o2m=scores[..., q:], pred_boxes_o2m=boxes[..., q:, :],
                          pred_masks_o2m=out.pred_masks[:, q:])
        return result


def base_detector(model: nn.Module) -> Sam3Model:
    """The :class:`Sam3Model` inside a training wrapper, a PEFT model or a DDP/FSDP module."""
    seen = 0
    while not isinstance(model, Sam3Model):
        for attr in ("module", "detector", "base_model", "model"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module):
                model = inner
                break
        else:
            raise TypeError(f"no Sam3Model inside {type(model).__name__}")
        seen += 1
        if seen > 8:
            raise TypeError("no Sam3Model found within 8 wrappers")
    return model


def enable_activation_checkpointing(detector: Sam3Model, parts=("vision", "text")) -> int:
    """Recompute the ViT and text-encoder blocks in the backward pass instead of storing
    their activations (non-reentrant :func:`torch.utils.checkpoint.checkpoint`).

    transformers refuses ``gradient_checkpointing_enable`` on SAM3 (its
    ``supports_gradient_checkpointing`` is unset), but the blocks are
    ``GradientCheckpointingLayer`` s; they are switched on directly. Returns how many blocks.
    """
    core = base_detector(detector)
    roots = {"vision": core.vision_encoder.backbone, "text": core.text_encoder}
    func = partial(checkpoint, use_reentrant=False)
    count = 0
    for part in parts:
        for module in roots[part].modules():
            if isinstance(module, GradientCheckpointingLayer):
                module.gradient_checkpointing = True
                module._gradient_checkpointing_func = func
                count += 1
    return count
