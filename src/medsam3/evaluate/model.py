"""``medsam3 evaluate --model M --manifest F --prompt-mode MODE``: run a model on a manifest's
items and score it, resumably.

For every selected item (:func:`medsam3.evaluate.manifest.select_items`: the test split by
default) the model answers one prompt per class (:func:`medsam3.evaluate.manifest.item_classes`;
text prompts are the classes' canonical prompts from the vocabulary); the label map (label
``k`` = class ``k``) and its JSON sidecar are written to ``OUT/predictions/ID.nii.gz``, then
scored against the item's ground truth by the code that scores folders
(:func:`medsam3.evaluate.manifest.score_item` -> :func:`medsam3.evaluate.folder.score_case`).

Prompt modes (:data:`medsam3.evaluate.gt_prompts.MODE_DEFINITIONS`): ``text`` never reads the
ground truth before the prediction is written; ``text+box``, ``box`` and ``point`` derive
boxes / clicks from it (see :mod:`medsam3.evaluate.gt_prompts`, which also says how volumes
are prompted slice by slice in those modes).

Images are normalised once, by the data module's rule
(:func:`medsam3.data.loading.normalised_array`: the item's modality, an optional CT window,
BiomedSegFM ``uint8`` volumes / 255). In ``text`` mode, items then go through the
prediction step of :func:`medsam3.segment` (:func:`medsam3.predict.pipeline.predict_normalized`,
with the run's :class:`~medsam3.predict.settings.PredictSettings`): a 2D image is encoded once
for all classes; a volume is segmented whole (the volume mode given, else the model's own,
else ``merged``: detection + tracker propagation merged). Prompts outside a model's concepts
are answered absent, as by ``segment``.

Items go through :func:`medsam3.runner.run_cases`, the case loop of ``medsam3 segment`` on
folders: the next items are read and normalised on a reader thread while the model works
(the ground truth too, except in ``text`` mode); the first bad item ends the run, naming it.

Resume: an item is done when its prediction (made with the same run settings, recorded in
its sidecar) and its rows in ``cases.csv`` exist. A prediction without rows is scored
without predicting again; rows without a prediction are predicted and scored again. The
run's settings (mode, model, split, thresholds, ...) are kept in ``settings.json``; resuming
with other settings is refused.
"""

from __future__ import annotations

import dataclasses
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsam3.errors import ArgumentError, MedSAM3Error
from medsam3.evaluate.gt_prompts import GT_MODES, MODE_DEFINITIONS, PROMPT_MODES, VOLUME_GT_PROTOCOL
from medsam3.evaluate.manifest import (
    CASES_CSV, PREDICTION_EXTENSION, PREDICTIONS_DIR, ItemClass, ManifestEvaluation, ordered_rows,
    scoring_settings, append_rows, class_mask, ground_truth_path, item_classes, keep_rows, layer_path,
    load_ground_truth, load_manifest, load_reference, prepare_out, prediction_stems, read_prediction_files,
    score_item, select_labelled_items, write_manifest_report,
)
from medsam3.image import Image
from medsam3.predict.settings import PredictSettings, VolumeSettings
from medsam3.preprocess import context_planes
from medsam3.runner import run_cases


