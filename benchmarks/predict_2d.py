"""Encode-once predictor vs the naive transformers loop, for K text prompts on one image.

The naive loop is what SAM3's transformers documentation shows: for every prompt,
``processor(images=..., text=...)`` then ``model(**inputs)`` (with the geometry CLS token, as
Meta's SAM3 runs a text prompt) then Meta's mask post-processing. Ours encodes the image once
and runs the prompts in batches through the detector. Both use the same model and thresholds; the semantic
(union) masks must be identical.

    python benchmarks/predict_2d.py --model random:default --prompts 1 4 16

Prints one JSON object with the machine, the times and the speed-up per K.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np
import torch

from bench_common import PROMPTS, naive
from medsam3.model import MedSAM3
from medsam3.predict import ImagePredictor, TextPrompt


def ours(model: MedSAM3, image: np.ndarray, prompts: list[str], threshold: float, batch_size: int) -> list[np.ndarray]:
    predictor = ImagePredictor(model, score_threshold=threshold, presence_threshold=0.0, batch_size=batch_size)
    predictor.set_image(image)
    return [r.semantic for r in predictor.predict([TextPrompt(p) for p in prompts])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:default")
    ap.add_argument("--prompts", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--size", type=int, default=512, help="input image side in pixels")
    ap.add_argument("--threshold", type=float, default=0.0,
                    help="instance score threshold (0 keeps every query, so masks are compared in full)")
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    model = MedSAM3.from_pretrained(args.model, device="auto")
    # a real CT slice would do as well; the timing does not depend on the content
    image = np.random.default_rng(0).random((args.size, args.size)).astype(np.float32)
    rows = []
    for k in args.prompts:
        prompts = PROMPTS[:k] if k <= len(PROMPTS) else [f"structure {i}" for i in range(k)]
        t0 = time.perf_counter()
        a = naive(model, image, prompts, args.threshold)
        t1 = time.perf_counter()
        b = ours(model, image, prompts, args.threshold, args.batch_size)
        t2 = time.perf_counter()
        rows.append({"prompts": k, "naive_s": round(t1 - t0, 3), "predictor_s": round(t2 - t1, 3),
                     "speedup": round((t1 - t0) / (t2 - t1), 2),
                     "masks_identical": all(np.array_equal(x, y) for x, y in zip(a, b)),
                     # batched matmuls round differently from single ones: count what that flips
                     "differing_pixels": int(sum((x != y).sum() for x, y in zip(a, b))),
                     "compared_pixels": int(sum(x.size for x in a))})
        print(json.dumps(rows[-1]), flush=True)
    print(json.dumps({
        "benchmark": "predict_2d", "model": args.model, "image_size": model.image_size,
        "input_pixels": [args.size, args.size], "device": str(model.device),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
        "results": rows}, indent=2))


if __name__ == "__main__":
    main()
