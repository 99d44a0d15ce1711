"""``medsam3.segment`` (this module: ``medsam3.segmentation``): the Python face of ``medsam3 segment``, with the same arguments.

file on disk -> :class:`Image` -> intensity normalisation -> predictor -> label map in the
input's geometry (+ JSON sidecar, + optional overlay PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medsam3 import __version__
from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.model.loader import MedSAM3
from medsam3.model.precision import check_precision
from medsam3.predict.image import ImagePredictor, TextPrompt
from medsam3.orientation import choose_orientation
from medsam3.predict.results import PromptResult, combine_label_map
from medsam3.predict.volume import VolumePromptSummary

#: The model used when none is given: the published SAM3 weights (needs the network once).
DEFAULT_MODEL = "facebook/sam3"

_MODEL_CACHE: dict[tuple[str, str, str], MedSAM3] = {}


@dataclass
class Segmentation:
    """What :func:`segment` returns.

    Attributes:
        labels: the label map as an :class:`Image` on the input's grid (label k = k-th prompt).
        prompts: the label names, in label order (text prompts, then ``box``/``points``).
        results: per prompt, a :class:`PromptResult` (2D) or :class:`VolumePromptSummary` (3D).
        absent: prompts answered "absent".
        sidecar: the JSON sidecar content.
        output: where the label map was written, if it was.
    """

    labels: Image
    prompts: list[str]
    results: list[PromptResult | VolumePromptSummary]
    absent: list[str]
    sidecar: dict
    output: Path | None = None
    overlay: Path | None = None
    extra: dict = field(default_factory=dict)


def load_model(model: str | MedSAM3 | None, device: str = "auto", dtype=None, precision=None) -> MedSAM3:
    """A :class:`MedSAM3`, loaded once per (source, device, dtype, precision) in this process
    (a loaded model passed in keeps its own precision)."""
    if isinstance(model, MedSAM3):
        return model
    key = (str(model or DEFAULT_MODEL), str(device), str(dtype), check_precision(precision))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = MedSAM3.from_pretrained(key[0], device=device, dtype=dtype, precision=key[3])
    return _MODEL_CACHE[key]


def segment(input, output=None, prompts: Sequence[str] = (), *, box: Sequence[float] | None = None,
            points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
            exemplars: Sequence[Sequence[float]] | None = None, exemplar_labels: Sequence[int] | None = None,
            slice_index: int | None = None, model: str | MedSAM3 | None = None, device: str = "auto",
            dtype=None, modality: str | None = None, window=None, threshold: float = 0.5,
            presence_threshold: float = 0.5, mask_threshold: float = 0.5, overlay=None,
            batch_size: int = 8, progress: bool = True, mode: str = "merged", axis: str | None = None,
            instances: bool = False, skip_empty: bool = True, backward_slices: int = 8,
            max_unsupported: int = 2, iou_threshold: float = 0.3, key_score: float = 0.5,
            presence_window: int | None = None, size: int | None = None, series_uid: str | None = None,
            output_format: str | None = None, clip_length: int = 4, clip_overlap: int = 0,
            clip_fusion: str = "mean", precision: str | None = None) -> Segmentation:
    """Segment a 2D image or 3D volume from text, box and point prompts.

    Args:
        input: a file or DICOM series directory (any format of :func:`medsam3.io.read_image`),
            or an :class:`Image`.
        output: where to write the label map (format from the extension); ``None`` writes nothing.
        prompts: text prompts; label k is the k-th prompt. A single string is one prompt
            (``prompts="liver"``), not one per letter.
        box: ``X0 Y0 X1 Y1`` pixel box of one object (interactive, through the tracker); it gets
            the label after the text prompts.
        points: ``[[X, Y], ...]`` clicks on that same object; ``point_labels`` 1 (positive,
            default) or 0 (negative).
        exemplars: ``X0 Y0 X1 Y1`` exemplar boxes given with every text prompt (concept
            prompts); ``exemplar_labels`` 1 = example (default), 0 = counter-example. On a volume
            they are drawn on ``slice_index`` (pixels of that array plane, like ``box``) and act
            as :data:`medsam3.predict.volume.EXEMPLAR_RULE` says.
        slice_index: for volumes, the slice that box/points are drawn on: its index along the
            slicing axis, in array order (for axial slicing of an axial scan, array index z);
            box/point pixels are that array plane's columns (x) and rows (y).
        model: model directory, hub id, ``random:NAME`` or a loaded :class:`MedSAM3`.
        device: ``auto``, ``cpu``, ``cuda``.
        precision: ``fp32`` (default), ``bf16`` or ``int8`` inference (:mod:`medsam3.model.precision`).
        modality, window: intensity normalisation (see :func:`medsam3.preprocess.normalize_intensity`).
        threshold: instance score threshold; presence_threshold: below it a prompt is "absent";
        mask_threshold: pixel probability threshold.
        overlay: optional PNG path for an overlay picture.
        mode: volumes: ``merged`` (detection + tracker propagation, merged; default),
            ``propagate`` (tracker masks from detected key slices) or ``slices`` (detection only);
            see :mod:`medsam3.predict.volume`.
        axis: volumes: ``axial``, ``coronal`` or ``sagittal`` slices in the image's physical
            orientation; default the plane closest to the acquisition plane.
        instances: volumes: also write an instance map (one id per object, kept across
            slices) next to the label map, ``NAME_instances.EXT`` with its own sidecar.
        skip_empty: volumes: skip empty background slices (:class:`medsam3.predict.volume.EmptySliceRule`).
        size: volumes: the model's input resolution in pixels (a multiple of 14 up to
            :data:`medsam3.predict.input_size.MAX_INPUT_SIZE` = 4032; default the checkpoint's own),
            see :func:`medsam3.predict.input_size.with_input_size`.
        backward_slices, max_unsupported, iou_threshold, key_score: volumes: how far tracks are
            propagated back from their key slice, and the merge rule (:mod:`medsam3.predict.merge`).
        presence_window: volumes, mode ``slices``: an odd number of slices whose median presence
            decides each slice's present / absent answer (:mod:`medsam3.predict.volume`); ``None``:
            the model's ``medsam3.json`` ``presence_window`` (1, each slice alone, without one).

        clip_length, clip_overlap, clip_fusion: volumes, mode ``clips`` (Medical SAM3's official
            3D scheme): slices per clip, slices shared by neighbouring clips, ``mean``/``max`` fusion
            of overlapping clips (:mod:`medsam3.predict.clips`).
        series_uid: for a DICOM folder holding several series, the one to read.
        output_format: ``dicom-seg`` or ``dicom-rt`` to write DICOM (a ``.dcm`` output defaults
            to ``dicom-seg``); otherwise the format follows the output's extension.

    Returns:
        a :class:`Segmentation`.
    """
    from medsam3.io import dicom_label_format, read_image, write_label_map
    from medsam3.io.dicom_derived import source_series
    from medsam3.preprocess import normalize_intensity
    from medsam3.prompt_mapping import map_prompts

    if isinstance(prompts, str):  # one prompt, not one per letter
        prompts = [prompts]
    prompts = [str(p) for p in (prompts or [])]
    if any(not p.strip() for p in prompts):
        raise ArgumentError("a text prompt is empty")
    box = None if box is None else _numbers(box, 4, "box", "[x0, y0, x1, y1]")
    points = None if points is None else [_numbers(p, 2, "points", "[[x, y], ...]", points) for p in _items(
        points, "points", "[[x, y], ...]")]
    exemplars = None if exemplars is None else [_numbers(b, 4, "exemplars", "[[x0, y0, x1, y1], ...]", exemplars)
                                                for b in _items(exemplars, "exemplars", "[[x0, y0, x1, y1], ...]")]
    point_labels = _click_labels(point_labels, points, "point_labels", "points")
    exemplar_labels = _click_labels(exemplar_labels, exemplars, "exemplar_labels", "exemplars")
    if size is not None:
        from medsam3.predict.input_size import check_input_size

        size = check_input_size(size)
    interactive = box is not None or bool(points)
    if not prompts and not interactive:
        raise ArgumentError("no prompt given: give at least one text prompt (-p), a --box or a --point")
    if output is not None:
        output = Path(output)
    image = input if isinstance(input, Image) else read_image(input, modality=modality, series_uid=series_uid)
    _plan_outputs(image, output, instances, overlay).check()  # nothing is written before this passes
    if output is not None and dicom_label_format(output, output_format):
        # DICOM SEG / RTSTRUCT reference the source series: check that before the model runs
        source_series(image, output, "DICOM output")
    normalized = normalize_intensity(image, modality=modality, window=window)
    loaded = load_model(model, device=device, dtype=dtype, precision=precision)
    predictor = ImagePredictor(loaded, score_threshold=threshold, presence_threshold=presence_threshold,
                               mask_threshold=mask_threshold, batch_size=batch_size)
    sent, prompt_records = map_prompts(prompts, loaded)  # the model's own text for each prompt, and why
    sent = dict(zip(prompts, sent))
    unknown = _unknown_prompts(loaded, prompts)
    run = [p for p in prompts if p not in unknown]  # what the model is asked, in order
    text_prompts = [TextPrompt(sent[p], [list(b) for b in exemplars or []],
                               list(exemplar_labels or [])) for p in run]
    names = prompts + ([("box" if box is not None else "points")] if interactive else [])

    if not text_prompts and not interactive:  # every prompt unknown to the model: nothing to run
        spatial = normalized.shape[:2] if image.ndim == 2 else normalized.shape[:3]
        label_array, results, volume_extra = np.zeros(spatial, np.uint8), [], {
            "instances": None, "instance_labels": {}, "sidecar": {"mode": mode, "skipped": "no known prompt"}}
    elif image.ndim == 2:
        if axis is not None:
            raise ArgumentError(f"--axis {axis} given, but {image.path or 'the input'} is a 2D image")
        if instances:
            raise ArgumentError(f"--instances is for volumes, but {image.path or 'the input'} is a 2D image")
        if size is not None:
            raise ArgumentError(f"--size is for volumes, but {image.path or 'the input'} is a 2D image")
        if slice_index is not None:
            raise ArgumentError(f"--slice {slice_index} given, but {image.path or 'the input'} is a 2D image")
        if presence_window is not None:
            raise ArgumentError(f"--presence-window is for volumes, but {image.path or 'the input'} is a 2D image")
        predictor.set_image(normalized)
        results: list = predictor.predict(text_prompts) if text_prompts else []
        if interactive:
            results.append(predictor.predict_interactive(box=box, points=points, point_labels=point_labels))
        label_array = combine_label_map(results)
    else:
        label_array, results, volume_extra = _segment_volume(
            predictor, normalized, text_prompts, box, points, point_labels, slice_index, image, progress,
            mode=mode, axis=axis, instances=instances, skip_empty=skip_empty, backward_slices=backward_slices,
            max_unsupported=max_unsupported, iou_threshold=iou_threshold, key_score=key_score,
            presence_window=presence_window, size=size, clips=(clip_length, clip_overlap, clip_fusion))
    if unknown or run != [r.prompt for r in results[:len(run)]]:
        lookup, results = _restore_prompt_order(results, prompts, run, 2 if image.ndim == 2 else 3,
                                                label_array.shape)
        label_array = lookup[np.asarray(label_array, dtype=np.int64)].astype(label_array.dtype)
        if image.ndim == 3:
            volume_extra["instance_labels"] = {i: int(lookup[k]) for i, k in volume_extra["instance_labels"].items()}
    labels = image.with_array(label_array, modality=None)
    labels.meta.pop("rgb", None)
    absent = [r.prompt for r in results if not r.present]
    sidecar = {
        "labels": {str(k): name for k, name in enumerate(names, start=1)},
        "absent": absent,
        "unknown_to_model": unknown,
        "prompts": prompt_records,  # typed, sent, rule (medsam3.prompt_mapping)
        "scores": {r.prompt: round(float(r.presence_score), 6) for r in results},
        "model": loaded.source,
        "precision": getattr(loaded, "precision", "fp32"),
        "input": str(image.path) if image.path else None,
        "modality": modality or image.modality,
        "window": window if window is None or isinstance(window, str) else list(window),
        "thresholds": {"score": threshold, "presence": presence_threshold, "mask": mask_threshold},
        "instances": {r.prompt: _instance_count(r) for r in results},
        # kept here too, because PNG/TIFF outputs cannot store origin and direction
        "geometry": {"size": list(image.size), "spacing": list(image.spacing), "origin": list(image.origin),
                     "direction": list(image.direction)},
        "medsam3_version": __version__,
    }
    if image.ndim == 3:
        sidecar["volume"] = volume_extra["sidecar"]
    seg = Segmentation(labels=labels, prompts=names, results=results, absent=absent, sidecar=sidecar)
    if output is not None:
        seg.output = write_label_map(label_array, image, output, sidecar=sidecar, format=output_format)
    if image.ndim == 3:
        seg.extra.update(_write_instances(volume_extra, image, output, sidecar, output_format))
    if overlay is not None:
        from medsam3.overlay import render_overlay

        seg.overlay = render_overlay(image, label_array, {k: n for k, n in enumerate(names, start=1)}, overlay,
                                     normalized=normalized, absent=absent)
    return seg


def _items(values, name: str, shape: str) -> list:
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ArgumentError(f"{name} must be {shape} (pixels), got {values!r}")
    return list(values)


def _numbers(value, n: int, name: str, shape: str, whole=None) -> list[float]:
    """``value`` as ``n`` finite floats, or an ArgumentError showing the expected shape."""
    try:
        numbers = [float(v) for v in _items(value, name, shape)]
    except (TypeError, ValueError, ArgumentError):
        numbers = []
    if len(numbers) != n or not np.all(np.isfinite(numbers)):
        shown = value if whole is None else whole
        raise ArgumentError(f"{name} must be {shape} (pixels, {n} finite numbers each), got {shown!r}")
    return numbers


def _click_labels(labels, items, name: str, of: str) -> list[int] | None:
    """``labels`` (1 = positive, 0 = negative), one per item of ``of``; ``None`` stays ``None``."""
    if labels is None:
        return None
    values = _items(labels, name, "[1, 0, ...]")
    if any(isinstance(v, bool) or v not in (0, 1) for v in values):
        raise ArgumentError(f"{name} must be 1 (positive) or 0 (negative) for each of {of}, got {labels!r}")
    if len(values) != len(items or []):
        raise ArgumentError(f"{len(values)} {name} for {len(items or [])} {of}: give one per item")
    return [int(v) for v in values]


def _unknown_prompts(model: MedSAM3, prompts: Sequence[str]) -> list[str]:
    """Prompts outside the model's trained concepts (warned about; answered absent, not run)."""
    import warnings

    from medsam3.prompts import UnknownConceptWarning

    unknown = [p for p in prompts if not model.knows(p)]
    for p in unknown:
        warnings.warn(f"{p!r} is not a concept model {model.source} was trained on "
                      f"({', '.join(model.concepts or [])}): answered absent, not guessed", UnknownConceptWarning,
                      stacklevel=3)
    return unknown


