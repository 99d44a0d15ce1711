"""Medical image input and output with geometry: DICOM, NIfTI, NRRD, MetaImage, PNG, JPEG, TIFF.

Everything reads into, and writes from, :class:`medsam3.Image` (ITK/LPS geometry):

* :func:`read_image` - a file or DICOM series directory;
* :func:`read_label_map` - an integer label map, for evaluation (also DICOM SEG / RTSTRUCT);
* :func:`write_label_map` - labels on a reference image's grid (+ JSON sidecar); ``.dcm`` or
  ``format="dicom-seg"`` / ``"dicom-rt"`` writes DICOM SEG / an RT Structure Set;
* :func:`write_dicom_seg`, :func:`write_rtstruct` - the same, spelled out;
* :func:`write_image` - an image with its geometry;
* :func:`atomic_output` - write any file under a temporary name, rename on success.
"""

from medsam3.io.atomic import atomic_file_set, atomic_output
from medsam3.io.formats import SUPPORTED_INPUT_FORMATS, SUPPORTED_OUTPUT_FORMATS
from medsam3.io.label_maps import read_label_map
from medsam3.io.read import read_image
from medsam3.io.write import (
    DICOM_LABEL_FORMATS,
    dicom_label_format,
    sidecar_path,
    write_image,
    write_dicom_seg,
    write_label_map,
    write_rtstruct,
)

__all__ = [
    "read_image",
    "read_label_map",
    "write_label_map",
    "write_dicom_seg",
    "write_rtstruct",
    "DICOM_LABEL_FORMATS",
    "dicom_label_format",
    "write_image",
    "sidecar_path",
    "atomic_output",
    "atomic_file_set",
    "SUPPORTED_INPUT_FORMATS",
    "SUPPORTED_OUTPUT_FORMATS",
]
