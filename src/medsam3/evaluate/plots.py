"""PNG figures of evaluation results: box plots per group, and for two runs grouped bars
(like the paper's vanilla-versus-fine-tuned figure), paired-difference intervals and box plots.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no
display needed) and written atomically.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from medsam3.evaluate.summary import LOWER_IS_BETTER, describe, group_rows, pair_key
from medsam3.io.atomic import atomic_output

#: How metrics are labelled on axes.
METRIC_LABELS = {
    "dice": "Dice", "iou": "IoU", "nsd": "NSD", "hd95": "HD95 (mm)", "assd": "ASSD (mm)",
    "instance_f1": "instance F1",
}
_COLORS = ("#9aa5b1", "#1f77b4")  # run A grey (the baseline), run B blue
_DPI = 120


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


def _label(metric: str, nsd_tolerance: float | None = None) -> str:
    if metric == "nsd" and nsd_tolerance is not None:
        return f"NSD @ {nsd_tolerance:g} mm"
    return METRIC_LABELS.get(metric, metric)


def _finite(rows: Sequence[dict[str, Any]], metric: str) -> np.ndarray:
    values = np.asarray([float(r.get(metric)) if r.get(metric) is not None else math.nan for r in rows], float)
    return values[np.isfinite(values)]


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def plot_boxplots(rows: Sequence[dict[str, Any]], by: str, path: Path,
                  metrics: Sequence[str] = ("dice", "nsd", "hd95", "assd"), title: str = "",
                  nsd_tolerance: float | None = None) -> Path:
    """Horizontal box plots of each metric per group (``by`` = a row column such as ``class``).

    Every finite value is also drawn as a dot; NaN and infinite values are left out and the
    number drawn is written next to the group name.
    """
    groups = group_rows(rows, (by,))
    names = list(groups)
    height = max(2.6, 0.42 * len(names) + 1.4)
    fig = _figure(3.3 * len(metrics) + 1.2, height)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    rng = np.random.default_rng(0)
    positions = np.arange(len(names))[::-1]  # first group at the top
    for ax, metric in zip(axes, metrics):
        data = [_finite(groups[n], metric) for n in names]
        drawn = [d if d.size else np.array([np.nan]) for d in data]
        ax.boxplot(drawn, positions=positions, orientation="horizontal", widths=0.6, showfliers=False,
                   medianprops={"color": "#d62728"}, boxprops={"color": "#333333"})
        for pos, values in zip(positions, data):
            ax.scatter(values, pos + rng.uniform(-0.15, 0.15, values.size), s=9, alpha=0.55, color=_COLORS[1],
                       linewidths=0, zorder=3)
        ax.set_xlabel(_label(metric, nsd_tolerance))
        if metric in ("dice", "iou", "nsd", "instance_f1"):
            ax.set_xlim(-0.03, 1.03)
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions)
    counts = [int(_finite(groups[n], metrics[0]).size) for n in names]
    axes[0].set_yticklabels([f"{_short(n)}  (n={c})" for n, c in zip(names, counts)])
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_compare_bars(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], names: tuple[str, str],
                      by: str, metric: str, path: Path, nsd_tolerance: float | None = None) -> Path:
    """Grouped bars of the mean ``metric`` per group for two runs, with 95% bootstrap CIs.

    The last pair of bars is the mean over all rows (the paper's "average"). Only tasks
    scored by both runs are drawn, so the bars compare like with like.
    """
    keys_b = {pair_key(r) for r in rows_b}
    keys_a = {pair_key(r) for r in rows_a}
    rows_a = [r for r in rows_a if pair_key(r) in keys_b]
    rows_b = [r for r in rows_b if pair_key(r) in keys_a]
    groups_a, groups_b = group_rows(rows_a, (by,)), group_rows(rows_b, (by,))
    labels = sorted(set(groups_a) | set(groups_b), key=lambda k: (k.lower(), k)) + ["all"]
    stats = []
    for rows_by_group, everything in ((groups_a, rows_a), (groups_b, rows_b)):
        run = []
        for label in labels:
            selected = everything if label == "all" else rows_by_group.get(label, [])
            run.append(describe(_finite(selected, metric)))
        stats.append(run)
    x = np.arange(len(labels))
    width = 0.38
    fig = _figure(max(5.0, 0.85 * len(labels) + 2.0), 4.2)
    ax = fig.subplots()
    scale = 100.0 if metric in ("dice", "iou", "nsd", "instance_f1") else 1.0
    for i, (run, name) in enumerate(zip(stats, names)):
        means = np.array([s["mean"] for s in run]) * scale
        low = np.array([s["ci_low"] for s in run]) * scale
        high = np.array([s["ci_high"] for s in run]) * scale
        err = np.vstack([np.nan_to_num(means - low), np.nan_to_num(high - means)])
        offset = (i - 0.5) * width
        bars = ax.bar(x + offset, np.nan_to_num(means), width, yerr=err, capsize=2.5, color=_COLORS[i],
                      label=name, error_kw={"elinewidth": 0.8, "ecolor": "#444444"})
        # The value sits above the error bar's top, where nothing else is drawn.
        tops = np.where(np.isfinite(high), np.maximum(high, means), means)
        for bar, value, top in zip(bars, means, tops):
            if math.isfinite(value):
                ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, top), xytext=(0, 2),
                            textcoords="offset points", ha="center", va="bottom", fontsize=6.5)
    ax.set_xticks(x)
    ax.set_xticklabels([_short(lab, 22) for lab in labels], rotation=35, ha="right")
    unit = " (%)" if scale == 100.0 else ""
    ax.set_ylabel(f"mean {_label(metric, nsd_tolerance)}{unit}")
    if scale == 100.0:
        ax.set_ylim(0, 112)
        ax.set_yticks(np.arange(0, 101, 20))
    ax.axvline(len(labels) - 1.5, color="#bbbbbb", linewidth=0.8)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"{_label(metric, nsd_tolerance)} per {by}: {names[0]} vs {names[1]} (95% bootstrap CI)")
    return _save(fig, path)


def plot_compare_differences(comparison: dict[str, Any], names: tuple[str, str], path: Path,
                             metrics: Sequence[str] = ("dice", "nsd", "hd95", "assd"),
                             nsd_tolerance: float | None = None) -> Path:
    """Mean paired difference (second run minus first) per group with its 95% bootstrap CI.

    ``comparison`` is :func:`medsam3.evaluate.summary.compare_rows`' result. Points right of
    zero mean the second run scored higher; for distances (HD95, ASSD) that is worse.
    """
    labels = list(comparison["by"]) + ["all"]
    height = max(2.6, 0.42 * len(labels) + 1.6)
    fig = _figure(3.2 * len(metrics) + 1.2, height)
    axes = fig.subplots(1, len(metrics), sharey=True, squeeze=False)[0]
    positions = np.arange(len(labels))[::-1]
    for ax, metric in zip(axes, metrics):
        for pos, label in zip(positions, labels):
            s = (comparison["overall"] if label == "all" else comparison["by"][label])[metric]
            if s["n"] == 0 or not math.isfinite(s["mean_diff"]):
                continue
            better = (s["mean_diff"] < 0) if metric in LOWER_IS_BETTER else (s["mean_diff"] > 0)
            color = _COLORS[1] if better else "#d62728"
            ax.errorbar(s["mean_diff"], pos, xerr=[[s["mean_diff"] - s["ci_low"]], [s["ci_high"] - s["mean_diff"]]],
                        fmt="o", color=color, capsize=3, markersize=5 if label != "all" else 7)
        ax.axvline(0, color="#888888", linewidth=0.8)
        direction = "lower is better" if metric in LOWER_IS_BETTER else "higher is better"
        ax.set_xlabel(f"Δ {_label(metric, nsd_tolerance)}\n({names[1]} − {names[0]}; {direction})")
        ax.grid(axis="x", alpha=0.3)
    axes[0].set_yticks(positions)
    axes[0].set_yticklabels([_short(lab) for lab in labels])
    fig.suptitle(f"Paired differences, {names[1]} − {names[0]} (mean, 95% bootstrap CI)")
    return _save(fig, path)


def plot_compare_boxplots(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]],
                          names: tuple[str, str], by: str, path: Path,
                          metrics: Sequence[str] = ("dice", "nsd"), nsd_tolerance: float | None = None) -> Path:
    """Box plots of two runs side by side for each group."""
    groups_a, groups_b = group_rows(rows_a, (by,)), group_rows(rows_b, (by,))
    labels = sorted(set(groups_a) | set(groups_b), key=lambda k: (k.lower(), k))
    fig = _figure(max(5.0, 0.9 * len(labels) + 2.0), 3.4 * len(metrics))
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    x = np.arange(len(labels))
    for ax, metric in zip(axes, metrics):
        for i, (groups, name) in enumerate(((groups_a, names[0]), (groups_b, names[1]))):
            data = [_finite(groups.get(lab, []), metric) for lab in labels]
            drawn = [d if d.size else np.array([np.nan]) for d in data]
            box = ax.boxplot(drawn, positions=x + (i - 0.5) * 0.38, widths=0.32, showfliers=True,
                             patch_artist=True, medianprops={"color": "black"},
                             flierprops={"markersize": 3})
            for patch in box["boxes"]:
                patch.set_facecolor(_COLORS[i])
            box["boxes"][0].set_label(name)
        ax.set_ylabel(_label(metric, nsd_tolerance))
        if metric in ("dice", "iou", "nsd", "instance_f1"):
            ax.set_ylim(-0.03, 1.03)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    axes[-1].set_xticks(x)
    axes[-1].set_xticklabels([_short(lab, 22) for lab in labels], rotation=35, ha="right")
    fig.suptitle(f"Per-{by} distribution: {names[0]} vs {names[1]}")
    return _save(fig, path)
