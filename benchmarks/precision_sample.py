"""int8 (or bf16) vs fp32 on the bundled demo model and sample volume: Dice of each
concept's masks against fp32's own masks, and the time per slice, side by side in one run.

A quick stand-in for the held-out evaluation (``medsam3 evaluate --model demo ... --precision``)
when that is too slow for the machine: axial slices of ``colin27_t1_2mm.nii.gz`` (the demo
model's training subject, so this measures how far the precision moves the masks, not the
model's accuracy), every concept of the demo model on each slice.

    python benchmarks/precision_sample.py --slices 8 --precision int8
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np

from bench_common import emit, machine_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=8, help="axial slices, evenly spaced over the brain")
    ap.add_argument("--precision", default="int8", choices=("int8", "bf16"))
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()


    import medsam3
    from medsam3.io import read_image
    from medsam3.model import MedSAM3
    from medsam3.predict import ImagePredictor
    from medsam3.predict.orientation import choose_orientation
    from medsam3.preprocess import context_planes, normalize_intensity

    load = os.getloadavg()
    sample = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"
    image = read_image(sample)
    stack = choose_orientation(image.direction, "axial").stack(normalize_intensity(image))
    models = {p: MedSAM3.from_pretrained("demo", device="cpu", precision=p) for p in ("fp32", args.precision)}
    concepts = models["fp32"].concepts
    filled = [k for k in range(len(stack)) if stack[k].max() > stack[k].min()]
    picks = [filled[i] for i in np.linspace(len(filled) * 0.2, len(filled) * 0.8, args.slices).astype(int)]
    masks = {p: {c: [] for c in concepts} for p in models}
    seconds = {p: 0.0 for p in models}
    for k in picks:
        for p, model in models.items():  # alternated slice by slice: both see the same load
            predictor = ImagePredictor(model)
            plane = context_planes(stack, k, predictor.context_offset(image.spacing[2]))
            t0 = time.perf_counter()
            predictor.set_image(np.ascontiguousarray(plane))
            results = predictor.predict(concepts)
            seconds[p] += time.perf_counter() - t0
            for c, r in zip(concepts, results):
                masks[p][c].append(r.semantic)
    rows = {}
    for c in concepts:
        a, b = np.stack(masks["fp32"][c]), np.stack(masks[args.precision][c])
        total = a.sum() + b.sum()
        rows[c] = {"dice_vs_fp32": round(float(2 * (a & b).sum() / total), 4) if total else None,
                   "fp32_pixels": int(a.sum()), "differing_pixels": int((a != b).sum())}
    dices = [r["dice_vs_fp32"] for r in rows.values() if r["dice_vs_fp32"] is not None]
    result = {"benchmark": "precision_sample", "model": "demo", "sample": sample.name, "slices": picks,
              "precision": args.precision, "concepts": rows,
              "dice_vs_fp32_min": min(dices) if dices else None,
              "seconds_per_slice": {p: round(s / len(picks), 3) for p, s in seconds.items()},
              "speedup": round(seconds["fp32"] / seconds[args.precision], 2),
              "machine": machine_info(load)}
    emit(result, args.output)


if __name__ == "__main__":
    main()
