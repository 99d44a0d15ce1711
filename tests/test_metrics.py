"""Metrics against values computed by hand: cubes, squares and spheres shifted by known voxel
counts with anisotropic spacing, identical, disjoint and empty masks, in 2D and 3D.

Geometry used below (voxel units). A cube of ``n`` voxels shifted by ``k`` voxels along one
axis, when that axis has the smallest spacing ``s`` and ``k * s`` is below the other spacings:

* HD (max) = ``k * s``: every shifted boundary voxel is ``k`` voxels from its original, and
  the leading face is ``k`` voxels beyond anything of the other cube.
* ASSD: of the ``N = n^3 - (n-2)^3`` boundary voxels of either cube, each of the ``4(n-1)``
  lines along the shift axis on the side faces has distances ``0 ... 0, 1, ..., k`` (times
  ``s``), and each of the ``(n-2)^2`` interior lines has its two end voxels at
  ``min(k, n-1-k)`` and ``k``: ASSD = ``s (4(n-1) k(k+1)/2 + (n-2)^2 (min(k, n-1-k) + k)) / N``.
* NSD at a tolerance below every spacing counts the surface elements (DeepMind/MONAI
  sub-voxel surfels on the voxel-corner lattice) that coincide. Surfel areas: a face point
  ``a_i`` = product of the two other spacings, an edge point along axis ``i``
  ``e_i = s_i * hypot(other two) / 2``, a corner ``c = sqrt(sum of squared face areas) / 8``.
  Total per cube ``2(n-1)^2 sum(a) + 4(n-1) sum(e) + 8c``; coinciding (shift axis ``x``,
  lateral axes ``y, z``): ``2(n-k)(n-1)(a_y + a_z) + 4(n-k) e_x + 2(n-1)(e_y + e_z) + 4c``.
  2D squares: contour points weigh ``s`` along straight sides, ``hypot(s0, s1)/2`` at
  corners; total ``2(n-1)(s_x + s_y) + 4d``, coinciding ``2(n-k) s_x + 2d``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from medsam3 import Image
from medsam3.errors import ArgumentError, InputError
from medsam3.evaluate.metrics import (
    EmptyMaskConvention, array_spacing, average_surface_distance, dice_score, grid_diagonal_mm,
    hausdorff_distance, instance_f1, iou_score, score_label, score_masks, surface_dice,
)
from medsam3.evaluate.summary import bootstrap_ci, describe, paired_statistics, summarize

# ----------------------------------------------------------------------------- helpers


def cube(n: int, shift: int = 0, axis: int = 0, shape=(20, 20, 20), start: int = 3) -> np.ndarray:
    a = np.zeros(shape, dtype=bool)
    a[tuple(slice(start, start + n) for _ in shape)] = True
    return np.roll(a, shift, axis=axis)


def cube_assd(n: int, k: int, s: float, dims: int = 3) -> float:
    if dims == 3:
        lines, inner, total = 4 * (n - 1), (n - 2) ** 2, n ** 3 - (n - 2) ** 3
    else:
        lines, inner, total = 2, n - 2, 4 * (n - 1)
    return s * (lines * k * (k + 1) / 2 + inner * (min(k, n - 1 - k) + k)) / total


def cube_nsd_below_spacing(n: int, k: int, axis: int, sp_zyx: tuple[float, float, float]) -> float:
    a = [sp_zyx[1] * sp_zyx[2], sp_zyx[0] * sp_zyx[2], sp_zyx[0] * sp_zyx[1]]
    e = [sp_zyx[i] * math.hypot(*[sp_zyx[j] for j in range(3) if j != i]) / 2 for i in range(3)]
    c = math.sqrt(sum(x * x for x in a)) / 8
    lateral = [i for i in range(3) if i != axis]
    total = 2 * (n - 1) ** 2 * sum(a) + 4 * (n - 1) * sum(e) + 8 * c
    same = (sum(2 * (n - k) * (n - 1) * a[i] for i in lateral) + 4 * (n - k) * e[axis]
            + sum(2 * (n - 1) * e[i] for i in lateral) + 4 * c)
    return same / total


# Spacing (x, y, z) per shift axis (array axis 0 = z, 1 = y, 2 = x): the shifted axis is the
# finest (0.5 mm), the others differ (2 and 3 mm) so a reversed spacing order would show.
ANISO = {2: (0.5, 2.0, 3.0), 1: (2.0, 0.5, 3.0), 0: (3.0, 2.0, 0.5)}


# ----------------------------------------------------------------------------- identical / disjoint


@pytest.mark.parametrize("ndim", [2, 3])
def test_identical_masks_are_perfect(ndim):
    mask = cube(6, shape=(16,) * ndim)
    spacing = (0.7, 1.3, 2.5)[:ndim]
    s = score_masks(mask, mask, spacing, nsd_tolerance=0.0)
    assert (s.dice, s.iou, s.nsd, s.hd95, s.assd, s.instance_f1) == (1.0, 1.0, 1.0, 0.0, 0.0, 1.0)
    assert s.outcome == "scored" and s.gt_voxels == s.pred_voxels == 6 ** ndim
    assert hausdorff_distance(mask, mask, spacing, percentile=None) == 0.0


def test_disjoint_cubes_exact_distances():
    gt = cube(6, shape=(12, 12, 24))                 # x 3..8
    pred = cube(6, shift=10, axis=2, shape=(12, 12, 24))  # x 13..18
    spacing = (0.5, 2.0, 3.0)
    assert dice_score(pred, gt) == 0.0 and iou_score(pred, gt) == 0.0
    # Far face of one cube to the near face of the other: 10 voxels of 0.5 mm.
    assert hausdorff_distance(pred, gt, spacing, percentile=None) == pytest.approx(5.0)
    # Closest surfels are 4 voxel corners apart (2 mm): nothing within 1.9 mm, everything within 5.
    assert surface_dice(pred, gt, spacing, tolerance=1.9) == 0.0
    assert surface_dice(pred, gt, spacing, tolerance=5.0) == pytest.approx(1.0)
    s = score_masks(pred, gt, spacing)
    assert s.instance_f1 == 0.0 and (s.gt_instances, s.pred_instances, s.matched_instances) == (1, 1, 0)


# ----------------------------------------------------------------------------- shifted cubes / squares


@pytest.mark.parametrize("axis", [0, 1, 2])
@pytest.mark.parametrize("n,k", [(6, 2), (7, 3)])
def test_shifted_cube_anisotropic(axis, n, k):
    spacing = ANISO[axis]
    s = 0.5
    gt, pred = cube(n), cube(n, shift=k, axis=axis)
    assert hausdorff_distance(pred, gt, spacing, percentile=None) == pytest.approx(k * s, rel=1e-6)
    assert average_surface_distance(pred, gt, spacing) == pytest.approx(cube_assd(n, k, s), rel=1e-6)
    expected_nsd = cube_nsd_below_spacing(n, k, axis, tuple(reversed(spacing)))
    assert surface_dice(pred, gt, spacing, tolerance=0.25) == pytest.approx(expected_nsd, rel=1e-5)
    # Every surfel is at most k * s from the other surface (the shift itself).
    assert surface_dice(pred, gt, spacing, tolerance=k * s) == pytest.approx(1.0)
    overlap = (n - k) * n * n
    assert dice_score(pred, gt) == pytest.approx(2 * overlap / (2 * n ** 3))
    assert iou_score(pred, gt) == pytest.approx(overlap / (2 * n ** 3 - overlap))


def test_cube_shift_values_spelled_out():
    """One case with the numbers written out: n=6, k=2 along x at 0.5 mm (y 2 mm, z 3 mm)."""
    gt, pred = cube(6), cube(6, shift=2, axis=2)
    spacing = (0.5, 2.0, 3.0)
    # ASSD: 20 side lines x (0.5 + 1.0) + 16 inner lines x (1.0 + 1.0) = 62 mm over 152 voxels.
    assert average_surface_distance(pred, gt, spacing) == pytest.approx(62 / 152, rel=1e-6)
    assert hausdorff_distance(pred, gt, spacing) == pytest.approx(1.0)  # HD95 = HD here
    assert surface_dice(pred, gt, spacing, tolerance=0.25) == pytest.approx(0.3127659, rel=1e-5)


@pytest.mark.parametrize("axis", [0, 1])
@pytest.mark.parametrize("n,k", [(6, 2), (8, 3)])
def test_shifted_square_2d(axis, n, k):
    spacing = (0.5, 2.0) if axis == 1 else (2.0, 0.5)  # (x, y): the shifted axis is 0.5 mm
    gt, pred = cube(n, shape=(20, 20)), cube(n, shift=k, axis=axis, shape=(20, 20))
    s, other = 0.5, 2.0
    assert hausdorff_distance(pred, gt, spacing, percentile=None) == pytest.approx(k * s)
    assert average_surface_distance(pred, gt, spacing) == pytest.approx(cube_assd(n, k, s, dims=2), rel=1e-6)
    d = math.hypot(s, other) / 2
    expected = (2 * (n - k) * s + 2 * d) / (2 * (n - 1) * (s + other) + 4 * d)
    assert surface_dice(pred, gt, spacing, tolerance=0.25) == pytest.approx(expected, rel=1e-5)
    assert surface_dice(pred, gt, spacing, tolerance=k * s) == pytest.approx(1.0)


# ----------------------------------------------------------------------------- spheres


def sphere(shape, centre, radius_mm, spacing_zyx):
    idx = np.indices(shape).astype(float)
    r2 = sum(((idx[i] - centre[i]) * spacing_zyx[i]) ** 2 for i in range(len(shape)))
    return r2 <= radius_mm ** 2


@pytest.mark.parametrize("axis,k", [(0, 2), (2, 3)])
def test_shifted_sphere_anisotropic(axis, k):
    spacing = (0.8, 0.8, 3.0)  # (x, y, z): thick slices
    sp_zyx = tuple(reversed(spacing))
    gt = sphere((24, 48, 48), (12, 24, 24), 18.0, sp_zyx)
    pred = np.roll(gt, k, axis=axis)
    shift_mm = k * sp_zyx[axis]
    # A translated shape: its extreme point is exactly the shift away; nothing is farther.
    assert hausdorff_distance(pred, gt, spacing, percentile=None) == pytest.approx(shift_mm)
    assert hausdorff_distance(pred, gt, spacing) <= shift_mm + 1e-6
    assert surface_dice(pred, gt, spacing, tolerance=shift_mm) == pytest.approx(1.0)
    assert surface_dice(pred, gt, spacing, tolerance=0.5 * min(spacing)) < 1.0


# ----------------------------------------------------------------------------- HD95 convention


def test_hd95_is_max_of_directed_percentiles_not_pooled():
    """10 extra voxels 25 mm away are 6% of the prediction's boundary but 3% of both pooled.

    MONAI's HD95 takes the larger of the two directed 95th percentiles (25 mm); MedPy's pooled
    percentile would give 0. ASSD pools both directions: 10 x 25 mm over 152 + 10 + 152 voxels.
    """
    gt = np.zeros((30, 20, 20), dtype=bool)
    gt[5:11, 5:11, 5:11] = True
    pred = gt.copy()
    pred[20, 6:8, 5:10] = True  # a 2 x 5 patch over the top face, 10 slices (2.5 mm) above it
    spacing = (1.0, 1.0, 2.5)
    assert hausdorff_distance(pred, gt, spacing, percentile=None) == pytest.approx(25.0)
    assert hausdorff_distance(pred, gt, spacing, percentile=95) == pytest.approx(25.0)
    assert hausdorff_distance(gt, pred, spacing, percentile=95) == pytest.approx(25.0)  # symmetric
    assert average_surface_distance(pred, gt, spacing) == pytest.approx(250 / 314, rel=1e-6)
    s = score_masks(pred, gt, spacing)
    assert (s.gt_instances, s.pred_instances, s.matched_instances) == (1, 2, 1)
    assert s.instance_f1 == pytest.approx(2 / 3)


# ----------------------------------------------------------------------------- empty masks


@pytest.mark.parametrize("ndim", [2, 3])
def test_both_empty_conventions(ndim):
    empty = np.zeros((8,) * ndim, dtype=bool)
    spacing = (1.0,) * ndim
    s = score_masks(empty, empty, spacing)
    assert s.outcome == "true_negative"
    assert all(math.isnan(v) for v in (s.dice, s.iou, s.nsd, s.hd95, s.assd, s.instance_f1))
    p = score_masks(empty, empty, spacing, convention=EmptyMaskConvention(both_empty="perfect"))
    assert (p.dice, p.iou, p.nsd, p.hd95, p.assd, p.instance_f1) == (1.0, 1.0, 1.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("empty_side", ["prediction", "ground_truth"])
def test_one_empty_conventions(ndim, empty_side):
    shape = (10, 12, 14)[:ndim]
    spacing = (0.5, 2.0, 3.0)[:ndim]  # (x, y, z)
    mask = cube(3, shape=shape)
    empty = np.zeros(shape, dtype=bool)
    pred, gt = (empty, mask) if empty_side == "prediction" else (mask, empty)
    s = score_masks(pred, gt, spacing)
    assert s.outcome == ("false_negative" if empty_side == "prediction" else "false_positive")
    assert (s.dice, s.iou, s.nsd, s.instance_f1) == (0.0, 0.0, 0.0, 0.0)
    # The physical diagonal of the grid: shape [z, y, x] with spacing reversed.
    sp_zyx = tuple(reversed(spacing))
    diagonal = math.sqrt(sum(((n - 1) * sp) ** 2 for n, sp in zip(shape, sp_zyx)))
    assert s.hd95 == pytest.approx(diagonal) and s.assd == pytest.approx(diagonal)
    assert grid_diagonal_mm(shape, sp_zyx) == pytest.approx(diagonal)
    inf = score_masks(pred, gt, spacing, convention=EmptyMaskConvention(one_empty_distance="inf"))
    assert math.isinf(inf.hd95) and math.isinf(inf.assd)
    nan = score_masks(pred, gt, spacing, convention=EmptyMaskConvention(one_empty_distance="nan"))
    assert math.isnan(nan.hd95) and math.isnan(nan.assd) and nan.dice == 0.0


def test_convention_and_argument_errors():
    with pytest.raises(ArgumentError, match="both_empty"):
        EmptyMaskConvention(both_empty="one")
    with pytest.raises(ArgumentError, match="one_empty_distance"):
        EmptyMaskConvention(one_empty_distance="max")
    m = cube(3, shape=(8, 8))
    with pytest.raises(ArgumentError, match="3 values; a 2D mask needs 2"):
        surface_dice(m, m, (1.0, 1.0, 1.0))
    with pytest.raises(ArgumentError, match="positive"):
        hausdorff_distance(m, m, (1.0, -1.0))
    with pytest.raises(ArgumentError, match="tolerance"):
        surface_dice(m, m, (1.0, 1.0), tolerance=-1)
    with pytest.raises(InputError, match="shape"):
        dice_score(m, np.zeros((8, 9), bool))
    assert array_spacing((0.5, 2.0, 3.0), 3) == (3.0, 2.0, 0.5)


# ----------------------------------------------------------------------------- instances


def test_instance_f1_matching_by_iou():
    gt = np.zeros((20, 40), dtype=bool)
    pred = np.zeros_like(gt)
    gt[2:6, 2:6] = True          # A: predicted exactly (IoU 1)
    gt[2:6, 12:16] = True        # B: predicted shifted 2 columns (IoU 8/24 < 0.5)
    gt[2:6, 22:26] = True        # C: half predicted (IoU 8/16 = 0.5, counts: >= 0.5)
    gt[12:16, 2:6] = True        # D: missed
    pred[2:6, 2:6] = True
    pred[2:6, 14:18] = True
    pred[2:6, 22:24] = True
    pred[12:16, 30:34] = True    # E: false positive
    m = instance_f1(pred, gt)
    assert (m.n_gt, m.n_pred, m.n_matched) == (4, 4, 2)
    assert m.f1 == pytest.approx(2 * 2 / 8)


def test_instance_components_use_full_connectivity():
    gt = np.zeros((6, 6), dtype=bool)
    gt[1, 1] = gt[2, 2] = True   # touch diagonally: one object
    assert instance_f1(gt, gt).n_gt == 1


# ----------------------------------------------------------------------------- label maps


def test_score_label_uses_ground_truth_spacing_and_checks_grid(tmp_path):
    labels = np.zeros((10, 12, 14), np.uint8)
    labels[2:8, 2:8, 2:8] = 1
    gt = Image.from_array(labels, spacing=(0.5, 2.0, 3.0))
    gt.path = str(tmp_path / "gt.nii.gz")
    shifted = Image.from_array(np.roll(labels, 2, axis=2), spacing=(0.5, 2.0, 3.0))
    s = score_label(shifted, gt, 1)
    assert s.hd95 == pytest.approx(1.0) and s.assd == pytest.approx(62 / 152, rel=1e-6)
    other = Image.from_array(labels, spacing=(0.5, 2.0, 2.0))
    other.path = str(tmp_path / "pred.nii.gz")
    with pytest.raises(InputError, match=r"pred\.nii\.gz does not lie on the grid of .*gt\.nii\.gz.*spacing"):
        score_label(other, gt, 1)


# ----------------------------------------------------------------------------- statistics


def test_bootstrap_is_seeded_and_brackets_the_mean():
    values = np.linspace(0.0, 1.0, 41)
    low, high = bootstrap_ci(values, n_bootstrap=500, seed=3)
    assert (low, high) == bootstrap_ci(values, n_bootstrap=500, seed=3)
    assert low < 0.5 < high and 0.35 < low and high < 0.65
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    d = describe([1.0, math.nan, 3.0], n_bootstrap=100)
    assert d["n"] == 2 and d["mean"] == 2.0 and d["median"] == 2.0
    assert describe([math.inf, 1.0], n_bootstrap=50)["ci_high"] == math.inf  # no NaN from inf


def test_summarize_groups_and_paired_statistics():
    rows = [{"case": f"c{i}", "class": cls, "dice": d, "status": "scored", "dataset": "", "dimension": "3D"}
            for i, (cls, d) in enumerate([("liver", 0.9), ("liver", 0.8), ("spleen", 0.5), ("spleen", math.nan)])]
    summary = summarize(rows, metrics=("dice",), n_bootstrap=100)
    assert summary["overall"]["dice"]["n"] == 3 and summary["overall"]["n_rows"] == 4
    assert summary["by"]["class"]["liver"]["dice"]["mean"] == pytest.approx(0.85)
    assert set(summary["by"]) == {"class", "dimension"}  # dataset unknown: no grouping
    p = paired_statistics([0.5, 0.6, 0.7, math.nan], [0.6, 0.8, 0.7, 0.9], n_bootstrap=100)
    assert p["n"] == 3 and p["mean_diff"] == pytest.approx(0.1) and p["median_diff"] == pytest.approx(0.1)
