"""Meta's side of the parity check (run by scripts/parity_meta.py inside Meta's own virtualenv).

Builds Meta's SAM3 image model (``sam3`` from PyPI, with its interactive predictor) on the CPU,
re-draws every parameter from a seeded normal distribution, saves the weights in the layout of
Meta's ``sam3.pt`` (``detector.*`` / ``tracker.*``, wrapped as ``{"model": state_dict}``), then runs
the given images and prompts through Meta's own processor and model and writes the tensors of
every stage boundary to a safetensors file. It imports nothing from medsam3.

Running Meta's package on a CPU needs a few device fixes (hard-coded ``device="cuda"``, a
``pin_memory()`` call): they are applied to a private copy of the package (``--work``), never to
the installed files.

Usage (see scripts/parity_meta.py):
    python parity_meta_reference.py --inputs inputs.safetensors --spec spec.json --work DIR \
        --checkpoint sam3.pt --out meta.safetensors [--size full|reduced]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import re
import shutil
import sys
import time
from pathlib import Path

# Device fixes: (file inside the sam3 package, regex, replacement, expected number of matches).
PATCHES = [
    ("model/position_encoding.py", r'device="cuda"', 'device="cpu"', 1),
    ("model/decoder.py", r'(_get_coords\(\s*feat_size, feat_size, )device="cuda"', r'\1device="cpu"', 1),
    ("model/vl_combiner.py", r'device="cuda"', 'device="cpu"', 2),
    ("model/sam3_image_processor.py", r'device="cuda"', 'device="cpu"', 1),
    ("model/geometry_encoders.py", r"\.pin_memory\(\)", "", 1),
]


def patched_package(work: Path) -> Path:
    """A private copy of the installed ``sam3`` package with the CPU fixes; returns its parent."""
    spec = importlib.util.find_spec("sam3")
    if spec is None or spec.origin is None:
        raise SystemExit("the 'sam3' package is not installed in this environment")
    source = Path(spec.origin).parent
    root = work / "meta-src"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(source, root / "sam3", ignore=shutil.ignore_patterns("__pycache__"))
    for name, pattern, replacement, count in PATCHES:
        path = root / "sam3" / name
        text = path.read_text()
        new, n = re.subn(pattern, replacement, text)
        if n != count:
            raise SystemExit(f"sam3 {name}: expected {count} match(es) of {pattern!r}, found {n}; "
                             "is this sam3 0.1.4?")
        path.write_text(new)
    return root


def bpe_path() -> str:
    import open_clip

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise SystemExit(f"CLIP BPE vocabulary not found at {path}")
    return str(path)


def randomise(model, seed: int) -> None:
    """Re-draw every parameter from a seeded normal: weights with std 1/sqrt(fan_in) (activations
    keep their scale through the depth), norm weights around 1 and norm biases around 0 (so a
    swapped weight/bias is visible), biases and free tensors (tokens, position tables,
    embeddings) small. Buffers (RoPE tables, the Fourier matrix) stay as Meta computes them."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    norms = set()
    for mname, module in model.named_modules():
        if isinstance(module, (torch.nn.LayerNorm, torch.nn.GroupNorm)) or type(module).__name__.endswith("Norm2d") \
                or type(module).__name__ == "LayerNorm2d":
            for pname, _ in module.named_parameters(recurse=False):
                norms.add(f"{mname}.{pname}" if mname else pname)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if name in norms:
                value = (1.0 if name.endswith("weight") else 0.0) + 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith("text_projection"):  # a bare (width, proj) matrix used as x @ P
                value = torch.randn(shape, generator=gen) / math.sqrt(shape[0])
            elif p.ndim >= 2 and (name.endswith("weight") or name.endswith("in_proj_weight")):
                fan_in = shape[1] * math.prod(shape[2:])
                value = torch.randn(shape, generator=gen) / math.sqrt(fan_in)
            elif name.endswith("gamma") or name.endswith(".scale"):  # layer scales (1e-6 at init)
                value = 0.5 + 0.1 * torch.randn(shape, generator=gen)
            elif name.endswith("bias"):
                value = 0.02 * torch.randn(shape, generator=gen)
            else:  # tokens, query embeddings, position tables, embeddings
                value = 0.5 * torch.randn(shape, generator=gen)
            p.copy_(value.to(p.dtype))
        for name, b in model.named_buffers():
            if (b.is_floating_point() or b.is_complex()) and torch.isnan(b).any():  # -inf: causal masks
                raise SystemExit(f"buffer {name} holds NaN after building the model")


