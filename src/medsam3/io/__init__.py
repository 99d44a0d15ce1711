"""Medical image input and output with geometry: DICOM, NIfTI, NRRD, MetaImage, PNG, JPEG, TIFF.

Everything reads into, and writes from, :class:`medsam3.Image` (ITK/LPS geometry):

* :func:`read_image` - a file or DICOM series directory;
* :func:`read_label_map` - an integer label map, for evaluation;
* :func:`write_label_map` - labels on a reference image's grid (+ JSON sidecar);
* :func:`write_image` - an image with its geometry;
* :func:`atomic_output` - write any file under a temporary name, rename on success.
"""

from medsam3.io.atomic import atomic_file_set, atomic_output
from medsam3.io.formats import SUPPORTED_INPUT_FORMATS, SUPPORTED_OUTPUT_FORMATS
from medsam3.io.read import read_image, read_label_map
from medsam3.io.write import sidecar_path, write_image, write_label_map

__all__ = [
    "read_image",
    "read_label_map",
    "write_label_map",
    "write_image",
    "sidecar_path",
    "atomic_output",
    "atomic_file_set",
    "SUPPORTED_INPUT_FORMATS",
    "SUPPORTED_OUTPUT_FORMATS",
]
