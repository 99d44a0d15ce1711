"""One manifest item -> normalised pixels and integer labels in memory.

Images go through :func:`medsam3.io.read_image` and :func:`medsam3.preprocess.normalize_intensity`
(the one normalisation of the whole package, applied to the whole volume so that all of
its slices share one scale); label maps through :func:`medsam3.io.read_label_map`, binary
and colour-coded masks through ``read_image``, COCO annotations through the COCO layout's
rasteriser. Nothing here is resized: that happens per sample.

Volumes are turned into the slice stack the predictor shows the model
(:mod:`medsam3.orientation`: axial slices in the radiological display, whatever the
file's storage order), so that training and inference see the same anatomy the same way up.
Axis 0 of a loaded volume is the axial slice index, not necessarily the file's ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medsam3.data.layouts.coco import coco_label_maps
from medsam3.data.manifest import Manifest, ManifestItem
from medsam3.errors import InputError
from medsam3.image import Image
from medsam3.io import read_image, read_label_map
from medsam3.orientation import choose_orientation
from medsam3.preprocess import normalize_intensity

# Above this many (slices x label values) the per-slice label counts are done slice by slice.
_MAX_COUNT_TABLE = 50_000_000


@dataclass
class LoadedItem:
    """An item's pixels and labels.

    Attributes:
        item: the manifest item.
        image: float32 intensities in ``[0, 1]``: ``[z, y, x]``, ``[y, x]`` or ``[y, x, 3]``.
        label: integer labels on the image grid (``[z, y, x]`` / ``[y, x]``), or ``None``.
        instances: instance ids on the same grid when the source has them (COCO
            annotations, instance maps), else ``None`` (instances then come from
            connected components).
    """

    item: ManifestItem
    image: np.ndarray
    label: np.ndarray | None
    instances: np.ndarray | None = None
    _counts: np.ndarray | None = field(default=None, repr=False)

    @property
    def is_volume(self) -> bool:
        return self.item.dim == 3

    def slice_label_counts(self) -> np.ndarray:
        """``[z, value]`` voxel counts of every label value per slice (one row for 2D)."""
        if self._counts is None:
            label = np.asarray(self.label)
            planes = label.reshape((label.shape[0], -1) if self.is_volume else (1, -1))
            k = int(planes.max(initial=0)) + 1
            if planes.shape[0] * k <= _MAX_COUNT_TABLE:
                offsets = (np.arange(planes.shape[0], dtype=np.int64) * k)[:, None]
                flat = (planes.astype(np.int64) + offsets).ravel()
                self._counts = np.bincount(flat, minlength=planes.shape[0] * k).reshape(planes.shape[0], k)
            else:
                self._counts = np.zeros((planes.shape[0], k), dtype=np.int64)
                for z, plane in enumerate(planes):
                    values, counts = np.unique(plane, return_counts=True)
                    self._counts[z, values] = counts
        return self._counts

    def class_areas(self) -> dict[str, np.ndarray]:
        """Per class: its pixel count in every slice (array axis 0; one entry for 2D)."""
        counts = self.slice_label_counts()
        out = {}
        for name, values in self.item.targets():
            if values is None:  # every label > 0 except the "unannotated" value
                columns = [v for v in range(1, counts.shape[1]) if v != self.item.ignore_value]
            else:
                columns = [v for v in values if v < counts.shape[1]]
            out[name] = counts[:, columns].sum(axis=1) if columns else np.zeros(counts.shape[0], np.int64)
        return out

    def presence(self) -> dict[str, np.ndarray]:
        """Per class: the slice indices (array axis 0) that hold it; ``[0]`` or ``[]`` for 2D."""
        return {name: np.flatnonzero(area > 0) for name, area in self.class_areas().items()}

    def nonempty_slices(self) -> np.ndarray:
        """Slices whose intensities are not all equal (padding and air-only slices are not)."""
        if not self.is_volume:
            return np.array([0])
        planes = np.asarray(self.image).reshape(self.image.shape[0], -1)
        return np.flatnonzero(planes.max(axis=1) > planes.min(axis=1))


def target_mask(label: np.ndarray, values: tuple[int, ...] | None) -> np.ndarray:
    """Pixels of a class: label in ``values`` (``None``: every label > 0)."""
    if values is None:
        return label > 0
    if len(values) == 1:
        return label == values[0]
    return np.isin(label, values)


# ---------------------------------------------------------------------- images
def _read(path: Path, modality: str | None, channel: int | None = None) -> Image:
    return read_image(path, modality=modality, channel=channel)


def load_image(manifest: Manifest, item: ManifestItem) -> Image:
    """The item's image with its geometry, as the readers give it (not normalised)."""
    if item.label_format == "npz" or str(item.image).endswith(".npz"):
        path = manifest.resolve(item.image)
        key = item.source.get("image_key", "imgs")
        try:
            with np.load(path, allow_pickle=False) as data:
                array = data[key]
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"cannot read {key!r} from {path}: {exc}") from None
        image = Image.from_array(array, spacing=item.spacing, modality=item.modality, rgb=item.rgb)
        image.path = str(path)
        image.meta["prenormalised"] = array.dtype == np.uint8
        return image
    if isinstance(item.image, list):
        planes = [_read(manifest.resolve(p), None) for p in item.image]
        shapes = {p.shape for p in planes}
        if len(shapes) != 1 or planes[0].is_rgb:
            raise InputError(f"the R, G, B files {item.image} of {item.id} must be grey images of one size")
        array = np.stack([p.array for p in planes], axis=-1)
        image = planes[0].with_array(array, modality=item.modality or "RGB")
        image.meta["rgb"] = True
        return image
    return _read(manifest.resolve(item.image), item.modality, item.channel)