#: ``reduced``: Meta's own builder with a narrower, shallower ViT and text encoder (the
#: expensive parts on a CPU); everything else (1008 px input, 24 x 24 position table tiled to
#: 72 x 72, windowed + global RoPE attention, FPN necks, DETR encoder/decoder, heads, tracker)
#: is the published model. scripts/parity_meta.py builds the matching transformers config.
REDUCED = {"vit_dim": 128, "vit_depth": 4, "vit_heads": 4, "vit_global": (1, 3),
           "text_width": 128, "text_heads": 4, "text_layers": 2}


def build(size: str, bpe: str):
    import sam3.model_builder as mb

    if size == "reduced":
        from sam3.model.text_encoder_ve import VETextEncoder
        from sam3.model.tokenizer_ve import SimpleTokenizer
        from sam3.model.vitdet import ViT

        def vit(compile_mode=None):  # _create_vit_backbone's arguments, narrower and shallower
            return ViT(img_size=1008, pretrain_img_size=336, patch_size=14, embed_dim=REDUCED["vit_dim"],
                       depth=REDUCED["vit_depth"], num_heads=REDUCED["vit_heads"], mlp_ratio=4.625,
                       norm_layer="LayerNorm", drop_path_rate=0.1, qkv_bias=True, use_abs_pos=True,
                       tile_abs_pos=True, global_att_blocks=REDUCED["vit_global"], rel_pos_blocks=(),
                       use_rope=True, use_interp_rope=True, window_size=24, pretrain_use_cls_token=True,
                       retain_cls_token=False, ln_pre=True, ln_post=False, return_interm_layers=False,
                       bias_patch_embed=False, compile_mode=compile_mode)

        def text(bpe_path):
            return VETextEncoder(tokenizer=SimpleTokenizer(bpe_path=bpe_path), d_model=256,
                                 width=REDUCED["text_width"], heads=REDUCED["text_heads"],
                                 layers=REDUCED["text_layers"])

        mb._create_vit_backbone, mb._create_text_encoder = vit, text
    elif size != "full":
        raise SystemExit(f"unknown size {size!r}: full or reduced")
    return mb.build_sam3_image_model(bpe_path=bpe, device="cpu", eval_mode=True, checkpoint_path=None,
                                     load_from_HF=False, enable_segmentation=True, enable_inst_interactivity=True)


