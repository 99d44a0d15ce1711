"""SegThy (TUM CAMP): tracked freehand 3D ultrasound of the neck with thyroid and vessel labels.

The ultrasound archive (US_data.zip) unpacks as ``US_volunteer_dataset/ground_truth_data/``
with ``US/<sweep>_US.nii`` volumes and ``US_thyroid_label/<sweep>.nii`` label maps of the same
sweep name (``005_P1_1_left``: volunteer, position, repeat, side). Despite the folder's name the
whole neck is annotated: 1 thyroid, 2 and 4 the common carotid arteries, 3 and 5 the internal
jugular veins (one per side). The volumes are read where they lie; the sweeps of one volunteer
(the first number) share a split. The MRI archive (MRI_volunteer_dataset) is not read.
"""

from __future__ import annotations

import re
from pathlib import Path

from medsam3.data.headers import check_pair, read_header
from medsam3.data.layouts.common import (
    assign_split,
    check_modality,
    is_hidden,
    listing,
    progress,
    relative,
    require_directory,
)
from medsam3.data.manifest import ManifestItem
from medsam3.errors import InputError

#: label value -> class (both sides of a vessel are one class)
SEGTHY_CLASSES = {"1": "thyroid gland", "2": "carotid artery", "3": "jugular vein",
                  "4": "carotid artery", "5": "jugular vein"}
_ENDINGS = (".nii.gz", ".nii")


def _stem(path: Path) -> str:
    name = path.name
    for ending in _ENDINGS:
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return path.stem


def convert_segthy(root: Path, *, dataset: str | None = None, modality: str | None = None,
                   val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0,
                   check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Items of SegThy's ultrasound download (see the module docstring)."""
    root = require_directory(root, "SegThy")
    modality = check_modality(modality) or "US"
    dataset = dataset or "segthy"
    folders = sorted(p for p in root.rglob("US") if p.is_dir() and not is_hidden(p)
                     and (p.parent / "US_thyroid_label").is_dir())
    if not folders:
        raise InputError(f"{root}: no ground_truth_data/US/ folder beside ground_truth_data/US_thyroid_label/ "
                         "(SegThy's US_data.zip: US_volunteer_dataset/ground_truth_data/)")
    items = []
    for volumes in folders:
        labels_dir = volumes.parent / "US_thyroid_label"
        labels = {_stem(p): p for p in labels_dir.iterdir() if p.name.lower().endswith(_ENDINGS) and not is_hidden(p)}
        images = {}
        for p in volumes.iterdir():
            if p.name.lower().endswith(_ENDINGS) and not is_hidden(p):
                stem = _stem(p)
                images[stem[:-3] if stem.lower().endswith("_us") else stem] = p
        orphans = sorted(set(labels) - set(images))
        if orphans:
            raise InputError(f"{labels_dir}: label(s) {listing(orphans)} have no volume <sweep>_US.nii in {volumes}")
        for sweep in progress(sorted(set(images) & set(labels)), "SegThy", enabled=show_progress):
            header = read_header(images[sweep])
            label = read_header(labels[sweep])
            check_pair(header, label, geometry=check_geometry)
            volunteer = re.split(r"[_\-]", sweep)[0]
            items.append(ManifestItem(
                id=f"{dataset}/{sweep}", dataset=dataset,
                split=assign_split(volunteer, val_fraction, test_fraction, seed), case=volunteer,
                image=relative(images[sweep], root), label=relative(labels[sweep], root), label_format="map",
                labels=dict(SEGTHY_CLASSES), modality=modality, dim=header.ndim, shape=list(header.shape),
                spacing=list(header.spacing)))
    if not items:
        raise InputError(f"{root}: no US/<sweep>_US.nii with a US_thyroid_label/<sweep>.nii")
    return items
