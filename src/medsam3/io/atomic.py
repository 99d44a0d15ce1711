"""Write files so that readers see either the old file or the complete new one, never half.

Every medsam3 output (label maps, sidecars, overlay PNGs, reports) is first written under a
temporary name in the destination directory, then renamed onto its final name with
:func:`os.replace`, which is atomic within one file system. On any error the temporary
output is deleted and an existing file at the destination is left untouched.

A process killed outright (``kill -9``, power loss) cannot delete its temporary file. The
temporary names carry the writer's process id (``.seg.nii.gz.tmp-4242-1a2b3c4d.nii.gz``), so
the next write to the same destination removes those whose process is gone: only names of
exactly this pattern, for exactly that destination, never a live writer's, never other files.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Endings that writers (SimpleITK, gzip-aware tools) read as one format.
_COMPOUND_SUFFIXES = (".gz", ".bz2", ".xz", ".zst")


def _format_suffix(name: str) -> str:
    """The ending a writer picks its format from: ``.nii.gz`` for ``seg.nii.gz``, else the last."""
    path = Path(name)
    suffixes = path.suffixes
    if len(suffixes) >= 2 and suffixes[-1].lower() in _COMPOUND_SUFFIXES:
        return "".join(suffixes[-2:])
    return path.suffix


def _temp_name(path: Path, suffix: str | None = None) -> Path:
    """A fresh hidden name next to ``path`` (with this process's id) that keeps its format ending."""
    suffix = _format_suffix(path.name) if suffix is None else suffix
    while True:
        candidate = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{suffix}")
        if not candidate.exists():
            return candidate


def _process_alive(pid: int) -> bool:
    if pid <= 0:
        return True  # not a pid we wrote: leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, another user's
        return True
    return True


def remove_stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Delete the temporaries that writers killed mid-write left for ``path``; returns them.

    Only names made by :func:`atomic_output` / :func:`atomic_file_set` for this very ``path``
    (``.NAME.tmp-PID-8hex[ENDING]``) whose process ``PID`` no longer exists are removed.
    """
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.tmp-(\d+)-[0-9a-f]{{8}}"
                         rf"({re.escape(_format_suffix(path.name))})?")
    removed = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = pattern.fullmatch(entry.name)
        if match is None or int(match.group(1)) == os.getpid() or _process_alive(int(match.group(1))):
            continue
        _remove(entry)
        removed.append(entry)
    return removed


def _remove(path: Path) -> None:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` when the block succeeds.

    The temporary name keeps the suffix (``.seg.nii.gz.tmp-1a2b3c4d.nii.gz``) so writers that
    choose the format from the extension still do the right thing. The file is not created
    in advance: write it inside the block. If the block raises, the temporary file is deleted
    and whatever was at ``path`` before is unchanged.

    Example::

        with atomic_output("overlay.png") as tmp:
            figure.savefig(tmp)
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp = _temp_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


@contextmanager
def atomic_file_set(path: str | os.PathLike) -> Iterator[Path]:
    """Like :func:`atomic_output` for formats that write a header plus data files.

    Yields ``path``'s own file name inside a private temporary directory next to ``path``
    (``.seg.mhd.tmp-1a2b3c4d/seg.mhd``), so a header written there names its data file
    (``seg.zraw``) by the final name. On success every file written there is moved beside
    ``path``, data files first and the named file last, so a reader that finds the header
    also finds its data. On failure the directory and everything in it is deleted.
    """
    path = Path(path)
    remove_stale_temporaries(path)
    tmp_dir = _temp_name(path, suffix="")
    tmp_dir.mkdir()
    moved: list[Path] = []
    try:
        yield tmp_dir / path.name
        written = sorted(p for p in tmp_dir.iterdir() if p.name != path.name)
        written.append(tmp_dir / path.name)
        for item in written:
            target = path.with_name(item.name)
            os.replace(item, target)
            moved.append(target)
    except BaseException:
        # Files already moved are complete but belong to an output that failed as a whole.
        for target in moved:
            _remove(target)
        raise
    finally:
        _remove(tmp_dir)
