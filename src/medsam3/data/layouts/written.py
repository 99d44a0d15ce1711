"""What the converters that write readable copies of labels share (derived.py, psfh.py,
nucmm.py): the folder they write into, the PNG and NIfTI writers and the manifest item of a
written picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsam3.data.headers import read_header
from medsam3.data.layouts.common import relative
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError


def need_work_dir(work_dir, layout: str) -> Path:
    """The folder ``layout`` writes its copies into, or ArgumentError when none is given. It is
    not created here: the writers below create it with the first file, so a download refused
    before anything is written leaves no empty folder behind."""
    if not work_dir:
        raise ArgumentError(f"the {layout} layout writes readable copies of its labels: give work_dir "
                            "(-O work_dir=DIR; `data prepare` puts them beside the manifest)")
    return Path(work_dir).expanduser()


def write_png(array: np.ndarray, path: Path) -> Path:
    """Write ``array`` (uint8 grey or RGB, or uint16 grey) as PNG, atomically; an existing file is kept."""
    from PIL import Image as PILImage

    from medsam3.io import atomic_output

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as tmp:
        PILImage.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG")  # uint16 -> 16-bit PNG
    return path


def write_nifti(array: np.ndarray, path: Path, spacing) -> Path:
    """Write a (z, y, x) ``array`` as NIfTI with voxel size ``spacing`` ([x, y, z] mm), atomically;
    an existing file is kept."""
    import SimpleITK as sitk

    from medsam3.io import atomic_output

    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    image.SetSpacing([float(s) for s in spacing])
    with atomic_output(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=True)
    return path


def picture_item(dataset, key, split, image: Path, label: Path, root: Path, modality, *, labels=None,
                 instance_class=None, label_format="mask") -> ManifestItem:
    """The manifest item of a 2D picture and its label file (paths relative to ``root``)."""
    header = read_header(image)
    rgb = header.components == 3
    return ManifestItem(
        id=f"{dataset}/{key}", dataset=dataset, split=split, case=key, image=relative(image, root),
        label=relative(label, root), label_format=label_format, labels=labels or {},
        modality=modality or ("RGB" if rgb else None), dim=2, shape=list(header.shape),
        spacing=list(header.spacing), rgb=rgb, instance_class=instance_class)
