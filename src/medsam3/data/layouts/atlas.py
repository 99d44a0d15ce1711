"""An atlas: one image, one label map and a text file naming the labels.

Brain atlases ship this way (MRIcron's ``ch2.nii.gz`` + ``aal.nii.gz`` + ``aal.nii.txt``,
FSL / JHU label files). The names file may be

* lines ``VALUE NAME [anything]`` (``1 Precentral_L 2001``; MRIcron, FSL lookup tables),
* ITK-SNAP label descriptions (``VALUE R G B A VIS MSH "NAME"``), or
* JSON ``{"VALUE": "NAME"}``.

A second, optional label is a brain mask given as an image whose voxels above
``mask_threshold`` are the class ``mask_class`` (MRIcron's ``ch2bet.nii.gz``: > 0 = brain).
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from medsam3.data.headers import check_pair, read_header
from medsam3.data.layouts.common import check_modality, relative, require_directory
from medsam3.data.manifest import ManifestItem
from medsam3.errors import ArgumentError, InputError


def read_label_names(path: str | Path) -> dict[str, str]:
    """``{value: name}`` from a label names file (see the module docstring); 0 is left out.

    Raises:
        InputError: a line that names no value, or no names at all.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise InputError(f"cannot read label names {path}: {exc.strerror or exc}") from None
    names: dict[str, str] = {}
    if text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            names = {str(int(k)): str(v) for k, v in data.items()}
        except (ValueError, AttributeError):
            raise InputError(f"{path}: expected JSON {{\"value\": \"name\"}}") from None
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                fields = shlex.split(line)
            except ValueError:
                fields = line.split()
            if not re.fullmatch(r"\d+", fields[0]) or len(fields) < 2:
                raise InputError(f"{path}, line {number}: expected 'VALUE NAME', got {line!r}")
            quoted = [f for f in fields[1:] if not re.fullmatch(r"[-+.\d]+", f)]
            name = fields[-1] if '"' in line else (quoted[0] if quoted else fields[1])
            names[str(int(fields[0]))] = name
    names.pop("0", None)
    if not names:
        raise InputError(f"{path}: no label names")
    return names


def convert_atlas(root: Path, *, image: str, label: str, names: str | None = None,
                  mask: str | None = None, mask_class: str = "brain", mask_threshold: float = 0.0,
                  dataset: str | None = None, modality: str | None = "MR",
                  check_geometry: bool = True, show_progress: bool = True) -> list[ManifestItem]:
    """Manifest items of an atlas folder: the label map (and the mask, when given).

    Args:
        root: the folder holding the files.
        image, label, names, mask: file names inside ``root``.
        mask_class, mask_threshold: the class of the mask's voxels above the threshold.

    Raises:
        ArgumentError: ``image`` or ``label`` not given.
        InputError: missing files, a label or mask off the image's grid.
    """
    root = require_directory(root, "atlas")
    if not image or not label:
        raise ArgumentError("the atlas layout needs image=FILE and label=FILE (-O image=ch2.nii.gz "
                            "-O label=aal.nii.gz -O names=aal.nii.txt)")
    modality = check_modality(modality)
    dataset = dataset or root.name
    image_h = read_header(root / image)
    label_h = read_header(root / label)
    check_pair(image_h, label_h, geometry=check_geometry)
    if names:
        labels = read_label_names(root / names)
    else:
        raise ArgumentError(f"give names=FILE for the label names of {root / label} "
                            "(lines 'VALUE NAME', ITK-SNAP descriptions or JSON)")
    case = image.split(".")[0]
    common = dict(dataset=dataset, split="train", case=case, image=image, modality=modality,
                  dim=image_h.ndim, shape=list(image_h.shape), spacing=list(image_h.spacing))
    items = [ManifestItem(id=f"{dataset}/{case}/{label.split('.')[0]}", label=relative(root / label, root),
                          label_format="map", labels=labels, **common)]
    if mask:
        mask_h = read_header(root / mask)
        check_pair(image_h, mask_h, geometry=check_geometry)
        items.append(ManifestItem(id=f"{dataset}/{case}/{mask.split('.')[0]}", label=relative(root / mask, root),
                                  label_format="mask", labels={"1": mask_class},
                                  source={"threshold": float(mask_threshold)}, **common))
    return items
