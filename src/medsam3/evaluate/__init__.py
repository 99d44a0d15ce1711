"""Evaluation: metrics with true spacing, folder scoring, model runs on a manifest, reports and
comparisons.

See :mod:`medsam3.evaluate.metrics` for which implementation computes each metric (MONAI
1.6, pinned) and the empty-mask conventions.
"""

from medsam3.evaluate.compare import Comparison, compare_reports
from medsam3.evaluate.cases import EvaluationSettings
from medsam3.evaluate.folder import FolderEvaluation, evaluate_folder, score_case
from medsam3.evaluate.gt_prompts import MODE_DEFINITIONS, PROMPT_MODES, gt_objects
from medsam3.evaluate.manifest import ManifestEvaluation, evaluate_manifest
from medsam3.evaluate.model import ModelRunSettings, evaluate_model
from medsam3.evaluate.metrics import (
    EmptyMaskConvention, InstanceMatch, MaskScores, average_surface_distance, dice_score, hausdorff_distance,
    instance_f1, iou_score, score_label, score_masks, surface_dice,
)

__all__ = [
    "evaluate_folder", "compare_reports", "score_case", "score_masks", "score_label",
    "dice_score", "iou_score", "surface_dice", "hausdorff_distance", "average_surface_distance", "instance_f1",
    "EmptyMaskConvention", "MaskScores", "InstanceMatch", "EvaluationSettings", "FolderEvaluation", "Comparison",
    "evaluate_model", "evaluate_manifest", "ManifestEvaluation", "ModelRunSettings", "PROMPT_MODES",
    "MODE_DEFINITIONS", "gt_objects",
]
