"""Candidate ``--fast`` settings on the demo model's held-out items, against ground truth, side by side.

Each setting (a precision of :mod:`medsam3.model.precision` and an input size of
:func:`medsam3.predict.input_size.with_input_size`) scores the held-out manifest of
``recipes/demo/build_data.py`` with :func:`medsam3.evaluate.evaluate_model` (the evaluator of
``medsam3 evaluate --model``, as ``recipes/demo/evaluate_demo.py`` runs it: text prompts,
volumes slice by slice, empty background slices skipped, the default), one item at a time,
the settings interleaved item by item so a machine's changing load hits them alike.

    python recipes/demo/build_data.py -o data/demo --heldout-only     # once
    python benchmarks/fast.py -o /tmp/fast/fast.json     # fp32, bf16, int8 at 336 px; bf16, int8 at 280 px
    python benchmarks/fast.py --datasets mni152-2009a --settings fp32 bf16@280 int8@280 -o big.json

Prints JSON: Dice and NSD per structure per item, their means, the mean's change against
fp32 at the native size in points (1 point = 0.01 Dice), seconds per item (the model's
prediction alone, and the whole evaluation with reading and scoring), seconds per slice the
model ran on, speed-up against fp32, the machine and versions. ``--probe-slices N`` first
times N slices of the smallest volume with the settings interleaved slice by slice (the
fairer speed-up on a machine whose load changes); ``--datasets`` limits the items (one
process per volume, e.g. with ``OMP_NUM_THREADS=1`` each, when the machine is shared).

The size ``--fast`` uses is chosen from these numbers, so for that choice the held-out set is a
**validation** set, not a held-out one (the JSON says so). bf16 runs only where the CPU has
native bf16 (AVX-512 BF16 or AMX): elsewhere PyTorch's fallback is hundreds of times slower.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MANIFEST = ROOT / "data" / "demo" / "heldout" / "demo-heldout.jsonl"
#: the largest loss of mean Dice, in points, that ``--fast`` accepts against fp32 at the native size
DICE_BUDGET_POINTS = 1.0


def cpu_info() -> dict:
    """The CPU's model name and the flags that decide bf16 (from /proc/cpuinfo on Linux)."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and name in ("", platform.machine(), platform.processor()):
            name = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"cpu": name, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "amx_bf16": "amx_bf16" in flags, "avx512_vnni": "avx512_vnni" in flags, "avx2": "avx2" in flags}


def parse_setting(text: str) -> tuple[str, int | None]:
    """``int8@280`` -> ``("int8", 280)``; ``fp32`` -> ``("fp32", None)`` (the native size)."""
    precision, _, size = text.partition("@")
    return precision, int(size) if size else None


