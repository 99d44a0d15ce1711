"""Overlay pictures for people: an image with its label map drawn on top, as a PNG.

2D images are drawn whole; volumes as a montage of the axial, coronal and sagittal slices
through the centre of mass of the labels. Every panel is drawn in millimetres, so
anisotropic pixels keep their physical aspect ratio, and all panels share one scale.
Matplotlib is used through its Agg canvas only (no pyplot, no display, no global state).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.io.atomic import atomic_output
from medsam3.io.outputs import OutputPlan
from medsam3.orientation import physical_axes, physical_axes_unique
from medsam3.palette import label_colors
from medsam3.preprocess import normalize_intensity

__all__ = ["label_colors", "blend_labels", "SliceView", "orthogonal_slices", "check_overlay_path", "render_overlay"]


def blend_labels(rgb_float: np.ndarray, labels: np.ndarray,
                 colors: Mapping[int, Sequence[int]], alpha: float = 0.45) -> np.ndarray:
    """Paint label colours over an image.

    Args:
        rgb_float: ``[y, x, 3]`` or grey ``[y, x]`` intensities in ``[0, 1]`` (clipped).
        labels: integer label map ``[y, x]``; 0 is background.
        colors: label value -> ``(r, g, b)`` in 0-255. Labels without a colour stay unpainted.
        alpha: opacity of the label colour, 0 (invisible) to 1 (opaque).

    Returns:
        uint8 ``[y, x, 3]``: ``round((1 - alpha) * 255 * image + alpha * colour)`` on
        labelled pixels, ``round(255 * image)`` elsewhere.
    """
    rgb = np.asarray(rgb_float, dtype=np.float32)
    if rgb.ndim == 2:
        rgb = np.repeat(rgb[..., None], 3, axis=-1)
    labels = np.asarray(labels)
    if rgb.ndim != 3 or rgb.shape[-1] != 3 or rgb.shape[:2] != labels.shape:
        raise ArgumentError(
            f"image {rgb.shape} and labels {labels.shape} must share their [y, x] shape "
            "(image [y, x] or [y, x, 3])"
        )
    if not 0.0 <= alpha <= 1.0:
        raise ArgumentError(f"alpha must be between 0 and 1, got {alpha}")
    base = np.clip(np.nan_to_num(rgb), 0.0, 1.0) * np.float32(255.0)
    out = base.copy()
    for value in np.unique(labels):
        if value == 0 or int(value) not in colors:
            continue
        mask = labels == value
        color = np.asarray(colors[int(value)], dtype=np.float32)
        out[mask] = np.float32(1.0 - alpha) * base[mask] + np.float32(alpha) * color
    return np.rint(out).astype(np.uint8)


@dataclass
class SliceView:
    """One panel of an overlay, oriented for display (row 0 at the top).

    Attributes:
        name: ``"axial"``, ``"coronal"``, ``"sagittal"`` or ``"image"`` (2D).
        image: ``[rows, cols]`` or ``[rows, cols, 3]`` intensities in ``[0, 1]``.
        labels: ``[rows, cols]`` label map.
        pixel_mm: ``(width, height)`` of one displayed pixel in mm.
        sides: patient directions at the panel's left and right edges (``("R", "L")``),
            or ``None`` when the orientation is not known.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    pixel_mm: tuple[float, float]
    sides: tuple[str, str] | None = None

    @property
    def extent_mm(self) -> tuple[float, float]:
        """``(width, height)`` of the panel in mm."""
        rows, cols = self.labels.shape
        return cols * self.pixel_mm[0], rows * self.pixel_mm[1]


