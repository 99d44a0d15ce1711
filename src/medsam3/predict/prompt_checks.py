"""Validation of pixel prompts (boxes, clicks) against the image or slice they are drawn on.

One rule for the 2D predictor and for object prompts on a volume's slices: coordinates are
continuous pixel positions of a ``(height, width)`` plane, ``x`` = column, ``y`` = row; a box
``x0 y0 x1 y1`` lies inside ``[0, width] x [0, height]`` with ``x0 < x1`` and ``y0 < y1``; a
click ``x y`` lies in ``[0, width) x [0, height)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from medsam3.errors import ArgumentError


def check_box(box: Sequence[float], size: tuple[int, int], where: str = "the image") -> tuple[float, float, float, float]:
    """``box`` as 4 floats, or :class:`ArgumentError` naming ``where`` (e.g. ``slice 3``) and its size."""
    if len(box) != 4:
        raise ArgumentError(f"a box needs 4 numbers X0 Y0 X1 Y1, got {list(box)}")
    x0, y0, x1, y1 = (float(v) for v in box)
    h, w = size
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ArgumentError(f"box {x0:g} {y0:g} {x1:g} {y1:g} is not inside {where} "
                            f"(width {w}, height {h}) with X0 < X1 and Y0 < Y1")
    return x0, y0, x1, y1


def check_point(point: Sequence[float], size: tuple[int, int], where: str = "the image") -> tuple[float, float]:
    """``point`` as 2 floats, or :class:`ArgumentError` naming ``where`` and its size."""
    if len(point) != 2:
        raise ArgumentError(f"a point needs 2 numbers X Y, got {list(point)}")
    x, y = (float(v) for v in point)
    h, w = size
    if not (0 <= x < w and 0 <= y < h):
        raise ArgumentError(f"point {x:g} {y:g} is outside {where} (width {w}, height {h})")
    return x, y


def check_point_labels(points: Sequence[Sequence[float]] | None, labels: Sequence[int] | None) -> list[int]:
    """The clicks' labels (1 = on the object, 0 = not; all 1 when ``labels`` is ``None``), one per point."""
    points = list(points or [])
    out = list(labels) if labels is not None else [1] * len(points)
    if len(out) != len(points):
        raise ArgumentError(f"{len(points)} points but {len(out)} point labels")
    return out
