"""Evaluation against a manifest's ground truth: ``medsam3 evaluate --manifest F``.

Two ways in, one way of scoring:

* ``--model M --manifest F --prompt-mode MODE`` (:func:`medsam3.evaluate.model.evaluate_model`)
  runs the model on every item and writes its predictions under ``OUT/predictions/``;
* ``--predictions DIR --manifest F`` (:func:`evaluate_manifest`) scores label maps that
  already exist (another tool's, or an earlier ``--model`` run's ``predictions/``).

Both score every class of every item with :func:`medsam3.evaluate.folder.score_case`, the
code that scores label-map folders, against the item's ground truth read by the data
module (:func:`medsam3.data.loading.load_labels`: label maps, binary / colour masks, COCO,
npz) on the item's image grid, and write the same ``cases.csv``, ``report.md`` and
``report.json`` (plus a ``run`` section naming the manifest, split, model and prompt mode).

Items and classes
-----------------
The items are those of one split (``split``; by default ``test``, or every item, with a
note in the report, when the manifest has no test split), optionally of some datasets.
Unlabelled items are listed in the report, not scored. A case is one item (its ``id`` is
the ``case`` column); its classes are :meth:`ManifestItem.targets` in order: class ``k``
(1-based) is the ``k``-th target, and its pixels in the ground truth are the target's label
values (a region's union; every value > 0 of an instance map). Pixels equal to the item's
``ignore_value`` count in neither mask.

Prediction files
----------------
A prediction of item ``ID`` is ``PRED/ID.nii.gz`` (the id's ``/`` become folders; unsafe
characters become ``_``), with a JSON sidecar naming its labels. ``--predictions`` also
accepts any image ending and, failing that, the id with ``/`` replaced by ``_`` or the
item's ``case`` (when no other selected item shares it). A class is looked up in the
prediction by name (the sidecar's ``labels``, matching the class name or its canonical
prompt, case-insensitive), else by the ground truth's values (nnU-Net style numbering),
unless the sidecar gives those values to other names (then the class is predicted empty).
Classes that overlap in the ground truth (regions such as BraTS' whole tumor and tumor
core) or share a canonical prompt cannot share one label map: ``--model`` runs write them
to extra *layer* files ``ID.layer1.nii.gz``, ... listed in the main sidecar's ``layers``.

Failures are rows, as in folder mode: ``missing_prediction``, ``false_negative``,
``absent_answer`` (the sidecar lists the class, or its prompt, as ``absent``) and
``false_positive`` rows are listed in the report; nothing is skipped silently.

Length (~640 lines): its sections (classes, items, predictions, resume and output, the
``--predictions`` run) are the one protocol above, shared with :mod:`medsam3.evaluate.model`;
the cases table itself is :mod:`medsam3.evaluate.cases`. The prediction-file lookup is the
seam to cut next, once evaluation runs through the prediction pipeline (issue #29, item 5).
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from hashlib import sha1
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np

from medsam3.errors import ArgumentError, InputError
from medsam3.evaluate.cases import (
    CASES_CSV, SETTINGS_JSON, EvaluationSettings, append_case_rows, read_cases_csv, rows_to_csv_text,
)
from medsam3.evaluate.folder import FolderEvaluation, score_case
from medsam3.image import Image
from medsam3.io.sidecar import read_sidecar

#: Ending of the prediction files ``evaluate --model`` writes (full geometry, 2D and 3D).
PREDICTION_EXTENSION = ".nii.gz"
PREDICTIONS_DIR = "predictions"
#: ``split`` values besides the manifest's own: every item.
ALL_SPLITS = "all"


# --------------------------------------------------------------------------- classes


@dataclass(frozen=True)
class ItemClass:
    """One class of one manifest item.

    Attributes:
        index: its label value in ``evaluate --model`` predictions (1-based target order).
        name: the class name as the manifest gives it.
        values: its label values in the ground truth (``None``: every value > 0).
        prompt: its canonical text prompt (:func:`medsam3.prompts.resolve_prompt`).
        known: whether the prompt vocabulary knows the class.
        layer: the prediction file holding it (0: the main file).
    """

    index: int
    name: str
    values: tuple[int, ...] | None
    prompt: str
    known: bool
    layer: int = 0

    @property
    def single_value(self) -> int | None:
        return self.values[0] if self.values is not None and len(self.values) == 1 else None


def item_classes(item) -> list[ItemClass]:
    """The classes of a manifest item, with prompts and prediction layers.

    Layers: a class goes to the first layer where it overlaps no class already there;
    classes overlap when their ground-truth values intersect (an instance map's
    "every value" overlaps everything) or their canonical prompts are equal.
    """
    from medsam3.prompts import resolve_prompt

    out: list[ItemClass] = []
    layers: list[list[ItemClass]] = []
    for index, (name, values) in enumerate(item.targets(), start=1):
        resolved = resolve_prompt(name, warn=False, check_length=False)
        layer = 0
        while layer < len(layers) and any(_overlap(values, other.values) or resolved.prompt == other.prompt
                                           for other in layers[layer]):
            layer += 1
        cls = ItemClass(index, name, values, resolved.prompt, resolved.known, layer)
        if layer == len(layers):
            layers.append([])
        layers[layer].append(cls)
        out.append(cls)
    return out


def _overlap(a: tuple[int, ...] | None, b: tuple[int, ...] | None) -> bool:
    return a is None or b is None or bool(set(a) & set(b))


def class_mask(label: np.ndarray, values: tuple[int, ...] | None, ignore_value: int | None = None) -> np.ndarray:
    """Pixels of a class in a label array (``values`` ``None``: every value > 0 except ``ignore_value``)."""
    from medsam3.data.loading import target_mask

    mask = target_mask(label, values)
    if values is None and ignore_value is not None:
        mask &= label != ignore_value
    return mask


# --------------------------------------------------------------------------- items


def load_manifest(manifest):
    """A :class:`~medsam3.data.Manifest` from a path (or the manifest itself)."""
    from medsam3.data.manifest import Manifest, read_manifest

    if isinstance(manifest, Manifest):
        return manifest
    if manifest is None:
        raise ArgumentError("give a manifest (--manifest F.jsonl), written by `medsam3 data convert` or `data prepare`")
    return read_manifest(manifest)


def select_labelled_items(manifest, split: str | None, datasets, verb: str):
    """:func:`select_items`, then the labelled ones apart; a note lists the unlabelled ones.

    Returns ``(items, split_used, notes, labelled_items, unlabelled_ids)``.
    """
    items, split_used, notes = select_items(manifest, split, datasets)
    labelled = [it for it in items if it.label is not None and it.targets()]
    unlabelled = [it.id for it in items if it.label is None or not it.targets()]
    if unlabelled:
        notes.append(f"{len(unlabelled)} selected items have no label (or no class) and are not {verb}: "
                     f"{', '.join(unlabelled[:10])}{' ...' if len(unlabelled) > 10 else ''}")
    return items, split_used, notes, labelled, unlabelled


def select_items(manifest, split: str | None = None,
                 datasets: Sequence[str] | str | None = None) -> tuple[list, str, list[str]]:
    """The items to evaluate: ``(items, split used, notes)``.

    Args:
        split: ``train``, ``val``, ``test`` or ``all``; ``None`` means ``test`` when the
            manifest has test items, else every item (with a note saying so).
        datasets: only items of these datasets (names, or one comma-separated string).

    Raises:
        ArgumentError: an unknown split or dataset, or a split without items.
    """
    from medsam3.data.manifest import SPLITS

    notes: list[str] = []
    if isinstance(datasets, str):
        datasets = [d.strip() for d in datasets.split(",") if d.strip()]
    if datasets:
        known = manifest.datasets()
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise ArgumentError(f"dataset(s) {', '.join(unknown)} are not in {manifest.path or 'the manifest'}; "
                                f"it holds {', '.join(known)}")
        datasets = list(datasets)
    else:
        datasets = None
    counts = {s: sum(1 for it in manifest.items if it.split == s) for s in SPLITS}
    if split is None:
        chosen = manifest.select("test", datasets).items
        used = "test"
        if not chosen:
            chosen = manifest.select(None, datasets).items
            used = ALL_SPLITS
            notes.append(f"the manifest has no test split: all {len(chosen)} items are evaluated "
                         f"({', '.join(f'{n} {s}' for s, n in counts.items() if n)}); scores on training "
                         "items are not held-out scores (make a test split with `medsam3 data convert "
                         "--test-fraction`)")
    elif split == ALL_SPLITS:
        chosen, used = manifest.select(None, datasets).items, ALL_SPLITS
    else:
        if split not in SPLITS:
            raise ArgumentError(f"unknown split {split!r}; use one of {', '.join(SPLITS)} or {ALL_SPLITS}")
        chosen, used = manifest.select(split, datasets).items, split
        if not chosen:
            raise ArgumentError(f"{manifest.path or 'the manifest'} has no {split} items"
                                f"{' in ' + ', '.join(datasets) if datasets else ''} "
                                f"({', '.join(f'{n} {s}' for s, n in counts.items())}); choose another --split")
    if not chosen:
        raise ArgumentError(f"{manifest.path or 'the manifest'} has no items to evaluate")
    return chosen, used, notes


def _safe_part(part: str) -> str:
    part = re.sub(r"[^A-Za-z0-9._+\-]", "_", part)
    return "_" if part in ("", ".", "..") else part


def prediction_stems(item_ids: Sequence[str]) -> dict[str, PurePosixPath]:
    """``{item id: relative path without ending}``: the id's ``/`` become folders.

    Characters other than letters, digits and ``._+-`` become ``_``; ids that would then
    collide (also when only their case differs) get a short hash of the id appended.
    """
    stems = {i: PurePosixPath(*[_safe_part(p) for p in i.split("/") if p] or ["_"]) for i in item_ids}
    seen: dict[str, list[str]] = {}
    for i, stem in stems.items():
        seen.setdefault(str(stem).lower(), []).append(i)
    for ids in seen.values():
        if len(ids) > 1:
            for i in ids:
                stems[i] = stems[i].with_name(f"{stems[i].name}__{sha1(i.encode()).hexdigest()[:8]}")
    return stems


def layer_path(main: Path, layer: int) -> Path:
    """The file of prediction layer ``layer`` next to the main file ``main`` (``ID.layerN.nii.gz``)."""
    if layer == 0:
        return main
    from medsam3.io.formats import image_extension, strip_image_extension

    return Path(f"{strip_image_extension(main)}.layer{layer}{image_extension(main)}")


# --------------------------------------------------------------------------- reading items


def load_reference(manifest, item) -> Image:
    """The item's image as read (its geometry is the grid of predictions and ground truth)."""
    from medsam3.data import loading

    image = loading.load_image(manifest, item)
    if image.shape != tuple(item.shape):
        raise InputError(f"{image.path} has shape {image.shape} but the manifest says {tuple(item.shape)} "
                         f"for {item.id}: the file changed since the manifest was written; convert again")
    return image


