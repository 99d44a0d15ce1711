"""The manifest: one JSON Lines file that lists every training image and its labels.

Every converter (nnU-Net, Decathlon, 2D folders, COCO, CVPR-2025 npz, atlases) writes this
one format, and everything downstream (training samples, the cache, ``data inspect``,
``data preview``) reads only this format.

File format (``*.jsonl``, UTF-8, one JSON object per line)
------------------------------------------------------------
Line 1 is a header::

    {"format": "medsam3-manifest", "version": 1, "root": "/data/Dataset001_Liver",
     "layout": "nnunet", "items": 131}

``root`` is the directory the item paths are relative to (absolute as written; a relative
root is taken relative to the manifest file). Every following line is one item::

    {"id": "Dataset001_Liver/liver_0/0", "dataset": "Dataset001_Liver", "split": "train",
     "case": "liver_0", "image": "imagesTr/liver_0_0000.nii.gz",
     "label": "labelsTr/liver_0.nii.gz", "label_format": "map",
     "labels": {"1": "liver", "2": "liver tumor"}, "modality": "CT", "dim": 3,
     "shape": [75, 512, 512], "spacing": [0.70, 0.70, 5.0]}

Item fields (required first):

``id``
    unique within the manifest.
``dataset``
    the dataset's name (used for balanced sampling and per-dataset statistics).
``split``
    ``"train"``, ``"val"`` or ``"test"``. Items of one ``case`` share a split.
``image``
    path of the image file (relative to ``root``); for an RGB picture stored as three
    grey files (nnU-Net channels R, G, B) a list of the three paths.
``label``
    path of the label file, a list of binary mask files that are OR-ed (BUSI's extra
    ``_mask_1.png``), or ``null`` for an unlabelled image.
``label_format``
    how to read ``label``: ``"map"`` (integer label map, values in ``labels``),
    ``"mask"`` (binary mask, value 1: pixels above ``source.threshold``, by default above
    half the file's maximum, so 0/1, 0/255 and JPEG masks all work; colour masks use
    their brightest channel), ``"color"`` (colour-coded RGB mask; ``source.colors`` maps
    each value to a list of ``[r, g, b]``, every pixel takes the value of its nearest
    colour, black being 0), ``"coco"`` (a COCO JSON; ``source.coco_image_id`` selects
    the image) or ``"npz"`` (an array in an ``.npz`` file; ``source.image_key`` /
    ``source.label_key``; ``uint8`` images there count as already normalised).
``labels``
    label value (as a string) -> class name, as the dataset names it. Several values may
    share a name.
``modality``
    one of :data:`medsam3.image.MODALITIES` or ``null`` (unknown; normalised as grey).
``dim``
    2 or 3 (spatial dimensions).
``shape``
    spatial shape in array order, ``[y, x]`` or ``[z, y, x]``.
``spacing``
    pixel size in mm in ITK order ``[sx, sy(, sz)]`` (``[1, 1]`` when a 2D format
    stores none).

Optional fields: ``case`` (grouping key for splits; default ``id``), ``regions`` (class
name -> list of label values whose union is the class: nnU-Net region labels such as
BraTS' "whole tumor": [1, 2, 3]), ``instance_class`` (the label map holds instance ids,
every value > 0 is one object of this class; ``labels`` is then empty), ``channel``
(index into the 4th axis of a multi-channel file), ``channel_name``, ``rgb`` (a 2D colour
picture), ``ignore_value`` (label value that marks unannotated pixels), ``flips``
(``"none"``, ``"horizontal"``, ``"vertical"``, ``"both"``: flips that keep the labels
true; default from the modality, see :mod:`medsam3.data.augment`), ``absent`` (concepts
known to be absent from the whole image, e.g. "cell nucleus" on a brain MRI: training draws
negative prompts from them too, across datasets) and ``source`` (facts
specific to the layout: ``coco_image_id``, ``image_key``, ``label_key``, ``colors``,
``prompts`` (the npz text prompts as written)).
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from medsam3.errors import ArgumentError, InputError
from medsam3.image import MODALITIES
from medsam3.prompts import resolve_prompt

FORMAT_NAME = "medsam3-manifest"
FORMAT_VERSION = 1
LABEL_FORMATS = ("map", "mask", "color", "coco", "npz")
SPLITS = ("train", "val", "test")
FLIPS = ("none", "horizontal", "vertical", "both")


@dataclass
class ManifestItem:
    """One image with its labels (see the module docstring for every field)."""

    id: str
    dataset: str
    split: str
    image: str | list[str]
    label: str | list[str] | None
    label_format: str
    labels: dict[str, str]
    modality: str | None
    dim: int
    shape: list[int]
    spacing: list[float]
    case: str | None = None
    regions: dict[str, list[int]] = field(default_factory=dict)
    instance_class: str | None = None
    channel: int | None = None
    channel_name: str | None = None
    rgb: bool = False
    ignore_value: int | None = None
    flips: str | None = None
    absent: list[str] = field(default_factory=list)
    source: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = {str(k): str(v) for k, v in (self.labels or {}).items()}
        self.regions = {str(k): [int(x) for x in v] for k, v in (self.regions or {}).items()}
        self.shape = [int(s) for s in self.shape]
        self.absent = [str(a) for a in (self.absent or [])]
        self.spacing = [float(s) for s in self.spacing]
        if self.case is None:
            self.case = self.id

    # ------------------------------------------------------------------ classes
    def targets(self) -> list[tuple[str, tuple[int, ...] | None]]:
        """The classes of this item: ``(name, label values)``; values ``None`` means
        "every value > 0" (instance maps). Values sharing a name are merged, a region's
        too (PAPILA: label 1 the disc outside the cup, 2 the cup, region "optic disc" = 1 + 2;
        renamed to one prompt, all three are one target); regions come after the plain labels."""
        if self.instance_class is not None:
            return [(self.instance_class, None)]
        merged: dict[str, list[int]] = {}
        for value, name in self.labels.items():
            merged.setdefault(name, []).append(int(value))
        for name, values in self.regions.items():
            if name in merged:
                merged[name] = sorted(set(merged[name]) | set(values))
        out = [(name, tuple(sorted(values))) for name, values in merged.items()]
        out += [(name, tuple(sorted(values))) for name, values in self.regions.items()
                if name not in merged]
        return out

    @property
    def class_names(self) -> list[str]:
        return [name for name, _ in self.targets()]

    def to_json(self) -> dict[str, Any]:
        """The item as written to the manifest: empty optional fields are left out."""
        data = asdict(self)
        out = {}
        for f in fields(self):
            value = data[f.name]
            if f.name not in _REQUIRED and (value is None or value == {} or value == [] or value is False
                                            or (f.name == "case" and value == self.id)):
                continue
            out[f.name] = value
        return out


_REQUIRED = ("id", "dataset", "split", "image", "label", "label_format", "labels", "modality",
             "dim", "shape", "spacing")


@dataclass
class Manifest:
    """A list of :class:`ManifestItem` and the root their paths are relative to."""

    items: list[ManifestItem]
    root: Path
    layout: str | None = None
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[ManifestItem]:
        return iter(self.items)

    def __getitem__(self, index: int) -> ManifestItem:
        return self.items[index]

    def resolve(self, relative: str | os.PathLike) -> Path:
        """The absolute path of a path stored in an item."""
        p = Path(relative)
        return p if p.is_absolute() else self.root / p

    def select(self, split: str | Sequence[str] | None = None,
               datasets: Sequence[str] | None = None, labelled: bool = False) -> "Manifest":
        """Items of the given split(s) and dataset(s) (``None``: all)."""
        splits = None if split is None else ({split} if isinstance(split, str) else set(split))
        for s in splits or ():
            if s not in SPLITS:
                raise ArgumentError(f"unknown split {s!r}; use one of {', '.join(SPLITS)}")
        keep = [it for it in self.items
                if (splits is None or it.split in splits)
                and (datasets is None or it.dataset in datasets)
                and (not labelled or it.label is not None)]
        return Manifest(keep, self.root, self.layout, self.path)

    def datasets(self) -> list[str]:
        return sorted({it.dataset for it in self.items})


# ---------------------------------------------------------------------- validation
def _fail(where: str, message: str) -> InputError:
    return InputError(f"{where}: {message}")


def validate_item(item: ManifestItem, where: str = "manifest item") -> None:
    """Check one item's fields; raise :class:`InputError` naming ``where`` on bad values."""
    if not item.id:
        raise _fail(where, "empty 'id'")
    if item.split not in SPLITS:
        raise _fail(where, f"split {item.split!r} is not one of {', '.join(SPLITS)}")
    if item.label_format not in LABEL_FORMATS:
        raise _fail(where, f"label_format {item.label_format!r} is not one of {', '.join(LABEL_FORMATS)}")
    if item.modality is not None and item.modality not in MODALITIES:
        raise _fail(where, f"modality {item.modality!r} is not one of {', '.join(MODALITIES)} or null")
    if item.dim not in (2, 3):
        raise _fail(where, f"dim {item.dim!r} must be 2 or 3")
    if len(item.shape) != item.dim or any(s < 1 for s in item.shape):
        raise _fail(where, f"shape {item.shape} does not describe a {item.dim}D image")
    if len(item.spacing) != item.dim or not all(math.isfinite(s) and s > 0 for s in item.spacing):
        raise _fail(where, f"spacing {item.spacing} must be {item.dim} positive numbers (mm)")
    for value in item.labels:
        try:
            if int(value) < 0:
                raise ValueError
        except ValueError:
            raise _fail(where, f"label value {value!r} is not a whole number >= 0") from None
    if item.label is not None and not item.labels and item.instance_class is None and not item.regions:
        raise _fail(where, "a labelled item needs 'labels' (value -> class name) or 'instance_class'")
    if isinstance(item.image, list) and len(item.image) != 3:
        raise _fail(where, f"'image' as a list must name the R, G and B files, got {len(item.image)}")
    if item.flips is not None and item.flips not in FLIPS:
        raise _fail(where, f"flips {item.flips!r} is not one of {', '.join(FLIPS)}")
    if set(item.absent) & set(item.class_names):
        raise _fail(where, f"classes {sorted(set(item.absent) & set(item.class_names))} are both labelled and "
                           "listed as absent")
    if item.label_format == "coco" and "coco_image_id" not in item.source:
        raise _fail(where, "a COCO item needs source.coco_image_id")


