"""Volume mode ``clips``: Medical SAM3's official 3D scheme (independent short clips, fused per pixel).

The public Medical SAM3 3D inference (AIM-Research-Lab/Medical-SAM3, ``medical/inference_3d.py``
and ``medical/INFERENCE_3D.md``; facts only) treats the slice axis as video time and cuts it
into **independent clips of 4 slices** (``--clip-length 4``; clips ``[0, 4), [4, 8), ...``, no
overlap, the last one shorter). For each clip and each text prompt the video model is reset,
the text is added on the clip's **first slice**, and SAM3's video pipeline (detector on every
slice, tracker propagating forwards, new detections starting new objects) runs to the clip's
last slice. A prompt's score on a pixel is the highest mask probability of its objects there;
classes are fused per pixel by that probability (``--fusion pixel_score``): a pixel takes the
most probable class whose probability exceeds 0.5 (background otherwise). The released
checkpoint runs at image size 504 (here: ``--size 504``).

Here each clip is one :class:`~medsam3.predict.volume._VolumeRun` restricted to the clip's
slices in ``merged`` mode with forward propagation only (``backward_slices`` 0: a clip's video
is propagated forwards from its first slice), so a clip sees the same detector + tracker + merge
rule as the ``merged`` mode, but no memory crosses a clip boundary. Extensions (defaults give
the official scheme):

* ``clip_overlap`` o (0 <= o < L): clips start every ``L - o`` slices, so neighbouring clips share
  o slices; a shared slice is still encoded once: the clip that encodes it keeps its ViT output
  for the next clip (:class:`~medsam3.predict.slice_feed.FeatureCache`, within the volume
  predictor's ``feature_cache_mb``; beyond that budget a shared slice is encoded again).
* ``clip_fusion``: a slice covered by several clips gets, per prompt, the ``mean`` (default) or
  ``max`` of the clips' probabilities (a clip that found nothing there counts 0), then the
  per-pixel rule above (:func:`fuse_clip_probabilities`). With no overlap both are the official rule.

Exemplar boxes on slice K act in the clip(s) holding K only (:data:`~medsam3.predict.volume.EXEMPLAR_RULE`);
box/point/mask objects and instance maps are not part of the scheme and are refused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from medsam3.errors import ArgumentError
from medsam3.predict.image import TextPrompt
from medsam3.predict.results import VolumePromptSummary, VolumeSegmentation
from medsam3.predict.settings import CLIP_FUSIONS, DEFAULT_CLIP_LENGTH, check_clip_options  # noqa: F401 (re-exported)


def clip_ranges(num_slices: int, length: int, overlap: int = 0) -> list[tuple[int, int]]:
    """The clips ``[start, end)`` covering ``num_slices`` slices: starts every ``length - overlap``
    slices from 0, the last clip ending at the last slice (no clip lies inside the previous one)."""
    step = length - overlap
    out = []
    for start in range(0, max(num_slices, 1), step):
        end = min(num_slices, start + length)
        out.append((start, end))
        if end == num_slices:
            break
    return out


def fuse_clip_probabilities(probabilities: np.ndarray | torch.Tensor, fusion: str = "mean",
                            threshold: float = 0.5) -> np.ndarray:
    """Labels of one slice from the clips covering it.

    Args:
        probabilities: ``(C, K, H, W)`` probabilities of the K prompts from the C clips covering
            the slice (0 where a clip found nothing).
        fusion: ``mean`` or ``max`` over the clips.
        threshold: a pixel is background unless a prompt's fused probability exceeds it.

    Returns:
        ``(H, W)`` int64 labels: ``1 + argmax_k fused_k`` where ``max_k fused_k > threshold``, else 0
        (ties go to the lower label).
    """
    p = torch.as_tensor(probabilities, dtype=torch.float32)
    if p.ndim != 4:
        raise ArgumentError(f"clip probabilities must be (clips, prompts, H, W), got shape {tuple(p.shape)}")
    if fusion not in CLIP_FUSIONS:
        raise ArgumentError(f"unknown clip fusion {fusion!r}; accepted: {', '.join(CLIP_FUSIONS)}")
    fused = p.mean(0) if fusion == "mean" else p.max(0).values
    best, label = fused.max(0)
    return torch.where(best > threshold, label + 1, torch.zeros_like(label)).cpu().numpy()


class ClipsRun:
    """One volume through the clips scheme (module docstring), written like the other modes."""

    def __init__(self, owner, volume: np.ndarray, text, objects, orientation, instances: bool, description: str,
                 context: int, exemplar_slice, pass_run):
        # pass_run: the class running one ``merged`` pass (medsam3.predict.volume's), given by the
        # volume predictor that dispatches here, so that this module does not import it back
        if objects:
            raise ArgumentError("volume mode clips is text-prompted (Medical SAM3's 3D scheme): box, point and mask "
                                "prompts need mode merged or propagate")
        if instances:
            raise ArgumentError("volume mode clips fuses prompts per pixel and keeps no instance ids: "
                                "an instance map needs mode merged, propagate or slices")
        if not text:
            raise ArgumentError("volume mode clips needs at least one text prompt")
        n = orientation.stack_shape(volume.shape)[0]
        if any(t.exemplar_boxes for t in text) and (exemplar_slice is None or not 0 <= exemplar_slice < n):
            raise ArgumentError(f"exemplar boxes on a volume need the slice they are drawn on (--slice K, "
                                f"the {orientation.axis} slice index, 0..{n - 1}), got {exemplar_slice}")
        self.p, self.volume, self.text, self.orientation = owner, volume, list(text), orientation
        self.pass_run = pass_run
        self.description, self.context, self.exemplar_slice = description, context, exemplar_slice
        self.stack = orientation.stack(volume)
        self.num_slices = self.stack.shape[0]
        self.labels = np.zeros(volume.shape, np.uint8 if len(text) < 256 else np.uint16)
        self.labels_stack = orientation.stack(self.labels)
        self.summaries = [VolumePromptSummary(t.text, False, 0.0) for t in self.text]
        self.pending: dict[int, list[torch.Tensor]] = {}  # slice -> one (K, H, W) probability map per clip
        self.stats = {"slices_encoded": 0, "tracks": 0, "tracker_steps": 0, "clips": 0}
        self.skipped: set[int] = set()

    def execute(self):
        p = self.p
        clips = clip_ranges(self.num_slices, p.clip_length, p.clip_overlap)
        # a clip's video is propagated forwards from its first slice: no backward reach, no memory across clips
        inner = type(p)(p.predictor, mode="merged", rule=p.rule, backward_slices=0, max_objects=p.max_objects,
                        empty_slices=p.empty_slices, progress=False, encode_batch=p.encode_batch,
                        read_ahead=p.read_ahead, feature_cache_mb=p.feature_cache_mb)
        cache = p.feature_cache()  # the slices shared by neighbouring clips, encoded once
        plain = [TextPrompt(t.text) for t in self.text]
        with_boxes = any(t.exemplar_boxes for t in self.text)
        for i, (lo, hi) in enumerate(clips):
            shape = (len(self.text), *self.stack.shape[1:])
            for z in range(lo, hi):
                self.pending.setdefault(z, [])
            here = with_boxes and lo <= self.exemplar_slice < hi
            clip_maps: dict[int, torch.Tensor] = {}

            def sink(z, labels, probs, clip_maps=clip_maps, shape=shape):
                plane = torch.zeros(shape, dtype=torch.float32)
                for label, prob in zip(labels, probs):
                    plane[label - 1] = torch.maximum(plane[label - 1], prob.float().cpu())
                clip_maps[z] = plane

            next_start = clips[i + 1][0] if i + 1 < len(clips) else self.num_slices
            run = self.pass_run(inner, self.volume, self.text if here else plain, [], self.orientation, False,
                                self.description, self.context, self.exemplar_slice if here else None,
                                slice_range=(lo, hi), sink=sink, feature_cache=cache,
                                revisited=lambda z, next_start=next_start: z >= next_start)
            result = run.execute()
            self.skipped.update(result.skipped_slices)
            for k, summary in enumerate(result.summaries):
                self.summaries[k].presence_score = max(self.summaries[k].presence_score, summary.presence_score)
            for key in ("slices_encoded", "tracks", "tracker_steps"):
                self.stats[key] += result.stats[key]
            self.stats["clips"] += 1
            for z in range(lo, hi):  # a clip that found nothing on a slice says 0 there
                self.pending[z].append(clip_maps.get(z, torch.zeros(shape)))
            for z in [z for z in self.pending if z < next_start]:
                self._write(z, self.pending.pop(z))
        for summary in self.summaries:
            summary.present = summary.voxels > 0
            summary.slices_present.sort()
        return VolumeSegmentation(self.labels, self.summaries, None, {}, {}, self.orientation,
                                  sorted(self.skipped), "clips", dict(self.stats))

    def _write(self, z: int, maps: Sequence[torch.Tensor]) -> None:
        labels = fuse_clip_probabilities(torch.stack(list(maps)), self.p.clip_fusion,
                                         self.p.predictor.mask_threshold)
        if not labels.any():
            return
        self.labels_stack[z] = labels
        for label in np.unique(labels[labels > 0]).tolist():
            summary = self.summaries[label - 1]
            summary.slices_present.append(z)
            summary.voxels += int((labels == label).sum())
