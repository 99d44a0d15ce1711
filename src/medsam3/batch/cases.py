"""The cases of a batch run: found in a folder, listed in a text file, or given by a manifest,
each with the settings that differ from the run's (its own prompts, box, window...).

A case is one input (an image file, or one DICOM series) with a *name* that is unique in
the run and stable across runs: the input's path relative to the folder (or to the common
parent of the listed paths), without its image extension, ``/``-separated
(``patient01/ct.nii.gz`` -> ``patient01/ct``). The output is ``OUTDIR/<name><ext>``.
"""

from __future__ import annotations

import csv
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from medsam3.errors import ArgumentError, InputError
from medsam3.io.formats import DICOM, format_for_extension, image_extension, looks_like_dicom

#: Per-case fields a manifest or jobs file may set; each is a keyword of :func:`medsam3.segment`.
CASE_FIELDS = ("prompts", "box", "points", "point_labels", "exemplars", "exemplar_labels", "slice_index",
               "modality", "window", "series_uid")
#: Other spellings accepted in manifests and jobs files (CLI names).
_ALIASES = {"prompt": "prompts", "slice": "slice_index", "series-uid": "series_uid", "point-labels": "point_labels"}
# DICOM objects that hold no image to segment (annotations, reports, plans): not cases.
_NON_IMAGE_MODALITIES = {"SEG", "RTSTRUCT", "RTPLAN", "SR", "KO", "PR", "REG", "RWV"}
LIST_SUFFIXES = (".txt",)
MANIFEST_SUFFIXES = (".jsonl", ".csv")


@dataclass
class Case:
    """One input of a batch run.

    Attributes:
        name: unique, stable, ``/``-separated; the output is ``OUTDIR/<name><ext>``.
        input: the image file or DICOM directory.
        settings: keywords of :func:`medsam3.segment` that this case sets for itself
            (``prompts``, ``box``, ``series_uid``, ...), over the run's.
    """

    name: str
    input: Path
    settings: dict = field(default_factory=dict)


def find_cases(source, exclude: Path | None = None) -> list[Case]:
    """The cases of ``source``, sorted by name.

    Args:
        source: a folder (searched recursively; hidden files and folders skipped), a ``.txt``
            file with one path per line (``#`` comments; relative paths are relative to the
            file), a ``.jsonl`` / ``.csv`` manifest (see :func:`read_rows`; needs ``input``), or
            a list of paths.
        exclude: a folder never searched (the output directory, when it lies inside ``source``).

    Raises:
        ArgumentError: a missing source, an empty one, a manifest with bad rows, two cases
            with one name.
    """
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise ArgumentError(f"input not found: {', '.join(missing[:5])}")
        cases = [Case(n, p) for n, p in zip(_names(paths), paths, strict=True)]
    else:
        source = Path(source)
        if not source.exists():
            raise ArgumentError(f"input {source} not found: give a folder, a .txt list of paths, or a "
                                f"manifest ({', '.join(MANIFEST_SUFFIXES)})")
        if source.is_dir():
            cases = _folder_cases(source, exclude)
        elif source.suffix.lower() in LIST_SUFFIXES:
            cases = _list_cases(source)
        elif source.suffix.lower() in MANIFEST_SUFFIXES:
            cases = _manifest_cases(source)
        else:
            raise ArgumentError(f"input {source} is neither a folder, a .txt list of paths nor a manifest "
                                f"({', '.join(MANIFEST_SUFFIXES)})")
    if not cases:
        raise ArgumentError(f"no cases in {source}: no image files or DICOM series found")
    seen: dict[str, Case] = {}
    for case in cases:
        if case.name in seen:
            raise ArgumentError(f"two cases are named {case.name!r} ({seen[case.name].input} and {case.input}): "
                                "give them distinct 'case' names in a manifest")
        seen[case.name] = case
    return sorted(cases, key=lambda c: c.name)


def _folder_cases(root: Path, exclude: Path | None) -> list[Case]:
    """One case per image file and per DICOM series under ``root``."""
    exclude = exclude.resolve() if exclude is not None else None
    files: list[Path] = []
    dicom: dict[Path, list[Path]] = defaultdict(list)  # directory -> its DICOM files
    for directory, dirs, names in os.walk(root):
        here = Path(directory)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != exclude)
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = here / name
            fmt = format_for_extension(path)
            if fmt is DICOM or (fmt is None and looks_like_dicom(path)):
                dicom[here].append(path)
            elif fmt is not None and fmt.readable:
                files.append(path)
    cases = [Case(_name(p, root), p) for p in files]
    for directory, members in sorted(dicom.items()):
        cases += _dicom_cases(directory, members, root)
    return _disambiguate(cases, root)


