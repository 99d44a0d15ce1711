"""Fuzzing the readers: 200 seeded, randomly corrupted copies of real files.

Each copy is a PNG, JPEG, TIFF, DICOM (pydicom's CT_small and MR_small), NIfTI (the Colin27
sample), MetaImage or NRRD file, truncated, with bytes flipped, with header fields edited or
garbage appended. Every copy goes through :func:`medsam3.read_image`, and 20 of them (the 2D
ones) through :func:`medsam3.segment` with the tiny model. Allowed outcomes only:

* a :class:`~medsam3.errors.MedSAM3Error` whose message is one line naming the file, and no
  output file (nor temporary) left behind;
* a correct read: a 2D, RGB or 3D array, non-empty, within the size limit, with finite
  positive spacing and at least one finite value (and for ``segment`` an output written).

Anything else (another exception, a hang past the per-case deadline) is a failure, reported
with the case number and the corruption so it can be replayed with :func:`corrupted_case`.
"""

from __future__ import annotations

import gzip
import re
import shutil
import signal
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from bad_inputs import read_inputs as ri

SEED = 20261203
CASES = 200
SEGMENT_CASES = 20
# Corrupted headers may announce any size; keep allocations small on a 2-core CI machine.
FUZZ_MAX_PIXELS = 4_000_000
SEGMENT_MAX_PIXELS = 150_000
READ_DEADLINE_S = 15
SEGMENT_DEADLINE_S = 45

COLIN27 = Path(__file__).resolve().parents[2] / "src/medsam3/data/samples/colin27_t1_2mm.nii.gz"


@pytest.fixture(scope="module")
def bases(tmp_path_factory) -> list[tuple[str, list[Path]]]:
    """``(kind, files)`` of the real files to corrupt; the first file is the one read."""
    import SimpleITK as sitk
    from PIL import Image as PILImage

    folder = tmp_path_factory.mktemp("fuzz-bases")
    png = ri.copy(ri.ITK_DATA / "BrainProtonDensitySlice.png", folder / "brain.png")
    with PILImage.open(png) as picture:
        picture.convert("RGB").save(folder / "brain.jpg", quality=90)
        picture.save(folder / "brain.tif")
    lung = sitk.ReadImage(str(ri.ITK_DATA / "RatLungSlice1.mha"))
    sitk.WriteImage(lung, str(folder / "lung.mha"))
    rotated = sitk.ReadImage(str(ri.ITK_DATA / "BrainProtonDensitySliceBorder20DirectionPlus30.nhdr"))
    sitk.WriteImage(rotated, str(folder / "rotated.nrrd"), True)  # gzip encoding
    return [
        ("png", [png]),
        ("jpeg", [folder / "brain.jpg"]),
        ("tiff", [folder / "brain.tif"]),
        ("dicom", [ri.copy(ri.dicom_test_file("CT_small.dcm"), folder / "ct.dcm")]),
        ("dicom", [ri.copy(ri.dicom_test_file("MR_small.dcm"), folder / "mr.dcm")]),
        ("nifti", [ri.copy(COLIN27, folder / "colin27.nii.gz")]),
        ("text-header", [folder / "lung.mha"]),
        ("text-header", [folder / "rotated.nrrd"]),
    ]


_EXTREME = ["0", "-1", "1", "65535", "2147483647", "99999999999", "1e308", "nan", "-0", "3.5", "x"]


