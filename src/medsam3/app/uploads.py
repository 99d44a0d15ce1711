"""Uploads for the web app: per-session working directories, size limits, safe copies.

No name or path that came from the browser is ever used to build a file path. An upload is
copied into the session's own directory under a fixed name (``input`` plus the format's
ending, which is matched against the known formats); a zipped DICOM series is unpacked
member by member into numbered files (``series/00000.dcm`` ...), so ``../`` or absolute
member names cannot reach outside the session directory.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import zipfile
from pathlib import Path

from medsam3.errors import ArgumentError
from medsam3.io.formats import image_extension

#: Single-file inputs an upload may be (``.mhd`` / ``.nhdr`` need a second file, so they are
#: not offered); ``.zip`` is a DICOM series; a file without a known ending is tried as DICOM.
UPLOAD_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".jpg", ".jpeg", ".tif", ".tiff",
                     ".dcm", ".dicom", ".ima", ".zip")

#: A zipped series may unpack to at most this many times the upload limit (zip bombs).
MAX_UNPACK_RATIO = 4
MAX_ZIP_MEMBERS = 5000


def format_megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1e6:.0f} MB" if n_bytes >= 1e6 else f"{n_bytes / 1e3:.0f} kB"


class SessionFiles:
    """The temporary directories of the app's browser sessions, one per session.

    Args:
        root: where session directories are made; a fresh temporary directory when ``None``.
        max_upload_bytes: the largest upload accepted (also bounds an unpacked zip).
    """

    def __init__(self, root: str | Path | None = None, max_upload_bytes: int = 512 * 10**6):
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="medsam3-app-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_upload_bytes = int(max_upload_bytes)

    def directory(self, session_id: str) -> Path:
        """The session's directory (made on first use); the id is hashed, never used as a name."""
        digest = hashlib.sha256(str(session_id).encode("utf-8")).hexdigest()[:32]
        path = self.root / digest
        path.mkdir(exist_ok=True)
        return path

    def remove(self, session_id: str) -> None:
        digest = hashlib.sha256(str(session_id).encode("utf-8")).hexdigest()[:32]
        shutil.rmtree(self.root / digest, ignore_errors=True)

    def remove_all(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def fresh_upload_directory(self, session_id: str) -> Path:
        """An empty ``upload`` directory in the session's directory (the previous upload is dropped)."""
        path = self.directory(session_id) / "upload"
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir()
        return path

    def check_size(self, n_bytes: int, what: str = "the upload") -> None:
        if n_bytes > self.max_upload_bytes:
            raise ArgumentError(f"{what} is {format_megabytes(n_bytes)}; this server accepts files up to "
                                f"{format_megabytes(self.max_upload_bytes)} (medsam3 serve --max-upload-mb)")

    def accept_upload(self, session_id: str, uploaded: str | Path, original_name: str) -> Path:
        """Copy an uploaded file into the session and return what :func:`medsam3.io.read_image` should read.

        Args:
            uploaded: the server-side temporary file the web framework stored the upload in.
            original_name: the name the browser gave; only its format ending is looked at.

        Returns:
            ``SESSION/upload/input.EXT`` for a single file, or ``SESSION/upload/series`` (a
            directory of numbered DICOM files) for a zip.
        """
        uploaded = Path(uploaded)
        self.check_size(uploaded.stat().st_size)
        name = str(original_name).lower()
        ext = ".zip" if name.endswith(".zip") else image_extension(name)
        if ext and ext not in UPLOAD_EXTENSIONS:
            raise ArgumentError(f"{Path(str(original_name)).name}: {ext} files cannot be uploaded on their own; "
                                f"accepted: {', '.join(UPLOAD_EXTENSIONS)} (or a DICOM file without ending)")
        target = self.fresh_upload_directory(session_id)
        if ext == ".zip":
            return self._unpack_series(uploaded, target / "series", Path(str(original_name)).name)
        path = target / ("input" + ext)
        shutil.copyfile(uploaded, path)
        return path

    def _unpack_series(self, archive: Path, target: Path, shown_name: str) -> Path:
        try:
            zf = zipfile.ZipFile(archive)
        except zipfile.BadZipFile:
            raise ArgumentError(f"{shown_name} is not a readable zip archive") from None
        with zf:
            members = [m for m in zf.infolist() if not m.is_dir()]
            if not members:
                raise ArgumentError(f"{shown_name} is empty; expected a zip of one DICOM series")
            if len(members) > MAX_ZIP_MEMBERS:
                raise ArgumentError(f"{shown_name} holds {len(members)} files; at most {MAX_ZIP_MEMBERS} are accepted")
            total = sum(m.file_size for m in members)
            limit = MAX_UNPACK_RATIO * self.max_upload_bytes
            if total > limit:
                raise ArgumentError(f"{shown_name} unpacks to {format_megabytes(total)}; at most "
                                    f"{format_megabytes(limit)} are accepted")
            target.mkdir()
            written = 0
            for i, member in enumerate(members):
                # numbered names: the member's own path is never used
                with zf.open(member) as src, open(target / f"{i:05d}.dcm", "wb") as dst:
                    while chunk := src.read(1 << 20):
                        written += len(chunk)
                        if written > limit:  # the header's sizes can lie
                            raise ArgumentError(f"{shown_name} unpacks to more than {format_megabytes(limit)}")
                        dst.write(chunk)
        return target
