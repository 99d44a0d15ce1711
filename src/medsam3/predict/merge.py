"""The merge rule of the 3D scheme: how detector and tracker masks become one answer.

Per slice and per text prompt the detector gives *candidates* (its query masks with score
``s = sigmoid(class) x sigmoid(presence)``) and every live *track* of that prompt gives the
tracker's mask, propagated from the previous slice through the memory bank. All masks
are compared at the model's low-resolution mask grid (``4 x image_size / 14`` pixels).

**Detections.** A candidate is *strong* when ``s > score_threshold`` and the prompt's
presence is at least ``presence_threshold`` (the 2D predictor's "present" instances);
it is *weak* when only ``s >= support_score`` (default: half the score threshold).
Strong candidates that overlap a higher-scoring strong candidate with
IoU ``>= duplicate_iou`` are the same object found twice: they are folded into it
(pixel-wise maximum), which keeps the union of detections unchanged.

**Matching.** Tracks and candidates are matched one-to-one, greedily by decreasing IoU,
keeping pairs with IoU ``>= iou_threshold`` (ties: lower track, then candidate index).

**Per track and slice**, one of three states:

* ``S`` supported -- the tracker mask is non-empty and matched to a candidate (strong or
  weak). The track's mask there is the pixel-wise maximum of the two probabilities
  (their union at the mask threshold).
* ``U`` unsupported -- the tracker mask is non-empty but no candidate matches it.
* ``E`` empty -- the tracker lost the object (object score <= 0 or no pixel above the
  mask threshold).

**End and drift.** Along a track (in propagation order, ``N = max_unsupported``):

* the track ends on the first ``E`` slice (the tracker lost the object);
* ``N + 1`` consecutive ``U`` slices are drift -- the tracker keeps finding "something"
  no detection agrees with: all ``N + 1`` of those masks are removed and the track ends;
* otherwise a run of ``U`` slices is kept, whether it ends with support again (it
  bridges detector misses), with ``E`` or with the last slice (it extends the structure
  by at most ``N`` slices beyond its last detection).

**Memory.** What the tracker remembers of a slice (its memory bank entry) is the track's
mask there *after* merging, so a detection corrects what the tracker carries on.

**New objects.** A strong candidate that no track matches and whose score is at least
``key_score`` (default 0.5; SAM3's video model uses 0.7) starts a new track there (its
*key slice*), propagated forwards and backwards by the tracker (backwards the same rule
applies in reverse slice order, and the track also stops where its mask overlaps another
track of its prompt with IoU ``>= iou_threshold``: that object is tracked there already).
Unmatched strong
candidates below ``key_score`` are kept as detections of their slice, linked to such a
detection on the previous slice by the same IoU matching (one id while they continue).
Hence every detection is kept, whether or not the tracker found it, and every kept mask
belongs to one instance id across the slices it continues on.

**Voxels.** Each voxel goes to the instance (of any prompt) with the highest
probability above the mask threshold; ties go to the earlier prompt, then the older
instance. A prompt whose mask on the slice lies inside another prompt's larger mask
(a structure inside its organ: "caudate nucleus" in "brain") keeps those voxels. The
label map holds the instance's prompt, the instance map its id.

Modes other than ``merged`` (see :mod:`medsam3.predict.volume`) reuse the matching and
the run bookkeeping with ``drop_drift=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from medsam3.errors import ArgumentError
from medsam3.predict.results import nesting_depth

SUPPORTED, UNSUPPORTED, EMPTY = "S", "U", "E"


@dataclass(frozen=True)
class MergeRule:
    """The parameters of the merge rule (module docstring).

    Attributes:
        iou_threshold: minimum IoU for a tracker mask and a detection to be the same object.
        max_unsupported: ``N``: a track may go ``N`` slices without detector support; the
            ``N + 1``-th in a row is drift: those masks are removed and the track ends.
        support_score: lowest detection score that can support a tracker mask; ``None``
            means half the predictor's score threshold.
        duplicate_iou: strong detections overlapping a better one this much are folded into it.
        key_score: lowest detection score that starts a new track (a key slice).
    """

    iou_threshold: float = 0.3
    max_unsupported: int = 2
    support_score: float | None = None
    duplicate_iou: float = 0.5
    key_score: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.iou_threshold <= 1.0:
            raise ArgumentError(f"IoU threshold {self.iou_threshold} is outside (0, 1]")
        if not 0.0 < self.duplicate_iou <= 1.0:
            raise ArgumentError(f"duplicate IoU {self.duplicate_iou} is outside (0, 1]")
        if int(self.max_unsupported) != self.max_unsupported or self.max_unsupported < 0:
            raise ArgumentError(f"max unsupported slices must be a whole number >= 0, got {self.max_unsupported}")
        if not 0.0 <= self.key_score <= 1.0:
            raise ArgumentError(f"key score {self.key_score} is outside [0, 1]")
        if self.support_score is not None and not 0.0 <= self.support_score <= 1.0:
            raise ArgumentError(f"support score {self.support_score} is outside [0, 1]")


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(M, N)`` IoU of boolean masks ``a`` ``(M, h, w)`` and ``b`` ``(N, h, w)`` (0 where both are empty)."""
    if a.shape[0] == 0 or b.shape[0] == 0:
        return torch.zeros(a.shape[0], b.shape[0])
    fa = a.flatten(1).float()
    fb = b.flatten(1).float()
    inter = fa @ fb.T
    union = fa.sum(1)[:, None] + fb.sum(1)[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))