@dataclass(frozen=True)
class ModelRunSettings:
    """Everything about a model run that changes its predictions; kept in ``settings.json``
    (key ``run``) and in every prediction's sidecar, so a resumed run never mixes settings.

    Attributes:
        prompt_mode: ``text``, ``text+box``, ``box`` or ``point``.
        model: the model as given (hub id, directory, ``random:NAME``).
        dtype: the weights' precision.
        split: the split evaluated (``all``: every item).
        settings: the prediction settings (thresholds; for ``text`` mode on volumes, the
            volume mode (``None``: the model's own, else ``merged``), presence window, merge
            rule, input size, empty slices; the slicing axis in every mode).
        max_objects: ``box``/``point``: prompts per class and image/slice (largest components).
        window: CT window applied to CT items (``None``: the default soft-tissue window).
    """

    prompt_mode: str
    model: str
    dtype: str
    split: str
    settings: PredictSettings = field(default_factory=PredictSettings)
    max_objects: int | None = None
    window: Any = None

    @property
    def score_threshold(self) -> float:
        return self.settings.threshold

    @property
    def presence_threshold(self) -> float:
        return self.settings.presence_threshold

    @property
    def mask_threshold(self) -> float:
        return self.settings.mask_threshold

    @property
    def volume_mode(self) -> str | None:
        return self.settings.volume.mode

    @property
    def axis(self) -> str | None:
        return self.settings.volume.axis

    def to_json(self) -> dict[str, Any]:
        v = self.settings.volume
        return {"prompt_mode": self.prompt_mode, "model": self.model, "dtype": self.dtype, "split": self.split,
                "score_threshold": self.score_threshold, "presence_threshold": self.presence_threshold,
                "mask_threshold": self.mask_threshold, "volume_mode": v.mode, "axis": v.axis,
                "max_objects": self.max_objects, "window": list(self.window) if isinstance(self.window, tuple)
                else self.window, "presence_window": v.presence_window, "skip_empty": v.skip_empty,
                "backward_slices": v.backward_slices, "max_unsupported": v.max_unsupported,
                "iou_threshold": v.iou_threshold, "key_score": v.key_score, "size": v.size}


@dataclass
class ClassAnswer:
    """A class's answer over a whole item (accumulated over slices for volumes)."""

    present: bool = False
    presence: float = 0.0
    prompted: bool = False
    objects: int = 0
    unprompted_components: int = 0
    slices_present: list[int] = field(default_factory=list)
    slices_prompted: list[int] = field(default_factory=list)


def check_run_arguments(model, prompt_mode, settings: PredictSettings, max_objects):
    if prompt_mode not in PROMPT_MODES:
        raise ArgumentError(f"unknown prompt mode {prompt_mode!r}; use one of {', '.join(PROMPT_MODES)}")
    if max_objects is not None and (not isinstance(max_objects, int) or max_objects < 1):
        raise ArgumentError(f"--max-objects {max_objects!r} must be a whole number >= 1")
    v = settings.volume
    if v.instances:
        raise ArgumentError("instance maps are not written by evaluation runs: leave out instances")
    if v.presence_window is not None:
        mode = v.mode if v.mode is not None else _model_info(model).resolve_volume_mode(None)[0]
        if prompt_mode != "text" or mode != "slices":
            raise ArgumentError(f"--presence-window is for text prompts on volumes with --volume-mode slices "
                                f"(got prompt mode {prompt_mode}, volume mode {mode})")


def _model_info(model):
    """The :class:`~medsam3.model.info.ModelInfo` of ``model`` (loaded, or named: read without the weights)."""
    from medsam3.model.info import ModelInfo
    from medsam3.model.loader import RANDOM_PREFIX, model_directory

    if not isinstance(model, (str, os.PathLike)):
        return model.info
    if str(model).startswith(RANDOM_PREFIX):
        return ModelInfo()
    return ModelInfo.read(model_directory(model))


