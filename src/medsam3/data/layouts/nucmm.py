"""NucMM-Z: zebrafish brain EM blocks with nucleus instance labels, as HDF5 files.

The NucMM release (a Google Drive folder, sometimes unpacked under ``NucMM-Release/``) holds
``Zebrafish (NucMM-Z)/Image/{train,val}/img_ZZZZ_YYYY_XXXX.h5`` and
``Label/{train,val}/seg_ZZZZ_YYYY_XXXX.h5`` (the same suffix: the block's offset in the whole
volume). Each file holds one HDF5 dataset, ``main``: the image block (z, y, x) or its label
block of the same shape, every nucleus one instance id (0 background). medsam3 reads no
HDF5 at training time, so each block is written once under ``work_dir`` as NIfTI
(``<split>/img_....nii.gz`` and ``<split>/seg_....nii.gz``) and listed as an instance map
of ``cell nucleus``; the release's own train / val split is kept. The files store no voxel
size: give it as ``spacing`` ([x, y, z] in mm), else every voxel is 1 (a picture's rule).
The release's mouse micro-CT blocks (``Mouse (NucMM-M)/``, the same layout) are left out
unless ``sample="mouse"``, which reads them instead (name them with ``dataset=`` and
``modality=``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam3.data.layouts.common import check_modality, is_hidden, listing, progress, relative, require_directory
from medsam3.data.layouts.written import need_work_dir, write_nifti
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError, InputError

#: the class every instance of a label block is
NUCMM_CLASS = "cell nucleus"
#: the HDF5 dataset that holds a block (image and label alike)
NUCMM_KEY = "main"
_SPLITS = ("train", "val")
#: sample -> the release's folder-name mark of each sample
_SAMPLES = {"zebrafish": "NucMM-Z", "mouse": "NucMM-M"}


def read_h5_block(path: Path, key: str = NUCMM_KEY, what: str = "NucMM") -> np.ndarray:
    """The 3D array of dataset ``key`` in the HDF5 file ``path``; InputError naming the file when
    it is not HDF5, lacks ``key`` or holds no 3D array there (``what``: the dataset, for messages)."""
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise InputError(f"cannot read {path}: not an HDF5 file ({exc})") from None
    with handle:
        if key not in handle:
            names = sorted(handle.keys())
            raise InputError(f"{path} has no HDF5 dataset {key!r} (it holds {listing(names) if names else 'nothing'}); "
                             f"{what} files store each volume as '{key}'")
        node = handle[key]
        if not isinstance(node, h5py.Dataset):
            raise InputError(f"{path}: {key!r} is an HDF5 group, not a dataset ({what} stores the volume there)")
        if node.ndim != 3:
            raise InputError(f"{path}: {key!r} is {node.ndim}D {tuple(node.shape)}; a {what} volume is 3D (z, y, x)")
        return node[()]


def instance_map(array: np.ndarray, path: Path, what: str = "NucMM") -> np.ndarray:
    """Instance ids as the smallest unsigned type that holds them (``what``: for messages)."""
    if array.dtype.kind == "f":
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise InputError(f"{path} holds non-integer values; a {what} label volume holds instance ids")
    elif array.dtype.kind not in "iub":
        raise InputError(f"{path} holds {array.dtype} values; a {what} label volume holds instance ids")
    if array.size and array.min() < 0:
        raise InputError(f"{path} holds negative values; a {what} label volume holds instance ids (0 background)")
    top = int(array.max()) if array.size else 0
    dtype = np.uint8 if top < 2**8 else np.uint16 if top < 2**16 else np.uint32
    if top >= 2**32:
        raise InputError(f"{path}: instance id {top} does not fit 32 bits")
    return array.astype(dtype, copy=False)


def voxel_spacing(spacing) -> list[float]:
    if spacing is None:
        return [1.0, 1.0, 1.0]
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        spacing = [spacing] * 3
    try:
        values = [float(s) for s in spacing]
    except (TypeError, ValueError):
        values = []
    if len(values) != 3 or not all(np.isfinite(v) and v > 0 for v in values):
        raise ArgumentError(f"spacing must be the voxel size [x, y, z] in mm (3 positive numbers), got {spacing!r}")
    return values


def _label_dirs(root: Path, sample: str) -> list[tuple[Path, Path]]:
    """``(Image/, Label/)`` folder pairs under ``root``, except those in a folder named for the
    other sample (``Mouse (NucMM-M)`` when reading the zebrafish)."""
    others = [mark for name, mark in _SAMPLES.items() if name != sample]
    pairs = []
    for image_dir in sorted(p for p in [root, *root.rglob("Image")] if p.name == "Image" and p.is_dir()):
        parts = image_dir.relative_to(root).parts
        if is_hidden(image_dir) or any(mark in part for part in parts for mark in others):
            continue
        label_dir = image_dir.parent / "Label"
        if not label_dir.is_dir():
            raise InputError(f"{image_dir}: no Label/ folder beside it (NucMM: Image/<split>/img_*.h5 + "
                             "Label/<split>/seg_*.h5)")
        pairs.append((image_dir, label_dir))
    return pairs


def convert_nucmm(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                  modality: str | None = None, spacing=None, sample: str = "zebrafish", check_geometry: bool = True,
                  show_progress: bool = True) -> list[ManifestItem]:
    """Items of a NucMM download (see the module docstring): each ``img_*.h5`` with its
    ``seg_*.h5`` written as NIfTI under ``work_dir``; images without a label are left out."""
    root = require_directory(root, "NucMM")
    if sample not in _SAMPLES:
        raise ArgumentError(f"sample must be one of {', '.join(_SAMPLES)}, got {sample!r}")
    spacing_mm = voxel_spacing(spacing)
    modality = check_modality(modality) or "OTHER"
    dataset = dataset or "nucmm-z"
    pairs = _label_dirs(root, sample)
    if not pairs:
        raise InputError(f"{root}: no Image/ folder beside a Label/ folder (NucMM-Z unpacks as "
                         "'Zebrafish (NucMM-Z)/Image/{train,val}/img_*.h5' + 'Label/{train,val}/seg_*.h5')")
    out = need_work_dir(work_dir, "nucmm")
    items = []
    for image_dir, label_dir in pairs:
        part = image_dir.parent.relative_to(root).as_posix()
        for split in _SPLITS:
            seg_dir = label_dir / split
            labels = {p.name[len("seg_"):]: p for p in (seg_dir.glob("seg_*.h5") if seg_dir.is_dir() else [])
                      if not is_hidden(p)}
            img_dir = image_dir / split
            images = {p.name[len("img_"):]: p for p in (img_dir.glob("img_*.h5") if img_dir.is_dir() else [])
                      if not is_hidden(p)}
            orphans = sorted(set(labels) - set(images))
            if orphans:
                raise InputError(f"{seg_dir}: label(s) {listing(['seg_' + o for o in orphans])} have no "
                                 f"img_<same>.h5 in {img_dir}")
            for suffix in progress(sorted(set(images) & set(labels)), f"NucMM {split}", enabled=show_progress):
                image_h5, label_h5 = images[suffix], labels[suffix]
                volume = read_h5_block(image_h5)
                instances = read_h5_block(label_h5)
                if volume.shape != instances.shape:
                    raise InputError(f"{label_h5} is {' x '.join(map(str, instances.shape))} (z, y, x) but its "
                                     f"image {image_h5} is {' x '.join(map(str, volume.shape))}")
                instances = instance_map(instances, label_h5)
                stem = suffix[: -len(".h5")]
                folder = out / part / split
                image_nii = write_nifti(volume, folder / f"img_{stem}.nii.gz", spacing_mm)
                label_nii = write_nifti(instances, folder / f"seg_{stem}.nii.gz", spacing_mm)
                key = f"{split}/{stem}" if part == "." else f"{part}/{split}/{stem}"
                items.append(ManifestItem(
                    id=f"{dataset}/{key}", dataset=dataset, split=split, case=key,
                    image=relative(image_nii, root), label=relative(label_nii, root), label_format="map",
                    labels={}, instance_class=NUCMM_CLASS, modality=modality, dim=3,
                    shape=list(volume.shape), spacing=list(spacing_mm),
                    source={"image_h5": relative(image_h5, root), "label_h5": relative(label_h5, root)}))
    if not items:
        raise InputError(f"{root}: no Image/<train|val>/img_*.h5 with a Label/<train|val>/seg_*.h5 of the same suffix")
    return items
