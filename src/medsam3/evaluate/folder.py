"""Score folders of label maps that already exist, matched by file name (like nnU-Net's
``evaluate_folder``), into ``DIR/cases.csv``; resumable; failures kept as rows.

Matching: a case is a ground-truth file; its id is the file name without the image ending
(``case_001.nii.gz`` -> ``case_001``) and its prediction is the file in the prediction folder
with the same id (any supported ending, so ``.nii`` predictions match ``.nii.gz`` truths).

Classes of a case, in this order of authority:

1. ``labels`` (``--labels 1=liver,2=spleen``): exactly these ground-truth values, nothing else;
2. otherwise the names in the ground truth's JSON sidecar (``seg.nii.gz`` -> ``seg.json``,
   ``{"labels": {"1": "liver"}}``) or in an nnU-Net ``dataset.json`` in the ground-truth
   folder or its parent, plus every other non-zero value present in either file
   (named ``label_<value>``).

When the prediction has a sidecar naming its labels (medsam3 writes one: label ``k`` is the
``k``-th prompt), a class is looked up there *by name* (case-insensitive), so a prediction
prompted ``spleen, liver`` is scored correctly against a truth with ``1=liver, 2=spleen``;
a name it lacks falls back to the same value. The ``pred_label`` column shows the choice.

Nothing is dropped; every row's ``status`` says what happened:

* ``scored`` both masks non-empty; ``true_negative`` both empty;
* ``false_positive`` empty ground truth, non-empty prediction (Dice 0);
* ``false_negative`` the prediction is empty on a positive case (Dice 0);
* ``absent_answer`` the prediction's sidecar lists the class as ``absent`` on a positive case
  (Dice 0; a ``false_negative`` with its cause named);
* ``missing_prediction`` no prediction file: scored as an empty prediction (Dice 0 on every
  positive class);
* ``not_in_ground_truth`` the prediction's sidecar names a class the ground truth's naming
  lacks: it cannot be scored; metrics are NaN, the row is listed.

A prediction whose grid differs from its ground truth (shape, spacing, origin or direction,
1e-3 tolerance) stops the run with an :class:`~medsam3.errors.InputError` naming both files
and both geometries: scores on a resampled or cropped grid would be wrong, not just worse.
Rows already written stay, so the run resumes after the file is fixed.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medsam3.errors import ArgumentError, InputError
from medsam3.evaluate.cases import (
    CASES_CSV,
    CSV_COLUMNS,
    SETTINGS_JSON,
    EvaluationSettings,
    append_case_rows,
    parse_labels,
    read_cases_csv,
    write_cases_csv,
)
from medsam3.evaluate.metrics import MaskScores, check_same_grid, score_masks
from medsam3.evaluate.report import write_folder_report
from medsam3.image import Image
from medsam3.io.sidecar import read_sidecar

# --------------------------------------------------------------------------- files


@dataclass(frozen=True)
class CaseFiles:
    """One ground-truth file and its prediction (``None`` when the prediction is missing)."""

    case: str
    ground_truth: Path
    prediction: Path | None


def case_id(path: Path) -> str:
    """The case id of a label-map file: its name without the image-format ending."""
    from medsam3.io.formats import strip_image_extension

    return strip_image_extension(path).name


def find_label_maps(directory: str | os.PathLike, role: str) -> dict[str, Path]:
    """``{case id: file}`` for the label maps directly inside ``directory``.

    Label maps are files with an image ending (``.nii.gz``, ``.nrrd``, ``.mha``, ``.png``,
    ``.tif`` ...); JSON sidecars and other files are not cases.

    Raises:
        InputError: the directory is missing, or two files give the same case id.
    """
    from medsam3.io.formats import image_extension

    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{role} folder {directory} does not exist or is not a directory")
    found: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.name.startswith(".") or not path.is_file() or not image_extension(path):
            continue
        cid = case_id(path)
        if cid in found:
            raise InputError(f"{role} folder {directory} holds two files for case {cid!r}: "
                             f"{found[cid].name} and {path.name}; keep one")
        found[cid] = path
    return found


def match_cases(predictions: str | os.PathLike, ground_truth: str | os.PathLike) -> tuple[list[CaseFiles], list[Path]]:
    """Pair every ground-truth file with the prediction of the same case id.

    Returns:
        ``(cases, unmatched)``: one :class:`CaseFiles` per ground-truth file (sorted by id;
        ``prediction=None`` when there is none) and the prediction files without ground truth.

    Raises:
        InputError: a folder is missing, or the ground-truth folder holds no label maps.
    """
    gt = find_label_maps(ground_truth, "ground-truth")
    pred = find_label_maps(predictions, "prediction")
    if not gt:
        raise InputError(f"ground-truth folder {ground_truth} holds no label maps "
                         "(.nii.gz, .nii, .nrrd, .mha, .mhd, .png, .tif, ...)")
    cases = [CaseFiles(cid, gt[cid], pred.get(cid)) for cid in sorted(gt)]
    unmatched = [pred[cid] for cid in sorted(pred) if cid not in gt]
    return cases, unmatched


def _sidecar_labels(sidecar: dict[str, Any], where: str) -> dict[int, str]:
    labels = sidecar.get("labels") or {}
    if not isinstance(labels, dict):
        raise InputError(f"{where}: 'labels' must map label values to names, e.g. {{\"1\": \"liver\"}}")
    out = {}
    for key, name in labels.items():
        try:
            value = int(key)
        except (TypeError, ValueError):
            raise InputError(f"{where}: label value {key!r} is not an integer") from None
        if value > 0:
            out[value] = str(name)
    return out


def read_dataset_json(ground_truth: str | os.PathLike) -> dict[str, Any]:
    """Label names and dataset name from an nnU-Net ``dataset.json`` next to the ground truth.

    Looks in the ground-truth folder, then its parent. Understands nnU-Net v2 (``"labels":
    {"background": 0, "liver": 1}``) and v1 (``"labels": {"0": "background", "1": "liver"}``);
    region-based labels (lists) are skipped.

    Returns:
        ``{"labels": {value: name}, "name": str | None}`` (empty labels when not found).
    """
    folder = Path(ground_truth)
    for candidate in (folder / "dataset.json", folder.parent / "dataset.json"):
        if candidate.is_file():
            try:
                content = json.loads(candidate.read_text())
            except (OSError, ValueError) as exc:
                raise InputError(f"cannot read {candidate}: {exc}") from None
            raw = content.get("labels") or {}
            labels: dict[int, str] = {}
            for key, value in raw.items():
                if isinstance(value, int) and not isinstance(value, bool):
                    labels[value] = str(key)  # v2: name -> value
                elif isinstance(value, str) and str(key).lstrip("-").isdigit():
                    labels[int(key)] = value  # v1: "value" -> name
            labels.pop(0, None)
            return {"labels": labels, "name": content.get("name")}
    return {"labels": {}, "name": None}


# --------------------------------------------------------------------------- scoring


@dataclass(frozen=True)
class ClassToScore:
    """One class of one case: its name, its value in the ground truth and in the prediction."""

    name: str
    label: int | None
    pred_label: int | None


def present_labels(array: np.ndarray) -> set[int]:
    """The non-zero values of a label map."""
    if array.size == 0:
        return set()
    if array.dtype.kind in "ub" or (array.dtype.kind == "i" and array.min() >= 0):
        if int(array.max()) < 1 << 20:  # bincount is ~10x faster than unique on big volumes
            return {int(v) for v in np.flatnonzero(np.bincount(array.ravel().astype(np.int64, copy=False)))} - {0}
    return {int(v) for v in np.unique(array)} - {0}


def classes_for_case(gt_values: set[int], pred_values: set[int], labels: dict[int, str] | None,
                     gt_names: dict[int, str], pred_names: dict[int, str]) -> list[ClassToScore]:
    """The classes to score for one case (see the module docstring for the rules).

    Args:
        gt_values, pred_values: non-zero values present in the two label maps.
        labels: the user's ``{value: name}`` (only these are scored), or ``None``.
        gt_names: names of ground-truth values (sidecar or dataset.json).
        pred_names: names of prediction values (the prediction's sidecar).

    A class whose name the prediction's sidecar lacks, while that sidecar gives its value
    to another name, gets ``pred_label=None`` (the prediction holds nothing for it).
    """

    def pred_value_for(name: str, value: int) -> int | None:
        for pred_value, pred_name in pred_names.items():
            if pred_name.strip().lower() == name.strip().lower():
                return pred_value
        return None if value in pred_names else value

    if labels is not None:
        return [ClassToScore(name, value, pred_value_for(name, value)) for value, name in sorted(labels.items())]
    classes = [ClassToScore(name, value, pred_value_for(name, value)) for value, name in sorted(gt_names.items())]
    for value in sorted(gt_values - set(gt_names)):
        name = f"label_{value}" if gt_names else pred_names.get(value, f"label_{value}")
        classes.append(ClassToScore(name, value, pred_value_for(name, value)))
    used = {c.pred_label for c in classes}
    for value in sorted(pred_values - used):
        name = pred_names.get(value, f"label_{value}")
        if value in pred_names and gt_names or value in gt_names:
            # A class the truth's naming lacks, or a value the prediction gave to another name.
            classes.append(ClassToScore(name, None, value))
        else:
            classes.append(ClassToScore(name, value, value))
    return classes


def _absent_names(sidecar: dict[str, Any], pred_names: dict[int, str]) -> set[str]:
    """Lower-case names of the classes the prediction's sidecar answered "absent"."""
    absent = sidecar.get("absent") or []
    names = set()
    for item in absent if isinstance(absent, list) else [absent]:
        if isinstance(item, int) or (isinstance(item, str) and item.isdigit()):
            item = pred_names.get(int(item), str(item))
        names.add(str(item).strip().lower())
    return names


def score_case(prediction: Image | None, ground_truth: Image, settings: EvaluationSettings,
               case: str, *, pred_sidecar: dict[str, Any] | None = None,
               gt_sidecar: dict[str, Any] | None = None, dataset_info: dict[str, Any] | None = None,
               dataset: str | None = None) -> list[dict[str, Any]]:
    """Score every class of one case; one CSV row (a dict over :data:`CSV_COLUMNS`) per class.

    Args:
        prediction: the predicted label map, or ``None`` when it is missing (every class is
            then scored as an empty prediction with status ``missing_prediction``).
        ground_truth: the reference label map; its spacing is the one used.
        settings: tolerance, conventions, labels.
        case: the case id written in the ``case`` column.
        pred_sidecar, gt_sidecar: the files' JSON sidecars (``labels``, ``absent``), if any.
        dataset_info: ``read_dataset_json`` of the ground-truth folder (names, dataset name).
        dataset: dataset name for the ``dataset`` column (default: the sidecar's or
            ``dataset.json``'s).

    Raises:
        InputError: the prediction does not lie on the ground truth's grid.
    """
    pred_sidecar = pred_sidecar or {}
    gt_sidecar = gt_sidecar or {}
    dataset_info = dataset_info or {"labels": {}, "name": None}
    if prediction is not None:
        check_same_grid(prediction, ground_truth)
    gt_names = _sidecar_labels(gt_sidecar, f"sidecar of {ground_truth.path}") or dict(dataset_info["labels"])
    pred_names = (_sidecar_labels(pred_sidecar, f"sidecar of {prediction.path}") if prediction is not None else {})
    gt_array = ground_truth.array
    pred_array = prediction.array if prediction is not None else None
    gt_values = present_labels(gt_array)
    pred_values = present_labels(pred_array) if pred_array is not None else set()
    classes = classes_for_case(gt_values, pred_values, settings.labels, gt_names, pred_names)
    absent = _absent_names(pred_sidecar, pred_names)
    common = {
        "case": case,
        "nsd_tolerance": settings.nsd_tolerance,
        "dimension": f"{ground_truth.ndim}D",
        "modality": str(gt_sidecar.get("modality") or ground_truth.modality or pred_sidecar.get("modality") or ""),
        "dataset": str(dataset or gt_sidecar.get("dataset") or dataset_info.get("name") or ""),
        "spacing": "x".join(f"{s:g}" for s in ground_truth.spacing),
        "prediction": str(prediction.path) if prediction is not None and prediction.path else "",
        "ground_truth": str(ground_truth.path or ""),
    }
    rows = []
    if not classes and prediction is None:
        # An empty truth without named classes still must not vanish when its prediction does.
        rows.append({**common, "class": "", "label": None, "pred_label": None, "status": "missing_prediction",
                     "dice": 0.0, "iou": 0.0, "nsd": 0.0, "hd95": math.nan, "assd": math.nan,
                     "instance_f1": math.nan, "gt_voxels": 0, "pred_voxels": 0, "gt_instances": 0,
                     "pred_instances": 0, "matched_instances": 0})
        return rows
    empty = np.zeros(ground_truth.shape, dtype=bool)
    for cls in classes:
        row = {**common, "class": cls.name, "label": cls.label, "pred_label": cls.pred_label}
        if cls.label is None:
            row.update(status="not_in_ground_truth", dice=math.nan, iou=math.nan, nsd=math.nan, hd95=math.nan,
                       assd=math.nan, instance_f1=math.nan, gt_voxels=None,
                       pred_voxels=int(np.count_nonzero(pred_array == cls.pred_label)),
                       gt_instances=None, pred_instances=None, matched_instances=None)
            rows.append(row)
            continue
        gt_mask = gt_array == cls.label
        pred_mask = empty if pred_array is None or cls.pred_label is None else pred_array == cls.pred_label
        scores = score_masks(pred_mask, gt_mask, ground_truth.spacing, nsd_tolerance=settings.nsd_tolerance,
                             convention=settings.convention, instances=settings.instances)
        row.update(_score_fields(scores))
        if prediction is None:
            row["status"] = "missing_prediction"
        elif scores.outcome == "false_negative" and cls.name.strip().lower() in absent:
            row["status"] = "absent_answer"
        else:
            row["status"] = scores.outcome
        rows.append(row)
    return rows


def _score_fields(scores: MaskScores) -> dict[str, Any]:
    d = scores.as_dict()
    d.pop("outcome")
    d.pop("nsd_tolerance")
    return d


# --------------------------------------------------------------------------- the folder


@dataclass
class FolderEvaluation:
    """What :func:`evaluate_folder` produced.

    Attributes:
        out: the output directory.
        cases_csv, report_md, report_json: the files written.
        plots: PNG files written next to the report.
        rows: every row of ``cases.csv`` (dicts over :data:`CSV_COLUMNS`).
        summary: the aggregated statistics as stored in ``report.json["summary"]``.
        scored_now: case ids scored in this run (the rest came from an earlier run).
        unmatched_predictions: prediction files without a ground truth (not scored).
    """

    out: Path
    cases_csv: Path
    report_md: Path
    report_json: Path
    plots: list[Path]
    rows: list[dict[str, Any]]
    summary: dict[str, Any]
    scored_now: list[str] = field(default_factory=list)
    unmatched_predictions: list[Path] = field(default_factory=list)


def _check_resume(out: Path, settings: EvaluationSettings) -> None:
    settings_file = out / SETTINGS_JSON
    cases = out / CASES_CSV
    if not cases.exists() or not settings_file.exists():
        return
    try:
        previous = json.loads(settings_file.read_text())
    except (OSError, ValueError):
        raise InputError(f"cannot read {settings_file}; delete {out} or choose a new --out") from None
    current = settings.to_json()
    changed = [k for k in current if previous.get(k) != current[k]]
    if changed:
        details = ", ".join(f"{k}: {previous.get(k)!r} -> {current[k]!r}" for k in changed)
        raise ArgumentError(
            f"{cases} was scored with other settings ({details}); resuming would mix them. "
            "Use the same settings, a new --out, or --overwrite"
        )


def _check_out(out: Path, predictions, ground_truth) -> None:
    """The report files must not land in (or on) the folders being scored: a report's PNG plots
    inside the predictions folder would be read as predictions by the next run."""
    from medsam3.io.outputs import OutputPlan

    plan = OutputPlan()
    plan.add_input(predictions, "predictions folder")
    plan.add_input(ground_truth, "ground-truth folder")
    for name in (CASES_CSV, SETTINGS_JSON, "report.md", "report.json"):
        plan.add(out / name, f"evaluation's {name}")
    plan.check()


def evaluate_folder(predictions: str | os.PathLike, ground_truth: str | os.PathLike, out: str | os.PathLike,
                    labels: str | dict[int, str] | None = None, nsd_tolerance: float = 2.0,
                    both_empty: str = "nan", one_empty_distance: str = "diagonal", instances: bool = True,
                    dataset: str | None = None, name: str | None = None, n_bootstrap: int = 2000,
                    seed: int = 0, overwrite: bool = False, progress: bool = True,
                    plots: bool = True) -> FolderEvaluation:
    """Score a folder of predicted label maps against a folder of ground truths.

    Same arguments as ``medsam3 evaluate --predictions --ground-truth --out``. Writes
    ``out/cases.csv`` (one row per case and class), ``out/report.md``, ``out/report.json``,
    ``out/settings.json`` and box plots ``out/*.png``. Cases already in ``out/cases.csv``
    are not scored again (resume), unless their prediction was missing and now exists.

    Args:
        predictions: folder of predicted label maps (medsam3, nnU-Net, TotalSegmentator ...).
        ground_truth: folder of reference label maps; file names define the cases.
        out: output folder (created).
        labels: ``"1=liver,2=spleen"`` or ``{1: "liver"}``: score exactly these values.
        nsd_tolerance: NSD tolerance in mm.
        both_empty: ``"nan"`` or ``"perfect"`` (see :class:`EmptyMaskConvention`).
        one_empty_distance: ``"diagonal"``, ``"inf"`` or ``"nan"``.
        instances: also compute instance F1 (connected components, IoU >= 0.5).
        dataset: dataset name for the summary (default: from sidecars / dataset.json).
        name: a name for this run, used by ``--compare`` (default: the ``out`` folder's name).
        n_bootstrap, seed: bootstrap resamples and seed of the 95% confidence intervals.
        overwrite: discard an earlier ``out/cases.csv`` instead of resuming it.
        progress: show a progress bar on stderr.
        plots: write the PNG box plots.

    Raises:
        InputError: missing folders, unreadable files, a prediction on another grid.
        ArgumentError: bad labels or settings, or settings that differ from the run being resumed.
    """
    from tqdm.auto import tqdm

    from medsam3.io import read_label_map
    from medsam3.io.atomic import atomic_output

    try:
        tolerance = float(nsd_tolerance)
    except (TypeError, ValueError):
        raise ArgumentError(f"--nsd-tolerance {nsd_tolerance!r} is not a number of mm") from None
    settings = EvaluationSettings(nsd_tolerance=tolerance, both_empty=both_empty,
                                  one_empty_distance=one_empty_distance, instances=bool(instances),
                                  labels=parse_labels(labels), dataset=dataset)
    cases, unmatched = match_cases(predictions, ground_truth)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} exists and is not a directory")
    _check_out(out, predictions, ground_truth)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / CASES_CSV
    if overwrite and csv_path.exists():
        csv_path.unlink()
    _check_resume(out, settings)
    with atomic_output(out / SETTINGS_JSON) as tmp:
        Path(tmp).write_text(json.dumps(settings.to_json(), indent=2) + "\n")

    # Resume: keep rows of cases still in the folder, except those whose missing prediction appeared.
    by_id = {c.case: c for c in cases}
    previous = read_cases_csv(csv_path) if csv_path.exists() else []
    redo = {r["case"] for r in previous if r["status"] == "missing_prediction"
            and r["case"] in by_id and by_id[r["case"]].prediction is not None}
    kept = [r for r in previous if r["case"] in by_id and r["case"] not in redo]
    # A fresh cases.csv appears with its first case's rows: a run that stops before any case
    # is scored leaves no header-only file behind.
    if csv_path.exists() and (len(kept) != len(previous) or not csv_path.read_text().endswith("\n")):
        write_cases_csv(csv_path, kept)
    done = {r["case"] for r in kept}
    todo = [c for c in cases if c.case not in done]

    dataset_info = read_dataset_json(ground_truth)
    scored_now = []
    for files in tqdm(todo, desc="evaluate", unit="case", disable=not progress, file=sys.stderr):
        gt_image = read_label_map(files.ground_truth)
        pred_image = read_label_map(files.prediction) if files.prediction is not None else None
        rows = score_case(pred_image, gt_image, settings, files.case,
                          pred_sidecar=read_sidecar(files.prediction) if files.prediction else {},
                          gt_sidecar=read_sidecar(files.ground_truth), dataset_info=dataset_info,
                          dataset=settings.dataset)
        # One write per case: an interrupted run leaves whole cases (or a cut last line,
        # which read_cases_csv drops).
        append_case_rows(csv_path, rows)
        scored_now.append(files.case)

    rows = read_cases_csv(csv_path) if csv_path.exists() else []
    order = {c.case: i for i, c in enumerate(cases)}
    rows.sort(key=lambda r: order.get(r["case"], len(order)))
    report = write_folder_report(
        out, rows, settings, name=name or out.resolve().name, predictions=Path(predictions),
        ground_truth=Path(ground_truth), unmatched_predictions=unmatched, n_bootstrap=n_bootstrap, seed=seed,
        plots=plots)
    return FolderEvaluation(out=out, cases_csv=csv_path, report_md=report["report_md"],
                            report_json=report["report_json"], plots=report["plots"], rows=rows,
                            summary=report["summary"], scored_now=scored_now, unmatched_predictions=unmatched)

