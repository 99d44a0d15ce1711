"""Segmentation metrics in millimetres: Dice, IoU, NSD, HD95, ASSD and instance F1.

One implementation is pinned for everything that measures surfaces: **MONAI 1.6.1**
(``monai.metrics``), called through its public functions, because open-source NSD/HD codes
disagree by large margins and MONAI is maintained, tested and already what many papers use.
What each call means, checked against hand-computed cubes, squares and spheres in
``tests/test_metrics.py`` and against DeepMind's ``surface-distance`` during development:

* **NSD** (normalised surface Dice at ``tolerance`` mm): ``compute_surface_dice(...,
  use_subvoxels=True)``. Surface elements sit on the voxel-corner lattice and are weighted
  by their area (contour length in 2D) for the real spacing: exactly DeepMind's
  ``compute_surface_dice_at_tolerance``, the NSD that MedSAM and the CVPR BiomedSegFM
  challenges report (agreement to 1e-4 on spheres, shifted cubes and a brain mask).
  A boundary element counts when its distance is ``<= tolerance``.
* **HD95**: ``compute_hausdorff_distance(percentile=95)`` (symmetric): the boundary is the
  set of mask voxels with a face-neighbour outside the mask (or on the image border);
  distances are Euclidean between voxel centres in mm; the result is
  ``max(P95(d(pred->gt)), P95(d(gt->pred)))``, the larger of the two *directed* 95th
  percentiles (``torch.quantile``, linear interpolation). This is **not** the "pooled"
  convention of MedPy's ``hd95`` (one percentile over both directions together), and it is
  unweighted, so it differs from DeepMind's area-weighted ``compute_robust_hausdorff``.
* **ASSD**: ``compute_average_surface_distance(symmetric=True)``: the mean of all boundary
  voxel distances of both directions pooled, ``(sum d(p->g) + sum d(g->p)) / (|P| + |G|)``
  (MedPy's ``assd`` instead averages the two directed means).
* **Dice / IoU**: voxel counts; **instance F1**: connected components (``scipy.ndimage
  .label``, full 8/26-connectivity) matched one-to-one by IoU >= 0.5 with the Hungarian
  algorithm (``scipy.optimize.linear_sum_assignment``); above 0.5 a match is unique anyway,
  so this equals greedy matching except for exact ties at 0.5.

Spacing: every function here takes ``spacing`` in :class:`medsam3.Image` order ``(x, y[, z])``
(millimetres per index axis) and reverses it to the array's ``[z, y, x]`` order before
MONAI sees it (MONAI multiplies array index ``i`` by ``spacing[i]``).

Empty masks (MONAI returns NaN or inf there; we decide before calling it), set by
:class:`EmptyMaskConvention`:

* both empty (a correctly "absent" class): ``both_empty="nan"`` (default, as nnU-Net: the
  row is kept and listed as a true negative but left out of means) or ``"perfect"`` (Dice =
  IoU = NSD = F1 = 1, HD95 = ASSD = 0, as the CVPR/MedSAM challenges score it);
* exactly one empty: Dice = IoU = NSD = F1 = 0 always; HD95 and ASSD are
  ``one_empty_distance="diagonal"`` (default: the image's physical diagonal, the largest
  possible distance on that grid, so means stay finite and failures still weigh),
  ``"inf"`` or ``"nan"``.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from medsam3.errors import ArgumentError, InputError
from medsam3.image import Image

#: Accepted values of :attr:`EmptyMaskConvention.both_empty`.
BOTH_EMPTY_CHOICES = ("nan", "perfect")
#: Accepted values of :attr:`EmptyMaskConvention.one_empty_distance`.
ONE_EMPTY_DISTANCE_CHOICES = ("diagonal", "inf", "nan")

#: Outcome of comparing one predicted mask with its ground truth.
OUTCOMES = ("scored", "true_negative", "false_positive", "false_negative")

# Geometry tolerance when checking that a prediction lies on the ground-truth grid: NIfTI
# stores spacing and origin as float32, so two writers of "the same" grid differ by ~1e-5.
GEOMETRY_ATOL = 1e-3


@dataclass(frozen=True)
class EmptyMaskConvention:
    """How metrics are defined when the prediction and/or the ground truth is empty.

    Attributes:
        both_empty: ``"nan"`` (undefined, left out of means) or ``"perfect"`` (score 1,
            distances 0).
        one_empty_distance: HD95/ASSD when exactly one mask is empty: ``"diagonal"`` (the
            image's physical diagonal in mm), ``"inf"`` or ``"nan"``.
    """

    both_empty: str = "nan"
    one_empty_distance: str = "diagonal"

    def __post_init__(self) -> None:
        if self.both_empty not in BOTH_EMPTY_CHOICES:
            raise ArgumentError(
                f"both_empty={self.both_empty!r} is not one of {', '.join(BOTH_EMPTY_CHOICES)}"
            )
        if self.one_empty_distance not in ONE_EMPTY_DISTANCE_CHOICES:
            raise ArgumentError(
                f"one_empty_distance={self.one_empty_distance!r} is not one of "
                f"{', '.join(ONE_EMPTY_DISTANCE_CHOICES)}"
            )

    def both_empty_score(self) -> float:
        """Value of an overlap score (Dice, IoU, NSD, F1) when both masks are empty."""
        return 1.0 if self.both_empty == "perfect" else math.nan

    def both_empty_distance(self) -> float:
        """Value of a distance (HD95, ASSD) when both masks are empty."""
        return 0.0 if self.both_empty == "perfect" else math.nan

    def one_empty_distance_mm(self, shape: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> float:
        """Value of a distance when exactly one mask is empty, for a grid of ``shape``."""
        if self.one_empty_distance == "inf":
            return math.inf
        if self.one_empty_distance == "nan":
            return math.nan
        return grid_diagonal_mm(shape, spacing_zyx)


DEFAULT_CONVENTION = EmptyMaskConvention()


@dataclass(frozen=True)
class InstanceMatch:
    """Connected components of a prediction and a ground truth matched by IoU.

    Attributes:
        f1: ``2 * matched / (n_gt + n_pred)``; both empty follows the convention.
        n_gt: ground-truth components.
        n_pred: predicted components.
        n_matched: one-to-one pairs with IoU >= the threshold (true positives).
    """

    f1: float
    n_gt: int
    n_pred: int
    n_matched: int


@dataclass(frozen=True)
class MaskScores:
    """All metrics for one (prediction, ground truth) pair of binary masks.

    Distances are in mm; ``nsd`` is at ``nsd_tolerance`` mm. ``outcome`` is one of
    :data:`OUTCOMES`: ``"scored"`` (both non-empty), ``"true_negative"`` (both empty),
    ``"false_positive"`` (empty ground truth), ``"false_negative"`` (empty prediction).
    """

    dice: float
    iou: float
    nsd: float
    hd95: float
    assd: float
    instance_f1: float
    gt_voxels: int
    pred_voxels: int
    gt_instances: int | None
    pred_instances: int | None
    matched_instances: int | None
    nsd_tolerance: float
    outcome: str

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (for CSV rows and JSON)."""
        return asdict(self)


# --------------------------------------------------------------------------- helpers


def array_spacing(spacing, ndim: int) -> tuple[float, ...]:
    """Spacing in array-axis order ``[z, y, x]`` from :class:`Image` order ``(x, y[, z])``.

    Raises:
        ArgumentError: wrong length, or a value that is not a positive finite number.
    """
    values = tuple(float(s) for s in np.atleast_1d(np.asarray(spacing, dtype=float)))
    if len(values) != ndim:
        raise ArgumentError(
            f"spacing {values} has {len(values)} values; a {ndim}D mask needs {ndim} "
            "(x, y[, z] in mm)"
        )
    if not all(math.isfinite(s) and s > 0 for s in values):
        raise ArgumentError(f"spacing {values} must be positive finite millimetres")
    return tuple(reversed(values))


def grid_diagonal_mm(shape: tuple[int, ...], spacing_zyx: tuple[float, ...]) -> float:
    """Largest distance between two voxel centres of a grid, in mm."""
    return float(math.sqrt(sum(((n - 1) * s) ** 2 for n, s in zip(shape, spacing_zyx))))


def _as_masks(prediction, ground_truth) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(prediction).astype(bool, copy=False)
    gt = np.asarray(ground_truth).astype(bool, copy=False)
    if pred.shape != gt.shape:
        raise InputError(
            f"prediction shape {pred.shape} differs from ground-truth shape {gt.shape}; "
            "both masks must lie on the same grid"
        )
    if pred.ndim not in (2, 3):
        raise InputError(f"masks must be 2D [y, x] or 3D [z, y, x], got shape {pred.shape}")
    return pred, gt


def _crop_to_union(pred: np.ndarray, gt: np.ndarray, margin: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cropped to their union's bounding box plus ``margin`` voxels.

    MONAI crops to the same box (margin 1) itself; doing it first keeps the float tensors it
    makes small for a large CT with a small organ. Distances do not change.
    """
    union = pred | gt
    if not union.any():
        return pred, gt
    slices = []
    for axis in range(union.ndim):
        other = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=other))
        slices.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + margin + 1))
    box = tuple(slices)
    return pred[box], gt[box]


def _to_monai(mask: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None, None]


@contextmanager
def _quiet_monai():
    """Run one MONAI metric call: one torch thread, and MONAI's self-inflicted notice silenced.

    MONAI's metrics do many small tensor operations (``any``, crops, pads) on the cropped
    masks; with several intra-op threads their start-up cost dominates (10x slower measured on
    a 2-core machine under load; no gain on a full 1 mm brain). The previous thread count is
    restored afterwards.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*always_return_as_numpy.*")
            yield
    finally:
        torch.set_num_threads(threads)


def _empty_case(pred: np.ndarray, gt: np.ndarray) -> str:
    has_pred, has_gt = bool(pred.any()), bool(gt.any())
    if has_pred and has_gt:
        return "scored"
    if not has_pred and not has_gt:
        return "true_negative"
    return "false_positive" if has_pred else "false_negative"


# --------------------------------------------------------------------------- overlap


def dice_score(prediction, ground_truth, convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> float:
    """Dice ``2|P & G| / (|P| + |G|)`` of two binary masks of the same shape (2D or 3D)."""
    pred, gt = _as_masks(prediction, ground_truth)
    total = int(np.count_nonzero(pred)) + int(np.count_nonzero(gt))
    if total == 0:
        return convention.both_empty_score()
    return 2.0 * int(np.count_nonzero(pred & gt)) / total


def iou_score(prediction, ground_truth, convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> float:
    """Intersection over union ``|P & G| / |P | G|`` of two binary masks (Jaccard index)."""
    pred, gt = _as_masks(prediction, ground_truth)
    union = int(np.count_nonzero(pred | gt))
    if union == 0:
        return convention.both_empty_score()
    return int(np.count_nonzero(pred & gt)) / union


# --------------------------------------------------------------------------- surfaces


def surface_dice(prediction, ground_truth, spacing, tolerance: float = 2.0,
                 convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> float:
    """Normalised surface Dice: fraction of both surfaces within ``tolerance`` mm of the other.

    Args:
        prediction, ground_truth: binary masks ``[y, x]`` or ``[z, y, x]``, same shape.
        spacing: mm per axis in :class:`Image` order ``(x, y[, z])``.
        tolerance: in mm, finite and >= 0.

    MONAI ``compute_surface_dice(use_subvoxels=True)``, identical to DeepMind's
    ``compute_surface_dice_at_tolerance`` (area-weighted surface elements).
    """
    pred, gt = _as_masks(prediction, ground_truth)
    tolerance = _check_tolerance(tolerance)
    sp = array_spacing(spacing, pred.ndim)
    case = _empty_case(pred, gt)
    if case == "true_negative":
        return convention.both_empty_score()
    if case != "scored":
        return 0.0
    from monai.metrics import compute_surface_dice

    pred, gt = _crop_to_union(pred, gt)
    with _quiet_monai():
        value = compute_surface_dice(_to_monai(pred), _to_monai(gt), [tolerance], include_background=True,
                                     spacing=list(sp), use_subvoxels=True)
    return float(value.item())


def hausdorff_distance(prediction, ground_truth, spacing, percentile: float | None = 95.0,
                       convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> float:
    """Symmetric Hausdorff distance in mm, or its ``percentile`` (95 gives HD95).

    ``max(P(d(pred->gt)), P(d(gt->pred)))`` over boundary-voxel centres (MONAI
    ``compute_hausdorff_distance``); ``percentile=None`` gives the maximum (classic HD).

    Args:
        prediction, ground_truth: binary masks ``[y, x]`` or ``[z, y, x]``, same shape.
        spacing: mm per axis in :class:`Image` order ``(x, y[, z])``.
    """
    pred, gt = _as_masks(prediction, ground_truth)
    sp = array_spacing(spacing, pred.ndim)
    if percentile is not None and not 0 <= float(percentile) <= 100:
        raise ArgumentError(f"percentile={percentile} must lie in [0, 100]")
    case = _empty_case(pred, gt)
    if case == "true_negative":
        return convention.both_empty_distance()
    if case != "scored":
        return convention.one_empty_distance_mm(pred.shape, sp)
    from monai.metrics import compute_hausdorff_distance

    pred, gt = _crop_to_union(pred, gt)
    with _quiet_monai():
        value = compute_hausdorff_distance(_to_monai(pred), _to_monai(gt), include_background=True,
                                           percentile=percentile, spacing=list(sp))
    return float(value.item())


def average_surface_distance(prediction, ground_truth, spacing,
                             convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> float:
    """Average symmetric surface distance (ASSD) in mm.

    Mean over the boundary voxels of both masks of the distance to the other boundary,
    both directions pooled (MONAI ``compute_average_surface_distance(symmetric=True)``).

    Args:
        prediction, ground_truth: binary masks ``[y, x]`` or ``[z, y, x]``, same shape.
        spacing: mm per axis in :class:`Image` order ``(x, y[, z])``.
    """
    pred, gt = _as_masks(prediction, ground_truth)
    sp = array_spacing(spacing, pred.ndim)
    case = _empty_case(pred, gt)
    if case == "true_negative":
        return convention.both_empty_distance()
    if case != "scored":
        return convention.one_empty_distance_mm(pred.shape, sp)
    from monai.metrics import compute_average_surface_distance

    pred, gt = _crop_to_union(pred, gt)
    with _quiet_monai():
        value = compute_average_surface_distance(_to_monai(pred), _to_monai(gt), include_background=True,
                                                 symmetric=True, spacing=list(sp))
    return float(value.item())


def _check_tolerance(tolerance: float) -> float:
    try:
        value = float(tolerance)
    except (TypeError, ValueError):
        raise ArgumentError(f"NSD tolerance {tolerance!r} is not a number of mm") from None
    if not math.isfinite(value) or value < 0:
        raise ArgumentError(f"NSD tolerance {tolerance!r} must be a finite number of mm >= 0")
    return value


# --------------------------------------------------------------------------- instances


def instance_f1(prediction, ground_truth, iou_threshold: float = 0.5,
                convention: EmptyMaskConvention = DEFAULT_CONVENTION) -> InstanceMatch:
    """Detection F1 of connected components (lesions, nuclei) matched by IoU.

    Components are found with full connectivity (8 in 2D, 26 in 3D) and matched one-to-one
    by the Hungarian algorithm among pairs with IoU >= ``iou_threshold``, maximising the
    number of matches. F1 = ``2 * matched / (n_gt + n_pred)``.
    """
    from scipy import ndimage
    from scipy.optimize import linear_sum_assignment

    pred, gt = _as_masks(prediction, ground_truth)
    pred, gt = _crop_to_union(pred, gt, margin=0)
    structure = np.ones((3,) * pred.ndim, dtype=bool)
    pred_cc, n_pred = ndimage.label(pred, structure=structure)
    gt_cc, n_gt = ndimage.label(gt, structure=structure)
    if n_pred == 0 and n_gt == 0:
        return InstanceMatch(convention.both_empty_score(), 0, 0, 0)
    if n_pred == 0 or n_gt == 0:
        return InstanceMatch(0.0, n_gt, n_pred, 0)
    # Intersections of every (gt, pred) component pair from one pass over the overlap.
    both = (gt_cc > 0) & (pred_cc > 0)
    pair = gt_cc[both].astype(np.int64) * (n_pred + 1) + pred_cc[both]
    inter = np.bincount(pair, minlength=(n_gt + 1) * (n_pred + 1)).reshape(n_gt + 1, n_pred + 1)[1:, 1:]
    gt_sizes = np.bincount(gt_cc.ravel(), minlength=n_gt + 1)[1:]
    pred_sizes = np.bincount(pred_cc.ravel(), minlength=n_pred + 1)[1:]
    union = gt_sizes[:, None] + pred_sizes[None, :] - inter
    iou = inter / np.maximum(union, 1)
    eligible = iou >= iou_threshold
    matched = 0
    if eligible.any():
        rows, cols = linear_sum_assignment(eligible.astype(np.float64), maximize=True)
        matched = int(eligible[rows, cols].sum())
    return InstanceMatch(2.0 * matched / (n_gt + n_pred), int(n_gt), int(n_pred), matched)


# --------------------------------------------------------------------------- all at once


def score_masks(prediction, ground_truth, spacing, nsd_tolerance: float = 2.0,
                convention: EmptyMaskConvention = DEFAULT_CONVENTION,
                instances: bool = True) -> MaskScores:
    """Every metric for one pair of binary masks on the same grid.

    Args:
        prediction, ground_truth: binary masks ``[y, x]`` or ``[z, y, x]``, same shape.
        spacing: mm per axis in :class:`Image` order ``(x, y[, z])``.
        nsd_tolerance: NSD tolerance in mm.
        convention: empty-mask conventions.
        instances: compute instance F1 (connected components); when False ``instance_f1``
            is NaN and the instance counts are ``None``.
    """
    pred, gt = _as_masks(prediction, ground_truth)
    nsd_tolerance = _check_tolerance(nsd_tolerance)
    array_spacing(spacing, pred.ndim)
    full_shape = pred.shape
    gt_voxels, pred_voxels = int(np.count_nonzero(gt)), int(np.count_nonzero(pred))
    pred, gt = _crop_to_union(pred, gt)
    outcome = _empty_case(pred, gt)
    match = instance_f1(pred, gt, convention=convention) if instances else None
    if outcome == "scored":
        hd95 = hausdorff_distance(pred, gt, spacing, 95.0, convention)
        assd = average_surface_distance(pred, gt, spacing, convention)
    else:
        # Distances of empty cases depend on the *full* grid (its diagonal), not the crop.
        sp = array_spacing(spacing, pred.ndim)
        hd95 = assd = (convention.both_empty_distance() if outcome == "true_negative"
                       else convention.one_empty_distance_mm(full_shape, sp))
    return MaskScores(
        dice=dice_score(pred, gt, convention),
        iou=iou_score(pred, gt, convention),
        nsd=surface_dice(pred, gt, spacing, nsd_tolerance, convention),
        hd95=hd95,
        assd=assd,
        instance_f1=match.f1 if match else math.nan,
        gt_voxels=gt_voxels,
        pred_voxels=pred_voxels,
        gt_instances=match.n_gt if match else None,
        pred_instances=match.n_pred if match else None,
        matched_instances=match.n_matched if match else None,
        nsd_tolerance=nsd_tolerance,
        outcome=outcome,
    )


def check_same_grid(prediction: Image, ground_truth: Image) -> None:
    """Raise :class:`InputError` unless ``prediction`` lies on ``ground_truth``'s grid.

    Shapes must be equal; spacing, origin and direction equal within 1e-3 (mm / cosine).
    """
    if prediction.shape == ground_truth.shape and prediction.same_geometry(ground_truth, atol=GEOMETRY_ATOL):
        return
    pred_name = prediction.path or "the prediction"
    gt_name = ground_truth.path or "the ground truth"
    raise InputError(
        f"{pred_name} does not lie on the grid of {gt_name}: "
        f"size (x, y[, z]) {prediction.size} vs {ground_truth.size}, "
        f"spacing {_fmt(prediction.spacing)} vs {_fmt(ground_truth.spacing)} mm, "
        f"origin {_fmt(prediction.origin)} vs {_fmt(ground_truth.origin)} mm, "
        f"direction {_fmt(prediction.direction)} vs {_fmt(ground_truth.direction)}; "
        "resample the prediction onto the ground-truth grid (nearest neighbour) first"
    )


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


def score_label(prediction: Image, ground_truth: Image, label: int, pred_label: int | None = None,
                nsd_tolerance: float = 2.0, convention: EmptyMaskConvention = DEFAULT_CONVENTION,
                instances: bool = True) -> MaskScores:
    """Score one class of two label maps on the same grid; spacing comes from the ground truth.

    Args:
        prediction: predicted label map (``[y, x]`` or ``[z, y, x]`` integer labels).
        ground_truth: reference label map on the same grid.
        label: the class's value in ``ground_truth``.
        pred_label: its value in ``prediction`` (default: ``label``).

    Raises:
        InputError: the grids differ (see :func:`check_same_grid`).
    """
    check_same_grid(prediction, ground_truth)
    pred_label = label if pred_label is None else pred_label
    return score_masks(prediction.array == pred_label, ground_truth.array == label, ground_truth.spacing,
                       nsd_tolerance=nsd_tolerance, convention=convention, instances=instances)
