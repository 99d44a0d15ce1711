"""Output parity of medsam3 with Meta's own SAM3 code, stage by stage, in one command.

    python scripts/parity_meta.py [--meta-venv DIR] [--work DIR] [--json FILE]

1. Meta's side runs in its own virtualenv (Meta's ``sam3`` pins numpy < 2.4, so it never goes
   into ours): ``--meta-venv`` or ``$MEDSAM3_META_VENV``, else ``.venv-meta/`` in the repository,
   created from PyPI when absent (sam3 0.1.4, the torch version medsam3 runs with, psutil,
   open-clip-torch for the CLIP BPE file, safetensors).
   ``scripts/parity_meta_reference.py`` builds Meta's image model with its interactive
   predictor at the published full size on the CPU, re-draws every parameter from a seeded
   normal, saves it as a trainer checkpoint in ``sam3.pt``'s layout and dumps the tensors of
   every stage boundary for the inputs below (safetensors; nothing is pickled).
2. Our side: ``medsam3 convert`` the checkpoint, ``MedSAM3.from_pretrained`` the directory, run
   the same inputs through :class:`medsam3.predict.ImagePredictor` and compare.

Inputs: a real CT slice (pydicom's ``CT_small.dcm``, soft-tissue window) and a real RGB image
(ITK's ``VisibleWomanHeadSlice.png`` when installed, else pydicom's ``US1_UNCR.dcm``
ultrasound), both as the uint8 RGB image Meta's processor takes; three text prompts, one
exemplar-box prompt through the detector and one box through the interactive predictor.
Each side preprocesses the image itself (the ``pixel_values`` row); every later stage is fed
Meta's pixel tensor, so a preprocessing difference does not hide or excuse a model difference.

Prints one table (stage, max abs diff, scale = max |Meta|, relative = diff / scale,
tolerance, pass) and exits 1 when any stage is outside its tolerance.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
META_SCRIPT = Path(__file__).resolve().parent / "parity_meta_reference.py"
META_PACKAGES = ["sam3==0.1.4", "psutil", "open-clip-torch", "safetensors"]
SEED = 0
PROMPTS = ["liver", "left kidney", "bone"]
CT_BOX = [30, 40, 90, 100]  # x0, y0, x1, y1 pixels of the 128 x 128 slice
RGB_BOX = [40, 50, 110, 130]

#: Tolerances, fp32 on CPU: relative = max |ours - Meta| / max |Meta| for float stages; for
#: binary masks the fraction of pixels that differ. Two implementations of the same arithmetic
#: differ by summation order only: ~1e-6 relative per op, a few 1e-5 after the 32-block ViT.
TOLERANCES = {
    # absolute, in the model's [-1, 1] units: one uint8 step. Meta's processor resizes the uint8
    # image and rounds to uint8 again; ours resizes in floating point (docs/parity.md).
    "pixel_values": 2 / 255 + 1e-5,
    "vit_ln_pre": 1e-5,
    "vit": 1e-4,
    "fpn": 1e-4,
    "fpn_pos": 1e-6,
    "tracker_fpn": 1e-4,
    "text_features": 1e-5,
    "geometry_features": 1e-4,
    "detr_encoder": 1e-4,
    "detr_encoder_text": 1e-4,
    "decoder_queries": 1e-4,
    "pred_logits": 1e-4,
    "presence_logit": 1e-4,
    "pred_boxes": 1e-4,
    "pred_masks": 1e-4,
    "semantic_seg": 1e-4,
    "scores": 1e-4,
    "masks": 1e-3,
    "semantic_mask": 1e-3,
    "presence_score": 1e-4,
    "low_res_masks": 1e-4,
    "iou": 1e-4,
}


#: Stages whose tolerance bounds the max abs diff itself (the "relative" column shows it too).
ABSOLUTE = {"pixel_values"}


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Meta's virtualenv
# ---------------------------------------------------------------------------------------------

def meta_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_meta_venv(venv: Path) -> Path:
    """The Meta virtualenv's python; the venv is created (and its packages installed) if absent."""
    python = meta_python(venv)
    check = [str(python), "-c", "import sam3, open_clip, psutil, safetensors, torch"]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    import torch

    log(f"parity: creating Meta's virtualenv in {venv} (sam3 0.1.4 from PyPI)")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    torch_pin = f"torch=={torch.__version__.split('+')[0]}"  # the same CPU kernels on both sides
    subprocess.run([str(python), "-m", "pip", "install", "-q", torch_pin, *META_PACKAGES], check=True)
    subprocess.run(check, check=True)
    return python


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------

