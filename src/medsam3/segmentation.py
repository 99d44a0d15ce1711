"""``medsam3.segment`` (this module: ``medsam3.segmentation``): the Python face of ``medsam3 segment``, with the same arguments.

file on disk -> :class:`Image` -> intensity normalisation -> predictor -> label map in the
input's geometry (+ JSON sidecar, + optional overlay PNG).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.io.sidecar import prediction_sidecar
from medsam3.model.loader import MedSAM3
from medsam3.model.precision import check_precision, precision_fields
from medsam3.predict.image import ImagePredictor, TextPrompt
from medsam3.predict.pipeline import instance_count, predict_normalized
from medsam3.predict.results import PromptResult
from medsam3.predict.settings import PredictSettings
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
    (a loaded model passed in keeps its own precision). ``--fast`` (precision ``fast`` or
    ``fast:PRECISION``) also runs the model at the input size it resolved to (``model.fast``)."""
    if isinstance(model, MedSAM3):
        return _at_fast_size(model)
    key = (str(model or DEFAULT_MODEL), str(device), str(dtype), check_precision(precision))
    if key not in _MODEL_CACHE:
        _MODEL_CACHE[key] = _at_fast_size(MedSAM3.from_pretrained(key[0], device=device, dtype=dtype,
                                                                  precision=key[3]))
    return _MODEL_CACHE[key]


def _at_fast_size(model: MedSAM3) -> MedSAM3:
    """``model`` at the input size ``--fast`` resolved to (the same object without ``--fast``)."""
    fast = getattr(model, "fast", None)
    if fast is None or fast.size == model.image_size:
        return model
    from medsam3.predict.input_size import with_input_size

    return with_input_size(model, fast.size)


def fast_record(model: MedSAM3, settings: PredictSettings, ndim: int) -> dict | None:
    """The sidecar's ``"fast"``: what ``--fast`` resolved to (precision, input size, why), with an
    explicit ``--size`` on a volume winning over ``--fast``'s; ``None`` without ``--fast``."""
    fast = getattr(model, "fast", None)
    if fast is None:
        return None
    record = fast.to_json()
    if ndim == 3 and settings.volume.size is not None and settings.volume.size != fast.size:
        record.update(size=settings.volume.size, size_reason="given explicitly (--size)")
    return record