def evaluate_model(model, manifest, out: str | os.PathLike, prompt_mode: str = "text", split: str | None = None,
                   datasets: Sequence[str] | str | None = None, *, device: str = "auto", dtype=None,
                   settings: PredictSettings | None = None, threshold: float | None = None,
                   presence_threshold: float | None = None, mask_threshold: float | None = None,
                   volume_mode: str | None = None, axis: str | None = None, max_objects: int | None = None,
                   presence_window: int | None = None, window=None, batch_size: int | None = None,
                   nsd_tolerance: float = 2.0,
                   both_empty: str = "nan",
                   one_empty_distance: str = "diagonal", instances: bool = True, name: str | None = None,
                   n_bootstrap: int = 2000, seed: int = 0, overwrite: bool = False, progress: bool = True,
                   plots: bool = True, prefetch: int = 2) -> ManifestEvaluation:
    """Run ``model`` on a manifest's items with one prompt mode and score it.

    Same arguments as ``medsam3 evaluate --model M --manifest F --prompt-mode MODE --out DIR``.
    Writes ``out/predictions/ID.nii.gz`` (+ ``.json`` sidecars), ``out/cases.csv`` (one row
    per item and class), ``out/report.md``, ``out/report.json`` (with a ``run`` section:
    mode, model, split, thresholds, notes), ``out/settings.json`` and box plots.

    Args:
        model: model directory, hub id, ``random:NAME`` or a loaded :class:`~medsam3.MedSAM3`
            (loaded only when an item needs predicting).
        manifest: the manifest (``.jsonl`` path or :class:`~medsam3.data.Manifest`).
        out: output folder.
        prompt_mode: ``text``, ``text+box``, ``box`` or ``point`` (see
            :mod:`medsam3.evaluate.gt_prompts`).
        split: ``train``/``val``/``test``/``all``; default ``test``, or every item (noted in
            the report) when the manifest has no test split.
        datasets: only items of these datasets.
        device, dtype: where and in which precision the model runs.
        settings: the prediction settings (:class:`~medsam3.predict.settings.PredictSettings`,
            as ``medsam3 segment``): thresholds (a class whose presence is below the presence
            threshold is answered "absent": listed, Dice 0 on a positive case), batch size, and
            for volumes the slicing axis and, in ``text`` mode, the volume mode (default: the
            model's own, else ``merged``), presence window, merge rule, input size.
        threshold, presence_threshold, mask_threshold, volume_mode, axis, presence_window,
            batch_size: the same settings one by one (those not ``None`` replace the fields of
            ``settings``; ``volume_mode`` is the volume settings' ``mode``).
        max_objects: ``box``/``point`` modes: prompt at most the N largest components of a
            class per image / slice (default: all); the rest are counted in the sidecar.
        window: CT window for CT items (preset or ``(level, width)``).
        Scoring, report and resume arguments: as :func:`~medsam3.evaluate.folder.evaluate_folder`.
        prefetch: how many items are read and normalised ahead of the model, on a reader thread
            (:func:`medsam3.runner.run_cases`, the loop ``medsam3 segment`` uses on folders).

    Raises:
        ArgumentError: bad arguments, settings that differ from the run being resumed, a
            class whose prompt is too long for SAM3's text encoder.
        InputError: unreadable items.
    """
    settings = PredictSettings.build(settings, threshold=threshold, presence_threshold=presence_threshold,
                                     mask_threshold=mask_threshold, mode=volume_mode, axis=axis,
                                     presence_window=presence_window, batch_size=batch_size)
    check_run_arguments(model, prompt_mode, settings, max_objects)
    if window is not None:
        from medsam3.preprocess import parse_window

        parse_window(window)  # raises ArgumentError early
    if not isinstance(prefetch, int) or prefetch < 1:
        raise ArgumentError(f"prefetch must be a whole number >= 1, got {prefetch!r}")
    manifest = load_manifest(manifest)
    scoring = scoring_settings(nsd_tolerance, both_empty, one_empty_distance, instances)
    items, split_used, notes, labelled, unlabelled = select_labelled_items(manifest, split, datasets, "evaluated")
    classes = {it.id: item_classes(it) for it in labelled}
    prompts = _prompt_table(classes, prompt_mode, notes)
    if prompt_mode == "text+box" and any(it.dim == 3 for it in labelled):
        notes.append("text+box prompts volumes slice by slice (detection on every slice, no tracker "
                     "propagation); for a like-for-like text baseline run text mode with --volume-mode slices")

    if isinstance(model, (str, os.PathLike)):  # named: loaded (torch imported) only if an item needs it
        model_name, dtype_name = str(model), weights_dtype_name(dtype)
    else:  # a loaded MedSAM3
        model_name, dtype_name = str(model.source), weights_dtype_name(model.dtype)
    run = ModelRunSettings(prompt_mode=prompt_mode, model=model_name, dtype=dtype_name, split=split_used,
                           settings=settings, max_objects=max_objects,
                           window=list(window) if isinstance(window, tuple) else window)
    manifest_path = str(Path(manifest.path).resolve()) if manifest.path else None
    settings_json = {**scoring.to_json(), "manifest": manifest_path,
                     "datasets": sorted({it.dataset for it in items}), "run": run.to_json()}
    out = prepare_out(out, settings_json, overwrite)
    pred_dir = out / PREDICTIONS_DIR
    stems = prediction_stems([it.id for it in labelled])
    paths = {it.id: pred_dir / f"{stems[it.id]}{PREDICTION_EXTENSION}" for it in labelled}
    run_json = run.to_json()

    def prediction_ok(item) -> bool:
        return not overwrite and prediction_matches(paths[item.id], run_json, classes[item.id])

    csv_path = out / CASES_CSV
    valid = {it.id for it in labelled if prediction_ok(it)}
    kept = keep_rows(csv_path, lambda r: r["case"] in valid)
    done = {r["case"] for r in kept}
    todo = [it for it in labelled if it.id not in done]

    runner = ModelRunner(model, device, dtype, run)
    scored_now, predicted_now = [], []

    def read(item) -> tuple[Image, np.ndarray | None, np.ndarray | None]:
        """On the reader thread, ahead of the model: the image, its normalised array (when it is
        predicted now) and the ground truth (text mode reads it only after the prediction)."""
        from medsam3.data.loading import normalised_array

        with item_errors(item):
            reference = load_reference(manifest, item)
            predict = item.id not in valid
            gt_label = None
            if not predict or prompt_mode in GT_MODES:
                gt_label = load_ground_truth(manifest, item, reference)
            normalised = normalised_array(reference, item.modality, run.window) if predict else None
            return reference, gt_label, normalised

    def work(item, loaded) -> None:
        reference, gt_label, normalised = loaded
        with item_errors(item):
            if item.id not in valid:
                runner.predict_item(manifest, item, classes[item.id], reference, gt_label, paths[item.id],
                                    normalised=normalised)
                predicted_now.append(item.id)
            files = read_prediction_files(paths[item.id])
            if gt_label is None:  # text mode: the ground truth is read only now, after the prediction
                gt_label = load_ground_truth(manifest, item, reference)
            rows = score_item(item, classes[item.id], gt_label, reference, ground_truth_path(manifest, item),
                              files, scoring)
        append_rows(csv_path, rows)
        scored_now.append(item.id)

    # an evaluation stops at its first bad item: a score over part of the items would mislead
    run_cases(todo, read, work, prefetch=prefetch, progress=progress, label=f"evaluate {prompt_mode}",
              fail_fast=True, name=lambda item: item.id)

    rows = ordered_rows(csv_path, labelled)
    unprompted = _unprompted_totals(paths, labelled)
    if unprompted:
        notes.append(f"--max-objects {max_objects}: {unprompted} ground-truth components were not prompted "
                     "(they stay in the scoring as misses; counts per class in the prediction sidecars)")
    run_report = {"kind": "model", **run_json, "mode_definition": MODE_DEFINITIONS[prompt_mode],
                  "sees_ground_truth": prompt_mode in GT_MODES,
                  "volume_protocol": VOLUME_GT_PROTOCOL if prompt_mode in GT_MODES
                  else f"volumes: medsam3.segment on the whole volume, mode {_mode_text(run.volume_mode)}",
                  "manifest": manifest_path, "datasets": settings_json["datasets"], "items": len(items),
                  "scored_items": len(labelled), "unlabelled_items": unlabelled,
                  "prompts": prompts if prompt_mode in ("text", "text+box") else None,
                  "predictions": str(pred_dir), "notes": notes}
    lines = [f"model: `{model_name}` ({dtype_name}); prompt mode: **{prompt_mode}**: {MODE_DEFINITIONS[prompt_mode]}",
             f"manifest: `{manifest_path}`, split: {split_used} ({len(labelled)} labelled items"
             f"{', ' + str(len(unlabelled)) + ' unlabelled' if unlabelled else ''}); "
             f"datasets: {', '.join(settings_json['datasets'])}",
             f"thresholds: score {run.score_threshold:g}, presence {run.presence_threshold:g}, "
             f"mask {run.mask_threshold:g}; CT window: {run.window or 'default'}",
             (VOLUME_GT_PROTOCOL if prompt_mode in GT_MODES
              else f"volumes: medsam3.segment on the whole volume, mode {_mode_text(run.volume_mode)}, "
                   f"axis {run.axis or 'auto'}")
             + (f"; at most {max_objects} prompts per class and image/slice" if max_objects else ""),
             f"predictions: `{pred_dir}` (label k = the item's k-th class; sidecars name classes, prompts, "
             "absent answers)"]
    lines += [f"note: {n}" for n in notes]
    report = write_manifest_report(out, rows, scoring, name or out.resolve().name, pred_dir,
                                   Path(manifest.path or ""), run_report, lines, n_bootstrap, seed, plots)
    return ManifestEvaluation(out=out, cases_csv=csv_path, report_md=report["report_md"],
                              report_json=report["report_json"], plots=report["plots"], rows=rows,
                              summary=report["summary"], scored_now=scored_now, manifest=manifest.path,
                              split=split_used, items=[it.id for it in items], unlabelled=unlabelled,
                              predictions=pred_dir, predicted_now=predicted_now, notes=notes)