def load_ground_truth(manifest, item, reference: Image) -> np.ndarray:
    """The item's integer labels on the reference grid (via :func:`medsam3.data.loading.load_labels`)."""
    from medsam3.data import loading

    label, _ = loading.load_labels(manifest, item)
    if label is None:
        raise InputError(f"{item.id} has no label; it cannot be scored")
    label = np.asarray(label)
    if tuple(label.shape) != tuple(reference.shape):
        raise InputError(f"label of {item.id} ({item.label}) has shape {tuple(label.shape)} but its image "
                         f"({item.image}) has {tuple(reference.shape)}")
    return label


def ground_truth_path(manifest, item) -> str:
    labels = item.label if isinstance(item.label, list) else [item.label]
    return ";".join(str(manifest.resolve(p)) for p in labels if p is not None)


# --------------------------------------------------------------------------- predictions


@dataclass
class PredictionFile:
    """One prediction label map with its sidecar."""

    path: Path
    image: Image
    sidecar: dict[str, Any]

    def names(self) -> dict[int, str]:
        labels = self.sidecar.get("labels") or {}
        out = {}
        if isinstance(labels, dict):
            for key, name in labels.items():
                try:
                    out[int(key)] = str(name)
                except (TypeError, ValueError):
                    raise InputError(f"sidecar of {self.path}: label value {key!r} is not an integer") from None
        return out

    def absent(self) -> set[str]:
        raw = self.sidecar.get("absent") or []
        names = self.names()
        out = set()
        for entry in raw if isinstance(raw, list) else [raw]:
            if isinstance(entry, int) or (isinstance(entry, str) and entry.isdigit()):
                entry = names.get(int(entry), str(entry))
            out.add(str(entry).strip().lower())
        return out