def _item_from_json(data: dict[str, Any], where: str) -> ManifestItem:
    if not isinstance(data, dict):
        raise _fail(where, "expected a JSON object")
    missing = [k for k in _REQUIRED if k not in data]
    if missing:
        raise _fail(where, f"missing field(s) {', '.join(missing)}")
    known = {f.name for f in fields(ManifestItem)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _fail(where, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        item = ManifestItem(**data)
    except (TypeError, ValueError) as exc:
        raise _fail(where, f"bad value ({exc})") from None
    validate_item(item, where)
    return item


# ---------------------------------------------------------------------- reading and writing
def read_manifest(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Manifest:
    """Read a manifest written by :func:`write_manifest`.

    Args:
        path: the ``.jsonl`` file.
        root: overrides the header's root (the data moved to another place).

    Raises:
        InputError: missing file, not a medsam3 manifest, a bad line (named by number),
            duplicate ids.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"cannot read manifest {path}: no such file")
    items: list[ManifestItem] = []
    header: dict[str, Any] | None = None
    seen: set[str] = set()
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            where = f"{path}, line {number}"
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _fail(where, f"not valid JSON ({exc.msg})") from None
            if header is None:
                if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
                    raise _fail(where, f"not a medsam3 manifest: the first line must be the header "
                                       f'{{"format": "{FORMAT_NAME}", "version": {FORMAT_VERSION}, "root": ...}}; '
                                       "write manifests with `medsam3 data convert`")
                if data.get("version") != FORMAT_VERSION:
                    raise _fail(where, f"manifest version {data.get('version')!r} is not supported "
                                       f"(this medsam3 reads version {FORMAT_VERSION})")
                header = data
                continue
            item = _item_from_json(data, where)
            if item.id in seen:
                raise _fail(where, f"duplicate id {item.id!r}")
            seen.add(item.id)
            items.append(item)
    if header is None:
        raise InputError(f"cannot read manifest {path}: the file is empty")
    if root is None:
        stored = header.get("root")
        root = Path(stored) if stored else path.parent
        if not root.is_absolute():
            root = path.parent / root
    return Manifest(items, Path(root), header.get("layout"), path)


def write_manifest(items: Iterable[ManifestItem], path: str | os.PathLike,
                   root: str | os.PathLike, layout: str | None = None) -> Path:
    """Write items as a manifest, atomically (a reader sees the old file or the new one).

    Raises:
        ArgumentError: duplicate ids or an item that does not validate.
    """
    from medsam3.io import atomic_output

    items = list(items)
    seen: set[str] = set()
    for item in items:
        validate_item(item, f"item {item.id!r}")
        if item.id in seen:
            raise ArgumentError(f"duplicate manifest id {item.id!r}")
        seen.add(item.id)
    path = Path(path)
    if path.suffix != ".jsonl":
        raise ArgumentError(f"manifest {path} must end in .jsonl (JSON Lines)")
    path.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
              "root": str(Path(root).resolve()), "layout": layout, "items": len(items)}
    with atomic_output(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(json.dumps(header) + "\n")
            for item in items:
                fh.write(json.dumps(item.to_json(), ensure_ascii=False) + "\n")
    return path


# ---------------------------------------------------------------------- files on disk
#: How many missing files an error message lists.
_MAX_LISTED_MISSING = 5


def item_files(manifest: Manifest, item: ManifestItem) -> list[Path]:
    """Every file ``item`` reads: its image file(s) and label file(s), resolved against the root."""
    names: list[str] = []
    for value in (item.image, item.label):
        if value is None:
            continue
        names.extend(value if isinstance(value, list) else [value])
    return [manifest.resolve(n) for n in names]


def check_files_exist(manifest: Manifest, workers: int = 16, progress: bool | None = None) -> None:
    """Check, before training starts, that every image and label file of ``manifest`` exists.

    A missing file would otherwise surface only when its item is first sampled, possibly
    hours into training. The checks run in ``workers`` threads (file systems answer ``stat``
    slowly over networks) with a progress bar on stderr (``progress=None``: shown on a
    terminal only).

    Raises:
        InputError: files are missing; the message gives their count and the first few,
            with the items that name them.
    """
    import sys
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    wanted = [(item.id, path) for item in manifest.items for path in item_files(manifest, item)]
    if not wanted:
        return
    missing: list[tuple[str, Path]] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted)))) as pool, \
            tqdm(total=len(wanted), desc="checking files", unit="file", file=sys.stderr,
                 disable=(progress is False) or (progress is None and not sys.stderr.isatty()),
                 leave=False) as bar:
        for (item_id, path), exists in zip(wanted, pool.map(lambda w: w[1].is_file(), wanted)):
            bar.update(1)
            if not exists:
                missing.append((item_id, path))
    if missing:
        shown = "; ".join(f"{path} (item {item_id})" for item_id, path in missing[:_MAX_LISTED_MISSING])
        more = len(missing) - _MAX_LISTED_MISSING
        where = manifest.path or "the manifest"
        raise InputError(
            f"{where}: {len(missing)} of {len(wanted)} image/label files are missing: {shown}"
            + (f"; and {more} more" if more > 0 else "")
            + f". Paths are relative to the root {manifest.root}; fix the manifest (or its root) "
            "or restore the files"
        )


def manifest_concepts(manifest) -> list[str]:
    """The canonical concepts a training manifest labels (its classes through the prompt
    vocabulary, sides dropped), sorted."""
    m = read_manifest(manifest)
    names = set()
    for item in m:
        for name in item.class_names:
            resolved = resolve_prompt(name, warn=False, check_length=False)
            names.add(resolved.concept.name if resolved.concept is not None else resolved.prompt)
    return sorted(names)
