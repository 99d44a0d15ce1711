"""CVPR-2025 BiomedSegFM ``.npz`` files (and the CVPR-2024 MedSAM-on-laptop 2D ones).

Each file holds ``imgs`` (``[z, y, x]`` volume, ``[y, x]`` or ``[y, x, 3]`` picture),
``gts`` (labels on the same grid), ``spacing`` and ``text_prompts``: a pickled dict
``{"1": "Liver in abdominal CT", "2": ..., "instance_label": 0}``. ``instance_label`` 1
means ``gts`` holds instance ids of the one prompted class (lesions, cells).
The challenge tree is ``<root>/<Modality>/<Dataset>/<case>.npz`` (the file name also
starts with the modality, ``CT_``, ``MR_``, ``PET_``, ``US_``, ``Microscopy_``).

Class names are the prompts mapped onto the medsam3 vocabulary ("Liver in abdominal
CT" -> "liver"); the prompts as written are kept in ``source.prompts``.
``spacing`` is taken in ITK order ``(x, y, z)``, the order the challenge's conversion
scripts passed to SimpleITK's ``SetSpacing``; this is an assumption about files written
by others, so check it on your data (``medsam3 data inspect``).

Nothing is unpickled with :mod:`pickle`'s full powers: arrays are read with
``allow_pickle=False``, and the pickled ``text_prompts`` by :class:`_PromptUnpickler`, which
builds only numpy arrays and plain data (dicts, strings, numbers) and refuses any other
object a pickle names, so a crafted file cannot run code. ``text_prompts`` may also be a
string array holding the same dict as JSON.
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path

import numpy as np

from medsam3.data.layouts.common import (
    assign_split,
    check_modality,
    listing,
    modality_from_name,
    progress,
    relative,
    split_from_path,
)
from medsam3.data.manifest import ManifestItem
from medsam3.errors import InputError

_PREFIX_MODALITY = {"ct": "CT", "mr": "MR", "mri": "MR", "pet": "PT", "pt": "PT", "us": "US",
                    "microscopy": "OTHER", "xray": "XR", "x-ray": "XR", "xr": "XR",
                    "endoscopy": "RGB", "dermoscopy": "RGB", "fundus": "RGB", "oct": "OTHER"}


def npz_array_info(path: Path) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """``{key: (shape, dtype)}`` of the arrays in an ``.npz`` file, reading headers only."""
    info = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not name.endswith(".npy"):
                    continue
                with archive.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                            else np.lib.format.read_array_header_2_0)
                    shape, _, dtype = read(fh)
                info[name[:-4]] = (tuple(shape), dtype)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"cannot read {path}: not a valid .npz file ({exc})") from None
    return info


class _PromptUnpickler(pickle.Unpickler):
    """Unpickles a numpy object array of plain data and nothing else.

    A pickle calls whatever globals it names (``os.system`` in a crafted ``__reduce__``);
    here only numpy's array and dtype reconstruction are found, everything else is refused.
    """

    _ALLOWED = {("numpy", "ndarray"), ("numpy", "dtype"), ("numpy._core.multiarray", "_reconstruct"),
                ("numpy.core.multiarray", "_reconstruct")}

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name}")
        if name == "_reconstruct":
            return np.ndarray.__reduce__(np.zeros(0))[0]  # numpy's own _reconstruct, wherever it lives
        return getattr(np, name)


def _read_prompts_member(path: Path, archive: zipfile.ZipFile):
    with archive.open("text_prompts.npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                else np.lib.format.read_array_header_2_0)
        _, _, dtype = read(fh)
        if not dtype.hasobject:
            return None  # an ordinary array: np.load reads it
        try:
            return _PromptUnpickler(fh).load()
        except pickle.UnpicklingError as exc:
            raise InputError(f"{path}: text_prompts holds a pickled object that is not plain data "
                             f"({exc}); medsam3 does not unpickle it (that could run code). Give the class "
                             "names with --labels instead") from None
        except Exception as exc:  # a damaged pickle: any of its many errors
            raise InputError(f"cannot read text_prompts of {path}: {type(exc).__name__}: {exc}") from None


def npz_prompts(path: Path) -> dict:
    """The ``text_prompts`` dict of a BiomedSegFM file (``{}`` when absent).

    Read without running code: a pickled dict through :class:`_PromptUnpickler`, or a string
    array holding the dict as JSON.

    Raises:
        InputError: an unreadable file, a pickle naming anything but numpy arrays and plain
            data, or a value that is not such a dict.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            if "text_prompts.npy" not in archive.namelist():
                return {}
            value = _read_prompts_member(path, archive)
        if value is None:
            with np.load(path, allow_pickle=False) as data:
                value = data["text_prompts"]
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"cannot read text_prompts of {path}: {exc}") from None
    if isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "OUS":
        value = value.item()
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError:
            pass
    if not isinstance(value, dict):
        raise InputError(f"{path}: text_prompts must be a dict {{'1': 'prompt', 'instance_label': 0}}, "
                         f"got {type(value).__name__}")
    return value


