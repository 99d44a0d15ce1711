"""COCO instance-segmentation JSON (SAM3's own training format; ARCADE ships it too).

A COCO file holds ``images`` (``id``, ``file_name``, ``width``, ``height``),
``categories`` (``id``, ``name``) and ``annotations`` (``image_id``, ``category_id``,
``segmentation`` as polygons ``[[x0, y0, x1, y1, ...], ...]`` or run-length encoding
``{"size": [h, w], "counts": ...}``, compressed string or plain list, ``iscrowd``).
Every image becomes one manifest item whose label is the JSON file itself
(``label_format: "coco"``, ``source.coco_image_id``); masks are drawn when a sample
is made. Images without annotations stay in: every class is absent from them.

Image files are looked up, for ``file_name`` of the first image, next to the JSON file,
in ``images/`` beside or above it, in a folder named like the JSON file (COCO's
``annotations/instances_train2017.json`` -> ``train2017/``) and under the root.
"""

from __future__ import annotations

from collections import defaultdict
from functools import lru_cache
from pathlib import Path

import numpy as np

from medsam3.data.headers import read_header
from medsam3.data.layouts.common import (
    check_modality,
    listing,
    progress,
    read_json,
    relative,
    require_directory,
    split_from_path,
)
from medsam3.data.manifest import ManifestItem
from medsam3.errors import InputError


# ---------------------------------------------------------------------- run-length encoding
def rle_decode(counts, height: int, width: int) -> np.ndarray:
    """A COCO RLE (compressed string or list of counts) as a ``(height, width)`` bool mask.

    Runs alternate background/foreground starting with background, in column-major
    (Fortran) order, as pycocotools writes them.
    """
    if isinstance(counts, str):
        counts = _counts_from_string(counts)
    counts = np.asarray(counts, dtype=np.int64)
    total = height * width
    if counts.sum() != total or (counts < 0).any():
        raise ValueError(f"run lengths add up to {int(counts.sum())}, expected {height} x {width} = {total}")
    values = np.zeros(len(counts), dtype=bool)
    values[1::2] = True
    flat = np.repeat(values, counts)
    return flat.reshape((width, height)).T


def rle_encode(mask: np.ndarray, compressed: bool = True) -> dict:
    """A bool ``(h, w)`` mask as COCO RLE ``{"size": [h, w], "counts": ...}``."""
    mask = np.asarray(mask, dtype=bool)
    flat = mask.T.ravel()
    change = np.flatnonzero(np.diff(flat.astype(np.int8))) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    counts = _counts_to_string(runs) if compressed else [int(r) for r in runs]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def _counts_from_string(s: str) -> list[int]:
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def _counts_to_string(counts: list[int]) -> str:
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """COCO polygons ``[[x0, y0, x1, y1, ...], ...]`` as a bool mask.

    COCO coordinates run along pixel edges (pixel ``(r, c)`` spans ``[c, c + 1] x [r, r + 1]``);
    a pixel belongs to the polygon when its centre lies inside (even-odd rule), so the
    rectangle with corners (2, 3) and (10, 9) covers exactly 8 x 6 pixels.
    """
    from matplotlib.path import Path as PolygonPath

    mask = np.zeros((height, width), dtype=bool)
    for poly in polygons:
        xy = np.asarray(poly, dtype=float).reshape(-1, 2)
        if len(xy) < 3:
            continue
        c0, r0 = np.clip(np.floor(xy.min(axis=0)).astype(int), 0, [width, height])
        c1, r1 = np.clip(np.ceil(xy.max(axis=0)).astype(int) + 1, 0, [width, height])
        if c1 <= c0 or r1 <= r0:
            continue
        rr, cc = np.mgrid[r0:r1, c0:c1]
        centres = np.column_stack([cc.ravel() + 0.5, rr.ravel() + 0.5])
        inside = PolygonPath(xy).contains_points(centres).reshape(rr.shape)
        mask[r0:r1, c0:c1] ^= inside  # even-odd: a polygon inside another makes a hole
    return mask


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """One annotation's ``segmentation`` (polygons or RLE) as a ``(height, width)`` mask."""
    if isinstance(segmentation, list):
        return polygons_to_mask(segmentation, height, width)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        size = segmentation.get("size", [height, width])
        if list(size) != [height, width]:
            raise ValueError(f"RLE size {list(size)} differs from the image size [{height}, {width}]")
        return rle_decode(segmentation["counts"], height, width)
    raise ValueError("segmentation must be a list of polygons or an RLE dict with 'counts'")