def read_prediction_files(path: Path) -> list[PredictionFile]:
    """The main prediction file and the layer files its sidecar lists (``layers``).

    Raises:
        InputError: unreadable files, or a listed layer file that is missing.
    """
    from medsam3.io import read_label_map

    main = PredictionFile(path, read_label_map(path), read_sidecar(path))
    files = [main]
    for name in main.sidecar.get("layers") or []:
        layer = path.parent / str(name)
        if not layer.is_file():
            raise InputError(f"{path}'s sidecar lists the layer file {layer}, which is missing; "
                             "predict the item again (delete its prediction, or --overwrite)")
        files.append(PredictionFile(layer, read_label_map(layer), read_sidecar(layer)))
    return files


@dataclass
class ClassPrediction:
    """Where a class lies in a prediction: the file, its label values and whether it was answered absent."""

    file: PredictionFile | None
    values: tuple[int, ...] | None
    pred_label: int | None
    absent: bool
    found: bool  # False: the prediction holds nothing for the class (its mask is empty)


def find_class(cls: ItemClass, files: list[PredictionFile]) -> ClassPrediction:
    """Look a class up in a prediction: by name or prompt in the sidecars, else by ground-truth values."""
    keys = {cls.name.strip().lower(), cls.prompt.strip().lower()}
    for f in files:
        for value, name in sorted(f.names().items()):
            if name.strip().lower() in keys:
                return ClassPrediction(f, (value,), value, bool(f.absent() & keys), True)
    main = files[0]
    names = main.names()
    absent = bool(main.absent() & keys)
    if cls.values is None:
        if names:  # a named prediction that does not name the instance class
            return ClassPrediction(main, None, None, absent, False)
        return ClassPrediction(main, None, None, absent, True)
    if any(v in names for v in cls.values):  # those values belong to other names
        return ClassPrediction(main, None, None, absent, False)
    return ClassPrediction(main, cls.values, cls.single_value, absent, True)


