"""Datasets whose labels medsam3 cannot read as downloaded: written out once, then listed.

Each converter here reads one dataset's own download layout and writes what medsam3 reads
(PNG pictures and label maps) under ``work_dir``, never next to the inputs, skipping files
already there from an earlier run; the manifest then lists the written labels (and the
original images where medsam3 reads them: TIFF, JPEG, PNG).

* ``pannuke``: ``Fold N/images/foldN/images.npy`` (N x 256 x 256 x 3, float 0-255) and
  ``Fold N/masks/foldN/masks.npy`` (N x 256 x 256 x 6 instance ids per channel: neoplastic,
  inflammatory, connective/soft tissue, dead, epithelial, background) -> one RGB PNG and one
  class label map per patch; fold 1 train, 2 val, 3 test (the folds' own split).
* ``drive``: ``training|test/images/NN_training.tif`` with ``1st_manual/NN_manual1.gif``
  vessel masks -> PNG masks (the FOV masks in ``mask/`` are not labels).
* ``glas``: Warwick QU ``train_N.bmp`` + ``train_N_anno.bmp`` (``testA_``, ``testB_``):
  BMP pictures and gland instance maps -> PNG; every gland an instance of ``gland``.
* ``hc18``: ``training_set/NNN_HC.png`` + ``NNN_HC_Annotation.png`` (the head's outline, an
  ellipse line) -> the filled head as a mask.
* ``cystoid``: intraretinal cystoid fluid OCT, ``<case>/images/*.jpeg`` + the case's mask in
  ``<case>/masks/`` (channel 0, holes filled) -> binary PNG masks.
* ``labelme``: ``images/X.jpeg`` + ``Annotations/X.json`` (LabelMe shapes, BTXRD; PCMMD's
  ``masks/``): polygons rasterised (COCO pixel convention), rectangles (detection boxes) left
  out; with several annotation folders the keys carry the folder.
* ``psfh`` (PS-FH-AOP MetaImage frames), ``papila`` (PAPILA contour text files),
  ``nucmm`` (NucMM-Z HDF5 blocks) and ``mucic`` (CBIA's HDF5 stacks; both written as NIfTI)
  live in their own modules and are listed
  here, with the helpers of :mod:`.written`.
* ``cholecseg8k``: ``videoNN/videoNN_FFFFF/frame_N_endo.png`` with
  ``frame_N_endo_watershed_mask.png`` (grey codes in RGB: 50 background, 11 abdominal wall,
  21 liver, ...; 255 the 1-pixel edges and 0 unannotated pixels) -> one-channel label maps
  keeping the codes, 0 and 255 both written as 255 (``ignore_value``).
* ``monuseg``: ``Tissue Images/X.tif`` + ``Annotations/X.xml`` (Aperio XML, one polygon per
  nucleus; the test set has both in one folder) -> instance maps (16-bit PNG).
* ``pictures``: BMP / GIF / PPM(.gz) image and mask pairs matched by a mask marker in the
  name (``_lesion``, ``.ah``): PH2's case folders, STARE's ``imXXXX.ppm(.gz)`` +
  ``imXXXX.ah.ppm(.gz)``.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import re
from pathlib import Path
from typing import Callable

import numpy as np

from medsam3.data.headers import read_header
from medsam3.data.layouts.common import (
    assign_split,
    check_modality,
    find_folders,
    is_hidden,
    listing,
    progress,
    require_directory,
)
from medsam3.data.layouts.mucic import convert_mucic
from medsam3.data.layouts.nucmm import convert_nucmm
from medsam3.data.layouts.papila import convert_papila
from medsam3.data.layouts.psfh import convert_psfh
from medsam3.data.layouts.written import need_work_dir as _need_work_dir
from medsam3.data.layouts.written import picture_item as _item
from medsam3.data.layouts.written import write_png as _write_png
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError, InputError

#: PanNuke's mask channels 0-4 (channel 5 is background), as the dataset's README names them.
PANNUKE_CLASSES = ("neoplastic cell nucleus", "inflammatory cell nucleus", "connective tissue cell nucleus",
                   "dead cell nucleus", "epithelial cell nucleus")
_PANNUKE_SPLITS = {1: "train", 2: "val", 3: "test"}


def _read_picture(path: Path) -> np.ndarray:
    """Any picture PIL reads (BMP, GIF, PPM, also gzipped ``.ppm.gz``) as an array."""
    from PIL import Image as PILImage

    try:
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as fh:
                data = io.BytesIO(fh.read())
            with PILImage.open(data) as picture:
                return np.asarray(picture.convert("RGB") if picture.mode not in ("L", "RGB") else picture)
        with PILImage.open(path) as picture:
            if picture.mode in ("P", "1", "LA", "RGBA", "PA"):
                picture = picture.convert("RGB" if picture.mode in ("RGBA", "PA") else "L")
            return np.asarray(picture)
    except Exception as exc:  # PIL raises many kinds; the user needs one line
        raise InputError(f"cannot read {path}: {exc}") from None


def _grey(array: np.ndarray) -> np.ndarray:
    return array.max(axis=-1) if array.ndim == 3 else array


def _label_files(root: Path, suffix: str, image_suffix: str, missing: str, thing: str = "image"
                 ) -> list[tuple[str, Path, Path]]:
    """``(key, label file, image file)`` for every ``*<suffix>`` under ``root`` (sorted, hidden
    files left out), its image ``<key><image_suffix>`` beside it. Raises InputError: no label
    file (``missing`` tells the expected layout), or a label file without its image."""
    labels = sorted(p for p in root.rglob(f"*{suffix}") if not is_hidden(p))
    if not labels:
        raise InputError(f"{root}: no '*{suffix}' ({missing})")
    pairs = []
    for label in labels:
        key = label.name[: -len(suffix)]
        image = label.with_name(key + image_suffix)
        if not image.exists():
            raise InputError(f"{label}: no {thing} {image.name} beside it")
        pairs.append((key, label, image))
    return pairs


def _check_size(image: Path, shape, label_name: str) -> None:
    h = read_header(image)
    if tuple(h.shape) != tuple(shape[:2]):
        raise InputError(f"{label_name} is {shape[0]} x {shape[1]} pixels but {image} is "
                         f"{h.shape[0]} x {h.shape[1]}")


# ------------------------------------------------------------------------------- PanNuke
def convert_pannuke(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                    modality: str | None = None, check_geometry: bool = True,
                    show_progress: bool = True) -> list[ManifestItem]:
    """PanNuke's three folds of ``.npy`` arrays (see the module docstring)."""
    root = require_directory(root, "PanNuke")
    out = _need_work_dir(work_dir, "pannuke")
    modality = check_modality(modality) or "RGB"
    dataset = dataset or "pannuke"
    folds = []
    for images_npy in sorted(p for p in root.rglob("images.npy") if not is_hidden(p)):
        fold_name = images_npy.parent.name  # fold1
        m = re.fullmatch(r"fold\s*(\d+)", fold_name.lower().replace("_", ""))
        if not m:
            raise InputError(f"{images_npy}: expected it in a folder named foldN (Fold N/images/foldN/images.npy)")
        masks = [p for p in root.rglob("masks.npy") if p.parent.name == fold_name]
        if len(masks) != 1:
            raise InputError(f"{images_npy}: found {len(masks)} masks.npy for {fold_name} "
                             f"(expected Fold N/masks/{fold_name}/masks.npy)")
        folds.append((int(m.group(1)), images_npy, masks[0]))
    if not folds:
        raise InputError(f"{root}: no images.npy (PanNuke unpacks as Fold N/images/foldN/images.npy)")
    labels = {str(k + 1): name for k, name in enumerate(PANNUKE_CLASSES)}
    items = []
    for fold, images_npy, masks_npy in folds:
        images = np.load(images_npy, mmap_mode="r")
        masks = np.load(masks_npy, mmap_mode="r")
        if images.ndim != 4 or images.shape[-1] != 3 or masks.ndim != 4 or masks.shape[-1] != 6 \
                or masks.shape[:3] != images.shape[:3]:
            raise InputError(f"{images_npy} {tuple(images.shape)} and {masks_npy} {tuple(masks.shape)}: "
                             "expected N x H x W x 3 images and N x H x W x 6 instance masks")
        split = _PANNUKE_SPLITS.get(fold, "train")
        for i in progress(range(images.shape[0]), f"PanNuke fold {fold}", enabled=show_progress):
            key = f"fold{fold}/{i:05d}"
            image_png = out / f"fold{fold}" / f"{i:05d}.png"
            label_png = out / f"fold{fold}" / f"{i:05d}_label.png"
            if not (image_png.exists() and label_png.exists()):
                _write_png(np.clip(np.asarray(images[i]), 0, 255).astype(np.uint8), image_png)
                typed = np.asarray(masks[i][..., :5]) > 0
                label = np.zeros(typed.shape[:2], dtype=np.uint8)
                for k in range(5):  # a pixel in two channels (never in the release) keeps the later type
                    label[typed[..., k]] = k + 1
                _write_png(label, label_png)
            items.append(_item(dataset, key, split, image_png, label_png, root, modality,
                               labels=labels, label_format="map"))
    return items