def _edit_text_header(data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
    """Replace one number in the text header (before the data) by an extreme value."""
    end = data.find(b"\n\n") if data.startswith(b"NRRD") else data.find(b"ElementDataFile")
    head = data[: end if end > 0 else 1024]
    numbers = list(re.finditer(rb"-?\d+(\.\d+)?(e-?\d+)?", head))
    if not numbers:
        return data, "no number to edit"
    match = numbers[int(rng.integers(len(numbers)))]
    value = _EXTREME[int(rng.integers(len(_EXTREME)))].encode()
    return data[: match.start()] + value + data[match.end():], f"header number at {match.start()} -> {value.decode()}"


def _edit_binary_header(data: bytes, rng: np.random.Generator, kind: str) -> tuple[bytes, str]:
    """Overwrite 1-4 bytes inside the binary header with 0x00 / 0xff / random values."""
    if kind == "nifti":  # the header lives inside the gzip stream
        raw = bytearray(gzip.decompress(data))
        offset = int(rng.integers(0, 348))
        raw[offset: offset + 2] = bytes([0xFF, 0x7F]) if rng.random() < 0.5 else rng.bytes(2)
        return gzip.compress(bytes(raw)), f"NIfTI header bytes {offset}..{offset + 1} edited"
    span = {"png": 33, "jpeg": 200, "tiff": 300, "dicom": 1200}[kind]
    out = bytearray(data)
    offset = int(rng.integers(0, min(span, len(out) - 4)))
    width = int(rng.integers(1, 5))
    fill = [b"\x00", b"\xff", None][int(rng.integers(3))]
    out[offset: offset + width] = fill * width if fill else rng.bytes(width)
    return bytes(out), f"{width} header bytes at {offset} set to {fill!r}"


def corrupt(data: bytes, kind: str, rng: np.random.Generator) -> tuple[bytes, str]:
    """One random corruption of ``data``: truncation, byte flips, a header edit, appended junk."""
    how = int(rng.integers(5))
    if how == 0:
        cut = int(rng.integers(0, len(data)))
        return data[:cut], f"truncated to {cut} of {len(data)} bytes"
    if how == 1:
        out = bytearray(data)
        count = int(rng.integers(1, 16))
        for offset in rng.integers(0, len(out), count):
            out[offset] ^= 1 << int(rng.integers(8))
        return bytes(out), f"{count} random bit flips"
    if how == 2:
        if kind == "text-header":
            return _edit_text_header(data, rng)
        return _edit_binary_header(data, rng, kind)
    if how == 3:
        start = int(rng.integers(0, len(data)))
        length = int(rng.integers(1, 512))
        out = data[:start] + bytes(min(length, len(data) - start)) + data[start + length:]
        return out, f"{length} bytes zeroed at {start}"
    return data + rng.bytes(int(rng.integers(1, 4096))), "random bytes appended"


def corrupted_case(number: int, bases, folder: Path) -> tuple[Path, str, str]:
    """Write fuzz case ``number`` into ``folder``: ``(path, kind, what was done)``."""
    kind, files = bases[number % len(bases)]
    rng = np.random.default_rng([SEED, number])
    source = files[0]
    target = folder / f"case{number:03d}_{source.name}"
    data, what = corrupt(source.read_bytes(), kind, rng)
    target.write_bytes(data)
    return target, kind, what


@contextmanager
def deadline(seconds: int):
    """Raise ``TimeoutError`` in the main thread after ``seconds`` (a hang is a failure)."""
    def alarm(signum, frame):
        raise TimeoutError(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _check_read(image, path: Path, limit: int) -> str | None:
    """Why ``image`` is not a plausible read of ``path`` (``None`` when it is)."""
    array = np.asarray(image.array)
    spatial = array.shape[:-1] if image.is_rgb else array.shape
    if len(spatial) not in (2, 3) or min(spatial) < 1:
        return f"implausible shape {array.shape}"
    if array.size > limit:
        return f"{array.size} values read, over the limit {limit}"
    if not all(np.isfinite(s) and s > 0 for s in image.spacing):
        return f"spacing {image.spacing}"
    if array.dtype.kind == "f" and not np.isfinite(array).any():
        return "no finite value"
    if image.path is None or Path(image.path).name != path.name:
        return f"image.path {image.path!r}"
    return None


def _check_error(exc, path: Path) -> str | None:
    text = str(exc)
    if "\n" in text.strip():
        return f"error of several lines: {text!r}"
    if path.name not in text:
        return f"error does not name the file: {text!r}"
    return None


def test_fuzz_read_image(bases, tmp_path, monkeypatch):
    from medsam3.errors import MedSAM3Error
    from medsam3.io import read_image

    monkeypatch.setenv("MEDSAM3_MAX_PIXELS", str(FUZZ_MAX_PIXELS))
    failures, outcomes = [], {"read": 0, "refused": 0}
    for number in range(CASES):
        path, kind, what = corrupted_case(number, bases, tmp_path)
        problem = None
        try:
            with deadline(READ_DEADLINE_S), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                image = read_image(path)
        except MedSAM3Error as exc:
            outcomes["refused"] += 1
            problem = _check_error(exc, path)
        except BaseException as exc:  # noqa: BLE001 - any other exception is the finding
            problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        else:
            outcomes["read"] += 1
            problem = _check_read(image, path, FUZZ_MAX_PIXELS)
        if problem:
            failures.append(f"case {number} ({kind}, {what}): {problem}")
        path.unlink()
    assert not failures, f"{len(failures)} of {CASES} fuzz cases failed:\n" + "\n".join(failures)
    # the corruptions must exercise both paths, else the fuzzing proves little
    assert outcomes["read"] >= 10 and outcomes["refused"] >= 50, outcomes


def test_fuzz_segment(bases, tmp_path, monkeypatch, tiny_model):
    from medsam3 import segment
    from medsam3.errors import MedSAM3Error

    monkeypatch.setenv("MEDSAM3_MAX_PIXELS", str(SEGMENT_MAX_PIXELS))
    numbers = [n for n in range(CASES) if bases[n % len(bases)][0] != "nifti"][:SEGMENT_CASES]
    failures, outcomes = [], {"segmented": 0, "refused": 0}
    for number in numbers:
        folder = tmp_path / f"case{number}"
        folder.mkdir()
        path, kind, what = corrupted_case(number, bases, folder)
        output = folder / "labels.nii.gz"
        problem = None
        try:
            with deadline(SEGMENT_DEADLINE_S), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                segment(path, output, ["brain"], model=tiny_model, device="cpu", progress=False)
        except MedSAM3Error as exc:
            outcomes["refused"] += 1
            problem = _check_error(exc, path)
            left = sorted(p.name for p in folder.iterdir() if p != path)
            if left:
                problem = problem or f"files left behind after the error: {left}"
        except BaseException as exc:  # noqa: BLE001
            problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        else:
            outcomes["segmented"] += 1
            if not output.is_file():
                problem = "no output written"
        if problem:
            failures.append(f"case {number} ({kind}, {what}): {problem}")
        shutil.rmtree(folder)
    assert not failures, f"{len(failures)} of {len(numbers)} segment fuzz cases failed:\n" + "\n".join(failures)
    assert outcomes["segmented"] >= 2 and outcomes["refused"] >= 5, outcomes