# ---------------------------------------------------------------------- reading masks for samples
@lru_cache(maxsize=4)
def _index(json_path: str, mtime: float):
    data = read_json(Path(json_path))
    images = {int(im["id"]): im for im in data["images"]}
    by_image = defaultdict(list)
    for ann in data.get("annotations", []):
        by_image[int(ann["image_id"])].append(ann)
    return images, by_image


def coco_label_maps(json_path: str | Path, image_id: int) -> tuple[np.ndarray, np.ndarray]:
    """The category map and instance map of one image of a COCO file.

    Returns:
        ``(categories, instances)``, both ``(height, width)``: the category id of each pixel
        and ``k`` on the pixels of the image's ``k``-th annotation (1-based; 0 =
        background). Where annotations overlap, the later one wins.
    """
    json_path = Path(json_path)
    images, by_image = _index(str(json_path), json_path.stat().st_mtime)
    if image_id not in images:
        raise InputError(f"{json_path}: no image with id {image_id}")
    h, w = int(images[image_id]["height"]), int(images[image_id]["width"])
    anns = by_image.get(image_id, [])
    categories = np.zeros((h, w), dtype=np.uint16 if max((a["category_id"] for a in anns), default=0) > 255 else np.uint8)
    instances = np.zeros((h, w), dtype=np.uint16 if len(anns) > 255 else np.uint8)
    for k, ann in enumerate(anns, start=1):
        try:
            mask = annotation_mask(ann["segmentation"], h, w)
        except (ValueError, KeyError) as exc:
            raise InputError(f"{json_path}: annotation {ann.get('id', k)} of image {image_id}: {exc}") from None
        categories[mask] = int(ann["category_id"])
        instances[mask] = k
    return categories, instances


# ---------------------------------------------------------------------- converter
def _is_coco(data) -> bool:
    return isinstance(data, dict) and all(k in data for k in ("images", "annotations", "categories"))


def _find_json_files(root: Path) -> list[tuple[Path, dict]]:
    """COCO files at or below ``root`` with their parsed content (other JSON files are skipped)."""
    if root.is_file():
        return [(root, read_json(root))]
    found = []
    for path in sorted(root.rglob("*.json")):
        if path.name.startswith("."):
            continue
        try:
            data = read_json(path)
        except InputError:
            continue
        if _is_coco(data):
            found.append((path, data))
    return found


def _image_base(json_path: Path, root: Path, file_name: str) -> Path | None:
    stem = json_path.stem
    short = stem.replace("instances_", "")
    candidates = [json_path.parent, json_path.parent / "images", json_path.parent.parent / "images",
                  json_path.parent.parent, json_path.parent / short, json_path.parent.parent / short,
                  root, root / "images", root / short]
    for base in candidates:
        if (base / file_name).is_file():
            return base
    return None


