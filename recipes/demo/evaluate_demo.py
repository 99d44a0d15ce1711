"""The bundled demo model on its held-out data, with the untrained model and Otsu thresholding
measured in the same run, the volume modes compared, and the training curves drawn.

    python recipes/demo/build_data.py -o data/demo --heldout-only      # if not built yet
    python recipes/demo/evaluate_demo.py --record                      # the shipped model

Writes OUT/demo-eval.json and OUT/demo-eval.md (the tables of docs/demo-model.md), with --run
the detector's training curves (loss and training-batch Dice per step from each run's
metrics.csv), with --tracker-run the tracker's, and with --record the results into
``evaluation.json`` in the model's directory (beside its model card), which the CI test
tests/test_demo_model.py re-measures.

:func:`evaluate_demo` scores a model on the held-out manifest of build_data.py with
``medsam3.evaluate.evaluate_model`` (text prompts; volumes slice by slice) and, in the same
run, two baselines:

* the **untrained** model: the same configuration at its random initialisation
  (``random:demo``, the weights training started from);
* **Otsu thresholding** (scikit-image): the volume's Otsu threshold, its largest connected
  component with holes filled, as "brain"; on the microscopy tile, the pixels above Otsu
  as "cell nucleus". Otsu cannot name structures, so it answers only those two classes.

It also measures "absent" answers per slice: trained concepts that cannot be in an image
("cell nucleus" on every axial slice of the MRI templates; the brain structures on the
microscopy tile) and, with the vocabulary guard bypassed, never-trained concepts ("spleen",
"liver") to show what the network alone would do.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

#: the held-out results, in the model's directory beside its model card (README.md)
EVALUATION_NAME = "evaluation.json"
METRICS = ("dice", "nsd", "hd95")
#: concepts that must be answered "absent", per held-out dataset
ABSENT_CHECKS = {"mni152-2009a": ("cell nucleus",), "mni152-fsl-skull": ("cell nucleus",),
                 "stardist-nuclei": ("brain", "hippocampus", "thalamus", "head", "bone")}
NEVER_TRAINED = ("spleen", "liver")


def otsu_predictions(manifest, out: str | os.PathLike) -> Path:
    """Otsu's answers for "brain" (volumes) and "cell nucleus" (2D tiles), written as
    prediction files that ``evaluate --predictions DIR --manifest F`` reads."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    from medsam3 import read_image, write_label_map
    from medsam3.data import read_manifest

    manifest = read_manifest(manifest)
    out = Path(out)
    for item in manifest:
        image = read_image(manifest.resolve(item.image), modality=item.modality)
        array = np.asarray(image.array, dtype=np.float32)
        mask = array > threshold_otsu(array)
        if item.dim == 3:
            name = "brain"
            labelled, n = ndimage.label(mask)
            if n:
                sizes = np.bincount(labelled.ravel())
                sizes[0] = 0
                mask = ndimage.binary_fill_holes(labelled == sizes.argmax())
        else:
            name = "cell nucleus"
        path = out / f"{item.id}.nii.gz"  # the held-out ids are plain path parts: evaluate's file naming
        path.parent.mkdir(parents=True, exist_ok=True)
        write_label_map(mask.astype(np.uint8), image, path, sidecar={"labels": {"1": name}, "model": "otsu"})
    return out


