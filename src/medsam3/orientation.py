"""Which way to cut a volume into 2D slices, in the patient's anatomy rather than array order.

Used by prediction (slicing volumes), the data loaders and the overlays, so it sits
below them all (it needs only numpy). A volume's array is ``[z, y, x]`` and its ``direction`` matrix (ITK convention, flattened
row-major) has as *columns* the physical directions of the index axes x, y, z in LPS
coordinates (+x = patient's Left, +y = Posterior, +z = Superior). The slicing rule:

1. **Match index axes to anatomical axes.** Each physical axis (L/R, A/P, S/I) gets the
   index axis whose direction cosine along it is largest in magnitude, as a one-to-one
   assignment (the permutation maximising the summed ``|cosine|``; ties go to the
   lower index axis). An oblique volume is sliced along its nearest anatomical axes;
   nothing is resampled.
2. **The slicing axis** is the array axis matched to the plane's normal: axial slices
   are perpendicular to S/I, coronal to A/P, sagittal to L/R. Slices keep the array's
   order along that axis, so slice ``k`` is array index ``k`` along the slicing axis.
   With no axis asked for, the plane is the one closest to the acquisition plane (the
   plane perpendicular to the array's ``z`` axis), so acquired slices stay whole.
3. **In-plane orientation is the radiological display**, whatever the file's storage
   order: axial -- rows run anterior to posterior, columns patient-right to left;
   coronal -- rows superior to inferior, columns right to left; sagittal -- rows
   superior to inferior, columns anterior to posterior. Array axes are transposed and
   flipped (views, never copies) so that every volume shows the model the same anatomy
   the same way up.

:class:`SliceOrientation` maps between the input's array order and this slice stack, both
ways, and maps pixel prompts given on a plane of the input array into the slice stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import permutations

import numpy as np

from medsam3.errors import ArgumentError

#: The anatomical planes and, for each: the physical axis of the slice normal, then the
#: physical axis and sign that rows and columns run along (LPS: 0 = x (L), 1 = y (P), 2 = z (S)).
PLANES: dict[str, tuple[int, tuple[int, int], tuple[int, int]]] = {
    "axial": (2, (1, +1), (0, +1)),     # rows A -> P, columns R -> L
    "coronal": (1, (2, -1), (0, +1)),   # rows S -> I, columns R -> L
    "sagittal": (0, (2, -1), (1, +1)),  # rows S -> I, columns A -> P
}
AXES = tuple(PLANES)


def _assignment_scores(direction) -> list[tuple[float, tuple[int, int, int]]]:
    """Every one-to-one assignment ``perm[p]`` = index axis of physical axis ``p``, with its summed
    ``|cosine|``, in ``permutations`` order (lowest first)."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    return [(sum(abs(d[p, perm[p]]) for p in range(3)), perm) for perm in permutations(range(3))]


def physical_axes(direction) -> tuple[int, int, int]:
    """``assign[p]`` = the index axis (0 = x, 1 = y, 2 = z) matched to physical axis ``p`` (0 = L,
    1 = P, 2 = S) by rule 1 of the module docstring; ``direction`` is a flattened or 3x3 direction
    matrix. The one physical-axis assignment of the package (slicing volumes, overlays)."""
    best, best_score = None, -1.0
    for score, perm in _assignment_scores(direction):
        if score > best_score + 1e-9:  # strict: the first (lowest) permutation wins ties
            best, best_score = perm, score
    return best


def physical_axes_unique(direction) -> bool:
    """Whether :func:`physical_axes` is decided by the cosines rather than by a tie (a grid at
    exactly 45 degrees to two anatomical axes has no nearest one)."""
    scores = sorted((score for score, _ in _assignment_scores(direction)), reverse=True)
    return scores[0] > scores[1] + 1e-9


