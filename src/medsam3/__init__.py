"""medsam3: universal prompt-driven medical image segmentation with SAM3.

    import medsam3
    seg = medsam3.segment("ct.nii.gz", "seg.nii.gz", prompts=["liver", "spleen"])

The heavy parts (torch, transformers) load on first use, so ``import medsam3`` is quick.
"""

from medsam3.errors import ArgumentError, InputError, MedSAM3Error
from medsam3.image import Image

__version__ = "0.1.0"

_LAZY = {
    "segment": "medsam3.segmentation",
    "Segmentation": "medsam3.segmentation",
    "segment_many": "medsam3.batch",
    "MedSAM3": "medsam3.model.loader",
    "ImagePredictor": "medsam3.predict.image",
    "TextPrompt": "medsam3.predict.image",
    "PredictSettings": "medsam3.predict.settings",
    "VolumeSettings": "medsam3.predict.settings",
    "read_image": "medsam3.io",
    "read_label_map": "medsam3.io",
    "write_label_map": "medsam3.io",
    "normalize_intensity": "medsam3.preprocess",
}

__all__ = ["Image", "MedSAM3Error", "InputError", "ArgumentError", "__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medsam3' has no attribute {name!r}")
