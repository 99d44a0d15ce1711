"""Every file a run will write, planned up front and checked before anything is written.

A run (``medsam3 segment``, an evaluation, a conversion) may write several files: a label
map, its MetaImage data file, a JSON sidecar, an instance map with its own sidecar and data
file, an overlay PNG. :class:`OutputPlan` collects them all, with every file the inputs are
made of (a MetaImage / detached NRRD header *and* the data files it names, every file of a
DICOM series), and :meth:`OutputPlan.check` refuses the run, before the first byte is
written, when

* an output is an input file: the same path, a symbolic link to it, or a hard link of it
  (same ``st_dev`` / ``st_ino``);
* an output lies inside an input directory (a DICOM series folder);
* two outputs are the same file;
* an output is an existing directory.

So no output path can ever touch an input, and a refusal leaves nothing half-written.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from medsam3.errors import ArgumentError
from medsam3.image import Image
from medsam3.io.formats import METAIMAGE_DETACHED, format_for_extension, strip_image_extension

# A header is a few hundred bytes; a LIST of slice files can be long but not this long.
_HEADER_READ_LIMIT = 4 * 2**20
# A file-name pattern (``slice%03d.raw 1 400 1``) naming more files than this is not believed.
_PATTERN_LIMIT = 100_000


@dataclass(frozen=True)
class _Entry:
    path: Path
    role: str
    shown: str  # as the user gave it, for messages
    resolved: Path
    identity: tuple[int, int] | None  # (st_dev, st_ino) of an existing file
    replaces_directory: bool = False  # the output is a whole directory, replaced with all it holds


def _given(path: str | os.PathLike) -> Path:
    return Path(os.path.expanduser(os.fspath(path)))


def _absolute(path: str | os.PathLike) -> Path:
    return Path(os.path.abspath(os.path.expanduser(os.fspath(path))))


def _entry(path: str | os.PathLike, role: str) -> _Entry:
    shown = os.fspath(path)
    path = _absolute(path)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path as given
        resolved = path
    try:
        st = os.stat(path)
        identity = (st.st_dev, st.st_ino)
    except OSError:
        identity = None
    return _Entry(path, role, shown, resolved, identity)


def _expand_pattern(spec: str, base: Path) -> list[Path]:
    """``name%03d.raw MIN MAX STEP`` (MetaImage, NRRD) -> the files it names."""
    parts = spec.split()
    try:
        first, last = int(parts[1]), int(parts[2])
        step = int(parts[3]) if len(parts) > 3 else 1
    except (IndexError, ValueError):
        return [base / spec]
    if step == 0 or (last - first) // step + 1 > _PATTERN_LIMIT:
        return [base / parts[0]]
    try:
        return [base / (parts[0] % i) for i in range(first, last + (1 if step > 0 else -1), step)]
    except (TypeError, ValueError):
        return [base / parts[0]]


def _data_files(header: Path) -> list[Path]:
    """The data files a MetaImage (``.mhd``) or detached NRRD (``.nhdr``) header names.

    ``ElementDataFile = LOCAL`` names none; ``LIST`` names the lines that follow; a
    ``%d`` pattern with a range names each file of the range. Relative names are relative to
    the header's folder. Unreadable headers name none (the reader reports them).
    """
    try:
        with open(header, "rb") as fh:
            text = fh.read(_HEADER_READ_LIMIT).decode("utf-8", errors="replace")
    except OSError:
        return []
    base = header.parent
    lines = text.splitlines()
    mhd = header.name.lower().endswith(".mhd")
    for i, line in enumerate(lines):
        if mhd:
            key, sep, value = line.partition("=")
            if not sep or key.strip().lower() != "elementdatafile":
                continue
        else:
            match = re.match(r"\s*data ?file\s*:(.*)", line, re.IGNORECASE)
            if not match:
                continue
            value = match.group(1)
        value = value.strip()
        if not value or value.upper() == "LOCAL":
            return []
        if value.split()[0].upper() == "LIST":
            rest = (entry.strip() for entry in lines[i + 1:])
            return [base / name for name in rest if name and not name.startswith("#")]
        if "%" in value and len(value.split()) >= 3:
            return _expand_pattern(value, base)
        return [base / value]
    return []


def input_files(source) -> list[Path]:
    """The files and folders an input is made of: ``source`` itself, the data files its
    MetaImage / detached NRRD header names, and for an :class:`~medsam3.Image` read from DICOM
    every file of its series (``meta["dicom"]["files"]``).

    ``source``: a path, or an :class:`~medsam3.Image` (its ``path`` and ``meta``); an Image
    without a path gives ``[]``.
    """
    return [path for path, _ in _input_parts(source, "input")]


def _input_parts(source, role: str) -> list[tuple[Path, str]]:
    """:func:`input_files` with what each file is, in words."""
    parts: list[tuple[Path, str]] = []
    series: list[str] = []
    if isinstance(source, Image):
        dicom = source.meta.get("dicom") if isinstance(source.meta, dict) else None
        if isinstance(dicom, dict):
            series = [str(f) for f in dicom.get("files") or []]
        source = source.path
    if source:
        path = _given(source)
        parts.append((path, f"{role} DICOM directory" if series and path.is_dir() else role))
        if path.name.lower().endswith((".mhd", ".nhdr")) and path.is_file():
            parts.extend((data, f"data file of the {role} {path}") for data in _data_files(path))
    parts.extend((_given(f), f"{role}'s DICOM series file") for f in series)
    return parts


def image_output_files(path: str | os.PathLike) -> list[tuple[Path, str]]:
    """The files that writing an image to ``path`` creates, with what each is:
    ``seg.mhd`` -> ``seg.mhd`` and its data file ``seg.zraw`` (SimpleITK writes the pixels
    compressed); other formats -> the one file."""
    path = _given(path)
    files = [(path, "")]
    if format_for_extension(path) is METAIMAGE_DETACHED:
        stem = strip_image_extension(path)
        files.append((stem.with_name(stem.name + ".zraw"), " data file"))
    return files


class OutputPlan:
    """The inputs and outputs of one run; :meth:`check` before writing anything.

    Example::

        plan = OutputPlan()
        plan.add_input(image)                       # its file(s), data files, DICOM series
        plan.add_image("seg.mhd", "label map")      # seg.mhd + seg.zraw
        plan.add("seg.json", "sidecar")
        plan.add("overlay.png", "overlay")
        plan.check()                                # ArgumentError naming both files
    """

    def __init__(self) -> None:
        self._inputs: list[_Entry] = []
        self._outputs: list[_Entry] = []

    @property
    def outputs(self) -> list[Path]:
        """The planned output files, in the order they were added."""
        return [e.path for e in self._outputs]

    def add_input(self, source, role: str = "input image") -> None:
        """Protect ``source`` (a path or an :class:`~medsam3.Image`) and the files it is made of."""
        for path, what in _input_parts(source, role):
            self._inputs.append(_entry(path, what))

    def add(self, path: str | os.PathLike, role: str) -> Path:
        """Plan one output file; returns its absolute path."""
        entry = _entry(path, role)
        self._outputs.append(entry)
        return entry.path

    def add_directory(self, path: str | os.PathLike, role: str) -> Path:
        """Plan an output directory that is replaced as a whole (a model directory): no input
        may be it or lie inside it."""
        entry = _entry(path, role)
        self._outputs.append(_Entry(entry.path, role, entry.shown, entry.resolved, entry.identity, True))
        return entry.path

    def add_image(self, path: str | os.PathLike, role: str) -> Path:
        """Plan an image file and the data file its format writes beside it (``.mhd``)."""
        for file, what in image_output_files(path):
            self.add(file, role + what)
        return _given(path)

    def check(self) -> None:
        """Raise :class:`ArgumentError` naming the clash when any output would touch an input,
        another output, or a directory. Writes nothing."""
        for i, out in enumerate(self._outputs):
            if out.path.is_dir() and not out.replaces_directory:
                raise ArgumentError(f"cannot write the {out.role} {out.shown}: it is a directory; "
                                    "give a file name")
            clashes = [(clash, inp) for inp in self._inputs if (clash := _clash(out, inp))]
            # "it is the series file" says more than "it is inside the series folder"
            clashes.sort(key=lambda c: c[0] == _INSIDE)
            for clash, inp in clashes[:1]:
                raise ArgumentError(f"refusing to write the {out.role} {out.shown}: {clash} the "
                                    f"{inp.role} {inp.shown}; choose another output name")
            for other in self._outputs[:i]:
                if _same(out, other):
                    raise ArgumentError(f"refusing to write the {out.role} {out.shown}: it is also the "
                                        f"{other.role}; give each output its own name")


_INSIDE = "it is inside"


def _same(a: _Entry, b: _Entry) -> bool:
    return a.resolved == b.resolved or (a.identity is not None and a.identity == b.identity)


def _clash(out: _Entry, inp: _Entry) -> str | None:
    """How ``out`` would touch ``inp``, in words, or None."""
    if out.path == inp.path:
        return "it is"
    if out.resolved == inp.resolved:
        return "it is (through a symbolic link)"
    if out.identity is not None and out.identity == inp.identity:
        return "it is a hard link of"
    if inp.resolved.is_dir() and inp.resolved in out.resolved.parents:
        return _INSIDE
    if out.replaces_directory and out.resolved in inp.resolved.parents:
        return "replacing it would delete"
    return None