def _uint8_rgb(image):
    import numpy as np

    image = np.squeeze(np.asarray(image, dtype=np.float32))
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


def reduced_config():
    """The transformers configuration of Meta's ``reduced`` build (parity_meta_reference.REDUCED):
    the published SAM3 with a 4-block, 128-wide ViT and a 2-layer, 128-wide text encoder."""
    from medsam3.model.configs import build_config

    config = build_config("default")
    for vision in (config.detector_config.vision_config, config.tracker_config.vision_config):
        vit = vision.backbone_config
        vit.hidden_size, vit.intermediate_size = 128, int(128 * 4.625)
        vit.num_hidden_layers, vit.num_attention_heads, vit.global_attn_indexes = 4, 4, [1, 3]
    text = config.detector_config.text_config
    text.hidden_size, text.intermediate_size, text.num_attention_heads, text.num_hidden_layers = 128, 512, 4, 2
    return config


def prepare_inputs(work: Path, size: str) -> tuple[dict, dict]:
    """The uint8 RGB images (name -> (H, W, 3)) and the spec both sides run."""
    from pydicom.data import get_testdata_file

    from medsam3.io import read_image
    from medsam3.preprocess import normalize_intensity

    ct = normalize_intensity(read_image(get_testdata_file("CT_small.dcm")))  # CT: soft-tissue window
    itk = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data/VisibleWomanHeadSlice.png")
    rgb_source = str(itk) if itk.is_file() else get_testdata_file("US1_UNCR.dcm")
    rgb = normalize_intensity(read_image(rgb_source))
    images = {"ct": _uint8_rgb(ct), "rgb": _uint8_rgb(rgb)}
    spec = {
        "seed": SEED, "size": size, "score_threshold": 0.5, "images": list(images),
        "prompts": PROMPTS if size == "full" else PROMPTS[:1],
        "sources": {"ct": "pydicom CT_small.dcm", "rgb": rgb_source},
        "box_prompts": {"ct": [["visual", CT_BOX]], "rgb": [["visual", RGB_BOX]]},
        "interactive_boxes": {"ct": [CT_BOX], "rgb": [RGB_BOX]},
    }
    return images, spec


# ---------------------------------------------------------------------------------------------
# Meta's side
# ---------------------------------------------------------------------------------------------

def run_meta(python: Path, work: Path, images: dict, spec: dict, threads: int) -> tuple[Path, Path]:
    """Run Meta's side once per (inputs, spec, script); reuse its results otherwise."""
    import torch
    from safetensors.torch import save_file

    inputs = work / "inputs.safetensors"
    save_file({f"image/{k}": torch.from_numpy(v) for k, v in images.items()}, str(inputs))
    (work / "spec.json").write_text(json.dumps(spec, indent=1))
    digest = hashlib.sha256(inputs.read_bytes() + json.dumps(spec, sort_keys=True).encode()
                            + META_SCRIPT.read_bytes()).hexdigest()[:16]
    checkpoint, out, stamp = work / "sam3.pt", work / "meta.safetensors", work / "meta.done"
    if stamp.is_file() and stamp.read_text() == digest and checkpoint.is_file() and out.is_file():
        log(f"parity: reusing Meta's results in {work}")
        return checkpoint, out
    cmd = [str(python), str(META_SCRIPT), "--inputs", str(inputs), "--spec", str(work / "spec.json"),
           "--work", str(work / "meta-work"), "--checkpoint", str(checkpoint), "--out", str(out),
           "--threads", str(threads), "--size", spec["size"]]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("PYTHONPATH", None)  # nothing of ours on Meta's side
    subprocess.run(cmd, check=True, env=env)
    stamp.write_text(digest)
    return checkpoint, out