@dataclass(frozen=True)
class SliceOrientation:
    """How a ``[z, y, x]`` array is viewed as a stack of 2D slices ``[slice, row, column]``.

    Attributes:
        axis: the anatomical plane (``axial``, ``coronal``, ``sagittal``).
        axes: the array axes of the slice stack's (slice, row, column) axes.
        flips: whether the row and the column axes run against the array's order.
    """

    axis: str
    axes: tuple[int, int, int]
    flips: tuple[bool, bool]

    @property
    def slice_axis(self) -> int:
        """The array axis that is cut into slices."""
        return self.axes[0]

    def stack(self, array: np.ndarray) -> np.ndarray:
        """The ``[slice, row, column]`` view of a ``[z, y, x]`` array (no copy; writes go through)."""
        view = np.transpose(array, self.axes)
        if self.flips[0]:
            view = view[:, ::-1]
        if self.flips[1]:
            view = view[:, :, ::-1]
        return view

    def stack_shape(self, shape: tuple[int, int, int]) -> tuple[int, int, int]:
        return tuple(shape[a] for a in self.axes)

    def plane_axes(self) -> tuple[int, int]:
        """The array axes of a plane ``np.take(array, k, axis=slice_axis)``: its (row, column) axes."""
        rest = [a for a in range(3) if a != self.slice_axis]
        return rest[0], rest[1]

    def plane_to_slice_xy(self, x: float, y: float, shape: tuple[int, int, int]) -> tuple[float, float]:
        """A pixel position ``x`` (column), ``y`` (row) on the input array's plane
        ``np.take(array, k, axis=slice_axis)`` -> the same position on slice ``k`` of the stack.

        Positions are continuous pixel coordinates (a pixel ``i`` spans ``[i, i + 1)``),
        so flipping an axis of ``n`` pixels maps ``v`` to ``n - v``.
        """
        row_axis, col_axis = self.plane_axes()
        position = {row_axis: float(y), col_axis: float(x)}
        out = []
        for role, flip in ((1, self.flips[0]), (2, self.flips[1])):
            axis = self.axes[role]
            v = position[axis]
            out.append(shape[axis] - v if flip else v)
        row, col = out
        return col, row

    def plane_box_to_slice(self, box, shape) -> list[float]:
        """An ``x0 y0 x1 y1`` box on the input array's plane -> the box on the stack's slice."""
        x0, y0 = self.plane_to_slice_xy(box[0], box[1], shape)
        x1, y1 = self.plane_to_slice_xy(box[2], box[3], shape)
        return [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]

    def plane_mask_to_slice(self, mask: np.ndarray) -> np.ndarray:
        """A mask drawn on the input array's plane -> the mask on the stack's slice."""
        row_axis, col_axis = self.plane_axes()
        m = np.asarray(mask)
        if (self.axes[1], self.axes[2]) != (row_axis, col_axis):
            m = m.T
        if self.flips[0]:
            m = m[::-1]
        if self.flips[1]:
            m = m[:, ::-1]
        return m

    def plane_shape(self, shape: tuple[int, int, int]) -> tuple[int, int]:
        """``(height, width)`` of a plane of the input array (array order, before re-orienting)."""
        row_axis, col_axis = self.plane_axes()
        return shape[row_axis], shape[col_axis]

    def describe(self) -> str:
        names = "zyx"
        flips = "".join(("-" if f else "+") + names[self.axes[i + 1]] for i, f in enumerate(self.flips))
        return f"{self.axis} slices along array axis {names[self.slice_axis]} (rows, columns = {flips})"


def choose_orientation(direction, axis: str | None = None) -> SliceOrientation:
    """The :class:`SliceOrientation` cutting a volume with this ``direction`` into ``axis`` planes.

    Args:
        direction: the volume's flattened 3x3 direction-cosine matrix (ITK convention).
        axis: ``axial``, ``coronal``, ``sagittal`` (physical orientation, not array order),
            or ``None`` for the anatomical plane closest to the acquisition plane.
    """
    d = np.asarray(direction, dtype=float)
    if d.size != 9:
        raise ArgumentError(f"slicing a volume needs a 3x3 direction matrix, got {d.size} values")
    d = d.reshape(3, 3)
    assign = physical_axes(d)  # physical axis -> index axis (0 = x, 1 = y, 2 = z)
    if axis is None:
        normal_of_z = assign.index(2)
        axis = next(name for name, spec in PLANES.items() if spec[0] == normal_of_z)
    name = str(axis).lower()
    if name not in PLANES:
        raise ArgumentError(f"unknown slicing axis {axis!r}; accepted: {', '.join(AXES)}")
    normal, (row_p, row_sign), (col_p, col_sign) = PLANES[name]

    def array_axis(p: int) -> int:
        return 2 - assign[p]  # index axis j (x, y, z) is array axis 2 - j

    flips = tuple(bool(np.sign(d[p, assign[p]]) != sign) for p, sign in ((row_p, row_sign), (col_p, col_sign)))
    return SliceOrientation(name, (array_axis(normal), array_axis(row_p), array_axis(col_p)), flips)
