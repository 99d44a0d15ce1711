"""``medsam3 evaluate --model M --manifest F --protocol paper``: Medical SAM3's evaluation
protocol in one command.

The paper compares, on the same images, a model prompted with **text only**, **text + a
ground-truth exemplar box** and a **ground-truth box** alone (its claim: vanilla SAM3 looks
competitive only with GT boxes). Here the three prompt modes of
:mod:`medsam3.evaluate.gt_prompts` run in **one pass** over the manifest's items:

* every 2D image, and every slice of a volume, is encoded by the ViT **once**
  (:meth:`~medsam3.predict.ImagePredictor.set_image`); the three modes' prompts are answered on
  the cached features. Volumes are therefore run slice by slice in all three modes (the text
  mode as ``--volume-mode slices``: detection on every slice, no tracker), so the three answers
  on a volume differ only by the prompt -- the like-for-like comparison; slices with no ground
  truth are still encoded for the text modes, never prompted with a box;
* the text mode never looks at the ground truth (it is read only to make the other modes'
  boxes, on the same slice, after nothing else), the GT modes use it as documented in
  :mod:`medsam3.evaluate.gt_prompts`.

Each mode's predictions are written into ``OUT/<mode>/predictions/`` exactly as
``medsam3 evaluate --prompt-mode MODE --out OUT/<mode>`` writes them, then each mode is scored by
that same code (:func:`~medsam3.evaluate.model.evaluate_model`, which finds its predictions made
and only scores), so ``OUT/<mode>/report.md`` is an ordinary evaluation report. The paired
comparison (:func:`~medsam3.evaluate.compare.compare_reports`: rows paired by dataset, case and
class; differences ``second - first`` with 95 % bootstrap CIs of the mean paired difference and
Wilcoxon p-values) is made for text+box vs text, box vs text and box vs text+box, grouped by
dataset and by modality, in ``OUT/compare/<pair>/<grouping>/`` with its plots; ``OUT/paper.md``
and ``OUT/paper.json`` gather them (mean Dice per mode and group, paired differences with CIs).

Resumable like a single-mode run: an item whose three predictions exist with the same settings
is not predicted again.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsam3.errors import ArgumentError

#: The protocol's prompt modes, in report order.
PAPER_MODES = ("text", "text+box", "box")
#: The paired comparisons (first, second): differences are second - first.
PAPER_PAIRS = (("text", "text+box"), ("text", "box"), ("text+box", "box"))
#: Folder of each mode's ordinary evaluation output under OUT.
MODE_DIRS = {"text": "text", "text+box": "text-box", "box": "box"}
PAPER_FORMAT = "medsam3-paper-protocol/1"


@dataclass
class PaperEvaluation:
    """What :func:`evaluate_paper` produced.

    Attributes:
        out: the output folder; ``paper_md`` / ``paper_json`` the combined report there.
        runs: prompt mode -> its :class:`~medsam3.evaluate.manifest.ManifestEvaluation`.
        comparisons: ``"A vs B"`` -> grouping -> :class:`~medsam3.evaluate.compare.Comparison`.
        encoded: ViT passes made now (images + slices; each once for the three modes).
        predicted_now: items predicted in this call.
    """

    out: Path
    paper_md: Path
    paper_json: Path
    runs: dict[str, Any]
    comparisons: dict[str, dict[str, Any]]
    encoded: int = 0
    predicted_now: list[str] = field(default_factory=list)
    plots: list[Path] = field(default_factory=list)


class _EncodeOnce:
    """Wraps an :class:`~medsam3.predict.ImagePredictor` so that encoding the same plane again
    (the next prompt mode on it) reuses the cached features: the plane's bytes are compared
    with the last encoded plane's."""

    def __init__(self, predictor):
        self.predictor = predictor
        self.last: bytes | None = None
        self.encoded = 0

    def __getattr__(self, name):
        return getattr(self.predictor, name)

    def set_image(self, image: np.ndarray) -> None:
        image = np.ascontiguousarray(image)
        key = image.dtype.str.encode() + str(image.shape).encode() + image.tobytes()
        if key != self.last:
            self.predictor.set_image(image)
            self.last = key
            self.encoded += 1


