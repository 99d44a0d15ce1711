"""Bad uploads to the web app (``medsam3 serve``): the table (see :mod:`bad_inputs.harness`).

Each row builds a file as Gradio would have stored it (``CACHE/<hash>/<the user's file name>``)
and hands it to :func:`medsam3.app.uploads.read_upload`, what the app does with every upload.
Every refusal must be a :class:`medsam3.errors.MedSAM3Error` naming the user's file (and zip
member), never a server path, and must leave nothing of the upload in the session's folder.
"""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from bad_inputs.harness import Case, params

SAMPLE = Path(__file__).resolve().parents[2] / "src" / "medsam3" / "data" / "samples" / "colin27_t1_2mm.nii.gz"
LIMIT = 20_000  # bytes: the rows' upload limit (unpacked / decoded: 4 x this)


def _stored(tmp: Path, name: str, data: bytes) -> dict:
    """``data`` stored under the user's file ``name`` the way Gradio stores an upload."""
    path = tmp / "gradio-cache" / "0a1b2c3d" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return {"stored": str(path), "name": name}


def _zip(members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> bytearray:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return bytearray(buf.getvalue())


def _patch_headers(data: bytearray, local: int, central: int, fmt: str, value) -> bytearray:
    """Overwrite one field of the first member's local header and of its central directory entry."""
    struct.pack_into(fmt, data, local, value)
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into(fmt, data, cd + central, value)
    return data


def zip_build(kind: str):
    def build(tmp: Path, ctx: dict) -> dict:
        payload = b"DICM-not-really" * 100
        if kind == "lying-name":  # the local header names another file than the directory
            data = _zip({"slice1.dcm": payload})
            data[30:40] = b"other1.dcm"
        elif kind == "crc":
            data = _zip({"slice1.dcm": payload})
            data[30 + len("slice1.dcm") + 7] ^= 0xFF
        elif kind == "truncated":
            data = _zip({"slice1.dcm": payload, "slice2.dcm": payload})[:700]
        elif kind == "bigger-than-declared":  # deflated 200 kB, headers say 100 bytes
            data = _patch_headers(_zip({"slice1.dcm": b"\0" * 200_000}, zipfile.ZIP_DEFLATED), 22, 24, "<I", 100)
        elif kind == "bomb":  # honest headers, 200 kB from a few hundred bytes
            data = _zip({f"s{i}.dcm": b"\0" * 50_000 for i in range(4)}, zipfile.ZIP_DEFLATED)
        elif kind == "encrypted":
            data = _patch_headers(_zip({"slice1.dcm": payload}), 6, 8, "<H", 1)
        elif kind == "unknown-compression":
            data = _patch_headers(_zip({"slice1.dcm": payload}), 8, 10, "<H", 97)
        elif kind == "empty":
            data = _zip({})
        elif kind == "not-dicom":
            data = _zip({"notes/readme.txt": b"hello " * 50})
        else:
            raise AssertionError(kind)
        return _stored(tmp, "patient scan.zip", bytes(data))

    return build


def _png_header_only(width: int, height: int, color_type: int) -> bytes:
    """A PNG whose header declares ``width x height`` (8 bit, ``color_type``) with one tiny IDAT: an
    image bomb as far as a header check can tell."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def file_build(name: str, data):
    def build(tmp: Path, ctx: dict) -> dict:
        return _stored(tmp, name, data() if callable(data) else data)

    return build


def read_as_upload(limit: int = LIMIT):
    """``call``: the app's upload path on the row's file; the message is kept for ``no_server_path``."""
    def call(ctx: dict):
        from medsam3.app.uploads import SessionFiles, read_upload
        from medsam3.errors import MedSAM3Error

        files = ctx.setdefault("files", SessionFiles(Path(ctx["tmp"]) / "server", max_upload_bytes=limit))
        try:
            return read_upload(files, "session-1", ctx["stored"])
        except MedSAM3Error as exc:
            ctx["message"] = str(exc)
            raise

    return call


def no_server_path(ctx: dict) -> None:
    """The message names no server folder, and the session keeps nothing of the refused upload."""
    message = ctx.get("message", "")
    assert ctx["tmp"] not in message and str(ctx["files"].root) not in message, message
    assert not re.search(r"(^|[\s'\"(])/[^\s/]+/", message), f"an absolute path in {message!r}"
    left = [p for p in ctx["files"].sessions.rglob("*") if p.is_file()]
    assert not left, f"the refused upload left {left}"


def _random(n: int) -> bytes:
    return np.random.default_rng(7).integers(0, 256, n, dtype=np.uint8).tobytes()


def _good_upload(ctx: dict) -> None:
    image, name = ctx["result"]
    assert name == "colin27_t1_2mm.nii.gz" and image.path == name  # the sidecar's "input": no server path
    assert image.shape == (90, 108, 90)
    assert not [p for p in ctx["files"].sessions.rglob("*") if p.is_file()], "the session kept the copy"


def _zip_case(name: str, kind: str, *fragments: str) -> Case:
    return Case(f"app-zip-{name}", build=zip_build(kind), call=read_as_upload(), message=("patient scan.zip",
                                                                                             *fragments),
                unchanged=("{stored}",), check=no_server_path)


CASES = [
    _zip_case("lying-header", "lying-name", "damaged zip", "slice1.dcm"),
    _zip_case("crc-error", "crc", "damaged zip", "slice1.dcm", "crc"),
    _zip_case("truncated", "truncated", "not a readable zip"),
    _zip_case("member-bigger-than-declared", "bigger-than-declared", "slice1.dcm"),
    _zip_case("bomb", "bomb", "unpacks to more than 80 kB"),
    _zip_case("encrypted", "encrypted", "slice1.dcm", "is encrypted", "not accepted"),
    _zip_case("unknown-compression", "unknown-compression", "damaged zip", "compression"),
    _zip_case("empty", "empty", "is empty"),
    _zip_case("not-dicom", "not-dicom"),
    Case("app-png-bomb", build=file_build("huge.png", _png_header_only(30000, 30000, 6)),
         call=read_as_upload(512 * 10**6), message=("huge.png", "3600 MB of pixel data", "2048 MB"),
         check=no_server_path),
    Case("app-random-png", build=file_build("photo.png", lambda: _random(4000)), call=read_as_upload(),
         message=("photo.png",), check=no_server_path),
    Case("app-zero-byte-nifti", build=file_build("empty.nii.gz", b""), call=read_as_upload(),
         message=("empty.nii.gz",), check=no_server_path),
    Case("app-truncated-nifti", build=file_build("brain.nii.gz", lambda: SAMPLE.read_bytes()[:5000]),
         call=read_as_upload(10**8), message=("brain.nii.gz",), check=no_server_path),
    Case("app-random-dicom", build=file_build("slice.dcm", lambda: _random(3000)), call=read_as_upload(),
         message=("slice.dcm",), check=no_server_path),
    Case("app-no-ending", build=file_build("notes", b"just some text\n" * 20), call=read_as_upload(),
         message=("notes",), check=no_server_path),
    Case("app-mhd-alone", build=file_build("head.mhd", b"ObjectType = Image\nNDims = 3\n"), call=read_as_upload(),
         message=("head.mhd", "cannot be uploaded on their own"), check=no_server_path),
    Case("app-too-large", build=file_build("big.png", lambda: _random(LIMIT + 1)), call=read_as_upload(),
         message=("big.png", "accepts files up to 20 kB", "--max-upload-mb"), check=no_server_path),
    Case("app-good-upload", build=file_build("colin27_t1_2mm.nii.gz", SAMPLE.read_bytes), call=read_as_upload(10**8),
         exit_code=0, check=_good_upload),
]


@pytest.mark.parametrize("case", params(CASES))
def test_app_bad_upload(case, run):
    run(case)