def _validate(data: dict, path: Path) -> tuple[dict[int, dict], dict[int, str]]:
    try:
        categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        images = {int(im["id"]): im for im in data["images"]}
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: every category needs 'id' and 'name', every image 'id', "
                         "'file_name', 'width' and 'height'") from None
    if len(categories) != len(data["categories"]):
        raise InputError(f"{path}: category ids are not unique")
    if 0 in categories:
        raise InputError(f"{path}: category id 0 is reserved for the background in medsam3's label maps; "
                         "renumber the categories from 1")
    for im in images.values():
        if not all(k in im for k in ("file_name", "width", "height")):
            raise InputError(f"{path}: image {im.get('id')} needs 'file_name', 'width' and 'height'")
    for k, ann in enumerate(data["annotations"]):
        where = f"{path}: annotation {ann.get('id', k)}"
        if int(ann.get("image_id", -1)) not in images:
            raise InputError(f"{where} refers to image id {ann.get('image_id')}, which is not in 'images'")
        if int(ann.get("category_id", -1)) not in categories:
            raise InputError(f"{where} has category id {ann.get('category_id')}, which is not in 'categories'")
        seg = ann.get("segmentation")
        if not seg:
            raise InputError(f"{where} has no segmentation (boxes alone cannot train masks)")
        if isinstance(seg, dict):
            im = images[int(ann["image_id"])]
            if list(seg.get("size", [])) != [int(im["height"]), int(im["width"])]:
                raise InputError(f"{where}: RLE size {seg.get('size')} differs from image "
                                 f"{im['file_name']} ({im['height']} x {im['width']})")
        elif not (isinstance(seg, list) and all(isinstance(p, list) and len(p) >= 6 and len(p) % 2 == 0
                                                  for p in seg)):
            raise InputError(f"{where}: polygons must be lists of at least 3 x, y pairs")
    return images, categories


def convert_coco(root: Path, *, dataset: str | None = None, modality: str | None = None,
                 check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Manifest items of COCO JSON files (one file, or every COCO file below a folder).

    ``check_geometry`` is unused: pictures carry no geometry; sizes are always compared.
    The split comes from the JSON file's name or folder (``train.json``,
    ``annotations/instances_val2017.json``), else ``train``.

    Raises:
        InputError: no COCO file, bad ids or segmentations, image files not found, image
            sizes that differ from the JSON's width/height.
    """
    root_path = Path(root)
    if not root_path.exists():
        raise InputError(f"COCO dataset {root_path}: no such file or directory")
    if root_path.is_dir():
        root_path = require_directory(root_path, "COCO")
    modality = check_modality(modality)
    json_files = _find_json_files(root_path)
    base_root = root_path if root_path.is_dir() else root_path.parent
    if not json_files:
        raise InputError(f"{root_path}: no COCO JSON file (a JSON object with 'images', 'annotations' "
                         "and 'categories')")
    dataset = dataset or (base_root.name if root_path.is_dir() else root_path.stem)
    items: list[ManifestItem] = []
    for json_path, data in json_files:
        if not _is_coco(data):
            raise InputError(f"{json_path}: not a COCO file (needs 'images', 'annotations' and 'categories')")
        images, categories = _validate(data, json_path)
        if not images:
            continue
        first = next(iter(images.values()))["file_name"]
        base = _image_base(json_path, base_root, first)
        if base is None:
            raise InputError(f"{json_path}: cannot find image {first!r} next to the JSON file, in images/ "
                             f"or under {base_root}")
        missing = [im["file_name"] for im in images.values() if not (base / im["file_name"]).is_file()]
        if missing:
            raise InputError(f"{json_path}: image file(s) missing in {base}: {listing(missing)}")
        split = split_from_path([json_path.stem] + list(json_path.relative_to(base_root).parts[:-1])
                                if json_path.is_relative_to(base_root) else [json_path.stem]) or "train"
        labels = {str(k): v for k, v in sorted(categories.items())}
        label_rel = relative(json_path, base_root)
        for image_id, im in progress(sorted(images.items()), f"COCO {json_path.name}", enabled=show_progress):
            path = base / im["file_name"]
            header = read_header(path)
            if header.shape != (int(im["height"]), int(im["width"])):
                raise InputError(f"{path} is {header.shape[0]} x {header.shape[1]} pixels (height x width) but "
                                 f"{json_path} says {im['height']} x {im['width']}")
            rel = relative(path, base_root)
            items.append(ManifestItem(
                id=f"{dataset}/{split}/{image_id}", dataset=dataset, split=split,
                case=f"{split}/{Path(im['file_name']).stem}", image=rel, label=label_rel,
                label_format="coco", labels=labels,
                modality=modality or ("RGB" if header.components == 3 else None), dim=2,
                shape=list(header.shape), spacing=list(header.spacing), rgb=header.components == 3,
                source={"coco_image_id": image_id}))
    return items
