"""How good the bundled demo model is, on data it never saw: held-out templates, baselines.

:func:`evaluate_demo` scores a model on the held-out manifest of :mod:`medsam3.data.demo`
with ``medsam3 evaluate`` (text prompts; volumes slice by slice, the demo model has no
trained tracker) and, in the same run, two baselines:

* the **untrained** model: the same configuration at its random initialisation
  (``random:demo``, the weights training started from);
* **Otsu thresholding** (scikit-image): the volume's Otsu threshold, its largest connected
  component with holes filled, as "brain"; on the microscopy tile, the pixels above Otsu
  as "cell nucleus". Otsu cannot name structures, so it answers only those two classes.

It also measures "absent" answers per slice: trained concepts that cannot be in an image
("cell nucleus" on every axial slice of the MRI templates; the brain structures on the
microscopy tile) and, with the vocabulary guard bypassed, never-trained concepts ("spleen",
"liver") to show what the network alone would do. Everything lands in ``OUT/demo-eval.json``
and a Markdown table ``OUT/demo-eval.md``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from medsam3.errors import InputError

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

    from medsam3.evaluate.manifest import PREDICTION_EXTENSION, load_manifest, load_reference, prediction_stems
    from medsam3.io import write_label_map

    manifest = load_manifest(manifest)
    out = Path(out)
    stems = prediction_stems([item.id for item in manifest])
    for item in manifest:
        image = load_reference(manifest, item)
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
        path = out / f"{stems[item.id]}{PREDICTION_EXTENSION}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_label_map(mask.astype(np.uint8), image, path, sidecar={"labels": {"1": name}, "model": "otsu"})
    return out


def _scores(out: Path) -> dict[str, dict[str, dict[str, float]]]:
    """``{dataset: {class: {metric: value}}}`` from an evaluation folder's cases.csv."""
    from medsam3.evaluate.cases import CASES_CSV, read_cases_csv

    table: dict[str, dict[str, dict[str, float]]] = {}
    for row in read_cases_csv(out / CASES_CSV):
        if row["status"] == "not_in_ground_truth":
            continue
        table.setdefault(row["dataset"], {})[row["class"]] = {m: float(row[m]) for m in METRICS}
    return table


def absent_rates(model, manifest, *, stride: int = 1, progress: bool = True) -> dict[str, dict[str, float]]:
    """Per held-out dataset and concept: the fraction of images (axial slices of volumes,
    every ``stride``-th non-empty one) on which the network answers "absent"."""
    from tqdm.auto import tqdm

    from medsam3.evaluate.manifest import load_manifest, load_reference
    from medsam3.predict.image import ImagePredictor
    from medsam3.orientation import choose_orientation
    from medsam3.preprocess import context_planes, normalize_intensity

    manifest = load_manifest(manifest)
    predictor = ImagePredictor(model, gate_concepts=False)  # never-trained concepts: what the network itself says
    rates: dict[str, dict[str, float]] = {}
    for item in manifest:
        concepts = ABSENT_CHECKS.get(item.dataset, ()) + NEVER_TRAINED
        image = load_reference(manifest, item)
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
                  progress: bool = True) -> dict[str, Any]:
    """Score ``model`` (and, with ``baselines``, the untrained model and Otsu) on the held-out
    manifest; write ``OUT/demo-eval.json`` and ``OUT/demo-eval.md``; return the JSON content."""
    from medsam3.evaluate.manifest import evaluate_manifest
    from medsam3.evaluate.model import evaluate_model
    from medsam3.segmentation import load_model

    out = Path(out)
    loaded = load_model(model, device="cpu")
    runs = {"model": (loaded, out / "model")}
    results: dict[str, Any] = {"model": str(loaded.source), "manifest": str(manifest), "scores": {}}
    if baselines:
        results["untrained"] = f"random:{_config_name(loaded)}"
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
    from medsam3.evaluate.model import evaluate_model

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


def _config_name(model) -> str:
    from medsam3.model.configs import SIZES, build_config

    size = model.image_size
    width = model.config.detector_config.vision_config.backbone_config.hidden_size
    for name, spec in SIZES.items():
        if spec is not None and spec.image_size == size and spec.vit_hidden == width:
            text = build_config(name).detector_config.text_config.hidden_size
            if text == model.config.detector_config.text_config.hidden_size:
                return name
    raise InputError(f"model {model.source} matches no named configuration: no untrained baseline")


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
