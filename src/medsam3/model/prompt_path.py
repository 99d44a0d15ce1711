"""The prompt-conditioned half of SAM3's detector, with an image's prompt-independent work done once.

:class:`ImagePrompts` answers batches of prompts on one encoded image with the outputs of
``Sam3Model.forward(vision_embeds=..., text_embeds=..., input_boxes=...)`` that the predictor
reads (``presence_logits``, ``pred_logits``, ``pred_boxes``, ``pred_masks``, ``semantic_seg``),
equal to them up to float rounding. It runs transformers' own submodules and weights, in an
order that computes what does not depend on the prompt once per image instead of once per
prompt (each item is exact arithmetic, only the rounding order changes):

* **DETR encoder, layer 0**: a layer is self-attention over the image tokens, then
  cross-attention to the prompt, then the MLP; layer 0's self-attention sees only the image
  (its FPN level and position encoding), so it and the LayerNorm after it run once per image.
* **Geometry encoder of text-only rows**: a text prompt carries one padding box (masked
  everywhere, so its coordinates change nothing), so its geometry tokens (the CLS token
  cross-attending to the image) are the same for every text prompt on the image: encoded once,
  shared by every row.
* **DETR decoder, layer 0**: its queries, reference boxes, query position embedding, its
  self-attention and the box relative-position bias all come from learnt embeddings: once per
  image (the bias) or once per batch. The bias of later layers is built in its final layout in
  one pass (no ``(B, Q, H, W, heads)`` intermediate and permuted copy).
* **Pixel decoder**: each stage is ``conv3x3(upsample_nearest_x2(x) + skip)`` where ``skip`` is an
  image-only FPN level. By linearity that is ``conv3x3(upsample(x)) + conv3x3(skip)``; the second
  term is computed once per image, and a 3x3 convolution (padding 1) of a nearest x2 upsampled
  map equals four 2x2 convolutions at the low resolution, one per output phase (kernel rows
  ``{0}, {1,2}`` for even output rows, ``{0,1}, {2}`` for odd ones, the same for columns; the
  zero padding of the upsampled map is the zero padding of the low-resolution one), 4/9 of the
  arithmetic. Used when a batch has two or more rows needing masks or the image's skip
  convolutions already exist (for a single prompt the plain convolution is cheaper).
* **Instance projection** (a 1x1 convolution of the pixel embedding before the per-query dot
  product) folded into the query side: ``E (W P + b) = (E W) P + E b``.
* **Absent rows**: with ``mask_rows``, the mask decoder runs only for the rows the caller needs
  (the predictor asks for rows where some query passes its thresholds); the others' masks are
  zeros, and their answer is "absent" whatever the masks say.

``bf16`` (:mod:`medsam3.model.precision`) is honoured by running the whole path under autocast
and handing the outputs back in the weights' dtype; ``int8`` needs nothing (the quantised
``Linear`` modules are called as modules). :class:`ImagePrompts` is built per image and holds
its cache; drop it when the image changes.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import (
    Sam3ImageSegmentationOutput,
    Sam3VisionEncoderOutput,
    box_cxcywh_to_xyxy,
    inverse_sigmoid,
)

from medsam3.model.geometry import PAD_BOX_LABEL

#: ``presence_logits, pred_logits, pred_boxes`` of a batch -> ``(B,)`` bool rows whose masks are needed
MaskRows = Callable[[Sam3ImageSegmentationOutput], torch.Tensor]


def _padding_only(labels: torch.Tensor | None) -> bool:
    """Whether every row's boxes are one padding box (a text-only batch)."""
    return labels is not None and labels.shape[1] == 1 and bool((labels == PAD_BOX_LABEL).all())