def normalised_image(manifest: Manifest, item: ManifestItem, window=None) -> np.ndarray:
    """The item's intensities in ``[0, 1]`` (float32), normalised by its modality, in the
    file's array order.

    ``window`` is a CT window (preset or ``(level, width)``) applied to CT items only.
    BiomedSegFM ``.npz`` images stored as ``uint8`` are already windowed and scaled to
    0-255 by the challenge; they are divided by 255.
    """
    return _normalised(manifest, item, window)[0]


def _normalised(manifest: Manifest, item: ManifestItem, window=None) -> tuple[np.ndarray, Image]:
    image = load_image(manifest, item)
    if image.shape != tuple(item.shape):
        raise InputError(f"{image.path} has shape {image.shape} but the manifest says {tuple(item.shape)} "
                         f"for {item.id}: the file changed since the manifest was written; convert again")
    return normalised_array(image, item.modality, window), image


def normalised_array(image: Image, modality: str | None, window=None) -> np.ndarray:
    """A manifest item's loaded image in ``[0, 1]`` (float32), by the one rule of the data
    module: BiomedSegFM ``uint8`` images (``meta["prenormalised"]``, already windowed by the
    challenge) / 255; others by ``modality`` (:func:`medsam3.preprocess.normalize_intensity`),
    ``window`` applied to CT only."""
    from medsam3.preprocess import normalize_intensity

    if image.meta.get("prenormalised"):
        return np.asarray(image.array, dtype=np.float32) / np.float32(255.0)
    return normalize_intensity(image, modality=modality, window=window if modality == "CT" else None)


# ---------------------------------------------------------------------- labels
def _binary(manifest: Manifest, item: ManifestItem) -> np.ndarray:
    paths = item.label if isinstance(item.label, list) else [item.label]
    out = None
    for rel in paths:
        image = read_image(manifest.resolve(rel))
        array = np.asarray(image.array)
        if image.is_rgb:
            array = array[..., :3].max(axis=-1)
        threshold = item.source.get("threshold")
        if threshold is None:
            top = float(array.max()) if array.size else 0.0
            threshold = top / 2.0
        mask = array > threshold if array.size and float(array.max()) > 0 else np.zeros(array.shape, bool)
        if out is not None and out.shape != mask.shape:
            raise InputError(f"mask {rel} of {item.id} has shape {mask.shape}, its other masks {out.shape}")
        out = mask if out is None else out | mask
    return out.astype(np.uint8)


