"""Whole-volume segmentation: the merged pipeline vs the naive per-slice, per-prompt loop.

The naive loop is what SAM3's transformers documentation shows, applied to every slice:
for every slice and every prompt, ``processor(images=..., text=...)``, ``model(**inputs)``
and ``post_process_instance_segmentation``; the label map is filled slice by slice.
Ours is :func:`medsam3.predict.volume.segment_volume` (default ``merged`` mode: one ViT
pass per slice, all prompts batched through the detector, SAM3 tracker propagation on the
same ViT features, the merge rule, streaming commits).

The volume is real anatomy: the central axial slices of nilearn's MNI152 2009a T1
(1 mm, 233 x 197 pixels per slice), so no slice is skipped as empty. Every measurement
runs in a fresh process, so its peak resident memory (``ru_maxrss``) is its own; the
model load and a 2-slice warm-up are excluded from the times but not from the peaks
(``rss_loaded_mb`` is the process after loading the model, for reference).

The naive loop can be timed on fewer slices (``--naive-max-slices``): its cost is
linear in slices x prompts, and the report then gives the measured per-slice time and an
explicitly labelled extrapolation to the full slice count.

Times are wall-clock ``seconds`` and process CPU time ``cpu_seconds`` (user + system, all
threads); on a machine shared with other work the CPU time is the steadier measure, and
speed-ups are given for both.

    python benchmarks/volume.py --model random:small --slices 16 32 64 --output volume.json
    python benchmarks/volume.py --model random:default --slices 16 --naive-max-slices 2

Random weights make the detector's answers (and so how much tracking happens) arbitrary:
at the default thresholds a random detector finds nothing and the tracker never runs.
``--threshold 0.2 --presence-threshold 0 --key-score 0.2`` makes it start tracks on
every slice (random trackers lose them at once, so this is tracker churn, the costliest
case per track). Each row reports the work done (``tracks``, ``tracker_steps``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import numpy as np
import torch

PROMPTS = ["putamen", "thalamus", "lateral ventricle"]


def mni_volume(slices: int) -> tuple[np.ndarray, tuple]:
    """``slices`` central axial slices of the MNI152 T1, normalised to [0, 1], and its direction."""
    import nilearn

    from medsam3.io import read_image
    from medsam3.preprocess import normalize_intensity

    path = os.path.join(os.path.dirname(nilearn.__file__), "datasets", "data",
                        "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz")
    image = read_image(path)
    volume = normalize_intensity(image, modality="MR")
    centre = volume.shape[0] // 2
    if slices > volume.shape[0]:
        raise SystemExit(f"at most {volume.shape[0]} slices")
    start = centre - slices // 2
    return np.ascontiguousarray(volume[start:start + slices]), image.direction


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def current_rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def naive(model, volume: np.ndarray, prompts: list[str], threshold: float) -> np.ndarray:
    labels = np.zeros(volume.shape, np.uint8)
    for z, plane in enumerate(volume):
        rgb = np.repeat(plane[..., None], 3, -1)
        for k, text in enumerate(prompts, start=1):
            inputs = model.processor(images=rgb, text=text, do_rescale=False, return_tensors="pt").to(model.device)
            with torch.inference_mode():
                out = model.detector(**inputs)
            res = model.processor.post_process_instance_segmentation(
                out, threshold=threshold, mask_threshold=0.5, target_sizes=[plane.shape])[0]
            if len(res["masks"]):
                union = res["masks"].bool().any(0).cpu().numpy()
                labels[z][union] = k
    return labels


def worker(args) -> dict:
    from medsam3.model import MedSAM3
    from medsam3.predict import ImagePredictor
    from medsam3.predict.merge import MergeRule
    from medsam3.predict.volume import segment_volume

    torch.manual_seed(0)
    model = MedSAM3.from_pretrained(args.model, device=args.device)
    volume, direction = mni_volume(args.slices)
    rss_loaded = current_rss_mb()
    prompts = PROMPTS[: args.prompts]
    row = {"pipeline": args.pipeline, "slices": args.slices, "prompts": len(prompts),
           "plane": list(volume.shape[1:]), "model_input": model.image_size}
    if args.pipeline == "naive":
        naive(model, volume[:1], prompts[:1], args.threshold)  # warm-up
        timed = min(args.slices, args.naive_max_slices or args.slices)
        t0, c0 = time.perf_counter(), cpu_seconds()
        naive(model, volume[:timed], prompts, args.threshold)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        row.update({"timed_slices": timed, "seconds_per_slice": round(seconds / timed, 4),
                    "cpu_seconds_per_slice": round(cpu / timed, 4)})
        if timed < args.slices:
            row.update({"seconds_measured": round(seconds, 3), "cpu_seconds_measured": round(cpu, 3),
                        "seconds": round(seconds / timed * args.slices, 3),
                        "cpu_seconds": round(cpu / timed * args.slices, 3), "extrapolated": True})
        else:
            row.update({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3), "extrapolated": False})
    else:
        predictor = ImagePredictor(model, score_threshold=args.threshold, presence_threshold=args.presence_threshold)
        rule = MergeRule(key_score=args.key_score)
        segment_volume(predictor, volume[:1], prompts, direction=direction, mode=args.pipeline, progress=False,
                       rule=rule)  # warm-up
        t0, c0 = time.perf_counter(), cpu_seconds()
        result = segment_volume(predictor, volume, prompts, direction=direction, mode=args.pipeline,
                                progress=False, rule=rule)
        seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
        row.update({"seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                    "seconds_per_slice": round(seconds / args.slices, 4),
                    "cpu_seconds_per_slice": round(cpu / args.slices, 4),
                    "extrapolated": False, **result.stats, "labelled_voxels": int((result.labels > 0).sum())})
    row.update({"peak_rss_mb": round(peak_rss_mb(), 1), "rss_loaded_mb": round(rss_loaded, 1),
                "volume_mb": round(volume.nbytes / 2 ** 20, 2)})
    return row


def run_in_subprocess(args, pipeline: str, slices: int) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--pipeline", pipeline, "--slices", str(slices),
           "--model", args.model, "--device", args.device, "--prompts", str(args.prompts),
           "--threshold", str(args.threshold), "--presence-threshold", str(args.presence_threshold),
           "--key-score", str(args.key_score),
           "--naive-max-slices", str(args.naive_max_slices or 0)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:default", help="random:default, random:small, or a model directory")
    ap.add_argument("--slices", type=int, nargs="+", default=[16, 32, 64])
    ap.add_argument("--prompts", type=int, default=3)
    ap.add_argument("--pipelines", nargs="+", default=["merged", "naive"],
                    choices=["merged", "propagate", "slices", "naive"])
    ap.add_argument("--naive-max-slices", type=int, default=0,
                    help="time the naive loop on at most this many slices and extrapolate (0: all)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--presence-threshold", type=float, default=0.5)
    ap.add_argument("--key-score", type=float, default=0.5, help="merge rule: detection score that starts a track")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output", default=None, help="also write the JSON here")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.slices = args.slices[0]
        print(json.dumps(worker(args)), flush=True)
        return

    rows = []
    for slices in args.slices:
        for pipeline in args.pipelines:
            row = run_in_subprocess(args, pipeline, slices)
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    by = {(r["pipeline"], r["slices"]): r for r in rows}
    speedups = {}
    for slices in args.slices:
        if ("naive", slices) in by and ("merged", slices) in by:
            naive_row, merged_row = by[("naive", slices)], by[("merged", slices)]
            speedups[str(slices)] = {"speedup_wall": round(naive_row["seconds"] / merged_row["seconds"], 2),
                                     "speedup_cpu": round(naive_row["cpu_seconds"] / merged_row["cpu_seconds"], 2),
                                     "naive_extrapolated": naive_row["extrapolated"]}
    report = {
        "benchmark": "volume", "model": args.model, "prompts": PROMPTS[: args.prompts],
        "thresholds": {"score": args.threshold, "presence": args.presence_threshold, "key_score": args.key_score},
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                    "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
                    "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
                    "load_average_at_end": os.getloadavg()},
        "rows": rows, "merged_vs_naive": speedups,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        with open(args.output, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
