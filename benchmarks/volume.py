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

**Slice feed: before / after** (``--feed``, issue #27 item 6): the same volume and prompts through
the same mode twice, each in a fresh process: *before* = slices prepared in the model's thread
when needed, one slice per ViT call and no feature cache (``read_ahead=False, encode_batch=1,
feature_cache_mb=0``: overlapping clips encode a shared slice once per clip); *after* = slices
prepared on the reader thread ahead of the model, ``--encode-batch`` slices per ViT call
(default: the automatic choice, 1 on a CPU). Each row counts the ViT calls and the images they
encoded (forward hooks on the detector's vision encoder; the tracker shares its output), and
reports wall seconds, slices/s and peak RSS; the labels of before and after are compared.

    python benchmarks/volume.py --feed --model demo --volume colin --modes merged clips slices \
        --prompts 5 --output feed.json

**Full-size estimate** (``--full-size``): the issue's goal, a 100-slice CT x 5 prompts with the
full-size configuration in <= 10 min on the CPU, cannot be run here in full; the worker times
``--estimate-slices`` slices (default 3) x 5 prompts of the Colin27 T1 through ``random:default``
at ``--precision`` (default int8) and each of ``--estimate-sizes`` (default 1008 672), and the
report extrapolates seconds per slice x 100, labelled ``extrapolated``.

    python benchmarks/volume.py --full-size --output full.json

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

PROMPTS = ["putamen", "thalamus", "lateral ventricle", "hippocampus", "caudate nucleus"]
COLIN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "src", "medsam3", "data",
                     "samples", "colin27_t1_2mm.nii.gz")


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


def colin_volume(slices: int) -> tuple[np.ndarray, tuple, tuple]:
    """``slices`` central slices (all: 0) of the bundled Colin27 T1 (2 mm, 90 x 108 x 90), normalised,
    with its direction and spacing."""
    from medsam3.io import read_image
    from medsam3.preprocess import normalize_intensity

    image = read_image(COLIN)
    volume = normalize_intensity(image, modality="MR")
    if slices and slices < volume.shape[0]:
        start = volume.shape[0] // 2 - slices // 2
        volume = volume[start:start + slices]
    return np.ascontiguousarray(volume), image.direction, image.spacing


class ViTCounter:
    """ViT calls and the images they encode (a forward hook on the detector's vision encoder)."""

    def __init__(self, model):
        self.calls = self.images = 0
        self.starts: list[float] = []
        self.handle = model.detector.vision_encoder.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.calls += 1
        self.images += int(args[0].shape[0])
        self.starts.append(time.perf_counter())


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import transformers

    return {"platform": platform.platform(), "cpu": cpu, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_threads": torch.get_num_threads(), "cpus": os.cpu_count(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def feed_worker(args) -> dict:
    """One volume through one mode with the slice feed set as ``--feed-config`` says."""
    from medsam3.model import MedSAM3
    from medsam3.predict import ImagePredictor
    from medsam3.predict.input_size import with_input_size
    from medsam3.predict.merge import MergeRule
    from medsam3.predict.volume import VolumePredictor

    torch.manual_seed(0)
    model = with_input_size(MedSAM3.from_pretrained(args.model, device=args.device, precision=args.precision),
                            args.size or None)
    volume, direction, spacing = colin_volume(args.slices) if args.volume == "colin" else (*mni_volume(args.slices),
                                                                                          None)
    prompts = PROMPTS[: args.prompts]
    before = args.feed_config == "before"
    options = dict(mode=args.pipeline, rule=MergeRule(key_score=args.key_score), progress=False,
                   read_ahead=not before, encode_batch=1 if before else (args.encode_batch or None))
    if before:  # before this round, overlapping clips encoded a shared slice once per clip: no feature cache
        options["feature_cache_mb"] = 0
    if args.pipeline == "clips":
        options.update(clip_length=args.clip_length, clip_overlap=args.clip_overlap)
    predictor = ImagePredictor(model, score_threshold=args.threshold, presence_threshold=args.presence_threshold)
    vp = VolumePredictor(predictor, **options)
    vp.segment(volume[:2], prompts, direction=direction, spacing=spacing)  # warm-up (excluded)
    rss_loaded = current_rss_mb()
    counter = ViTCounter(model)
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = vp.segment(volume, prompts, direction=direction, spacing=spacing)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    counter.handle.remove()
    n = volume.shape[0]
    if args.labels_out:
        np.save(args.labels_out, result.labels)
    return {"pipeline": args.pipeline, "config": args.feed_config, "read_ahead": not before,
            "encode_batch": vp.slices_per_call(), "slices": n, "prompts": len(prompts),
            "model_input": model.image_size, "precision": getattr(model, "precision", "fp32"),
            "vit_calls": counter.calls, "vit_images": counter.images,
            "slices_skipped": len(result.skipped_slices), "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
            "slices_per_s": round(n / seconds, 3), "seconds_per_slice": round(seconds / n, 4), **result.stats,
            "labelled_voxels": int((result.labels > 0).sum()), "peak_rss_mb": round(peak_rss_mb(), 1),
            "rss_loaded_mb": round(rss_loaded, 1), "volume_mb": round(volume.nbytes / 2 ** 20, 2)}


def full_size_worker(args) -> dict:
    """``--estimate-slices`` Colin27 slices x 5 prompts through the full-size model at one size."""
    from medsam3.model import MedSAM3
    from medsam3.predict import ImagePredictor
    from medsam3.predict.input_size import with_input_size
    from medsam3.predict.slice_feed import encode_pixels, features_nbytes
    from medsam3.predict.volume import VolumePredictor

    torch.manual_seed(0)
    t_load = time.perf_counter()
    model = with_input_size(MedSAM3.from_pretrained("random:default", device="cpu", precision=args.precision),
                            args.size)
    load_seconds = time.perf_counter() - t_load
    volume, direction, spacing = colin_volume(args.estimate_slices)
    prompts = PROMPTS[:5]
    predictor = ImagePredictor(model)
    vp = VolumePredictor(predictor, mode="merged", progress=False)
    counter = ViTCounter(model)
    t0, c0 = time.perf_counter(), cpu_seconds()
    result = vp.segment(volume, prompts, direction=direction, spacing=spacing)
    seconds, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    counter.handle.remove()
    n = volume.shape[0] - len(result.skipped_slices)
    per_slice = seconds / n
    # one slice's kept features at this size (the feature cache's unit; fp32 storage)
    feats = encode_pixels(model, [predictor.preprocess(volume[0])])[0]
    gaps = [round(b - a, 2) for a, b in zip(counter.starts, counter.starts[1:])]
    return {"model": "random:default", "precision": getattr(model, "precision", args.precision),
            "model_input": model.image_size, "slices_timed": n, "prompts": len(prompts), "mode": "merged",
            "load_seconds": round(load_seconds, 1), "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
            "seconds_per_slice": round(per_slice, 2), "seconds_between_vit_calls": gaps,
            "vit_images": counter.images, **result.stats,
            "features_mb_per_slice": round(features_nbytes(feats) / 2 ** 20, 1),
            "extrapolated_100_slices": {"extrapolated": True, "seconds": round(per_slice * 100, 1),
                                        "minutes": round(per_slice * 100 / 60, 1),
                                        "rule": f"seconds per slice over {n} timed slices (first slice's one-off "
                                                "costs included) x 100; random weights start no tracks, so "
                                                "tracker steps are not in it; no slice skipped as empty"},
            "goal_minutes": 10, "peak_rss_mb": round(peak_rss_mb(), 1)}


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


def run_worker(argv: list[str]) -> dict:
    out = subprocess.run([sys.executable, __file__, *argv], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def feed_report(args) -> dict:
    """Before / after rows, per mode, each in its own process (own peak RSS)."""
    import tempfile

    rows, compare = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            pair = {}
            for config in ("before", "after"):
                labels = os.path.join(tmp, f"{mode}-{config}.npy")
                argv = ["--worker", "feed", "--pipeline", mode, "--feed-config", config, "--model", args.model,
                        "--device", args.device, "--prompts", str(args.prompts), "--slices", str(args.slices[0]),
                        "--volume", args.volume, "--threshold", str(args.threshold), "--presence-threshold",
                        str(args.presence_threshold), "--key-score", str(args.key_score), "--size",
                        str(args.size or 0), "--encode-batch", str(args.encode_batch or 0), "--clip-length",
                        str(args.clip_length), "--clip-overlap", str(args.clip_overlap), "--labels-out", labels]
                if args.precision:
                    argv += ["--precision", args.precision]
                row = run_worker(argv)
                rows.append(row)
                pair[config] = (row, np.load(labels))
                print(json.dumps(row), file=sys.stderr, flush=True)
            (b, lb), (a, la) = pair["before"], pair["after"]
            compare[mode] = {"speedup_wall": round(b["seconds"] / a["seconds"], 3),
                             "speedup_cpu": round(b["cpu_seconds"] / a["cpu_seconds"], 3),
                             "vit_images_before": b["vit_images"], "vit_images_after": a["vit_images"],
                             "vit_calls_before": b["vit_calls"], "vit_calls_after": a["vit_calls"],
                             "labels_identical": bool(np.array_equal(lb, la)),
                             "voxels_differing": int((lb != la).sum())}
    return {"rows": rows, "after_vs_before": compare}


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
    ap.add_argument("--feed", action="store_true", help="slice feed: before (no read-ahead, batch 1) vs after")
    ap.add_argument("--full-size", action="store_true",
                    help="full-size model: seconds per slice at --estimate-sizes, extrapolated to 100 slices")
    ap.add_argument("--modes", nargs="+", default=["merged", "clips", "slices"],
                    choices=["merged", "propagate", "slices", "clips"], help="--feed: the volume modes compared")
    ap.add_argument("--volume", choices=["colin", "mni"], default="colin",
                    help="--feed: the bundled Colin27 T1 (90 axial slices at 2 mm) or nilearn's MNI152 T1")
    ap.add_argument("--size", type=int, default=0, help="--feed: model input size (0: the model's own)")
    ap.add_argument("--encode-batch", type=int, default=0, help="--feed 'after': slices per ViT call (0: automatic)")
    ap.add_argument("--clip-length", type=int, default=4)
    ap.add_argument("--clip-overlap", type=int, default=2)
    ap.add_argument("--precision", default=None, help="fp32 / bf16 / int8 (--full-size default: int8)")
    ap.add_argument("--estimate-slices", type=int, default=3)
    ap.add_argument("--estimate-sizes", type=int, nargs="+", default=[1008, 672])
    ap.add_argument("--feed-config", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--labels-out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--naive-max-slices", type=int, default=0,
                    help="time the naive loop on at most this many slices and extrapolate (0: all)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--presence-threshold", type=float, default=0.5)
    ap.add_argument("--key-score", type=float, default=0.5, help="merge rule: detection score that starts a track")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--output", default=None, help="also write the JSON here")
    ap.add_argument("--worker", nargs="?", const="volume", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pipeline", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.slices = args.slices[0]
        run = {"volume": worker, "feed": feed_worker, "full": full_size_worker}[args.worker]
        print(json.dumps(run(args)), flush=True)
        return
    if args.feed or args.full_size:
        load_before = os.getloadavg()
        report = {"benchmark": "volume-feed" if args.feed else "volume-full-size", "model": args.model,
                  "volume": args.volume, "prompts": PROMPTS[: args.prompts], "machine": machine(),
                  "load_average_before": load_before}
        if args.feed:
            report.update(feed_report(args))
        if args.full_size:
            rows = []
            for size in args.estimate_sizes:
                row = run_worker(["--worker", "full", "--size", str(size), "--estimate-slices",
                                  str(args.estimate_slices), "--precision", args.precision or "int8"])
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
            report["full_size"] = rows
        report["load_average_after"] = os.getloadavg()
        text = json.dumps(report, indent=2)
        print(text)
        if args.output:
            with open(args.output, "w") as f:
                f.write(text + "\n")
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