# --------------------------------------------------------------------------------- DRIVE
def convert_drive(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                  modality: str | None = None, class_name: str = "retinal blood vessel",
                  check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """DRIVE's ``training/`` and ``test/`` folders (see the module docstring); images without a
    first-observer mask are left out (some copies ship the test set without)."""
    root = require_directory(root, "DRIVE")
    out = _need_work_dir(work_dir, "drive")
    modality = check_modality(modality) or "RGB"
    dataset = dataset or "drive"
    items = []
    for images_dir in find_folders(root, "images"):
        manual_dir = images_dir.parent / "1st_manual"
        if not manual_dir.is_dir():
            continue
        part = images_dir.parent.name.lower()
        split = "test" if part.startswith("test") else "train"
        for image in sorted(images_dir.glob("*.tif")):
            number = image.stem.split("_")[0]
            gif = manual_dir / f"{number}_manual1.gif"
            if not gif.exists():
                continue
            mask = _grey(_read_picture(gif))
            _check_size(image, mask.shape, str(gif))
            png = _write_png(((mask > mask.max() / 2) * 255).astype(np.uint8) if mask.max() else
                             np.zeros(mask.shape, np.uint8), out / part / f"{number}_manual1.png")
            items.append(_item(dataset, f"{part}/{number}", split, image, png, root, modality,
                               labels={"1": class_name}))
    if not items:
        raise InputError(f"{root}: no DRIVE pairs (expected training/images/NN_training.tif with "
                         "training/1st_manual/NN_manual1.gif)")
    return items


# ---------------------------------------------------------------------------------- GlaS
def convert_glas(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                 modality: str | None = None, class_name: str = "gland", check_geometry: bool = True,
                 show_progress: bool = True) -> list[ManifestItem]:
    """GlaS (Warwick QU): BMP images with ``_anno.bmp`` instance maps, written as PNG."""
    root = require_directory(root, "GlaS")
    out = _need_work_dir(work_dir, "glas")
    modality = check_modality(modality) or "RGB"
    dataset = dataset or "glas"
    items = []
    pairs = _label_files(root, "_anno.bmp", ".bmp", "GlaS ships train_N.bmp with train_N_anno.bmp")
    for key, anno, image in progress(pairs, "GlaS", enabled=show_progress):
        picture = _read_picture(image)
        instances = _grey(_read_picture(anno))
        if picture.shape[:2] != instances.shape:
            raise InputError(f"{anno} is {instances.shape} but {image} is {picture.shape[:2]}")
        image_png = _write_png(picture.astype(np.uint8), out / f"{key}.png")
        dtype = np.uint8 if instances.max() < 256 else np.uint16
        label_png = _write_png(instances.astype(dtype), out / f"{key}_anno.png")
        split = "train" if key.lower().startswith("train") else "test"
        items.append(_item(dataset, key, split, image_png, label_png, root, modality,
                           instance_class=class_name, label_format="map"))
    return items


# ---------------------------------------------------------------------------------- HC18
def convert_hc18(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                 modality: str | None = None, class_name: str = "fetal head", check_geometry: bool = True,
                 show_progress: bool = True) -> list[ManifestItem]:
    """HC18: each ``_Annotation.png`` outline filled into the head's mask."""
    from scipy.ndimage import binary_fill_holes

    root = require_directory(root, "HC18")
    out = _need_work_dir(work_dir, "hc18")
    modality = check_modality(modality) or "US"
    dataset = dataset or "hc18"
    items = []
    pairs = _label_files(root, "_Annotation.png", ".png", "HC18's training_set/NNN_HC_Annotation.png")
    for key, outline, image in progress(pairs, "HC18", enabled=show_progress):
        line = _grey(_read_picture(outline)) > 0
        filled = binary_fill_holes(line)
        if filled.sum() <= line.sum():  # an open outline fills nothing: say which file
            raise InputError(f"{outline}: the head outline is not closed, nothing to fill")
        _check_size(image, filled.shape, str(outline))
        png = _write_png((filled * 255).astype(np.uint8), out / f"{key}_head.png")
        items.append(_item(dataset, key, "train", image, png, root, modality, labels={"1": class_name}))
    return items


# ------------------------------------------------------------------------------- OCT cystoid fluid
def _case_mask(masks: Path, image: Path) -> Path:
    """The mask of ``image`` in its case's ``masks/`` folder: the file of the same stem, else the
    folder's only file (the download holds one mask per case)."""
    files = sorted(p for p in masks.iterdir() if p.is_file() and not is_hidden(p))
    same = [p for p in files if p.stem == image.stem]
    if same:
        return same[0]
    if len(files) == 1:
        return files[0]
    if not files:
        raise InputError(f"{masks} is empty: no mask for {image}")
    raise InputError(f"{masks}: {len(files)} files and none named {image.stem}.*: which one is the "
                     f"mask of {image} is not known")


def convert_cystoid(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                    modality: str | None = None, class_name: str = "intraretinal cystoid fluid",
                    check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Intraretinal cystoid fluid (Kaggle zeeshanahmed13): ``<case>/images/*.jpeg`` with the
    case's mask in ``<case>/masks/``; channel 0 above half its maximum, holes filled (the masks
    may hold outlines), written as one binary PNG per image. The case is the folder above
    ``images/``."""
    from scipy.ndimage import binary_fill_holes

    root = require_directory(root, "intraretinal cystoid fluid")
    out = _need_work_dir(work_dir, "cystoid")
    modality = check_modality(modality) or "OTHER"
    dataset = dataset or "intraretinal-cystoid-fluid"
    folders = find_folders(root, "images")
    pairs = []
    for images in folders:
        masks = images.parent / "masks"
        if not masks.is_dir():
            raise InputError(f"{images}: no masks/ folder beside it (<case>/images/*.jpeg + <case>/masks/)")
        pictures = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpeg", ".jpg", ".png")
                          and not is_hidden(p))
        pairs += [(images.parent, picture, _case_mask(masks, picture)) for picture in pictures]
    if not pairs:
        raise InputError(f"{root}: no <case>/images/*.jpeg with a <case>/masks/ folder")
    base = Path(os.path.commonpath([str(case.parent) for case, _, _ in pairs]))
    items = []
    for case, image, mask_file in progress(pairs, "cystoid fluid", enabled=show_progress):
        channel = _read_picture(mask_file)
        channel = channel[..., 0] if channel.ndim == 3 else channel
        top = int(channel.max())
        filled = binary_fill_holes(channel > top / 2) if top else np.zeros(channel.shape, bool)
        _check_size(image, filled.shape, str(mask_file))
        key = f"{case.relative_to(base).as_posix().replace('/', '_')}_{image.stem}"
        png = _write_png((filled * 255).astype(np.uint8), out / f"{key}.png")
        item = _item(dataset, key, "train", image, png, root, modality, labels={"1": class_name})
        item.case = case.relative_to(base).as_posix()
        items.append(item)
    return items


# ------------------------------------------------------------------------------- LabelMe
def convert_labelme(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                    modality: str | None = None, class_name: str | None = None,
                    labels: dict | None = None, images_dir: str = "images",
                    annotations_dir: str = "Annotations", check_geometry: bool = True,
                    show_progress: bool = True) -> list[ManifestItem]:
    """LabelMe JSON per image (BTXRD): polygons -> masks. ``class_name`` gives every shape one
    class; ``labels`` maps shape labels to classes (unlisted shapes are left out)."""
    from medsam3.data.layouts.coco import polygons_to_mask

    root = require_directory(root, "LabelMe")
    out = _need_work_dir(work_dir, "labelme")
    modality = check_modality(modality)
    dataset = dataset or root.name
    if bool(class_name) == bool(labels):
        raise ArgumentError("give class_name (every shape one class) or labels ({shape label: class})")
    ann_dirs = find_folders(root, annotations_dir)
    if not ann_dirs:
        raise InputError(f"{root}: no {annotations_dir}/ folder of LabelMe JSON files")
    classes = sorted(set(labels.values())) if labels else [class_name]
    value = {name: k + 1 for k, name in enumerate(classes)}
    items = []
    for ann_dir in ann_dirs:
        img_dir = ann_dir.parent / images_dir
        for path in progress(sorted(ann_dir.glob("*.json")), "LabelMe", enabled=show_progress):
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                shapes = data["shapes"]
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError) as exc:
                raise InputError(f"{path}: not a LabelMe file ({exc})") from None
            candidates = [img_dir / Path(str(data.get("imagePath", ""))).name] + \
                sorted(p for p in img_dir.glob(path.stem + ".*") if p.suffix.lower() in (".jpeg", ".jpg", ".png"))
            image = next((c for c in candidates if c.is_file()), None)
            if image is None:
                raise InputError(f"{path}: no image {path.stem}.* in {img_dir}")
            h = read_header(image)
            height, width = h.shape[:2]
            label = np.zeros((height, width), dtype=np.uint8)
            for shape in shapes:
                if shape.get("shape_type", "polygon") != "polygon":
                    continue  # rectangles are the detection boxes of the same tumours
                name = class_name or (labels or {}).get(str(shape.get("label")))
                if name is None:
                    continue
                points = np.asarray(shape.get("points", []), dtype=float).reshape(-1)
                label[polygons_to_mask([points.tolist()], height, width)] = value[name]
            # several annotation folders (PCMMD's 'plasma cells/' and 'non-plasma cells/'): keys
            # and written labels carry the folder, so equal file names do not collide
            part = ann_dir.parent.relative_to(root).as_posix() if len(ann_dirs) > 1 else "."
            key = path.stem if part == "." else f"{part}/{path.stem}"
            png = _write_png(label, out / part / f"{path.stem}.png")
            items.append(_item(dataset, key, assign_split(key), image, png, root, modality,
                               labels={str(v): n for n, v in value.items()}, label_format="map"))
    if not items:
        raise InputError(f"{root}: no LabelMe JSON files in {listing([str(d) for d in ann_dirs])}")
    return items


# ------------------------------------------------------------------------------ pictures
def convert_pictures(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                     modality: str | None = None, class_name: str | None = None,
                     mask_marker: str = "_lesion", check_geometry: bool = True,
                     show_progress: bool = True) -> list[ManifestItem]:
    """BMP / GIF / PPM(.gz) pairs: a mask's file name is its image's plus ``mask_marker``
    before the ending (``IMD002_lesion.bmp`` for ``IMD002.bmp``, ``im0001.ah.ppm`` for
    ``im0001.ppm``), anywhere below the root. Both are written as PNG."""
    root = require_directory(root, "pictures")
    out = _need_work_dir(work_dir, "pictures")
    modality = check_modality(modality)
    dataset = dataset or root.name
    if not class_name:
        raise ArgumentError("the masks carry no class name: give class_name")
    endings = (".bmp", ".gif", ".ppm", ".ppm.gz", ".pgm", ".pgm.gz")

    def split_name(p: Path):
        lower = p.name.lower()
        for ending in sorted(endings, key=len, reverse=True):
            if lower.endswith(ending):
                return p.name[: -len(ending)]
        return None

    files = [p for p in root.rglob("*") if p.is_file() and not is_hidden(p) and split_name(p) is not None]
    stems: dict[str, Path] = {}
    masks: dict[str, Path] = {}
    for p in files:
        stem = split_name(p)
        if stem.endswith(mask_marker):
            masks[stem[: -len(mask_marker)]] = p
        elif stem not in stems:
            stems[stem] = p
    pairs = sorted((s, stems[s], masks[s]) for s in masks if s in stems)
    if not pairs:
        raise InputError(f"{root}: no picture pairs X{{.bmp,.gif,.ppm(.gz)}} + X{mask_marker}.* "
                         f"(set mask_marker)")
    items = []
    for stem, image, mask in progress(pairs, "pictures", enabled=show_progress):
        picture = _read_picture(image)
        m = _grey(_read_picture(mask))
        if picture.shape[:2] != m.shape:
            raise InputError(f"{mask} is {m.shape} but {image} is {picture.shape[:2]}")
        image_png = _write_png(picture.astype(np.uint8), out / f"{stem}.png")
        mask_png = _write_png(((m > m.max() / 2) * 255).astype(np.uint8) if m.max() else
                              np.zeros(m.shape, np.uint8), out / f"{stem}_mask.png")
        items.append(_item(dataset, stem, assign_split(stem), image_png, mask_png, root, modality,
                           labels={"1": class_name}))
    return items


# --------------------------------------------------------------------------- CholecSeg8k
#: Watershed-mask grey codes -> classes (the dataset's Kaggle page; 50 is background).
CHOLECSEG8K_CODES = {11: "abdominal wall", 21: "liver", 13: "gastrointestinal tract", 12: "fat", 31: "grasper",
                     23: "connective tissue", 24: "blood", 25: "cystic duct", 32: "electrocautery hook",
                     22: "gallbladder", 33: "hepatic vein", 5: "liver ligament"}
_UNANNOTATED = 255


def convert_cholecseg8k(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                        modality: str | None = None, check_geometry: bool = True,
                        show_progress: bool = True) -> list[ManifestItem]:
    """CholecSeg8k's watershed masks as one-channel label maps (see the module docstring);
    each video is one case, so a video's frames share a split."""
    root = require_directory(root, "CholecSeg8k")
    out = _need_work_dir(work_dir, "cholecseg8k")
    modality = check_modality(modality) or "RGB"
    dataset = dataset or "cholecseg8k"
    pairs = _label_files(root, "_endo_watershed_mask.png", "_endo.png",
                         "CholecSeg8k: videoNN/videoNN_FFFFF/frame_N_endo_watershed_mask.png", thing="frame")
    labels = {str(code): name for code, name in CHOLECSEG8K_CODES.items()}
    items = []
    for _key, mask, image in progress(pairs, "CholecSeg8k", enabled=show_progress):
        codes = _read_picture(mask)
        codes = codes[..., 0] if codes.ndim == 3 else codes  # grey codes: R = G = B
        unknown = sorted(set(np.unique(codes).tolist()) - set(CHOLECSEG8K_CODES) - {0, 50, 255})
        if unknown:
            raise InputError(f"{mask}: grey values {unknown} are not CholecSeg8k codes "
                             f"(50 background, {', '.join(str(c) for c in CHOLECSEG8K_CODES)}, 0/255 unannotated)")
        label = codes.astype(np.uint8).copy()
        label[codes == 0] = _UNANNOTATED
        _check_size(image, label.shape, str(mask))
        rel = mask.relative_to(root)
        key = rel.with_name(mask.name.replace("_endo_watershed_mask.png", "")).as_posix()
        png = _write_png(label, out / rel.with_name(mask.name.replace(".png", "_labels.png")))
        video = rel.parts[0]
        item = _item(dataset, key, assign_split(video), image, png, root, modality, labels=labels,
                     label_format="map")
        item.case, item.ignore_value = video, _UNANNOTATED
        items.append(item)
    return items


# ------------------------------------------------------------------------------- MoNuSeg
def _aperio_polygons(path: Path) -> list[np.ndarray]:
    import xml.etree.ElementTree as ET

    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise InputError(f"{path}: not an Aperio XML file ({exc})") from None
    polygons = []
    for region in tree.iter("Region"):
        points = [(float(v.get("X")), float(v.get("Y"))) for v in region.iter("Vertex")]
        if len(points) >= 3:
            polygons.append(np.asarray(points))
    return polygons


def convert_monuseg(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                    modality: str | None = None, class_name: str = "cell nucleus", check_geometry: bool = True,
                    show_progress: bool = True) -> list[ManifestItem]:
    """MoNuSeg: every Aperio XML region one nucleus instance (later regions drawn over earlier)."""
    from medsam3.data.layouts.coco import polygons_to_mask

    root = require_directory(root, "MoNuSeg")
    out = _need_work_dir(work_dir, "monuseg")
    modality = check_modality(modality) or "RGB"
    dataset = dataset or "monuseg"
    xmls = sorted(p for p in root.rglob("*.xml") if not is_hidden(p))
    if not xmls:
        raise InputError(f"{root}: no Aperio .xml annotations (MoNuSeg: Annotations/X.xml)")
    items = []
    for xml in progress(xmls, "MoNuSeg", enabled=show_progress):
        places = [xml.with_suffix(".tif"), xml.parent.parent / "Tissue Images" / f"{xml.stem}.tif"]
        image = next((p for p in places if p.exists()), None)
        if image is None:
            raise InputError(f"{xml}: no image {xml.stem}.tif beside it or in ../Tissue Images/")
        h = read_header(image)
        height, width = h.shape[:2]
        instances = np.zeros((height, width), dtype=np.uint16)
        for k, polygon in enumerate(_aperio_polygons(xml), start=1):
            instances[polygons_to_mask([polygon.reshape(-1).tolist()], height, width)] = k
        png = _write_png(instances, out / f"{xml.stem}_instances.png")
        split = "test" if "test" in xml.relative_to(root).as_posix().lower() else "train"
        items.append(_item(dataset, xml.stem, split, image, png, root, modality,
                           instance_class=class_name, label_format="map"))
    return items


CONVERTERS: dict[str, Callable[..., list[ManifestItem]]] = {
    "pannuke": convert_pannuke, "drive": convert_drive, "glas": convert_glas, "hc18": convert_hc18,
    "labelme": convert_labelme, "pictures": convert_pictures, "cholecseg8k": convert_cholecseg8k,
    "monuseg": convert_monuseg, "psfh": convert_psfh,
    "papila": convert_papila, "nucmm": convert_nucmm, "cystoid": convert_cystoid,
    "mucic": convert_mucic,
}