def evaluate_paper(model, manifest, out: str | os.PathLike, split: str | None = None,
                   datasets: Sequence[str] | str | None = None, *, device: str = "auto", dtype=None,
                   threshold: float = 0.5, presence_threshold: float = 0.5, mask_threshold: float = 0.5,
                   axis: str | None = None, max_objects: int | None = None, window=None, batch_size: int = 8,
                   nsd_tolerance: float = 2.0,
                   both_empty: str = "nan", one_empty_distance: str = "diagonal", instances: bool = True,
                   name: str | None = None, n_bootstrap: int = 2000, seed: int = 0, overwrite: bool = False,
                   progress: bool = True, plots: bool = True) -> PaperEvaluation:
    """Run the paper's protocol (module docstring) on a manifest; arguments as
    :func:`~medsam3.evaluate.model.evaluate_model` (the prompt and volume modes are the protocol's;
    ``max_objects`` limits the box mode's prompts per class and image/slice to the largest components)."""
    from medsam3.evaluate.manifest import (
        CASES_CSV, PREDICTION_EXTENSION, PREDICTIONS_DIR, item_classes, load_ground_truth, load_manifest, load_reference,
        prediction_stems, select_labelled_items,
    )
    from medsam3.evaluate.model import (
        ModelRunSettings, check_run_arguments, weights_dtype_name, prediction_matches, ModelRunner, evaluate_model,
        item_errors,
    )
    from medsam3.runner import run_cases

    from medsam3.predict.settings import PredictSettings

    settings = PredictSettings.build(threshold=threshold, presence_threshold=presence_threshold,
                                     mask_threshold=mask_threshold, mode="slices", axis=axis, batch_size=batch_size)
    for mode in PAPER_MODES:
        check_run_arguments(model, mode, settings, max_objects)
    if window is not None:
        from medsam3.preprocess import parse_window

        parse_window(window)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"--out {out} exists and is not a directory")
    manifest = load_manifest(manifest)
    items, split_used, _notes, labelled, _unlabelled = select_labelled_items(manifest, split, datasets, "evaluated")
    classes = {it.id: item_classes(it) for it in labelled}
    if isinstance(model, (str, os.PathLike)):
        model_name, dtype_name = str(model), weights_dtype_name(dtype)
    else:
        model_name, dtype_name = str(model.source), weights_dtype_name(model.dtype)
    runs = {mode: ModelRunSettings(prompt_mode=mode, model=model_name, dtype=dtype_name, split=split_used,
                                   settings=settings, max_objects=max_objects,
                                   window=list(window) if isinstance(window, tuple) else window)
            for mode in PAPER_MODES}
    stems = prediction_stems([it.id for it in labelled])
    paths = {mode: {it.id: out / MODE_DIRS[mode] / PREDICTIONS_DIR / f"{stems[it.id]}{PREDICTION_EXTENSION}"
                    for it in labelled} for mode in PAPER_MODES}
    todo = [it for it in labelled
            if overwrite or not all(prediction_matches(paths[m][it.id], runs[m].to_json(), classes[it.id])
                                    for m in PAPER_MODES)]

    if overwrite:  # rows scored from the predictions about to be replaced must go
        for mode in PAPER_MODES:
            (out / MODE_DIRS[mode] / CASES_CSV).unlink(missing_ok=True)
    runners = {mode: ModelRunner(model, device, dtype, runs[mode]) for mode in PAPER_MODES}
    shared = None
    predicted_now: list[str] = []

    def read(item):
        """On the reader thread, ahead of the model: image, ground truth, normalised image."""
        from medsam3.data.loading import normalised_array

        with item_errors(item):
            reference = load_reference(manifest, item)
            gt_label = load_ground_truth(manifest, item, reference)
            return reference, gt_label, normalised_array(reference, item.modality, runs["text"].window)

    def work(item, loaded) -> None:
        nonlocal shared
        if shared is None:  # the model is loaded only when an item needs predicting
            first = runners["text"]
            shared = _EncodeOnce(first.predictor)
            for runner in runners.values():
                runner._model, runner._predictor = first.model, shared
        for mode in PAPER_MODES:
            paths[mode][item.id].parent.mkdir(parents=True, exist_ok=True)
        with item_errors(item):
            _predict_item(runners, shared, item, classes[item.id], *loaded,
                          {m: paths[m][item.id] for m in PAPER_MODES})
        predicted_now.append(item.id)

    # the loop medsam3 segment uses on folders; a bad item ends the run, naming it
    run_cases(todo, read, work, progress=progress, label="evaluate paper protocol", fail_fast=True,
              name=lambda item: item.id)

    results, scoring = {}, dict(nsd_tolerance=nsd_tolerance, both_empty=both_empty,
                                one_empty_distance=one_empty_distance, instances=instances,
                                n_bootstrap=n_bootstrap, seed=seed, plots=plots, progress=False)
    for mode in PAPER_MODES:  # every prediction exists now: these only score and report
        results[mode] = evaluate_model(model, manifest,
                                       out / MODE_DIRS[mode], prompt_mode=mode, split=split, datasets=datasets,
                                       device=device, dtype=dtype, threshold=threshold,
                                       presence_threshold=presence_threshold, mask_threshold=mask_threshold,
                                       volume_mode="slices", axis=axis, max_objects=max_objects, window=window,
                                       batch_size=batch_size,
                                       name=f"{name or out.resolve().name} {mode}", **scoring)
        if results[mode].predicted_now:
            raise RuntimeError(f"{mode}: predictions were made again while scoring: {results[mode].predicted_now}")
    return _paper_report(out, results, n_bootstrap, seed, plots, model_name, split_used,
                         shared.encoded if shared is not None else 0, predicted_now)


