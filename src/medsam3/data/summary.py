"""``medsam3 data inspect``: what a manifest holds, per split, dataset, modality and class."""

from __future__ import annotations

import warnings
from collections import Counter, defaultdict
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from medsam3.data.manifest import Manifest, read_manifest
from medsam3.prompts import UnknownConceptWarning, resolve_prompt


def _stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    a = np.asarray(values, dtype=float)
    return {"min": float(a.min()), "median": float(np.median(a)), "max": float(a.max())}


def inspect_manifest(manifest: Manifest | str, scan: bool = False, window=None,
                     progress: bool = True) -> dict[str, Any]:
    """Counts and sizes of a manifest.

    Args:
        manifest: a :class:`Manifest` or its path.
        scan: also read every label to count the items (and, for volumes, slices) in
            which each class is present and its pixels/voxels (slow: reads all labels).

    Returns:
        a JSON-ready dict: ``items``, ``by_split``, ``by_dataset`` (items, modality,
        dims), ``by_modality``, ``classes`` (per class name: ``prompt`` (canonical),
        ``known`` (in the vocabulary), ``items`` listing it, with ``scan``:
        ``items_present``, ``slices_present``, ``pixels``), ``sizes`` (per dimension
        min/median/max of the shapes, ``[y, x]`` / ``[z, y, x]``) and ``spacing`` (mm).
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    by_split = Counter(it.split for it in manifest)
    by_modality = Counter(it.modality or "unknown" for it in manifest)
    by_dataset: dict[str, dict[str, Any]] = {}
    classes: dict[str, dict[str, Any]] = {}
    shapes = defaultdict(list)
    spacings = defaultdict(list)
    for item in manifest:
        d = by_dataset.setdefault(item.dataset, {"items": 0, "modalities": Counter(), "dims": Counter(),
                                                 "splits": Counter()})
        d["items"] += 1
        d["modalities"][item.modality or "unknown"] += 1
        d["dims"][f"{item.dim}D"] += 1
        d["splits"][item.split] += 1
        for name in item.class_names:
            entry = classes.setdefault(name, {"items": 0, "datasets": set()})
            entry["items"] += 1
            entry["datasets"].add(item.dataset)
        shapes[item.dim].append(item.shape)
        spacings[item.dim].append(item.spacing)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownConceptWarning)
        for name, entry in classes.items():
            resolved = resolve_prompt(name, warn=False, check_length=False)
            entry["prompt"], entry["known"] = resolved.prompt, resolved.known
            entry["datasets"] = sorted(entry["datasets"])
    if scan:
        _scan(manifest, classes, window, progress)
    sizes = {f"{dim}D": {axis: _stats([s[k] for s in shp]) for k, axis in enumerate("zyx"[3 - dim:])}
             for dim, shp in sorted(shapes.items())}
    spacing = {f"{dim}D": {axis: _stats([s[k] for s in sp]) for k, axis in enumerate("xyz"[:dim])}
               for dim, sp in sorted(spacings.items())}
    return {
        "manifest": str(manifest.path) if manifest.path else None,
        "root": str(manifest.root),
        "items": len(manifest),
        "by_split": dict(by_split),
        "by_modality": dict(by_modality),
        "by_dataset": {k: {"items": v["items"], "modalities": dict(v["modalities"]), "dims": dict(v["dims"]),
                           "splits": dict(v["splits"])} for k, v in sorted(by_dataset.items())},
        "classes": dict(sorted(classes.items())),
        "sizes": sizes,
        "spacing": spacing,
    }


def _scan(manifest: Manifest, classes: dict, window, progress: bool) -> None:
    from medsam3.data.loading import load_labels

    for entry in classes.values():
        entry.update(items_present=0, slices_present=0, pixels=0)
    labelled = [it for it in manifest if it.label is not None]
    for item in tqdm(labelled, desc="scanning labels", unit="item", disable=not progress, leave=False):
        label, _ = load_labels(manifest, item)
        planes = label.reshape((label.shape[0], -1) if item.dim == 3 else (1, -1))
        k = int(planes.max(initial=0)) + 1
        counts = np.stack([np.bincount(p.astype(np.int64), minlength=k) for p in planes])
        for name, values in item.targets():
            per_slice = counts[:, 1:].sum(1) if values is None else counts[:, [v for v in values if v < k]].sum(1)
            entry = classes[name]
            if per_slice.sum():
                entry["items_present"] += 1
                entry["slices_present"] += int((per_slice > 0).sum()) if item.dim == 3 else 0
                entry["pixels"] += int(per_slice.sum())


def format_summary(summary: dict[str, Any], max_classes: int = 60) -> str:
    """The summary as text tables for the terminal."""
    lines = [f"manifest: {summary['manifest']}", f"root:     {summary['root']}",
             f"items:    {summary['items']}  ("
             + ", ".join(f"{k} {v}" for k, v in sorted(summary["by_split"].items())) + ")",
             "modalities: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["by_modality"].items())), "",
             f"{'dataset':32s} {'items':>7s}  modalities / dims / splits"]
    for name, d in summary["by_dataset"].items():
        extra = " ".join(f"{k}:{v}" for k, v in {**d["modalities"], **d["dims"], **d["splits"]}.items())
        lines.append(f"{name[:32]:32s} {d['items']:7d}  {extra}")
    scanned = any("items_present" in c for c in summary["classes"].values())
    lines += ["", f"{'class':36s} {'prompt':32s} {'items':>6s}" + ("  present  slices      pixels" if scanned else "")]
    for k, (name, c) in enumerate(summary["classes"].items()):
        if k == max_classes:
            lines.append(f"... and {len(summary['classes']) - max_classes} more classes (--json lists all)")
            break
        prompt = c["prompt"] + ("" if c["known"] else " (?)")
        row = f"{name[:36]:36s} {prompt[:32]:32s} {c['items']:6d}"
        if scanned:
            row += f"  {c['items_present']:7d} {c['slices_present']:7d} {c['pixels']:11d}"
        lines.append(row)
    if any(not c["known"] for c in summary["classes"].values()):
        lines.append("(?) not in the prompt vocabulary: used as written")
    lines.append("")
    for dim, axes in summary["sizes"].items():
        parts = [f"{a} {s['min']:g}/{s['median']:g}/{s['max']:g}" for a, s in axes.items() if s]
        sp = summary["spacing"][dim]
        sparts = [f"{a} {s['min']:.3g}/{s['median']:.3g}/{s['max']:.3g}" for a, s in sp.items() if s]
        lines.append(f"{dim} sizes (min/median/max px): {', '.join(parts)}; spacing (mm): {', '.join(sparts)}")
    return "\n".join(lines)
