"""Aggregate per-case scores: mean, median and a 95% bootstrap confidence interval per group,
and paired differences between two runs.

The interval is the percentile bootstrap of the mean over rows (case x class), ``n_bootstrap``
resamples drawn with a fixed seed, so the same rows always give the same numbers. NaN values
(undefined scores, e.g. both masks empty under ``both_empty="nan"``) are left out of a
metric's statistics; ``n`` says how many values each statistic used and ``n_rows`` how many
rows the group has, so nothing leaves silently.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter, defaultdict
from typing import Any, Iterable, Sequence

import numpy as np

#: Metrics aggregated, as named in ``cases.csv``.
METRICS = ("dice", "iou", "nsd", "hd95", "assd", "instance_f1")
#: Metrics where smaller is better (distances in mm).
LOWER_IS_BETTER = frozenset({"hd95", "assd"})
#: Row columns that may group the summary besides ``class``.
GROUP_COLUMNS = ("class", "dataset", "modality", "dimension")

_CHUNK = 256  # bootstrap resamples drawn at once (bounds memory for many rows)


def bootstrap_ci(values: Sequence[float], n_bootstrap: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the mean of ``values`` (NaN dropped).

    Returns ``(nan, nan)`` without values and ``(x, x)`` for a single value. The lower and
    upper ends are order statistics of the resampled means (no interpolation, so infinite
    values give infinite ends rather than NaN).
    """
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), float(x[0])
    if n_bootstrap <= 0:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = np.empty(n_bootstrap)
    with np.errstate(invalid="ignore"):
        for start in range(0, n_bootstrap, _CHUNK):
            stop = min(start + _CHUNK, n_bootstrap)
            idx = rng.integers(0, x.size, size=(stop - start, x.size))
            means[start:stop] = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    low = float(np.quantile(means, alpha, method="lower"))
    high = float(np.quantile(means, 1.0 - alpha, method="higher"))
    return low, high


