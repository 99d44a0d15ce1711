"""Pieces every layout converter shares: file names, modality names, splits, progress."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from tqdm.auto import tqdm

from medsam3.errors import ArgumentError, InputError
from medsam3.image import MODALITIES, check_modality  # noqa: F401 - check_modality is used by the layouts

#: File endings of images the readers of :mod:`medsam3.io` accept, longest first.
IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".png", ".jpg", ".jpeg",
                 ".tif", ".tiff", ".dcm")
#: Picture endings that medsam3 cannot read; found in datasets, reported by name.
UNSUPPORTED_PICTURE_ENDINGS = (".bmp", ".gif", ".ppm", ".pgm", ".webp")

_SPLIT_WORDS = {"train": "train", "training": "train", "tr": "train", "val": "val", "valid": "val",
                "validation": "val", "dev": "val", "test": "test", "testing": "test", "ts": "test"}


def image_ending(name: str) -> str | None:
    """The image ending of a file name (``.nii.gz`` for ``a.nii.gz``), else ``None``."""
    lower = name.lower()
    for ending in IMAGE_ENDINGS:
        if lower.endswith(ending):
            return name[len(name) - len(ending):]
    return None


def strip_ending(name: str) -> str:
    """The file name without its image ending (``a_0000`` for ``a_0000.nii.gz``)."""
    ending = image_ending(name)
    if ending:
        return name[: -len(ending)]
    return Path(name).stem


def is_hidden(path: Path) -> bool:
    """Dot files, including macOS ``._name`` resource forks shipped in the Decathlon tarballs."""
    return path.name.startswith(".")


def find_folders(root: Path, name: str) -> list[Path]:
    """Every folder called ``name`` under ``root`` (sorted; hidden ones left out)."""
    return sorted(p for p in Path(root).rglob(name) if p.is_dir() and not is_hidden(p))


def list_images(directory: Path, recursive: bool = False) -> list[Path]:
    """Image files in a directory (sorted), hidden files left out."""
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in directory.glob(pattern)
                  if p.is_file() and not is_hidden(p) and image_ending(p.name))


def unsupported_pictures(directory: Path, recursive: bool = True) -> list[Path]:
    pattern = "**/*" if recursive else "*"
    return sorted(p for p in directory.glob(pattern)
                  if p.is_file() and not is_hidden(p) and p.suffix.lower() in UNSUPPORTED_PICTURE_ENDINGS)


def require_directory(root: Path, layout: str) -> Path:
    root = Path(os.path.expanduser(str(root)))
    if not root.exists():
        raise InputError(f"{layout} dataset {root}: no such directory")
    if not root.is_dir():
        raise InputError(f"{layout} dataset {root}: not a directory")
    return root


def read_json(path: Path) -> Any:
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise InputError(f"cannot read {path}: no such file") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"cannot read {path}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except UnicodeDecodeError:
        raise InputError(f"cannot read {path}: not a UTF-8 text file") from None


def listing(paths: Sequence[Any], limit: int = 5) -> str:
    """``a, b, c and 12 more`` for error messages."""
    names = [str(p) for p in paths]
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"


_MODALITY_WORDS = (
    ("CT", ("ct", "cta", "cbct", "computed tomography", "hu")),
    ("MR", ("mr", "mri", "t1", "t1w", "t1ce", "t1gd", "t1c", "t2", "t2w", "flair", "adc", "dwi",
            "pd", "swi", "cine", "lge", "bold", "magnetic resonance")),
    ("PT", ("pet", "pt", "suv")),
    ("US", ("us", "ultrasound", "echo", "sonography")),
    ("XR", ("xr", "x ray", "xray", "cxr", "radiograph", "dx", "cr", "angiography", "xa",
            "mammography", "mg")),
    ("RGB", ("rgb", "endoscopy", "dermoscopy", "fundus", "histology", "histopathology", "he")),
)


def modality_from_name(name: str | None) -> str | None:
    """A modality from a channel or folder name ("CT", "T2", "FLAIR", "MRI", "PET", "US"),
    ``None`` when the name says nothing (nnU-Net's "noNorm", "zscore", "rescale_to_0_1")."""
    if not name:
        return None
    text = re.sub(r"[_\-/]+", " ", str(name).strip().lower())
    if text.upper() in MODALITIES:
        return text.upper()
    for modality, words in _MODALITY_WORDS:
        if text in words:
            return modality
    tokens = set(text.split())
    for modality, words in _MODALITY_WORDS:
        if tokens & set(words):
            return modality
    return None



def split_from_path(parts: Iterable[str]) -> str | None:
    """``train`` / ``val`` / ``test`` when a folder or file name says so (``Train``, ``valid``)."""
    for part in parts:
        for word in re.split(r"[_\-\s.]+", part.lower()):
            if word in _SPLIT_WORDS:
                return _SPLIT_WORDS[word]
    return None


def assign_split(case: str, val_fraction: float = 0.0, test_fraction: float = 0.0,
                 seed: int = 0) -> str:
    """A stable split for a case: its hash decides, so adding cases never moves old ones."""
    if not (0 <= val_fraction <= 1 and 0 <= test_fraction <= 1 and val_fraction + test_fraction <= 1):
        raise ArgumentError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be in "
                            "[0, 1] and add up to at most 1")
    if val_fraction == 0 and test_fraction == 0:
        return "train"
    digest = hashlib.sha1(f"{seed}:{case}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0 ** 64
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def progress(iterable, description: str, total: int | None = None, enabled: bool = True):
    return tqdm(iterable, desc=description, total=total, unit="item", disable=not enabled, leave=False)


def relative(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else absolute (as the manifest stores it)."""
    try:
        return Path(path).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return str(Path(path).resolve())
