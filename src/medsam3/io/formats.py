"""Which file formats medsam3 reads and writes, recognised by file name (and DICOM by content).

The strings :data:`SUPPORTED_INPUT_FORMATS` and :data:`SUPPORTED_OUTPUT_FORMATS` are what
error messages and the CLI help show, so a user always learns what would be accepted.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ImageFormat:
    """One on-disk image format.

    Attributes:
        name: what users call it ("NIfTI", "PNG", ...); also stored as ``meta["format"]``.
        extensions: lower-case file name endings, longest first where they overlap.
        readable: :func:`medsam3.io.read_image` accepts it.
        writable: :func:`medsam3.io.write_image` / ``write_label_map`` can produce it.
        max_ndim: the most spatial dimensions it can store (PNG and JPEG: 2).
        keeps_geometry: it stores origin and direction, not just pixels (and maybe spacing).
        several_files: writing it produces a header plus a separate data file.
    """

    name: str
    extensions: tuple[str, ...]
    readable: bool = True
    writable: bool = True
    max_ndim: int = 3
    keeps_geometry: bool = True
    several_files: bool = False


NIFTI = ImageFormat("NIfTI", (".nii.gz", ".nii"))
NRRD = ImageFormat("NRRD", (".nrrd",))
# A detached NRRD header names its data file; we read it but write only attached .nrrd.
NRRD_DETACHED = ImageFormat("NRRD", (".nhdr",), writable=False)
METAIMAGE = ImageFormat("MetaImage", (".mha",))
# .mhd is a header next to a .raw/.zraw data file: written as a pair.
METAIMAGE_DETACHED = ImageFormat("MetaImage", (".mhd",), several_files=True)
PNG = ImageFormat("PNG", (".png",), max_ndim=2, keeps_geometry=False)
JPEG = ImageFormat("JPEG", (".jpg", ".jpeg"), writable=False, max_ndim=2, keeps_geometry=False)
TIFF = ImageFormat("TIFF", (".tif", ".tiff"), keeps_geometry=False)
DICOM = ImageFormat("DICOM", (".dcm", ".dicom", ".ima"), writable=False, keeps_geometry=True)

FORMATS: tuple[ImageFormat, ...] = (
    NIFTI, NRRD, NRRD_DETACHED, METAIMAGE, METAIMAGE_DETACHED, PNG, JPEG, TIFF, DICOM,
)

#: Human-readable list of what :func:`medsam3.io.read_image` accepts.
SUPPORTED_INPUT_FORMATS = (
    "DICOM (a file, .dcm or without extension, or a directory holding a series), "
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), "
    "PNG (.png), JPEG (.jpg, .jpeg), TIFF (.tif, .tiff)"
)

#: Human-readable list of what the writers produce.
SUPPORTED_OUTPUT_FORMATS = (
    "NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, or .mhd with a .zraw data file), "
    "PNG (.png, 2D only), TIFF (.tif, .tiff)"
)

#: Bytes 128..131 of a DICOM Part 10 file.
_DICOM_MAGIC = b"DICM"


def image_extension(path: str | Path) -> str:
    """The format-defining ending of ``path``, lower-case: ``".nii.gz"``, ``".png"``, or ``""``.

    Only endings of known formats count, so ``scan.v2.nii.gz`` gives ``".nii.gz"`` and a
    DICOM file named ``1.2.840.113619.2.55`` gives ``""``.
    """
    name = Path(path).name.lower()
    for fmt in FORMATS:
        for ext in fmt.extensions:
            if name.endswith(ext) and len(name) > len(ext):
                return ext
    return ""


def format_for_extension(path: str | Path) -> ImageFormat | None:
    """The format that ``path``'s ending names, or ``None`` when it names none."""
    ext = image_extension(path)
    for fmt in FORMATS:
        if ext and ext in fmt.extensions:
            return fmt
    return None


def looks_like_dicom(path: str | Path) -> bool:
    """True when the file carries the DICOM Part 10 marker ("DICM" after a 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == _DICOM_MAGIC


def input_format(path: Path) -> ImageFormat | None:
    """The format to read an existing *file* with: by its ending, else DICOM by content."""
    fmt = format_for_extension(path)
    if fmt is not None:
        return fmt
    return DICOM if looks_like_dicom(path) else None


def output_format(path: str | Path) -> ImageFormat | None:
    """The writable format that ``path``'s ending names, or ``None``."""
    fmt = format_for_extension(path)
    return fmt if fmt is not None and fmt.writable else None


def strip_image_extension(path: str | Path) -> Path:
    """``path`` without its image-format ending: ``seg.nii.gz`` -> ``seg``; unknown endings stay."""
    path = Path(path)
    ext = image_extension(path)
    return path.with_name(path.name[: len(path.name) - len(ext)]) if ext else path