# ---------------------------------------------------------------------------------------------
# Our side
# ---------------------------------------------------------------------------------------------

def run_ours(model_dir: Path, images: dict, spec: dict, meta: dict) -> dict:
    """Our stage tensors, named as Meta's side names them."""
    import numpy as np
    import torch

    from medsam3.model import MedSAM3
    from medsam3.predict import ImagePredictor, TextPrompt

    model = MedSAM3.from_pretrained(str(model_dir), device="cpu")
    predictor = ImagePredictor(model, score_threshold=spec["score_threshold"])
    # the stage tensors are read by hooks on whole modules, which only Sam3Model.forward calls
    # ("stock"); the outputs compared come from the predictor's default (cached) prompt path
    staged = ImagePredictor(model, score_threshold=spec["score_threshold"], prompt_path="stock")
    detector = model.detector
    captured = {}

    def capture(name):
        return lambda module, args, output: captured.__setitem__(name, output)

    detector.vision_encoder.backbone.layer_norm.register_forward_hook(capture("ln_pre"))
    detector.geometry_encoder.register_forward_hook(capture("geometry"))
    detector.detr_encoder.register_forward_hook(capture("encoder"))
    detector.detr_decoder.register_forward_hook(capture("decoder"))
    ours: dict[str, torch.Tensor] = {}

    def put(name, tensor):
        ours[name] = tensor.detach().float().cpu()

    with torch.inference_mode():
        for name in spec["images"]:
            pre = f"{name}/"
            rgb = images[name].astype(np.float32) / 255.0
            put(pre + "pixel_values", predictor.preprocess(rgb))
            # every later stage from Meta's pixel tensor
            predictor.set_pixel_values(meta[pre + "pixel_values"], rgb.shape[:2])
            features = predictor._features
            staged.set_pixel_values(meta[pre + "pixel_values"], rgb.shape[:2], features=features)
            grid = meta[pre + "pixel_values"].shape[-1] // 14
            to_map = lambda t: t.reshape(t.shape[0], grid, grid, -1).permute(0, 3, 1, 2)  # noqa: E731
            put(pre + "vit_ln_pre", to_map(captured["ln_pre"]))
            put(pre + "vit", to_map(features.last_hidden_state))
            for i in range(3):
                put(pre + f"fpn.{i}", features.fpn_hidden_states[i])
                put(pre + f"fpn_pos.{i}", features.fpn_position_encoding[i])
            tracker_fpn = predictor._tracker_image_embeddings()
            tracker = model.tracker
            for i, t in enumerate(tracker_fpn):
                if i == len(tracker_fpn) - 1:  # Meta adds no_mem_embed later, in predict_inst
                    t = t - tracker.no_memory_embedding.view(1, -1, 1, 1)
                put(pre + f"tracker_fpn.{i}", t)

            h, w = images[name].shape[:2]
            queries = [(f"text:{p}", TextPrompt(p)) for p in spec["prompts"]]
            for j, (text, box) in enumerate(spec["box_prompts"][name]):
                queries.append((f"box{j}:{text}", TextPrompt(text, exemplar_boxes=[box])))
            for qname, prompt in queries:
                q = pre + qname + "/"
                for stage in ("geometry", "encoder", "decoder"):
                    captured.pop(stage, None)
                list(staged.detect([prompt]))  # fills the stage hooks
                stages = dict(captured)  # before the cached path calls any hooked module again
                (_, out), = list(predictor.detect([prompt]))
                feats, mask = predictor.text_embeddings([prompt.text])
                put(q + "text_features", feats * mask[..., None])
                put(q + "text_mask", mask)
                # geometry tokens: drop our padding box (masked everywhere; Meta's prompt has none)
                geometry = stages["geometry"]
                valid = geometry.attention_mask[0].bool()
                put(q + "geometry_features", geometry.last_hidden_state[:, valid])
                encoder = stages["encoder"]
                put(q + "detr_encoder", encoder.last_hidden_state)
                keep = torch.cat([torch.ones(mask.shape[-1], dtype=torch.bool), valid])
                prompt = encoder.text_features[:, keep].clone()
                prompt[:, : mask.shape[-1]] *= mask[..., None]  # padding text tokens: see text_features
                put(q + "detr_encoder_text", prompt)
                decoder = stages["decoder"]
                put(q + "decoder_queries", decoder.intermediate_hidden_states[-1])
                put(q + "pred_logits", out.pred_logits)
                put(q + "presence_logit", out.presence_logits.reshape(-1))
                put(q + "pred_boxes", out.pred_boxes)  # x0, y0, x1, y1 normalised
                put(q + "pred_masks", out.pred_masks)
                put(q + "semantic_seg", out.semantic_seg)
                presence, scores, logits = predictor.row_outputs(out, 0)
                put(q + "scores", scores[None])
                put(q + "presence_score", torch.tensor([presence]))
                put(q + "masks", predictor.mask_probabilities(logits)[None] > predictor.mask_threshold)
                semantic = predictor.mask_probabilities(out.semantic_seg[0].float())
                put(q + "semantic_mask", semantic[None] > predictor.mask_threshold)

            for j, box in enumerate(spec["interactive_boxes"][name]):
                q = pre + f"interactive{j}/"
                scale = torch.tensor([model.image_size / w, model.image_size / h] * 2)
                boxes = (torch.tensor(box, dtype=torch.float32) * scale)[None, None]
                out = tracker(image_embeddings=predictor._tracker_image_embeddings(), input_boxes=boxes,
                              multimask_output=False)
                put(q + "low_res_masks", out.pred_masks[0, 0])
                put(q + "iou", out.iou_scores[0, 0])
                # the mask before medsam3's object-score gate (an "absent" answer when the tracker's
                # object score is below the presence threshold); Meta's image predictor has no gate
                put(q + "masks", predictor.mask_probabilities(out.pred_masks[0, 0, :1]) > predictor.mask_threshold)
    return ours


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------