def _colors(manifest: Manifest, item: ManifestItem) -> np.ndarray:
    path = manifest.resolve(item.label)
    image = read_image(path)
    if not image.is_rgb:
        raise InputError(f"{path} is not a colour image, but {item.id} reads it as colour-coded")
    rgb = np.asarray(image.array[..., :3], dtype=np.int32)
    palette = [(0, (0, 0, 0))]
    for value, shades in item.source.get("colors", {}).items():
        for shade in shades:
            palette.append((int(value), tuple(shade)))
    colours = np.array([c for _, c in palette], dtype=np.int32)
    distance = ((rgb[..., None, :] - colours[None, None]) ** 2).sum(axis=-1)
    nearest = distance.argmin(axis=-1)
    values = np.array([v for v, _ in palette], dtype=np.uint8)
    return values[nearest]  # JPEG-compressed masks: every pixel takes its nearest class colour


def load_labels(manifest: Manifest, item: ManifestItem) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(label, instances)`` of an item (both ``None`` for an unlabelled one)."""
    if item.label is None:
        return None, None
    fmt = item.label_format
    instances = None
    if fmt == "map":
        label = read_label_map(manifest.resolve(item.label)).array
    elif fmt == "mask":
        label = _binary(manifest, item)
    elif fmt == "color":
        label = _colors(manifest, item)
    elif fmt == "coco":
        label, instances = coco_label_maps(manifest.resolve(item.label), int(item.source["coco_image_id"]))
    elif fmt == "npz":
        path = manifest.resolve(item.label)
        key = item.source.get("label_key", "gts")
        try:
            with np.load(path, allow_pickle=False) as data:
                label = data[key]
        except (OSError, KeyError, ValueError) as exc:
            raise InputError(f"cannot read {key!r} from {path}: {exc}") from None
        if label.dtype.kind not in "iub" and not np.array_equal(label, np.round(label)):
            raise InputError(f"{path}: {key!r} holds non-integer values")
        label = label.astype(np.uint16 if label.max(initial=0) > 255 else np.uint8, copy=False)
    else:  # validated by the manifest reader
        raise InputError(f"unknown label_format {fmt!r} of {item.id}")
    if item.instance_class is not None:
        instances = label
    return label, instances


def load_item(manifest: Manifest, item: ManifestItem, window=None) -> LoadedItem:
    """Read and normalise one item (see :class:`LoadedItem`).

    Raises:
        InputError: unreadable files, or a label that does not match the image's shape.
    """
    image, source = _normalised(manifest, item, window)
    label, instances = load_labels(manifest, item)
    spatial = image.shape[:2] if item.rgb or (image.ndim == 3 and item.dim == 2) else image.shape
    if label is not None and tuple(label.shape) != tuple(spatial):
        raise InputError(f"label of {item.id} ({item.label}) has shape {tuple(label.shape)} but its image "
                         f"({item.image}) has {tuple(spatial)}")
    if item.dim == 3:
        image, label, instances = axial_stack(source.direction, image, label, instances)
    return LoadedItem(item, image, label, instances)


def axial_stack(direction, *arrays):
    """``[z, y, x]`` arrays of one volume as the predictor's axial slice stack (views).

    ``direction``: the volume's ITK direction (9 numbers, row-major; ``None`` = identity).
    """
    orientation = choose_orientation(np.eye(3).ravel() if direction is None else np.asarray(direction, float),
                                     "axial")
    return tuple(None if a is None else orientation.stack(a) for a in arrays)
