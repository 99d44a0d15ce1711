"""``convert_dataset``: any supported layout on disk -> a manifest file."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

from medsam3.data.manifest import Manifest, ManifestItem, write_manifest
from medsam3.errors import ArgumentError

log = logging.getLogger(__name__)


def _converters() -> dict[str, Callable[..., list[ManifestItem]]]:
    from medsam3.data.layouts.atlas import convert_atlas
    from medsam3.data.layouts.coco import convert_coco
    from medsam3.data.layouts.folder2d import convert_folder2d
    from medsam3.data.layouts.msd import convert_msd
    from medsam3.data.layouts.nnunet import convert_nnunet
    from medsam3.data.layouts.npz import convert_npz
    from medsam3.data.layouts.segthy import convert_segthy

    from medsam3.data.layouts.derived import CONVERTERS as DERIVED
    from medsam3.data.layouts.urocell import convert_urocell

    return {"nnunet": convert_nnunet, "msd": convert_msd, "folder2d": convert_folder2d,
            "coco": convert_coco, "npz": convert_npz, "atlas": convert_atlas, "urocell": convert_urocell,
            "segthy": convert_segthy,
            **DERIVED}


#: The layouts :func:`convert_dataset` reads, with what each expects.
LAYOUTS: dict[str, str] = {
    "nnunet": "nnU-Net raw folder: dataset.json, imagesTr/CASE_0000.nii.gz, labelsTr/CASE.nii.gz",
    "msd": "Medical Segmentation Decathlon task: dataset.json with a 'training' list, 3D or 4D NIfTI",
    "folder2d": "2D images/ + masks/ folders, or X.png beside X_mask.png; needs a class name for binary masks",
    "coco": "COCO JSON with polygon or RLE segmentations, images next to it or in images/",
    "npz": "CVPR-2025 BiomedSegFM .npz files (imgs, gts, spacing, text_prompts)",
    "atlas": "one image + one label map + a label names file (image=, label=, names=, mask=)",
    "urocell": "UroCell: data/<case>.nii.gz + mito|lyso|fv/binary/<case>.nii.gz, one item per class mask",
    "segthy": "SegThy ultrasound: ground_truth_data/US/<sweep>_US.nii + US_thyroid_label/<sweep>.nii (1 thyroid, 2/4 carotid, 3/5 jugular)",
    # these write readable copies of the labels under work_dir (medsam3.data.layouts.derived)
    "pannuke": "PanNuke folds: Fold N/images/foldN/images.npy + Fold N/masks/foldN/masks.npy (work_dir=)",
    "drive": "DRIVE: training|test/images/NN_*.tif + 1st_manual/NN_manual1.gif (work_dir=)",
    "glas": "GlaS: train_N.bmp + train_N_anno.bmp instance maps (work_dir=)",
    "hc18": "HC18: NNN_HC.png + NNN_HC_Annotation.png head outlines, filled (work_dir=)",
    "cystoid": "intraretinal cystoid fluid OCT: <case>/images/*.jpeg + <case>/masks/<one file>, holes filled (work_dir=)",
    "labelme": "LabelMe JSON per image: images/ + Annotations/ (BTXRD; work_dir=, class_name= or labels=)",
    "pictures": "BMP/GIF/PPM(.gz) pairs X.* + X<mask_marker>.* (PH2, STARE; work_dir=, class_name=)",
    "cholecseg8k": "CholecSeg8k: videoNN/videoNN_F/frame_N_endo.png + _endo_watershed_mask.png (work_dir=)",
    "monuseg": "MoNuSeg: Tissue Images/X.tif + Annotations/X.xml Aperio polygons (work_dir=)",
    "psfh": "PS-FH-AOP / PSFHS: image_mha/N.mha (3 equal planes) + label_mha/N.mha 0/1/2 (work_dir=)",
    "papila": "PAPILA: FundusImages/RETnnnOD.jpg + ExpertsSegmentations/Contours/*_disc|cup_exp1.txt (work_dir=, expert=)",
    "mucic": "MUCIC (CBIA): image-final_N.h5 + image-labels_N.h5 (HDF5 'Image') -> NIfTI (work_dir=, components=, spacing=)",
    "nucmm": "NucMM-Z: Image|Label/train|val/img_*.h5 + seg_*.h5 (HDF5 'main') -> NIfTI (work_dir=, spacing=, sample=)",
}

# Options every converter takes; the others are layout-specific.
_SPLIT_OPTIONS = ("val_fraction", "test_fraction", "seed")


def convert_items(layout: str, root: str | os.PathLike, *, progress: bool = True,
                  **options: Any) -> list[ManifestItem]:
    """The manifest items of a dataset in ``layout`` under ``root`` (nothing written)."""
    converters = _converters()
    if layout not in converters:
        raise ArgumentError(f"unknown layout {layout!r}; use one of {', '.join(converters)}")
    convert = converters[layout]
    import inspect

    accepted = set(inspect.signature(convert).parameters) - {"root"}
    options = {k: v for k, v in options.items() if v is not None}
    split_options = {k: options.pop(k) for k in _SPLIT_OPTIONS if k in options}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise ArgumentError(f"layout {layout!r} does not take option(s) {', '.join(unknown)}; "
                            f"it takes {', '.join(sorted(accepted - {'show_progress'}))}")
    if "val_fraction" in accepted:
        options.update(split_options)
    items = convert(Path(os.path.expanduser(str(root))), show_progress=progress, **options)
    if not items:
        raise ArgumentError(f"no labelled images found in {root} ({layout} layout)")
    if "val_fraction" not in accepted and any(split_options.get(k) for k in ("val_fraction", "test_fraction")):
        _resplit(items, **split_options)
    return items


def apply_class_map(items: list[ManifestItem], class_map: dict[str, str]) -> None:
    """Rename classes in place: ``{"cancer": "liver tumor"}``; ``{"*": "coronary artery"}``
    gives every class of the items that one name."""
    if not isinstance(class_map, dict) or not all(isinstance(v, str) and v.strip() for v in class_map.values()):
        raise ArgumentError(f"class_map must map class names to new names, got {class_map!r}")
    for item in items:
        rename = (lambda n: class_map.get(n, class_map.get("*", n)))
        item.labels = {v: rename(n) for v, n in item.labels.items()}
        item.regions = {rename(n): v for n, v in item.regions.items()}
        if item.instance_class is not None:
            item.instance_class = rename(item.instance_class)


def _resplit(items: list[ManifestItem], val_fraction: float = 0.0, test_fraction: float = 0.0,
             seed: int = 0) -> None:
    """Split items the layout left in ``train`` by case (never a test split the layout set)."""
    from medsam3.data.layouts.common import assign_split

    for item in items:
        if item.split == "train":
            item.split = assign_split(f"{item.dataset}/{item.case}", val_fraction, test_fraction, seed)


def convert_dataset(layout: str, root: str | os.PathLike, output: str | os.PathLike | None = None, *,
                    dataset: str | None = None, modality: str | None = None,
                    val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0,
                    check_geometry: bool = True, class_map: dict[str, str] | None = None,
                    progress: bool = True, **options: Any) -> Manifest:
    """Read a dataset as it lies on disk and write its manifest (``medsam3 data convert``).

    Args:
        layout: one of :data:`LAYOUTS`: ``nnunet``, ``msd``, ``folder2d``, ``coco``, ``npz``,
            ``atlas``.
        root: the dataset folder (for ``coco`` and ``npz`` also a single file).
        output: the manifest to write (``.jsonl``); ``None`` only returns it.
        dataset: the dataset name in the manifest (default: the folder name).
        modality: overrides the modality the layout implies (CT, MR, PT, XR, US, RGB, OTHER).
        val_fraction, test_fraction, seed: cases without a split of their own are split by
            a hash of their name, so adding cases never moves old ones between splits.
        check_geometry: refuse labels whose spacing / origin / direction differ from their
            image's (shapes are always compared).
        class_map: rename classes, ``{"cancer": "liver tumor"}``; ``{"*": NAME}`` renames all.
        progress: show a progress bar.
        **options: layout-specific: ``class_name``, ``labels``, ``colors``, ``images_dir``,
            ``masks_dir``, ``mask_suffix`` (folder2d); ``channels`` (nnunet); ``labels`` (npz);
            ``image``, ``label``, ``names``, ``mask``, ``mask_class``, ``mask_threshold`` (atlas).

    Returns:
        the :class:`Manifest` (its ``path`` is ``output``).

    Raises:
        ArgumentError: unknown layout or option, bad option values.
        InputError: the files do not form the layout (named in the message).
    """
    items = convert_items(layout, root, progress=progress, dataset=dataset, modality=modality,
                          val_fraction=val_fraction, test_fraction=test_fraction, seed=seed,
                          check_geometry=check_geometry, **options)
    if class_map:
        apply_class_map(items, class_map)
    root_path = Path(os.path.expanduser(str(root)))
    base = root_path if root_path.is_dir() else root_path.parent
    manifest = Manifest(items, base.resolve(), layout)
    if output is not None:
        manifest.path = write_manifest(items, output, base, layout)
        log.info("wrote %d items to %s", len(items), output)
    return manifest
