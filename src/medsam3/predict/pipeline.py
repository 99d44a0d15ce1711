"""One normalised image or volume through the model: the prediction step that
:func:`medsam3.segment`, evaluation (:func:`medsam3.evaluate.evaluate_model`) and the web app share.

normalised ``(H, W[, 3])`` image or ``(Z, Y, X)`` volume + prompts + :class:`PredictSettings`
-> :class:`Prediction` (label map in the input's array order, per-prompt answers, instance
map, the sidecar's ``volume`` section). Reading, intensity normalisation and writing stay
with the caller; what depends on the model (concept gating, 2.5D input, its best volume
mode, an untrained tracker) is decided here or in the predictors, the same for every caller.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.predict.image import ImagePredictor, TextPrompt
from medsam3.predict.results import PromptResult, combine_label_map
from medsam3.predict.settings import PredictSettings

#: why a volume ran in its mode (the sidecar's ``volume.mode_reason``)
MODE_REASONS = {"given": "asked for", "model": "the model's own (medsam3.json volume_mode)",
                "default": "the default (the model names none)",
                "fallback": "the model's tracker is untrained: slice-by-slice detection instead"}


@dataclass
class Prediction:
    """What :func:`predict_normalized` returns.

    Attributes:
        labels: label map in the input's array order; label k = k-th prompt (text prompts,
            then the box/points object).
        results: per label, a :class:`PromptResult` (2D) or
            :class:`~medsam3.predict.volume.VolumePromptSummary` (3D).
        instances: 3D with ``settings.volume.instances``: the instance map, else ``None``.
        instance_labels: instance id -> label.
        volume: 3D: the sidecar's ``volume`` section (mode and why, axis, merge rule, ...).
    """

    labels: np.ndarray
    results: list
    instances: np.ndarray | None = None
    instance_labels: dict[int, int] = field(default_factory=dict)
    volume: dict | None = None


def predict_normalized(predictor: ImagePredictor, image: Image, normalized: np.ndarray,
                       prompts: Sequence[TextPrompt] = (), *, box: Sequence[float] | None = None,
                       points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
                       slice_index: int | None = None, settings: PredictSettings | None = None,
                       progress: bool = True) -> Prediction:
    """Answer ``prompts`` (and one box/points object) on a normalised image.

    Args:
        predictor: the :class:`ImagePredictor` (its model and thresholds; see
            :meth:`ImagePredictor.from_settings`).
        image: the input, for its geometry (direction, spacing) and name in messages.
        normalized: its intensities in [0, 1], in its array order (:func:`medsam3.preprocess.normalize_intensity`).
        prompts: text prompts (labels 1..K).
        box, points, point_labels: one object (label K+1), in pixels of the image (2D) or of
            the array plane ``slice_index`` along the slicing axis (3D).
        settings: the volume settings (2D: volume-only options are refused).
        progress: volumes: a progress bar.
    """
    settings = settings or PredictSettings()
    prompts = list(prompts)
    interactive = box is not None or bool(points)
    where = image.path or "the input"
    if image.ndim == 2:
        settings.volume.check_for_2d(where)
        if slice_index is not None:
            raise ArgumentError(f"--slice {slice_index} given, but {where} is a 2D image")
        predictor.set_image(normalized)
        results: list = predictor.predict(prompts) if prompts else []
        if interactive:
            results.append(predictor.predict_interactive(box=box, points=points, point_labels=point_labels))
        return Prediction(combine_label_map(results), results)
    return _predict_volume(predictor, image, normalized, prompts, box, points, point_labels, slice_index,
                           settings, progress)


def _predict_volume(predictor, image, normalized, prompts, box, points, point_labels, slice_index,
                    settings: PredictSettings, progress) -> Prediction:
    from medsam3.predict.input_size import with_input_size
    from medsam3.orientation import choose_orientation
    from medsam3.predict.volume import EXEMPLAR_RULE, EmptySliceRule, ObjectPrompt, VolumePredictor

    vs = settings.volume
    model = predictor.model
    where = image.path or "the input"
    interactive = box is not None or bool(points)
    orientation = choose_orientation(image.direction, vs.axis)
    n = image.shape[orientation.slice_axis]
    if interactive and slice_index is None:
        raise ArgumentError(f"{where} is a volume: box/point prompts need --slice K "
                            f"(the {orientation.axis} slice index they were drawn on, 0..{n - 1})")
    if slice_index is not None and not 0 <= slice_index < n:
        raise ArgumentError(f"--slice {slice_index} is out of range: {where} has "
                            f"{n} {orientation.axis} slices (0..{n - 1})")
    objects = [ObjectPrompt(slice_index, box=box, points=points, point_labels=point_labels)] if interactive else []
    exemplars = any(p.exemplar_boxes for p in prompts)
    if exemplars and slice_index is None:
        raise ArgumentError(f"{where} is a volume: exemplar boxes need --slice K "
                            f"(the {orientation.axis} slice index they were drawn on, 0..{n - 1})")
    mode, reason = model.info.resolve_volume_mode(vs.mode)
    if mode != "slices" and not model.tracker_trained:
        if mode == "propagate" or interactive:
            _ = model.tracker  # raises: the error names the model and what to do
        warnings.warn(f"model {model.source} has no trained tracker: --mode {mode} falls back to "
                      "slice-by-slice detection (--mode slices), without propagation", UserWarning, stacklevel=4)
        mode, reason = "slices", "fallback"
    presence_window = vs.presence_window
    if presence_window is None:  # the model's own, for the mode it was chosen for
        presence_window = model.info.presence_window if mode == "slices" else 1
    if vs.size is not None and vs.size != model.image_size:
        predictor = ImagePredictor(with_input_size(model, vs.size), score_threshold=predictor.score_threshold,
                                   presence_threshold=predictor.presence_threshold,
                                   mask_threshold=predictor.mask_threshold, batch_size=predictor.batch_size,
                                   gate_concepts=predictor.gate_concepts)
    volume = VolumePredictor(predictor, mode=mode, rule=vs.merge_rule, backward_slices=vs.backward_slices,
                             empty_slices=EmptySliceRule() if vs.skip_empty else None,
                             presence_window=presence_window, progress=progress, clip_length=vs.clip_length,
                             clip_overlap=vs.clip_overlap, clip_fusion=vs.clip_fusion,
                             encode_batch=vs.encode_batch, read_ahead=vs.read_ahead)
    result = volume.segment(normalized, prompts, objects, direction=image.direction, axis=vs.axis,
                            instances=vs.instances, description=Path(str(image.path or "volume")).name,
                            spacing=image.spacing, exemplar_slice=slice_index if exemplars else None)
    section = {
        "mode": result.mode,
        "mode_reason": MODE_REASONS[reason],
        "axis": result.orientation.axis,
        "slice_axis": "zyx"[result.orientation.slice_axis],
        "skipped_slices": result.skipped_slices,
        "model_input_size": predictor.model.image_size,
        "model_context_mm": predictor.context_mm,
        "merge_rule": {"iou_threshold": vs.iou_threshold, "max_unsupported": vs.max_unsupported,
                       "backward_slices": vs.backward_slices, "key_score": vs.key_score},
        "presence_window": presence_window,
    }
    if result.mode == "clips":
        section["clips"] = {"length": vs.clip_length, "overlap": vs.clip_overlap, "fusion": vs.clip_fusion,
                            "count": result.stats.get("clips")}
    if exemplars:
        section["exemplars"] = {"slice": slice_index, "rule": EXEMPLAR_RULE}
    return Prediction(result.labels, result.summaries, result.instances, dict(result.instance_labels), section)


def instance_count(result) -> int:
    """Instances of one prompt's answer: 2D instances, or objects of the 3D instance map."""
    if isinstance(result, PromptResult):
        return result.num_instances
    return len(result.instance_ids)  # objects in the instance map, each with one id across slices
