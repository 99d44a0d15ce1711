"""Real training data for the training tests (imported by test_train_*).

The Colin27 T1 template and its brain mask (``ch2bet.nii.gz > 0``) from Debian's
``mricron-data`` (Holmes et al. 1998), split by axial slice: even slices are the training
volume, odd slices the held-out validation volume (neighbouring but never seen). In-plane
the volumes are subsampled by ``step`` (the model input is 112 or 224 px anyway).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

TEMPLATES = Path("/usr/share/mricron/templates")


def brain_manifest(directory: Path, step: int = 2) -> Path:
    """Write the train/val brain volumes and their manifest; returns the manifest path."""
    from medsam3.data.manifest import ManifestItem, write_manifest
    from medsam3.image import Image
    from medsam3.io import read_image, write_image

    missing = [f for f in ("ch2.nii.gz", "ch2bet.nii.gz") if not (TEMPLATES / f).is_file()]
    if missing:
        pytest.fail(f"the training tests need {', '.join(str(TEMPLATES / f) for f in missing)}: install the "
                    "Debian package mricron-data (apt-get install mricron-data)")
    directory.mkdir(parents=True, exist_ok=True)
    t1 = read_image(TEMPLATES / "ch2.nii.gz")
    bet = read_image(TEMPLATES / "ch2bet.nii.gz")
    items = []
    for split, first in (("train", 0), ("val", 1)):
        for name, image in (("t1", t1), ("brain", bet)):
            array = np.ascontiguousarray(image.array[first::2, ::step, ::step])
            if name == "brain":
                array = (array > 0).astype(np.uint8)
            spacing = (image.spacing[0] * step, image.spacing[1] * step, image.spacing[2] * 2)
            write_image(Image(array, spacing, image.origin, image.direction), directory / f"{split}_{name}.nii.gz")
        shape = list(np.asarray(t1.array[first::2, ::step, ::step]).shape)
        items.append(ManifestItem(id=f"colin27/{split}", dataset="colin27-brain", split=split,
                                  image=f"{split}_t1.nii.gz", label=f"{split}_brain.nii.gz", label_format="map",
                                  labels={"1": "brain"}, modality="MR", dim=3, shape=shape,
                                  spacing=[t1.spacing[0] * step, t1.spacing[1] * step, t1.spacing[2] * 2],
                                  case=f"colin27-{split}"))
    return write_manifest(items, directory / "brain.jsonl", directory)


def tiny_config(model_dir, manifest, output_dir, **sections) -> dict:
    """A training config dict for the tiny model on the brain manifest (CPU, fast)."""
    config = {
        "model": str(model_dir), "output_dir": str(output_dir), "seed": 0,
        "data": {"manifest": str(manifest), "batch_size": 2, "num_workers": 0, "val_samples": 8,
                 "negative_prompts": 0, "absent_probability": 0.2, "box_prompt_probability": 0.5},
        "train": {"max_steps": 4, "checkpoint_every": 2, "validate_every": 0, "validate_at_start": False,
                  "log_every": 1, "activation_checkpointing": False, "cpu_threads": 1},
        "optim": {"warmup_steps": 1, "cooldown_steps": 0},
        "logging": {"progress": False, "tensorboard": False},
    }
    for key, value in sections.items():
        config.setdefault(key, {}).update(value) if isinstance(value, dict) else config.__setitem__(key, value)
    return config
