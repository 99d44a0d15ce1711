"""Volumes, slice by slice: detection on every axial slice (array order ``z``).

Each slice is encoded once and answers all prompts (text embeddings are computed once per
volume). Slices whose normalised intensities are all equal (padding, empty background)
are not run and get no labels. Propagation through the SAM3 tracker comes on top of this.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from medsam3.predict.image import ImagePredictor, TextPrompt
from medsam3.predict.results import PromptResult, combine_label_map


@dataclass
class VolumePromptSummary:
    """A prompt's answer over a whole volume."""

    prompt: str
    present: bool
    presence_score: float  # the highest presence probability over the slices
    slices_present: list[int] = field(default_factory=list)
    voxels: int = 0
    kind: str = "text"


def segment_slices(predictor: ImagePredictor, volume: np.ndarray, prompts: Sequence[str | TextPrompt],
                   progress: bool = True, description: str = "slices") -> tuple[np.ndarray, list[VolumePromptSummary]]:
    """Label map ``(Z, Y, X)`` of a normalised volume, label k = k-th prompt.

    Args:
        predictor: the 2D predictor (its thresholds apply per slice).
        volume: normalised intensities in [0, 1], ``(Z, Y, X)``.
        prompts: text prompts.
    """
    names = [p.text if isinstance(p, TextPrompt) else str(p) for p in prompts]
    summaries = [VolumePromptSummary(n, False, 0.0) for n in names]
    labels = np.zeros(volume.shape, np.uint8 if len(names) < 256 else np.uint16)
    for z in tqdm(range(volume.shape[0]), desc=description, unit="slice", disable=not progress, leave=False):
        plane = volume[z]
        if plane.size == 0 or float(plane.max()) == float(plane.min()):
            continue
        predictor.set_image(plane)
        results = predictor.predict(prompts)
        labels[z] = combine_label_map(results, dtype=labels.dtype)
        _accumulate(summaries, results, z, labels[z])
    return labels, summaries


def _accumulate(summaries: list[VolumePromptSummary], results: list[PromptResult], z: int,
                plane_labels: np.ndarray) -> None:
    for k, (summary, result) in enumerate(zip(summaries, results), start=1):
        summary.presence_score = max(summary.presence_score, result.presence_score)
        if result.present:
            summary.present = True
            summary.slices_present.append(z)
            summary.voxels += int((plane_labels == k).sum())