def sam3_pt_state(model) -> dict:
    """The image model's state dict in the layout of Meta's ``sam3.pt`` (the inverse of the
    renaming Meta's ``_load_checkpoint`` does)."""
    tracker = "inst_interactive_predictor.model."
    out = {}
    for key, value in model.state_dict().items():
        name = "tracker." + key[len(tracker):] if key.startswith(tracker) else "detector." + key
        out[name] = value.detach().clone().contiguous()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", required=True, help="safetensors: uint8 RGB images 'image/NAME' (H, W, 3)")
    parser.add_argument("--spec", required=True, help="JSON: prompts, box prompts, seed")
    parser.add_argument("--work", required=True, help="scratch directory (patched package copy)")
    parser.add_argument("--checkpoint", required=True, help="where to write the sam3.pt-layout checkpoint")
    parser.add_argument("--out", required=True, help="safetensors file of stage tensors")
    parser.add_argument("--size", default="full")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args(argv)

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(patched_package(work)))
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    if args.threads:
        torch.set_num_threads(args.threads)
    import sam3

    assert Path(sam3.__file__).is_relative_to(work), sam3.__file__  # the patched copy
    from sam3.model import box_ops
    from sam3.model.sam3_image_processor import Sam3Processor

    spec = json.loads(Path(args.spec).read_text())
    t0 = time.monotonic()
    torch.manual_seed(spec["seed"])
    model = build(args.size, bpe_path())
    randomise(model, spec["seed"])
    model.eval()
    state = sam3_pt_state(model)
    torch.save({"model": state, "epoch": 0}, args.checkpoint)
    print(f"meta: built and saved {len(state)} tensors in {time.monotonic() - t0:.0f}s", flush=True)

    out: dict[str, torch.Tensor] = {}
    trunk = model.backbone.vision_backbone.trunk
    captured = {}
    trunk.ln_pre.register_forward_hook(lambda m, i, o: captured.__setitem__("ln_pre", o))
    trunk.register_forward_hook(lambda m, i, o: captured.__setitem__("vit", o[-1]))
    model.geometry_encoder.register_forward_hook(lambda m, i, o: captured.__setitem__("geometry", o))

    def put(name, tensor):
        out[name] = tensor.detach().float().cpu().contiguous()

    processor = Sam3Processor(model, resolution=1008, device="cpu", confidence_threshold=spec["score_threshold"])
    images = load_file(args.inputs)
    with torch.inference_mode():
        for image_name in spec["images"]:
            t1 = time.monotonic()
            rgb = images[f"image/{image_name}"].numpy()
            pre = f"{image_name}/"
            # Meta's processor, step by step, to keep the pixel tensor
            pixels = processor.transform(torch.from_numpy(rgb).permute(2, 0, 1)).unsqueeze(0)
            put(pre + "pixel_values", pixels)
            state_ = processor.set_image(torch.from_numpy(rgb).permute(2, 0, 1))
            backbone = state_["backbone_out"]
            put(pre + "vit_ln_pre", captured["ln_pre"].permute(0, 3, 1, 2))
            put(pre + "vit", captured["vit"])
            for i, t in enumerate(backbone["backbone_fpn"]):
                put(pre + f"fpn.{i}", t)
            for i, t in enumerate(backbone["vision_pos_enc"]):
                put(pre + f"fpn_pos.{i}", t)
            sam2 = backbone["sam2_backbone_out"]
            for i, t in enumerate(sam2["backbone_fpn"]):  # conv_s0 / conv_s1 applied to levels 0, 1
                put(pre + f"tracker_fpn.{i}", t)
            print(f"meta: {image_name} image encoded in {time.monotonic() - t1:.0f}s", flush=True)

            queries = [(f"text:{p}", p, None) for p in spec["prompts"]]
            for j, (text, box) in enumerate(spec["box_prompts"][image_name]):
                queries.append((f"box{j}:{text}", text, box))
            h, w = rgb.shape[:2]
            for qname, text, box in queries:
                processor.reset_all_prompts(state_)
                q = pre + qname + "/"
                text_out = model.backbone.forward_text([text], device="cpu")
                state_["backbone_out"].update(text_out)
                put(q + "text_features", text_out["language_features"].transpose(0, 1))  # (B, L, C)
                put(q + "text_mask", (~text_out["language_mask"]).float())               # 1 = valid token
                geometric = model._get_dummy_prompt()
                if box is not None:
                    x0, y0, x1, y1 = box
                    cxcywh = torch.tensor([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
                    geometric.append_boxes(cxcywh.view(1, 1, 4), torch.tensor([True]).view(1, 1))
                state_["geometric_prompt"] = geometric
                result = model.forward_grounding(backbone_out=state_["backbone_out"], find_input=processor.find_stage,
                                                 geometric_prompt=geometric, find_target=None)
                geo_feats, geo_mask = captured["geometry"]
                put(q + "geometry_features", geo_feats.transpose(0, 1))
                encoder_out = result["prev_encoder_out"]["encoder_out"]
                put(q + "detr_encoder", encoder_out["encoder_hidden_states"].transpose(0, 1))  # (B, HW, C)
                put(q + "detr_encoder_text", encoder_out["prompt_after_enc"].transpose(0, 1))
                put(q + "decoder_queries", result["queries"])
                put(q + "pred_logits", result["pred_logits"][..., 0])
                put(q + "presence_logit", result["presence_logit_dec"].reshape(-1))
                put(q + "pred_boxes", result["pred_boxes"])  # cx, cy, w, h normalised
                put(q + "pred_masks", result["pred_masks"])
                put(q + "semantic_seg", result["semantic_seg"])
                # Meta's own post-processing (Sam3Processor._forward_grounding): upsample logits to
                # the original size, sigmoid, > 0.5; scores = sigmoid(logit) * sigmoid(presence).
                scores = (result["pred_logits"].sigmoid() * result["presence_logit_dec"].sigmoid().unsqueeze(1))
                put(q + "scores", scores[..., 0])
                masks = torch.nn.functional.interpolate(result["pred_masks"], (h, w), mode="bilinear",
                                                        align_corners=False).sigmoid() > 0.5
                put(q + "masks", masks)
                put(q + "boxes_xyxy", box_ops.box_cxcywh_to_xyxy(result["pred_boxes"])
                    * torch.tensor([w, h, w, h], dtype=torch.float32))
                semantic = torch.nn.functional.interpolate(result["semantic_seg"], (h, w), mode="bilinear",
                                                           align_corners=False).sigmoid() > 0.5
                put(q + "semantic_mask", semantic)

            for j, box in enumerate(spec["interactive_boxes"][image_name]):
                q = pre + f"interactive{j}/"
                masks, iou, low_res = model.predict_inst(state_, box=np.asarray(box, dtype=np.float32),
                                                         multimask_output=False, return_logits=True)
                put(q + "low_res_masks", torch.as_tensor(low_res))
                put(q + "iou", torch.as_tensor(iou))
                put(q + "masks", torch.as_tensor(masks) > 0)
            print(f"meta: {image_name} done in {time.monotonic() - t1:.0f}s", flush=True)
    save_file(out, args.out)
    print(f"meta: wrote {len(out)} tensors in {time.monotonic() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
