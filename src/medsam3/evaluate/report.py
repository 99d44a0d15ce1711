"""``report.md`` and ``report.json`` of a folder evaluation, and reading them back.

``report.json`` is self-contained: settings, the metric implementation and conventions, the
summaries, the failure list and every per-case row, so ``medsam3 evaluate --compare`` needs
nothing else. Numbers are strict JSON: NaN is written as ``null`` and infinity as the
string ``"inf"`` (:func:`load_report` turns them back into floats).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from medsam3 import __version__
from medsam3.errors import InputError
from medsam3.evaluate.cases import CSV_COLUMNS, FAILURE_STATUSES, FLOAT_COLUMNS, EvaluationSettings
from medsam3.evaluate.summary import METRICS, known_values, summarize

REPORT_FORMAT = "medsam3-evaluation/1"

#: One line per metric for reports: which implementation and convention computes it.
METRIC_DEFINITIONS = {
    "dice": "2|P∩G| / (|P|+|G|), voxel counts",
    "iou": "|P∩G| / |P∪G|, voxel counts",
    "nsd": "normalised surface Dice at the tolerance: MONAI compute_surface_dice(use_subvoxels=True), "
           "surface elements weighted by area with the true spacing; identical to DeepMind's "
           "surface-distance compute_surface_dice_at_tolerance (the NSD MedSAM reports)",
    "hd95": "MONAI compute_hausdorff_distance(percentile=95): max of the two directed 95th percentiles "
            "of boundary-voxel distances (not MedPy's pooled percentile), mm",
    "assd": "MONAI compute_average_surface_distance(symmetric=True): mean of both directions' "
            "boundary-voxel distances pooled, mm",
    "instance_f1": "connected components (full connectivity) matched one-to-one by IoU >= 0.5 "
                   "(Hungarian), F1 = 2 matched / (n_gt + n_pred)",
}


# --------------------------------------------------------------------------- JSON numbers


def to_json_value(value: Any) -> Any:
    """NaN -> ``None``, ±inf -> ``"inf"``/``"-inf"``, recursively through dicts and lists."""
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):  # numpy scalars
        return to_json_value(value.item())
    return value


def _from_json_number(value: Any) -> float:
    if value is None:
        return math.nan
    return float(value)


def write_text_file(path: Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    from medsam3.io.atomic import atomic_output

    with atomic_output(path) as tmp:
        Path(tmp).write_text(text)
    return path


def write_json(path: Path, content: dict[str, Any]) -> Path:
    """Write ``content`` as strict, indented JSON, atomically."""
    return write_text_file(path, json.dumps(to_json_value(content), indent=2, allow_nan=False) + "\n")


def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``report.json`` (or a folder holding one); rows get float metrics back.

    Raises:
        InputError: missing, unreadable or not a medsam3 evaluation report.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    if not path.is_file():
        raise InputError(f"report {path} does not exist; pass the report.json that "
                         "'medsam3 evaluate --out DIR' wrote (or DIR)")
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read report {path}: {exc}") from None
    if not isinstance(content, dict) or content.get("format") != REPORT_FORMAT or "cases" not in content:
        raise InputError(f"{path} is not a medsam3 evaluation report (expected format {REPORT_FORMAT!r} "
                         "with per-case rows)")
    for row in content["cases"]:
        for column in FLOAT_COLUMNS:
            if column in row:
                row[column] = _from_json_number(row[column])
    content["path"] = str(path)
    return content


# --------------------------------------------------------------------------- markdown


def fmt(value: float, metric: str) -> str:
    """A metric value for a table: 3 decimals for scores, 2 for mm; ``–`` when undefined."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if math.isinf(value):
        return "inf"
    return f"{value:.2f}" if metric in ("hd95", "assd") else f"{value:.3f}"


def _stat_cell(stats: dict[str, float], metric: str, with_ci: bool = True) -> str:
    if stats["n"] == 0:
        return "–"
    if with_ci:
        return f"{fmt(stats['mean'], metric)} [{fmt(stats['ci_low'], metric)}, {fmt(stats['ci_high'], metric)}]"
    return fmt(stats["mean"], metric)