def _dicom_cases(directory: Path, files: list[Path], root: Path) -> list[Case]:
    """The DICOM files of one directory as cases: one per series (the directory, with its
    SeriesInstanceUID); a file whose header cannot be read is a case of its own, so that it
    fails with its reason instead of vanishing."""
    import pydicom

    series: dict[str, list[Path]] = defaultdict(list)
    cases = []
    for path in files:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, force=True,
                                     specific_tags=["SeriesInstanceUID", "Modality", "SeriesNumber"])
            uid = str(header.get("SeriesInstanceUID", "") or "")
            modality = str(header.get("Modality", "") or "").upper()
        except Exception:  # unreadable: its own case, reported by the reader
            cases.append(Case(_name(path, root), path))
            continue
        if modality in _NON_IMAGE_MODALITIES:
            continue
        series[uid].append(path)
    for uid, members in sorted(series.items()):
        if len(series) == 1 and len(members) > 1:
            name = _name(directory, root) if directory != root else root.name
            cases.append(Case(name, directory, {"series_uid": uid} if uid else {}))
        elif len(members) == 1:  # a single-file series (or an enhanced multi-frame one)
            cases.append(Case(_name(members[0], root), members[0]))
        else:
            base = _name(directory, root) if directory != root else root.name
            cases.append(Case(f"{base}/series-{uid}", directory, {"series_uid": uid}))
    return cases


