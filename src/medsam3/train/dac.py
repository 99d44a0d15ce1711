"""SAM3's one-to-many training queries (DAC-DETR) on transformers' DETR decoder.

Meta trains SAM3 with ``dac=True``: in training its decoder runs a second copy of the learned
queries (same embeddings, same reference boxes) next to the one-to-one queries. The copies
skip self-attention (they neither attend nor are attended to; the presence token joins the
one-to-one queries only) but share every other block - the self-attention layer norm, text and
image cross-attention, the MLP, box refinement - and the scoring and mask heads. Their outputs
are trained with one-to-many matching (:class:`medsam3.train.losses.SetCriterion`'s ``o2m_*``
terms); inference uses the one-to-one queries only, so the model's weights are unchanged.

transformers' ``Sam3DetrDecoder`` has no such mode; :func:`dac_decoder_forward` is its forward
with the copies added (the arithmetic of each block is transformers', the DAC arrangement is
Meta's ``TransformerDecoderLayer.forward(dac=True, dac_use_selfatt_ln=True)``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.sam3.modeling_sam3 import Sam3DETRDecoderOutput, inverse_sigmoid


def _dac_layer(layer, hidden_states, query_pos, num_o2o, text_features, vision_features, vision_pos_encoding,
               text_cross_attn_mask=None, vision_cross_attn_mask=None, **kwargs):
    """One ``Sam3DetrDecoderLayer`` on ``[presence, o2o queries, o2m queries]`` ``(B, 1 + 2Q, D)``."""
    query_pos = F.pad(query_pos, (0, 0, 1, 0), mode="constant", value=0)  # the presence token's slot

    # self-attention among the presence token and the one-to-one queries only
    head, head_pos = hidden_states[:, :1 + num_o2o], query_pos[:, :1 + num_o2o]
    query_with_pos = head + head_pos
    attn_output, _ = layer.self_attn(query=query_with_pos, key=query_with_pos, value=head, attention_mask=None,
                                     **kwargs)
    head = head + layer.self_attn_dropout(attn_output)
    hidden_states = layer.self_attn_layer_norm(torch.cat([head, hidden_states[:, 1 + num_o2o:]], dim=1))

    residual = hidden_states
    attn_output, _ = layer.text_cross_attn(query=hidden_states + query_pos, key=text_features, value=text_features,
                                           attention_mask=text_cross_attn_mask, **kwargs)
    hidden_states = layer.text_cross_attn_layer_norm(residual + layer.text_cross_attn_dropout(attn_output))

    residual = hidden_states
    attn_output, _ = layer.vision_cross_attn(query=hidden_states + query_pos,
                                             key=vision_features + vision_pos_encoding, value=vision_features,
                                             attention_mask=vision_cross_attn_mask, **kwargs)
    hidden_states = layer.vision_cross_attn_layer_norm(residual + layer.vision_cross_attn_dropout(attn_output))

    residual = hidden_states
    hidden_states = layer.mlp_layer_norm(residual + layer.mlp_dropout(layer.mlp(hidden_states)))
    return hidden_states


def dac_decoder_forward(decoder, vision_features, text_features, vision_pos_encoding, text_mask=None,
                        spatial_shapes=None, **kwargs) -> Sam3DETRDecoderOutput:
    """``Sam3DetrDecoder.forward`` with ``2Q`` queries: ``[:Q]`` one-to-one, ``[Q:]`` one-to-many.

    Returns the decoder's usual output with ``2Q`` queries in ``intermediate_hidden_states``
    ``(L, B, 2Q, D)`` and ``reference_boxes`` ``(L, B, 2Q, 4)``; ``presence_logits`` ``(L, B)``.
    """
    batch_size = vision_features.shape[0]
    num_o2o = decoder.query_embed.weight.shape[0]
    query_embeds = decoder.query_embed.weight.unsqueeze(0).expand(batch_size, -1, -1).repeat(1, 2, 1)
    reference_boxes = decoder.reference_points.weight.unsqueeze(0).expand(batch_size, -1, -1).repeat(1, 2, 1)
    reference_boxes = reference_boxes.sigmoid()
    presence_token = decoder.presence_token.weight.unsqueeze(0).expand(batch_size, -1, -1)
    hidden_states = torch.cat([presence_token, query_embeds], dim=1)

    text_cross_attn_mask = None
    if text_mask is not None:
        text_cross_attn_mask = create_bidirectional_mask(config=decoder.config, inputs_embeds=hidden_states,
                                                         attention_mask=text_mask,
                                                         encoder_hidden_states=text_features)
    intermediate, boxes, presences = [], [reference_boxes], []
    for layer in decoder.layers:
        query_sine_embed = decoder.position_encoding.encode_boxes(reference_boxes)
        query_pos = decoder.ref_point_head(query_sine_embed)
        vision_cross_attn_mask = None
        if spatial_shapes is not None and spatial_shapes.shape[0] == 1:
            rpb = decoder._get_rpb_matrix(reference_boxes, (spatial_shapes[0, 0], spatial_shapes[0, 1]))
            vision_cross_attn_mask = F.pad(rpb, (0, 0, 1, 0), mode="constant", value=0)
        hidden_states = _dac_layer(layer, hidden_states, query_pos, num_o2o, text_features, vision_features,
                                   vision_pos_encoding, text_cross_attn_mask, vision_cross_attn_mask, **kwargs)
        queries = decoder.output_layer_norm(hidden_states[:, 1:])
        new_boxes = (decoder.box_head(queries) + inverse_sigmoid(reference_boxes)).sigmoid()
        reference_boxes = new_boxes.detach()
        intermediate.append(queries)
        boxes.append(new_boxes)
        presence = decoder.presence_head(decoder.presence_layer_norm(hidden_states[:, :1])).squeeze(-1)
        presences.append(presence.clamp(-decoder.clamp_presence_logit_max_val, decoder.clamp_presence_logit_max_val))
    return Sam3DETRDecoderOutput(intermediate_hidden_states=torch.stack(intermediate),
                                 reference_boxes=torch.stack(boxes[:-1]),
                                 presence_logits=torch.stack(presences))