def _cxcywh_to_xyxy(boxes):
    import torch

    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def stage_of(key: str) -> str:
    leaf = key.rsplit("/", 1)[-1]
    return leaf.split(".")[0]


def compare(meta: dict, ours: dict) -> list[dict]:
    import torch

    rows = []
    for key in sorted(ours):
        stage = stage_of(key)
        if stage == "text_mask":
            continue
        a = ours[key].float()
        if stage == "presence_score":
            b = meta[key.replace("presence_score", "presence_logit")].sigmoid()
        elif key not in meta:
            rows.append({"key": key, "stage": stage, "diff": float("inf"), "scale": 0.0, "relative": float("inf"),
                         "tolerance": TOLERANCES[stage], "pass": False, "note": "not produced by Meta's model"})
            continue
        else:
            b = meta[key].float()
        if stage == "pred_boxes":
            b = _cxcywh_to_xyxy(b)
        if stage == "detr_encoder_text":  # text padding tokens, as below
            mask = meta[key.replace("detr_encoder_text", "text_mask")]
            b = b.clone()
            b[:, : mask.shape[-1]] *= mask[..., None]
        if stage == "text_features":  # padding tokens are masked everywhere; Meta pads with id 0, we with 49407
            mask_key = key.replace("text_features", "text_mask")
            b = b * meta[mask_key][..., None]
            if not torch.equal(meta[mask_key], ours[mask_key].float()):
                rows.append({"key": mask_key, "stage": "text_mask", "diff": 1.0, "scale": 1.0, "relative": 1.0,
                             "tolerance": 0.0, "pass": False, "note": "token masks differ"})
        note = ""
        if a.shape != b.shape:
            if a.numel() == b.numel():
                a = a.reshape(b.shape)
            else:
                rows.append({"key": key, "stage": stage, "diff": float("inf"), "scale": 0.0,
                             "relative": float("inf"), "tolerance": TOLERANCES[stage], "pass": False,
                             "note": f"shape {tuple(a.shape)} vs Meta {tuple(b.shape)}"})
                continue
        if stage in ("masks", "semantic_mask"):
            diff = float((a.bool() != b.bool()).float().mean())
            scale, relative = 1.0, diff
            note = f"{int((a.bool() != b.bool()).sum())} of {a.numel()} pixels differ"
        else:
            diff = float((a - b).abs().max())
            scale = float(b.abs().max())
            relative = diff / scale if scale > 0 else diff
        tol = TOLERANCES[stage]
        if stage in ABSOLUTE:
            relative = diff
        rows.append({"key": key, "stage": stage, "diff": diff, "scale": scale, "relative": relative,
                     "tolerance": tol, "pass": relative <= tol, "note": note})
    return rows