def _restore_prompt_order(results, prompts, run, dim, shape):
    """Results of the prompts the model ran (``run``, then an interactive one) back in the
    order of ``prompts`` with absent answers for the unknown ones, and the lookup table that
    renumbers labels so that label k is still the k-th prompt: ``(lookup, results)``."""
    lookup = np.zeros(len(results) + 1, dtype=np.int64)
    ordered, k_run = [], 0
    for k, p in enumerate(prompts, start=1):
        if k_run < len(run) and run[k_run] == p:
            r = results[k_run]
            r.prompt = p
            lookup[k_run + 1] = k
            k_run += 1
        elif dim == 2:
            r = PromptResult.absent(p, 0.0, tuple(shape))
        else:
            r = VolumePromptSummary(prompt=p, present=False, presence_score=0.0)
        ordered.append(r)
    for j in range(len(run), len(results)):  # the interactive prompt, last
        lookup[j + 1] = len(ordered) + 1
        ordered.append(results[j])
    return lookup, ordered


def _segment_volume(predictor, normalized, text_prompts, box, points, point_labels, slice_index, image, progress,
                    mode="merged", axis=None, instances=False, skip_empty=True, backward_slices=8,
                    max_unsupported=2, iou_threshold=0.3, key_score=0.5, presence_window=None, size=None,
                    clips=(4, 0, "mean")):
    """A volume through :class:`VolumePredictor`: ``(labels, summaries, extra)`` in the input's array order."""
    from medsam3.predict.input_size import check_input_size, with_input_size
    from medsam3.predict.merge import MergeRule
    from medsam3.predict.volume import EmptySliceRule, ObjectPrompt, VolumePredictor

    interactive = box is not None or bool(points)
    orientation = choose_orientation(image.direction, axis)
    n = image.shape[orientation.slice_axis]
    if interactive and slice_index is None:
        raise ArgumentError(f"{image.path or 'the input'} is a volume: box/point prompts need --slice K "
                            f"(the {orientation.axis} slice index they were drawn on, 0..{n - 1})")
    if slice_index is not None and not 0 <= slice_index < n:
        raise ArgumentError(f"--slice {slice_index} is out of range: {image.path or 'the input'} has "
                            f"{n} {orientation.axis} slices (0..{n - 1})")
    objects = [ObjectPrompt(slice_index, box=box, points=points, point_labels=point_labels)] if interactive else []
    exemplars = any(p.exemplar_boxes for p in text_prompts)
    if exemplars and slice_index is None:
        raise ArgumentError(f"{image.path or 'the input'} is a volume: exemplar boxes need --slice K "
                            f"(the {orientation.axis} slice index they were drawn on, 0..{n - 1})")
    if mode != "slices" and not predictor.model.tracker_trained:
        if mode == "propagate" or interactive:
            _ = predictor.model.tracker  # raises: the error names the model and what to do
        import warnings

        warnings.warn(f"model {predictor.model.source} has no trained tracker: --mode {mode} falls back to "
                      "slice-by-slice detection (--mode slices), without propagation", UserWarning, stacklevel=3)
        mode = "slices"
    if presence_window is None:  # the model's own, for the mode it was chosen for
        presence_window = predictor.model.info.get("presence_window", 1) if mode == "slices" else 1
    if size is not None and check_input_size(size) != predictor.model.image_size:
        predictor = ImagePredictor(with_input_size(predictor.model, size), score_threshold=predictor.score_threshold,
                                   presence_threshold=predictor.presence_threshold,
                                   mask_threshold=predictor.mask_threshold, batch_size=predictor.batch_size)
    volume = VolumePredictor(predictor, mode=mode,
                             rule=MergeRule(iou_threshold=iou_threshold, max_unsupported=max_unsupported,
                                            key_score=key_score),
                             backward_slices=backward_slices, empty_slices=EmptySliceRule() if skip_empty else None,
                             presence_window=presence_window, progress=progress, clip_length=clips[0],
                             clip_overlap=clips[1], clip_fusion=clips[2])
    result = volume.segment(normalized, text_prompts, objects, direction=image.direction, axis=axis,
                            instances=instances, description=Path(str(image.path or "volume")).name,
                            spacing=image.spacing, exemplar_slice=slice_index if exemplars else None)
    extra = {
        "instances": result.instances,
        "instance_labels": result.instance_labels,
        "sidecar": {
            "mode": result.mode,
            "axis": result.orientation.axis,
            "slice_axis": "zyx"[result.orientation.slice_axis],
            "skipped_slices": result.skipped_slices,
            "model_input_size": predictor.model.image_size,
            "model_context_mm": predictor.context_mm,
            "merge_rule": {"iou_threshold": iou_threshold, "max_unsupported": max_unsupported,
                           "backward_slices": backward_slices, "key_score": key_score},
            "presence_window": presence_window,
        },
    }
    if result.mode == "clips":
        extra["sidecar"]["clips"] = {"length": clips[0], "overlap": clips[1], "fusion": clips[2],
                                     "count": result.stats.get("clips")}
    if exemplars:
        from medsam3.predict.volume import EXEMPLAR_RULE

        extra["sidecar"]["exemplars"] = {"slice": slice_index, "rule": EXEMPLAR_RULE}
    return result.labels, result.summaries, extra


