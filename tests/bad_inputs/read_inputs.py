"""Builders of bad and odd input files for the reading cases and the fuzz test.

Every builder writes real files, made the way other tools make them (Pillow, tifffile,
nibabel, SimpleITK, pydicom's test files), then bends one thing: a header that announces
billions of pixels, a sample count, a direction matrix, NaN values, a duplicated instance.
"""

from __future__ import annotations

import functools
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np

ITK_DATA = Path("/usr/share/doc/insighttoolkit5-examples/examples/Data")


def dicom_test_file(name: str = "CT_small.dcm") -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file(name))


def write_png(path: Path, shape=(64, 80), mode: str = "L", seed: int = 0) -> Path:
    from PIL import Image as PILImage

    rng = np.random.default_rng(seed)
    bands = {"L": 0, "LA": 2, "RGB": 3, "RGBA": 4}[mode]
    data = rng.integers(0, 255, shape + ((bands,) if bands else ()), dtype=np.uint8)
    PILImage.fromarray(data, mode).save(path)
    return path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


@functools.lru_cache(maxsize=None)
def png_bomb_bytes(width: int = 30000, height: int = 30000) -> bytes:
    """A valid grey PNG of ``width x height`` zeros, ~875 KB for 30000 x 30000.

    The deflate stream is one fully flushed block of zeros repeated (each such block stands
    alone), so building it takes a fraction of a second instead of compressing 900 MB.
    """
    row = width + 1  # filter byte + pixels
    rows_per_block = max(1, (32 << 20) // row)
    blocks, rest = divmod(height, rows_per_block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(row * rows_per_block)) + compressor.flush(zlib.Z_FULL_FLUSH)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    tail = compressor.compress(bytes(row * rest)) + compressor.flush(zlib.Z_FINISH)
    adler = 1
    for _ in range(blocks):
        adler = zlib.adler32(bytes(row * rows_per_block), adler)
    adler = zlib.adler32(bytes(row * rest), adler)
    stream = b"\x78\xda" + block * blocks + tail + struct.pack(">I", adler)
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", stream)
            + _png_chunk(b"IEND", b""))


def write_jpeg_bomb(path: Path, width: int = 60000, height: int = 60000) -> Path:
    """A small JPEG whose start-of-frame header announces ``width x height`` pixels."""
    from PIL import Image as PILImage

    write_png(path.with_suffix(".tmp.png"), (16, 16))
    with PILImage.open(path.with_suffix(".tmp.png")) as picture:
        picture.save(path, "JPEG")
    path.with_suffix(".tmp.png").unlink()
    data = bytearray(path.read_bytes())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    path.write_bytes(bytes(data))
    return path


def _patch_tiff_tags(path: Path, values: dict[int, int]) -> None:
    """Overwrite SHORT/LONG values of the first IFD of a little-endian classic TIFF."""
    data = bytearray(path.read_bytes())
    assert data[:4] == b"II*\0"
    (ifd,) = struct.unpack_from("<I", data, 4)
    (count,) = struct.unpack_from("<H", data, ifd)
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack_from("<HH", data, entry)
        if tag in values:
            fmt = "<H" if kind == 3 else "<I"
            struct.pack_into(fmt, data, entry + 8, values[tag])
    path.write_bytes(bytes(data))


def write_tiff(path: Path, shape=(40, 50), samples: int = 1, photometric: str = "minisblack",
               extrasamples=None, seed: int = 0, dtype=np.uint8) -> np.ndarray:
    import tifffile

    rng = np.random.default_rng(seed)
    data = rng.integers(0, 200, shape + ((samples,) if samples > 1 else ()), dtype=dtype)
    kwargs = {"extrasamples": extrasamples} if extrasamples is not None else {}
    if samples > 1:
        kwargs["planarconfig"] = "contig"  # samples last; otherwise tifffile may write pages
    tifffile.imwrite(path, data, photometric=photometric, **kwargs)
    return data


def write_tiff_bomb(path: Path, width: int = 40000, height: int = 40000) -> Path:
    write_tiff(path, (8, 8))
    _patch_tiff_tags(path, {256: width, 257: height, 278: height})  # width, length, rows per strip
    return path


def write_dicom_bomb(path: Path) -> Path:
    import pydicom

    ds = pydicom.dcmread(dicom_test_file())
    ds.Rows, ds.Columns = 60000, 60000
    ds.save_as(path)
    return path


def write_nifti(path: Path, data: np.ndarray, affine=None) -> Path:
    import nibabel as nib

    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), path)
    return path


def write_nifti_bomb(path: Path) -> Path:
    """A NIfTI header announcing 3000 x 3000 x 3000 float voxels, with 8 voxels of data."""
    import nibabel as nib

    image = nib.Nifti1Image(np.zeros((2, 2, 2), np.float32), np.eye(4))
    image.header.set_data_shape((3000, 3000, 3000))
    raw = image.header.binaryblock + b"\0" * 4 + bytes(32)
    path.write_bytes(raw) if path.suffix == ".nii" else path.write_bytes(__import__("gzip").compress(raw))
    return path


def write_itk(path: Path, data: np.ndarray, spacing=None) -> Path:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(data)
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path))
    return path


def edit_header(path: Path, old: str, new: str) -> Path:
    """Replace ``old`` by ``new`` once in a text header (the start of an MHD/MHA/NRRD file)."""
    data = path.read_bytes()
    assert old.encode() in data, f"{old!r} not in {path}"
    path.write_bytes(data.replace(old.encode(), new.encode(), 1))
    return path


def dicom_series(folder: Path, n: int = 3) -> list[Path]:
    """``n`` slices of CT_small at 5 mm steps, each its own instance."""
    import pydicom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        ds = pydicom.dcmread(dicom_test_file())
        ds.SOPInstanceUID = f"1.2.826.0.1.3680043.8.498.{i + 1}"
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.InstanceNumber = i + 1
        path = folder / f"slice{i}.dcm"
        ds.save_as(path)
        paths.append(path)
    return paths


def copy(src: Path, dst: Path) -> Path:
    shutil.copyfile(src, dst)
    return dst
