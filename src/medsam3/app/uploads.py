"""Uploads for the web app: one temporary folder per server and per session, size limits, safe copies.

The server keeps everything it stores in one temporary folder (:attr:`SessionFiles.root`),
which is also Gradio's upload cache (``GRADIO_TEMP_DIR``): Gradio's own copies of uploads,
and every session's folder ``sessions/<hash>`` holding the session's copies of its uploads,
its results and the pictures it was shown. A session's folder and Gradio's copies of the
session's uploads are deleted when the session ends; the whole root when the server stops.

No name or path that came from the browser is ever used to build a file path. An upload is
copied into a fresh folder of its own (so two uploads at once cannot collide) under a fixed
name (``input`` plus the format's ending, matched against the known formats); a zipped DICOM
series is unpacked member by member into numbered files (``series/00000.dcm`` ...), so ``../``
or absolute member names cannot reach outside the session folder. Error messages name the
user's file (and zip member), never a server path (:meth:`Upload.user_words`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from medsam3.errors import ArgumentError, InputError, MedSAM3Error
from medsam3.io.formats import image_extension

#: Single-file inputs an upload may be (``.mhd`` / ``.nhdr`` need a second file, so they are
#: not offered); ``.zip`` is a DICOM series; a file without a known ending is tried as DICOM.
UPLOAD_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                     ".dcm", ".dicom", ".ima", ".zip")

#: An upload may unpack (a zip's members, decompressed) or decode (an image's pixel data, as its
#: header declares) to at most this many times the upload limit: bounds zip and image bombs.
MAX_UNPACK_RATIO = 4
MAX_ZIP_MEMBERS = 5000

#: What a broken zip raises while it is read (lying headers, bad CRC, truncation, encryption,
#: unknown compression); all become one :class:`InputError` naming the upload.
_ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError, ValueError)

#: An absolute path (POSIX or Windows) inside a message: a run of ``/name`` parts.
_ABSOLUTE_PATH = re.compile(r"(?:(?<![\w])[A-Za-z]:\\|(?<![\w.~:/])/)(?:[^\s/\\'\"<>:,;()]+[/\\])*[^\s/\\'\"<>:,;()]+")


def format_megabytes(n_bytes: int) -> str:
    """``512 MB``, ``1.6 MB``, ``20 kB``: whole numbers from 10 up, one decimal below."""
    value, unit = (n_bytes / 1e6, "MB") if n_bytes >= 1e6 else (n_bytes / 1e3, "kB")
    text = f"{value:.0f}" if value >= 10 else f"{value:.1f}".removesuffix(".0")
    return f"{text} {unit}"


def strip_paths(text: str) -> str:
    """``text`` with every absolute path replaced by its last part (the file name): no server folders."""
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0).replace("\\", "/")).name or "file", text)


@dataclass
class Upload:
    """One accepted upload, as stored in its session.

    Attributes:
        path: what :func:`medsam3.io.read_image` should read: ``FOLDER/input.EXT`` or ``FOLDER/series``.
        name: the file name the user uploaded (no folders), for messages and downloads.
        folder: the upload's own folder in the session (removed with it).
        members: for a zip, the numbered file's name -> the member's name inside the zip.
    """

    path: Path
    name: str
    folder: Path
    members: dict[str, str] = field(default_factory=dict)

    def user_words(self, text: str) -> str:
        """An error message in the user's words: the upload's server paths become the uploaded file's
        name (a zip member's path ``NAME.zip: MEMBER``), any other absolute path its bare file name."""
        words = {}
        for number, member in self.members.items():
            words[str(self.path / number)] = f"{self.name}: {member}"
        words[str(self.path)] = self.name
        words[str(self.folder)] = self.name
        # longest first: a member's path before its folder's
        for server, user in sorted(words.items(), key=lambda kv: -len(kv[0])):
            text = text.replace(server, user)
            real = os.path.realpath(server)
            if real != server:
                text = text.replace(real, user)
        return strip_paths(text)


class SessionFiles:
    """The server's temporary folder and its browser sessions' folders, one per session.

    Args:
        parent: where the server's temporary folder is made (the system's temporary folder when
            ``None``); the folder itself is always new, and removed by :meth:`remove_all`.
        max_upload_bytes: the largest upload accepted; an upload may unpack or decode to at
            most :data:`MAX_UNPACK_RATIO` times this.
    """

    def __init__(self, parent: str | Path | None = None, max_upload_bytes: int = 512 * 10**6):
        if parent is not None:
            Path(parent).mkdir(parents=True, exist_ok=True)
        self.root = Path(tempfile.mkdtemp(prefix="medsam3-app-", dir=parent)).resolve()
        self.sessions = self.root / "sessions"
        self.sessions.mkdir()
        self.max_upload_bytes = int(max_upload_bytes)
        self._lock = threading.Lock()
        self._framework_files: dict[str, set[Path]] = {}
        self._ended: set[str] = set()

    @property
    def unpack_limit(self) -> int:
        return MAX_UNPACK_RATIO * self.max_upload_bytes

    @staticmethod
    def _digest(session_id: str) -> str:
        return hashlib.sha256(str(session_id).encode("utf-8")).hexdigest()[:32]

    def directory(self, session_id: str) -> Path:
        """The session's folder (made on first use); the id is hashed, never used as a name.

        Raises:
            ArgumentError: the session has ended (its folder is not made again).
        """
        digest = self._digest(session_id)
        if digest in self._ended:
            raise ArgumentError("this session has ended; reload the page to start a new one")
        path = self.sessions / digest
        path.mkdir(exist_ok=True)
        return path

    def remember(self, session_id: str, path: str | Path) -> None:
        """Note a file the web framework stored for this session (its copy of an upload), to be deleted
        with the session. Paths outside :attr:`root` are never noted (nothing else is ever deleted)."""
        path = Path(os.path.abspath(path))
        if path.is_relative_to(self.root) and path != self.root:
            with self._lock:
                self._framework_files.setdefault(self._digest(session_id), set()).add(path)

    def remove(self, session_id: str) -> None:
        """Delete the session's folder and the framework's copies of its uploads (the session ended)."""
        digest = self._digest(session_id)
        with self._lock:
            noted = self._framework_files.pop(digest, set())
            self._ended.add(digest)
        shutil.rmtree(self.sessions / digest, ignore_errors=True)
        for path in noted:
            try:
                path.unlink()
                if path.parent != self.root:
                    path.parent.rmdir()  # Gradio keeps each upload in a folder of its own
            except OSError:
                pass

    def remove_all(self) -> None:
        """Delete the server's whole temporary folder (the server stops)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def new_folder(self, session_id: str, kind: str) -> Path:
        """A fresh, empty folder ``SESSION/KIND-XXXXXXXX`` (unique: concurrent events never share one)."""
        return Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=self.directory(session_id)))

    def check_size(self, n_bytes: int, what: str = "the upload") -> None:
        if n_bytes > self.max_upload_bytes:
            raise ArgumentError(f"{what} is {format_megabytes(n_bytes)}; this server accepts files up to "
                                f"{format_megabytes(self.max_upload_bytes)} (medsam3 serve --max-upload-mb)")

    def accept_upload(self, session_id: str, uploaded: str | Path, original_name: str) -> Upload:
        """Copy an uploaded file into a fresh folder of the session.

        Args:
            uploaded: the server-side temporary file the web framework stored the upload in.
            original_name: the name the browser gave; only its format ending is looked at (and
                its last part is shown in messages).

        Returns:
            an :class:`Upload`; its ``path`` is ``FOLDER/input.EXT`` for a single file, or
            ``FOLDER/series`` (a folder of numbered DICOM files) for a zip.

        Raises:
            ArgumentError: too large, or a kind of file that cannot be uploaded alone.
            InputError: a broken zip, or one that unpacks to too much (the folder is removed).
        """
        uploaded = Path(uploaded)
        shown = Path(str(original_name).replace("\\", "/")).name or "upload"
        self.check_size(uploaded.stat().st_size, shown)
        name = shown.lower()
        ext = ".zip" if name.endswith(".zip") else image_extension(name)
        if ext and ext not in UPLOAD_EXTENSIONS:
            raise ArgumentError(f"{shown}: {ext} files cannot be uploaded on their own; "
                                f"accepted: {', '.join(UPLOAD_EXTENSIONS)} (or a DICOM file without ending)")
        folder = self.new_folder(session_id, "upload")
        try:
            if ext == ".zip":
                series = folder / "series"
                members = self._unpack_series(uploaded, series, shown)
                return Upload(series, shown, folder, members)
            path = folder / ("input" + ext)
            shutil.copyfile(uploaded, path)
            return Upload(path, shown, folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise

    def _unpack_series(self, archive: Path, target: Path, shown_name: str) -> dict[str, str]:
        limit = self.unpack_limit
        too_big = (f"{shown_name} unpacks to more than {format_megabytes(limit)}; at most {MAX_UNPACK_RATIO} x "
                   f"the upload limit is accepted (medsam3 serve --max-upload-mb)")
        try:
            zf = zipfile.ZipFile(archive)
        except (*_ZIP_ERRORS, OSError):
            raise InputError(f"{shown_name} is not a readable zip archive; upload a .zip of one DICOM series") from None
        members_of: dict[str, str] = {}
        with zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if not members:
                raise InputError(f"{shown_name} is empty; expected a zip of one DICOM series")
            if len(members) > MAX_ZIP_MEMBERS:
                raise InputError(f"{shown_name} holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are accepted")
            if sum(m.file_size for m in members) > limit:  # what the headers declare; checked again below
                raise InputError(too_big)
            target.mkdir()
            written = 0
            for i, member in enumerate(members):
                number = f"{i:05d}.dcm"  # numbered names: the member's own path is never used
                members_of[number] = member.filename
                if member.flag_bits & 0x1:
                    raise InputError(f"{shown_name}: member {member.filename!r} is encrypted; password-protected "
                                     "zips are not accepted")
                try:
                    with zf.open(member) as src, open(target / number, "wb") as dst:
                        # decompressed bytes are counted as they come: the headers' sizes can lie
                        while chunk := src.read(1 << 20):
                            written += len(chunk)
                            if written > limit:
                                raise InputError(too_big)
                            dst.write(chunk)
                except _ZIP_ERRORS as exc:
                    reason = strip_paths(str(exc)) or type(exc).__name__
                    raise InputError(f"{shown_name} is a damaged zip archive: member {member.filename!r} cannot "
                                     f"be unpacked ({reason})") from None
        return members_of

    def check_decoded_size(self, upload: Upload) -> None:
        """Refuse an image whose header declares more pixel data than :attr:`unpack_limit`, before decoding.

        Reads only the header (SimpleITK's image information, or pydicom without pixel data);
        files whose header cannot be read are left to the reader, which reports them.
        """
        if upload.path.is_dir():
            return  # a zipped series: bounded by its unpacked size
        n_bytes = _declared_pixel_bytes(upload.path)
        if n_bytes is not None and n_bytes > self.unpack_limit:
            raise InputError(f"{upload.name} declares {format_megabytes(n_bytes)} of pixel data; at most "
                             f"{format_megabytes(self.unpack_limit)} ({MAX_UNPACK_RATIO} x the upload limit) "
                             "are accepted (medsam3 serve --max-upload-mb)")


def _declared_pixel_bytes(path: Path) -> int | None:
    """Bytes of pixel data ``path``'s header declares, or ``None`` when the header cannot be read."""
    import numpy as np

    try:
        import SimpleITK as sitk

        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        voxels = int(np.prod([int(n) for n in reader.GetSize()], dtype=object))
        per_pixel = reader.GetNumberOfComponents() * _itk_bytes(reader.GetPixelID())
        return voxels * per_pixel
    except Exception:  # noqa: BLE001 - any failure: fall through to DICOM, then to the reader
        pass
    try:
        import pydicom

        ds = pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
        rows, cols = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
        if not rows or not cols:
            return None
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
        bits = int(ds.get("BitsAllocated") or 8)
        return rows * cols * frames * samples * max(1, bits // 8)
    except Exception:  # noqa: BLE001
        return None


def _itk_bytes(pixel_id: int) -> int:
    import SimpleITK as sitk

    sizes = {}
    for kind, n in (("UInt8", 1), ("Int8", 1), ("UInt16", 2), ("Int16", 2), ("UInt32", 4), ("Int32", 4),
                    ("UInt64", 8), ("Int64", 8), ("Float32", 4), ("Float64", 8)):
        for prefix in ("sitk", "sitkVector"):  # a vector image's components are counted apart
            if hasattr(sitk, prefix + kind):
                sizes[getattr(sitk, prefix + kind)] = n
    return sizes.get(pixel_id, 8)


def user_message(exc: BaseException, upload: Upload | None, shown_name: str, stored: str | Path | None = None) -> str:
    """``exc``'s message as the user should read it: ``upload``'s server paths (and ``stored``, the
    framework's copy of the upload) named by the uploaded file's name, no other server folder shown."""
    text = str(exc)
    if stored is not None:
        text = text.replace(str(stored), shown_name)
    text = upload.user_words(text) if upload is not None else strip_paths(text)
    return text.strip() or type(exc).__name__


def read_upload(files: SessionFiles, session_id: str, stored: str | Path, shown_name: str | None = None):
    """Accept an upload into the session and read it: what the web app does with each upload.

    Args:
        files: the server's :class:`SessionFiles`.
        stored: the file the web framework stored the upload in (its name is the user's file name
            unless ``shown_name`` says otherwise).
        shown_name: the user's file name (default: ``stored``'s last part).

    Returns:
        ``(image, name)``: the :class:`medsam3.Image` (its ``path`` is the user's file name, so
        later messages and the sidecar's ``input`` name it, not a server path) and that name. The
        session's copy of the upload is deleted once read: the image is in memory.

    Raises:
        MedSAM3Error: too large (sent, unpacked or declared by the header), a broken zip, an
            unreadable image; the message names the user's file, never a server path.
    """
    from medsam3.io import read_image

    shown = shown_name or Path(str(stored).replace("\\", "/")).name or "upload"
    upload = None
    try:
        upload = files.accept_upload(session_id, stored, shown)
        files.check_decoded_size(upload)
        image = read_image(upload.path)
    except MedSAM3Error as exc:
        raise type(exc)(user_message(exc, upload, shown, stored)) from None
    except MemoryError:
        raise InputError(f"{shown} is too large to read into this server's memory") from None
    except Exception as exc:  # noqa: BLE001 - a reader's own exception: one clean line, the log has the rest
        import logging

        logging.getLogger(__name__).exception("reading the upload %s failed", shown)
        raise InputError(f"{shown} could not be read: {user_message(exc, upload, shown, stored)}") from None
    finally:
        if upload is not None:
            shutil.rmtree(upload.folder, ignore_errors=True)
    image.path = shown
    return image, shown