def _write_instances(volume_extra, image, output, sidecar, output_format=None) -> dict:
    """Write the instance map beside the label map (``NAME_instances.EXT``), when one was made."""
    instances = volume_extra["instances"]
    if instances is None:
        return {}
    extra = {"instances": image.with_array(instances, modality=None), "instance_labels": volume_extra["instance_labels"]}
    if output is not None:
        from medsam3.io import write_label_map

        path = _instances_path(output)
        labels = sidecar["labels"]
        present = set(np.unique(instances).tolist())
        instance_sidecar = {
            "instances": {str(i): {"label": int(k), "name": labels.get(str(k))}
                          for i, k in sorted(volume_extra["instance_labels"].items()) if i in present},
            "label_map": str(output),
            "input": sidecar.get("input"),
            "model": sidecar.get("model"),
        }
        names = {i: f"{labels.get(str(k), k)} {i}" for i, k in volume_extra["instance_labels"].items()}
        extra["instances_output"] = write_label_map(instances, image, path, sidecar=instance_sidecar,
                                                    format=output_format, names=names,
                                                    model_id=sidecar.get("model"))
    return extra


def _instance_count(result) -> int:
    if isinstance(result, PromptResult):
        return result.num_instances
    return len(result.instance_ids)  # objects in the instance map, each with one id across slices