def read_scores(folder: Path) -> dict:
    """``{item: {class: {"dice", "nsd"}}}`` from an evaluation folder's cases.csv."""
    scores: dict = {}
    with open(folder / "cases.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] == "not_in_ground_truth":
                continue
            scores.setdefault(row["case"], {})[row["class"]] = {
                m: (float(row[m]) if row[m].strip() else math.nan) for m in ("dice", "nsd")}
    return scores


def slices_run(folder: Path, manifest, item) -> int:
    """How many images the model encoded for ``item``: 1 for a 2D image; for a volume, its
    slices minus those skipped as empty, once per label layer (each layer is one pass)."""
    if item.dim == 2:
        return 1
    from medsam3 import read_image
    from medsam3.evaluate.manifest import item_classes

    sidecars = [json.loads(p.read_text()) for p in (folder / "predictions").rglob("*.json")]
    volume = next(s["volume"] for s in sidecars if "volume" in s)
    n = read_image(manifest.resolve(item.image)).array.shape["zyx".index(volume["slice_axis"])]
    layers = len({c.layer for c in item_classes(item)})
    return (n - len(volume["skipped_slices"])) * layers


def _mean(values) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def speed_probe(models: dict, manifest, item, slices: int, rounds: int) -> dict:
    """Seconds per slice of each setting on ``slices`` non-empty slices of volume ``item`` (every
    class of the item prompted at once, as the evaluation's first layer does), the settings
    interleaved slice by slice, ``rounds`` times: the median counts. Under a changing load this
    is the fairer speed-up; the evaluation's per-item seconds are reported beside it."""
    import numpy as np

    from medsam3 import ImagePredictor, read_image
    from medsam3.data.loading import normalised_array
    from medsam3.evaluate.manifest import item_classes
    from medsam3.orientation import choose_orientation

    image = read_image(manifest.resolve(item.image), modality=item.modality)
    stack = choose_orientation(image.direction, None).stack(normalised_array(image, item.modality, None))
    kept = [k for k in range(len(stack)) if stack[k].max() > stack[k].min()]
    picks = [kept[int(i)] for i in np.linspace(0, len(kept) - 1, slices)]
    prompts = [c.prompt for c in item_classes(item) if c.layer == 0]
    times: dict[str, list[float]] = {n: [] for n in models}
    for _ in range(rounds):
        for k in picks:
            plane = np.ascontiguousarray(stack[k])
            for name, (model, *_) in models.items():
                predictor = ImagePredictor(model)
                t0 = time.perf_counter()
                predictor.set_image(plane)
                predictor.predict(prompts)
                times[name].append(time.perf_counter() - t0)
    median = {n: float(np.median(t)) for n, t in times.items()}
    base = next(iter(models))
    return {"item": item.id, "slices": picks, "rounds": rounds, "prompts": prompts,
            "median_s_per_slice": {n: round(v, 3) for n, v in median.items()},
            "speedup_vs_" + base: {n: round(median[base] / v, 3) for n, v in median.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--manifest", default=str(DEFAULT_MANIFEST))
    ap.add_argument("--settings", nargs="+", default=["fp32", "bf16", "int8", "bf16@280", "int8@280"],
                    help="PRECISION[@SIZE]; the first is the baseline (default: fp32 at the native size)")
    ap.add_argument("--datasets", nargs="+", default=None, help="only these held-out datasets (quick checks)")
    ap.add_argument("--force-bf16", action="store_true", help="run bf16 settings without native bf16 too")
    ap.add_argument("--work", default="/tmp/fast/work", help="evaluation folders (predictions, cases.csv)")
    ap.add_argument("--probe-slices", type=int, default=8, help="slices of the speed probe (0: none)")
    ap.add_argument("--probe-rounds", type=int, default=2)
    ap.add_argument("--merge", nargs="+", metavar="JSON", default=None,
                    help="combine the outputs of earlier runs (e.g. one per volume) into one, run nothing")
    ap.add_argument("--markdown", default=None, metavar="MD", help="also write the tables of docs/speed.md here")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()
    if args.merge:
        result = merge(args.merge, args.output)
        if args.markdown:
            Path(args.markdown).write_text(markdown(result))
        return

    import torch
    import transformers

    from medsam3.data import read_manifest
    from medsam3.evaluate import evaluate_model
    from medsam3.evaluate import model as evaluate_module
    from medsam3.model import MedSAM3
    from medsam3.model.precision import native_bf16
    from medsam3.predict.input_size import with_input_size

    load_before = os.getloadavg()
    machine = cpu_info()
    bf16_native = native_bf16("cpu")
    manifest = read_manifest(args.manifest)
    items = [it for it in manifest if it.split == "test" and (not args.datasets or it.dataset in args.datasets)]
    items.sort(key=lambda it: math.prod(it.shape))  # the quick ones first: a partial result has them
    settings = [parse_setting(s) for s in args.settings]
    skipped = {}
    if not bf16_native and not args.force_bf16:
        for p, s in [x for x in settings if x[0] == "bf16"]:
            skipped[f"{p}@{s or 'native'}"] = ("this CPU has no native bf16 (no avx512_bf16 / amx): PyTorch's "
                                               "fallback is ~400x slower than fp32 (docs/speed.md)")
        settings = [x for x in settings if x[0] != "bf16"]

    # the model's prediction time per item: the evaluator's own runner, timed around its predict step
    timed: dict[str, float] = {}
    original = evaluate_module.ModelRunner.predict_item

    def predict_item(self, manifest_, item, *a, **kw):
        t0 = time.perf_counter()
        try:
            return original(self, manifest_, item, *a, **kw)
        finally:
            timed[item.id] = time.perf_counter() - t0

    evaluate_module.ModelRunner.predict_item = predict_item

    models, names = {}, []
    for precision, size in settings:
        model = MedSAM3.from_pretrained(args.model, device="cpu", precision=precision)
        native = model.image_size
        model = with_input_size(model, size)  # every item, 2D and volumes: what --fast does at load
        name = f"{precision}@{model.image_size}"
        models[name] = (model, precision, model.image_size, native)
        names.append(name)
    runs: dict = {n: {"items": {}} for n in names}
    result = {
        "benchmark": "fast", "model": args.model, "manifest": str(Path(args.manifest).resolve()),
        "role_of_the_set": "used to choose --fast: validation, not held-out (the size --fast uses was picked "
                           "from these numbers, so they are not an unbiased estimate of its accuracy)",
        "protocol": "medsam3.evaluate.evaluate_model, prompt mode text, volumes slice by slice (--volume-mode "
                    "slices), empty background slices skipped (VolumeSettings.skip_empty, the default); every "
                    "item (2D and volumes) at the setting's input size; settings interleaved item by item",
        "baseline": names[0], "dice_budget_points": DICE_BUDGET_POINTS, "skipped": skipped,
        "bf16_native": bf16_native, "complete": False,
        "machine": {**machine, "torch_threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "load_average_before": [round(v, 2) for v in load_before]},
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "transformers": transformers.__version__},
    }
    volumes = [it for it in items if it.dim == 3]
    if args.probe_slices and volumes:
        result["speed_probe"] = speed_probe(models, manifest, min(volumes, key=lambda it: math.prod(it.shape)),
                                            args.probe_slices, args.probe_rounds)
        print(json.dumps(result["speed_probe"]), flush=True)
    work = Path(args.work)
    for item in items:  # interleaved: item by item, every setting
        for name in names:
            model, *_ = models[name]
            folder = work / name.replace("@", "-") / item.id.replace("/", "-")
            t0 = time.perf_counter()
            evaluate_model(model, manifest, folder, prompt_mode="text", split="test", datasets=[item.dataset],
                           volume_mode="slices", device="cpu", overwrite=True, progress=False, plots=False,
                           n_bootstrap=200)
            wall = time.perf_counter() - t0
            n = slices_run(folder, manifest, item)
            runs[name]["items"][item.id] = {
                "scores": read_scores(folder)[item.id], "predict_s": round(timed[item.id], 2),
                "evaluate_s": round(wall, 2), "images_encoded": n,
                "predict_s_per_image": round(timed[item.id] / n, 3)}
            print(f"{name} {item.id}: {timed[item.id]:.1f} s predict, {n} images", flush=True)
        summarise(result, runs, models, names)
        result["complete"] = item is items[-1]
        result["machine"]["load_average_after"] = [round(v, 2) for v in os.getloadavg()]
        if args.output:  # after every item: a partial result survives an interrupted run
            Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2), flush=True)
    if args.markdown:
        Path(args.markdown).write_text(markdown(result))


def merge(paths: list[str], output: str | None) -> None:
    """One result from several runs' JSON: each setting's items from the first complete run that
    has them (speed-ups stay against the baseline of the run that timed the item); an
    interrupted run gives only its speed probe."""
    parts = [json.loads(Path(p).read_text()) for p in paths]
    base = parts[0]["baseline"]
    if any(p["baseline"] != base for p in parts):
        raise SystemExit(f"the runs have different baselines: {[p['baseline'] for p in parts]}")
    runs: dict = {}
    models: dict = {}
    for part in parts:
        if not part["complete"]:  # an interrupted run: only its speed probe is used
            continue
        for name, run in part["settings"].items():
            models[name] = (None, run["precision"], run["size"], run["native_size"])
            merged = runs.setdefault(name, {"items": {}})
            for item, entry in run["items"].items():
                entry.setdefault("baseline_predict_s", part["settings"][base]["items"][item]["predict_s"])
                merged["items"].setdefault(item, entry)
    names = [base] + sorted(n for n in runs if n != base)
    result = {k: v for k, v in parts[0].items() if k not in ("settings", "speed_probe")}
    result.update(merged_from=[str(Path(p).resolve()) for p in paths],
                  machines=[p["machine"] for p in parts],
                  skipped={k: v for p in parts for k, v in p["skipped"].items()})
    result.pop("machine", None)
    probes = [p["speed_probe"] for p in parts if "speed_probe" in p]
    if probes:
        result["speed_probe"] = probes[0]
    summarise(result, runs, models, names)
    result["complete"] = all(r["all_items"] for r in runs.values())  # every setting on every item
    text = json.dumps(result, indent=2)
    print(text, flush=True)
    if output:
        Path(output).write_text(text + "\n")
    return result


def markdown(result: dict) -> str:
    """Dice per structure per setting (one column per setting), then the summary per setting."""
    runs, base = result["settings"], result["baseline"]
    names = list(runs)
    lines = ["| item | structure | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for item, entry in runs[base]["items"].items():
        for cls, ref in entry["scores"].items():
            cells = []
            for n in names:
                got = runs[n]["items"].get(item, {}).get("scores", {}).get(cls)
                cells.append("-" if got is None else f"{got['dice']:.3f}" if n == base
                             else f"{got['dice']:.3f} ({100 * (got['dice'] - ref['dice']):+.1f})")
            lines.append(f"| {item} | {cls} | " + " | ".join(cells) + " |")
    lines += ["", "| setting | items | mean Dice | delta (points) | mean NSD | delta NSD | model s | s per image "
              "| speed-up vs " + base + " |", "|---|---|---|---|---|---|---|---|---|"]
    for n in names:
        r = runs[n]
        lines.append(f"| {n} | {len(r['items'])} | {r['mean_dice']:.4f} | {r['delta_mean_dice_points']:+.2f} | "
                     f"{r['mean_nsd']:.4f} | {r['delta_mean_nsd_points']:+.2f} | {r['predict_s']:.1f} | "
                     f"{r['predict_s_per_image']:.3f} | {r['speedup_vs_' + base]:.2f} |")
    return "\n".join(lines) + "\n"


def summarise(result: dict, runs: dict, models: dict, names: list[str]) -> None:
    """Means, deltas against the baseline (``names[0]``) and speed-ups over the items done so far."""
    base = names[0]
    for name in names:
        run = runs[name]
        model, precision, size, native = models[name]
        pairs = [(i, c, v) for i, r in run["items"].items() for c, v in r["scores"].items()]
        run.update(precision=precision, size=size, native_size=native, size_factor=round(size / native, 4))
        run["mean_dice"] = round(_mean([v["dice"] for _, _, v in pairs]), 4)
        run["mean_nsd"] = round(_mean([v["nsd"] for _, _, v in pairs]), 4)
        run["predict_s"] = round(sum(r["predict_s"] for r in run["items"].values()), 1)
        run["images_encoded"] = sum(r["images_encoded"] for r in run["items"].values())
        run["predict_s_per_image"] = round(run["predict_s"] / run["images_encoded"], 3)
    for name in names:
        run, ref = runs[name], runs[base]
        for i, r in run["items"].items():  # the baseline's time in the same run (kept when runs are merged)
            r.setdefault("baseline_predict_s", ref["items"][i]["predict_s"])
        for metric in ("dice", "nsd"):  # paired: the baseline over the same items (a merged run may lack some)
            ref_mean = _mean([ref["items"][i]["scores"][c][metric]
                              for i in run["items"] for c in ref["items"][i]["scores"]])
            run[f"delta_mean_{metric}_points"] = round(100 * (run[f"mean_{metric}"] - ref_mean), 2) + 0.0
        run["all_items"] = set(run["items"]) == set(ref["items"])
        run["speedup_vs_" + base] = round(sum(r["baseline_predict_s"] for r in run["items"].values())
                                          / run["predict_s"], 3)
        run["delta_dice_points_per_structure"] = {
            f"{i}/{c}": round(100 * (v["dice"] - ref["items"][i]["scores"][c]["dice"]), 2)
            for i, r in run["items"].items() for c, v in r["scores"].items()}
        run["per_item_speedup"] = {i: round(r["baseline_predict_s"] / r["predict_s"], 3)
                                   for i, r in run["items"].items()}
    within = [n for n in names[1:]
              if runs[n]["all_items"] and runs[n]["delta_mean_dice_points"] >= -DICE_BUDGET_POINTS]
    smaller = [n for n in within if runs[n]["size"] < runs[n]["native_size"]]
    result["within_budget"] = within
    result["smallest_size_within_budget"] = min(smaller, key=lambda n: runs[n]["size"]) if smaller else None
    result["settings"] = {n: {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in runs[n].items()}
                          for n in names}


if __name__ == "__main__":
    main()
