"""2D image/mask folders, the way most 2D datasets ship.

Two arrangements are recognised, at any depth below the root:

* **paired folders**: a folder with an images folder and a masks folder side by side
  (``images/`` + ``masks/`` as in Kvasir-SEG; names are matched by word, so
  ``images_C1``/``masks_C1`` (PolypGen) and ``images``/``lung masks`` (COVID-QU-Ex) pair
  up; ``images_dir`` / ``masks_dir`` name them explicitly, e.g. ISIC 2018's
  ``ISIC2018_Task1-2_Training_Input`` / ``ISIC2018_Task1_Training_GroundTruth``). A mask is
  the image's name (any image ending) or the name plus a suffix such as ``_mask`` or
  ``_segmentation``.
* **masks beside images**: ``X.png`` next to ``X_mask.png`` (BUSI, US nerve), with extra
  masks of the same image as ``X_mask_1.png``; all masks of an image are OR-ed.

Masks are binary by default (foreground above half the file's maximum, so 0/1, 0/255 and
JPEG-compressed masks all work) and need ``class_name``. ``labels`` (value -> name) reads
them as integer label maps instead, ``colors`` (name -> RGB) as colour-coded masks.
Folder names containing train/val/test set the split (file names too with ``split_in_name``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from medsam3.data.headers import check_pair, read_header
from medsam3.data.layouts.common import (
    assign_split,
    check_modality,
    is_hidden,
    list_images,
    listing,
    progress,
    relative,
    require_directory,
    split_from_path,
    strip_ending,
    unsupported_pictures,
)
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError, InputError

IMAGE_DIR_WORDS = ("images", "image", "imgs", "img", "input", "inputs", "original", "originals", "frames")
MASK_DIR_WORDS = ("masks", "mask", "labels", "label", "gt", "gts", "groundtruth", "ground truth",
                  "segmentations", "segmentation", "annotations", "manual")
_IGNORE = 255  # the value of ignore_colors' pixels

MASK_SUFFIXES = ("_mask", "_segmentation", "_seg", "_gt", "_label", "_labels", "_anno",
                 "_annotation", "_manual1", "_1stho", "-mask", "_masks")


def _words(name: str) -> set[str]:
    return set(w for w in re.split(r"[_\-\s.]+", name.lower()) if w)


def _dir_kind(name: str) -> str | None:
    words = _words(name)
    lower = name.lower()
    is_mask = bool(words & set(MASK_DIR_WORDS)) or "groundtruth" in lower or "ground truth" in lower
    is_image = bool(words & set(IMAGE_DIR_WORDS))
    if is_mask and not is_image:
        return "masks"
    if is_image and not is_mask:
        return "images"
    return None


def _rest(name: str) -> str:
    """A folder name without its image/mask words: ``trainval-image`` -> ``trainval``."""
    words = [w for w in re.split(r"[_\-\s.]+", name.lower()) if w]
    kind_words = set(IMAGE_DIR_WORDS) | set(MASK_DIR_WORDS) | {"ground", "truth"}
    return " ".join(w for w in words if w not in kind_words)


def _find_groups(root: Path, images_dir: str | None, masks_dir: str | None) -> list[tuple[Path, Path]]:
    if bool(images_dir) != bool(masks_dir):
        raise ArgumentError("give both images_dir and masks_dir (or neither, to find them by name)")
    groups = []
    for parent in [root] + sorted(p for p in root.rglob("*") if p.is_dir() and not is_hidden(p)):
        if images_dir:
            im, ma = parent / images_dir, parent / masks_dir
            if im.is_dir() and ma.is_dir():
                groups.append((im, ma))
            continue
        children = [c for c in parent.iterdir() if c.is_dir() and not is_hidden(c)]
        images = [c for c in children if _dir_kind(c.name) == "images"]
        masks = [c for c in children if _dir_kind(c.name) == "masks"]
        for image_dir in images:
            # pair by the rest of the name: test-image/ + test-mask/, images_C1/ + masks_C1/
            partners = [m for m in masks if _rest(m.name) == _rest(image_dir.name)]
            if not partners and len(images) == 1:
                partners = masks
            if len(partners) > 1:  # COVID-QU-Ex: "infection masks" + "lung masks": ask which one
                raise InputError(f"{parent} has several mask folders ({listing([m.name for m in partners])}) "
                                 f"for {image_dir.name}/; choose one with masks_dir (--masks-dir)")
            if partners:
                groups.append((image_dir, partners[0]))
    return groups


def _mask_key(key: str, image_keys: set[str], suffixes) -> str | None:
    """The image key a mask key belongs to: itself, or minus a mask suffix and ``_N``."""
    if key in image_keys:
        return key
    lower = key.lower()
    for suffix in suffixes:
        m = re.match(rf"^(.*){re.escape(suffix.lower())}(?:_\d+)?$", lower)
        if m and key[: len(m.group(1))] in image_keys:
            return key[: len(m.group(1))]
    return None


def _pairs_in_group(images_dir: Path, masks_dir: Path, suffixes, skip_unpaired: bool) -> dict[Path, list[Path]]:
    images = {strip_ending(p.relative_to(images_dir).as_posix()): p for p in list_images(images_dir, True)}
    if not images:
        bad = unsupported_pictures(images_dir)
        hint = f" (found {listing([b.name for b in bad])}: convert them to PNG first)" if bad else ""
        raise InputError(f"{images_dir}: no images{hint}")
    pairs: dict[Path, list[Path]] = defaultdict(list)
    orphans = []
    for mask in list_images(masks_dir, True):
        key = _mask_key(strip_ending(mask.relative_to(masks_dir).as_posix()), set(images), suffixes)
        if key is None:
            orphans.append(mask.relative_to(masks_dir).as_posix())
        else:
            pairs[images[key]].append(mask)
    if orphans:
        raise InputError(f"{masks_dir}: mask(s) {listing(orphans)} match no image in {images_dir} "
                         f"(masks are named like the image, optionally with a suffix such as "
                         f"{', '.join(suffixes[:3])}; set mask_suffix / --mask-suffix)")
    unpaired = sorted(k for k, p in images.items() if p not in pairs)
    if unpaired and not skip_unpaired:
        raise InputError(f"{images_dir}: image(s) {listing(unpaired)} have no mask in {masks_dir} "
                         "(unpaired='skip' / --skip-unpaired leaves them out)")
    return pairs


def _pairs_side_by_side(root: Path, suffixes, skip_unpaired: bool) -> dict[Path, list[Path]]:
    pairs: dict[Path, list[Path]] = defaultdict(list)
    by_dir: dict[Path, list[Path]] = defaultdict(list)
    for p in list_images(root, True):
        by_dir[p.parent].append(p)
    for directory, files in by_dir.items():
        keys = {strip_ending(p.name): p for p in files}
        masks = {}
        for key, path in keys.items():
            owner = _mask_key(key, set(keys) - {key}, suffixes)
            if owner is not None and owner != key:
                masks[path] = owner
        images = {k: p for k, p in keys.items() if p not in masks}
        for mask, owner in masks.items():
            if owner in images:
                pairs[images[owner]].append(mask)
        if masks:
            unpaired = sorted(k for k, p in images.items() if p not in pairs)
            if unpaired and not skip_unpaired:
                raise InputError(f"{directory}: image(s) {listing(unpaired)} have no mask "
                                 f"(expected e.g. {unpaired[0]}{suffixes[0]}.png beside it)")
    return pairs


def convert_folder2d(root: Path, *, dataset: str | None = None, modality: str | None = None,
                     class_name: str | None = None, labels: dict | None = None,
                     colors: dict | None = None, images_dir: str | None = None,
                     masks_dir: str | None = None, mask_suffix: str | None = None,
                     unpaired: str = "error", split_in_name: bool = False, ignore_colors: list | None = None,
                     case_pattern: str | None = None,
                     val_fraction: float = 0.0, test_fraction: float = 0.0, seed: int = 0,
                     check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Manifest items of a folder of 2D images and masks (see the module docstring).

    Args:
        class_name: the class of binary masks ("polyp", "skin lesion").
        labels: ``{value: name}`` when the masks are integer label maps.
        colors: ``{name: [r, g, b]}`` (or a list of colours) when the masks are colour-coded.
        images_dir, masks_dir: folder names to pair (default: found by name).
        mask_suffix: the suffix of mask names (default: tried from a known list).
        unpaired: ``"error"`` (default) or ``"skip"``: what to do with images without a mask.
        ignore_colors: with ``colors``, ``[r, g, b]`` colours of unannotated pixels (m2caiSeg's
            "unknown"): read as the ignore value 255, neither background nor a class.
        case_pattern: a regular expression whose first group, found in the image's file name,
            names its case (the patient: ``^([A-Z]{4})_`` for BUS-UCLM's ``ANFO_005.png``), so a
            patient's images share a split.
        split_in_name: read the split from the image's file name too (``12_train_0_.png``,
            SIIM-ACR's PNG release), not only from its folders.
        check_geometry: unused: pictures carry no geometry, only their sizes are compared.

    Raises:
        ArgumentError: no class for binary masks, contradictory options.
        InputError: no pairs found, masks without images or images without masks,
            image and mask sizes that differ.
    """
    root = require_directory(root, "2D folder")
    modality = check_modality(modality)
    dataset = dataset or root.name
    given = [k for k, v in (("class_name", class_name), ("labels", labels), ("colors", colors)) if v]
    if len(given) > 1:
        raise ArgumentError(f"give only one of class_name, labels and colors (got {', '.join(given)})")
    if not given:
        raise ArgumentError(f"the masks in {root} carry no class name: give class_name "
                            "(--class-name polyp), labels ({\"1\": \"liver\", ...}) for label maps "
                            "or colors ({\"polyp\": [255, 0, 0]}) for colour-coded masks")
    if unpaired not in ("error", "skip"):
        raise ArgumentError(f"unpaired must be 'error' or 'skip', got {unpaired!r}")
    skip = unpaired == "skip"
    source: dict = {}
    if labels:
        label_format, names = "map", {str(int(k)): str(v) for k, v in labels.items()}
    elif colors:
        label_format = "color"
        names, source["colors"] = {}, {}
        for k, (name, rgb) in enumerate(colors.items(), start=1):
            shades = rgb if rgb and isinstance(rgb[0], (list, tuple)) else [rgb]
            if not all(len(c) == 3 for c in shades):
                raise ArgumentError(f"colour of {name!r} must be [r, g, b] or a list of them, got {rgb}")
            names[str(k)] = str(name)
            source["colors"][str(k)] = [[int(v) for v in c] for c in shades]
        if ignore_colors:
            shades = ignore_colors if isinstance(ignore_colors[0], (list, tuple)) else [ignore_colors]
            if not all(len(c) == 3 for c in shades) or len(colors) >= _IGNORE:
                raise ArgumentError(f"ignore_colors must be [r, g, b] or a list of them, got {ignore_colors}")
            source["colors"][str(_IGNORE)] = [[int(v) for v in c] for c in shades]
    else:
        label_format, names = "mask", {"1": str(class_name)}
    if ignore_colors and label_format != "color":
        raise ArgumentError("ignore_colors goes with colors (colour-coded masks)")
    suffixes = (mask_suffix,) if mask_suffix else MASK_SUFFIXES
    if case_pattern is not None:
        try:
            case_re = re.compile(case_pattern)
        except re.error as exc:
            raise ArgumentError(f"case_pattern {case_pattern!r} is not a regular expression: {exc}") from None
        if case_re.groups < 1:
            raise ArgumentError(f"case_pattern {case_pattern!r} needs a group naming the case, e.g. ^([A-Z]{{4}})_")

    groups = _find_groups(root, images_dir, masks_dir)
    pairs: dict[Path, list[Path]] = {}
    keys: dict[Path, str] = {}  # case names: folders above the images folder + name inside it
    parents = [im.parent for im, _ in groups]
    for im_dir, ma_dir in groups:
        group = _pairs_in_group(im_dir, ma_dir, suffixes, skip)
        above = im_dir.parent.relative_to(root).as_posix()
        if parents.count(im_dir.parent) > 1:  # trainval-image/ and test-image/ side by side
            above = im_dir.name if above == "." else f"{above}/{im_dir.name}"
        for image_path in group:
            inside = strip_ending(image_path.relative_to(im_dir).as_posix())
            keys[image_path] = inside if above == "." else f"{above}/{inside}"
        pairs.update(group)
    if not groups:
        if images_dir or masks_dir:
            raise InputError(f"{root}: no folder holds both {images_dir}/ and {masks_dir}/")
        pairs = _pairs_side_by_side(root, suffixes, skip)
    if not pairs:
        bad = unsupported_pictures(root)
        hint = f"; found {listing([b.name for b in bad])}, which medsam3 cannot read (convert to PNG)" if bad else ""
        raise InputError(f"{root}: no image/mask pairs: expected an images/ folder beside a masks/ folder "
                         f"(or images_dir/masks_dir), or masks named like X{suffixes[0]}.png beside X.png{hint}")

    items = []
    for image_path, masks in progress(sorted(pairs.items()), f"2D folder {dataset}", enabled=show_progress):
        masks = sorted(masks)
        image_h = read_header(image_path)
        if image_h.ndim != 2:
            raise InputError(f"{image_path} is {image_h.ndim}D; the folder2d layout is for 2D images")
        for mask in masks:
            mask_h = read_header(mask)
            check_pair(image_h, mask_h, geometry=False)
            if label_format == "map" and mask_h.components != 1:
                raise InputError(f"{mask} is a colour image; label maps hold one integer per pixel "
                                 "(use colors for colour-coded masks)")
        if label_format != "mask" and len(masks) > 1:
            raise InputError(f"{image_path} has several masks ({listing([m.name for m in masks])}); "
                             "only binary masks can be combined")
        rel = relative(image_path, root)
        key = keys.get(image_path) or strip_ending(rel)
        case = key
        if case_pattern is not None:
            found = case_re.search(image_path.name)
            if found is None:
                raise InputError(f"{image_path}: its name does not match case_pattern {case_pattern!r}")
            above = key.rpartition("/")[0]
            case = f"{above}/{found.group(1)}" if above else found.group(1)
        named = Path(rel).parts if split_in_name else Path(rel).parts[:-1]
        split = split_from_path(named) or assign_split(case, val_fraction, test_fraction, seed)
        rgb = image_h.components == 3
        items.append(ManifestItem(
            id=f"{dataset}/{key}", dataset=dataset, split=split, case=case, image=rel,
            label=[relative(m, root) for m in masks] if len(masks) > 1 else relative(masks[0], root),
            label_format=label_format, labels=names, modality=modality or ("RGB" if rgb else None),
            dim=2, shape=list(image_h.shape), spacing=list(image_h.spacing), rgb=rgb, source=dict(source),
            ignore_value=_IGNORE if ignore_colors else None))
    return items