def _scores(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {class: {metric: value}}}`` from an evaluation folder's cases.csv."""
    table: dict[str, dict[str, dict[str, float]]] = {}
    with open(out / "cases.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["status"] == "not_in_ground_truth":
                continue
            table.setdefault(row["dataset"], {})[row["class"]] = {m: _number(row[m]) for m in METRICS}
    return table


def _number(text: str) -> float:
    """A cases.csv cell as a float (an empty cell: NaN)."""
    return float(text) if text.strip() else math.nan


def absent_rates(model, manifest, *, stride: int = 1, progress: bool = True) -> dict[str, dict[str, float]]:
    """Per held-out dataset and concept: the fraction of images (axial slices of volumes,
    every ``stride``-th non-empty one) on which the network answers "absent"."""
    from tqdm.auto import tqdm

    from medsam3 import ImagePredictor, normalize_intensity, read_image
    from medsam3.data import read_manifest
    from medsam3.orientation import choose_orientation
    from medsam3.preprocess import context_planes

    manifest = read_manifest(manifest)
    predictor = ImagePredictor(model, gate_concepts=False)  # never-trained concepts: what the network itself says
    rates: dict[str, dict[str, float]] = {}
    for item in manifest:
        concepts = ABSENT_CHECKS.get(item.dataset, ()) + NEVER_TRAINED
        image = read_image(manifest.resolve(item.image), modality=item.modality)
        normalized = normalize_intensity(image, modality=item.modality)
        if item.dim == 3:
            orientation = choose_orientation(image.direction, "axial")
            stack = orientation.stack(normalized)
            context = predictor.context_offset(image.spacing[2 - orientation.slice_axis])
            kept = [k for k in range(len(stack)) if stack[k].max() > stack[k].min()][::stride]
            planes = (context_planes(stack, k, context) for k in kept)  # one at a time
            count = len(kept)
        else:
            planes, count = [normalized], 1
        absent = dict.fromkeys(concepts, 0)
        for plane in tqdm(planes, total=count, desc=f"absent answers {item.id}", disable=not progress, leave=False):
            predictor.set_image(np.ascontiguousarray(plane))
            for result in predictor.predict(list(concepts)):
                absent[result.prompt] += not result.present
        rates[item.dataset] = {c: absent[c] / count for c in concepts} | {"images": count}
    return rates


def evaluate_demo(model, manifest, out: str | os.PathLike, *, baselines: bool = True, absent_stride: int = 2,
                  untrained: str = "random:demo", progress: bool = True) -> dict[str, Any]:
    """Score ``model`` (a model or what ``MedSAM3.from_pretrained`` takes; and, with
    ``baselines``, the ``untrained`` model and Otsu) on the held-out manifest; write
    ``OUT/demo-eval.json`` and ``OUT/demo-eval.md``; return the JSON content."""
    from medsam3 import MedSAM3
    from medsam3.evaluate import evaluate_manifest, evaluate_model

    out = Path(out)
    loaded = model if isinstance(model, MedSAM3) else MedSAM3.from_pretrained(model, device="cpu")
    runs = {"model": (loaded, out / "model")}
    results: dict[str, Any] = {"model": str(loaded.source), "manifest": str(manifest), "scores": {}}
    if baselines:
        results["untrained"] = untrained
        runs["untrained"] = (results["untrained"], out / "untrained")
    for key, (m, folder) in runs.items():
        evaluate_model(m, manifest, folder, prompt_mode="text", split="test", volume_mode="slices", device="cpu",
                       overwrite=True, progress=progress, plots=False, n_bootstrap=200)
        results["scores"][key] = _scores(folder)
    if baselines:
        otsu_predictions(manifest, out / "otsu" / "predictions")
        evaluate_manifest(out / "otsu" / "predictions", manifest, out / "otsu", split="test", overwrite=True,
                          progress=progress, plots=False, n_bootstrap=200)
        otsu = _scores(out / "otsu")
        results["scores"]["otsu"] = {ds: {c: v for c, v in classes.items() if c in ("brain", "cell nucleus")}
                                     for ds, classes in otsu.items()}
    results["absent"] = absent_rates(loaded, manifest, stride=absent_stride, progress=progress)
    (out / "demo-eval.json").write_text(json.dumps(results, indent=2, default=_json_number) + "\n")
    (out / "demo-eval.md").write_text(markdown_table(results))
    return results


def volume_modes(models: dict[str, Any], manifest, out: str | os.PathLike, *, datasets=("mni152-fsl-skull",),
                 modes=("slices", "propagate", "merged"), progress: bool = True) -> dict[str, Any]:
    """Dice per class of each model (``{name: model}``) in each volume mode on the held-out
    volumes of ``datasets``: ``{name: {mode: {dataset: {class: metrics}}}}``; also written to
    ``OUT/demo-volume-modes.json`` and ``.md``."""
    from medsam3.evaluate import evaluate_model

    out = Path(out)
    table: dict[str, Any] = {}
    for name, model in models.items():
        for mode in modes:
            folder = out / f"{name}-{mode}"
            evaluate_model(model, manifest, folder, prompt_mode="text", split="test", datasets=list(datasets),
                           volume_mode=mode, device="cpu", overwrite=True, progress=progress, plots=False,
                           n_bootstrap=200)
            table.setdefault(name, {})[mode] = _scores(folder)
    (out / "demo-volume-modes.json").write_text(json.dumps(table, indent=2, default=_json_number) + "\n")
    (out / "demo-volume-modes.md").write_text(volume_modes_table(table))
    return table


def volume_modes_table(table: dict[str, Any]) -> str:
    """Dice per class: one column per (model, mode)."""
    columns = [(name, mode) for name, modes in table.items() for mode in modes]
    first = table[columns[0][0]][columns[0][1]]
    lines = ["| held-out volume | class | " + " | ".join(f"{n}: {m}" for n, m in columns) + " |",
             "|---|---|" + "---|" * len(columns)]
    for dataset, classes in first.items():
        for cls in classes:
            cells = []
            for n, m in columns:
                v = table[n][m].get(dataset, {}).get(cls)
                cells.append("—" if v is None or v["dice"] is None else f"{v['dice']:.3f}")
            lines.append(f"| {dataset} | {cls} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _json_number(value):
    if isinstance(value, float) and not math.isfinite(value):
        return
    raise TypeError(value)


def _cell(scores: dict, dataset: str, cls: str) -> str:
    v = scores.get(dataset, {}).get(cls)
    if v is None:
        return "—"
    parts = []
    for m in METRICS:
        x = v[m]
        parts.append("nan" if x is None or not math.isfinite(x) else (f"{x:.1f}" if m == "hd95" else f"{x:.3f}"))
    return " / ".join(parts)


def markdown_table(results: dict[str, Any]) -> str:
    """Dice / NSD / HD95 per held-out dataset and class for each method, then absent rates."""
    scores = results["scores"]
    methods = [m for m in ("model", "untrained", "otsu") if m in scores]
    title = {"model": "trained", "untrained": f"untrained ({results.get('untrained')})", "otsu": "Otsu"}
    lines = ["| held-out image | class | " + " | ".join(f"{title[m]}: Dice / NSD / HD95 mm" for m in methods) + " |",
             "|---|---|" + "---|" * len(methods)]
    for dataset, classes in scores["model"].items():
        for cls in classes:
            lines.append(f"| {dataset} | {cls} | " + " | ".join(_cell(scores[m], dataset, cls) for m in methods) + " |")
    lines += ["", "| held-out image | images | " + " | ".join(
        f"'{c}' absent" for c in sorted({c for r in results["absent"].values() for c in r if c != "images"})) + " |"]
    concepts = sorted({c for r in results["absent"].values() for c in r if c != "images"})
    lines.append("|---|---|" + "---|" * len(concepts))
    for dataset, rates in results["absent"].items():
        lines.append(f"| {dataset} | {rates['images']} | " + " | ".join(
            f"{100 * rates[c]:.0f} %" if c in rates else "—" for c in concepts) + " |")
    return "\n".join(lines) + "\n"



def _series(run: Path) -> dict[str, list[tuple[int, float]]]:
    """``tag -> [(step, value)]`` from a training run's metrics.csv."""
    series: dict[str, list[tuple[int, float]]] = {}
    with open(run / "metrics.csv", newline="") as f:
        for row in csv.DictReader(f):
            series.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return series


def _moving_average(steps, values, parts: int):
    """``(steps, means)`` of a window of ``len(values) // parts`` points (at least 1)."""
    import numpy as np

    k = max(1, len(values) // parts)
    return steps[k - 1:], np.convolve(values, np.ones(k) / k, mode="valid")


def _one_after_another(runs: list[Path], axes):
    """``(number, series, offset)`` per run, each drawn after the previous one's last step;
    a dashed line on ``axes`` where a run after the first starts."""
    offset = 0
    for number, run in enumerate(runs, 1):
        series = _series(run)
        if offset:
            for ax in axes:
                ax.axvline(offset, color="k", ls="--", lw=0.7)
        yield number, series, offset
        offset += max(s for s, _ in series["train/loss"])


def training_curves(runs: list[Path], output: Path, first_stage: int = 1) -> Path:
    """Loss terms and the training batches' semantic Dice (1 - semantic_dice loss / its weight
    30) per step; several runs (training stages, each continuing the previous one's final
    model) are drawn one after the other, a dashed line where a stage starts; the first run is
    stage ``first_stage``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    def smoothed(ax, steps, values, label=None):
        line, = ax.plot(steps, values, lw=0.6, alpha=0.3)
        ax.plot(*_moving_average(steps, values, 12), color=line.get_color(), label=label)

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for number, series, offset in _one_after_another(runs, axes):
        stage = number + first_stage - 1
        for ax, tags in ((axes[0], ["train/loss"]),
                         (axes[1], ["loss/mask_dice", "loss/semantic_dice", "loss/presence", "loss/class",
                                    "loss/semantic_presence"])):
            for tag in tags:
                points = [(s + offset, v) for s, v in series.get(tag, [])]
                if points and any(v for _, v in points):
                    steps, values = map(np.asarray, zip(*points))
                    smoothed(ax, steps, values, f"{tag.split('/')[-1]} ({stage})")
        steps, values = map(np.asarray, zip(*series["loss/semantic_dice"]))
        smoothed(axes[2], steps + offset, 1 - values / 30.0, f"stage {stage}: {runs[number - 1].name}")
    for ax, title in zip(axes, ("total loss", "loss terms (weighted)", "training-batch semantic Dice")):
        ax.set_title(title)
        ax.set_xlabel("step")
    axes[2].set_ylim(0, 1)
    axes[1].legend(fontsize=6)
    axes[2].legend(fontsize=7)
    axes[0].set_yscale("log")
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=110)
    return output


def tracker_curves(runs: list[Path], output: Path) -> Path:
    """The tracker runs' loss terms per step, one after the other (a dashed line where a run
    continues the previous one's tracker on a new detector)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    for number, series, offset in _one_after_another(runs, [ax]):
        for color, tag in enumerate(("loss/mask_dice", "loss/object_score", "loss/iou", "loss/mask_focal")):
            if tag in series:
                steps, values = zip(*series[tag])
                ax.plot(*_moving_average([s + offset for s in steps], values, 20), color=f"C{color}",
                        label=tag.split("/")[-1] if number == 1 else None)
    ax.set_xlabel("step")
    ax.set_title("tracker training (clips of 8 slices)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(output, dpi=110)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--heldout", default="data/demo/heldout/demo-heldout.jsonl")
    parser.add_argument("--out", default="runs/demo-eval")
    parser.add_argument("--run", action="append", default=[],
                        help="training run folder for the curves (repeat for stages, in order)")
    parser.add_argument("--curves", default="docs/demo-training.png",
                        help="where the detector curves go; the tracker's go next to them, 'training' in the "
                             "name replaced by 'tracker-training'")
    parser.add_argument("--first-stage", type=int, default=1, help="the stage number of the first --run")
    parser.add_argument("--absent-stride", type=int, default=2)
    parser.add_argument("--record", action="store_true",
                        help=f"write the results into {EVALUATION_NAME} in the model's directory")
    parser.add_argument("--volume-modes", action="append", default=[], metavar="NAME=MODEL",
                        help="compare slices / propagate / merged on the held-out volume for these models "
                             "(repeat; e.g. the model before and after a training stage)")
    parser.add_argument("--tracker-run", action="append", default=[],
                        help="tracker training run folder for its curves (repeat for runs that continue one another)")
    parser.add_argument("--heldout-from", default=None, metavar="EVALUATION_JSON",
                        help=f"reuse the held-out scores recorded in this {EVALUATION_NAME} (a model with the same "
                             "detector, e.g. before a tracker-only retraining) instead of measuring them again")
    args = parser.parse_args(argv)

    import torch

    from medsam3 import MedSAM3

    start = time.time()
    if args.heldout_from:
        results = json.loads(Path(args.heldout_from).read_text())
        results.pop("volume_modes", None)
        # the scores are those of another directory's detector: say so next to this model's name
        results["heldout_from"] = {"file": args.heldout_from, "model": results.get("model")}
        results["model"] = args.model
        Path(args.out).mkdir(parents=True, exist_ok=True)
        Path(args.out, "demo-eval.md").write_text(markdown_table(results))
    else:
        results = evaluate_demo(args.model, args.heldout, args.out, absent_stride=args.absent_stride)
        results["absent_stride"] = args.absent_stride
        results["machine"] = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                              "torch": torch.__version__, "seconds": round(time.time() - start, 1)}
    if args.run:
        curves = training_curves([Path(r) for r in args.run], Path(args.curves), args.first_stage)
        print(f"curves: {curves}", file=sys.stderr)
    if args.volume_modes:
        models = {}
        for entry in args.volume_modes:
            name, sep, model = entry.partition("=")
            if not sep or not name or not model:
                parser.error(f"--volume-modes {entry!r}: expected NAME=MODEL")
            models[name] = model
        results["volume_modes"] = volume_modes(models, args.heldout, Path(args.out) / "volume-modes")
    if args.tracker_run:
        output = Path(args.curves).with_name(Path(args.curves).name.replace("training", "tracker-training"))
        curves = tracker_curves([Path(r) for r in args.tracker_run], output)
        print(f"curves: {curves}", file=sys.stderr)
    if args.record:
        path = MedSAM3.from_pretrained(args.model, device="cpu").directory / EVALUATION_NAME
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(results, indent=2, default=lambda v: None) + "\n")
        os.replace(tmp, path)
        print(f"recorded in {path}", file=sys.stderr)
    print(Path(args.out, "demo-eval.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