def segment(input, output=None, prompts: Sequence[str] = (), *, box: Sequence[float] | None = None,
            points: Sequence[Sequence[float]] | None = None, point_labels: Sequence[int] | None = None,
            exemplars: Sequence[Sequence[float]] | None = None, exemplar_labels: Sequence[int] | None = None,
            slice_index: int | None = None, model: str | MedSAM3 | None = None, device: str = "auto",
            dtype=None, modality: str | None = None, window=None, settings: PredictSettings | None = None,
            threshold: float | None = None, presence_threshold: float | None = None,
            mask_threshold: float | None = None, overlay=None, batch_size: int | None = None, progress: bool = True,
            mode: str | None = None, axis: str | None = None, instances: bool | None = None,
            skip_empty: bool | None = None, backward_slices: int | None = None, max_unsupported: int | None = None,
            iou_threshold: float | None = None, key_score: float | None = None, presence_window: int | None = None,
            size: int | None = None, clip_length: int | None = None, clip_overlap: int | None = None,
            clip_fusion: str | None = None, series_uid: str | None = None, output_format: str | None = None,
            precision: str | None = None) -> Segmentation:
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
            prompts); ``exemplar_labels`` 1 = example (default), 0 = counter-example.
        slice_index: for volumes, the slice that box/points are drawn on: its index along the
            slicing axis, in array order (for axial slicing of an axial scan, array index z);
            box/point pixels are that array plane's columns (x) and rows (y).
        model: model directory, hub id, ``random:NAME`` or a loaded :class:`MedSAM3`.
        device: ``auto``, ``cpu``, ``cuda``.
        modality, window: intensity normalisation (see :func:`medsam3.preprocess.normalize_intensity`).
        settings: the prediction settings (:class:`medsam3.predict.settings.PredictSettings`:
            thresholds, batch size, and for volumes mode, axis, merge rule, presence window,
            size, empty slices, instance map); default settings when ``None``.
        threshold, presence_threshold, mask_threshold, batch_size, mode, axis, instances,
            skip_empty, backward_slices, max_unsupported, iou_threshold, key_score,
            presence_window, size: the same settings one by one (a convenience: those not
            ``None`` replace the fields of ``settings``). In short: ``threshold`` instance
            score threshold (0.5); ``presence_threshold``: below it a prompt is "absent" (0.5);
            ``mask_threshold``: pixel probability threshold (0.5); ``mode`` for volumes:
            ``merged`` (detection + tracker propagation, merged), ``propagate`` or ``slices``,
            default the model's own (``medsam3.json`` ``volume_mode``), else ``merged``;
            ``axis``: ``axial``, ``coronal`` or ``sagittal`` slices (default: the plane closest
            to the acquisition plane); ``instances``: also write an instance map
            ``NAME_instances.EXT`` with its own sidecar; ``size``: the model's input resolution;
            ``presence_window``: mode ``slices``, an odd number of slices whose median presence
            decides each slice's answer (default the model's own, else 1). See
            :class:`~medsam3.predict.settings.VolumeSettings`. ``clip_length``, ``clip_overlap``,
            ``clip_fusion``: mode ``clips`` (Medical SAM3's official 3D scheme): slices per clip
            (4), slices shared by neighbouring clips (0), ``mean``/``max`` fusion of overlapping
            clips (:mod:`medsam3.predict.clips`).
        overlay: optional PNG path for an overlay picture.
        progress: volumes: a progress bar.
        series_uid: for a DICOM folder holding several series, the one to read.
        output_format: ``dicom-seg`` or ``dicom-rt`` to write DICOM (a ``.dcm`` output defaults
            to ``dicom-seg``); otherwise the format follows the output's extension.
        precision: ``fp32`` (default), ``bf16`` or ``int8`` inference (:mod:`medsam3.model.precision`);
            ``fast``: ``--fast`` (the device's fastest precision and a smaller input size, docs/speed.md),
            ``fast:PRECISION``: ``--fast`` with that precision.

    Returns:
        a :class:`Segmentation`.
    """
    from medsam3.io import dicom_label_format, read_image, write_label_map
    from medsam3.io.dicom_derived import source_series
    from medsam3.preprocess import normalize_intensity
    from medsam3.prompt_mapping import map_prompts

    settings = PredictSettings.build(
        settings, threshold=threshold, presence_threshold=presence_threshold, mask_threshold=mask_threshold,
        batch_size=batch_size, mode=mode, axis=axis, instances=instances, skip_empty=skip_empty,
        backward_slices=backward_slices, max_unsupported=max_unsupported, iou_threshold=iou_threshold,
        key_score=key_score, presence_window=presence_window, size=size, clip_length=clip_length,
        clip_overlap=clip_overlap, clip_fusion=clip_fusion)
    check_precision(precision)  # a bad name is refused before the input is read
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
    interactive = box is not None or bool(points)
    if not prompts and not interactive:
        raise ArgumentError("no prompt given: give at least one text prompt (-p), a --box or a --point")
    if output is not None:
        output = Path(output)
    image = input if isinstance(input, Image) else read_image(input, modality=modality, series_uid=series_uid)
    _plan_outputs(image, output, settings.volume.instances, overlay).check()  # nothing is written before this passes
    if output is not None and dicom_label_format(output, output_format):
        # DICOM SEG / RTSTRUCT reference the source series: check that before the model runs
        source_series(image, output, "DICOM output")
    normalized = normalize_intensity(image, modality=modality, window=window)
    loaded = load_model(model, device=device, dtype=dtype, precision=precision)
    # the model's own text for each prompt, and why (None: outside a closed model's concepts: the
    # predictor's concept gate answers it absent, so it goes on as typed)
    sent, prompt_records = map_prompts(prompts, loaded)
    text_prompts = [TextPrompt(p if s is None else s, [list(b) for b in exemplars or []], list(exemplar_labels or []))
                    for p, s in zip(prompts, sent)]
    names = prompts + ([("box" if box is not None else "points")] if interactive else [])
    prediction = predict_normalized(ImagePredictor.from_settings(loaded, settings), image, normalized, text_prompts,
                                    box=box, points=points, point_labels=point_labels, slice_index=slice_index,
                                    settings=settings, progress=progress)
    label_array, results = prediction.labels, prediction.results
    for typed, result in zip(prompts, results):  # answers carry the user's words, not the text sent
        result.prompt = typed
    labels = image.with_array(label_array, modality=None)
    labels.meta.pop("rgb", None)
    absent = [r.prompt for r in results if not r.present]
    sidecar = prediction_sidecar(
        labels=dict(enumerate(names, start=1)), absent=absent, scores={r.prompt: r.presence_score for r in results},
        model=loaded.source, image=image, modality=modality or image.modality, thresholds=settings.thresholds,
        unknown_to_model=[p for p in prompts if not loaded.knows(p)],
        prompts=prompt_records,  # typed, sent, rule (medsam3.prompt_mapping)
        **precision_fields(loaded),  # "precision" (and for ov, OpenVINO's own precision)
        **({"fast": fast_record(loaded, settings, image.ndim)} if getattr(loaded, "fast", None) else {}),
        window=window if window is None or isinstance(window, str) else list(window),
        instances={r.prompt: instance_count(r) for r in results})
    if image.ndim == 3:
        sidecar["volume"] = prediction.volume
    seg = Segmentation(labels=labels, prompts=names, results=results, absent=absent, sidecar=sidecar)
    if output is not None:
        seg.output = write_label_map(label_array, image, output, sidecar=sidecar, format=output_format)
    if image.ndim == 3:
        seg.extra.update(_write_instances(prediction, image, output, sidecar, output_format))
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


def _write_instances(prediction, image, output, sidecar, output_format=None) -> dict:
    """Write the instance map beside the label map (``NAME_instances.EXT``), when one was made."""
    instances = prediction.instances
    if instances is None:
        return {}
    extra = {"instances": image.with_array(instances, modality=None), "instance_labels": prediction.instance_labels}
    if output is not None:
        from medsam3.io import write_label_map

        path = _instances_path(output)
        labels = sidecar["labels"]
        present = set(np.unique(instances).tolist())
        instance_sidecar = {
            "instances": {str(i): {"label": int(k), "name": labels.get(str(k))}
                          for i, k in sorted(prediction.instance_labels.items()) if i in present},
            "label_map": str(output),
            "input": sidecar.get("input"),
            "model": sidecar.get("model"),
        }
        names = {i: f"{labels.get(str(k), k)} {i}" for i, k in prediction.instance_labels.items()}
        extra["instances_output"] = write_label_map(instances, image, path, sidecar=instance_sidecar,
                                                    format=output_format, names=names,
                                                    model_id=sidecar.get("model"))
    return extra


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
