"""Prompts derived from the ground truth, for the evaluation modes that are allowed to see it.

``medsam3 evaluate --model`` has four prompt modes (:data:`PROMPT_MODES`):

``text``
    the class's canonical text prompt only. The ground truth is not read before the
    prediction is written; 3D items go through :func:`medsam3.segment` on the whole volume.
``text+box``
    the text prompt plus **one exemplar box** per class and image (per slice for volumes):
    the bounding box of the class's **largest connected component** there (an exemplar
    shows the detector one example; it still has to find every instance itself). Where the
    class is absent from the ground truth no box exists and the text goes alone.
``box``
    no text: the SAM3 tracker with **one box per connected component** of the class (the
    paper's vanilla-SAM3-with-ground-truth-boxes baseline); the class's mask is the union
    of the answers. Nothing is prompted where the class is absent.
``point``
    no text: the tracker with **one positive click per connected component**, at the
    component's most interior pixel (the maximum of its Euclidean distance transform, in
    mm with the pixel spacing; ties to the first pixel in row-major order).

Components use full connectivity (8-neighbours in 2D), as instance F1 does. With
``max_objects`` only the largest N components of a class per image / slice are prompted;
the number left out is recorded in the prediction's sidecar (they stay in the scoring,
so they count as misses, never silently).

Volumes in the ground-truth modes are prompted **slice by slice** (the paper's protocol),
on the slices of the plane closest to the acquisition plane (the one ``medsam3 segment``
uses), on every slice where the class is present in the ground truth; so these modes also
learn from the ground truth on which slices the class exists. ``text+box`` still runs the
text alone on every other slice (detection on every slice, no tracker propagation; compare
it with a ``text`` run made with ``volume_mode="slices"`` for a like-for-like baseline).
Boxes are ``x0 y0 x1 y1`` in continuous pixel coordinates (a pixel ``i`` spans
``[i, i + 1)``), points the pixel's centre.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

#: The prompt modes of ``medsam3 evaluate --model``.
PROMPT_MODES = ("text", "text+box", "box", "point")
#: Modes that derive prompts from the ground truth.
GT_MODES = frozenset({"text+box", "box", "point"})

#: One line per mode for reports.
MODE_DEFINITIONS = {
    "text": "text prompt only (the class's canonical prompt); the ground truth is read only after the "
            "prediction is written; volumes through medsam3.segment on the whole volume",
    "text+box": "text prompt + one exemplar box per class and image (per slice for volumes): the bounding box "
                "of the class's largest connected component in the ground truth; text alone where the class "
                "is absent. SEES THE GROUND TRUTH",
    "box": "no text: SAM3 tracker with one ground-truth box per connected component of the class, masks "
           "united; nothing prompted where the class is absent (paper's vanilla SAM3 + GT boxes baseline). "
           "SEES THE GROUND TRUTH",
    "point": "no text: SAM3 tracker with one positive click per connected component of the class, at its "
             "distance-transform maximum; nothing prompted where the class is absent. SEES THE GROUND TRUTH",
}
#: How volumes are prompted in the ground-truth modes.
VOLUME_GT_PROTOCOL = ("volumes: slice by slice on the acquisition-closest plane, prompts derived per slice on "
                      "every slice where the class is present in the ground truth (the slice range itself "
                      "comes from the ground truth)")


@dataclass(frozen=True)
class GTObject:
    """One connected component of a class on one 2D plane.

    Attributes:
        box: ``[x0, y0, x1, y1]`` bounding box in continuous pixel coordinates.
        point: ``[x, y]``: the centre of the component's most interior pixel.
        pixels: its size in pixels.
    """

    box: list[float]
    point: list[float]
    pixels: int


def gt_objects(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0),
               max_objects: int | None = None) -> tuple[list[GTObject], int]:
    """The connected components of a 2D mask, largest first, as box and point prompts.

    Args:
        mask: ``(H, W)`` boolean mask of one class on one image or slice.
        spacing: pixel size ``(row, column)`` in mm, for the interior point's distances.
        max_objects: keep at most this many (the largest); ``None`` keeps all.

    Returns:
        ``(objects, total)``: the kept components (size descending, ties by position)
        and how many components the mask has.
    """
    from scipy import ndimage

    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"gt_objects takes a 2D mask, got shape {mask.shape}")
    if not mask.any():
        return [], 0
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    order = sorted(range(n), key=lambda i: (-int(sizes[i]), i))  # labels are numbered in raster order
    if max_objects is not None:
        order = order[:max_objects]
    boxes = ndimage.find_objects(labelled)
    objects = []
    for i in order:
        rows, cols = boxes[i]
        component = labelled[rows, cols] == i + 1
        y, x = _interior_pixel(component, spacing)
        objects.append(GTObject(box=[float(cols.start), float(rows.start), float(cols.stop), float(rows.stop)],
                                point=[float(cols.start + x) + 0.5, float(rows.start + y) + 0.5],
                                pixels=int(sizes[i])))
    return objects, int(n)


def _interior_pixel(component: np.ndarray, spacing: Sequence[float]) -> tuple[int, int]:
    """``(row, column)`` of the pixel farthest from the component's border (first on ties)."""
    from scipy import ndimage

    padded = np.pad(component, 1)  # the image border counts as border
    distance = ndimage.distance_transform_edt(padded, sampling=[float(s) for s in spacing])[1:-1, 1:-1]
    flat = int(np.argmax(distance))
    return divmod(flat, component.shape[1])


def largest_component_box(mask: np.ndarray) -> list[float] | None:
    """The bounding box of the largest connected component of a 2D mask (``None`` when empty)."""
    objects, _ = gt_objects(mask, max_objects=1)
    return objects[0].box if objects else None
