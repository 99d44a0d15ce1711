"""ITK image geometry arithmetic shared by the readers: DICOM planes, slice stacks, squeezing.

Conventions (those of :class:`medsam3.Image` and SimpleITK): index axes are ``(x, y[, z])``,
positions are physical LPS millimetres, and ``direction`` is the row-major matrix whose
*columns* are the physical unit vectors of the index axes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Direction cosines written with 6 decimals (DICOM DS, NRRD) are orthonormal to ~1e-6.
_ORTHONORMAL_TOL = 1e-4


def direction_from_orientation(orientation) -> np.ndarray:
    """3x3 direction matrix from DICOM ImageOrientationPatient (row cosine, column cosine).

    Columns: x axis = direction along a row, y axis = down a column, z axis = their cross
    product (the slice normal), the same choice ITK's DICOM readers make.
    """
    values = np.asarray(orientation, dtype=float)
    row, col = values[:3], values[3:6]
    normal = np.cross(row, col)
    return np.column_stack([row, col, normal])


def is_orthonormal(matrix: np.ndarray, tol: float = _ORTHONORMAL_TOL) -> bool:
    """True when ``matrix`` is square with orthonormal columns (a rotation or reflection)."""
    matrix = np.asarray(matrix, dtype=float)
    return bool(np.allclose(matrix.T @ matrix, np.eye(matrix.shape[0]), atol=tol))


def collapse_direction(direction: np.ndarray, keep: list[int]) -> np.ndarray:
    """Direction matrix for the index axes ``keep`` after dropping the others.

    Takes the sub-matrix of the kept rows and columns (ITK's "collapse to sub-matrix") when
    that is still orthonormal, e.g. an axial slice of a volume; otherwise (an oblique or
    sagittal single slice, whose in-plane axes do not live in the first physical axes) falls
    back to the identity, as ITK's "collapse to guess" does.
    """
    sub = np.asarray(direction, dtype=float)[np.ix_(keep, keep)]
    return sub if is_orthonormal(sub) else np.eye(len(keep))


@dataclass
class Grid:
    """Geometry of an ``n``-D image in ITK axis order (x, y, z, ...)."""

    spacing: np.ndarray  # (n,)
    origin: np.ndarray  # (n,)
    direction: np.ndarray  # (n, n)

    def as_tuples(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """``(spacing, origin, flattened direction)`` as :class:`medsam3.Image` wants them."""
        return (
            tuple(float(v) for v in self.spacing),
            tuple(float(v) for v in self.origin),
            tuple(float(v) for v in np.asarray(self.direction).ravel()),
        )


def squeeze_singleton_axes(array: np.ndarray, grid: Grid, has_channels: bool,
                           min_ndim: int = 2) -> tuple[np.ndarray, Grid]:
    """Drop spatial axes of length 1, highest ITK axis first, keeping at least ``min_ndim``.

    ``array`` is in numpy order (``[..., z, y, x]`` with a trailing channel axis when
    ``has_channels``). A 3D image with one slice becomes 2D; a 4D image with one time
    point becomes 3D. Geometry of the dropped axes is discarded (see
    :func:`collapse_direction`).
    """
    ndim = len(grid.spacing)
    sizes = list(reversed(array.shape[: array.ndim - 1] if has_channels else array.shape))
    keep = list(range(ndim))
    for axis in reversed(range(ndim)):
        if len(keep) <= min_ndim:
            break
        if sizes[axis] == 1:
            keep.remove(axis)
    if len(keep) == ndim:
        return array, grid
    dropped_numpy_axes = tuple(ndim - 1 - axis for axis in range(ndim) if axis not in keep)
    array = np.squeeze(array, axis=dropped_numpy_axes)
    new_grid = Grid(
        spacing=np.asarray(grid.spacing, dtype=float)[keep],
        origin=np.asarray(grid.origin, dtype=float)[keep],
        direction=collapse_direction(grid.direction, keep),
    )
    return array, new_grid


@dataclass
class SlicePlane:
    """Where one 2D slice lies: what DICOM says per file (or per frame of a multi-frame)."""

    position: np.ndarray | None  # ImagePositionPatient (3,), first pixel centre, LPS mm
    orientation: np.ndarray | None  # ImageOrientationPatient (6,)
    pixel_spacing: np.ndarray | None  # (x, y) mm, i.e. PixelSpacing reversed


@dataclass
class StackGeometry:
    """Result of ordering slices into a volume."""

    order: list[int]  # indices into the input slices, first slice first
    grid: Grid
    uniform: bool  # False when gaps between slices differ (ITK warns, reads anyway)
    gaps: list[float]  # distances between consecutive slices along the normal, mm


def stack_slices(planes: list[SlicePlane], fallback_slice_spacing: float | None) -> StackGeometry:
    """Sort parallel slices along their normal and derive the volume's ITK geometry.

    Slices are ordered by the projection of their position on the slice normal, ascending,
    so z grows along ``cross(row, column)`` as in ITK's DICOM series reader; the spacing
    along z is ``(last - first) / (n - 1)``, again as ITK computes it. Without positions
    the given order is kept and ``fallback_slice_spacing`` (or 1 mm) is used.

    Raises:
        ValueError: slices with different orientations or pixel spacings, or several
            slices at the same position (several echoes, phases or time points).
    """
    n = len(planes)
    first = planes[0]
    orientation = first.orientation
    for plane in planes[1:]:
        if (plane.orientation is None) != (orientation is None) or (
            orientation is not None and not np.allclose(plane.orientation, orientation, atol=1e-4)
        ):
            raise ValueError("the slices have different orientations (not one volume)")
        if (plane.pixel_spacing is None) != (first.pixel_spacing is None) or (
            first.pixel_spacing is not None
            and not np.allclose(plane.pixel_spacing, first.pixel_spacing, rtol=1e-4)
        ):
            raise ValueError("the slices have different pixel spacings")
    direction = direction_from_orientation(orientation) if orientation is not None else np.eye(3)
    in_plane = first.pixel_spacing if first.pixel_spacing is not None else np.ones(2)

    have_positions = all(p.position is not None for p in planes)
    if have_positions and n > 1:
        normal = direction[:, 2]
        distance = np.array([float(np.dot(p.position, normal)) for p in planes])
        order = sorted(range(n), key=lambda i: distance[i])  # stable: ties keep input order
        sorted_distance = distance[order]
        gaps = np.diff(sorted_distance)
        if np.any(gaps < 1e-3):
            distinct = len(np.unique(np.round(sorted_distance, 3)))
            raise ValueError(
                f"{n} slices lie at only {distinct} distinct positions (several echoes, "
                "phases or time points: 4D data)"
            )
        slice_spacing = float((sorted_distance[-1] - sorted_distance[0]) / (n - 1))
        uniform = bool(np.allclose(gaps, slice_spacing, rtol=1e-2, atol=1e-2))
        origin = np.asarray(planes[order[0]].position, dtype=float)
        gap_list = [float(g) for g in gaps]
    else:
        order = list(range(n))
        slice_spacing = float(fallback_slice_spacing) if fallback_slice_spacing else 1.0
        uniform = True
        origin = (np.asarray(first.position, dtype=float) if first.position is not None
                  else np.zeros(3))
        gap_list = [slice_spacing] * (n - 1)
    grid = Grid(
        spacing=np.array([in_plane[0], in_plane[1], slice_spacing], dtype=float),
        origin=origin,
        direction=direction,
    )
    return StackGeometry(order=order, grid=grid, uniform=uniform, gaps=gap_list)