def describe(values: Iterable[float], n_bootstrap: int = 2000, seed: int = 0) -> dict[str, float]:
    """``{n, mean, median, ci_low, ci_high}`` of the non-NaN ``values``."""
    x = np.asarray([float(v) for v in values if v is not None and not math.isnan(float(v))], dtype=np.float64)
    if x.size == 0:
        return {"n": 0, "mean": math.nan, "median": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    with np.errstate(invalid="ignore"):
        mean, median = float(np.mean(x)), float(np.median(x))
    low, high = bootstrap_ci(x, n_bootstrap, seed)
    return {"n": int(x.size), "mean": mean, "median": median, "ci_low": low, "ci_high": high}


def _value(row: dict[str, Any], metric: str) -> float:
    v = row.get(metric)
    return math.nan if v is None or v == "" else float(v)


def summarize_group(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS,
                    n_bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Statistics of one group of rows: ``n_rows``, ``status`` counts and one
    :func:`describe` per metric."""
    out: dict[str, Any] = {"n_rows": len(rows), "n_cases": len({r["case"] for r in rows}),
                           "status": dict(sorted(Counter(r.get("status", "") for r in rows).items()))}
    for metric in metrics:
        out[metric] = describe([_value(r, metric) for r in rows], n_bootstrap, seed)
    return out


def group_rows(rows: Iterable[dict[str, Any]], by: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Rows grouped by the columns ``by``; keys join the values with `` / ``."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        key = " / ".join(str(row.get(c) or "(unknown)") for c in by)
        groups[key].append(row)
    return dict(sorted(groups.items(), key=lambda item: (item[0].lower(), item[0])))


def known_values(rows: Iterable[dict[str, Any]], column: str) -> list[str]:
    """The distinct non-empty values of ``column``."""
    return sorted({str(r.get(column)) for r in rows if r.get(column) not in (None, "")})


def summarize(rows: Sequence[dict[str, Any]], metrics: Sequence[str] = METRICS, n_bootstrap: int = 2000,
              seed: int = 0) -> dict[str, Any]:
    """All summaries of a run.

    Returns:
        ``{"overall": stats, "by": {"class": {name: stats}, "dataset": ..., "modality": ...,
        "dimension": ..., "dataset / class": ...}}`` where a grouping appears only when its
        column is known for some row (``dataset / class`` when there are several datasets).
    """
    result: dict[str, Any] = {"overall": summarize_group(rows, metrics, n_bootstrap, seed), "by": {}}
    groupings: list[tuple[str, ...]] = [(c,) for c in GROUP_COLUMNS if known_values(rows, c)]
    if len(known_values(rows, "dataset")) > 1:
        groupings.append(("dataset", "class"))
    for by in groupings:
        result["by"][" / ".join(by)] = {
            key: summarize_group(group, metrics, n_bootstrap, seed) for key, group in group_rows(rows, by).items()
        }
    return result


# --------------------------------------------------------------------------- paired


def pair_key(row: dict[str, Any]) -> tuple[str, str, str]:
    """What identifies the same scoring task in two runs: dataset, case and class."""
    return (str(row.get("dataset") or ""), str(row["case"]), str(row.get("class") or ""))


def paired_statistics(a: Sequence[float], b: Sequence[float], n_bootstrap: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Paired comparison of two runs' values on the same tasks: ``b - a``.

    Pairs where either value is NaN, or both are infinite, are dropped. Returns ``n``,
    ``mean_a``, ``mean_b``, ``mean_diff`` with its 95% bootstrap CI (``ci_low``, ``ci_high``),
    ``median_diff`` and the two-sided Wilcoxon signed-rank ``p_value`` (NaN when every
    difference is 0 or there are fewer than 2 pairs).
    """
    from scipy import stats

    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        diff = xb - xa
    keep = ~np.isnan(diff)
    xa, xb, diff = xa[keep], xb[keep], diff[keep]
    if diff.size == 0:
        return {"n": 0, "mean_a": math.nan, "mean_b": math.nan, "mean_diff": math.nan, "ci_low": math.nan,
                "ci_high": math.nan, "median_diff": math.nan, "p_value": math.nan}
    low, high = bootstrap_ci(diff, n_bootstrap, seed)
    p_value = math.nan
    if diff.size >= 2 and np.any(diff != 0) and np.all(np.isfinite(diff)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p_value = float(stats.wilcoxon(diff).pvalue)
    return {"n": int(diff.size), "mean_a": float(np.mean(xa)), "mean_b": float(np.mean(xb)),
            "mean_diff": float(np.mean(diff)), "ci_low": low, "ci_high": high,
            "median_diff": float(np.median(diff)), "p_value": p_value}


def compare_rows(rows_a: Sequence[dict[str, Any]], rows_b: Sequence[dict[str, Any]], by: str | None = "class",
                 metrics: Sequence[str] = METRICS, n_bootstrap: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Paired differences ``b - a`` over the tasks (dataset, case, class) both runs scored.

    Returns:
        ``{"n_paired", "only_a": [keys], "only_b": [keys], "overall": {metric: stats},
        "by": {group: {metric: stats}}, "group_by": by}`` with stats from
        :func:`paired_statistics`.
    """
    index_a = {pair_key(r): r for r in rows_a}
    index_b = {pair_key(r): r for r in rows_b}
    common = sorted(set(index_a) & set(index_b))
    pairs = [(index_a[k], index_b[k]) for k in common]

    def stats_for(selected: list[tuple[dict, dict]]) -> dict[str, Any]:
        return {m: paired_statistics([_value(ra, m) for ra, _ in selected], [_value(rb, m) for _, rb in selected],
                                     n_bootstrap, seed) for m in metrics}

    result: dict[str, Any] = {
        "group_by": by,
        "n_paired": len(pairs),
        "only_a": [list(k) for k in sorted(set(index_a) - set(index_b))],
        "only_b": [list(k) for k in sorted(set(index_b) - set(index_a))],
        "overall": stats_for(pairs),
        "by": {},
    }
    if by:
        grouped: dict[str, list[tuple[dict, dict]]] = defaultdict(list)
        for ra, rb in pairs:
            grouped[str(ra.get(by) or "(unknown)")].append((ra, rb))
        result["by"] = {key: stats_for(grouped[key]) for key in sorted(grouped, key=lambda k: (k.lower(), k))}
    return result