def subpixel_kernels(weight: torch.Tensor) -> torch.Tensor:
    """``(4*O, I, 2, 2)`` kernels from a ``(O, I, 3, 3)`` one: phase ``(a, b)`` (output row parity,
    column parity) of ``conv3x3(upsample_nearest_x2(x), padding=1)`` is ``conv2x2`` of ``x`` padded
    by one, read from offset ``(a, b)`` (see :func:`upsample_conv3x3`)."""
    groups = (((0,), (1, 2)), ((0, 1), (2,)))  # phase -> which 3x3 taps fall on low-res tap 0 / 1
    out = []
    for a in (0, 1):
        rows = [weight[:, :, list(taps), :].sum(2) for taps in groups[a]]  # 2 x (O, I, 3)
        for b in (0, 1):
            out.append(torch.stack([torch.stack([r[:, :, list(taps)].sum(2) for taps in groups[b]], -1)
                                    for r in rows], -2))  # (O, I, 2, 2)
    return torch.cat(out, 0)


def upsample_conv3x3(x: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """``conv3x3(upsample_nearest_x2(x))`` (padding 1, no bias) from :func:`subpixel_kernels`:
    one 2x2 convolution at ``x``'s resolution, its four phases interleaved."""
    b, _, h, w = x.shape
    o = kernels.shape[0] // 4
    y = F.conv2d(F.pad(x, (1, 1, 1, 1)), kernels).view(b, 2, 2, o, h + 1, w + 1)
    out = x.new_empty(b, o, h, 2, w, 2, dtype=y.dtype)
    for a in (0, 1):
        for c in (0, 1):
            out[:, :, :, a, :, c] = y[:, a, c, :, a:a + h, c:c + w]
    return out.view(b, o, 2 * h, 2 * w)


class ImagePrompts:
    """Prompts on one encoded image through ``detector``'s prompt-conditioned modules.

    Args:
        detector: the ``Sam3Model`` whose :meth:`get_vision_features` made ``features``.
        features: the image's vision features (batch 1).
        precision: the model's inference precision (``bf16`` runs under autocast).
    """

    def __init__(self, detector, features: Sam3VisionEncoderOutput, precision: str = "fp32"):
        if features.fpn_hidden_states[0].shape[0] != 1:
            raise ValueError("ImagePrompts caches one image: features must have batch size 1")
        self.detector = detector
        self.precision = precision
        self.dtype = features.fpn_hidden_states[0].dtype  # the outputs' dtype: the weights' (bf16 hands them back so)
        self.fpn = list(features.fpn_hidden_states[:-1])  # as Sam3Model.forward: the last level is unused
        self.fpn_pos = list(features.fpn_position_encoding[:-1])
        self._cache: dict[str, object] = {}

    # ------------------------------------------------------------------ running
    def _autocast(self):
        if self.precision == "bf16":
            return torch.autocast(self.fpn[-1].device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _once(self, key: str, make: Callable[[], object]):
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @torch.inference_mode()
    def __call__(self, text_features: torch.Tensor, text_mask: torch.Tensor | None = None,
                 input_boxes: torch.Tensor | None = None, input_boxes_labels: torch.Tensor | None = None,
                 mask_rows: MaskRows | None = None) -> Sam3ImageSegmentationOutput:
        """What ``Sam3Model.forward(vision_embeds=<this image expanded to B>, text_embeds=text_features,
        attention_mask=text_mask, input_boxes=..., input_boxes_labels=...)`` returns in ``pred_masks``,
        ``pred_boxes``, ``pred_logits``, ``presence_logits`` and ``semantic_seg``; ``text_features``
        ``(B, T, D)`` are the projected text features (``get_text_features(...).pooler_output``).
        ``mask_rows``: called with the batch's scores (masks ``None``), returns the ``(B,)`` rows whose
        masks to compute; the others' masks are zeros."""
        with self._autocast():
            prompt, prompt_mask = self._prompt(text_features, text_mask, input_boxes, input_boxes_labels)
            memory = self._encode(prompt, prompt_mask)
            queries, boxes, presence = self._decode(memory, prompt, prompt_mask)
            logits = self.detector.dot_product_scoring(decoder_hidden_states=queries[None], text_features=prompt,
                                                       text_mask=prompt_mask)[0].squeeze(-1)
        out = Sam3ImageSegmentationOutput(pred_boxes=box_cxcywh_to_xyxy(boxes).to(self.dtype),
                                          pred_logits=logits.to(self.dtype), presence_logits=presence.to(self.dtype))
        rows = None if mask_rows is None else torch.as_tensor(mask_rows(out), dtype=torch.bool).flatten().cpu()
        with self._autocast():
            if rows is None or bool(rows.all()):
                masks, semantic = self._masks(queries, memory, prompt, prompt_mask)
            else:
                n = queries.shape[0]
                h, w = self.fpn[0].shape[-2:]
                masks = queries.new_zeros(n, queries.shape[1], h, w, dtype=self.dtype)
                semantic = queries.new_zeros(n, 1, h, w, dtype=self.dtype)
                idx = rows.nonzero().flatten().to(queries.device)
                if idx.numel():
                    pick = prompt_mask[idx] if prompt_mask is not None else None
                    m, s = self._masks(queries[idx], memory[idx], prompt[idx], pick)
                    masks[idx], semantic[idx] = m.to(self.dtype), s.to(self.dtype)
        out.pred_masks, out.semantic_seg = masks.to(self.dtype), semantic.to(self.dtype)
        return out

    # ------------------------------------------------------------------ prompt tokens
    def _prompt(self, text, text_mask, boxes, labels) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The prompt tokens (text, then geometry) and their validity mask, as Sam3Model.forward joins them."""
        text_mask = text_mask.bool() if text_mask is not None else None
        if boxes is None or boxes.numel() == 0:
            return text, text_mask
        n = text.shape[0]
        if _padding_only(labels):  # padding boxes are inert: the first row's stands for every row
            geo, geo_mask = self._once("geometry", lambda: self._geometry(boxes[:1], labels[:1], 1))
            geo, geo_mask = geo.expand(n, -1, -1), geo_mask.expand(n, -1)
        else:
            geo, geo_mask = self._geometry(boxes, labels, n)
        if text.shape[0] == 1 and n > 1:
            text = text.expand(n, -1, -1)
        if text_mask is None:
            text_mask = torch.ones(text.shape[:2], dtype=torch.bool, device=text.device)
        elif text_mask.shape[0] == 1 and n > 1:
            text_mask = text_mask.expand(n, -1)
        return torch.cat([text, geo], 1), torch.cat([text_mask, geo_mask.to(torch.bool)], 1)

    def _geometry(self, boxes, labels, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if labels is None:
            labels = torch.ones(boxes.shape[:2], dtype=torch.long, device=boxes.device)
        valid = labels != PAD_BOX_LABEL
        out = self.detector.geometry_encoder(
            box_embeddings=boxes, box_mask=valid, box_labels=torch.where(valid, labels, 0),
            img_feats=tuple(f.expand(n, -1, -1, -1) for f in self.fpn),
            img_pos_embeds=tuple(p.expand(n, -1, -1, -1) for p in self.fpn_pos))
        return out.last_hidden_state, out.attention_mask

    # ------------------------------------------------------------------ DETR encoder
    def _image_tokens(self) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """``(1, HW, D)`` tokens and position encodings of the level the DETR encoder reads."""
        def make():
            feats, pos = self.fpn[-1], self.fpn_pos[-1]
            return (feats.flatten(2).transpose(1, 2).contiguous(), pos.flatten(2).transpose(1, 2).contiguous(),
                    tuple(feats.shape[-2:]))
        return self._once("tokens", make)

    def _encoder_layer0(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Layer 0 up to its cross-attention: ``(residual, layer_norm2(residual))``, both ``(1, HW, D)``."""
        def make():
            layer = self.detector.detr_encoder.layers[0]
            tokens, pos, _ = self._image_tokens()
            x = layer.layer_norm1(tokens)
            q = x + pos
            attended, _ = layer.self_attn(query=q, key=q, value=x)
            residual = tokens + attended
            return residual, layer.layer_norm2(residual)
        return self._once("encoder0", make)

    def _encode(self, prompt: torch.Tensor, prompt_mask: torch.Tensor | None) -> torch.Tensor:
        """``(B, HW, D)`` the DETR encoder's output (image tokens fused with each row's prompt)."""
        encoder = self.detector.detr_encoder
        n = prompt.shape[0]
        tokens, pos, _ = self._image_tokens()
        residual, normed = self._encoder_layer0()
        mask = None
        if prompt_mask is not None:
            mask = create_bidirectional_mask(config=encoder.config, inputs_embeds=tokens.expand(n, -1, -1),
                                             attention_mask=prompt_mask, encoder_hidden_states=prompt)
        first = encoder.layers[0]
        attended, _ = first.cross_attn(query=normed.expand(n, -1, -1), key=prompt, value=prompt, attention_mask=mask)
        x = residual + attended
        x = x + first.mlp(first.layer_norm3(x))
        for layer in encoder.layers[1:]:
            x = layer(x, prompt_feats=prompt, vision_pos_encoding=pos, prompt_cross_attn_mask=mask)
        return x

    # ------------------------------------------------------------------ DETR decoder
    def _box_bias(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, heads, 1 + Q, HW)`` the box relative-position bias of reference boxes ``(B, Q, 4)``
        (cx, cy, w, h in [0, 1]), a zero row first for the presence token."""
        decoder = self.detector.detr_decoder
        _, _, (h, w) = self._image_tokens()
        corners = box_cxcywh_to_xyxy(boxes)
        ys = torch.arange(0, h, device=boxes.device, dtype=boxes.dtype) / h
        xs = torch.arange(0, w, device=boxes.device, dtype=boxes.dtype) / w

        def log_scaled(d):  # SAM3's log-scale encoding of a coordinate offset
            d = d * 8
            return torch.sign(d) * torch.log2(torch.abs(d) + 1.0) / math.log2(8)

        by = decoder.box_rpb_embed_y(log_scaled(ys[None, None, :, None] - corners[:, :, None, 1::2]))  # (B, Q, H, heads)
        bx = decoder.box_rpb_embed_x(log_scaled(xs[None, None, :, None] - corners[:, :, None, 0::2]))  # (B, Q, W, heads)
        n, q, _, heads = by.shape
        bias = by.new_zeros(n, heads, q + 1, h, w)
        torch.add(by.permute(0, 3, 1, 2)[..., None], bx.permute(0, 3, 1, 2)[..., None, :], out=bias[:, :, 1:])
        return bias.view(n, heads, q + 1, h * w)

    def _query_pos(self, boxes: torch.Tensor) -> torch.Tensor:
        """``(B, 1 + Q, D)`` query position embeddings of reference boxes, zero for the presence token."""
        decoder = self.detector.detr_decoder
        return F.pad(decoder.ref_point_head(decoder.position_encoding.encode_boxes(boxes)), (0, 0, 1, 0))

    def _decoder_start(self):
        """What decoder layer 0 computes before it sees the prompt: reference boxes, query position
        embedding, box bias and the queries after self-attention (all batch 1)."""
        def make():
            decoder = self.detector.detr_decoder
            layer = decoder.layers[0]
            boxes = decoder.reference_points.weight[None].sigmoid()
            query_pos = self._query_pos(boxes)
            x = torch.cat([decoder.presence_token.weight, decoder.query_embed.weight])[None]
            q = x + query_pos
            attended, _ = layer.self_attn(query=q, key=q, value=x)
            return boxes, query_pos, self._box_bias(boxes), layer.self_attn_layer_norm(x + attended)
        return self._once("decoder0", make)

    def _decode(self, memory: torch.Tensor, prompt: torch.Tensor, prompt_mask: torch.Tensor | None):
        """``(queries (B, Q, D), boxes (B, Q, 4) cxcywh, presence logits (B, 1))`` of the last decoder layer."""
        decoder = self.detector.detr_decoder
        n = memory.shape[0]
        _, pos, _ = self._image_tokens()
        keys = memory + pos
        boxes, query_pos, bias, x = self._decoder_start()
        boxes, query_pos, bias, x = (boxes.expand(n, -1, -1), query_pos.expand(n, -1, -1),
                                     bias.expand(n, -1, -1, -1), x.expand(n, -1, -1))
        text_mask = None
        if prompt_mask is not None:
            text_mask = create_bidirectional_mask(config=decoder.config, inputs_embeds=x, attention_mask=prompt_mask,
                                                  encoder_hidden_states=prompt)
        for i, layer in enumerate(decoder.layers):
            if i:  # layer 0's self-attention is cached
                query_pos, bias = self._query_pos(boxes), self._box_bias(boxes)
                q = x + query_pos
                attended, _ = layer.self_attn(query=q, key=q, value=x)
                x = layer.self_attn_layer_norm(x + attended)
            attended, _ = layer.text_cross_attn(query=x + query_pos, key=prompt, value=prompt, attention_mask=text_mask)
            x = layer.text_cross_attn_layer_norm(x + attended)
            attended, _ = layer.vision_cross_attn(query=x + query_pos, key=keys, value=memory, attention_mask=bias)
            x = layer.vision_cross_attn_layer_norm(x + attended)
            x = layer.mlp_layer_norm(x + layer.mlp(x))
            queries = decoder.output_layer_norm(x[:, 1:])
            boxes = (decoder.box_head(queries) + inverse_sigmoid(boxes)).sigmoid()
        presence = decoder.presence_head(decoder.presence_layer_norm(x[:, :1])).squeeze(-1)
        limit = decoder.clamp_presence_logit_max_val
        return queries, boxes, presence.clamp(min=-limit, max=limit)

    # ------------------------------------------------------------------ mask decoder
    def _skip_convs(self) -> list[torch.Tensor]:
        """Per pixel-decoder stage: ``conv3x3(skip) + bias`` of its image-only FPN level, and the
        stage's subpixel kernels (once per image)."""
        def make():
            decoder = self.detector.mask_decoder.pixel_decoder
            out = []
            for conv, skip in zip(decoder.conv_layers, reversed(self.fpn[:-1])):
                out.append((conv(skip), subpixel_kernels(conv.weight)))
            return out
        return self._once("skips", make)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """The pixel decoder from the fused ``(B, D, h, w)`` map: ``(B, D, H, W)`` at the finest level."""
        decoder = self.detector.mask_decoder.pixel_decoder
        stages = list(zip(decoder.conv_layers, decoder.norms, reversed(self.fpn[:-1])))
        sizes = [tuple(x.shape[-2:])] + [tuple(skip.shape[-2:]) for *_, skip in stages]
        doubling = all(big == (2 * small[0], 2 * small[1]) for small, big in zip(sizes, sizes[1:]))
        cached = doubling and ("skips" in self._cache or x.shape[0] > 1)
        convs = self._skip_convs() if cached else None
        for k, (conv, norm, skip) in enumerate(stages):
            if cached:
                skip_conv, kernels = convs[k]
                x = upsample_conv3x3(x, kernels) + skip_conv
            else:
                x = conv(F.interpolate(x, size=skip.shape[-2:], mode="nearest") + skip)
            x = F.relu(norm(x))
        return x

    def _masks(self, queries, memory, prompt, prompt_mask) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pred_masks (B, Q, H, W), semantic_seg (B, 1, H, W))`` of the mask decoder."""
        head = self.detector.mask_decoder
        normed = head.prompt_cross_attn_norm(memory)
        mask = None
        if prompt_mask is not None:
            mask = create_bidirectional_mask(config=head.config, inputs_embeds=normed, encoder_hidden_states=prompt,
                                             attention_mask=prompt_mask)
        attended, _ = head.prompt_cross_attn(query=normed, key=prompt, value=prompt, attention_mask=mask)
        fused = memory + attended
        n, _, d = fused.shape
        _, _, (h, w) = self._image_tokens()
        pixels = self._pixels(fused[:, :h * w].transpose(1, 2).reshape(n, d, h, w))
        embedded = head.mask_embedder(queries)  # (B, Q, D)
        projection = head.instance_projection
        weight = projection.weight.flatten(1)  # (D_out, D_in)
        folded = embedded @ weight.to(embedded.dtype)
        masks = torch.einsum("bqc,bchw->bqhw", folded, pixels)
        if projection.bias is not None:
            masks = masks + (embedded @ projection.bias.to(embedded.dtype))[..., None, None]
        return masks, head.semantic_projection(pixels)