def _instances_path(output) -> Path:
    """Where ``--instances`` writes the instance map: ``NAME_instances.EXT`` beside ``NAME.EXT``."""
    from medsam3.io.formats import image_extension, strip_image_extension

    return Path(str(strip_image_extension(output)) + "_instances" + image_extension(output))


def _plan_outputs(image: Image, output, instances: bool, overlay):
    """Every file this run will write (label map, its data file and sidecar; for volumes with
    ``instances``, the instance map's; the overlay), checked against the input's files and each
    other by :class:`medsam3.io.outputs.OutputPlan` before anything is computed or written."""
    from medsam3.io import sidecar_path
    from medsam3.io.outputs import OutputPlan
    from medsam3.overlay import check_overlay_path

    plan = OutputPlan()
    plan.add_input(image)
    if output is not None:
        plan.add_image(output, "label map")
        plan.add(sidecar_path(output), "sidecar")
        if instances and image.ndim == 3:
            plan.add_image(_instances_path(output), "instance map")
            plan.add(sidecar_path(_instances_path(output)), "instance map's sidecar")
    if overlay is not None:
        plan.add(check_overlay_path(overlay), "overlay")
    return plan


def summary_dict(result) -> dict:
    """A JSON-ready view of a per-prompt result (without the arrays)."""
    if isinstance(result, PromptResult):
        return {"prompt": result.prompt, "present": result.present, "presence_score": result.presence_score,
                "instances": result.num_instances, "scores": result.scores.tolist(),
                "boxes": result.boxes.tolist(), "pixels": int(result.semantic.sum())}
    return asdict(result)
