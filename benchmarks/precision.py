"""fp32 vs bf16 vs int8 vs ov inference on one image: speed-up and accuracy against fp32, side by side.

The whole image pipeline of the encode-once predictor (preprocess, ViT + neck, K text prompts
through the detector, masks on the original grid) runs in each precision of
:mod:`medsam3.model.precision`, alternating precisions round by round (fp32, int8, bf16,
fp32, int8, bf16, ...) so a machine's changing load hits them alike; the best round counts.
Accuracy against fp32 on the same run: relative L2 and max error of the mask logits
(``pred_masks``, all queries), the presence logits, and IoU / differing pixels of each
prompt's union mask (score threshold 0: every query is compared).

    python benchmarks/precision.py --model random:default --prompts 4 --rounds 2

bf16 is skipped on a CPU without native bf16 (AVX-512 BF16 / AMX), where PyTorch's fallback
runs matmuls hundreds of times slower than fp32 (its measured matmul rate is printed);
``--force-bf16`` runs it anyway.

``ov`` (``--precisions fp32 int8 bf16 ov``; needs ``pip install 'medsam3[openvino]'``) runs the
vision encoder in OpenVINO (:mod:`medsam3.model.openvino_backend`); its one-off conversion and
compilation happen in an untimed first encode, recorded as ``ov_first_encode_s`` with
``ov_converted`` (false when the IR came from the cache) and the inference precision OpenVINO chose.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import numpy as np
import torch

from bench_common import PROMPTS, emit, machine_info


def pipeline(model, image: np.ndarray, prompts: list[str]) -> dict:
    """Times and outputs of one image through the predictor in ``model``'s precision."""
    from medsam3.predict import ImagePredictor, TextPrompt

    predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0, batch_size=len(prompts))
    t0 = time.perf_counter()
    predictor.set_image(image)
    t1 = time.perf_counter()
    results = predictor.predict(prompts)
    t2 = time.perf_counter()
    _, out = next(predictor.detect([TextPrompt(p) for p in prompts]))  # raw logits, not timed
    return {"encode_s": t1 - t0, "prompts_s": t2 - t1, "total_s": t2 - t0,
            "masks": out.pred_masks.float(), "presence": out.presence_logits.float(),
            "unions": [r.semantic for r in results]}


def compare(ref: dict, got: dict) -> dict:
    def rel(a, b):
        return float((a - b).norm() / a.norm().clamp_min(1e-12))

    ious, differing = [], 0
    for a, b in zip(ref["unions"], got["unions"]):
        union = np.logical_or(a, b).sum()
        ious.append(float(np.logical_and(a, b).sum() / union) if union else 1.0)
        differing += int((a != b).sum())
    return {"mask_logits_rel_l2": round(rel(ref["masks"], got["masks"]), 5),
            "mask_logits_max_abs": round(float((ref["masks"] - got["masks"]).abs().max()), 4),
            "mask_logits_ref_std": round(float(ref["masks"].std()), 4),
            "presence_logits_max_abs": round(float((ref["presence"] - got["presence"]).abs().max()), 4),
            "union_iou_mean": round(float(np.mean(ious)), 5), "union_iou_min": round(float(np.min(ious)), 5),
            "differing_pixels": differing, "compared_pixels": int(sum(a.size for a in ref["unions"]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:default")
    ap.add_argument("--size", type=int, default=None, help="model input size in px (default: the model's own)")
    ap.add_argument("--image", type=int, default=512, help="side of the (random) input image in px")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precisions", nargs="+", default=["fp32", "int8", "bf16"],
                    help="any of fp32 int8 bf16 ov")
    ap.add_argument("--force-bf16", action="store_true")
    ap.add_argument("--device", default="auto")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()


    from medsam3.model import MedSAM3
    from medsam3.model.precision import apply_precision, native_bf16
    from medsam3.predict.input_size import with_input_size

    load_before = os.getloadavg()
    base = with_input_size(MedSAM3.from_pretrained(args.model, device=args.device), args.size)
    base._tracker, base.has_tracker = None, False  # image prompts only: the tracker's memory back
    skipped = {}
    models = {}
    for name in args.precisions:
        if name == "bf16" and not native_bf16(base.device) and not args.force_bf16:
            skipped[name] = f"no native bf16 on {base.device} (cpu capability {torch.backends.cpu.get_cpu_capability()})"
            continue
        if name == "fp32":
            models[name] = base
        else:  # its own copy, converted by the library's own path
            clone = MedSAM3(copy.deepcopy(base.detector), base.processor, base.config, base.source, base.device,
                            base.dtype, directory=base.directory, has_tracker=False, info=base.info)
            models[name] = apply_precision(clone, name)
    image = np.random.default_rng(0).random((args.image, args.image)).astype(np.float32)
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[:args.prompts]
    openvino = {}
    if "ov" in models:  # the one-off conversion (or cache read) and compilation, outside the timed rounds
        from medsam3.model.openvino_backend import openvino_encoder

        from medsam3.predict import ImagePredictor

        t0 = time.perf_counter()
        ImagePredictor(models["ov"]).set_image(image)
        backend = openvino_encoder(models["ov"].detector.vision_encoder)
        openvino = {"ov_first_encode_s": round(time.perf_counter() - t0, 2), "ov_converted": backend.conversions > 0,
                    "ov_cache_entry": str(next(iter(backend.entries.values()))), **backend.describe()}
        print(json.dumps({"openvino": openvino}), flush=True)

    best: dict[str, dict] = {}
    rounds = []
    for r in range(args.rounds):
        for name, model in models.items():
            out = pipeline(model, image, prompts)
            times = {k: round(out[k], 3) for k in ("encode_s", "prompts_s", "total_s")}
            rounds.append({"round": r, "precision": name, **times})
            print(json.dumps(rounds[-1]), flush=True)
            if name not in best or out["total_s"] < best[name]["total_s"]:
                best[name] = out
    rows = []
    for name, out in best.items():
        row = {"precision": name, **{k: round(out[k], 3) for k in ("encode_s", "prompts_s", "total_s")}}
        if name != "fp32" and "fp32" in best:
            row["speedup_total"] = round(best["fp32"]["total_s"] / out["total_s"], 2)
            row["speedup_encode"] = round(best["fp32"]["encode_s"] / out["encode_s"], 2)
            row["speedup_prompts"] = round(best["fp32"]["prompts_s"] / out["prompts_s"], 2)
            row.update(compare(best["fp32"], out))
        rows.append(row)
    result = {"benchmark": "precision", "model": args.model, "input_size": base.image_size,
              "image_pixels": [args.image, args.image], "prompts": len(prompts), "rounds": args.rounds,
              "device": str(base.device), "results": rows, "skipped": skipped, "per_round": rounds,
              "openvino": openvino or None,
              "machine": machine_info(load_before, native_bf16=native_bf16(base.device))}
    emit(result, args.output)


if __name__ == "__main__":
    main()
