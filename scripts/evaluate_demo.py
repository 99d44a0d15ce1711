"""Evaluate the bundled demo model on its held-out data, with the untrained model and Otsu
thresholding measured in the same run, and draw the training curves.

    medsam3 data build-demo -o data/demo --heldout-only        # if not built yet
    python scripts/evaluate_demo.py --run runs/demo-cpu --run runs/demo-cpu-semantic --run runs/demo-cpu-vit --record

Writes OUT/demo-eval.json and OUT/demo-eval.md (the README's tables), docs/demo-training.png
(loss and training-batch Dice per step from the run's metrics.csv) and, with --record, the
results into the shipped model's medsam3.json (``heldout``), which the CI test
tests/test_demo_model.py re-measures.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path


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


def main() -> int:
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
    parser.add_argument("--record", action="store_true", help="write the results into the model's medsam3.json")
    parser.add_argument("--volume-modes", action="append", default=[], metavar="NAME=MODEL",
                        help="compare slices / propagate / merged on the held-out volume for these models "
                             "(repeat; e.g. the model before and after a training stage)")
    parser.add_argument("--tracker-run", action="append", default=[],
                        help="tracker training run folder for its curves (repeat for runs that continue one another)")
    parser.add_argument("--heldout-from", default=None, metavar="MEDSAM3_JSON",
                        help="reuse the held-out scores recorded in this medsam3.json (a model with the same "
                             "detector, e.g. before a tracker-only retraining) instead of measuring them again")
    args = parser.parse_args()

    import torch

    from medsam3.evaluate.demo import evaluate_demo, markdown_table
    from medsam3.model.loader import INFO_NAME, model_directory

    start = time.time()
    if args.heldout_from:
        results = json.loads(Path(args.heldout_from).read_text())["heldout"]
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
        from medsam3.evaluate.demo import volume_modes

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
        path = model_directory(args.model) / INFO_NAME
        info = json.loads(path.read_text())
        info["heldout"] = results
        tmp = path.with_name(path.name + ".part")
        tmp.write_text(json.dumps(info, indent=2, default=lambda v: None) + "\n")
        os.replace(tmp, path)
        print(f"recorded in {path}", file=sys.stderr)
    print(Path(args.out, "demo-eval.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
