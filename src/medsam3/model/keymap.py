"""Meta (``facebookresearch/sam3``) <-> transformers SAM3 weight names and tensors.

Meta's checkpoints (``sam3.pt``, Medical SAM3's ``checkpoint_2D.pt`` / ``checkpoint_3D.pt``)
hold the state dict of Meta's own module tree. transformers' :class:`~transformers.Sam3VideoModel`
holds the same weights under other names and, in a few places, in another tensor layout.
This module is the single description of that correspondence, in both directions. It is long (~600
lines) because it is a table: one rename rule per module family of SAM3.

How it is built: the transformers model of a given :class:`~transformers.Sam3VideoConfig`
is instantiated on the ``meta`` device (no memory, no weights), and every one of its
state-dict keys is traced back to the Meta tensor it comes from by the rename rules below.
All shapes, layer counts and MLP depths therefore come from the configuration, and the same
code maps the full-size model and the tiny test configuration.

Names use the layout of Meta's video checkpoint (``sam3.pt``): ``detector.*`` and
``tracker.*``. Image-model checkpoints (keys without ``detector.``, tracker under
``inst_interactive_predictor.model.``) are renamed into that layout first
(:func:`canonical_meta_key`).

Tensor operations (``Entry.op``), Meta -> transformers, and what the inverse does:

``copy``
    same tensor under a new name.
``split_qkv``
    Meta's fused attention input projection (ViT ``attn.qkv``, ``nn.MultiheadAttention``'s
    ``in_proj_weight`` / ``in_proj_bias``) is cut into three equal row blocks, in the order
    q, k, v. Inverse: concatenated again.
``drop_cls_row``
    the ViT ``pos_embed`` (1, 1 + N, C) carries a row for a class token in front; SAM3's ViT
    runs with ``retain_cls_token=False`` and never adds that row to a patch, so transformers
    stores only the N patch rows. Inverse: a row of zeros is put back in front (the original
    values of that row are not recoverable, and nothing reads them).
``transpose``
    the CLIP ``text_projection`` is a bare (width, proj) matrix used as ``x @ P`` in Meta's
    text encoder, an ``nn.Linear`` (proj, width) weight in transformers. Inverse: transposed back.
``stack_rows``
    the tracker prompt encoder's four ``point_embeddings.{0..3}.weight`` (1, C) embeddings
    are one ``point_embed.weight`` (4, C) table in transformers. Inverse: split into rows.
``fan_out``
    Meta's single random-Fourier-feature matrix ``pe_layer.positional_encoding_gaussian_matrix``
    (2, C/2) feeds two separate transformers buffers, ``shared_image_embedding.positional_embedding``
    (image positional encoding) and ``prompt_encoder.shared_embedding.positional_embedding``
    (point / box encoding). Inverse: the two must be equal (they are in every real model);
    a freshly initialised transformers model has two different random ones, which the
    inverse refuses.

Meta tensors without a transformers counterpart (:data:`META_ONLY`), dropped with a reason:

* ``*.trunk.blocks.N.attn.freqs_cis``: complex RoPE tables, a deterministic function of the
  configuration that transformers recomputes (non-persistent there).
* ``detector.geometry_encoder.points_{direct,pool,pos_enc}_project``: the point-prompt
  projections of Meta's geometry (exemplar) encoder. transformers' Sam3 detector accepts box
  exemplars only (points go through the tracker), so it has no such layers; they are unused
  for box and text prompts (132,352 parameters in the full-size model).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable, Iterable, Mapping

import torch

COPY = "copy"
SPLIT_QKV = "split_qkv"
DROP_CLS_ROW = "drop_cls_row"
TRANSPOSE = "transpose"
STACK_ROWS = "stack_rows"
FAN_OUT = "fan_out"

DETECTOR = "detector"
TRACKER = "tracker"

#: Meta tensors with no transformers counterpart: regex on the canonical key -> reason.
META_ONLY: dict[str, str] = {
    r"^detector\.backbone\.vision_backbone\.trunk\.blocks\.\d+\.attn\.freqs_cis$":
        "RoPE table (complex buffer): a function of the configuration, recomputed by transformers",
    r"^detector\.geometry_encoder\.points_(direct|pool|pos_enc)_project\.(weight|bias)$":
        "point-prompt projection of Meta's geometry encoder: transformers' Sam3 detector takes box "
        "exemplars only (points go to the tracker), so it has no such layer",
}

#: Meta buffers (not parameters) by canonical key, for the parameter totals.
META_BUFFERS = (
    re.compile(r"\.attn\.freqs_cis$"),
    re.compile(r"\.pe_layer\.positional_encoding_gaussian_matrix$"),
)

POS_EMBED_META = "detector.backbone.vision_backbone.trunk.pos_embed"
POS_EMBED_HF = "detector_model.vision_encoder.backbone.embeddings.position_embeddings"
TEXT_PROJ_META = "detector.backbone.language_backbone.encoder.text_projection"
TEXT_PROJ_HF = "detector_model.text_encoder.text_projection.weight"
POINT_EMBED_HF = "tracker_model.prompt_encoder.point_embed.weight"
POINT_EMBED_META = "tracker.sam_prompt_encoder.point_embeddings.{}.weight"
GAUSSIAN_META = "tracker.sam_prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"
GAUSSIAN_HF = ("tracker_model.shared_image_embedding.positional_embedding",
               "tracker_model.prompt_encoder.shared_embedding.positional_embedding")

# Attention leaf styles of a module: how q/k/v/output projections are stored on the Meta side.
QKV = "qkv"          # ViT: fused attn.qkv.{weight,bias}, output attn.proj
IN_PROJ = "in_proj"  # nn.MultiheadAttention: in_proj_{weight,bias}, out_proj
SEP = "sep"          # SAM-style attention: separate q_proj/k_proj/v_proj, out_proj
FF = "ff"            # SAM MLP: Meta layers.0..n-1 <-> transformers proj_in, layers.0..n-3, proj_out


@dataclass(frozen=True)
class _Rule:
    hf: re.Pattern
    meta: Callable[[dict[str, int]], str]
    style: str | None = None
    exact: bool = False  # a whole key, not a module prefix


def _pattern(template: str, exact: bool) -> re.Pattern:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if i % 2 == 0 else f"(?P<{p}>\\d+)" for i, p in enumerate(parts))
    return re.compile("^" + regex + ("$" if exact else ""))


def _rule(hf: str, meta: str | Callable[[dict[str, int]], str], style: str | None = None) -> _Rule:
    exact = not hf.endswith(".")
    fn = meta if callable(meta) else (lambda groups, template=meta: template.format(**groups))
    return _Rule(_pattern(hf, exact), fn, style, exact)


def _mlp_rules(hf_prefix: str, meta_prefix: str, depth: int = 8) -> list[_Rule]:
    """transformers ``{hf_prefix}layer1..n`` <-> Meta ``{meta_prefix}layers.0..n-1``."""
    return [_rule(f"{hf_prefix}layer{k}.", f"{meta_prefix}layers.{k - 1}.") for k in range(1, depth + 1)]


_D, _T = "detector_model.", "tracker_model."
_VIT_HF, _VIT_META = _D + "vision_encoder.backbone.", "detector.backbone.vision_backbone.trunk."
_TXT_HF, _TXT_META = _D + "text_encoder.text_model.", "detector.backbone.language_backbone.encoder."
_GEO_HF, _GEO_META = _D + "geometry_encoder.", "detector.geometry_encoder."
_ENC_HF, _ENC_META = _D + "detr_encoder.", "detector.transformer.encoder."
_DEC_HF, _DEC_META = _D + "detr_decoder.", "detector.transformer.decoder."
_MSK_HF, _MSK_META = _D + "mask_decoder.", "detector.segmentation_head."
_DOT_HF, _DOT_META = _D + "dot_product_scoring.", "detector.dot_prod_scoring."
_SMD_HF, _SMD_META = _T + "mask_decoder.", "tracker.sam_mask_decoder."
_PE_HF, _PE_META = _T + "prompt_encoder.", "tracker.sam_prompt_encoder."
_MA_HF, _MA_META = _T + "memory_attention.", "tracker.transformer.encoder."
_ME_HF, _ME_META = _T + "memory_encoder.", "tracker.maskmem_backbone."

# transformers -> Meta, first match wins (specific before generic). Module prefixes end
# with "."; the rest of the key is carried over (translated by the rule's attention style).
_RULES: list[_Rule] = [
    # --- ViT trunk ---------------------------------------------------------------
    _rule(_VIT_HF + "embeddings.patch_embeddings.projection.", _VIT_META + "patch_embed.proj."),
    _rule(_VIT_HF + "layer_norm.", _VIT_META + "ln_pre."),
    _rule(_VIT_HF + "layers.{i}.layer_norm1.", _VIT_META + "blocks.{i}.norm1."),
    _rule(_VIT_HF + "layers.{i}.layer_norm2.", _VIT_META + "blocks.{i}.norm2."),
    _rule(_VIT_HF + "layers.{i}.attention.", _VIT_META + "blocks.{i}.attn.", QKV),
    _rule(_VIT_HF + "layers.{i}.mlp.", _VIT_META + "blocks.{i}.mlp."),
    # --- FPN necks: detector (convs) and tracker (sam2_convs); scale_layers resolved below
    _rule(_D + "vision_encoder.neck.fpn_layers.{i}.", "detector.backbone.vision_backbone.convs.{i}.", "fpn"),
    _rule("tracker_neck.fpn_layers.{i}.", "detector.backbone.vision_backbone.sam2_convs.{i}.", "fpn"),
    # --- CLIP text encoder -------------------------------------------------------------
    _rule(_TXT_HF + "embeddings.token_embedding.", _TXT_META + "token_embedding."),
    _rule(_TXT_HF + "embeddings.position_embedding.weight", _TXT_META + "positional_embedding"),
    _rule(_TXT_HF + "encoder.layers.{i}.self_attn.", _TXT_META + "transformer.resblocks.{i}.attn.", IN_PROJ),
    _rule(_TXT_HF + "encoder.layers.{i}.layer_norm1.", _TXT_META + "transformer.resblocks.{i}.ln_1."),
    _rule(_TXT_HF + "encoder.layers.{i}.layer_norm2.", _TXT_META + "transformer.resblocks.{i}.ln_2."),
    _rule(_TXT_HF + "encoder.layers.{i}.mlp.fc1.", _TXT_META + "transformer.resblocks.{i}.mlp.c_fc."),
    _rule(_TXT_HF + "encoder.layers.{i}.mlp.fc2.", _TXT_META + "transformer.resblocks.{i}.mlp.c_proj."),
    _rule(_TXT_HF + "final_layer_norm.", _TXT_META + "ln_final."),
    _rule(_D + "text_projection.", "detector.backbone.language_backbone.resizer."),
    # --- geometry (exemplar) encoder ---------------------------------------------------------
    _rule(_GEO_HF + "layers.{i}.self_attn.", _GEO_META + "encode.{i}.self_attn.", IN_PROJ),
    _rule(_GEO_HF + "layers.{i}.cross_attn.", _GEO_META + "encode.{i}.cross_attn_image.", IN_PROJ),
    _rule(_GEO_HF + "layers.{i}.mlp.fc1.", _GEO_META + "encode.{i}.linear1."),
    _rule(_GEO_HF + "layers.{i}.mlp.fc2.", _GEO_META + "encode.{i}.linear2."),
    _rule(_GEO_HF + "layers.{i}.layer_norm{k}.", _GEO_META + "encode.{i}.norm{k}."),
    _rule(_GEO_HF + "vision_layer_norm.", _GEO_META + "img_pre_norm."),
    _rule(_GEO_HF + "prompt_layer_norm.", _GEO_META + "norm."),
    _rule(_GEO_HF + "output_layer_norm.", _GEO_META + "encode_norm."),
    _rule(_GEO_HF, _GEO_META),  # label_embed, cls_embed, boxes_*_project, final_proj
    # --- DETR encoder (fusion) ---------------------------------------------------------------
    _rule(_ENC_HF + "layers.{i}.self_attn.", _ENC_META + "layers.{i}.self_attn.", IN_PROJ),
    _rule(_ENC_HF + "layers.{i}.cross_attn.", _ENC_META + "layers.{i}.cross_attn_image.", IN_PROJ),
    _rule(_ENC_HF + "layers.{i}.mlp.fc1.", _ENC_META + "layers.{i}.linear1."),
    _rule(_ENC_HF + "layers.{i}.mlp.fc2.", _ENC_META + "layers.{i}.linear2."),
    _rule(_ENC_HF + "layers.{i}.layer_norm{k}.", _ENC_META + "layers.{i}.norm{k}."),
    # --- DETR decoder ------------------------------------------------------------------------
    _rule(_DEC_HF + "layers.{i}.self_attn.", _DEC_META + "layers.{i}.self_attn.", IN_PROJ),
    _rule(_DEC_HF + "layers.{i}.text_cross_attn.", _DEC_META + "layers.{i}.ca_text.", IN_PROJ),
    _rule(_DEC_HF + "layers.{i}.vision_cross_attn.", _DEC_META + "layers.{i}.cross_attn.", IN_PROJ),
    _rule(_DEC_HF + "layers.{i}.vision_cross_attn_layer_norm.", _DEC_META + "layers.{i}.norm1."),
    _rule(_DEC_HF + "layers.{i}.text_cross_attn_layer_norm.", _DEC_META + "layers.{i}.catext_norm."),
    _rule(_DEC_HF + "layers.{i}.self_attn_layer_norm.", _DEC_META + "layers.{i}.norm2."),
    _rule(_DEC_HF + "layers.{i}.mlp_layer_norm.", _DEC_META + "layers.{i}.norm3."),
    _rule(_DEC_HF + "layers.{i}.mlp.fc1.", _DEC_META + "layers.{i}.linear1."),
    _rule(_DEC_HF + "layers.{i}.mlp.fc2.", _DEC_META + "layers.{i}.linear2."),
    _rule(_DEC_HF + "output_layer_norm.", _DEC_META + "norm."),
    _rule(_DEC_HF + "presence_layer_norm.", _DEC_META + "presence_token_out_norm."),
    *_mlp_rules(_DEC_HF + "box_head.", _DEC_META + "bbox_embed."),
    *_mlp_rules(_DEC_HF + "instance_box_head.", _DEC_META + "instance_bbox_embed."),
    *_mlp_rules(_DEC_HF + "presence_head.", _DEC_META + "presence_token_head."),
    *_mlp_rules(_DEC_HF + "ref_point_head.", _DEC_META + "ref_point_head."),
    *_mlp_rules(_DEC_HF + "box_rpb_embed_x.", _DEC_META + "boxRPB_embed_x."),
    *_mlp_rules(_DEC_HF + "box_rpb_embed_y.", _DEC_META + "boxRPB_embed_y."),
    _rule(_DEC_HF, _DEC_META),  # query_embed, reference_points, presence_token
    # --- segmentation head -------------------------------------------------------------------
    _rule(_MSK_HF + "mask_embedder.", _MSK_META + "mask_predictor.mask_embed."),
    _rule(_MSK_HF + "instance_projection.", _MSK_META + "instance_seg_head."),
    _rule(_MSK_HF + "semantic_projection.", _MSK_META + "semantic_seg_head."),
    _rule(_MSK_HF + "prompt_cross_attn_norm.", _MSK_META + "cross_attn_norm."),
    _rule(_MSK_HF + "prompt_cross_attn.", _MSK_META + "cross_attend_prompt.", IN_PROJ),
    _rule(_MSK_HF, _MSK_META),  # pixel_decoder.{conv_layers,norms}
    # --- dot-product scoring -----------------------------------------------------------------
    *_mlp_rules(_DOT_HF + "text_mlp.", _DOT_META + "prompt_mlp."),
    _rule(_DOT_HF + "text_mlp_out_norm.", _DOT_META + "prompt_mlp.out_norm."),
    _rule(_DOT_HF + "text_proj.", _DOT_META + "prompt_proj."),
    _rule(_DOT_HF + "query_proj.", _DOT_META + "hs_proj."),
    # --- tracker: memory-bank embeddings and small projections ------------------------------------
    _rule(_T + "no_memory_embedding", "tracker.no_mem_embed"),
    _rule(_T + "no_memory_positional_encoding", "tracker.no_mem_pos_enc"),
    _rule(_T + "memory_temporal_positional_encoding", "tracker.maskmem_tpos_enc"),
    _rule(_T + "no_object_pointer", "tracker.no_obj_ptr"),
    _rule(_T + "occlusion_spatial_embedding_parameter", "tracker.no_obj_embed_spatial"),
    _rule(_T + "mask_downsample.", "tracker.mask_downsample."),
    _rule(_T + "object_pointer_proj.", "tracker.obj_ptr_proj.layers.", FF),
    _rule(_T + "temporal_positional_encoding_projection_layer.", "tracker.obj_ptr_tpos_proj."),
    # --- tracker: prompt encoder -------------------------------------------------------------
    _rule(_PE_HF + "mask_embed.conv1.", _PE_META + "mask_downscaling.0."),
    _rule(_PE_HF + "mask_embed.layer_norm1.", _PE_META + "mask_downscaling.1."),
    _rule(_PE_HF + "mask_embed.conv2.", _PE_META + "mask_downscaling.3."),
    _rule(_PE_HF + "mask_embed.layer_norm2.", _PE_META + "mask_downscaling.4."),
    _rule(_PE_HF + "mask_embed.conv3.", _PE_META + "mask_downscaling.6."),
    _rule(_PE_HF + "no_mask_embed.", _PE_META + "no_mask_embed."),
    _rule(_PE_HF + "not_a_point_embed.", _PE_META + "not_a_point_embed."),
    # --- tracker: SAM mask decoder -------------------------------------------------------------
    _rule(_SMD_HF + "transformer.layers.{i}.self_attn.", _SMD_META + "transformer.layers.{i}.self_attn.", SEP),
    _rule(_SMD_HF + "transformer.layers.{i}.cross_attn_token_to_image.",
          _SMD_META + "transformer.layers.{i}.cross_attn_token_to_image.", SEP),
    _rule(_SMD_HF + "transformer.layers.{i}.cross_attn_image_to_token.",
          _SMD_META + "transformer.layers.{i}.cross_attn_image_to_token.", SEP),
    _rule(_SMD_HF + "transformer.layers.{i}.layer_norm{k}.", _SMD_META + "transformer.layers.{i}.norm{k}."),
    _rule(_SMD_HF + "transformer.layers.{i}.mlp.proj_in.", _SMD_META + "transformer.layers.{i}.mlp.lin1."),
    _rule(_SMD_HF + "transformer.layers.{i}.mlp.proj_out.", _SMD_META + "transformer.layers.{i}.mlp.lin2."),
    _rule(_SMD_HF + "transformer.final_attn_token_to_image.", _SMD_META + "transformer.final_attn_token_to_image.",
          SEP),
    _rule(_SMD_HF + "transformer.layer_norm_final_attn.", _SMD_META + "transformer.norm_final_attn."),
    _rule(_SMD_HF + "upscale_conv1.", _SMD_META + "output_upscaling.0."),
    _rule(_SMD_HF + "upscale_layer_norm.", _SMD_META + "output_upscaling.1."),
    _rule(_SMD_HF + "upscale_conv2.", _SMD_META + "output_upscaling.3."),
    _rule(_SMD_HF + "output_hypernetworks_mlps.{i}.", _SMD_META + "output_hypernetworks_mlps.{i}.layers.", FF),
    _rule(_SMD_HF + "iou_prediction_head.", _SMD_META + "iou_prediction_head.layers.", FF),
    _rule(_SMD_HF + "pred_obj_score_head.", _SMD_META + "pred_obj_score_head.layers.", FF),
    _rule(_SMD_HF, _SMD_META),  # iou_token, mask_tokens, obj_score_token, conv_s0, conv_s1
    # --- tracker: memory attention -------------------------------------------------------------
    _rule(_MA_HF + "layers.{i}.self_attn.", _MA_META + "layers.{i}.self_attn.", SEP),
    _rule(_MA_HF + "layers.{i}.cross_attn_image.", _MA_META + "layers.{i}.cross_attn_image.", SEP),
    _rule(_MA_HF + "layers.{i}.layer_norm{k}.", _MA_META + "layers.{i}.norm{k}."),
    _rule(_MA_HF + "layers.{i}.", _MA_META + "layers.{i}."),  # linear1, linear2
    _rule(_MA_HF + "layer_norm.", _MA_META + "norm."),
    # --- tracker: memory encoder ---------------------------------------------------------------
    # Meta's mask_downsampler.encoder is one nn.Sequential of (conv, norm, act) x n + final conv.
    _rule(_ME_HF + "mask_downsampler.layers.{j}.conv.",
          lambda g: f"{_ME_META}mask_downsampler.encoder.{3 * g['j']}."),
    _rule(_ME_HF + "mask_downsampler.layers.{j}.layer_norm.",
          lambda g: f"{_ME_META}mask_downsampler.encoder.{3 * g['j'] + 1}."),
    _rule(_ME_HF + "mask_downsampler.final_conv.",
          lambda g: f"{_ME_META}mask_downsampler.encoder.{3 * g['_n_downsampler']}."),
    _rule(_ME_HF + "feature_projection.", _ME_META + "pix_feat_proj."),
    _rule(_ME_HF + "projection.", _ME_META + "out_proj."),
    _rule(_ME_HF + "memory_fuser.layers.{i}.scale", _ME_META + "fuser.layers.{i}.gamma"),
    _rule(_ME_HF + "memory_fuser.layers.{i}.depthwise_conv.", _ME_META + "fuser.layers.{i}.dwconv."),
    _rule(_ME_HF + "memory_fuser.layers.{i}.layer_norm.", _ME_META + "fuser.layers.{i}.norm."),
    _rule(_ME_HF + "memory_fuser.layers.{i}.pointwise_conv1.", _ME_META + "fuser.layers.{i}.pwconv1."),
    _rule(_ME_HF + "memory_fuser.layers.{i}.pointwise_conv2.", _ME_META + "fuser.layers.{i}.pwconv2."),
]


@dataclass(frozen=True)
class Entry:
    """One unit of the correspondence: Meta tensors <-> transformers tensors, and the op."""

    op: str
    meta_keys: tuple[str, ...]
    hf_keys: tuple[str, ...]
    meta_shapes: tuple[tuple[int, ...], ...]
    hf_shapes: tuple[tuple[int, ...], ...]

    @property
    def group(self) -> str:
        """``detector`` (Sam3Model) or ``tracker`` (tracker_model.* / tracker_neck.*)."""
        return DETECTOR if self.hf_keys[0].startswith("detector_model.") else TRACKER


@dataclass
class KeyMap:
    """The complete Meta <-> transformers correspondence for one configuration."""

    entries: list[Entry]
    hf_shapes: dict[str, tuple[int, ...]]
    hf_buffers: frozenset[str]
    meta_only_shapes: dict[str, tuple[tuple[int, ...], torch.dtype]]
    by_meta: dict[str, Entry] = field(init=False)
    by_hf: dict[str, Entry] = field(init=False)

    def __post_init__(self):
        self.by_meta = {k: e for e in self.entries for k in e.meta_keys}
        self.by_hf = {k: e for e in self.entries for k in e.hf_keys}

    def meta_shapes(self, groups: Iterable[str] = (DETECTOR, TRACKER)) -> dict[str, tuple[int, ...]]:
        """Meta key -> shape of every mapped Meta tensor (dropped Meta-only keys excluded)."""
        groups = set(groups)
        return {k: s for e in self.entries if e.group in groups for k, s in zip(e.meta_keys, e.meta_shapes)}

    def target_shapes(self, groups: Iterable[str] = (DETECTOR, TRACKER)) -> dict[str, tuple[int, ...]]:
        groups = set(groups)
        return {k: s for e in self.entries if e.group in groups for k, s in zip(e.hf_keys, e.hf_shapes)}


def meta_only_reason(meta_key: str) -> str | None:
    """Why a (canonical) Meta key has no transformers counterpart, or None if it should have one."""
    for pattern, reason in META_ONLY.items():
        if re.match(pattern, meta_key):
            return reason
    return None


def is_meta_buffer(meta_key: str) -> bool:
    return any(p.search(meta_key) for p in META_BUFFERS)


def canonical_meta_key(key: str, layout: str) -> str:
    """A Meta key in the video (``sam3.pt``) layout. ``layout`` is ``video`` or ``image``."""
    if layout == "video":
        return key
    if key.startswith("inst_interactive_predictor.model."):
        return "tracker." + key[len("inst_interactive_predictor.model."):]
    return "detector." + key


def image_layout_key(canonical: str) -> str:
    """The inverse of :func:`canonical_meta_key` for the image layout."""
    if canonical.startswith("tracker."):
        return "inst_interactive_predictor.model." + canonical[len("tracker."):]
    if canonical.startswith("detector."):
        return canonical[len("detector."):]
    raise ValueError(f"not a canonical Meta key: {canonical}")


# ---------------------------------------------------------------------------------------------
# Building the map from a configuration
# ---------------------------------------------------------------------------------------------

def _leaf_to_meta(style: str | None, leaf: str, ctx: "_Context", hf_prefix: str) -> tuple[str, int | None]:
    """Translate the part of a key after its module prefix. Returns (meta leaf, qkv part)."""
    if style in (QKV, IN_PROJ, SEP):
        m = re.match(r"^([qkv])_proj\.(weight|bias)$", leaf)
        if m:
            part = "qkv".index(m.group(1))
            if style == QKV:
                return f"qkv.{m.group(2)}", part
            if style == IN_PROJ:
                return f"in_proj_{m.group(2)}", part
            return leaf, None
        for out in ("o_proj.", "out_proj."):
            if leaf.startswith(out):
                return ("proj." if style == QKV else "out_proj.") + leaf[len(out):], None
        raise KeyError(leaf)
    if style == FF:
        n = ctx.ff_depth(hf_prefix)
        if leaf.startswith("proj_in."):
            return "0." + leaf[len("proj_in."):], None
        if leaf.startswith("proj_out."):
            return f"{n - 1}." + leaf[len("proj_out."):], None
        m = re.match(r"^layers\.(\d+)\.(.*)$", leaf)
        if m:
            return f"{int(m.group(1)) + 1}.{m.group(2)}", None
        raise KeyError(leaf)
    if style == "fpn":
        # scale_layers.0 is the first transposed conv (dconv_2x2_0 when a second one follows,
        # i.e. 4x upsampling, else dconv_2x2); scale_layers.2 is the second (after a GELU).
        m = re.match(r"^scale_layers\.(\d+)\.(.*)$", leaf)
        if m:
            index, rest = int(m.group(1)), m.group(2)
            two = ctx.has(hf_prefix + "scale_layers.2.weight")
            if index == 0:
                return ("dconv_2x2_0." if two else "dconv_2x2.") + rest, None
            if index == 2:
                return "dconv_2x2_1." + rest, None
            raise KeyError(leaf)
        for hf, meta in (("proj1.", "conv_1x1."), ("proj2.", "conv_3x3.")):
            if leaf.startswith(hf):
                return meta + leaf[len(hf):], None
        raise KeyError(leaf)
    return leaf, None


class _Context:
    """Facts about the target key set that some rules need (MLP depths, layer counts)."""

    def __init__(self, hf_keys: Iterable[str]):
        self.keys = set(hf_keys)
        self._ff: dict[str, int] = {}

    def has(self, key: str) -> bool:
        return key in self.keys

    def ff_depth(self, prefix: str) -> int:
        if prefix not in self._ff:
            middle = {int(m.group(1)) for k in self.keys if k.startswith(prefix)
                      for m in [re.match(re.escape(prefix) + r"layers\.(\d+)\.", k)] if m}
            self._ff[prefix] = 2 + len(middle)
        return self._ff[prefix]

    @property
    def n_downsampler(self) -> int:
        return len({m.group(1) for k in self.keys
                    for m in [re.match(r"^tracker_model\.memory_encoder\.mask_downsampler\.layers\.(\d+)\.conv\.", k)]
                    if m})


def hf_key_to_meta(hf_key: str, ctx: _Context) -> tuple[str, int | None]:
    """The Meta key (and q/k/v part for fused projections) that a transformers key comes from."""
    for rule in _RULES:
        m = rule.hf.match(hf_key)
        if not m:
            continue
        groups = {k: int(v) for k, v in m.groupdict().items()}
        groups["_n_downsampler"] = ctx.n_downsampler if "final_conv" in hf_key else 0
        meta_prefix = rule.meta(groups)
        if rule.exact:
            return meta_prefix, None
        leaf, part = _leaf_to_meta(rule.style, hf_key[m.end():], ctx, hf_key[: m.end()])
        return meta_prefix + leaf, part
    raise KeyError(f"no Meta counterpart known for transformers key {hf_key!r}")


def _entries(hf_shapes: Mapping[str, tuple[int, ...]]) -> list[Entry]:
    ctx = _Context(hf_shapes)
    entries: list[Entry] = []
    fused: dict[str, dict[int, str]] = {}
    order: list[str] = []
    seen_meta: dict[str, str] = {}

    def add(entry: Entry):
        for k in entry.meta_keys:
            if k in seen_meta:
                raise AssertionError(f"Meta key {k} claimed twice ({seen_meta[k]}, {entry.hf_keys[0]})")
            seen_meta[k] = entry.hf_keys[0]
        entries.append(entry)

    for key, shape in hf_shapes.items():
        if key == POS_EMBED_HF:
            b, n, c = shape
            add(Entry(DROP_CLS_ROW, (POS_EMBED_META,), (key,), ((b, n + 1, c),), (shape,)))
        elif key == TEXT_PROJ_HF:
            add(Entry(TRANSPOSE, (TEXT_PROJ_META,), (key,), ((shape[1], shape[0]),), (shape,)))
        elif key == POINT_EMBED_HF:
            n, c = shape
            add(Entry(STACK_ROWS, tuple(POINT_EMBED_META.format(i) for i in range(n)), (key,),
                      ((1, c),) * n, (shape,)))
        elif key in GAUSSIAN_HF:
            if key == GAUSSIAN_HF[0]:
                other = GAUSSIAN_HF[1]
                if hf_shapes.get(other) != shape:
                    raise AssertionError(f"{other} missing or of another shape than {key}")
                add(Entry(FAN_OUT, (GAUSSIAN_META,), GAUSSIAN_HF, (shape,), (shape, shape)))
        else:
            meta, part = hf_key_to_meta(key, ctx)
            if part is None:
                add(Entry(COPY, (meta,), (key,), (shape,), (shape,)))
            else:
                if meta not in fused:
                    fused[meta] = {}
                    order.append(meta)
                fused[meta][part] = key
    for meta in order:
        parts = fused[meta]
        if sorted(parts) != [0, 1, 2]:
            raise AssertionError(f"incomplete q/k/v set for {meta}: {parts}")
        keys = tuple(parts[i] for i in range(3))
        shapes = tuple(tuple(hf_shapes[k]) for k in keys)
        if len(set(shapes)) != 1:
            # fused projections need equal q/k/v blocks (true for every SAM3 fused module)
            raise AssertionError(f"unequal q/k/v shapes for {meta}: {shapes}")
        s = shapes[0]
        add(Entry(SPLIT_QKV, (meta,), keys, ((3 * s[0],) + tuple(s[1:]),), shapes))
    return entries


def _meta_only_shapes(config) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Shapes of the Meta-only tensors for a configuration (used to export test checkpoints)."""
    det = config.detector_config
    vit = det.vision_config.backbone_config
    grid = vit.image_size // vit.patch_size
    head_dim = vit.hidden_size // vit.num_attention_heads
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for i in range(vit.num_hidden_layers):
        tokens = grid * grid if i in vit.global_attn_indexes else vit.window_size ** 2
        out[f"{_VIT_META}blocks.{i}.attn.freqs_cis"] = ((tokens, head_dim // 2), torch.complex64)
    d = det.geometry_encoder_config.hidden_size
    for name, in_dim in (("direct", 2), ("pool", d), ("pos_enc", d)):
        out[f"{_GEO_META}points_{name}_project.weight"] = ((d, in_dim), torch.float32)
        out[f"{_GEO_META}points_{name}_project.bias"] = ((d,), torch.float32)
    return out


@lru_cache(maxsize=8)
def _build_cached(config_json: str) -> KeyMap:
    from transformers import Sam3VideoConfig, Sam3VideoModel

    config = Sam3VideoConfig.from_dict(__import__("json").loads(config_json))
    with torch.device("meta"):
        model = Sam3VideoModel(config)
    state = model.state_dict()
    hf_shapes = {k: tuple(v.shape) for k, v in state.items()}
    params = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    buffers = frozenset(k for k in hf_shapes if k not in params)
    return KeyMap(_entries(hf_shapes), hf_shapes, buffers, _meta_only_shapes(config))


def build_keymap(config) -> KeyMap:
    """The Meta <-> transformers map for a :class:`~transformers.Sam3VideoConfig` (cached)."""
    return _build_cached(config.to_json_string(use_diff=False))


# ---------------------------------------------------------------------------------------------
# Tensor operations
# ---------------------------------------------------------------------------------------------

def to_hf(entry: Entry, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Meta tensors of an entry -> its transformers tensors (views where possible)."""
    if entry.op == COPY:
        return [tensors[0]]
    if entry.op == SPLIT_QKV:
        return list(torch.chunk(tensors[0], 3, dim=0))
    if entry.op == DROP_CLS_ROW:
        return [tensors[0][:, 1:, :]]
    if entry.op == TRANSPOSE:
        return [tensors[0].t()]
    if entry.op == STACK_ROWS:
        return [torch.cat([t.reshape(1, -1) for t in tensors], dim=0)]
    if entry.op == FAN_OUT:
        return [tensors[0], tensors[0].clone()]
    raise ValueError(entry.op)


def to_meta(entry: Entry, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """transformers tensors of an entry -> its Meta tensors (the inverse of :func:`to_hf`)."""
    if entry.op == COPY:
        return [tensors[0]]
    if entry.op == SPLIT_QKV:
        return [torch.cat(tensors, dim=0)]
    if entry.op == DROP_CLS_ROW:
        t = tensors[0]
        return [torch.cat([torch.zeros_like(t[:, :1, :]), t], dim=1)]
    if entry.op == TRANSPOSE:
        return [tensors[0].t()]
    if entry.op == STACK_ROWS:
        return [row.reshape(1, -1) for row in tensors[0]]
    if entry.op == FAN_OUT:
        a, b = tensors
        if a.device.type != "meta" and not torch.equal(a, b):
            raise ValueError(f"{entry.hf_keys[0]} and {entry.hf_keys[1]} differ; Meta's layout has one "
                             f"matrix ({entry.meta_keys[0]}) for both")
        return [a]
    raise ValueError(entry.op)


def hf_to_meta_state_dict(state_dict: Mapping[str, torch.Tensor], config, layout: str = "video",
                          include_meta_only: bool = True) -> dict[str, torch.Tensor]:
    """Export a ``Sam3VideoModel`` state dict in Meta's naming (for tests and round trips).

    Args:
        state_dict: transformers keys; detector-only dicts are accepted (no tracker keys).
        config: the model's :class:`~transformers.Sam3VideoConfig`.
        layout: ``video`` (``detector.`` / ``tracker.``, as ``sam3.pt``) or ``image`` (no
            ``detector.`` prefix, tracker under ``inst_interactive_predictor.model.``).
        include_meta_only: also write the Meta-only tensors (RoPE tables as zeros, geometry
            point projections as zeros), so the file has Meta's full key set.
    """
    keymap = build_keymap(config)
    groups = {e.group for e in keymap.entries if all(k in state_dict for k in e.hf_keys)}
    out: dict[str, torch.Tensor] = {}
    for entry in keymap.entries:
        if entry.group not in groups:
            continue
        missing = [k for k in entry.hf_keys if k not in state_dict]
        if missing:
            raise KeyError(f"state dict lacks {missing}")
        for key, tensor in zip(entry.meta_keys, to_meta(entry, [state_dict[k] for k in entry.hf_keys])):
            out[key] = tensor.contiguous()
    if include_meta_only:
        for key, (shape, dtype) in keymap.meta_only_shapes.items():
            out[key] = torch.zeros(shape, dtype=dtype)
    if layout == "image":
        out = {image_layout_key(k): v for k, v in out.items()}
    elif layout != "video":
        raise ValueError(f"layout must be 'video' or 'image', not {layout!r}")
    return out
