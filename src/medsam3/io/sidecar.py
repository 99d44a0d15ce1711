"""The JSON sidecar of a predicted label map (``seg.nii.gz`` -> ``seg.json``): built and read here.

Written by :func:`medsam3.segment` and by evaluation's model runs, read back by scoring
(:mod:`medsam3.evaluate`). Its common fields:

* ``labels``: ``{"1": name, ...}``, label value -> name; ``absent``: names answered absent;
  ``scores``: name -> presence score (6 decimals);
* ``model``, ``input``, ``modality``, ``thresholds`` (``score``, ``presence``, ``mask``);
* ``geometry``: the input's size, spacing, origin and direction (kept here because PNG/TIFF
  outputs cannot store origin and direction); ``medsam3_version``.

Each writer adds its own fields (``unknown_to_model``, ``instances``, ``volume`` for
``segment``; ``item``, ``run``, ``gt_prompts``, ... for evaluation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from medsam3.errors import InputError
from medsam3.image import Image


def prediction_sidecar(*, labels: dict[int, str], absent: list[str], scores: dict[str, float], model: str,
                       image: Image, modality: str | None, thresholds: dict[str, float],
                       **fields: Any) -> dict[str, Any]:
    """The sidecar of a label map predicted on ``image`` (module docstring); ``fields`` are
    added after the common ones, ``None`` values included."""
    sidecar = {
        "labels": {str(k): name for k, name in labels.items()},
        "absent": list(absent),
        "scores": {name: round(float(score), 6) for name, score in scores.items()},
        "model": model,
        "input": str(image.path) if image.path else None,
        "modality": modality,
        "thresholds": dict(thresholds),
        "geometry": {"size": list(image.size), "spacing": list(image.spacing), "origin": list(image.origin),
                     "direction": list(image.direction)},
    }
    from medsam3 import __version__

    sidecar.update(fields)
    sidecar["medsam3_version"] = __version__
    return sidecar


def read_sidecar(label_map: str | Path, missing_ok: bool = True) -> dict[str, Any]:
    """The JSON sidecar next to ``label_map`` as a dict, or ``{}`` when there is none.

    Raises:
        InputError: the sidecar exists but is not a JSON object (or, with ``missing_ok``
            false, does not exist).
    """
    from medsam3.io.write import sidecar_path

    path = sidecar_path(Path(label_map))
    if not path.is_file():
        if missing_ok:
            return {}
        raise InputError(f"sidecar {path} of {label_map} is missing")
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read sidecar {path}: {exc}") from None
    if not isinstance(content, dict):
        raise InputError(f"sidecar {path} must hold a JSON object with 'labels' (and 'absent')")
    return content