def npz_spacing(path: Path) -> list[float] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if "spacing" not in data.files:
                return None
            return [float(s) for s in np.asarray(data["spacing"]).ravel()]
    except (OSError, ValueError, TypeError) as exc:  # object arrays are refused, not unpickled
        raise InputError(f"cannot read spacing of {path}: {exc}; expected numbers (x, y[, z]) in mm") from None


def _modality_of(path: Path, root: Path) -> str | None:
    prefix = path.name.split("_")[0].lower()
    if prefix in _PREFIX_MODALITY:
        return _PREFIX_MODALITY[prefix]
    for part in reversed(path.relative_to(root).parts[:-1] if path.is_relative_to(root) else ()):
        if part.lower() in _PREFIX_MODALITY:
            return _PREFIX_MODALITY[part.lower()]
        found = modality_from_name(part)
        if found:
            return found
    return None


def convert_npz(root: Path, *, dataset: str | None = None, modality: str | None = None,
                labels: dict | None = None, val_fraction: float = 0.0, test_fraction: float = 0.0,
                seed: int = 0, check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Manifest items of BiomedSegFM ``.npz`` files (one file or a folder tree of them).

    Args:
        dataset: manifest dataset name (default: each file's folder name).
        labels: ``{value: name}`` for files without ``text_prompts``.

    Raises:
        InputError: no ``.npz`` files, files without ``imgs`` / ``gts``, ``gts`` of another
            shape than ``imgs``, text prompts that are not a dict, no class names at all.
    """
    from medsam3.prompts import resolve_prompt

    root = Path(root)
    if not root.exists():
        raise InputError(f"npz dataset {root}: no such file or directory")
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*.npz") if not p.name.startswith("."))
    base = root.parent if root.is_file() else root
    if not files:
        raise InputError(f"{root}: no .npz files")
    modality = check_modality(modality)
    items = []
    for path in progress(files, "npz files", enabled=show_progress):
        info = npz_array_info(path)
        missing = [k for k in ("imgs", "gts") if k not in info]
        if missing:
            hint = (" (CVPR-2025 validation images keep their labels in separate files: "
                    "put 'gts' into the image files first)" if missing == ["gts"] else "")
            raise InputError(f"{path} has no {' or '.join(repr(m) for m in missing)} array "
                             f"(it holds {listing(sorted(info)) or 'nothing'}){hint}")
        img_shape, gts_shape = info["imgs"][0], info["gts"][0]
        rgb = len(img_shape) == 3 and img_shape[-1] == 3 and len(gts_shape) == 2
        spatial = img_shape[:2] if rgb else img_shape
        if tuple(gts_shape) != tuple(spatial):
            raise InputError(f"{path}: gts has shape {gts_shape} but imgs has {img_shape}; labels must lie "
                             "on the image grid")
        if len(spatial) not in (2, 3):
            raise InputError(f"{path}: imgs has shape {img_shape}; expected [z, y, x], [y, x] or [y, x, 3]")
        prompts = npz_prompts(path)
        instance = int(prompts.get("instance_label", 0) or 0) == 1
        raw = {str(k): str(v) for k, v in prompts.items() if str(k).isdigit()}
        if labels:
            raw = {str(int(k)): str(v) for k, v in labels.items()}
        if not raw:
            raise InputError(f"{path} has no text_prompts; give labels={{value: name}} (--labels)")
        names = {k: resolve_prompt(v, check_length=False).prompt for k, v in raw.items()}
        spacing = npz_spacing(path) or [1.0] * len(spatial)
        if len(spacing) != len(spatial):
            raise InputError(f"{path}: spacing {spacing} has {len(spacing)} values for a {len(spatial)}D image")
        rel = relative(path, base)
        name = dataset or path.parent.name
        # one folder per dataset in the challenge tree: the file name is unique inside it
        case = path.stem if dataset is None else Path(rel).with_suffix("").as_posix()
        split = split_from_path(Path(rel).parts[:-1]) or assign_split(case, val_fraction, test_fraction, seed)
        item = ManifestItem(
            id=f"{name}/{case}", dataset=name, split=split, case=case, image=rel, label=rel,
            label_format="npz", labels={} if instance else names,
            instance_class=(next(iter(names.values())) if instance else None),
            modality=modality or _modality_of(path, base) or ("RGB" if rgb else None),
            dim=len(spatial), shape=list(spatial), spacing=spacing, rgb=rgb,
            source={"image_key": "imgs", "label_key": "gts", "prompts": raw})
        if instance and len(names) > 1:
            raise InputError(f"{path}: instance_label is 1 but text_prompts names {len(names)} classes; "
                             "instance maps hold one class")
        items.append(item)
    return items
