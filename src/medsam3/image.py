"""The one image type that every part of medsam3 passes around.

Geometry follows ITK/SimpleITK conventions, so it survives every format we read and write:

* ``array`` is indexed ``[z, y, x]`` for volumes and ``[y, x]`` for 2D images, with a
  trailing channel axis of size 3 for RGB (``[y, x, 3]``);
* ``spacing``, ``origin`` are in millimetres, in ``(x, y[, z])`` order (physical LPS
  coordinates for DICOM-derived images, as ITK uses them);
* ``direction`` is the row-major ``ndim x ndim`` matrix of direction cosines, flattened,
  whose *columns* are the physical directions of the x, y (and z) index axes.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from medsam3.errors import ArgumentError

#: Modalities the intensity normalisation knows. ``None`` means "unknown": treated as grey.
MODALITIES = ("CT", "MR", "PT", "XR", "US", "RGB", "OTHER")


def check_modality(modality: str | None) -> str | None:
    """The canonical (upper-case) modality name, ``None`` for unknown; anything else is an error."""
    if modality is None:
        return None
    name = str(modality).strip().upper()
    if name not in MODALITIES:
        raise ArgumentError(f"unknown modality {modality!r}; use one of {', '.join(MODALITIES)}")
    return name


@dataclass
class Image:
    """A 2D or 3D medical image with its physical geometry.

    Attributes:
        array: pixel data, ``[y, x]``, ``[y, x, 3]`` (RGB) or ``[z, y, x]``.
        spacing: pixel size in mm per index axis, ``(sx, sy[, sz])``.
        origin: physical position in mm of the first pixel's centre, ``(ox, oy[, oz])``.
        direction: flattened ``ndim x ndim`` direction-cosine matrix (ITK convention).
        modality: one of :data:`MODALITIES` or ``None`` when unknown.
        path: the file or directory it was read from, for error messages and sidecars.
        meta: free-form facts from the reader (DICOM UIDs, photometric interpretation, ...).
    """

    array: np.ndarray
    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    modality: str | None = None
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in self.direction)
        nd = self.ndim
        if len(self.spacing) != nd or len(self.origin) != nd or len(self.direction) != nd * nd:
            raise ValueError(
                f"geometry does not match a {nd}D image: spacing={self.spacing}, "
                f"origin={self.origin}, direction has {len(self.direction)} values"
            )

    @property
    def is_rgb(self) -> bool:
        """True for colour images ``[y, x, 3]`` (2D only)."""
        return self.array.ndim == 3 and self.array.shape[-1] in (3, 4) and self.meta.get("rgb", False)

    @property
    def ndim(self) -> int:
        """Number of spatial dimensions: 2 or 3."""
        return self.array.ndim - 1 if self.is_rgb else self.array.ndim

    @property
    def shape(self) -> tuple[int, ...]:
        """Spatial shape in array order: ``(y, x)`` or ``(z, y, x)``."""
        return tuple(self.array.shape[: self.ndim])

    @property
    def size(self) -> tuple[int, ...]:
        """Spatial size in ITK order: ``(x, y[, z])``."""
        return tuple(reversed(self.shape))

    def with_array(self, array: np.ndarray, **changes: Any) -> "Image":
        """A new image on the same grid (same geometry, path and meta) holding ``array``."""
        return replace(self, array=array, meta=dict(self.meta), **changes)

    def same_geometry(self, other: "Image", atol: float = 1e-6) -> bool:
        """True when ``other`` lies on exactly this grid (shape, spacing, origin, direction)."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, atol=atol)
            and np.allclose(self.origin, other.origin, atol=atol)
            and np.allclose(self.direction, other.direction, atol=atol)
        )

    @classmethod
    def from_array(cls, array: np.ndarray, spacing=None, origin=None, direction=None,
                   modality: str | None = None, rgb: bool = False) -> "Image":
        """Wrap a plain array with unit spacing, zero origin and identity direction."""
        array = np.asarray(array)
        nd = array.ndim - 1 if rgb else array.ndim
        if nd not in (2, 3):
            raise ValueError(f"expected a 2D or 3D array, got shape {array.shape}")
        return cls(
            array=array,
            spacing=spacing if spacing is not None else (1.0,) * nd,
            origin=origin if origin is not None else (0.0,) * nd,
            direction=direction if direction is not None else tuple(np.eye(nd).ravel()),
            modality=modality if modality is not None else ("RGB" if rgb else None),
            meta={"rgb": True} if rgb else {},
        )