@contextmanager
def item_errors(item):
    """Errors while evaluating ``item`` name it: medsam3's own as ``ID: message``, others in a note."""
    try:
        yield
    except MedSAM3Error as exc:
        raise type(exc)(f"{item.id}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - re-raised, with the item named
        if hasattr(exc, "add_note"):
            exc.add_note(f"while evaluating manifest item {item.id}")
        raise


def _mode_text(mode: str | None) -> str:
    return mode if mode is not None else "the model's own (else merged)"


def weights_dtype_name(dtype) -> str:
    aliases = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
    if dtype is None:
        return "float32"
    name = str(dtype).replace("torch.", "")
    return aliases.get(name, name)


def _prompt_table(classes: dict[str, list[ItemClass]], prompt_mode: str, notes: list[str]) -> dict[str, str]:
    """``{class name: prompt}`` over all items; checks prompt lengths (text modes) and notes unknown names."""
    from medsam3.prompts import check_prompt_length

    table: dict[str, str] = {}
    unknown = set()
    for item_id, cls_list in classes.items():
        for cls in cls_list:
            if cls.name not in table:
                if prompt_mode in ("text", "text+box"):
                    try:
                        check_prompt_length(cls.prompt)
                    except ArgumentError as exc:
                        raise ArgumentError(f"{item_id}: class {cls.name!r}: {exc}") from None
                table[cls.name] = cls.prompt
            if not cls.known:
                unknown.add(cls.name)
    if unknown and prompt_mode in ("text", "text+box"):
        notes.append(f"class names outside the prompt vocabulary, prompted as written (cleaned): "
                     f"{', '.join(sorted(unknown))}")
    return table


def prediction_matches(path: Path, run_json: dict[str, Any], classes: list[ItemClass]) -> bool:
    """The prediction exists, was made with these run settings, and all its layer files exist."""
    from medsam3.io.sidecar import read_sidecar

    if not path.is_file():
        return False
    try:
        content = read_sidecar(path)
    except MedSAM3Error:
        return False
    if content.get("run") != run_json:
        return False
    layers = max(c.layer for c in classes) if classes else 0
    return all(layer_path(path, j).is_file() for j in range(1, layers + 1))


def _unprompted_totals(paths: dict[str, Path], items: list) -> int:
    from medsam3.io.sidecar import read_sidecar

    total = 0
    for item in items:
        try:
            content = read_sidecar(paths[item.id])
        except MedSAM3Error:
            continue
        for info in (content.get("gt_prompts") or {}).values():
            total += int(info.get("unprompted_components", 0))
    return total


# --------------------------------------------------------------------------- prediction


class ModelRunner:
    """Loads the model on first use and predicts items in one prompt mode."""

    def __init__(self, model, device, dtype, run: ModelRunSettings):
        self._model_arg = model
        self.device = device
        self.dtype = dtype
        self.run = run
        self._model = None
        self._predictor = None

    @property
    def model(self):
        if self._model is None:
            from medsam3.segmentation import load_model

            self._model = load_model(self._model_arg, device=self.device, dtype=self.dtype)
        return self._model

    @property
    def predictor(self):
        if self._predictor is None:
            from medsam3.predict import ImagePredictor

            self._predictor = ImagePredictor.from_settings(self.model, self.run.settings)
        return self._predictor

    def predict_item(self, manifest, item, classes: list[ItemClass], reference: Image, gt_label: np.ndarray | None,
                     path: Path, normalised: np.ndarray | None = None) -> None:
        """Predict every class of ``item`` and write the label map(s) and sidecar(s) at ``path``;
        ``normalised``: the image already normalised by the data module's rule (else done here)."""
        from medsam3.data.loading import normalised_array

        if normalised is None:
            normalised = normalised_array(reference, item.modality, self.run.window)
        mode = self.run.prompt_mode
        n_layers = max(c.layer for c in classes) + 1
        answers = {c.index: ClassAnswer() for c in classes}
        dtype = np.uint8 if len(classes) < 256 else np.uint16
        layers = [np.zeros(reference.shape, dtype) for _ in range(n_layers)]
        extra: dict[str, Any] = {}
        if reference.ndim == 2:
            if mode == "text":
                results = self._text_image(reference, normalised, classes, answers)
            else:
                spacing = (reference.spacing[1], reference.spacing[0])
                results = answer_plane(self.predictor, normalised, classes, gt_label, item.ignore_value, mode,
                                        self.run.max_objects, spacing, answers, None)
            for j in range(n_layers):
                layers[j][...] = combine_layer(results, [c for c in classes if c.layer == j])
        elif mode == "text":
            extra = self._text_volume(reference, normalised, item, classes, layers, answers)
        else:
            extra = self._gt_volume(reference, normalised, item, classes, gt_label, layers, answers)
        self._write(reference, item, classes, layers, answers, path, extra)

    def _text_image(self, reference, normalised, classes, answers) -> dict[int, Any]:
        """``text`` mode on a 2D image: the prediction step of :func:`medsam3.segment`, all
        classes on one encoding."""
        from medsam3.predict import TextPrompt
        from medsam3.predict.pipeline import predict_normalized

        plain = dataclasses.replace(self.run.settings, volume=VolumeSettings())  # volume options: not for 2D
        prediction = predict_normalized(self.predictor, reference, normalised, [TextPrompt(c.prompt) for c in classes],
                                        settings=plain, progress=False)
        results = {}
        for cls, result in zip(classes, prediction.results, strict=True):
            results[cls.index] = result
            _record(answers[cls.index], result, None, prompted=True)
        return results

    def _text_volume(self, reference, normalised, item, classes, layers, answers) -> dict[str, Any]:
        """``text`` mode on a volume: the prediction step of :func:`medsam3.segment` on the whole
        normalised volume, once per layer."""
        from medsam3.predict import TextPrompt
        from medsam3.predict.pipeline import predict_normalized

        volume_info = None
        for j in range(len(layers)):
            layer_classes = [c for c in classes if c.layer == j]
            prediction = predict_normalized(self.predictor, reference, normalised,
                                            [TextPrompt(c.prompt) for c in layer_classes], settings=self.run.settings,
                                            progress=False)
            lut = np.array([0] + [c.index for c in layer_classes], dtype=layers[j].dtype)
            layers[j][...] = lut[np.asarray(prediction.labels)]
            for cls, result in zip(layer_classes, prediction.results, strict=True):
                a = answers[cls.index]
                a.prompted = True
                a.present = bool(result.present)
                a.presence = float(result.presence_score)
                a.slices_present = [int(s) for s in getattr(result, "slices_present", [])]
            volume_info = volume_info or prediction.volume
        return {"volume": volume_info, "whole_volume": True}

    def _gt_volume(self, reference, normalised, item, classes, gt_label, layers, answers) -> dict[str, Any]:
        """Ground-truth modes on a volume: slice by slice, prompts from each slice's ground truth."""
        from medsam3.orientation import choose_orientation

        orientation = choose_orientation(reference.direction, self.run.axis)
        images = orientation.stack(normalised)
        truths = orientation.stack(gt_label)
        outputs = [orientation.stack(layer) for layer in layers]  # views: writes land in the layers
        axis_spacing = [reference.spacing[2 - a] for a in range(3)]  # spacing per array axis
        spacing = (axis_spacing[orientation.axes[1]], axis_spacing[orientation.axes[2]])
        mode = self.run.prompt_mode
        context = self.predictor.context_offset(axis_spacing[orientation.slice_axis])
        for k in range(images.shape[0]):
            truth = np.asarray(truths[k])
            if mode != "text+box" and not any(class_mask(truth, c.values, item.ignore_value).any() for c in classes):
                continue  # box / point: nothing to prompt on this slice, nothing is encoded
            results = answer_plane(self.predictor, np.ascontiguousarray(context_planes(images, k, context)), classes, truth,
                                    item.ignore_value, mode, self.run.max_objects, spacing, answers, k)
            for j, out in enumerate(outputs):
                out[k] = combine_layer(results, [c for c in classes if c.layer == j])
        return {"volume": {"mode": "slice-wise (ground-truth prompts)", "axis": orientation.axis,
                           "slice_axis": "zyx"[orientation.slice_axis]}, "whole_volume": True}

    def _write(self, reference, item, classes, layers, answers, path: Path, extra: dict[str, Any]) -> None:
        from medsam3.io import write_label_map
        from medsam3.io.sidecar import prediction_sidecar

        mode = self.run.prompt_mode
        n_layers = len(layers)
        layer_files = [layer_path(path, j) for j in range(n_layers)]
        for j in reversed(range(n_layers)):  # the main file last: it marks the item as predicted
            layer_classes = [c for c in classes if c.layer == j]
            sidecar = prediction_sidecar(
                labels={c.index: c.name for c in layer_classes},
                absent=[c.name for c in layer_classes if answers[c.index].prompted and not answers[c.index].present],
                scores={c.name: answers[c.index].presence for c in layer_classes}, model=self.run.model,
                image=reference, modality=item.modality, thresholds=self.run.settings.thresholds,
                prompts={str(c.index): (c.prompt if mode in ("text", "text+box") else mode) for c in layer_classes},
                not_prompted=[c.name for c in layer_classes if not answers[c.index].prompted],
                item=item.id, dataset=item.dataset, prompt_mode=mode, run=self.run.to_json())
            if mode in GT_MODES:
                sidecar["gt_prompts"] = {
                    c.name: {"objects": answers[c.index].objects,
                             "unprompted_components": answers[c.index].unprompted_components,
                             **({"slices": answers[c.index].slices_prompted} if reference.ndim == 3 else {})}
                    for c in layer_classes}
            if reference.ndim == 3:
                sidecar["slices_present"] = {c.name: answers[c.index].slices_present for c in layer_classes}
                sidecar.update({k: v for k, v in extra.items() if v is not None})
            if j == 0:
                sidecar["layers"] = [f.name for f in layer_files[1:]]
            else:
                sidecar["layer"] = j
                sidecar["main"] = path.name
            write_label_map(layers[j], reference, layer_files[j], sidecar=sidecar)


def answer_plane(predictor, plane: np.ndarray, classes: list[ItemClass], truth: np.ndarray | None,
                  ignore_value: int | None, mode: str, max_objects: int | None, spacing, answers: dict,
                  slice_index: int | None) -> dict[int, Any]:
    """Every class's :class:`~medsam3.predict.results.PromptResult` on one 2D image or slice,
    prompted from ``truth`` (the plane's ground-truth labels) in a ground-truth mode, or from the
    classes' text alone in ``text`` mode (``truth`` unused).
    Updates ``answers`` (presence, prompted, object counts) per class.
    """
    from medsam3.evaluate.gt_prompts import gt_objects
    from medsam3.predict import TextPrompt

    predictor.set_image(plane)
    shape = plane.shape[:2]
    results: dict[int, Any] = {}
    if mode == "text":  # the classes' prompts alone (the paper protocol's text mode, slice by slice)
        for c, result in zip(classes, predictor.predict([TextPrompt(c.prompt) for c in classes]), strict=True):
            results[c.index] = result
            _record(answers[c.index], result, slice_index, prompted=True)
        return results
    masks = {c.index: class_mask(truth, c.values, ignore_value) for c in classes}
    if mode == "text+box":
        prompts = []
        for c in classes:
            objects, total = gt_objects(masks[c.index], spacing, max_objects=1)
            if objects:
                prompts.append(TextPrompt(c.prompt, [objects[0].box], [1]))
                answers[c.index].objects += 1
                if slice_index is not None:
                    answers[c.index].slices_prompted.append(int(slice_index))
            else:
                prompts.append(TextPrompt(c.prompt))
        for c, result in zip(classes, predictor.predict(prompts), strict=True):
            results[c.index] = result
            _record(answers[c.index], result, slice_index, prompted=True)
        return results
    for c in classes:
        objects, total = gt_objects(masks[c.index], spacing, max_objects=max_objects)
        a = answers[c.index]
        a.unprompted_components += total - len(objects)
        if not objects:
            from medsam3.predict.results import PromptResult

            results[c.index] = PromptResult.absent(mode, 0.0, shape, kind="interactive")
            continue
        parts = [predictor.predict_interactive(box=o.box, name=mode) if mode == "box"
                 else predictor.predict_interactive(points=[o.point], point_labels=[1], name=mode) for o in objects]
        a.objects += len(objects)
        if slice_index is not None:
            a.slices_prompted.append(int(slice_index))
        results[c.index] = _union(mode, parts, shape)
        _record(a, results[c.index], slice_index, prompted=True)
    return results


def _record(answer: ClassAnswer, result, slice_index: int | None, prompted: bool) -> None:
    answer.prompted = answer.prompted or prompted
    answer.presence = max(answer.presence, float(result.presence_score))
    if result.present:
        answer.present = True
        if slice_index is not None:
            answer.slices_present.append(int(slice_index))


def _union(name: str, parts: list, shape) -> Any:
    """One class result from several tracker answers (one per component): the union of the masks."""
    from medsam3.predict.results import PromptResult

    presence = max(float(p.presence_score) for p in parts)
    present = [p for p in parts if p.present]
    if not present:
        return PromptResult.absent(name, presence, shape, kind="interactive")
    return PromptResult(prompt=name, present=True, presence_score=presence,
                        scores=np.concatenate([p.scores for p in present]),
                        boxes=np.concatenate([p.boxes for p in present]),
                        masks=np.concatenate([p.masks for p in present]),
                        semantic=np.logical_or.reduce([p.semantic for p in present]),
                        probability=np.maximum.reduce([p.probability for p in present]), kind="interactive")


def combine_layer(results: dict[int, Any], layer_classes: list[ItemClass]) -> np.ndarray:
    """The label map of one layer: label = class index; overlaps go to the most probable class."""
    from medsam3.predict.results import combine_label_map

    combined = combine_label_map([results[c.index] for c in layer_classes])
    lut = np.array([0] + [c.index for c in layer_classes], dtype=np.uint16)
    return lut[combined]
