"""What a prediction returns, per prompt, and how prompts become one label map."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from medsam3.orientation import SliceOrientation


@dataclass
class PromptResult:
    """The answer to one prompt on one 2D image, in the original image's pixel grid.

    Attributes:
        prompt: the text (or ``"box"`` / ``"points"`` for interactive prompts).
        present: False when the model answers "absent" (presence score below threshold or
            no instance above the score threshold); then ``semantic`` is empty.
        presence_score: sigmoid of the presence logit (detector) or object-score logit
            (interactive tracker), in [0, 1].
        scores: ``(N,)`` instance scores, sigmoid(class) x sigmoid(presence), above threshold.
        boxes: ``(N, 4)`` instance boxes, ``x0, y0, x1, y1`` in pixels of the input image.
        masks: ``(N, H, W)`` boolean instance masks.
        semantic: ``(H, W)`` boolean union of the instance masks (never only the top-1).
        probability: ``(H, W)`` float32, per pixel the highest mask probability among the
            kept instances (0 where none): used to resolve overlapping prompts.
    """

    prompt: str
    present: bool
    presence_score: float
    scores: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray
    semantic: np.ndarray
    probability: np.ndarray
    kind: str = "text"
    extra: dict = field(default_factory=dict)

    @property
    def num_instances(self) -> int:
        return int(len(self.scores))

    @classmethod
    def absent(cls, prompt: str, presence_score: float, shape: tuple[int, int], kind: str = "text") -> "PromptResult":
        return cls(prompt, False, presence_score, np.zeros(0, np.float32), np.zeros((0, 4), np.float32),
                   np.zeros((0, *shape), bool), np.zeros(shape, bool), np.zeros(shape, np.float32), kind)


#: a mask lying this much inside another, larger one is nested in it (a structure in its organ)
NESTED_FRACTION = 0.8


def nesting_depth(masks: list[np.ndarray]) -> np.ndarray:
    """For each boolean mask, how many larger masks of the list it is nested in (at least
    :data:`NESTED_FRACTION` of its pixels inside each). Where prompts overlap, the deeper one
    takes the pixel, so a structure stays visible inside the organ around it."""
    area = np.array([int(m.sum()) for m in masks])
    depth = np.zeros(len(masks), np.int64)
    for k, inner in enumerate(masks):
        for j, outer in enumerate(masks):
            if area[j] > area[k] > 0 and (inner & outer).sum() >= NESTED_FRACTION * area[k]:
                depth[k] += 1
    return depth


def combine_label_map(results: list[PromptResult], dtype=None) -> np.ndarray:
    """One label map from several prompts: label ``k`` (1-based) for the k-th result.

    Where prompts overlap, the pixel goes to the prompt with the highest mask probability
    (ties to the earlier prompt), except where one mask is nested in another
    (:func:`nesting_depth`): a mask with at least :data:`NESTED_FRACTION` of its pixels inside
    a larger one ("caudate nucleus" inside "brain") keeps them, so the inner structure stays
    visible in the map instead of being painted over by the organ around it. Works for 2D
    ``(H, W)`` and stacked 3D ``(Z, H, W)`` fields (for 3D, nesting is judged on the volume).
    """
    if not results:
        raise ValueError("no prompt results to combine")
    shape = results[0].semantic.shape
    dtype = dtype or (np.uint8 if len(results) < 256 else np.uint16)
    present = [(k, r) for k, r in enumerate(results, start=1) if r.present]
    # the deeper prompt takes a shared pixel, between equally deep ones the more probable
    # (rank = depth + probability / 2: depth dominates)
    depth = nesting_depth([r.semantic for _, r in present])
    best = np.full(shape, -1.0, np.float32)
    labels = np.zeros(shape, dtype)
    for (k, result), d in zip(present, depth):
        rank = d + result.probability / 2
        take = result.semantic & (rank > best)
        labels[take] = k
        best[take] = rank[take]
    return labels


@dataclass
class VolumePromptSummary:
    """A prompt's answer over a whole volume.

    ``slices_present`` are indices along the slicing axis (array order), ``voxels`` the
    voxel count of its label, ``instance_ids`` the ids it holds in the instance map.
    """

    prompt: str
    present: bool
    presence_score: float  # the highest presence probability over the slices (presence window: of its medians)
    slices_present: list[int] = field(default_factory=list)
    voxels: int = 0
    kind: str = "text"
    instance_ids: list[int] = field(default_factory=list)


@dataclass
class VolumeSegmentation:
    """What :meth:`VolumePredictor.segment` returns.

    Attributes:
        labels: ``(Z, Y, X)`` label map in the input's array order; label k = k-th prompt
            (text prompts, then objects).
        summaries: one :class:`VolumePromptSummary` per label.
        instances: ``(Z, Y, X)`` instance ids (0 = background), when asked for.
        instance_labels: instance id -> its label.
        key_slices: instance id -> the slice its track started on (detections and objects).
        orientation: how the volume was sliced.
        skipped_slices: slices skipped as empty background.
        mode: ``merged``, ``propagate`` or ``slices``.
        stats: work done: ``slices_encoded`` (ViT passes), ``tracks`` started,
            ``tracker_steps`` (tracker runs on a slice, all objects and directions).
    """

    labels: np.ndarray
    summaries: list[VolumePromptSummary]
    instances: np.ndarray | None
    instance_labels: dict[int, int]
    key_slices: dict[int, int]
    orientation: SliceOrientation
    skipped_slices: list[int]
    mode: str
    stats: dict = field(default_factory=dict)