def print_table(rows: list[dict]) -> None:
    width = max(len(r["key"]) for r in rows)
    print(f"{'stage':<{width}}  {'max abs diff':>12}  {'scale':>9}  {'relative':>9}  {'tolerance':>9}  pass")
    for r in rows:
        print(f"{r['key']:<{width}}  {r['diff']:>12.3e}  {r['scale']:>9.3g}  {r['relative']:>9.2e}  "
              f"{r['tolerance']:>9.1e}  {'yes' if r['pass'] else 'NO'}{'  ' + r['note'] if r['note'] else ''}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meta-venv", default=os.environ.get("MEDSAM3_META_VENV", str(REPO / ".venv-meta")),
                        help="Meta's virtualenv (created when absent; default $MEDSAM3_META_VENV or .venv-meta/)")
    parser.add_argument("--work", default=None,
                        help="working directory (checkpoint, converted model, Meta's tensors); a temporary one "
                             "by default. Meta's results in it are reused when inputs and scripts are unchanged")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for each side (default: torch's)")
    parser.add_argument("--size", choices=["full", "reduced"], default="full",
                        help="full: the published SAM3 (about 20 CPU-minutes); reduced: a 4-block ViT and a "
                             "2-layer text encoder, the rest as published, one text prompt per image (CI)")
    parser.add_argument("--json", default=None, help="also write the table as JSON here")
    args = parser.parse_args(argv)

    import torch
    from safetensors.torch import load_file, save_file

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="medsam3-parity-") as tmp:
        work = Path(args.work or tmp).resolve()
        work.mkdir(parents=True, exist_ok=True)
        python = ensure_meta_venv(Path(args.meta_venv).resolve())
        images, spec = prepare_inputs(work, args.size)
        checkpoint, meta_file = run_meta(python, work, images, spec, args.threads)
        model_dir = work / "converted"
        convert = [sys.executable, "-m", "medsam3.cli", "convert", "-i", str(checkpoint), "-o", str(model_dir)]
        if args.size == "reduced":  # not a named configuration: give convert the config.json
            reduced_config().save_pretrained(work / "reduced-config")
            convert += ["--config", str(work / "reduced-config")]
        subprocess.run(convert, check=True)
        meta = load_file(str(meta_file))
        ours = run_ours(model_dir, images, spec, meta)
        save_file({k: v.contiguous() for k, v in ours.items()}, str(work / "ours.safetensors"))
        rows = compare(meta, ours)
    print_table(rows)
    failed = [r for r in rows if not r["pass"]]
    print(f"{len(rows) - len(failed)} of {len(rows)} comparisons within tolerance "
          f"({time.monotonic() - start:.0f} s)")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "spec": spec}, indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