def _predict_item(runners, shared: _EncodeOnce, item, classes, reference, gt_label, normalised,
                  paths: dict[str, Path]) -> None:
    """The three modes' predictions of one item, each image / slice encoded once (``normalised``:
    the image normalised by :func:`medsam3.data.loading.normalised_array`)."""
    from medsam3.evaluate.model import ClassAnswer, answer_plane, combine_layer
    from medsam3.evaluate.manifest import class_mask
    from medsam3.preprocess import context_planes

    run = runners["text"].run
    n_layers = max(c.layer for c in classes) + 1
    dtype = np.uint8 if len(classes) < 256 else np.uint16
    layers = {m: [np.zeros(reference.shape, dtype) for _ in range(n_layers)] for m in PAPER_MODES}
    answers = {m: {c.index: ClassAnswer() for c in classes} for m in PAPER_MODES}
    extra: dict[str, dict[str, Any]] = {m: {} for m in PAPER_MODES}
    if reference.ndim == 2:
        spacing = (reference.spacing[1], reference.spacing[0])
        for mode in PAPER_MODES:
            results = answer_plane(shared, normalised, classes, gt_label, item.ignore_value, mode, run.max_objects,
                                    spacing, answers[mode], None)
            for j in range(n_layers):
                layers[mode][j][...] = combine_layer(results, [c for c in classes if c.layer == j])
    else:
        from medsam3.orientation import choose_orientation

        orientation = choose_orientation(reference.direction, run.axis)
        images, truths = orientation.stack(normalised), orientation.stack(gt_label)
        outputs = {m: [orientation.stack(layer) for layer in layers[m]] for m in PAPER_MODES}
        axis_spacing = [reference.spacing[2 - a] for a in range(3)]
        spacing = (axis_spacing[orientation.axes[1]], axis_spacing[orientation.axes[2]])
        context = shared.context_offset(axis_spacing[orientation.slice_axis])
        for k in range(images.shape[0]):
            truth = np.asarray(truths[k])
            plane = np.ascontiguousarray(context_planes(images, k, context))
            has_truth = any(class_mask(truth, c.values, item.ignore_value).any() for c in classes)
            for mode in PAPER_MODES:
                if mode == "box" and not has_truth:
                    continue  # nothing to prompt with a box on this slice
                results = answer_plane(shared, plane, classes, truth if mode != "text" else None,
                                        item.ignore_value, mode, run.max_objects, spacing, answers[mode], k)
                for j, o in enumerate(outputs[mode]):
                    o[k] = combine_layer(results, [c for c in classes if c.layer == j])
        info = {"mode": "slice-wise (paper protocol: one ViT pass per slice for the three prompt modes)",
                "axis": orientation.axis, "slice_axis": "zyx"[orientation.slice_axis]}
        extra = {m: {"volume": info, "whole_volume": True} for m in PAPER_MODES}
    for mode in PAPER_MODES:
        runners[mode]._write(reference, item, classes, layers[mode], answers[mode], paths[mode], extra[mode])