def summary_table(groups: dict[str, dict[str, Any]], overall: dict[str, Any] | None, first_column: str,
                  metrics: Sequence[str], nsd_tolerance: float) -> list[str]:
    """Markdown table: one line per group (plus "all"), mean [95% CI] and median of Dice."""
    names = {"dice": "Dice mean [95% CI]", "iou": "IoU", "nsd": f"NSD@{nsd_tolerance:g}mm",
             "hd95": "HD95 mm", "assd": "ASSD mm", "instance_f1": "inst. F1"}
    header = [first_column, "rows", "n"] + [names[m] for m in metrics[:1]] + ["Dice median"] + \
             [names[m] for m in metrics[1:]] + ["failures"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    items = list(groups.items()) + ([("**all**", overall)] if overall is not None else [])
    for name, stats in items:
        failures = sum(stats["status"].get(s, 0) for s in FAILURE_STATUSES)
        cells = [str(name), str(stats["n_rows"]), str(stats[metrics[0]]["n"]),
                 _stat_cell(stats[metrics[0]], metrics[0]), fmt(stats[metrics[0]]["median"], metrics[0])]
        cells += [_stat_cell(stats[m], m, with_ci=False) + (f" (med {fmt(stats[m]['median'], m)})"
                                                             if m in ("hd95", "assd") else "") for m in metrics[1:]]
        cells.append(str(failures))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _markdown(report: dict[str, Any], metrics: Sequence[str], plot_names: list[str]) -> str:
    settings = report["settings"]
    tol = settings["nsd_tolerance"]
    summary = report["summary"]
    lines = [
        f"# Evaluation: {report['name']}",
        "",
        f"- predictions: `{report['predictions']}`",
        f"- ground truth: `{report['ground_truth']}`",
        f"- {report['n_cases']} cases, {report['n_rows']} rows (case × class); "
        f"{len(report['missing_predictions'])} missing predictions; "
        f"{len(report['unmatched_predictions'])} predictions without ground truth (not scored)",
        f"- metrics: MONAI {report['monai_version']}, spacing from each ground-truth file; "
        f"NSD at {tol:g} mm (area-weighted surface elements, = DeepMind surface-distance); "
        "HD95 = max of the two directed 95th percentiles of boundary-voxel distances; "
        "ASSD = mean of both directions pooled",
        f"- empty masks: both empty → {report['conventions']['both_empty']}; "
        f"one empty → Dice/IoU/NSD/F1 0, HD95/ASSD {report['conventions']['one_empty']}",
        f"- 95% CI: percentile bootstrap of the mean, {report['bootstrap']['n']} resamples, "
        f"seed {report['bootstrap']['seed']}; `n` = values used (NaN left out)",
        "",
        "## Per class",
        "",
    ]
    lines += summary_table(summary["by"].get("class", {}), summary["overall"], "class", metrics, tol)
    for grouping, groups in summary["by"].items():
        if grouping == "class" or len(groups) < 2:
            continue
        lines += ["", f"## By {grouping}", ""]
        lines += summary_table(groups, None, grouping, metrics, tol)
    failures = report["failures"]
    lines += ["", f"## Failures ({len(failures)})", ""]
    if failures:
        lines += ["Statuses: `false_negative` empty prediction on a positive case, `absent_answer` the "
                  "predictor answered \"absent\" on a positive case, `missing_prediction` no prediction file, "
                  "`false_positive` prediction where the ground truth is empty.", "",
                  "| case | class | status | Dice | GT voxels | predicted voxels |", "|---|---|---|---|---|---|"]
        shown = failures[:500]
        for f in shown:
            lines.append(f"| {f['case']} | {f['class']} | {f['status']} | {fmt(f['dice'], 'dice')} | "
                         f"{f['gt_voxels'] if f['gt_voxels'] is not None else '–'} | "
                         f"{f['pred_voxels'] if f['pred_voxels'] is not None else '–'} |")
        if len(failures) > len(shown):
            lines.append(f"\n…and {len(failures) - len(shown)} more: see report.json or cases.csv.")
    else:
        lines.append("None.")
    not_scored = report["not_in_ground_truth"]
    if report["unmatched_predictions"] or not_scored:
        lines += ["", "## Not scored", ""]
        for path in report["unmatched_predictions"]:
            lines.append(f"- prediction without ground truth: `{path}`")
        for item in not_scored:
            lines.append(f"- {item['case']}: predicted class `{item['class']}` (value {item['pred_label']}) "
                         "is not a class of the ground truth")
    if plot_names:
        lines += ["", "## Plots", ""] + [f"![{name}]({name})" for name in plot_names]
    lines += ["", "Per-case scores: `cases.csv`; everything above as data: `report.json`.", ""]
    return "\n".join(lines)


def _conventions_text(settings: EvaluationSettings) -> dict[str, str]:
    both = ("NaN (kept as a true-negative row, left out of means)" if settings.both_empty == "nan"
            else "perfect (scores 1, distances 0)")
    one = {"diagonal": "= the image's physical diagonal in mm", "inf": "= inf",
           "nan": "= NaN (left out of distance means)"}[settings.one_empty_distance]
    return {"both_empty": both, "one_empty": one}


def write_folder_report(out: Path, rows: list[dict[str, Any]], settings: EvaluationSettings, name: str,
                        predictions: Path, ground_truth: Path, unmatched_predictions: Sequence[Path] = (),
                        n_bootstrap: int = 2000, seed: int = 0, plots: bool = True) -> dict[str, Any]:
    """Summarise ``rows`` and write ``report.json``, ``report.md`` and box plots into ``out``.

    Returns:
        ``{"report_md": Path, "report_json": Path, "plots": [Path], "summary": dict}``.
    """
    import monai

    from medsam3.evaluate.plots import plot_boxplots

    metrics = [m for m in METRICS if settings.instances or m != "instance_f1"]
    summary = summarize(rows, metrics, n_bootstrap, seed)
    plot_paths: list[Path] = []
    if plots and rows:
        plot_metrics = ("dice", "nsd", "hd95", "assd")
        for column in ("class", "dataset", "modality", "dimension"):
            if column != "class" and len(known_values(rows, column)) < 2:
                continue
            path = out / f"boxplots_by_{column}.png"
            plot_paths.append(plot_boxplots(rows, column, path, plot_metrics, title=f"{name}: per {column}",
                                            nsd_tolerance=settings.nsd_tolerance))
    failures = [{k: r.get(k) for k in ("case", "class", "status", "dice", "gt_voxels", "pred_voxels")}
                for r in rows if r.get("status") in FAILURE_STATUSES]
    report = {
        "format": REPORT_FORMAT,
        "name": name,
        "medsam3_version": __version__,
        "monai_version": monai.__version__,
        "predictions": str(predictions),
        "ground_truth": str(ground_truth),
        "settings": settings.to_json(),
        "conventions": _conventions_text(settings),
        "metric_definitions": {m: METRIC_DEFINITIONS[m] for m in metrics},
        "bootstrap": {"n": n_bootstrap, "seed": seed, "confidence": 0.95, "statistic": "mean"},
        "n_cases": len({r["case"] for r in rows}),
        "n_rows": len(rows),
        "missing_predictions": sorted({r["case"] for r in rows if r.get("status") == "missing_prediction"}),
        "unmatched_predictions": [str(p) for p in unmatched_predictions],
        "not_in_ground_truth": [{k: r.get(k) for k in ("case", "class", "pred_label", "pred_voxels")}
                                for r in rows if r.get("status") == "not_in_ground_truth"],
        "failures": failures,
        "summary": summary,
        "plots": [p.name for p in plot_paths],
        "columns": list(CSV_COLUMNS),
        "cases": [{c: r.get(c) for c in CSV_COLUMNS} for r in rows],
    }
    json_path = write_json(out / "report.json", report)
    md_path = write_text_file(out / "report.md", _markdown(report, metrics, [p.name for p in plot_paths]))
    return {"report_md": md_path, "report_json": json_path, "plots": plot_paths, "summary": summary}
