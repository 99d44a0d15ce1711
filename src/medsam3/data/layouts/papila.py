"""PAPILA: fundus images with optic disc and cup outlines of two experts as point lists.

The figshare download (doi:10.6084/m9.figshare.14798004) unpacks as
``PapilaDB-PAPILA-<commit>/`` with ``FundusImages/RETnnnOD.jpg`` (and ``OS``: both eyes of
each patient) and ``ExpertsSegmentations/Contours/RETnnnOD_disc_exp1.txt``,
``..._cup_exp1.txt``, ``..._disc_exp2.txt``, ``..._cup_exp2.txt``: one ``x y`` point (pixels,
floats) per line, a closed outline. One expert's outlines (``expert``, default 1) are filled
into one label map per image: 1 the disc outside the cup, 2 the cup; the class "optic disc"
is the region 1 + 2 (the whole disc, cup included), "optic cup" the value 2. The two eyes of
a patient share a split (the case is the patient, ``RETnnn``).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from medsam3.data.headers import read_header
from medsam3.data.layouts.common import (
    assign_split,
    check_modality,
    find_folders,
    is_hidden,
    progress,
    require_directory,
)
from medsam3.data.layouts.written import need_work_dir, picture_item, write_png
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError, InputError

_IMAGE = re.compile(r"^(RET\d+)(O[DS])$", re.IGNORECASE)


def read_contour(path: Path) -> np.ndarray:
    """The ``(n, 2)`` ``x y`` points of a PAPILA contour file."""
    points = []
    for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.replace(",", " ").split()
        try:
            points.append([float(fields[0]), float(fields[1])])
        except (ValueError, IndexError):
            raise InputError(f"{path}, line {number}: expected 'x y', got {line.strip()[:40]!r}") from None
    if len(points) < 3:
        raise InputError(f"{path}: {len(points)} point(s); an outline needs at least 3")
    return np.asarray(points, dtype=float)


def _contour_file(folder: Path, stem: str, part: str, expert: int) -> Path:
    exact = folder / f"{stem}_{part}_exp{expert}.txt"
    if exact.is_file():
        return exact
    # tolerate stray infixes such as 'RETnnnOD_cup_e_exp2.txt' that one public loader expects
    near = sorted(p for p in folder.glob(f"{stem}_{part}*exp{expert}.txt") if not is_hidden(p))
    if not near:
        raise InputError(f"{folder}: no {exact.name} (the {part} outline of expert {expert} for {stem})")
    return near[0]


def convert_papila(root: Path, *, work_dir: str | None = None, dataset: str | None = None,
                   modality: str | None = None, expert: int = 1, check_geometry: bool = True,
                   show_progress: bool = True) -> list[ManifestItem]:
    """Items of a PAPILA download (see the module docstring)."""
    from medsam3.data.layouts.coco import polygons_to_mask

    if int(expert) not in (1, 2):
        raise ArgumentError(f"PAPILA has the outlines of experts 1 and 2, got expert={expert!r}")
    root = require_directory(root, "PAPILA")
    out = need_work_dir(work_dir, "papila")
    modality = check_modality(modality) or "RGB"
    dataset = dataset or "papila"
    folders = find_folders(root, "FundusImages")
    if not folders:
        raise InputError(f"{root}: no FundusImages/ folder (PAPILA: FundusImages/RETnnnOD.jpg + "
                         "ExpertsSegmentations/Contours/RETnnnOD_disc_exp1.txt)")
    items = []
    for images in folders:
        contours = images.parent / "ExpertsSegmentations" / "Contours"
        if not contours.is_dir():
            raise InputError(f"{images}: no ExpertsSegmentations/Contours/ folder beside it")
        pictures = sorted(p for p in images.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")
                          and not is_hidden(p) and _IMAGE.match(p.stem))
        for image in progress(pictures, "PAPILA", enabled=show_progress):
            header = read_header(image)
            height, width = header.shape[:2]
            label = np.zeros((height, width), dtype=np.uint8)
            for part, value in (("disc", 1), ("cup", 2)):  # the cup drawn over the disc
                points = read_contour(_contour_file(contours, image.stem, part, int(expert)))
                if (points.min(axis=0) < -1).any() or points[:, 0].max() > width + 1 or points[:, 1].max() > height + 1:
                    raise InputError(f"{image.stem} {part} outline of expert {expert} leaves the "
                                     f"{width} x {height} image {image.name}")
                label[polygons_to_mask([points.reshape(-1).tolist()], height, width)] = value
            png = write_png(label, out / f"{image.stem}_exp{int(expert)}.png")
            patient = _IMAGE.match(image.stem).group(1).upper()
            item = picture_item(dataset, image.stem, assign_split(patient), image, png, root, modality,
                                labels={"1": "optic disc", "2": "optic cup"}, label_format="map")
            item.case = patient
            item.regions = {"optic disc": [1, 2]}
            items.append(item)
    if not items:
        raise InputError(f"{root}: no RETnnnOD/OS images in {', '.join(str(f) for f in folders)}")
    return items