def _name(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, ``/``-separated, without its image extension."""
    relative = PurePosixPath(*path.relative_to(root).parts)
    ext = image_extension(path)
    text = str(relative)
    return text[: len(text) - len(ext)] if ext else text


def _disambiguate(cases: list[Case], root: Path) -> list[Case]:
    """Cases that would share a name (``a.nii`` and ``a.nii.gz``) keep their whole file name."""
    count: dict[str, int] = defaultdict(int)
    for c in cases:
        count[c.name] += 1
    for c in cases:
        if count[c.name] > 1 and c.input.is_file():
            c.name = str(PurePosixPath(*c.input.relative_to(root).parts))
    return cases


def _names(paths: list[Path]) -> list[str]:
    """Names for listed paths: relative to their common parent folder."""
    absolute = [p.resolve() for p in paths]
    if len(absolute) == 1:
        root = absolute[0].parent
    else:
        root = Path(os.path.commonpath([str(p) for p in absolute]))
        if root in absolute:  # one listed path holds the others: name from its parent
            root = root.parent
    names = [_name(p, root) for p in absolute]
    count: dict[str, int] = defaultdict(int)
    for n in names:
        count[n] += 1
    return [str(PurePosixPath(*p.relative_to(root).parts)) if count[n] > 1 else n
            for n, p in zip(names, absolute, strict=True)]


def _list_cases(path: Path) -> list[Case]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"cannot read the list {path}: {exc}") from None
    paths, missing = [], []
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        p = Path(os.path.expanduser(line))
        p = p if p.is_absolute() else path.parent / p
        (paths if p.exists() else missing).append(p if p.exists() else f"line {number}: {line}")
    if missing:
        raise ArgumentError(f"{path}: {len(missing)} listed input(s) not found: {'; '.join(map(str, missing[:5]))}")
    return [Case(n, p) for n, p in zip(_names(paths), paths, strict=True)]


def _manifest_cases(path: Path) -> list[Case]:
    rows = read_rows(path)
    for number, row in rows:
        if "input" not in row:
            raise ArgumentError(f"{path} row {number}: no 'input' (a manifest row needs the image's path)")
    inputs = []
    for number, row in rows:
        p = Path(os.path.expanduser(str(row["input"])))
        p = p if p.is_absolute() else path.parent / p
        if not p.exists():
            raise ArgumentError(f"{path} row {number}: input {row['input']} not found")
        inputs.append(p)
    names = _names(inputs)
    return [Case(str(row.get("case") or name), p, {k: row[k] for k in CASE_FIELDS if k in row})
            for (number, row), name, p in zip(rows, names, inputs, strict=True)]


def read_rows(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """The rows of a manifest or jobs file, as ``(row number, fields)`` with fields checked.

    JSONL: one object per line, e.g.
    ``{"input": "ct/a.nii.gz", "prompts": ["liver", "spleen"], "window": "abdomen"}``;
    ``box`` ``[x0, y0, x1, y1]``, ``points`` ``[[x, y], ...]``, ``point_labels`` ``[1, 0]``,
    ``slice`` an int, ``window`` a preset or ``[level, width]``.
    CSV: a header row with the same names; ``prompts`` separated by ``;``, numbers by spaces or
    commas (``box`` ``"10 20 80 90"``, ``points`` ``"30 40; 50 60"``, ``window`` ``"40,400"``).

    Raises:
        ArgumentError: unreadable file, a bad line, an unknown field (the row and the field named).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ArgumentError(f"cannot read {path}: {exc}") from None
    raw: list[tuple[int, dict]] = []
    if path.suffix.lower() == ".csv":
        reader = csv.DictReader(text.splitlines())
        for number, row in enumerate(reader, start=2):
            if None in row:
                raise ArgumentError(f"{path} line {number}: more values than columns")
            raw.append((number, {k.strip(): v for k, v in row.items() if k and v is not None and v.strip()}))
        raw = [(n, _from_csv(r, path, n)) for n, r in raw]
    else:
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise ArgumentError(f"{path} line {number}: not JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise ArgumentError(f"{path} line {number}: expected a JSON object, got {line.strip()[:60]}")
            raw.append((number, row))
    rows = []
    for number, row in raw:
        fields = {}
        for key, value in row.items():
            key = _ALIASES.get(key, key)
            if key not in CASE_FIELDS and key not in ("input", "case"):
                raise ArgumentError(f"{path} row {number}: unknown field {key!r}; accepted: input, case, "
                                    f"{', '.join(CASE_FIELDS)}")
            fields[key] = value
        if isinstance(fields.get("prompts"), str):
            fields["prompts"] = [fields["prompts"]]
        if "slice_index" in fields:
            try:
                fields["slice_index"] = int(fields["slice_index"])
            except (TypeError, ValueError):
                raise ArgumentError(f"{path} row {number}: slice {fields['slice_index']!r} is not an integer") from None
        if isinstance(fields.get("window"), list):
            fields["window"] = tuple(fields["window"])
        rows.append((number, fields))
    return rows


def _from_csv(row: dict, path: Path, number: int) -> dict:
    """CSV cells (text) as the JSON values they stand for."""

    def numbers(text: str) -> list[float]:
        try:
            return [float(v) for v in text.replace(",", " ").split()]
        except ValueError:
            raise ArgumentError(f"{path} line {number}: {text!r} is not a list of numbers") from None

    out = dict(row)
    for key, value in row.items():
        key = _ALIASES.get(key, key)
        if key == "prompts":
            out[key] = [p.strip() for p in value.split(";") if p.strip()]
        elif key == "box":
            out[key] = numbers(value)
        elif key in ("points", "exemplars"):
            out[key] = [numbers(part) for part in value.split(";") if part.strip()]
        elif key in ("point_labels", "exemplar_labels"):
            out[key] = [int(v) for v in numbers(value)]
        elif key == "window" and any(ch.isdigit() for ch in value):
            out[key] = tuple(numbers(value))
    return out


def apply_jobs(cases: list[Case], jobs) -> list[Case]:
    """Give each case the settings of its row in the jobs file ``jobs`` (CSV or JSONL).

    A row names its case by ``case`` (the case name) or ``input`` (the same path as found);
    cases without a row keep the run's settings.

    Raises:
        ArgumentError: a row naming no case of the run, two rows for one case.
    """
    by_name = {c.name: c for c in cases}
    by_input = {c.input.resolve(): c for c in cases if not c.settings.get("series_uid")}
    done: set[str] = set()
    jobs = Path(jobs)
    for number, row in read_rows(jobs):
        case = None
        if "case" in row:
            case = by_name.get(str(row["case"]))
        elif "input" in row:
            p = Path(os.path.expanduser(str(row["input"])))
            case = by_input.get((p if p.is_absolute() else jobs.parent / p).resolve())
        else:
            raise ArgumentError(f"{jobs} row {number}: name the case with 'case' (or 'input')")
        if case is None:
            shown = row.get("case", row.get("input"))
            known = ", ".join(sorted(by_name)[:5])
            raise ArgumentError(f"{jobs} row {number}: no case {shown!r} in this run (cases: {known}"
                                f"{', ...' if len(by_name) > 5 else ''})")
        if case.name in done:
            raise ArgumentError(f"{jobs} row {number}: a second row for case {case.name!r}")
        done.add(case.name)
        case.settings.update({k: v for k, v in row.items() if k in CASE_FIELDS})
    return cases


def input_fingerprint(path: Path) -> list:
    """What identifies an input's content cheaply: sizes and modification times (ns) of its
    file, or of the files of its directory (a DICOM series)."""
    try:
        if path.is_dir():
            return sorted([str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns]
                          for p in path.rglob("*") if p.is_file())
        st = path.stat()
        return [st.st_size, st.st_mtime_ns]
    except OSError as exc:
        raise InputError(f"cannot read {path}: {exc.strerror}") from None