def score_item(item, classes: list[ItemClass], gt_label: np.ndarray, reference: Image, gt_path: str,
               files: list[PredictionFile] | None, settings: EvaluationSettings) -> list[dict[str, Any]]:
    """One row per class of an item (dicts over :data:`~medsam3.evaluate.cases.CSV_COLUMNS`).

    Each class is scored by :func:`~medsam3.evaluate.folder.score_case` on two binary maps
    on the reference grid (the item's image): the class in the ground truth and in the
    prediction (``files`` ``None``: missing prediction). The ``label`` column is the
    class's ground-truth value (empty for several values), ``pred_label`` its value in
    the prediction.

    Raises:
        InputError: a prediction that does not lie on the image's grid.
    """
    ignore = (gt_label == item.ignore_value) if item.ignore_value is not None else None
    common_meta = {"modality": item.modality or "", "dataset": item.dataset}
    rows = []
    for cls in classes:
        gt_mask = class_mask(gt_label, cls.values, item.ignore_value)
        if ignore is not None:
            gt_mask &= ~ignore
        gt_image = Image(array=gt_mask.astype(np.uint8), spacing=reference.spacing, origin=reference.origin,
                         direction=reference.direction, modality=None, path=gt_path)
        labels = {"labels": {"1": cls.name}}
        if files is None:
            pred_image, pred_sidecar, pred_label = None, {}, None
        else:
            where = find_class(cls, files)
            source = where.file.image
            if not where.found:
                mask = np.zeros(source.shape, bool)
            elif where.values is None:
                mask = source.array > 0
            else:
                mask = class_mask(source.array, where.values)
            if ignore is not None and mask.shape == ignore.shape:
                mask &= ~ignore
            pred_image = source.with_array(mask.astype(np.uint8))
            pred_image.path = str(where.file.path)
            pred_sidecar = {**labels, "absent": [cls.name] if where.absent else []}
            pred_label = where.pred_label
        case_rows = score_case(pred_image, gt_image, settings, item.id, pred_sidecar=pred_sidecar,
                               gt_sidecar={**labels, **common_meta}, dataset=item.dataset)
        for row in case_rows:
            row["label"] = cls.single_value
            row["pred_label"] = pred_label
        rows.extend(case_rows)
    return rows


