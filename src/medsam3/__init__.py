"""medsam3: universal prompt-driven medical image segmentation with SAM3."""

from medsam3.errors import ArgumentError, InputError, MedSAM3Error
from medsam3.image import Image

__version__ = "0.1.0"

__all__ = ["Image", "MedSAM3Error", "InputError", "ArgumentError", "__version__"]
