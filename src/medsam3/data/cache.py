"""A cache of read and normalised items on disk, so an epoch does not re-read every volume.

Reading a CT volume and normalising it takes longer than the training step that uses one
of its slices. :func:`build_cache` does it once per item and stores the result in shards:

``CACHE/index.json``
    ``{"format": "medsam3-cache", "version": 2, "manifest": ..., "window": ...,
    "image_dtype": "uint8", "items": {ID: ENTRY}}``; an entry holds the item's
    ``fingerprint`` (its manifest line, the window and its files' sizes and times),
    ``content`` (the same with the files' bytes and their paths relative to the manifest's
    root instead of their times), the ``shard`` file, ``arrays`` (``image``, ``label``,
    optionally ``instances``: byte ``offset``, ``dtype``, ``shape``), ``presence`` (class ->
    slice indices that hold it) and ``nonempty`` (slices whose intensities are not constant).
``CACHE/shard-00000.bin`` ...
    raw arrays one after the other (64-byte aligned), read with :class:`numpy.memmap`:
    taking one slice of a cached volume reads only that slice from disk.

Normalised intensities are stored as ``uint8`` (``round(255 x value)``, a 1/510 rounding
step) unless ``image_dtype="float16"``. Reading checks an item's ``fingerprint`` (a ``stat``
per file); where that differs, as after the data and the cache were copied to another machine
or directory (new file times), its ``content`` is checked once per process instead (the files
are read and hashed), so a copied cache is used and an edited file is still caught. The whole
cache is built in a temporary directory and renamed into place: readers see the old cache or
the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm.auto import tqdm

from medsam3.data.loading import LoadedItem, load_item
from medsam3.data.manifest import Manifest, ManifestItem, read_manifest
from medsam3.errors import ArgumentError, InputError

FORMAT_NAME = "medsam3-cache"
FORMAT_VERSION = 2  # 2: volumes stored as the axial slice stack
_ALIGN = 64
IMAGE_DTYPES = ("uint8", "float16")


def _files_of(manifest: Manifest, item: ManifestItem) -> list[Path]:
    paths = []
    for value in (item.image, item.label):
        if value is None:
            continue
        paths.extend(manifest.resolve(p) for p in (value if isinstance(value, list) else [value]))
    return paths


def item_fingerprint(manifest: Manifest, item: ManifestItem, window=None, image_dtype: str = "uint8") -> str:
    """A hash of what a cached entry depends on: the item, the window and its files' stats."""
    h = hashlib.sha1()
    h.update(json.dumps(item.to_json(), sort_keys=True).encode())
    h.update(json.dumps([window, image_dtype, FORMAT_VERSION]).encode())
    for path in _files_of(manifest, item):
        try:
            st = path.stat()
            h.update(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
        except OSError:
            h.update(f"{path}:missing".encode())
    return h.hexdigest()


def content_fingerprint(manifest: Manifest, item: ManifestItem, window=None, image_dtype: str = "uint8") -> str:
    """A hash of the item, the window and its files' bytes, with the files named relative to the
    manifest's root: unchanged when the data and the cache move together."""
    h = hashlib.sha256()
    h.update(json.dumps(item.to_json(), sort_keys=True).encode())
    h.update(json.dumps([window, image_dtype, FORMAT_VERSION]).encode())
    for path in _files_of(manifest, item):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            try:
                name = f.relative_to(manifest.root).as_posix()
            except ValueError:
                name = f.as_posix()
            h.update(f"\0{name}\0".encode())
            try:
                with open(f, "rb") as fh:
                    for chunk in iter(lambda: fh.read(1 << 20), b""):
                        h.update(chunk)
            except OSError:
                h.update(b"missing")
    return h.hexdigest()


def quantise_image(image: np.ndarray, image_dtype: str) -> np.ndarray:
    if image_dtype == "uint8":
        return np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.asarray(image, dtype=np.float16)


def to_unit_float(array: np.ndarray) -> np.ndarray:
    """Cached (``uint8`` / ``float16``) or loaded intensities as float32 in ``[0, 1]``."""
    array = np.asarray(array)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    return array.astype(np.float32, copy=False)


class _ShardWriter:
    def __init__(self, directory: Path, max_bytes: int):
        self.directory, self.max_bytes = directory, max_bytes
        self.index, self.handle, self.offset = -1, None, 0
        self._next()

    def _next(self) -> None:
        if self.handle is not None:
            self.handle.close()
        self.index += 1
        self.handle = open(self.directory / self.name, "wb")
        self.offset = 0

    @property
    def name(self) -> str:
        return f"shard-{self.index:05d}.bin"

    def start_item(self, nbytes: int) -> None:
        if self.offset and self.offset + nbytes > self.max_bytes:
            self._next()

    def write(self, array: np.ndarray) -> dict[str, Any]:
        pad = (-self.offset) % _ALIGN
        if pad:
            self.handle.write(b"\0" * pad)
            self.offset += pad
        array = np.ascontiguousarray(array)
        entry = {"offset": self.offset, "dtype": array.dtype.str, "shape": list(array.shape)}
        self.handle.write(array.tobytes())
        self.offset += array.nbytes
        return entry

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def build_cache(manifest: Manifest | str | os.PathLike, output: str | os.PathLike, *,
                split: str | Sequence[str] | None = None, window=None, image_dtype: str = "uint8",
                shard_size_mb: float = 1024, progress: bool = True) -> Path:
    """Read, normalise and store every labelled item of a manifest (``medsam3 data cache``).

    Args:
        manifest: a :class:`Manifest` or the path of one.
        output: the cache directory (replaced atomically if it holds a cache already).
        split: only these splits (default: all).
        window: CT window for CT items (preset or ``(level, width)``), as in training.
        image_dtype: ``uint8`` (default) or ``float16`` for the normalised intensities.
        shard_size_mb: start a new shard file beyond this size.

    Returns:
        the cache directory.

    Raises:
        ArgumentError: ``output`` is a non-empty directory that is not a cache; bad options.
        InputError: an item cannot be read.
    """
    if not isinstance(manifest, Manifest):
        manifest = read_manifest(manifest)
    if image_dtype not in IMAGE_DTYPES:
        raise ArgumentError(f"image_dtype must be one of {', '.join(IMAGE_DTYPES)}, got {image_dtype!r}")
    if shard_size_mb <= 0:
        raise ArgumentError(f"shard_size_mb must be positive, got {shard_size_mb}")
    from medsam3.preprocess import parse_window

    window_value = parse_window(window)
    output = Path(output)
    if output.exists() and not (output / "index.json").is_file():
        if not output.is_dir() or any(output.iterdir()):
            raise ArgumentError(f"refusing to replace {output}: it exists and is not a medsam3 cache")
    selected = manifest.select(split=split, labelled=True)
    if not len(selected):
        raise ArgumentError(f"no labelled items{' in split ' + str(split) if split else ''} in "
                            f"{manifest.path or 'the manifest'}")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.parent / f".{output.name}.tmp-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        writer = _ShardWriter(tmp, int(shard_size_mb * 1024 * 1024))
        entries = {}
        for item in tqdm(selected.items, desc="caching", unit="item", disable=not progress, leave=False):
            loaded = load_item(manifest, item, window=window_value)
            image = quantise_image(loaded.image, image_dtype)
            arrays = {"image": image, "label": loaded.label}
            if loaded.instances is not None and loaded.instances is not loaded.label:
                arrays["instances"] = loaded.instances
            writer.start_item(sum(a.nbytes for a in arrays.values()))
            stored = {name: writer.write(a) for name, a in arrays.items()}
            if loaded.instances is not None and loaded.instances is loaded.label:
                stored["instances"] = "label"
            entries[item.id] = {
                "fingerprint": item_fingerprint(manifest, item, window_value, image_dtype),
                "content": content_fingerprint(manifest, item, window_value, image_dtype),
                "shard": writer.name, "arrays": stored,
                "presence": {k: v.tolist() for k, v in loaded.presence().items()},
                "nonempty": loaded.nonempty_slices().tolist(),
            }
        writer.close()
        index = {"format": FORMAT_NAME, "version": FORMAT_VERSION,
                 "manifest": str(manifest.path) if manifest.path else None,
                 "window": list(window_value) if window_value else None, "image_dtype": image_dtype,
                 "items": entries}
        with open(tmp / "index.json", "w", encoding="utf-8") as fh:
            json.dump(index, fh)
        _swap_into_place(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _swap_into_place(new: Path, target: Path) -> None:
    if not target.exists():
        os.replace(new, target)
        return
    old = target.parent / f".{target.name}.old-{secrets.token_hex(4)}"
    os.replace(target, old)
    try:
        os.replace(new, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


class SampleCache:
    """Read access to a cache written by :func:`build_cache`.

    Raises:
        InputError: the directory holds no cache, or one of another version.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index_path = self.path / "index.json"
        if not index_path.is_file():
            raise InputError(f"{self.path} is not a medsam3 cache (no index.json); build one with "
                             "`medsam3 data cache MANIFEST -o DIR`")
        try:
            with open(index_path, encoding="utf-8") as fh:
                self.index = json.load(fh)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"cannot read {index_path}: {exc}") from None
        if self.index.get("format") != FORMAT_NAME or self.index.get("version") != FORMAT_VERSION:
            raise InputError(f"{self.path}: not a medsam3 cache of version {FORMAT_VERSION}; rebuild it")
        self.window = tuple(self.index["window"]) if self.index.get("window") else None
        self.image_dtype = self.index.get("image_dtype", "uint8")
        self._verified: dict[str, str] = {}  # item -> files' stats seen with unchanged bytes

    def __contains__(self, item_id: str) -> bool:
        return item_id in self.index["items"]

    def __len__(self) -> int:
        return len(self.index["items"])

    def entry(self, manifest: Manifest, item: ManifestItem, check: bool = True) -> dict[str, Any]:
        """The index entry of an item; with ``check`` its fingerprint, or else its content, must
        still match (see the module's docstring)."""
        entry = self.index["items"].get(item.id)
        if entry is None:
            raise InputError(f"item {item.id!r} is not in the cache {self.path}; rebuild it with "
                             "`medsam3 data cache`")
        if check:
            stat = item_fingerprint(manifest, item, self.window, self.image_dtype)
            if stat != entry["fingerprint"] and stat != self._verified.get(item.id):
                if entry.get("content") != content_fingerprint(manifest, item, self.window, self.image_dtype):
                    raise InputError(f"the cache {self.path} is stale for {item.id!r} (its manifest line or "
                                     "files changed since it was built); rebuild it with `medsam3 data cache`")
                self._verified[item.id] = stat
        return entry

    def _array(self, shard: str, spec: dict[str, Any]) -> np.ndarray:
        shape = tuple(spec["shape"])
        if int(np.prod(shape)) == 0:
            return np.zeros(shape, dtype=np.dtype(spec["dtype"]))
        return np.memmap(self.path / shard, dtype=np.dtype(spec["dtype"]), mode="r",
                         offset=int(spec["offset"]), shape=shape)

    def load(self, manifest: Manifest, item: ManifestItem, check: bool = True) -> LoadedItem:
        """The cached item: memory-mapped ``uint8``/``float16`` image (see
        :func:`to_unit_float`), label and instances."""
        entry = self.entry(manifest, item, check)
        arrays = entry["arrays"]
        image = self._array(entry["shard"], arrays["image"])
        label = self._array(entry["shard"], arrays["label"])
        inst = arrays.get("instances")
        instances = label if inst == "label" else (self._array(entry["shard"], inst) if inst else None)
        return LoadedItem(item, image, label, instances)

    def presence(self, item_id: str) -> tuple[dict[str, np.ndarray], np.ndarray]:
        entry = self.index["items"][item_id]
        return ({k: np.asarray(v, dtype=np.int64) for k, v in entry["presence"].items()},
                np.asarray(entry["nonempty"], dtype=np.int64))
