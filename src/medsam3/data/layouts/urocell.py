"""UroCell: FIB-SEM sub-volumes with one binary mask file per organelle class.

The repository (github.com/MancaZerovnikMekuc/UroCell) holds ``data/<case>.nii.gz``
(256^3 voxels, ~16 x 16 x 15 nm) and, per class, ``mito/``, ``lyso/``, ``fv/`` with
``binary/<case>.nii.gz`` (older versions: ``<class>/<case>.nii.gz``); not every class is
annotated in every case. Each (case, class) with a mask file becomes one item whose label
is that binary mask, so a class missing from a case is never taken as absent from it.
Golgi annotations (``golgi/``) are approximate except in two cases and are not read.
"""

from __future__ import annotations

from pathlib import Path

from medsam3.data.headers import check_pair, read_header
from medsam3.data.layouts.common import assign_split, check_modality, progress, relative, require_directory
from medsam3.data.manifest import ManifestItem
from medsam3.errors import InputError

#: class folder -> class name
UROCELL_CLASSES = {"mito": "mitochondrion", "lyso": "endolysosome", "fv": "fusiform vesicle"}


def convert_urocell(root: Path, *, dataset: str | None = None, modality: str | None = None,
                    val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0,
                    check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Items of a UroCell checkout (see the module docstring); a case's items share a split."""
    root = require_directory(root, "UroCell")
    modality = check_modality(modality) or "OTHER"
    dataset = dataset or "urocell"
    data = root / "data"
    volumes = sorted(data.glob("*.nii.gz")) if data.is_dir() else []
    if not volumes:
        raise InputError(f"{root}: no data/<case>.nii.gz volumes (a UroCell checkout has data/, mito/, lyso/, fv/)")
    items = []
    for volume in progress(volumes, "UroCell", enabled=show_progress):
        case = volume.name[: -len(".nii.gz")]
        header = read_header(volume)
        split = assign_split(case, val_fraction, test_fraction, seed)
        for folder, name in UROCELL_CLASSES.items():
            mask = next((p for p in (root / folder / "binary" / volume.name, root / folder / volume.name)
                         if p.is_file()), None)
            if mask is None:
                continue
            check_pair(header, read_header(mask), geometry=check_geometry)
            items.append(ManifestItem(
                id=f"{dataset}/{case}/{folder}", dataset=dataset, split=split, case=case,
                image=relative(volume, root), label=relative(mask, root), label_format="mask",
                labels={"1": name}, modality=modality, dim=3, shape=list(header.shape),
                spacing=list(header.spacing)))
    if not items:
        raise InputError(f"{root}: no class masks ({', '.join(f'{f}/binary/<case>.nii.gz' for f in UROCELL_CLASSES)})")
    return items
