"""Compare two evaluation runs (vanilla vs fine-tuned, text vs text+box): paired differences
with bootstrap CIs and Wilcoxon p-values, a report and figures.

Rows are paired by (dataset, case, class); tasks scored by only one run are counted and
listed, never mixed into the differences. Differences are always *second minus first*.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from medsam3.errors import ArgumentError
from medsam3.evaluate.report import write_text_file, fmt, load_report, write_json
from medsam3.evaluate.summary import LOWER_IS_BETTER, METRICS, compare_rows, known_values

COMPARE_FORMAT = "medsam3-comparison/1"


@dataclass
class Comparison:
    """What :func:`compare_reports` produced.

    Attributes:
        out: output folder; ``compare_md``, ``compare_json``: the files written there.
        plots: PNG files written.
        names: the two runs' names (first, second).
        result: paired statistics (:func:`medsam3.evaluate.summary.compare_rows`).
        warnings: settings that differ between the runs.
    """

    out: Path
    compare_md: Path
    compare_json: Path
    plots: list[Path]
    names: tuple[str, str]
    result: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _names(names, report_a: dict[str, Any], report_b: dict[str, Any]) -> tuple[str, str]:
    if names is None:
        a, b = str(report_a.get("name") or "A"), str(report_b.get("name") or "B")
        return (a, b) if a != b else (f"{a} (A)", f"{b} (B)")
    if isinstance(names, str):
        names = [n.strip() for n in names.split(",")]
    names = list(names)
    if len(names) != 2 or not all(names):
        raise ArgumentError(f"--names {names!r} must give two names, e.g. vanilla,finetuned")
    return str(names[0]), str(names[1])


def _settings_warnings(report_a: dict[str, Any], report_b: dict[str, Any]) -> list[str]:
    out = []
    sa, sb = report_a.get("settings", {}), report_b.get("settings", {})
    for key in ("nsd_tolerance", "both_empty", "one_empty_distance", "instances"):
        if sa.get(key) != sb.get(key):
            out.append(f"the runs differ in {key}: {sa.get(key)!r} vs {sb.get(key)!r}; "
                       f"differences of the metrics it affects are not meaningful")
    return out


def compare_reports(first: str | os.PathLike, second: str | os.PathLike, out: str | os.PathLike,
                    names: str | Sequence[str] | None = None, group_by: str | None = None,
                    n_bootstrap: int = 2000, seed: int = 0, plots: bool = True) -> Comparison:
    """Paired comparison of two ``report.json`` files (``medsam3 evaluate --compare A B``).

    Writes ``out/compare.md``, ``out/compare.json`` and the figures ``compare_bars_dice.png``,
    ``compare_bars_nsd.png`` (grouped bars per class/dataset with 95% CIs, like the paper's
    figure), ``compare_differences.png`` and ``compare_boxplots.png``.

    Args:
        first, second: ``report.json`` files (or the folders holding them); differences are
            ``second - first``.
        out: output folder (created).
        names: two display names, ``"vanilla,finetuned"`` (default: the reports' names).
        group_by: ``class``, ``dataset``, ``modality`` or ``dimension`` (default: ``dataset``
            when there are several datasets, else ``class``).
        n_bootstrap, seed: bootstrap resamples and seed.
        plots: write the PNG figures.

    Raises:
        InputError: a report is missing or not a medsam3 evaluation report.
        ArgumentError: bad names or ``group_by``, or the runs share no scored task.
    """
    from medsam3.evaluate.plots import (
        plot_compare_bars, plot_compare_boxplots, plot_compare_differences,
    )

    report_a, report_b = load_report(first), load_report(second)
    run_names = _names(names, report_a, report_b)
    rows_a, rows_b = report_a["cases"], report_b["cases"]
    allowed = ("class", "dataset", "modality", "dimension")
    if group_by is None:
        group_by = "dataset" if len(known_values(rows_a + rows_b, "dataset")) > 1 else "class"
    if group_by not in allowed:
        raise ArgumentError(f"--group-by {group_by!r} is not one of {', '.join(allowed)}")
    metrics = [m for m in METRICS if any(not math.isnan(r.get(m, math.nan)) for r in rows_a + rows_b)]
    result = compare_rows(rows_a, rows_b, by=group_by, metrics=metrics, n_bootstrap=n_bootstrap, seed=seed)
    if result["n_paired"] == 0:
        raise ArgumentError(f"{report_a['path']} and {report_b['path']} share no (dataset, case, class); "
                            "compare runs on the same ground truth")
    warnings = _settings_warnings(report_a, report_b)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tol = report_a.get("settings", {}).get("nsd_tolerance")
    plot_paths: list[Path] = []
    if plots:
        for metric in ("dice", "nsd"):
            if metric in metrics:
                plot_paths.append(plot_compare_bars(rows_a, rows_b, run_names, group_by, metric,
                                                    out / f"compare_bars_{metric}.png", nsd_tolerance=tol))
        diff_metrics = [m for m in ("dice", "nsd", "hd95", "assd") if m in metrics]
        plot_paths.append(plot_compare_differences(result, run_names, out / "compare_differences.png",
                                                   diff_metrics, nsd_tolerance=tol))
        plot_paths.append(plot_compare_boxplots(rows_a, rows_b, run_names, group_by, out / "compare_boxplots.png",
                                                [m for m in ("dice", "nsd") if m in metrics], nsd_tolerance=tol))
    content = {
        "format": COMPARE_FORMAT,
        "first": {"name": run_names[0], "report": report_a["path"]},
        "second": {"name": run_names[1], "report": report_b["path"]},
        "difference": "second - first",
        "bootstrap": {"n": n_bootstrap, "seed": seed, "confidence": 0.95, "statistic": "mean of paired differences"},
        "test": "two-sided Wilcoxon signed-rank on the paired differences",
        "warnings": warnings,
        "plots": [p.name for p in plot_paths],
        **result,
    }
    json_path = write_json(out / "compare.json", content)
    md_path = write_text_file(out / "compare.md", _markdown(content, run_names, metrics, tol))
    return Comparison(out=out, compare_md=md_path, compare_json=json_path, plots=plot_paths, names=run_names,
                      result=result, warnings=warnings)


def _diff_cell(s: dict[str, float], metric: str) -> str:
    if s["n"] == 0:
        return "–"
    p = s["p_value"]
    p_text = "" if math.isnan(p) else (f", p={p:.2g}" if p >= 1e-4 else ", p<1e-4")
    sign = "+" if s["mean_diff"] > 0 else ""
    return f"{sign}{fmt(s['mean_diff'], metric)} [{fmt(s['ci_low'], metric)}, {fmt(s['ci_high'], metric)}]{p_text}"


def _markdown(content: dict[str, Any], names: tuple[str, str], metrics: Sequence[str], tol) -> str:
    a, b = names
    by = content["group_by"]
    lines = [
        f"# Comparison: {b} − {a}",
        "",
        f"- first: **{a}** (`{content['first']['report']}`)",
        f"- second: **{b}** (`{content['second']['report']}`)",
        f"- {content['n_paired']} paired rows (dataset, case, class); {len(content['only_a'])} only in {a}, "
        f"{len(content['only_b'])} only in {b} (not compared)",
        f"- differences are {b} − {a}: mean [95% bootstrap CI of the mean, {content['bootstrap']['n']} resamples, "
        f"seed {content['bootstrap']['seed']}], two-sided Wilcoxon signed-rank p",
        "- higher is better for Dice, IoU, NSD, F1; lower is better for HD95 and ASSD (mm)",
    ]
    for w in content["warnings"]:
        lines.append(f"- **warning:** {w}")
    labels = {"dice": "Dice", "iou": "IoU", "nsd": f"NSD@{tol:g}mm" if tol is not None else "NSD",
              "hd95": "HD95 mm", "assd": "ASSD mm", "instance_f1": "inst. F1"}
    for metric in metrics:
        better = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        lines += ["", f"## {labels[metric]} ({better})", "",
                  f"| {by} | pairs | {a} mean | {b} mean | Δ mean [95% CI], p | Δ median |",
                  "|---|---|---|---|---|---|"]
        for group, stats in list(content["by"].items()) + [("**all**", content["overall"])]:
            s = stats[metric]
            lines.append(f"| {group} | {s['n']} | {fmt(s['mean_a'], metric)} | {fmt(s['mean_b'], metric)} | "
                         f"{_diff_cell(s, metric)} | {fmt(s['median_diff'], metric)} |")
    if content["plots"]:
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in content["plots"]]
    lines.append("")
    return "\n".join(lines)