def _paper_report(out: Path, results: dict[str, Any], n_bootstrap: int, seed: int, plots: bool, model_name: str,
                  split: str, encoded: int, predicted_now: list[str]) -> PaperEvaluation:
    from medsam3.evaluate.compare import compare_reports
    from medsam3.evaluate.report import write_text_file, write_json
    from medsam3.evaluate.summary import known_values

    comparisons: dict[str, dict[str, Any]] = {}
    plot_paths: list[Path] = []
    groupings = [g for g in ("dataset", "modality") if known_values(results["text"].rows, g)]
    content: dict[str, Any] = {"format": PAPER_FORMAT, "model": model_name, "split": split,
                               "modes": {m: {"report": str(results[m].report_json),
                                             "overall": results[m].summary["overall"],
                                             "by": {g: results[m].summary["by"].get(g, {}) for g in groupings}}
                                         for m in PAPER_MODES},
                               "difference": "second - first",
                               "bootstrap": {"n": n_bootstrap, "seed": seed, "confidence": 0.95,
                                             "statistic": "mean of paired differences"},
                               "comparisons": {}}
    for first, second in PAPER_PAIRS:
        key = f"{second} vs {first}"
        comparisons[key] = {}
        content["comparisons"][key] = {}
        for grouping in groupings:
            where = out / "compare" / f"{MODE_DIRS[second]}-vs-{MODE_DIRS[first]}" / grouping
            comp = compare_reports(results[first].report_json, results[second].report_json, where,
                                   names=(first, second), group_by=grouping, n_bootstrap=n_bootstrap, seed=seed,
                                   plots=plots)
            comparisons[key][grouping] = comp
            plot_paths += comp.plots
            content["comparisons"][key][grouping] = {"overall": comp.result["overall"], "by": comp.result["by"],
                                                     "n_paired": comp.result["n_paired"],
                                                     "compare_md": str(comp.compare_md)}
    lines = ["# Paper protocol: text vs text + GT exemplar box vs GT box", "",
             f"model: `{model_name}`; split: {split}; one ViT pass per image/slice for the three prompt modes "
             f"({encoded} passes in this call); volumes slice by slice in every mode.", "",
             "## Mean Dice per prompt mode [95% bootstrap CI]", ""]
    for grouping in ["overall"] + groupings:
        lines += [f"### {grouping}", "", "| group | " + " | ".join(PAPER_MODES) + " |",
                  "|---|" + "---|" * len(PAPER_MODES)]
        keys = ["all"] if grouping == "overall" else sorted(results["text"].summary["by"][grouping])
        for g in keys:
            cells = []
            for m in PAPER_MODES:
                st = (results[m].summary["overall"] if grouping == "overall"
                      else results[m].summary["by"][grouping].get(g, {})).get("dice", {})
                cells.append(_ci_cell(st.get("mean"), st.get("ci_low"), st.get("ci_high")))
            lines.append(f"| {g} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Paired differences in Dice (second - first) [95% bootstrap CI], Wilcoxon p", ""]
    for key, by_group in comparisons.items():
        for grouping, comp in by_group.items():
            lines += [f"### {key}, by {grouping}", "", "| group | n | mean first | mean second | difference | p |",
                      "|---|---|---|---|---|---|"]
            rows = [("all", comp.result["overall"])] + list(comp.result["by"].items())
            for g, stats in rows:
                d = stats.get("dice", {})
                if not d or not d.get("n"):
                    continue
                lines.append(f"| {g} | {d['n']} | {_fmt(d['mean_a'])} | {_fmt(d['mean_b'])} | "
                             f"{_ci_cell(d['mean_diff'], d['ci_low'], d['ci_high'])} | {_fmt(d['p_value'])} |")
            lines += ["", f"details and plots: `{comp.compare_md.relative_to(out)}`", ""]
    paper_json = write_json(out / "paper.json", content)
    paper_md = write_text_file(out / "paper.md", "\n".join(lines) + "\n")
    return PaperEvaluation(out=out, paper_md=paper_md, paper_json=paper_json, runs=results, comparisons=comparisons,
                           encoded=encoded, predicted_now=predicted_now, plots=plot_paths)


def _fmt(value) -> str:
    from medsam3.evaluate.report import fmt

    return fmt(value, "dice")


def _ci_cell(mean, low, high) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{_fmt(mean)} [{_fmt(low)}, {_fmt(high)}]"


# --------------------------------------------------------------------------- suites

#: ``--suite`` names -> the registry role whose datasets they run.
SUITES = {"external": "external"}


