"""Volumes: text prompts, boxes, clicks and masks segmented through a whole 3D image.

Medical SAM3's 3D scheme (detector on slices + SAM3 tracker propagation, merged), run on
the whole volume in one streaming pass, with no ground truth anywhere:

* **Slicing** (:mod:`medsam3.orientation`): the volume is cut into axial, coronal
  or sagittal slices in the patient's physical orientation (default: the plane closest
  to the acquisition plane), shown to the model in the radiological in-plane orientation.
  Labels are written back in the input's array order and geometry.
* **One ViT pass per slice.** Each slice is encoded once; all text prompts go through
  the detector together (text embeddings computed once per prompt), and the tracker's
  features come from the same ViT output (:mod:`medsam3.predict.propagation`). Slices are
  prepared (empty-slice test, 2.5D input, resize and normalisation) on a thread ahead of the
  model and can go through the ViT several at a time (``encode_batch``;
  :mod:`medsam3.predict.slice_feed`).
* **Key slices and propagation.** A confident detection (score >= ``key_score``) that no
  existing track explains starts a track on that slice, its key slice; the tracker then
  propagates it forwards slice by slice, and backwards from the key slice through the
  slices still held in memory (``backward_slices``). A box, clicks or a mask given on one
  slice start a track there, propagated both ways through the whole volume (the pass
  starts at that slice and comes back to cover the slices before it). The order of the
  pass is the slices' array order; a key slice is therefore the first slice where the
  detector is confident, not the globally best one, which would need a second ViT pass.
* **Merging** (:mod:`medsam3.predict.merge`, which states the rule exactly): detections
  are always kept; tracker masks are kept where a detection supports them, bridge up to
  ``max_unsupported`` slices without support, and are removed as drift when they go on
  longer without any detection agreeing. Overlaps between prompts and instances are
  resolved per voxel by probability; every instance keeps one id across slices.

Modes: ``merged`` (default, the above); ``propagate`` (tracker masks only: detections
only start tracks, a track ends where the tracker loses the object); ``slices``
(detections only, no tracker; instances are linked between neighbouring slices by IoU);
``clips`` (Medical SAM3's official scheme: independent short clips of ``merged`` passes, fused
per pixel by probability, :mod:`medsam3.predict.clips`).

**Presence window** (``slices`` mode): with ``presence_window`` w = 2r + 1 > 1, a text prompt's
presence on a slice is the median of the detector's presence probabilities on the w slices
centred on it (index clamped at the volume's ends; a skipped empty slice counts 0), and its
queries are rescored with it (``quality x presence``, see
:class:`~medsam3.predict.decode.DetectorRow`). With w = 3 a structure is no longer
called present on one slice between two where it is absent, nor absent on one slice between
two where it is present; it is still present on a run of two slices. The masks are the
detector's own on every slice. A slice's answer waits for the r slices after it, so r slices'
detector outputs are held in memory (only the queries that can pass the score threshold).
Default 1 (each slice alone), or the model's ``medsam3.json`` ``presence_window``. Lesions seen
on one slice only of a thick-slice scan need w = 1.

**Empty slices** (:class:`EmptySliceRule`): a slice is skipped -- no model run, no labels
-- when fewer than ``max(1, ceil(min_fraction x pixels))`` of its normalised
intensities lie more than ``level`` above the slice's minimum (default 0.1 % of the
pixels, 0.05 of the [0, 1] range): padding, air and empty background. A track ends at a
skipped slice (as where the tracker loses its object). The slice a box/point/mask prompt
is drawn on is never skipped.

**Memory.** Peak memory does not grow with the number of slices beyond the input and
output volumes: at any time only the ViT outputs of the current batch of ``encode_batch``
slices (1 by default on a CPU; tracker features are made from a slice's ViT output on demand),
at most two prepared slices waiting on the reader thread, and low-resolution masks of the
last ``max(backward_slices, max_unsupported + 1)`` slices (the slices whose answer can
still change) are held, plus each live object's bounded memory bank. Older slices are
final and written into the label map (and instance map) right away.

**Why one module of ~800 lines.** :class:`_VolumeRun` is one streaming state machine: the pass
order, the window of open slices, the tracks and their ledgers, and the output share its
state, and every mode is a branch of the same per-slice step. Its pieces that stand alone
already live apart (slicing: :mod:`medsam3.orientation`; the merge rule: :mod:`~medsam3.predict.merge`;
the tracker: :mod:`~medsam3.predict.propagation`; decoding: :mod:`~medsam3.predict.decode`;
prompt checks: :mod:`~medsam3.predict.prompt_checks`). The seam left is the public data classes
(prompts, results, :class:`EmptySliceRule`) versus the run; it is not cut while a new volume mode
is being added here.
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from medsam3.errors import ArgumentError
from medsam3.model.info import VOLUME_MODES, check_presence_window
from medsam3.predict.clips import ClipsRun, check_clip_options
from medsam3.predict.concepts import ConceptGate
from medsam3.predict.decode import DetectorRow, confident_queries, query_scores, upsample_mask_logits
from medsam3.predict.image import ImagePredictor, TextPrompt, as_text_prompt
from medsam3.predict.merge import (
    EMPTY,
    SUPPORTED,
    UNSUPPORTED,
    MergeRule,
    TrackLedger,
    fold_duplicates,
    greedy_match,
    mask_iou,
    resolve_voxels,
)
from medsam3.orientation import SliceOrientation, choose_orientation
from medsam3.predict.prompt_checks import check_box, check_point, check_point_labels
from medsam3.predict.results import VolumePromptSummary, VolumeSegmentation  # noqa: F401 (re-exported)
from medsam3.predict.propagation import TrackedObject, VolumeTracker, logit
from medsam3.predict.slice_feed import DEFAULT_CACHE_MB, FeatureCache, SliceFeed, auto_encode_batch, check_encode_batch

MODES = VOLUME_MODES  # the one list, with the model's facts (medsam3.model.info; clips: medsam3.predict.clips)

#: How exemplar boxes (``--exemplar`` / ``--negative-exemplar``) act on a volume; written to the sidecar.
EXEMPLAR_RULE = ("exemplar boxes are drawn on one slice (--slice K): they are converted into that slice's "
                 "model-view pixels like --box and given with the text prompts to the detector on slice K only; "
                 "every other slice is detected from the text alone. In merged/propagate modes the pass starts "
                 "at slice K, so what the exemplars found there starts tracks that the tracker carries through "
                 "the volume both ways (slices mode: slice K's answer only)")


@dataclass
class ObjectPrompt:
    """One object drawn on one slice, propagated through the volume by the tracker.

    Coordinates are pixels of the input array's plane ``np.take(array, slice_index,
    axis=s)`` where ``s`` is the slicing axis: ``x`` = its column, ``y`` = its row (for
    the default axial slicing of an axial scan, ``array[slice_index]``).

    Attributes:
        slice_index: the slice, an index along the slicing axis in array order.
        box: ``x0 y0 x1 y1``.
        points: ``[[x, y], ...]`` clicks; ``point_labels`` 1 = on the object (default), 0 = not.
        mask: a boolean mask of that plane (instead of a box/points).
        name: the label's name (default ``box``, ``points`` or ``mask``).
    """

    slice_index: int
    box: Sequence[float] | None = None
    points: Sequence[Sequence[float]] | None = None
    point_labels: Sequence[int] | None = None
    mask: np.ndarray | None = None
    name: str | None = None

    @property
    def label_name(self) -> str:
        if self.name:
            return self.name
        return "mask" if self.mask is not None else ("box" if self.box is not None else "points")


@dataclass(frozen=True)
class EmptySliceRule:
    """Which slices are background and skipped (module docstring).

    Attributes:
        level: how far above the slice's minimum (in normalised [0, 1] units) a pixel must be
            to count as content.
        min_fraction: the fraction of the slice's pixels that must be content (at least one pixel).
    """

    level: float = 0.05
    min_fraction: float = 0.001

    def is_empty(self, plane: np.ndarray) -> bool:
        plane = np.asarray(plane)
        if plane.size == 0:
            return True
        needed = max(1, math.ceil(self.min_fraction * plane.size))
        return int(np.count_nonzero(plane > plane.min() + self.level)) < needed


@dataclass
class _Candidate:
    score: float
    logits: torch.Tensor  # (h, w) low-resolution mask logits
    mask: torch.Tensor  # (h, w) bool
    strong: bool
    owner: int | None = None


@dataclass
class _TrackMask:
    logits: torch.Tensor
    keep: bool | None  # None: pending (an unsupported mask whose run is not settled yet)


@dataclass
class _Record:
    """What is known about one slice while its answer can still change."""

    index: int
    skipped: bool
    hidden: torch.Tensor | None = None  # the ViT output, from which tracker features are made on demand
    candidates: list[list[_Candidate]] = field(default_factory=list)
    rows: list[DetectorRow] | None = None  # the detector's rows until the slice's presence is decided
    masks: dict[int, _TrackMask] = field(default_factory=dict)
    _features: object = None


@dataclass
class _Track:
    id: int
    label: int
    kind: str  # "text" or "object"
    obj: TrackedObject | None
    ledger: TrackLedger
    alive: bool = True
    last_mask: torch.Tensor | None = None  # slices mode: the mask on the previous slice


class VolumePredictor:
    """Segments volumes with a 2D :class:`ImagePredictor`'s model and thresholds.

    Args:
        predictor: the 2D predictor (its score, presence and mask thresholds apply).
        mode: ``merged`` (default), ``propagate`` or ``slices`` (module docstring).
        rule: the :class:`MergeRule`.
        backward_slices: how far back (in slices) a track is propagated from its key slice.
        max_objects: at most this many live tracks per text prompt; further detections are
            kept as detections without a track (like those below the key score).
        empty_slices: the :class:`EmptySliceRule`, or ``None`` to run every slice.
        presence_window: ``slices`` mode: an odd number of slices whose median presence decides
            each slice's present / absent answer (module docstring); 1 = each slice alone.
        progress: show a progress bar per volume.
        clip_length, clip_overlap, clip_fusion: ``clips`` mode: slices per clip (official: 4),
            slices shared by neighbouring clips (official: 0), ``mean`` or ``max`` of overlapping
            clips' probabilities (:mod:`medsam3.predict.clips`).
        encode_batch: slices per ViT call; ``None``: 1 on a CPU, as many as fit on CUDA
            (:func:`~medsam3.predict.slice_feed.auto_encode_batch`).
        read_ahead: prepare slices on a thread ahead of the model (``False``: when each is needed).
        feature_cache_mb: memory budget for the features of slices a later pass revisits
            (overlapping clips), in MB.
    """

    def __init__(self, predictor: ImagePredictor, mode: str = "merged", rule: MergeRule | None = None,
                 backward_slices: int = 8, max_objects: int = 8, empty_slices: EmptySliceRule | None = EmptySliceRule(),
                 presence_window: int = 1, progress: bool = True, clip_length: int = 4, clip_overlap: int = 0,
                 clip_fusion: str = "mean", encode_batch: int | None = None, read_ahead: bool = True,
                 feature_cache_mb: float = DEFAULT_CACHE_MB):
        if mode not in MODES:
            raise ArgumentError(f"unknown volume mode {mode!r}; accepted: {', '.join(MODES)}")
        check_presence_window(presence_window)
        if presence_window > 1 and mode != "slices":
            raise ArgumentError(f"a presence window ({presence_window} slices) is for volume mode slices; mode {mode} "
                                "tracks structures between slices instead")
        if backward_slices < 0 or int(backward_slices) != backward_slices:
            raise ArgumentError(f"backward slices must be a whole number >= 0, got {backward_slices}")
        if max_objects < 1:
            raise ArgumentError(f"max objects per prompt must be at least 1, got {max_objects}")
        self.predictor = predictor
        self.mode = mode
        self.rule = rule or MergeRule()
        self.backward_slices = int(backward_slices)
        self.max_objects = int(max_objects)
        self.empty_slices = empty_slices
        self.presence_window = int(presence_window)
        self.progress = progress
        self.clip_length, self.clip_overlap, self.clip_fusion = check_clip_options(clip_length, clip_overlap,
                                                                                   clip_fusion)
        self.encode_batch = check_encode_batch(encode_batch)
        self.read_ahead = bool(read_ahead)
        if not feature_cache_mb >= 0:
            raise ArgumentError(f"the feature cache budget must be >= 0 MB, got {feature_cache_mb!r}")
        self.feature_cache_mb = float(feature_cache_mb)

    def slices_per_call(self) -> int:
        """Slices per ViT call in this predictor's runs (``encode_batch``, or the device's automatic choice)."""
        return self.encode_batch or auto_encode_batch(self.predictor.model)

    def feature_cache(self) -> FeatureCache:
        """A new cache of revisited slices' features within this predictor's budget."""
        return FeatureCache(int(self.feature_cache_mb * 2 ** 20))

    def segment(self, volume: np.ndarray, prompts: Sequence[str | TextPrompt] = (),
                objects: Sequence[ObjectPrompt] = (), direction=None, axis: str | None = None,
                instances: bool = False, description: str = "volume", spacing=None,
                exemplar_slice: int | None = None) -> VolumeSegmentation:
        """Segment a normalised volume.

        Args:
            volume: ``(Z, Y, X)`` intensities in [0, 1], array order of the image.
            prompts: text prompts (labels 1..K).
            objects: :class:`ObjectPrompt` s (labels K+1...), propagated from their slice.
            direction: the image's flattened 3x3 direction matrix (identity when ``None``).
            axis: ``axial``, ``coronal``, ``sagittal`` or ``None`` (module docstring).
            instances: also return the instance map.
            description: the progress bar's label.
            spacing: the image's ``(sx, sy, sz)`` voxel size in mm (unit when ``None``); a model
                with 2.5D input (``context_mm``) gets each slice with the neighbours that far away.
            exemplar_slice: the slice (index along the slicing axis) the text prompts' exemplar
                boxes are drawn on; the boxes are pixels of the input array's plane there, like an
                :class:`ObjectPrompt`'s (rule: :data:`EXEMPLAR_RULE`). Required when a prompt has
                exemplar boxes.
        """
        volume = np.asarray(volume)
        if volume.ndim != 3:
            raise ArgumentError(f"a volume must be 3D (Z, Y, X), got shape {volume.shape}")
        text = [as_text_prompt(p) for p in prompts]
        objects = list(objects)
        if not text and not objects:
            raise ArgumentError("no prompt given: give a text prompt or an object (box, points or mask)")
        orientation = choose_orientation(direction if direction is not None else np.eye(3).ravel(), axis)
        spacing = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
        if len(spacing) != 3:
            raise ArgumentError(f"a volume's spacing must be 3 numbers (sx, sy, sz), got {spacing}")
        offset = self.predictor.context_offset(spacing[2 - orientation.slice_axis])
        gate = ConceptGate.apply(self.predictor.model, text, getattr(self.predictor, "gate_concepts", True))

        def run(prompts):
            if self.mode == "clips":
                return ClipsRun(self, volume, prompts, objects, orientation, instances, description, offset,
                                exemplar_slice, _VolumeRun).execute()
            return _VolumeRun(self, volume, prompts, objects, orientation, instances, description, offset,
                              exemplar_slice).execute()

        if gate.complete:
            return run(text)
        if not gate.run and not objects:  # every prompt outside the model's concepts: nothing to run
            labels = np.zeros(volume.shape, np.uint8 if len(text) < 256 else np.uint16)
            result = VolumeSegmentation(labels, [], np.zeros(volume.shape, np.uint32) if instances else None, {},
                                        {}, orientation, [], self.mode, {"slices_encoded": 0, "tracks": 0,
                                                                         "tracker_steps": 0})
        else:
            result = run(gate.model_prompts)
        return _ungated(result, gate, len(objects))


def _ungated(result: VolumeSegmentation, gate: ConceptGate, n_objects: int) -> VolumeSegmentation:
    """A run of the gate's known prompts as the answer to all of them: labels renumbered so
    that label k is the k-th prompt again, absent summaries for the prompts not run."""
    lookup = gate.label_lookup(n_objects)
    n_run = len(gate.run)
    labels = lookup[np.asarray(result.labels, dtype=np.int64)].astype(
        np.uint8 if len(lookup) - 1 < 256 else np.uint16)
    text = gate.answers(result.summaries[:n_run], lambda p: VolumePromptSummary(prompt=p, present=False,
                                                                                    presence_score=0.0))
    result.labels = labels
    result.summaries = text + result.summaries[n_run:]
    result.instance_labels = {i: int(lookup[k]) for i, k in result.instance_labels.items()}
    return result


def segment_volume(predictor: ImagePredictor, volume: np.ndarray, prompts: Sequence[str | TextPrompt] = (),
                   objects: Sequence[ObjectPrompt] = (), *, direction=None, axis: str | None = None,
                   mode: str = "merged", instances: bool = False, progress: bool = True,
                   description: str = "volume", spacing=None, exemplar_slice: int | None = None,
                   **options) -> VolumeSegmentation:
    """Functional form of :meth:`VolumePredictor.segment`; ``options`` go to :class:`VolumePredictor`."""
    return VolumePredictor(predictor, mode=mode, progress=progress, **options).segment(
        volume, prompts, objects, direction=direction, axis=axis, instances=instances, description=description,
        spacing=spacing, exemplar_slice=exemplar_slice)


def segment_slices(predictor: ImagePredictor, volume: np.ndarray, prompts: Sequence[str | TextPrompt],
                   progress: bool = True, description: str = "slices",
                   spacing=None) -> tuple[np.ndarray, list[VolumePromptSummary]]:
    """Detection only, slice by slice along array axis 0: ``(labels, summaries)``."""
    result = segment_volume(predictor, volume, prompts, mode="slices", progress=progress, description=description,
                            spacing=spacing)
    return result.labels, result.summaries


class _VolumeRun:
    """One volume through :class:`VolumePredictor`: the pass, the window of open slices, the output."""

    def __init__(self, owner: VolumePredictor, volume: np.ndarray, text: list[TextPrompt],
                 objects: list[ObjectPrompt], orientation: SliceOrientation, instances: bool, description: str,
                 context: int = 0, exemplar_slice: int | None = None,
                 slice_range: tuple[int, int] | None = None, sink=None, feature_cache: FeatureCache | None = None,
                 revisited=None):
        self.p = owner
        self.predictor = owner.predictor
        self.rule = owner.rule
        self.mode = owner.mode
        self.text = text
        self.objects = objects
        self.orientation = orientation
        self.description = description
        self.stack = orientation.stack(volume)
        self.context = context  # slices to each neighbour fed with a slice (2.5D input); 0: alone
        self.num_slices = self.stack.shape[0]
        # the slices this pass visits (a clip of clips mode; default all); sink(z, labels, probs)
        # takes each finished slice's per-entry probabilities instead of writing labels (clips mode)
        self.lo, self.hi = slice_range if slice_range is not None else (0, self.num_slices)
        self.sink = sink
        # features of the slices another pass over this stack visits again (``revisited(z)``) are kept
        self.feature_cache, self.revisited = feature_cache, revisited
        self.feed: SliceFeed | None = None
        self.plane_shape = tuple(self.stack.shape[1:])
        n_labels = len(text) + len(objects)
        self.labels = np.zeros(volume.shape, np.uint8 if n_labels < 256 else np.uint16)
        self.labels_stack = orientation.stack(self.labels)
        self.instances = np.zeros(volume.shape, np.uint32) if instances else None
        self.instances_stack = orientation.stack(self.instances) if instances else None
        self.summaries = [VolumePromptSummary(p.text, False, 0.0) for p in text]
        self.summaries += [VolumePromptSummary(o.label_name, False, 0.0, kind="interactive") for o in objects]
        self.thr = logit(self.predictor.mask_threshold)
        self.support_score = (self.rule.support_score if self.rule.support_score is not None
                              else self.predictor.score_threshold / 2)
        self.tracking = self.mode != "slices"
        # slices mode with a presence window: a slice is decided once the r slices after it are seen
        self.delay = (owner.presence_window - 1) // 2 if self.mode == "slices" else 0
        self.presences: dict[int, list[float]] = {}  # slice -> the text prompts' presence (detected slices)
        self.waiting: deque[_Record] = deque()  # visited slices whose presence is not decided yet
        self.window_size = max(self.p.backward_slices, self.rule.max_unsupported + 1) if self.tracking else 0
        self.object_starts = self._check_objects()
        # exemplar boxes act on their own slice only (EXEMPLAR_RULE); other slices get the bare text
        self.exemplar_slice, self.exemplar_text = self._check_exemplars(exemplar_slice)
        if self.exemplar_text is not None:
            self.text = [TextPrompt(p.text) for p in text]
        self.tracker = (VolumeTracker(self.predictor.model, self.num_slices, self.plane_shape)
                        if self.tracking or objects else None)
        self.tracks: list[_Track] = []  # the live ones (dead tracks are dropped after each slice)
        self.track_ids: set[int] = set()
        self.label_of: dict[int, int] = {}
        self.key_slices: dict[int, int] = {}
        self.next_id = 1
        self.window: OrderedDict[int, _Record] = OrderedDict()
        self.skipped: list[int] = []
        self.step = 1
        starts = list(self.object_starts) + ([self.exemplar_slice] if self.exemplar_text is not None else [])
        self.start = min(starts) if (starts and self.tracking) else self.lo
        self.seeds: list[tuple[int, torch.Tensor]] = []
        self.seed_features = None
        self.stats = {"slices_encoded": 0, "tracks": 0, "tracker_steps": 0}
        self.visiting: int | None = None  # the slice being encoded and detected
        self.standalone: dict[int, list[tuple[int, torch.Tensor]]] = {}  # label -> (id, mask) on the last commit

    # ------------------------------------------------------------------ set-up
    def _check_objects(self) -> dict[int, list[int]]:
        """Validate object prompts; slice -> indices of the objects drawn on it."""
        starts: dict[int, list[int]] = {}
        shape = self.labels.shape
        plane_h, plane_w = self.orientation.plane_shape(shape)
        n = self.num_slices
        for i, obj in enumerate(self.objects):
            k = obj.slice_index
            if isinstance(k, bool) or int(k) != k or not 0 <= k < n:
                raise ArgumentError(f"prompt slice {k} is out of range: the volume has {n} "
                                    f"{self.orientation.axis} slices (0..{n - 1})")
            if obj.mask is None and obj.box is None and not obj.points:
                raise ArgumentError("an object prompt needs a box, points or a mask")
            if obj.mask is not None:
                if np.asarray(obj.mask).shape != (plane_h, plane_w):
                    raise ArgumentError(f"the mask on slice {k} has shape {np.asarray(obj.mask).shape}, "
                                        f"expected the plane's {(plane_h, plane_w)}")
                if not np.asarray(obj.mask).any():
                    raise ArgumentError(f"the mask on slice {k} is empty")
            if obj.box is not None:
                check_box(obj.box, (plane_h, plane_w), f"slice {k}")
            check_point_labels(obj.points, obj.point_labels)
            for point in obj.points or []:
                check_point(point, (plane_h, plane_w), f"slice {k}")
            starts.setdefault(int(k), []).append(i)
        return starts

    def _check_exemplars(self, exemplar_slice: int | None) -> tuple[int | None, list[TextPrompt] | None]:
        """``(slice, prompts with their exemplar boxes in stack-slice pixels)``, or ``(slice, None)``
        when no prompt has exemplar boxes."""
        if not any(p.exemplar_boxes for p in self.text):
            return exemplar_slice, None
        n = self.num_slices
        if exemplar_slice is None:
            raise ArgumentError("exemplar boxes on a volume need the slice they are drawn on (--slice K, "
                                f"the {self.orientation.axis} slice index, 0..{n - 1})")
        k = exemplar_slice
        if isinstance(k, bool) or int(k) != k or not 0 <= k < n:
            raise ArgumentError(f"exemplar slice {k} is out of range: the volume has {n} "
                                f"{self.orientation.axis} slices (0..{n - 1})")
        shape = self.labels.shape
        plane_h, plane_w = self.orientation.plane_shape(shape)
        converted = []
        for p in self.text:
            boxes = []
            for box in p.exemplar_boxes:
                if len(box) != 4:
                    raise ArgumentError(f"an exemplar box needs 4 numbers X0 Y0 X1 Y1, got {list(box)}")
                x0, y0, x1, y1 = (float(v) for v in box)
                if not (0 <= x0 < x1 <= plane_w and 0 <= y0 < y1 <= plane_h):
                    raise ArgumentError(f"exemplar box {x0:g} {y0:g} {x1:g} {y1:g} is not inside slice {k} "
                                        f"(width {plane_w}, height {plane_h}) with X0 < X1 and Y0 < Y1")
                boxes.append(self.orientation.plane_box_to_slice([x0, y0, x1, y1], shape))
            converted.append(TextPrompt(p.text, boxes, list(p.exemplar_labels)))
        return int(k), converted

    def _model_prompt(self, obj: ObjectPrompt) -> dict:
        """An object's prompt on the stack's slice, in model input pixels."""
        shape = self.labels.shape
        if obj.mask is not None:
            mask = np.ascontiguousarray(self.orientation.plane_mask_to_slice(np.asarray(obj.mask, bool)))
            return {"mask": torch.from_numpy(mask)}
        h, w = self.plane_shape
        size = self.predictor.model.image_size
        sx, sy = size / w, size / h
        out = {}
        if obj.box is not None:
            x0, y0, x1, y1 = self.orientation.plane_box_to_slice([float(v) for v in obj.box], shape)
            out["box"] = [x0 * sx, y0 * sy, x1 * sx, y1 * sy]
        if obj.points:
            pts = [self.orientation.plane_to_slice_xy(float(p[0]), float(p[1]), shape) for p in obj.points]
            out["points"] = [[x * sx, y * sy] for x, y in pts]
            out["point_labels"] = list(obj.point_labels) if obj.point_labels is not None else [1] * len(pts)
        return out

    # ------------------------------------------------------------------ the pass
    def _open_feed(self) -> SliceFeed:
        """The slices in this run's order (forwards from the start, then back to the first), read
        ahead and encoded in batches (:mod:`medsam3.predict.slice_feed`)."""
        order = list(range(self.start, self.hi)) + list(range(self.start - 1, self.lo - 1, -1))
        # the slices a prompt is drawn on are never skipped
        forced = set(self.object_starts) | ({self.exemplar_slice} if self.exemplar_text is not None else set())
        rule = self.p.empty_slices

        def skip(z: int, plane: np.ndarray) -> bool:
            return rule is not None and z not in forced and rule.is_empty(plane)

        axis, name = self.orientation.axis, self.description
        return SliceFeed(self.predictor, self.stack, order, self.context, skip, self.p.slices_per_call(),
                         read_ahead=self.p.read_ahead, cache=self.feature_cache, keep=self.revisited,
                         describe=lambda z: f"{axis} slice {z} of {name}")

    def execute(self) -> VolumeSegmentation:
        self.feed = self._open_feed()
        bar = tqdm(total=self.hi - self.lo, desc=self.description, unit="slice", disable=not self.p.progress,
                   leave=False)
        try:
            with torch.inference_mode():
                self.step = 1
                for z in range(self.start, self.hi):
                    self._visit(z)
                    bar.update(1)
                self._finish_half()
                if self.start > self.lo:
                    self.step = -1
                    self.standalone = {}
                    self._seed_backward_half()
                    for z in range(self.start - 1, self.lo - 1, -1):
                        self._visit(z)
                        bar.update(1)
                    self._finish_half()
        finally:
            bar.close()
            self.feed.close()
            for track in self.tracks:
                if track.obj is not None:
                    track.obj.close()
        self.stats["slices_encoded"] = self.feed.stats["encoded"]
        for summary in self.summaries:
            summary.present = summary.voxels > 0
            summary.slices_present.sort()
            summary.instance_ids.sort()
        return VolumeSegmentation(self.labels, self.summaries, self.instances, dict(self.label_of),
                                  dict(self.key_slices), self.orientation, sorted(self.skipped), self.mode,
                                  dict(self.stats))

    def _new_id(self, label: int) -> int:
        """A new instance id (track or detection) for ``label``."""
        i = self.next_id
        self.next_id += 1
        self.label_of[i] = label
        return i

    def _live(self) -> list[_Track]:
        return [t for t in self.tracks if t.alive]

    def _add_track(self, track: _Track) -> None:
        self.tracks.append(track)
        self.track_ids.add(track.id)

    def _visit(self, z: int) -> None:
        if self.feed.take(z) is None:  # an empty slice (the feed's reader thread applied the rule)
            record = _Record(z, True)
        else:  # encoded (once: in a batch, or kept from an earlier pass) and set on the predictor
            hidden = self.predictor.vision_hidden_state if self.tracker is not None else None
            self.visiting = z
            record = _Record(z, False, hidden, rows=self._detect())
            self.presences[z] = [row.presence for row in record.rows]
        self.waiting.append(record)
        while self.waiting and abs(z - self.waiting[0].index) >= self.delay:
            self._decide(self.waiting.popleft())

    def _decide(self, record: _Record) -> None:
        """A visited slice whose presence can be decided: detections, tracks, output."""
        z = record.index
        self.window[z] = record
        if record.skipped:
            self.skipped.append(z)
            for track in self._live():
                self._apply(track, record, EMPTY, None, None)
        else:
            record.candidates = self._candidates(record.rows, self._presence(z))
            record.rows = None
            self._track(record)
            self._start_objects(record)
            self._start_tracks(record)
        self.tracks = self._live()  # stopped tracks hold nothing the output still needs
        self._commit_settled(z)

    def _features(self, record: _Record):
        """The tracker's features of a slice, made from its ViT output the first time they are needed."""
        if record._features is None:
            record._features = self.tracker.slice_features(record.hidden)
        return record._features

    # ------------------------------------------------------------------ detection
    def _detect(self) -> list[DetectorRow]:
        """The detector's rows for the text prompts on the current slice (``self.visiting``; with
        their exemplar boxes on the exemplar slice). A row that waits for its presence window keeps
        only the queries that can pass the score threshold whatever the window decides
        (``quality x presence`` with presence <= 1)."""
        rows: list[DetectorRow] = []
        on_exemplar = self.exemplar_text is not None and self.visiting == self.exemplar_slice
        prompts = self.exemplar_text if on_exemplar else self.text
        if prompts:
            for batch, out in self.predictor.detect(prompts):
                rows += [self.predictor.detector_row(out, i) for i in range(len(batch))]
        if self.delay:
            for row in rows:
                keep = row.quality > self.predictor.score_threshold
                row.quality, row.logits = row.quality[keep], row.logits[keep]
        return rows

    def _presence(self, z: int) -> list[float]:
        """The text prompts' presence on slice ``z``: the detector's, or with a presence window
        the median over the window (ends clamped, skipped slices 0)."""
        if self.delay == 0:
            return self.presences.pop(z)
        absent = [0.0] * len(self.text)
        near = [self.presences.get(min(max(j, 0), self.num_slices - 1), absent)
                for j in range(z - self.delay, z + self.delay + 1)]
        self.presences.pop(z - self.delay, None)  # no later slice's window reaches it
        return np.median(np.asarray(near, dtype=np.float64), axis=0).tolist()

    def _candidates(self, rows: list[DetectorRow], presence: list[float]) -> list[list[_Candidate]]:
        pred = self.predictor
        out_all: list[list[_Candidate]] = []
        for k, (row, p) in enumerate(zip(rows, presence)):
            self.summaries[k].presence_score = max(self.summaries[k].presence_score, p)
            scores, all_logits = query_scores(row.quality, p), row.logits
            strong = confident_queries(scores, p, pred.score_threshold, pred.presence_threshold)
            usable = strong | (scores >= self.support_score) if self.mode == "merged" else strong
            idx = usable.nonzero().flatten()
            logits = all_logits[idx]
            masks = logits > self.thr
            nonempty = masks.flatten(1).any(1)
            idx, logits, masks = idx[nonempty], logits[nonempty], masks[nonempty]
            cands: list[_Candidate] = []
            is_strong = strong[idx]
            s_pos = is_strong.nonzero().flatten().tolist()
            if s_pos:
                s_scores = scores[idx[s_pos]]
                for group in fold_duplicates(s_scores, masks[s_pos], self.rule.duplicate_iou):
                    members = [s_pos[g] for g in group]
                    merged = logits[members].max(0).values
                    cands.append(_Candidate(float(s_scores[group[0]]), merged, merged > self.thr, True))
            for j in (~is_strong).nonzero().flatten().tolist():
                cands.append(_Candidate(float(scores[idx[j]]), logits[j], masks[j], False))
            out_all.append(cands)
        return out_all

    # ------------------------------------------------------------------ tracking
    def _track(self, record: _Record) -> None:
        live = self._live()
        if not live:
            return
        if self.mode == "slices":
            self._link_slices(record, live)
            return
        stepped = {t.id: t.obj.step(record.index, self._features(record)) for t in live}
        self.stats["tracker_steps"] += len(live)
        for k in range(len(self.text)):
            tracks = [t for t in live if t.kind == "text" and t.label == k + 1]
            if not tracks:
                continue
            cands = [c for c in record.candidates[k] if self.mode == "merged" or c.strong]
            t_masks = torch.stack([stepped[t.id][0] > self.thr for t in tracks])
            c_masks = torch.stack([c.mask for c in cands]) if cands else torch.zeros(0, *t_masks.shape[1:], dtype=torch.bool)
            pairs = dict(greedy_match(mask_iou(t_masks, c_masks), self.rule.iou_threshold))
            for i, track in enumerate(tracks):
                logits, score = stepped[track.id]
                nonempty = bool(t_masks[i].any())
                if i in pairs:
                    cand = cands[pairs[i]]
                    cand.owner = track.id
                    final = torch.maximum(logits, cand.logits) if self.mode == "merged" else logits
                    self._apply(track, record, SUPPORTED, final, score)
                elif nonempty:
                    self._apply(track, record, UNSUPPORTED if self.mode == "merged" else SUPPORTED, logits, score)
                else:
                    self._apply(track, record, EMPTY, logits, score)
        for track in live:
            if track.kind == "object":
                logits, score = stepped[track.id]
                state = SUPPORTED if bool((logits > self.thr).any()) else EMPTY
                self._apply(track, record, state, logits, score)

    def _apply(self, track: _Track, record: _Record, state: str, final: torch.Tensor | None,
               score: float | None) -> None:
        """Record a track's state on a slice, settle its ledger and encode its memory."""
        if state != EMPTY:
            record.masks[track.id] = _TrackMask(final, True if state == SUPPORTED else None)
        decision = track.ledger.add(record.index, state)
        self._settle(track.id, decision)
        if decision.stop:
            self._stop(track)
        elif track.obj is not None and final is not None:
            track.obj.remember(record.index, final, score)

    def _stop(self, track: _Track) -> None:
        track.alive = False
        if track.obj is not None:
            track.obj.close()
            track.obj = None

    def _settle(self, track_id: int, decision) -> None:
        for value, indices in ((True, decision.keep), (False, decision.drop)):
            for index in indices:
                record = self.window.get(index)
                if record is not None and track_id in record.masks:
                    record.masks[track_id].keep = value

    def _link_slices(self, record: _Record, live: list[_Track]) -> None:
        """``slices`` mode: a detection continues the instance it overlaps on the previous slice."""
        for k in range(len(self.text)):
            tracks = [t for t in live if t.label == k + 1 and t.kind == "text"]
            cands = [c for c in record.candidates[k] if c.strong]
            if tracks and cands:
                iou = mask_iou(torch.stack([t.last_mask for t in tracks]), torch.stack([c.mask for c in cands]))
                pairs = dict(greedy_match(iou, self.rule.iou_threshold))
            else:
                pairs = {}
            for i, track in enumerate(tracks):
                if i in pairs:
                    cand = cands[pairs[i]]
                    cand.owner = track.id
                    track.last_mask = cand.mask
                    record.masks[track.id] = _TrackMask(cand.logits, True)
                else:
                    track.alive, track.last_mask = False, None
        for track in live:
            if track.kind == "object":
                track.alive = False

    def _start_objects(self, record: _Record) -> None:
        if self.step != 1:
            return
        for i in self.object_starts.get(record.index, []):
            label = len(self.text) + 1 + i
            obj, logits, score = self.tracker.start(record.index, self._features(record), reverse=False,
                                                    name=self.summaries[label - 1].prompt,
                                                    **self._model_prompt(self.objects[i]))
            summary = self.summaries[label - 1]
            summary.presence_score = float(torch.sigmoid(torch.tensor(score)))
            if not bool((logits > self.thr).any()):
                obj.close()  # the tracker sees no object there: reported absent
                continue
            track = _Track(self._new_id(label), label, "object", obj, TrackLedger(self.rule.max_unsupported, False))
            self._add_track(track)
            self.stats["tracks"] += 1
            self.key_slices[track.id] = record.index
            record.masks[track.id] = _TrackMask(logits, True)
            if self.tracking:
                obj.remember(record.index, logits, score)
                if record.index != self.start:
                    self._propagate_back(track, record)
            else:
                self._stop(track)

    def _start_tracks(self, record: _Record) -> None:
        """Detections no track explains start new tracks (their key slice)."""
        for k, cands in enumerate(record.candidates):
            for cand in cands:
                if not cand.strong or cand.owner is not None:
                    continue
                if self.mode != "slices" and cand.score < self.rule.key_score:
                    continue  # kept as a detection of this slice (see _commit)
                live = [t for t in self._live() if t.kind == "text" and t.label == k + 1]
                if len(live) >= self.p.max_objects:
                    continue  # kept as a detection with its own id (see max_objects)
                track_id = self._new_id(k + 1)
                cand.owner = track_id
                self.key_slices[track_id] = record.index
                record.masks[track_id] = _TrackMask(cand.logits, True)
                if self.mode == "slices":
                    self._add_track(_Track(track_id, k + 1, "text", None, TrackLedger(0, False),
                                           last_mask=cand.mask))
                    continue
                obj, logits, score = self.tracker.start(record.index, self._features(record), reverse=self.step < 0,
                                                        mask=cand.mask, name=self.summaries[k].prompt)
                obj.remember(record.index, logits, score)
                track = _Track(track_id, k + 1, "text", obj,
                               TrackLedger(self.rule.max_unsupported, drop_drift=self.mode == "merged"))
                self._add_track(track)
                self.stats["tracks"] += 1
                self._propagate_back(track, record)

    def _propagate_back(self, track: _Track, key: _Record) -> None:
        """Propagate a new track from its key slice back through the open slices."""
        reach = self.p.backward_slices
        if reach == 0:
            return
        obj = track.obj.fork(reverse=self.step > 0)
        ledger = TrackLedger(self.rule.max_unsupported, drop_drift=track.ledger.drop_drift)
        decision = None
        for j in range(1, reach + 1):
            index = key.index - j * self.step
            record = self.window.get(index)
            if record is None or record.skipped:
                break
            trk, score = obj.step(index, self._features(record))
            self.stats["tracker_steps"] += 1
            mask = trk > self.thr
            if bool(mask.any()) and self._overlaps_other(track, record, mask):
                break  # that object is tracked there already
            state, final = self._classify(track, record, trk, mask)
            if state != EMPTY:
                record.masks[track.id] = _TrackMask(final, True if state == SUPPORTED else None)
            decision = ledger.add(index, state)
            self._settle(track.id, decision)
            if decision.stop:
                break
            obj.remember(index, final, score)
        if not ledger.stopped:
            self._settle(track.id, ledger.finish())
        obj.close()

    def _classify(self, track: _Track, record: _Record, trk: torch.Tensor, mask: torch.Tensor):
        if not bool(mask.any()):
            return EMPTY, trk
        if track.kind != "text" or self.mode != "merged":
            return SUPPORTED, trk
        free = [c for c in record.candidates[track.label - 1] if c.owner is None]
        if free:
            iou = mask_iou(mask[None], torch.stack([c.mask for c in free]))[0]
            best = int(iou.argmax())
            if float(iou[best]) >= self.rule.iou_threshold:
                free[best].owner = track.id
                return SUPPORTED, torch.maximum(trk, free[best].logits)
        return UNSUPPORTED, trk

    def _overlaps_other(self, track: _Track, record: _Record, mask: torch.Tensor) -> bool:
        others = [m.logits > self.thr for tid, m in record.masks.items()
                  if tid != track.id and m.keep is not False and self.label_of[tid] == track.label]
        if not others:
            return False
        return bool((mask_iou(mask[None], torch.stack(others))[0] >= self.rule.iou_threshold).any())

    # ------------------------------------------------------------------ halves
    def _finish_half(self) -> None:
        while self.waiting:
            self._decide(self.waiting.popleft())
        for track in self._live():
            self._settle(track.id, track.ledger.finish())
            self._stop(track)
        while self.window:
            self._commit(self.window.popitem(last=False)[1])

    def _seed_backward_half(self) -> None:
        """Tracks present on the start slice continue into the other half with the same ids."""
        for track_id, logits in self.seeds:
            label = self.label_of[track_id]
            kind = "object" if label > len(self.text) else "text"
            obj, start_logits, score = self.tracker.start(self.start, self.seed_features, reverse=True,
                                                          mask=logits > self.thr,
                                                          name=self.summaries[label - 1].prompt)
            obj.remember(self.start, start_logits, score)
            drop = self.mode == "merged" and kind == "text"
            self._add_track(_Track(track_id, label, kind, obj, TrackLedger(self.rule.max_unsupported, drop)))
        self.seeds, self.seed_features = [], None

    # ------------------------------------------------------------------ output
    def _commit_settled(self, current: int) -> None:
        while self.window:
            index = next(iter(self.window))
            if abs(current - index) < self.window_size:
                break
            self._commit(self.window.popitem(last=False)[1])

    def _standalone(self, label: int, cands: list[_Candidate]) -> list[tuple]:
        """Detections without a track (below the key score, or beyond ``max_objects``): each
        continues the id of the one it overlaps on the previously committed slice."""
        previous = self.standalone.get(label, [])
        pairs = {}
        if previous and cands:
            iou = mask_iou(torch.stack([m for _, m in previous]), torch.stack([c.mask for c in cands]))
            pairs = {j: i for i, j in greedy_match(iou, self.rule.iou_threshold)}
        current, entries = [], []
        for j, cand in enumerate(cands):
            ident = previous[pairs[j]][0] if j in pairs else self._new_id(label)
            current.append((ident, cand.mask))
            entries.append((label, ident, cand.logits))
        self.standalone[label] = current
        return entries

    def _commit(self, record: _Record) -> None:
        """Write a slice whose answer can no longer change into the output volumes."""
        entries = [(self.label_of[tid], tid, m.logits) for tid, m in record.masks.items() if m.keep is not False]
        for k, cands in enumerate(record.candidates):
            entries += self._standalone(k + 1, [c for c in cands if c.strong and c.owner is None])
        if not record.candidates:
            self.standalone = {}
        if record.index == self.start and self.step == 1 and self.start > self.lo:
            self.seeds = [(tid, logits) for _, tid, logits in entries if tid in self.track_ids]
            self.seed_features = self._features(record) if self.seeds else None
        record.hidden = record._features = None
        if not entries:
            return
        entries.sort(key=lambda e: (e[0], e[1]))
        logits = torch.stack([e[2] for e in entries]).float()
        probs = upsample_mask_logits(logits, self.plane_shape)
        if self.sink is not None:
            self.sink(record.index, [e[0] for e in entries], probs)
            return
        label_plane, id_plane = resolve_voxels(probs, [e[0] for e in entries], [e[1] for e in entries],
                                               self.predictor.mask_threshold)
        z = record.index
        self.labels_stack[z] = label_plane
        if self.instances_stack is not None:
            self.instances_stack[z] = id_plane
        for label in np.unique(label_plane[label_plane > 0]).tolist():
            summary = self.summaries[label - 1]
            summary.slices_present.append(z)
            summary.voxels += int((label_plane == label).sum())
            for i in np.unique(id_plane[label_plane == label]).tolist():
                if i not in summary.instance_ids:
                    summary.instance_ids.append(i)
