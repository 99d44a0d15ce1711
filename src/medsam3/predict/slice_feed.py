"""A volume's slices on their way into the ViT: read ahead on a thread, encoded in batches, each once.

:class:`SliceFeed` hands a volume pass (:mod:`medsam3.predict.volume`) its slices in the pass's
order, each already encoded by the ViT and set on the :class:`~medsam3.predict.image.ImagePredictor`:

* **Read-ahead.** A reader thread (:class:`medsam3.runner.ReadAhead`, the one batch segmentation
  and evaluation use for cases) decides whether each slice is empty
  (:class:`~medsam3.predict.volume.EmptySliceRule`), builds its model input (the slice, or the
  slice with its neighbours for a 2.5D model, :func:`medsam3.preprocess.context_planes`) and
  preprocesses it (:meth:`ImagePredictor.preprocess <medsam3.predict.image.ImagePredictor.preprocess>`:
  resize, normalise, to a tensor on the model's device) while the model works on earlier slices.
  At most ``prefetch`` prepared slices wait in its bounded queue. An error there reaches the
  caller when the pass gets to that slice, naming it; an error or Ctrl-C in the model's thread
  stops the reader (:meth:`SliceFeed.close`), so nothing waits on a full queue.
* **Batches.** ``encode_batch`` slices go through the ViT in one
  ``detector.get_vision_features`` call; each slice's share of the output is then set on the
  predictor (:meth:`~medsam3.predict.image.ImagePredictor.set_pixel_values` with ``features``)
  and its prompts are answered as with one slice at a time (the same outputs, up to float
  rounding of a batched matmul). Default: 1 on a CPU (a batch does not run faster there and holds
  more memory); on CUDA as many as the free memory allows (:func:`auto_encode_batch`, at most 16).
* **Once.** Each model input is encoded once: the pass visits each slice once, and a slice that a
  later pass over the same stack visits again (overlapping clips, :mod:`medsam3.predict.clips`)
  keeps its features in a :class:`FeatureCache`, a least-recently-used store bounded by a memory
  budget. A slice whose features do not fit the budget is encoded again when revisited.

Features of one slice at the full-size configuration (1008 px, ViT width 1024, FPN width 256):
the ViT output 72 x 72 x 1024 plus four FPN levels (288^2, 144^2, 72^2, 36^2 x 256) and their
position encodings: 235 MiB in float32 (:func:`features_nbytes`, measured by benchmarks/volume.py).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from medsam3.errors import ArgumentError, MedSAM3Error
from medsam3.preprocess import context_planes
from medsam3.runner import ReadAhead

#: The most slices :func:`auto_encode_batch` puts in one ViT call.
MAX_AUTO_BATCH = 16
#: The default memory budget of the features kept for slices a later pass revisits (MB).
DEFAULT_CACHE_MB = 2048


def features_nbytes(features: Sam3VisionEncoderOutput) -> int:
    """Bytes held by one slice's ViT output (hidden state, FPN levels and their position encodings)."""
    tensors = [features.last_hidden_state, *features.fpn_hidden_states, *features.fpn_position_encoding]
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def split_features(features: Sam3VisionEncoderOutput, n: int) -> list[Sam3VisionEncoderOutput]:
    """A batch of ``n`` images' ViT output as ``n`` one-image outputs (views, no copy)."""
    def part(t, i):
        return t[i:i + 1] if t is not None and t.shape[0] == n else t

    return [Sam3VisionEncoderOutput(
        last_hidden_state=part(features.last_hidden_state, i),
        fpn_hidden_states=tuple(part(t, i) for t in features.fpn_hidden_states),
        fpn_position_encoding=tuple(part(t, i) for t in features.fpn_position_encoding),
    ) for i in range(n)]


def _own_copy(features: Sam3VisionEncoderOutput) -> Sam3VisionEncoderOutput:
    """One slice's features in their own storage (a view would keep its whole batch alive)."""
    return Sam3VisionEncoderOutput(
        last_hidden_state=features.last_hidden_state.clone(),
        fpn_hidden_states=tuple(t.clone() for t in features.fpn_hidden_states),
        fpn_position_encoding=tuple(t.clone() for t in features.fpn_position_encoding),
    )