@dataclass
class SuiteEvaluation:
    """What :func:`evaluate_suite` produced: ``runs`` dataset -> :class:`PaperEvaluation`;
    ``missing``: suite datasets without a local copy; ``suite_md`` / ``suite_json`` the summary."""

    out: Path
    suite_md: Path
    suite_json: Path
    runs: dict[str, PaperEvaluation]
    missing: list[str]


def evaluate_suite(model, suite: str, local: dict[str, str | os.PathLike], out: str | os.PathLike,
                   **options) -> SuiteEvaluation:
    """The paper's protocol on every dataset of a suite (``external``: the paper's 7 unseen test
    sets, registry role ``external``) that has a local copy.

    Args:
        model: as :func:`evaluate_paper`.
        suite: a :data:`SUITES` name.
        local: registry name -> a manifest (``.jsonl``) or the unpacked download (converted
            with the registry's converter, :func:`medsam3.data.registry.prepare_dataset`, into
            ``OUT/manifests/NAME.jsonl``).
        out: output folder: ``OUT/NAME/`` per dataset (an :func:`evaluate_paper` output),
            ``OUT/suite.md`` and ``OUT/suite.json`` (mean Dice per prompt mode next to the
            paper's text-only Dice, vanilla SAM3 -> Medical SAM3).
        options: :func:`evaluate_paper`'s keyword arguments; ``split`` defaults to ``all``
            (external sets are evaluated whole).

    Raises:
        ArgumentError: unknown suite, a name outside it, a path that does not exist, or no
            local copy at all.
    """
    from medsam3.data.registry import get_dataset, list_datasets, prepare_dataset
    from medsam3.evaluate.report import write_text_file, write_json

    if suite not in SUITES:
        raise ArgumentError(f"unknown suite {suite!r}; accepted: {', '.join(SUITES)}")
    members = [d.name for d in list_datasets(SUITES[suite])]
    chosen: dict[str, Path] = {}
    for name, path in local.items():
        info = get_dataset(name)
        if info.name not in members:
            raise ArgumentError(f"{name!r} is not in the {suite} suite ({', '.join(members)})")
        path = Path(os.path.expanduser(str(path)))
        if not path.exists():
            raise ArgumentError(f"the local copy of {info.name} ({path}) does not exist")
        chosen[info.name] = path
    if not chosen:
        raise ArgumentError(f"--suite {suite} needs local copies: --local NAME=PATH for any of {', '.join(members)}")
    out = Path(out)
    options.setdefault("split", "all")
    runs: dict[str, PaperEvaluation] = {}
    for name in [m for m in members if m in chosen]:
        path = chosen[name]
        if path.suffix != ".jsonl":
            (out / "manifests").mkdir(parents=True, exist_ok=True)
            path = Path(prepare_dataset(name, path, out / "manifests" / f"{name}.jsonl",
                                        progress=options.get("progress", True)).path)
        runs[name] = evaluate_paper(model, path, out / name, name=name, **options)
    missing = [m for m in members if m not in chosen]
    table, lines = {}, [f"# Paper protocol, {suite} suite", "",
                        "Mean Dice per prompt mode [95% bootstrap CI]; paper: text-only Dice %, vanilla SAM3 -> "
                        "Medical SAM3 (arXiv 2601.10880).", "",
                        "| dataset | " + " | ".join(PAPER_MODES) + " | paper (text) |",
                        "|---|" + "---|" * (len(PAPER_MODES) + 1)]
    for name, run in runs.items():
        paper = get_dataset(name).paper_dice
        table[name] = {"modes": {m: run.runs[m].summary["overall"]["dice"] for m in PAPER_MODES},
                       "paper_text_dice_percent": list(paper) if paper else None, "report": str(run.paper_md)}
        cells = [_ci_cell(*(table[name]["modes"][m].get(k) for k in ("mean", "ci_low", "ci_high")))
                 for m in PAPER_MODES]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {f'{paper[0]} -> {paper[1]}' if paper else '–'} |")
    if missing:
        lines += ["", f"not run (no local copy given): {', '.join(missing)}"]
    suite_json = write_json(out / "suite.json", {"format": PAPER_FORMAT, "suite": suite, "datasets": table,
                                                 "missing": missing})
    suite_md = write_text_file(out / "suite.md", "\n".join(lines) + "\n")
    return SuiteEvaluation(out=out, suite_md=suite_md, suite_json=suite_json, runs=runs, missing=missing)
