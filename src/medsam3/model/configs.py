"""Named SAM3-architecture configurations, built from transformers' own config classes.

Every configuration is a :class:`transformers.Sam3VideoConfig` (detector + tracker), the
layout of the ``facebook/sam3`` checkpoint, so one model directory serves ``Sam3Model``
(text / exemplar prompts), ``Sam3TrackerModel`` (boxes / points) and the video classes.

Constraints of the transformers implementation that the small configs respect:
the input size equals the ViT ``image_size`` (position tables are precomputed), the FPN
feature sizes are 4x, 2x, 1x of ``image_size / 14``, the tracker's memory encoder outputs
64 channels and its hidden size is a multiple of 64 above 64.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import Sam3VideoConfig

from medsam3.errors import ArgumentError

PATCH_SIZE = 14

#: The epsilon of every LayerNorm in SAM3's ViT. Meta's ViT builds them as
#: ``nn.LayerNorm(eps=1e-5)`` (``sam3/model/vitdet.py``: ``norm_layer="LayerNorm"`` with eps 1e-5);
#: transformers' ``Sam3ViTConfig.layer_norm_eps`` defaults to 1e-6, and ``facebook/sam3``'s
#: config.json carries that value. Every other SAM3 LayerNorm uses 1e-5 on both sides.
VIT_LAYER_NORM_EPS = 1e-5


@dataclass(frozen=True)
class SizeSpec:
    """The knobs that distinguish our named configurations."""

    image_size: int
    vit_hidden: int
    vit_layers: int
    vit_heads: int
    text_hidden: int
    text_layers: int
    text_heads: int
    detr_hidden: int
    detr_layers: int
    detr_heads: int
    num_queries: int
    tracker_memory_layers: int
    description: str


#: ``default`` is the published SAM3 (840M detector + tracker at 1008 px); it is built by
#: transformers' defaults, the others are small random-initialised variants.
SIZES: dict[str, SizeSpec | None] = {
    "default": None,
    "tiny": SizeSpec(224, 64, 2, 2, 32, 1, 2, 128, 1, 2, 10, 1,
                     "tests: ~6.5M parameters (most of it the 49408-token text embedding), 224 px"),
    "small": SizeSpec(336, 256, 6, 4, 128, 2, 2, 128, 2, 4, 20, 2,
                      "CPU experiments: ~17M parameters, 336 px"),
    "demo": SizeSpec(336, 256, 6, 4, 64, 2, 2, 128, 2, 4, 20, 2,
                     "the bundled demo model: ~14.5M parameters (29 MB in half precision), 336 px"),
}


def config_names() -> list[str]:
    return list(SIZES)


def build_config(name: str = "default", image_size: int | None = None) -> Sam3VideoConfig:
    """The :class:`Sam3VideoConfig` of a named size.

    Args:
        name: one of :func:`config_names`.
        image_size: override of the input resolution in pixels (a multiple of 14).
    """
    if name not in SIZES:
        raise ArgumentError(f"unknown model configuration {name!r}; known: {', '.join(SIZES)}")
    spec = SIZES[name]
    if spec is None:
        config = Sam3VideoConfig()
        if image_size is not None:
            _check_image_size(image_size)
            config.image_size = image_size
        return with_meta_vit_eps(config)
    size = image_size or spec.image_size
    _check_image_size(size)
    grid = size // PATCH_SIZE
    d = spec.detr_hidden
    vision = {
        "model_type": "sam3_vision_model",
        "fpn_hidden_size": d,
        "backbone_feature_sizes": [[grid * 4, grid * 4], [grid * 2, grid * 2], [grid, grid]],
        "backbone_config": {
            "model_type": "sam3_vit_model",
            "hidden_size": spec.vit_hidden,
            "intermediate_size": spec.vit_hidden * 4,
            "num_hidden_layers": spec.vit_layers,
            "num_attention_heads": spec.vit_heads,
            "image_size": size,
            "pretrain_image_size": size,
            # windowed attention needs the grid to be a multiple of the window
            "window_size": grid // 2 if grid % 2 == 0 else grid,
            "global_attn_indexes": [spec.vit_layers - 1],
            "layer_norm_eps": VIT_LAYER_NORM_EPS,
        },
    }
    detector = {
        "vision_config": vision,
        "text_config": {
            "model_type": "clip_text_model",
            "vocab_size": 49408,
            "hidden_size": spec.text_hidden,
            "intermediate_size": spec.text_hidden * 4,
            "projection_dim": spec.text_hidden,
            "num_hidden_layers": spec.text_layers,
            "num_attention_heads": spec.text_heads,
            "max_position_embeddings": 32,
        },
        "geometry_encoder_config": {"hidden_size": d, "num_layers": 1, "num_attention_heads": spec.detr_heads,
                                    "intermediate_size": d * 2},
        "detr_encoder_config": {"hidden_size": d, "num_layers": spec.detr_layers,
                                "num_attention_heads": spec.detr_heads, "intermediate_size": d * 2},
        "detr_decoder_config": {"hidden_size": d, "num_layers": spec.detr_layers,
                                "num_attention_heads": spec.detr_heads, "intermediate_size": d * 2,
                                "num_queries": spec.num_queries},
        "mask_decoder_config": {"hidden_size": d, "num_attention_heads": spec.detr_heads},
    }
    tracker = {
        "vision_config": vision,
        "image_size": size,
        "prompt_encoder_config": {"hidden_size": d, "image_size": size, "patch_size": PATCH_SIZE},
        "mask_decoder_config": {"hidden_size": d, "mlp_dim": d * 2, "num_attention_heads": spec.detr_heads,
                                "iou_head_hidden_dim": d},
        "memory_attention_hidden_size": d,
        "memory_attention_num_layers": spec.tracker_memory_layers,
        "memory_attention_feed_forward_hidden_size": d * 2,
        "memory_attention_rope_feat_sizes": [grid, grid],
        "memory_encoder_hidden_size": d,
        "memory_encoder_output_channels": 64,
        "mask_downsampler_embed_dim": d,
        "memory_fuser_embed_dim": d,
        "memory_fuser_intermediate_dim": d * 2,
        "memory_fuser_num_layers": 1,
    }
    return Sam3VideoConfig(detector_config=detector, tracker_config=tracker, low_res_mask_size=grid * 4)


def with_meta_vit_eps(config: Sam3VideoConfig) -> Sam3VideoConfig:
    """``config`` with Meta's ViT LayerNorm epsilon (:data:`VIT_LAYER_NORM_EPS`) in the detector's
    and the tracker's ViT configuration (changed in place, and returned)."""
    for vision in (config.detector_config.vision_config, config.tracker_config.vision_config):
        vision.backbone_config.layer_norm_eps = VIT_LAYER_NORM_EPS
    return config


def set_meta_vit_eps(backbone) -> int:
    """Give every LayerNorm of a loaded ViT (``Sam3Model.vision_encoder.backbone``) Meta's epsilon,
    whatever its config.json says (``facebook/sam3`` says transformers' 1e-6). Returns how many."""
    import torch

    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.LayerNorm)]
    for norm in norms:
        norm.eps = VIT_LAYER_NORM_EPS
    backbone.config.layer_norm_eps = VIT_LAYER_NORM_EPS
    return len(norms)


def _check_image_size(size: int) -> None:
    if size <= 0 or size % PATCH_SIZE:
        raise ArgumentError(f"model input size {size} is not a positive multiple of the patch size {PATCH_SIZE}")