@torch.inference_mode()
def encode_pixels(model, pixels: Sequence[torch.Tensor]) -> list[Sam3VisionEncoderOutput]:
    """One ``detector.get_vision_features`` call on ``(1, 3, S, S)`` pixel tensors; their outputs, in order."""
    batch = pixels[0] if len(pixels) == 1 else torch.cat(list(pixels))
    out = model.detector.get_vision_features(pixel_values=batch.to(model.device, model.dtype))
    return split_features(out, len(pixels))


def check_encode_batch(value) -> int | None:
    """``None`` (automatic) or a whole number >= 1, else an :class:`ArgumentError`."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ArgumentError(f"encode batch {value!r} must be a whole number of slices >= 1")
    return int(value)


def auto_encode_batch(model) -> int:
    """Slices per ViT call when none is asked for: 1 on a CPU; on CUDA the free memory over an
    estimate of one slice's working memory (2 GiB at 1008 px, scaling with the pixel count: the
    ViT's activations and the kept features), between 1 and :data:`MAX_AUTO_BATCH`."""
    device = torch.device(getattr(model, "device", "cpu"))
    if device.type != "cuda" or not torch.cuda.is_available():
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    per_slice = 2 * 2 ** 30 * (model.image_size / 1008) ** 2
    return int(max(1, min(MAX_AUTO_BATCH, free // max(per_slice, 1))))


class FeatureCache:
    """Slices' ViT outputs kept for a later pass, least recently used first out, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int):
        self.budget = int(budget_bytes)
        self.entries: OrderedDict[object, tuple[object, int]] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.evicted = 0

    def __contains__(self, key) -> bool:
        return key in self.entries

    def put(self, key, value, nbytes: int) -> bool:
        """Keep ``value``; ``False`` when it alone exceeds the budget (then it is not kept)."""
        if key in self.entries:
            self.nbytes -= self.entries.pop(key)[1]
        if nbytes > self.budget:
            return False
        while self.entries and self.nbytes + nbytes > self.budget:
            self.nbytes -= self.entries.popitem(last=False)[1][1]
            self.evicted += 1
        self.entries[key] = (value, nbytes)
        self.nbytes += nbytes
        return True

    def get(self, key):
        """The value kept for ``key`` (now the most recently used), or ``None``."""
        if key not in self.entries:
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return self.entries[key][0]


@dataclass
class EncodedSlice:
    """One slice, encoded: what :meth:`SliceFeed.take` sets on the predictor."""

    index: int
    pixel_values: torch.Tensor
    original_size: tuple[int, int]
    features: Sam3VisionEncoderOutput | None


_SKIPPED = "skipped"
_CACHED = "cached"


class SliceFeed:
    """Slices ``order`` of ``stack`` for one pass (module docstring).

    Args:
        predictor: the :class:`~medsam3.predict.image.ImagePredictor` (its ``preprocess`` runs on the
            reader thread; its model encodes; its ``set_pixel_values`` takes each slice).
        stack: ``(slices, rows, columns)`` normalised intensities, in slicing order.
        order: the slice indices in the order the pass visits them (each once).
        context: slices to each neighbour fed with a slice (2.5D input); 0: the slice alone.
        skip: ``skip(index, plane)``: the slice is not run (empty background); called on the reader thread.
        encode_batch: slices per ViT call (>= 1).
        read_ahead: prepare slices on a thread (``False``: in the caller's thread, when taken).
        prefetch: prepared slices that may wait (default: ``max(2, encode_batch)``).
        cache: a :class:`FeatureCache` shared with other passes over the same stack, or ``None``.
        keep: ``keep(index)``: a later pass revisits this slice, so its features go into ``cache``.
        describe: ``describe(index)``: the slice in error messages.
    """

    def __init__(self, predictor, stack: np.ndarray, order: Sequence[int], context: int = 0,
                 skip: Callable[[int, np.ndarray], bool] | None = None, encode_batch: int = 1,
                 read_ahead: bool = True, prefetch: int | None = None, cache: FeatureCache | None = None,
                 keep: Callable[[int], bool] | None = None, describe: Callable[[int], str] | None = None):
        self.predictor = predictor
        self.stack = stack
        self.order = [int(z) for z in order]
        if len(set(self.order)) != len(self.order):
            raise ValueError("a pass visits each slice once")
        self.context = int(context)
        self.skip = skip
        self.encode_batch = int(encode_batch)
        if self.encode_batch < 1:
            raise ArgumentError(f"encode batch {encode_batch!r} must be a whole number of slices >= 1")
        self.cache = cache
        self.keep = keep or (lambda z: False)
        self.describe = describe or (lambda z: f"slice {z}")
        cached = {z for z in self.order if cache is not None and ("slice", z) in cache}
        self._cached_at_start = cached
        self.stats = {"encoded": 0, "vit_calls": 0, "cache_hits": 0, "skipped": 0}
        self.ready: dict[int, EncodedSlice | None] = {}
        self.pending: list[tuple[int, torch.Tensor, tuple[int, int]]] = []
        self._position = 0  # items pulled from the source
        items = [(z, z in cached) for z in self.order]
        self.reader = (ReadAhead(items, self._prepare, prefetch or max(2, self.encode_batch))
                       if read_ahead and items else None)
        self._source = iter(self.reader) if self.reader is not None else None
        self._items = items

    # ------------------------------------------------------------ reader side
    def _prepare(self, item):
        """What the reader thread makes of one slice: skipped, cached, or ``(pixels, size)``."""
        z, cached = item
        if cached:
            return _CACHED
        plane = self.stack[z]
        if self.skip is not None and self.skip(z, plane):
            return _SKIPPED
        image = context_planes(self.stack, z, self.context)
        return self.predictor.preprocess(image), tuple(np.asarray(image).shape[:2])

    def _next_item(self):
        z, cached = self._items[self._position]
        self._position += 1
        if self._source is None:
            try:
                return z, self._prepare((z, cached))
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:  # noqa: BLE001 - named like a reader-thread error below
                self._raise(z, exc)
        value, error, _ = next(self._source)
        if error is not None:
            self._raise(z, error)
        return z, value

    def _raise(self, z: int, exc: BaseException):
        where = self.describe(z)
        if isinstance(exc, MedSAM3Error):
            raise type(exc)(f"{where}: {exc}") from exc
        if isinstance(exc, Exception) and not isinstance(exc, MemoryError):
            raise RuntimeError(f"preparing {where} for the model failed: {type(exc).__name__}: {exc}") from exc
        raise exc

    # ------------------------------------------------------------ model side
    def take(self, z: int) -> EncodedSlice | None:
        """Slice ``z`` (the pass's next), encoded and set on the predictor; ``None`` if it is skipped."""
        while z not in self.ready:
            if self._position >= len(self._items):
                if self.pending:
                    self._encode()
                    continue
                raise ValueError(f"slice {z} is not in this pass's order, or was taken already")
            index, value = self._next_item()
            if value is _SKIPPED:
                self.ready[index] = None
                self.stats["skipped"] += 1
            elif value is _CACHED:
                hit = self.cache.get(("slice", index))
                if hit is None:  # evicted meanwhile: prepare and encode it again
                    self.pending.append((index, *self._prepare((index, False))))
                else:
                    self.stats["cache_hits"] += 1
                    self.ready[index] = hit
            else:
                self.pending.append((index, *value))
            if len(self.pending) >= self.encode_batch or (self.pending and self._position >= len(self._items)):
                self._encode()
        item = self.ready.pop(z)
        if item is not None:
            self.predictor.set_pixel_values(item.pixel_values, item.original_size, features=item.features)
        return item

    def _encode(self) -> None:
        batch, self.pending = self.pending, []
        features = encode_pixels(self.predictor.model, [pixels for _, pixels, _ in batch])
        self.stats["encoded"] += len(batch)
        self.stats["vit_calls"] += 1
        for (index, pixels, size), feats in zip(batch, features):
            item = EncodedSlice(index, pixels, size, feats)
            self.ready[index] = item
            if self.cache is not None and feats is not None and self.keep(index):
                own = _own_copy(feats) if len(batch) > 1 else feats
                self.cache.put(("slice", index), EncodedSlice(index, pixels, size, own), features_nbytes(own))

    def close(self) -> None:
        """Stop the reader thread (also after an error or Ctrl-C in the pass)."""
        if self.reader is not None:
            self.reader.stop()
            self.reader = None
        self.ready.clear()
        self.pending = []

    def __enter__(self) -> SliceFeed:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