# --------------------------------------------------------------------------- resume and output


def check_settings(out: Path, current: dict[str, Any]) -> None:
    """Refuse to resume ``out`` when its ``settings.json`` differs from ``current`` (any key)."""
    settings_file = out / SETTINGS_JSON
    if not (out / CASES_CSV).exists() or not settings_file.exists():
        return
    try:
        previous = json.loads(settings_file.read_text())
    except (OSError, ValueError):
        raise InputError(f"cannot read {settings_file}; delete {out} or choose a new --out") from None
    previous, current = _flat(previous), _flat(current)
    changed = [k for k in sorted(set(previous) | set(current)) if previous.get(k) != current.get(k)]
    if changed:
        details = "; ".join(f"{k}: {previous.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ArgumentError(f"{out / CASES_CSV} was made with other settings ({details}); resuming would mix "
                            "them. Use the same settings, a new --out, or --overwrite")


def _flat(settings: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"run": {"mode": m}}`` -> ``{"run.mode": m}`` (differences are named precisely)."""
    out: dict[str, Any] = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value and key != "labels":
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def prepare_out(out: str | os.PathLike, settings_json: dict[str, Any], overwrite: bool) -> Path:
    """Create ``out``, check resume settings, write ``settings.json``; returns ``out``."""
    from medsam3.evaluate.report import write_json

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    if overwrite and (out / CASES_CSV).exists():
        (out / CASES_CSV).unlink()
    check_settings(out, settings_json)
    write_json(out / SETTINGS_JSON, settings_json)
    return out


def keep_rows(csv_path: Path, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
    """The rows of ``csv_path`` that ``keep`` accepts; the file is rewritten when any go."""
    from medsam3.io.atomic import atomic_output

    previous = read_cases_csv(csv_path) if csv_path.exists() else []
    kept = [r for r in previous if keep(r)]
    # no file yet: it appears with the first case's rows (append_rows), never header-only
    if csv_path.exists() and (len(kept) != len(previous) or not csv_path.read_text().endswith("\n")):
        with atomic_output(csv_path) as tmp:
            Path(tmp).write_text(rows_to_csv_text(kept, header=True))
    return kept


def append_rows(csv_path: Path, rows: list[dict[str, Any]]) -> None:
    """Append one case's rows in one write (an interruption leaves whole cases or a cut last line);
    the header comes first when the file does not exist yet."""
    append_case_rows(csv_path, rows)


@dataclass
class ManifestEvaluation(FolderEvaluation):
    """What :func:`evaluate_manifest` and :func:`~medsam3.evaluate.model.evaluate_model` produced.

    Besides :class:`~medsam3.evaluate.folder.FolderEvaluation`'s fields:

    Attributes:
        manifest: the manifest file.
        split: the split evaluated (``all`` when every item was).
        items: ids of the items evaluated, in order.
        unlabelled: ids of selected items without a label (listed, not scored).
        predictions: the folder of prediction files.
        predicted_now: ids predicted in this run (``evaluate_model`` only).
        notes: things the report says about the run (fallbacks, limits).
    """

    manifest: Path | None = None
    split: str = ""
    items: list[str] = field(default_factory=list)
    unlabelled: list[str] = field(default_factory=list)
    predictions: Path | None = None
    predicted_now: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def write_manifest_report(out: Path, rows: list[dict[str, Any]], settings: EvaluationSettings, name: str,
                          predictions: Path, manifest_path: Path, run: dict[str, Any], run_lines: list[str],
                          n_bootstrap: int, seed: int, plots: bool) -> dict[str, Any]:
    """The folder report (:func:`~medsam3.evaluate.report.write_folder_report`) plus a ``run``
    section: ``report.json["run"]`` and a "Run" paragraph at the top of ``report.md``."""
    from medsam3.evaluate.report import write_folder_report, write_json
    from medsam3.io.atomic import atomic_output

    report = write_folder_report(out, rows, settings, name=name, predictions=predictions,
                                 ground_truth=manifest_path, unmatched_predictions=(), n_bootstrap=n_bootstrap,
                                 seed=seed, plots=plots)
    content = json.loads(Path(report["report_json"]).read_text())
    content["run"] = run
    write_json(Path(report["report_json"]), content)
    lines = Path(report["report_md"]).read_text().split("\n")
    at = 2 if len(lines) > 1 and lines[1] == "" else 1
    block = ["## Run", ""] + [f"- {line}" for line in run_lines] + ["", "## Scoring", ""]
    with atomic_output(Path(report["report_md"])) as tmp:
        Path(tmp).write_text("\n".join(lines[:at] + block + lines[at:]))
    return report


# --------------------------------------------------------------------------- --predictions + --manifest


def _find_prediction_file(directory: Path, stem: PurePosixPath, listings: dict[Path, dict[str, Path]]) -> Path | None:
    from medsam3.evaluate.folder import find_label_maps

    parent = directory.joinpath(*stem.parts[:-1])
    if parent not in listings:
        listings[parent] = find_label_maps(parent, "prediction") if parent.is_dir() else {}
    return listings[parent].get(stem.name)


def match_manifest_predictions(directory: str | os.PathLike, items: list) -> dict[str, Path | None]:
    """``{item id: prediction file or None}``: ``DIR/ID.*``, else ``DIR/ID with / as _.*``, else
    ``DIR/CASE.*`` when no other item has that case (see the module docstring)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"prediction folder {directory} does not exist or is not a directory")
    stems = prediction_stems([it.id for it in items])
    case_counts: dict[str, int] = {}
    for it in items:
        case_counts[it.case] = case_counts.get(it.case, 0) + 1
    listings: dict[Path, dict[str, Path]] = {}
    found: dict[str, Path | None] = {}
    for it in items:
        candidates = [stems[it.id], PurePosixPath(_safe_part(it.id.replace("/", "_")))]
        if case_counts[it.case] == 1 and it.case:
            candidates.append(PurePosixPath(*[_safe_part(p) for p in str(it.case).split("/") if p] or ["_"]))
        found[it.id] = next((p for p in (_find_prediction_file(directory, c, listings) for c in candidates)
                             if p is not None), None)
    return found