def greedy_match(iou: torch.Tensor | np.ndarray, threshold: float) -> list[tuple[int, int]]:
    """One-to-one ``(row, column)`` pairs by decreasing IoU, each with IoU ``>= threshold``.

    Ties are broken by the lower row, then the lower column, so the result is deterministic.
    """
    m = np.asarray(iou.cpu() if isinstance(iou, torch.Tensor) else iou, dtype=np.float64)
    if m.size == 0:
        return []
    rows, cols = np.nonzero(m >= threshold)
    order = sorted(zip(rows.tolist(), cols.tolist()), key=lambda rc: (-m[rc], rc[0], rc[1]))
    used_r, used_c, pairs = set(), set(), []
    for r, c in order:
        if r not in used_r and c not in used_c:
            pairs.append((r, c))
            used_r.add(r)
            used_c.add(c)
    return sorted(pairs)


def fold_duplicates(scores: torch.Tensor, masks: torch.Tensor, threshold: float) -> list[list[int]]:
    """Groups of candidate indices that are one object: each group starts with its best-scoring
    member; a candidate joins the first (best) group head it overlaps with IoU ``>= threshold``.
    """
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    groups: list[list[int]] = []
    for i in order:
        if groups:
            heads = torch.stack([masks[g[0]] for g in groups])
            iou = mask_iou(masks[i][None], heads)[0]
            hits = (iou >= threshold).nonzero().flatten()
            if hits.numel():
                groups[int(hits[0])].append(i)
                continue
        groups.append([i])
    return groups


@dataclass
class LedgerDecision:
    """What a :class:`TrackLedger` step settles: slices whose pending masks are kept or removed."""

    keep: list[int] = field(default_factory=list)
    drop: list[int] = field(default_factory=list)
    stop: bool = False


class TrackLedger:
    """The end-and-drift rule along one track, fed one slice at a time in propagation order.

    ``add(index, state)`` with ``state`` in ``S``, ``U``, ``E`` returns which earlier ``U``
    masks are now settled (kept or dropped) and whether the track stops; ``U`` masks stay
    pending until then. ``finish()`` settles what is still pending when the slices run out.

    Args:
        max_unsupported: ``N`` of :class:`MergeRule`.
        drop_drift: remove a run of ``N + 1`` unsupported masks and stop (``merged`` mode);
            without it unsupported masks are kept and only ``E`` ends the track.
    """

    def __init__(self, max_unsupported: int, drop_drift: bool = True):
        self.max_unsupported = int(max_unsupported)
        self.drop_drift = drop_drift
        self.pending: list[int] = []
        self.run = 0
        self.stopped = False

    def add(self, index: int, state: str) -> LedgerDecision:
        if self.stopped:
            raise RuntimeError("the track has stopped")
        if state == SUPPORTED:
            decision = LedgerDecision(keep=self.pending)
            self.pending, self.run = [], 0
            return decision
        if state == EMPTY:
            decision = LedgerDecision(keep=self.pending, stop=True)
        elif state == UNSUPPORTED:
            self.pending.append(index)
            self.run += 1
            if not self.drop_drift or self.run <= self.max_unsupported:
                return LedgerDecision()
            decision = LedgerDecision(drop=self.pending, stop=True)
        else:
            raise ValueError(f"unknown track state {state!r}")
        self.stopped = True
        self.pending, self.run = [], 0
        return decision

    def finish(self) -> LedgerDecision:
        decision = LedgerDecision(keep=self.pending)
        self.pending = []
        self.stopped = True
        return decision


def resolve_voxels(probabilities: torch.Tensor, labels: list[int], ids: list[int], threshold: float,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Label and instance planes from ``(N, H, W)`` instance probabilities.

    Each pixel goes to the instance with the highest probability if it exceeds
    ``threshold`` (ties: the earlier instance, so order instances by prompt, then age), except
    where one prompt's mask on the plane is nested in another's (:func:`nesting_depth`): there
    the nested prompt keeps its pixels;
    ``labels[i]`` / ``ids[i]`` are instance ``i``'s prompt label and id. Returns int64
    planes, 0 where no instance claims the pixel.
    """
    if probabilities.shape[0] == 0:
        shape = tuple(probabilities.shape[1:])
        return np.zeros(shape, np.int64), np.zeros(shape, np.int64)
    probs = probabilities.cpu().numpy()
    above = probs > threshold
    labels_arr, ids_arr = np.asarray(labels, np.int64), np.asarray(ids, np.int64)
    prompts = list(dict.fromkeys(labels_arr.tolist()))
    depth = nesting_depth([above[labels_arr == p].any(0) for p in prompts])
    per_instance = depth[[prompts.index(p) for p in labels_arr.tolist()]]
    # rank = depth + probability / 2 above the threshold: the deeper prompt first, then the
    # more probable instance; argmax keeps the first maximum (earlier instances win ties)
    rank = np.where(above, per_instance[:, None, None] + probs / 2, -1.0)
    winner = rank.argmax(0)
    claimed = above.any(0)
    label_plane = np.where(claimed, labels_arr[winner], 0)
    id_plane = np.where(claimed, ids_arr[winner], 0)
    return label_plane, id_plane
