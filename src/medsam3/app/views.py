"""Pictures for the web app: slices of an image with its labels painted on, and prompt marks.

A volume is shown slice by slice in an anatomical plane (radiological orientation, from
:func:`medsam3.orientation.choose_orientation`, the same slicing the volume
predictor uses), each pixel stretched to its physical size. Clicks on the picture are mapped
back to the input array's plane, the frame :func:`medsam3.segmentation.segment` takes box and
point prompts in.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image as PILImage
from PIL import ImageDraw

from medsam3.image import Image
from medsam3.overlay import blend_labels, label_colors, orthogonal_slices
from medsam3.orientation import SliceOrientation, choose_orientation

#: Displayed pictures are scaled so their longer side is about this many screen pixels.
DISPLAY_SIZE = 512


@dataclass(frozen=True)
class SliceFrame:
    """How one displayed slice relates to the input array.

    Attributes:
        orientation: the slicing (``None`` for 2D images).
        index: the slice index along the slicing axis (array order); 0 for 2D.
        shape: the image's spatial array shape.
        scale: displayed pixels per slice pixel along (columns, rows).
    """

    orientation: SliceOrientation | None
    index: int
    shape: tuple[int, ...]
    scale: tuple[float, float]

    def display_to_plane(self, x: float, y: float) -> tuple[float, float]:
        """A click at display pixel ``(x, y)`` -> ``(x, y)`` on the input array's plane, in pixels.

        For 2D images that is the image's own column/row; for volumes the column/row of the
        plane ``np.take(array, index, axis=slice_axis)``, undoing the display's transposes and flips.
        """
        sx, sy = float(x) / self.scale[0], float(y) / self.scale[1]
        o = self.orientation
        if o is None:
            return sx, sy
        position = {}
        for role, flip, v in ((1, o.flips[0], sy), (2, o.flips[1], sx)):
            axis = o.axes[role]
            position[axis] = self.shape[axis] - v if flip else v
        row_axis, col_axis = o.plane_axes()
        return position[col_axis], position[row_axis]

    def plane_to_display(self, x: float, y: float) -> tuple[float, float]:
        """The inverse of :meth:`display_to_plane`."""
        o = self.orientation
        if o is None:
            return x * self.scale[0], y * self.scale[1]
        sx, sy = o.plane_to_slice_xy(x, y, self.shape)
        return sx * self.scale[0], sy * self.scale[1]


def num_slices(image: Image, axis: str | None) -> int:
    """How many ``axis`` slices a volume has (1 for 2D images)."""
    if image.ndim == 2:
        return 1
    return image.shape[choose_orientation(image.direction, axis).slice_axis]


def _pixel_mm(image: Image, orientation: SliceOrientation | None) -> tuple[float, float]:
    """``(width, height)`` in mm of one displayed pixel before scaling."""
    if orientation is None:
        return image.spacing[0], image.spacing[1]
    spacing_of_array_axis = {2 - i: s for i, s in enumerate(image.spacing)}  # array axis 2 is x
    return spacing_of_array_axis[orientation.axes[2]], spacing_of_array_axis[orientation.axes[1]]


def _display_scale(width: int, height: int, pixel_mm: tuple[float, float], size: int) -> tuple[float, float]:
    w_mm, h_mm = width * pixel_mm[0], height * pixel_mm[1]
    per_mm = size / max(w_mm, h_mm, 1e-9)
    return pixel_mm[0] * per_mm, pixel_mm[1] * per_mm


def _resize(rgb: np.ndarray, scale: tuple[float, float]) -> PILImage.Image:
    h, w = rgb.shape[:2]
    return PILImage.fromarray(rgb).resize((max(1, round(w * scale[0])), max(1, round(h * scale[1]))),
                                          PILImage.NEAREST)


def colors_for(n_labels: int, visible: Iterable[int] | None = None) -> dict[int, tuple[int, int, int]]:
    """Label value -> colour (as in :func:`medsam3.palette.label_colors`), only for visible labels."""
    colors = {k + 1: c for k, c in enumerate(label_colors(n_labels))}
    if visible is not None:
        keep = {int(v) for v in visible}
        colors = {k: c for k, c in colors.items() if k in keep}
    return colors


def render_slice(image: Image, normalized: np.ndarray, labels: np.ndarray | None,
                 colors: Mapping[int, Sequence[int]], *, axis: str | None = None, index: int = 0,
                 points: Sequence[Sequence[float]] = (), point_labels: Sequence[int] = (),
                 box: Sequence[float] | None = None, corner: Sequence[float] | None = None,
                 size: int = DISPLAY_SIZE, alpha: float = 0.45) -> tuple[np.ndarray, SliceFrame]:
    """One slice (or the whole 2D image) with labels and prompt marks, for display.

    Args:
        normalized: the image's intensities in ``[0, 1]`` (``[y, x]``, ``[y, x, 3]`` or ``[z, y, x]``).
        labels: the label map on the image's grid, or ``None``.
        colors: label value -> RGB for the labels to paint (others stay unpainted).
        axis, index: for volumes, the anatomical plane and the slice along its slicing axis.
        points, point_labels, box, corner: prompts in the input array's plane pixels
            (positive points green, negative red, the box and a pending box corner yellow).

    Returns:
        ``(rgb uint8 [H, W, 3], frame)``; ``frame`` maps display clicks back to the plane.
    """
    if image.ndim == 2:
        orientation, grey = None, normalized
        lab = labels
    else:
        orientation = choose_orientation(image.direction, axis)
        index = int(np.clip(index, 0, image.shape[orientation.slice_axis] - 1))
        grey = orientation.stack(normalized)[index]
        lab = orientation.stack(labels)[index] if labels is not None else None
    if lab is None:
        lab = np.zeros(grey.shape[:2], dtype=np.uint8)
    rgb = blend_labels(grey, lab, colors, alpha)
    scale = _display_scale(rgb.shape[1], rgb.shape[0], _pixel_mm(image, orientation), size)
    frame = SliceFrame(orientation, int(index), tuple(image.shape), scale)
    picture = _resize(rgb, scale)
    draw = ImageDraw.Draw(picture)
    r = max(3, size // 100)
    for (x, y), positive in zip(points, list(point_labels) + [1] * (len(points) - len(point_labels))):
        dx, dy = frame.plane_to_display(x, y)
        draw.ellipse((dx - r, dy - r, dx + r, dy + r), fill=(40, 220, 40) if positive else (230, 40, 40),
                     outline=(255, 255, 255))
    if box is not None:
        (x0, y0), (x1, y1) = frame.plane_to_display(box[0], box[1]), frame.plane_to_display(box[2], box[3])
        draw.rectangle((min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)), outline=(255, 230, 0), width=2)
    if corner is not None:
        cx, cy = frame.plane_to_display(*corner)
        draw.line((cx - 2 * r, cy, cx + 2 * r, cy), fill=(255, 230, 0), width=2)
        draw.line((cx, cy - 2 * r, cx, cy + 2 * r), fill=(255, 230, 0), width=2)
    return np.asarray(picture), frame


def render_three_views(image: Image, normalized: np.ndarray, labels: np.ndarray,
                       colors: Mapping[int, Sequence[int]], size: int = 300, alpha: float = 0.45) -> np.ndarray:
    """Axial, coronal and sagittal slices through the labels' centre of mass, side by side, on one mm
    scale (:func:`medsam3.overlay.orthogonal_slices`), as uint8 RGB."""
    views = orthogonal_slices(normalized, labels, image.spacing, image.direction)
    per_mm = size / max(max(v.extent_mm) for v in views)
    pictures = [_resize(blend_labels(v.image, v.labels, colors, alpha),
                        (v.pixel_mm[0] * per_mm, v.pixel_mm[1] * per_mm)) for v in views]
    gap, label_h = 8, 18
    width = sum(p.width for p in pictures) + gap * (len(pictures) - 1)
    height = max(p.height for p in pictures) + label_h
    canvas = PILImage.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = 0
    for view, picture in zip(views, pictures):
        canvas.paste(picture, (x, label_h))
        draw.text((x + 2, 2), view.name, fill=(0, 0, 0))
        if view.sides:
            draw.text((x + 3, label_h + picture.height // 2), view.sides[0], fill=(255, 255, 0))
            draw.text((x + picture.width - 10, label_h + picture.height // 2), view.sides[1], fill=(255, 255, 0))
        x += picture.width + gap
    return np.asarray(canvas)
