"""``medsam3 data preview``: a grid of items with their labels painted on, as one PNG.

Each tile is an item: a 2D image whole, a volume's axial slice (array axis 0) with the
most labelled voxels. Colours are per class name across the whole grid (the legend lists
them), so the same class has the same colour in every tile. Tiles keep their physical
aspect ratio (pixel spacing) and are drawn radiologically for 3D (as the overlay module
draws axial slices).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from tqdm.auto import tqdm

from medsam3.data.cache import to_unit_float
from medsam3.data.loading import load_item, target_mask
from medsam3.data.manifest import Manifest, read_manifest
from medsam3.errors import ArgumentError
from medsam3.io import atomic_output
from medsam3.overlay import blend_labels, label_colors


#: Classes listed in the legend at most (an atlas has over a hundred).
MAX_LEGEND = 48


def _legend_text(name: str) -> str:
    """The prompt the model sees for a class (``data inspect`` lists the dataset's own names)."""
    import warnings

    from medsam3.prompts import UnknownConceptWarning, resolve_prompt

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnknownConceptWarning)
        prompt = resolve_prompt(name, warn=False, check_length=False).prompt
    return prompt


def _choose(manifest: Manifest, count: int, seed: int | None) -> list[int]:
    labelled = [k for k, it in enumerate(manifest) if it.label is not None]
    if seed is None or len(labelled) <= count:
        return labelled[:count]
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(labelled, size=count, replace=False).tolist())


def _tile(manifest: Manifest, index: int, class_ids: dict[str, int], window):
    item = manifest[index]
    loaded = load_item(manifest, item, window)
    targets = item.targets()
    if item.dim == 3:
        # the slice showing the most classes, then the most labelled voxels
        counts = loaded.slice_label_counts()
        classes_per_slice = sum((np.isin(np.arange(counts.shape[1]), values if values else np.arange(1, counts.shape[1]))
                                 * counts).sum(axis=1) > 0 for _, values in targets)
        score = np.asarray(classes_per_slice, dtype=np.int64) * (counts.sum() + 1) + counts[:, 1:].sum(axis=1)
        z = int(np.argmax(score)) if counts.shape[1] > 1 else loaded.image.shape[0] // 2
        image, label = to_unit_float(loaded.image[z]), np.asarray(loaded.label[z])
    else:
        z, image, label = None, to_unit_float(loaded.image), np.asarray(loaded.label)
    painted = np.zeros(label.shape, dtype=np.int32)
    shown = []
    # regions (unions of labels) first, so the labels inside them stay visible
    for name, values in sorted(targets, key=lambda t: t[1] is None or len(t[1]) == 1):
        mask = target_mask(label, values)
        if mask.any():
            painted[mask] = class_ids.setdefault(name, len(class_ids) + 1)
            shown.append(name)
    spacing = item.spacing[:2]
    return image, painted, spacing, z, shown


def preview_manifest(manifest: Manifest | str | os.PathLike, output: str | os.PathLike, *,
                     count: int = 16, columns: int = 4, seed: int | None = 0,
                     split: str | Sequence[str] | None = None, tile_inches: float = 3.0,
                     window=None, alpha: float = 0.45, progress: bool = True) -> Path:
    """Write a PNG grid of ``count`` labelled items with their classes painted on.

    Args:
        manifest: a :class:`Manifest` or its path.
        output: the PNG to write (atomically).
        count: number of tiles; ``columns`` per row.
        seed: picks items at random with this seed (``None``: the first ``count``).
        split: only items of this split.

    Returns:
        the PNG path.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    if count < 1 or columns < 1:
        raise ArgumentError(f"count and columns must be positive, got {count} and {columns}")
    if split is not None:
        manifest = manifest.select(split=split)
    chosen = _choose(manifest, count, seed)
    if not chosen:
        raise ArgumentError(f"no labelled items to preview in {manifest.path or 'the manifest'}")
    class_ids: dict[str, int] = {}
    tiles = [(_tile(manifest, k, class_ids, window), manifest[k])
             for k in tqdm(chosen, desc="preview", unit="item", disable=not progress, leave=False)]
    palette = label_colors(len(class_ids))
    colors = {k + 1: c for k, c in enumerate(palette)}

    columns = min(columns, len(tiles))
    rows = -(-len(tiles) // columns)
    title_h, margin = 0.45, 0.15
    fig_w = columns * tile_inches + 2 * margin
    # legend: the prompt of each class, in as many columns as the width allows
    prompts = [_legend_text(name) for name in class_ids]
    names = [f"{p} ({n})" if prompts.count(p) > 1 else p for p, n in zip(prompts, class_ids)]
    if len(names) > MAX_LEGEND:
        names = names[: MAX_LEGEND - 1] + [f"... and {len(names) - MAX_LEGEND + 1} more classes"]
    entry_w = 0.4 + 0.058 * max((len(n) for n in names), default=0)  # 8 pt text
    legend_cols = max(1, min(len(names), int((fig_w - 2 * margin) // entry_w))) if names else 0
    legend_rows = -(-len(names) // legend_cols) if names else 0
    legend_h = 0.165 * legend_rows + (0.2 if names else 0.0)
    fig_h = rows * (tile_inches + title_h) + legend_h + margin
    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    for n, ((image, painted, spacing, z, shown), item) in enumerate(tiles):
        r, c = divmod(n, columns)
        top = margin / 2 + r * (tile_inches + title_h) + title_h  # inches from the top
        ax = fig.add_axes(((margin + c * tile_inches + 0.05) / fig_w, 1 - (top + tile_inches) / fig_h,
                           (tile_inches - 0.1) / fig_w, tile_inches / fig_h))
        rows_px, cols_px = painted.shape
        width, height = cols_px * spacing[0], rows_px * spacing[1]
        ax.imshow(blend_labels(image, painted, colors, alpha), extent=(0, width, height, 0),
                  interpolation="nearest")
        ax.set_aspect("equal")
        ax.set_axis_off()
        where = f" z={z}" if z is not None else ""
        ax.set_title(f"{item.dataset}\n{Path(str(item.case)).name}{where} ({item.modality or '?'})", fontsize=8)
    if names:
        handles = [Patch(facecolor="#%02x%02x%02x" % colors[k], edgecolor="black", linewidth=0.5)
                   for k in list(class_ids.values())[: len(names)]]
        if len(class_ids) > MAX_LEGEND:
            handles[-1] = Patch(facecolor="white", edgecolor="white")
        legend_top = 1 - (margin / 2 + rows * (tile_inches + title_h) + 0.05) / fig_h
        fig.legend(handles, names, loc="upper left", ncol=legend_cols, frameon=False, fontsize=8,
                   bbox_to_anchor=(margin / fig_w, legend_top), handlelength=1.2, columnspacing=0.8,
                   borderaxespad=0.0, labelspacing=0.3)
    output = Path(output)
    if output.suffix.lower() != ".png":
        raise ArgumentError(f"preview {output} must be a .png file")
    output.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(output) as tmp:
        fig.savefig(tmp, format="png", dpi=100, facecolor="white")
    return output
