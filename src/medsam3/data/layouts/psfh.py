"""PS-FH-AOP 2023 / PSFHS: intrapartum transperineal ultrasound frames as MetaImage files.

Both public releases (the MICCAI 2023 challenge's training set, zenodo.org/records/7851339,
unpacked as ``Pubic Symphysis-Fetal Head Segmentation and Angle of Progression/``, and the
PSFHS release, zenodo.org/records/10969427, unpacked as ``PSFHS/``) hold ``image_mha/NNNNN.mha``
and ``label_mha/NNNNN.mha`` of the same name. An image is 256 x 256 x 3: the grey frame stored
three times along a third axis (a 3-slice volume, not RGB pixels); a label is a 256 x 256
map with 0 background, 1 pubic symphysis, 2 fetal head. Each frame is written once as a grey
PNG (RGB if its three planes differ) and each label as a PNG label map.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam3.data.layouts.common import (
    assign_split,
    check_modality,
    find_folders,
    is_hidden,
    listing,
    progress,
    require_directory,
)
from medsam3.data.layouts.written import need_work_dir, picture_item, write_png
from medsam3.data.manifest import ManifestItem
from medsam3.errors import InputError

#: label value -> class, as the challenge states them
PSFH_CLASSES = {"1": "pubic symphysis", "2": "fetal head"}


def _read_mha(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InputError(f"cannot read {path}: {str(exc).strip().splitlines()[-1]}") from None
    array = sitk.GetArrayFromImage(image)  # (z, y, x) or (y, x) or (y, x, components)
    if image.GetNumberOfComponentsPerPixel() > 1:  # vector pixels: (y, x, c) -> (c, y, x)
        array = np.moveaxis(array, -1, 0)
    return array


def _frame(path: Path) -> np.ndarray:
    """The frame of an image file: one plane (grey) when its planes agree, else the planes as RGB."""
    array = _read_mha(path)
    if array.ndim == 2:
        planes = array[None]
    elif array.ndim == 3 and array.shape[0] in (1, 3):
        planes = array
    else:
        raise InputError(f"{path} is {' x '.join(map(str, array.shape[::-1]))}; a PS-FH-AOP image is "
                         "W x H x 3 (one frame stored three times) or W x H")
    planes = np.clip(planes, 0, 255).astype(np.uint8)
    if all(np.array_equal(planes[0], p) for p in planes[1:]):
        return planes[0]
    return np.moveaxis(planes, 0, -1)


def _label(path: Path, shape) -> np.ndarray:
    array = np.squeeze(_read_mha(path))
    if array.shape != tuple(shape):
        raise InputError(f"{path} is {' x '.join(map(str, array.shape[::-1]))} but its image is "
                         f"{' x '.join(map(str, tuple(shape)[::-1]))}")
    values = set(np.unique(array).tolist()) - {0, 1, 2}
    if values:
        raise InputError(f"{path} holds values {sorted(values)[:5]}; PS-FH-AOP labels are 0 background, "
                         "1 pubic symphysis, 2 fetal head")
    return array.astype(np.uint8)


def convert_psfh(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                 modality: str | None = None, check_geometry: bool = True,
                 show_progress: bool = True) -> list[ManifestItem]:
    """Items of a PS-FH-AOP / PSFHS download (see the module docstring); images without a
    label file (the challenge's hidden test frames) are left out."""
    root = require_directory(root, "PS-FH-AOP")
    out = need_work_dir(work_dir, "psfh")
    modality = check_modality(modality) or "US"
    dataset = dataset or "ps-fh-aop-2023"
    image_dirs = find_folders(root, "image_mha")
    if not image_dirs:
        raise InputError(f"{root}: no image_mha/ folder (PS-FH-AOP: image_mha/NNNNN.mha + label_mha/NNNNN.mha)")
    items = []
    for image_dir in image_dirs:
        label_dir = image_dir.parent / "label_mha"
        if not label_dir.is_dir():
            raise InputError(f"{image_dir}: no label_mha/ folder beside it")
        part = image_dir.parent.relative_to(root).as_posix()
        labels = {p.stem: p for p in label_dir.glob("*.mha") if not is_hidden(p)}
        images = {p.stem: p for p in image_dir.glob("*.mha") if not is_hidden(p)}
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise InputError(f"{label_dir}: label(s) {listing(orphans)} have no image in {image_dir}")
        for stem in progress(sorted(set(images) & set(labels)), "PS-FH-AOP", enabled=show_progress):
            frame = _frame(images[stem])
            label = _label(labels[stem], frame.shape[:2])
            key = stem if part == "." else f"{part}/{stem}"
            image_png = write_png(frame, out / part / f"{stem}.png")
            label_png = write_png(label, out / part / f"{stem}_label.png")
            items.append(picture_item(dataset, key, assign_split(key), image_png, label_png, root, modality,
                                      labels=dict(PSFH_CLASSES), label_format="map"))
    if not items:
        raise InputError(f"{root}: no image_mha/*.mha with a label_mha/*.mha of the same name")
    return items