def _to_lps(arrays: list[np.ndarray], spacing, direction):
    """Reorder/flip ``[z, y, x]`` arrays so x runs to patient Left, y to Posterior, z to
    Superior; returns the arrays, the matching ``(sx, sy, sz)`` and whether the nearest axes are
    decided (not a tie). Oblique grids go to their nearest axes by
    :func:`medsam3.orientation.physical_axes`, the rule volumes are sliced by; a tie (e.g. exactly
    45 degrees) keeps the lowest assignment, which is the stored order for such an axial grid."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)  # columns: index axes x, y, z
    assign = physical_axes(d)  # physical axis (0=L, 1=P, 2=S) -> index axis
    phys = [assign.index(i) for i in range(3)]  # index axis -> physical axis
    flips = tuple(2 - i for i in range(3) if d[phys[i], i] < 0)  # array axis of index i is 2-i
    order = [2 - phys.index(p) for p in (2, 1, 0)]  # array axes holding S, P, L
    out = [np.flip(a, axis=flips).transpose(order) if flips else a.transpose(order) for a in arrays]
    return out, tuple(spacing[phys.index(p)] for p in (0, 1, 2)), physical_axes_unique(d)


def orthogonal_slices(normalized: np.ndarray, labels: np.ndarray, spacing,
                      direction) -> list[SliceView]:
    """The axial, coronal and sagittal slices through the labels' centre of mass.

    Args:
        normalized: ``[z, y, x]`` intensities in ``[0, 1]``.
        labels: ``[z, y, x]`` label map; its voxels > 0 are the foreground. With no
            foreground the slices go through the middle of the volume.
        spacing: ``(sx, sy, sz)`` in mm.
        direction: the image's flattened 3x3 direction cosines (ITK convention), used to
            show the slices the radiological way: axial with anterior up and patient left
            on the right, coronal and sagittal with superior up, sagittal anterior left.

    Returns:
        Three :class:`SliceView`, each with its pixel size in mm.
    """
    (vol, lab), (sx, sy, sz), oriented = _to_lps([np.asarray(normalized), np.asarray(labels)], spacing, direction)
    foreground = lab > 0
    total = np.count_nonzero(foreground)
    if total:  # centre of mass from the three projections, without listing every voxel
        zc, yc, xc = (
            int(np.rint(np.dot(np.arange(n), np.count_nonzero(foreground, axis=others))
                        / total))
            for n, others in zip(lab.shape, ((1, 2), (0, 2), (0, 1)))
        )
    else:
        zc, yc, xc = (n // 2 for n in lab.shape)
    right_left, anterior_posterior = (("R", "L"), ("A", "P")) if oriented else (None, None)
    return [
        SliceView("axial", vol[zc], lab[zc], (sx, sy), right_left),
        SliceView("coronal", vol[::-1, yc, :], lab[::-1, yc, :], (sx, sz), right_left),
        SliceView("sagittal", vol[::-1, :, xc], lab[::-1, :, xc], (sy, sz), anterior_posterior),
    ]


def _hex(color: Sequence[int]) -> str:
    return "#" + "".join(f"{int(c):02x}" for c in color)


def _draw_view(fig: Figure, rect, view: SliceView, colors, alpha: float, title: str | None):
    ax = fig.add_axes(rect)
    width, height = view.extent_mm
    ax.imshow(blend_labels(view.image, view.labels, colors, alpha),
              extent=(0, width, height, 0), interpolation="auto")
    rows, cols = view.labels.shape
    xs = (np.arange(cols) + 0.5) * view.pixel_mm[0]
    ys = (np.arange(rows) + 0.5) * view.pixel_mm[1]
    if rows > 1 and cols > 1:
        for value in np.unique(view.labels):
            if value == 0 or int(value) not in colors:
                continue
            mask = (view.labels == value).astype(np.float32)
            ax.contour(xs, ys, mask, levels=[0.5], colors=[_hex(colors[int(value)])],
                       linewidths=1.2)
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_aspect("equal")
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=10)
    if view.sides:
        for x, side, align in ((0.01, view.sides[0], "left"), (0.99, view.sides[1], "right")):
            ax.text(x, 0.5, side, transform=ax.transAxes, ha=align, va="center",
                    color="yellow", fontsize=10, weight="bold")


def _check_inputs(image: Image, labels, normalized):
    labels = np.asarray(labels.array if isinstance(labels, Image) else labels)
    if labels.shape != image.shape:
        where = f" {image.path}" if image.path else ""
        raise ArgumentError(
            f"label map shape {labels.shape} does not match the image{where} "
            f"shape {image.shape}"
        )
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    elif not np.issubdtype(labels.dtype, np.integer):
        if not np.all(np.isfinite(labels)) or not np.array_equal(labels, np.round(labels)):
            raise ArgumentError(f"label map must hold whole numbers, got dtype {labels.dtype}")
        labels = labels.astype(np.int64)
    if normalized is None:
        normalized = normalize_intensity(image)
    normalized = np.asarray(normalized, dtype=np.float32)
    if normalized.shape not in (image.shape, image.shape + (3,)) or (
            image.ndim == 3 and normalized.shape != image.shape):
        raise ArgumentError(
            f"normalized image shape {normalized.shape} does not match the image shape "
            f"{image.shape} (expected {image.shape}" + (
                f" or {image.shape + (3,)})" if image.ndim == 2 else ")")
        )
    return labels, normalized


def check_overlay_path(path) -> Path:
    """``path`` as a :class:`~pathlib.Path` when an overlay can be written there: a ``.png``
    name that is not a directory (the overlay is always a PNG picture).

    Raises:
        ArgumentError: another ending (``x.nii.gz`` would get PNG bytes), or a directory.
    """
    path = Path(os.path.expanduser(os.fspath(path)))
    if path.is_dir():
        raise ArgumentError(f"cannot write the overlay {path}: it is a directory; give a file name "
                            "ending in .png")
    if path.suffix.lower() != ".png":
        raise ArgumentError(f"cannot write the overlay {path}: an overlay is a PNG picture; give a name "
                            "ending in .png")
    return path


def render_overlay(image: Image, labels: np.ndarray, names: Mapping[int, str], path, *,
                   normalized: np.ndarray | None = None, alpha: float = 0.45,
                   absent: Sequence[str] = ()) -> Path:
    """Write a PNG of ``image`` with ``labels`` painted on it, and a legend.

    Args:
        image: the 2D (grey or RGB) or 3D image the labels belong to.
        labels: integer label map on the image's grid (``image.shape``); 0 is background.
        names: label value -> name shown in the legend. Values present in ``labels`` but
            missing here are listed as ``"label <value>"``.
        path: where to write the PNG (written atomically: on failure nothing is left).
        normalized: intensities in ``[0, 1]`` with the image's shape (``[y, x, 3]`` for
            RGB); computed with :func:`medsam3.preprocess.normalize_intensity` when None.
        alpha: opacity of the label fill; each label also gets an opaque contour.
        absent: prompts found absent, listed in the legend as ``"<name> (absent)"``.

    2D images are drawn whole. Volumes are drawn as three panels, the axial, coronal and
    sagittal slices through the centre of mass of the foreground (the middle when there
    is none), in radiological orientation and on one mm scale, so anisotropic voxels are
    not stretched. The title is the input file's name. Label ``k`` has colour
    ``label_colors(k)[k - 1]``.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = check_overlay_path(path)
    plan = OutputPlan()
    plan.add_input(image)
    plan.add(path, "overlay")
    plan.check()
    labels, normalized = _check_inputs(image, labels, normalized)
    max_label = int(labels.max(initial=0))
    named = [int(k) for k in names]
    palette = label_colors(max(max_label, max(named, default=0), 0))
    colors = {k + 1: c for k, c in enumerate(palette)}

    if image.ndim == 3:
        views = orthogonal_slices(normalized, labels, image.spacing, image.direction)
        titles = [v.name for v in views]
    else:
        views = [SliceView("image", normalized, labels, (image.spacing[0], image.spacing[1]))]
        titles = [None]

    # legend entries: every named label and every label in the map, then absent prompts
    present = {int(v) for v in np.unique(labels) if v > 0}
    handles, texts = [], []
    for value in sorted(present | {k for k in named if k > 0}):
        handles.append(Patch(facecolor=_hex(colors[value]), edgecolor="black", linewidth=0.5))
        texts.append(f"{value}  {names.get(value, f'label {value}')}")
    for name in absent:
        handles.append(Patch(facecolor="none", edgecolor="0.5", hatch="///", linewidth=0.5))
        texts.append(f"–  {name} (absent)")

    # layout in inches: all panels on one mm scale, legend in columns to the right
    margin, gap, top, bottom = 0.25, 0.3, 0.95 if titles[0] else 0.75, 0.2
    max_h_in, max_w_in = 6.0, 13.0 if len(views) > 1 else 8.0
    widths_mm = [v.extent_mm[0] for v in views]
    heights_mm = [v.extent_mm[1] for v in views]
    scale = min(max_h_in / max(heights_mm), max_w_in / sum(widths_mm))  # inch per mm
    panels_w = sum(widths_mm) * scale + gap * (len(views) - 1)
    panels_h = max(heights_mm) * scale
    fig_h = max(panels_h + top + bottom, 3.0)
    rows_per_col = max(int((fig_h - top - 0.4) / 0.24), 1)
    n_cols = max(-(-len(texts) // rows_per_col), 1) if texts else 0
    longest = max((len(t) for t in texts), default=0)
    legend_w = n_cols * min(max(1.2, 0.075 * longest + 0.6), 3.2) if texts else 0.0
    fig_w = margin + panels_w + (gap + legend_w if texts else 0.0) + margin

    fig = Figure(figsize=(fig_w, fig_h), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    x = margin
    for view, title, w_mm, h_mm in zip(views, titles, widths_mm, heights_mm):
        w_in, h_in = w_mm * scale, h_mm * scale
        y = fig_h - top - h_in  # panels hang from the top
        _draw_view(fig, (x / fig_w, y / fig_h, w_in / fig_w, h_in / fig_h), view, colors,
                   alpha, title)
        x += w_in + gap

    title = Path(image.path).name if image.path else "image"
    spacing = " x ".join(f"{s:g}" for s in image.spacing)
    size = " x ".join(str(n) for n in image.size)
    subtitle = f"{image.modality or 'unknown modality'}, {size} px, {spacing} mm"
    fig.text(margin / fig_w, 1 - 0.3 / fig_h, title, fontsize=13, weight="bold", va="center")
    fig.text(margin / fig_w, 1 - 0.55 / fig_h, subtitle, fontsize=9, color="0.3", va="center")
    if texts:
        fig.legend(handles, texts, loc="upper left", ncol=n_cols, frameon=False, fontsize=9,
                   bbox_to_anchor=((margin + panels_w + gap) / fig_w, 1 - (top - 0.05) / fig_h),
                   handlelength=1.4, columnspacing=1.0, borderaxespad=0.0)

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format="png", dpi=100, facecolor="white")
    except OSError as exc:
        raise ArgumentError(f"could not write the overlay {path}: {exc.strerror or exc}") from None
    return path