def evaluate_manifest(predictions: str | os.PathLike, manifest, out: str | os.PathLike, split: str | None = None,
                      datasets: Sequence[str] | str | None = None, nsd_tolerance: float = 2.0,
                      both_empty: str = "nan", one_empty_distance: str = "diagonal", instances: bool = True,
                      name: str | None = None, n_bootstrap: int = 2000, seed: int = 0, overwrite: bool = False,
                      progress: bool = True, plots: bool = True) -> ManifestEvaluation:
    """Score existing predictions against a manifest's ground truth (``evaluate -p DIR --manifest F``).

    Args:
        predictions: folder of predicted label maps, named by item id (see the module docstring).
        manifest: the manifest (path or :class:`~medsam3.data.Manifest`).
        out: output folder: ``cases.csv``, ``report.md``, ``report.json``, ``settings.json``, plots.
        split, datasets: which items (see :func:`select_items`).
        Other arguments: as :func:`~medsam3.evaluate.folder.evaluate_folder`.

    A run resumes: items already in ``cases.csv`` are not scored again, unless their
    prediction was missing and now exists.

    Raises:
        InputError: unreadable files, a prediction off its image's grid.
        ArgumentError: bad settings, or settings that differ from the run being resumed.
    """
    from tqdm.auto import tqdm

    manifest = load_manifest(manifest)
    scoring = scoring_settings(nsd_tolerance, both_empty, one_empty_distance, instances)
    items, split_used, notes, labelled, unlabelled = select_labelled_items(manifest, split, datasets, "scored")
    predictions = Path(predictions)
    found = match_manifest_predictions(predictions, labelled)
    settings_json = {**scoring.to_json(), "manifest": str(Path(manifest.path).resolve()) if manifest.path else None,
                     "split": split_used, "datasets": sorted({it.dataset for it in items}),
                     "predictions": str(predictions.resolve())}
    out = prepare_out(out, settings_json, overwrite)
    csv_path = out / CASES_CSV
    ids = {it.id for it in labelled}
    kept = keep_rows(csv_path, lambda r: r["case"] in ids and not (
        r["status"] == "missing_prediction" and found.get(r["case"]) is not None))
    done = {r["case"] for r in kept}
    todo = [it for it in labelled if it.id not in done]
    scored_now = []
    for item in tqdm(todo, desc="evaluate", unit="case", disable=not progress, file=sys.stderr):
        reference = load_reference(manifest, item)
        gt_label = load_ground_truth(manifest, item, reference)
        path = found[item.id]
        files = read_prediction_files(path) if path is not None else None
        rows = score_item(item, item_classes(item), gt_label, reference, ground_truth_path(manifest, item), files,
                          scoring)
        append_rows(csv_path, rows)
        scored_now.append(item.id)
    rows = ordered_rows(csv_path, labelled)
    missing = [i for i, p in found.items() if p is None]
    run = {"kind": "predictions", "manifest": settings_json["manifest"], "split": split_used,
           "datasets": settings_json["datasets"], "items": len(items), "scored_items": len(labelled),
           "unlabelled_items": unlabelled, "notes": notes}
    lines = [f"manifest: `{settings_json['manifest']}`, split: {split_used} ({len(labelled)} labelled items"
             f"{', ' + str(len(unlabelled)) + ' unlabelled' if unlabelled else ''}); "
             f"datasets: {', '.join(settings_json['datasets'])}",
             f"predictions: `{predictions}` ({len(labelled) - len(missing)} found, {len(missing)} missing)"]
    lines += [f"note: {n}" for n in notes]
    report = write_manifest_report(out, rows, scoring, name or out.resolve().name, predictions,
                                   Path(manifest.path or ""), run, lines, n_bootstrap, seed, plots)
    return ManifestEvaluation(out=out, cases_csv=csv_path, report_md=report["report_md"],
                              report_json=report["report_json"], plots=report["plots"], rows=rows,
                              summary=report["summary"], scored_now=scored_now, manifest=manifest.path,
                              split=split_used, items=[it.id for it in items], unlabelled=unlabelled,
                              predictions=predictions, notes=notes)


def scoring_settings(nsd_tolerance, both_empty, one_empty_distance, instances) -> EvaluationSettings:
    """The :class:`EvaluationSettings` of the scoring arguments, a bad NSD tolerance named."""
    try:
        tolerance = float(nsd_tolerance)
    except (TypeError, ValueError):
        raise ArgumentError(f"--nsd-tolerance {nsd_tolerance!r} is not a number of mm") from None
    if not math.isfinite(tolerance):
        raise ArgumentError(f"--nsd-tolerance {nsd_tolerance!r} must be finite")
    return EvaluationSettings(nsd_tolerance=tolerance, both_empty=both_empty, one_empty_distance=one_empty_distance,
                              instances=bool(instances))


def ordered_rows(csv_path: Path, items: list) -> list[dict[str, Any]]:
    """The rows of ``csv_path`` in the order of ``items`` (by item id)."""
    rows = read_cases_csv(csv_path) if csv_path.exists() else []
    order = {it.id: i for i, it in enumerate(items)}
    rows.sort(key=lambda r: order.get(r["case"], len(order)))
    return rows
