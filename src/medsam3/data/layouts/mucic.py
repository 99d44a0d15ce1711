"""MUCIC (Masaryk University Cell Image Collection, CBIA): simulated 3D fluorescence stacks.

The CBIA downloads used by the paper (its run names them ``MUCIC_Colon_Tissue`` and
``MUCI_HL60 / MUCI_Granulocytes``) are zips of HDF5 files: ``image-final_NNNN.h5`` (or
``.hdf5``) holds the simulated stack, ``image-labels_NNNN.h5`` beside it its ground truth,
both as the HDF5 dataset ``Image`` (z, y, x). HL60 and granulocyte labels are nucleus
instance ids; colon tissue labels are a foreground mask, split here into its connected
components (``components=True``, 26-connected) so that every cell is an instance.

medsam3 reads no HDF5 at training time: each pair is written once under ``work_dir`` as NIfTI
and listed as instances of ``cell``; a stack without its labels is left out. The zips carry no
split: the case is the stack's number, so that the low- and high-noise renderings of one
phantom (the same number in two zips) always share a split. They carry no voxel size either:
give ``spacing`` ([x, y, z] mm), else every voxel is 1.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medsam3.data.layouts.common import check_modality, is_hidden, listing, progress, relative, require_directory
from medsam3.data.layouts.nucmm import instance_map, read_h5_block, voxel_spacing
from medsam3.data.layouts.written import need_work_dir, write_nifti
from medsam3.data.manifest import ManifestItem
from medsam3.errors import InputError

#: the HDF5 dataset that holds a stack (image and label alike)
MUCIC_KEY = "Image"
_IMAGE = re.compile(r"^image-final_(.+)\.(h5|hdf5)$", re.IGNORECASE)


def _components(mask: np.ndarray, path: Path) -> np.ndarray:
    """The connected components (26-connected) of a foreground mask as instance ids."""
    from scipy.ndimage import label

    if mask.dtype.kind == "f" and not np.all(np.isfinite(mask)):
        raise InputError(f"{path} holds non-finite values; a MUCIC label stack is a mask or instance ids")
    instances, _ = label(mask > 0, structure=np.ones((3, 3, 3), bool))
    return instances


def convert_mucic(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                  modality: str | None = None, class_name: str = "cell", components: bool = False,
                  spacing=None, check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Items of unpacked MUCIC zips under ``root`` (see the module docstring): every
    ``image-final_*`` stack with its ``image-labels_*`` twin, written as NIfTI under ``work_dir``."""
    root = require_directory(root, "MUCIC")
    spacing_mm = voxel_spacing(spacing)
    modality = check_modality(modality) or "OTHER"
    dataset = dataset or "mucic"
    images = sorted(p for p in root.rglob("image-final_*") if _IMAGE.match(p.name) and p.is_file()
                    and not is_hidden(p))
    if not images:
        raise InputError(f"{root}: no image-final_*.h5 (MUCIC zips unpack as image-final_NNNN.h5 + "
                         "image-labels_NNNN.h5)")
    missing = [p for p in images if not p.with_name("image-labels_" + p.name[len("image-final_"):]).is_file()]
    if len(missing) == len(images):
        raise InputError(f"{root}: no image-labels_* file beside any of {listing([p.name for p in images])}")
    out = need_work_dir(work_dir, "mucic")
    items = []
    for image_h5 in progress([p for p in images if p not in missing], "MUCIC", enabled=show_progress):
        label_h5 = image_h5.with_name("image-labels_" + image_h5.name[len("image-final_"):])
        volume = read_h5_block(image_h5, MUCIC_KEY, "MUCIC")
        labels = read_h5_block(label_h5, MUCIC_KEY, "MUCIC")
        if volume.shape != labels.shape:
            raise InputError(f"{label_h5} is {' x '.join(map(str, labels.shape))} (z, y, x) but its image "
                             f"{image_h5} is {' x '.join(map(str, volume.shape))}")
        instances = instance_map(_components(labels, label_h5) if components else labels, label_h5, "MUCIC")
        folder = image_h5.parent.relative_to(root).as_posix()
        stem = _IMAGE.match(image_h5.name).group(1)
        key = stem if folder == "." else f"{folder}/{stem}"
        image_nii = write_nifti(volume, out / key.replace("/", "_") / "image.nii.gz", spacing_mm)
        label_nii = write_nifti(instances, out / key.replace("/", "_") / "instances.nii.gz", spacing_mm)
        items.append(ManifestItem(
            id=f"{dataset}/{key}", dataset=dataset, split="train", case=stem,
            image=relative(image_nii, root), label=relative(label_nii, root), label_format="map",
            labels={}, instance_class=class_name, modality=modality, dim=3,
            shape=list(volume.shape), spacing=list(spacing_mm),
            source={"image_h5": relative(image_h5, root), "label_h5": relative(label_h5, root)}))
    return items
