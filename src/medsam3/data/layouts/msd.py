"""Medical Segmentation Decathlon tasks, as downloaded (``TaskXX_Name.tar``).

Layout::

    TaskXX_Name/dataset.json     "modality": {"0": "FLAIR", ...}, "labels": {"0": "background", ...},
                                 "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}],
                                 "tensorImageSize": "3D" or "4D"
    TaskXX_Name/imagesTr/x.nii.gz   (4D for multi-modal tasks: BrainTumour, Prostate)
    TaskXX_Name/labelsTr/x.nii.gz

The ``training`` list is authoritative; the tarballs also carry macOS ``._x.nii.gz``
files, which are not images and are ignored. A 4D image gives one item per modality
(``channel``), all with the same label and split. Test images have no labels and are
not training data.
"""

from __future__ import annotations

from pathlib import Path

from medsam3.data.headers import check_pair, read_header
from medsam3.data.layouts.common import (
    check_modality,
    listing,
    modality_from_name,
    progress,
    read_json,
    relative,
    require_directory,
)
from medsam3.data.layouts.nnunet import channel_modalities, find_dataset_json, parse_labels
from medsam3.data.manifest import ManifestItem
from medsam3.errors import InputError


def convert_msd(root: Path, *, dataset: str | None = None, modality: str | None = None,
                check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Manifest items of a Decathlon task folder.

    Raises:
        InputError: no dataset.json or no ``training`` list, listed files missing, a 4D
            image whose channel count differs from ``modality``, a label off its image's grid.
    """
    root = require_directory(root, "Decathlon")
    meta_path = find_dataset_json(root)
    meta = read_json(meta_path)
    if not isinstance(meta, dict):
        raise InputError(f"{meta_path}: expected a JSON object")
    training = meta.get("training")
    if not isinstance(training, list) or not training:
        hint = (" (nnU-Net v2 datasets convert with --layout nnunet)" if "channel_names" in meta else "")
        raise InputError(f"{meta_path}: Decathlon tasks list their cases in 'training' "
                         f'([{{"image": ..., "label": ...}}]){hint}')
    dataset = dataset or root.name
    modality = check_modality(modality)
    channel_names = channel_modalities(meta, meta_path)
    labels, regions, ignore = parse_labels(meta.get("labels"), meta_path)

    pairs, missing = [], []
    for k, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{meta_path}: training entry {k} must have 'image' and 'label'")
        image, label = root / entry["image"], root / entry["label"]
        for p in (image, label):
            if not p.is_file():
                missing.append(relative(p, root))
        pairs.append((image, label))
    if missing:
        nnunet_style = any((root / "imagesTr").glob("*_0000.nii*"))
        hint = " (the images are named CASE_0000: convert with --layout nnunet)" if nnunet_style else ""
        raise InputError(f"{meta_path} lists files that are missing: {listing(missing)}{hint}")

    items: list[ManifestItem] = []
    for image_path, label_path in progress(pairs, f"Decathlon {dataset}", enabled=show_progress):
        image_h, label_h = read_header(image_path), read_header(label_path)
        check_pair(image_h, label_h, geometry=check_geometry)
        case = image_path.name.split(".")[0]
        if image_h.channels != len(channel_names) and not (image_h.channels == 1 and len(channel_names) == 1):
            raise InputError(f"{image_path} has {image_h.channels} channel(s) but {meta_path} declares "
                             f"{len(channel_names)} modalities {list(channel_names.values())}")
        common = dict(dataset=dataset, split="train", case=case, label=relative(label_path, root),
                      label_format="map", labels=labels, regions=regions, dim=label_h.ndim,
                      shape=list(label_h.shape), spacing=list(label_h.spacing), ignore_value=ignore,
                      image=relative(image_path, root))
        if image_h.channels == 1:
            name = channel_names[min(channel_names)]
            items.append(ManifestItem(id=f"{dataset}/{case}", modality=modality or modality_from_name(name),
                                      channel_name=name, **common))
            continue
        for c, name in channel_names.items():
            items.append(ManifestItem(id=f"{dataset}/{case}/{c}", modality=modality or modality_from_name(name),
                                      channel=c, channel_name=name, **common))
    return items
