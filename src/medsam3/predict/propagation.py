"""SAM3's video tracker run over a stack of slices, fed one slice at a time.

transformers' :class:`~transformers.Sam3TrackerVideoModel` tracks objects through a video
with a memory bank (the last ``num_maskmem`` frames' encoded masks plus object pointers)
held in a :class:`~transformers.Sam3TrackerVideoInferenceSession`. Here slices are the
frames, with three differences from loading a volume as a video:

* **No second ViT pass.** The tracker's image features come from the detector's ViT
  output of the same slice (the backbones are the same weights), through the tracker's
  own FPN neck and the mask decoder's ``conv_s0`` / ``conv_s1`` projections, exactly as
  :meth:`transformers.Sam3VideoModel.get_vision_features_for_tracker` does. They are put
  into the session's one-frame feature cache before each step, so the session never
  stores pixels or runs its own vision encoder (the tracker is built without one).
* **Streaming.** The session knows the number of slices (for its memory bookkeeping) but
  holds no frames; after each step the full-resolution mask kept for memory encoding is
  discarded, and outputs older than the memory bank can reach
  (``max(num_maskmem, max_object_pointers_in_encoder)`` slices) are dropped, so memory
  per object stays constant whatever the number of slices.
* **One session per object and direction.** Objects start on different slices and stop
  independently (:mod:`medsam3.predict.merge`), and memory is encoded from the *merged*
  mask of each slice (:meth:`TrackedObject.remember`), so the detector corrects what the
  tracker remembers.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from transformers import Sam3TrackerVideoInferenceSession, Sam3TrackerVideoModel
from transformers.models.sam3.modeling_sam3 import Sam3VisionNeck

from medsam3.model.loader import MedSAM3
from medsam3.model.weights import load_prefixed, load_strict
from medsam3.predict.image import check_finite_output

log = logging.getLogger(__name__)

_TRACKERS: weakref.WeakKeyDictionary[MedSAM3, tuple[Sam3VisionNeck, Sam3TrackerVideoModel]] = (
    weakref.WeakKeyDictionary())


def video_tracker(model: MedSAM3) -> tuple[Sam3VisionNeck, Sam3TrackerVideoModel]:
    """The tracker neck and the video tracker (without vision encoder) of ``model``, built once.

    From a model directory only the ``tracker_neck.*`` and ``tracker_model.*`` tensors are
    read (the ViT is the detector's), strictly (:mod:`medsam3.model.weights`). A ``random:NAME``
    model has no directory: its neck, prompt encoder and mask decoder are the in-memory
    tracker's, and the memory modules are randomly initialised (seed 0) -- meaningless, like
    the rest of its weights.
    """
    if model in _TRACKERS:
        return _TRACKERS[model]
    model.require_tracker()
    config = model.config.tracker_config
    with torch.device("cpu"):
        torch.manual_seed(0)
        video = Sam3TrackerVideoModel(config, remove_vision_encoder=True)
    if model.directory is not None:
        neck = Sam3VisionNeck(model.config.detector_config.vision_config)
        load_strict(neck, load_prefixed(model.directory, "tracker_neck."), "tracker neck", model.directory,
                    prefix="tracker_neck.")
        load_strict(video, load_prefixed(model.directory, "tracker_model."), "video tracker", model.directory,
                    prefix="tracker_model.")
    else:
        image_tracker = model.tracker
        neck = image_tracker.vision_encoder.neck
        shared = {k: v for k, v in image_tracker.state_dict().items() if k in video.state_dict()}
        video.load_state_dict(shared, strict=False)
    neck = neck.to(model.device, model.dtype).eval()
    video = video.to(model.device, model.dtype).eval()
    _TRACKERS[model] = (neck, video)
    return neck, video


@dataclass
class SliceFeatures:
    """The tracker's inputs for one slice: three FPN levels, flattened ``(H*W, 1, C)``."""

    maps: list[torch.Tensor]


class VolumeTracker:
    """Starts tracked objects on a stack of ``num_slices`` slices (see the module docstring).

    Args:
        model: the loaded model; its video tracker is built on first use.
        num_slices: the stack's length (the tracker's "number of frames").
        plane_shape: ``(height, width)`` of a slice, for the session's bookkeeping.
    """

    def __init__(self, model: MedSAM3, num_slices: int, plane_shape: tuple[int, int]):
        self.model = model
        self.neck, self.video = video_tracker(model)
        self.num_slices = int(num_slices)
        self.plane_shape = tuple(plane_shape)
        self._positions: list[torch.Tensor] | None = None
        self.keep_frames = max(self.video.num_maskmem, self.video.config.max_object_pointers_in_encoder)

    @property
    def mask_size(self) -> tuple[int, int]:
        """The low-resolution mask grid (``4 x image_size / 14``)."""
        return tuple(self.video.prompt_encoder.mask_input_size)

    @torch.inference_mode()
    def slice_features(self, last_hidden_state: torch.Tensor) -> SliceFeatures:
        """Tracker features from the detector ViT's ``(1, grid*grid, C)`` output of one slice."""
        grid = round(last_hidden_state.shape[1] ** 0.5)
        spatial = last_hidden_state.view(1, grid, grid, -1).permute(0, 3, 1, 2)
        fpn, positions = self.neck(spatial)
        maps = list(fpn[:-1])
        maps[0] = self.video.mask_decoder.conv_s0(maps[0])
        maps[1] = self.video.mask_decoder.conv_s1(maps[1])
        if self._positions is None:  # the sine position encodings are the same on every slice
            self._positions = [p.flatten(2).permute(2, 0, 1) for p in positions[:-1]]
        return SliceFeatures([m.flatten(2).permute(2, 0, 1) for m in maps])

    def start(self, slice_index: int, features: SliceFeatures, *, reverse: bool = False,
              mask: torch.Tensor | None = None, points: Sequence[Sequence[float]] | None = None,
              point_labels: Sequence[int] | None = None, box: Sequence[float] | None = None,
              name: str = "object") -> tuple[TrackedObject, torch.Tensor, float]:
        """A new object given on one slice, ready to be propagated in one direction.

        Args:
            slice_index: where the object is given (its conditioning slice).
            features: that slice's :meth:`slice_features`.
            reverse: propagate towards lower slice indices.
            mask: ``(h, w)`` boolean mask on the slice (any size: resized to the model input).
            points, point_labels, box: clicks (1 positive, 0 negative) and/or an
                ``x0 y0 x1 y1`` box, in pixels of the model input (``image_size`` square).
            name: the prompt the object answers (named when the tracker's output is not finite).

        Returns:
            the object, its ``(h, w)`` low-resolution mask logits on that slice and its
            object score logit. The slice's memory is not yet encoded: call
            :meth:`TrackedObject.remember`.
        """
        session = Sam3TrackerVideoInferenceSession(
            video_height=self.plane_shape[0], video_width=self.plane_shape[1],
            inference_device=self.model.device, inference_state_device=self.model.device,
            video_storage_device=self.model.device, dtype=self.model.dtype)
        # The session learns the number of frames from its frame store; frames are never stored.
        session.processed_frames = dict.fromkeys(range(self.num_slices))
        obj_idx = session.obj_id_to_idx(0)
        if mask is not None:
            size = self.video.image_size
            m = torch.as_tensor(mask, dtype=torch.float32, device=self.model.device)[None, None]
            if tuple(m.shape[-2:]) != (size, size):
                m = (F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False,
                                   antialias=True) >= 0.5).float()
            session.add_mask_inputs(obj_idx, slice_index, m)
        else:
            coords, labels = [], []
            if box is not None:
                coords += [[box[0], box[1]], [box[2], box[3]]]
                labels += [2, 3]  # SAM's box corner labels
            for point, label in zip(points or [], point_labels or [1] * len(points or [])):
                coords.append(list(point))
                labels.append(int(label))
            if not coords:
                raise ValueError("an object needs a mask, a box or points")
            session.add_point_inputs(obj_idx, slice_index, {
                "point_coords": torch.tensor(coords, dtype=torch.float32, device=self.model.device)[None, None],
                "point_labels": torch.tensor(labels, dtype=torch.int32, device=self.model.device)[None, None],
            })
        session.obj_with_new_inputs = [0]
        obj = TrackedObject(self, session, reverse, name)
        logits, score = obj._run(slice_index, features)
        obj.last_index = slice_index
        return obj, logits, score


class TrackedObject:
    """One object's memory bank, propagated slice by slice in one direction."""

    def __init__(self, tracker: VolumeTracker, session: Sam3TrackerVideoInferenceSession, reverse: bool,
                 name: str = "object"):
        self.tracker = tracker
        self.session = session
        self.reverse = reverse
        self.name = name
        self.last_index: int | None = None
        self.from_prompt: dict[int, bool] = {}

    @torch.inference_mode()
    def _run(self, index: int, features: SliceFeatures) -> tuple[torch.Tensor, float]:
        t = self.tracker
        self.session.cache.cache_vision_features(index, {"vision_feats": features.maps,
                                                         "vision_pos_embeds": t._positions})
        self.from_prompt[index] = bool(self.session.obj_with_new_inputs)
        out = t.video(inference_session=self.session, frame_idx=index, reverse=self.reverse,
                      run_mem_encoder=False)
        check_finite_output(t.model, self.name, (out.pred_masks[0, 0], out.object_score_logits),
                            where=f" (tracked onto slice {index})")
        logits = out.pred_masks[0, 0].float()
        return logits, float(out.object_score_logits.flatten()[0])

    def step(self, index: int, features: SliceFeatures) -> tuple[torch.Tensor, float]:
        """The tracker's ``(h, w)`` mask logits and object score logit on the next slice."""
        logits, score = self._run(index, features)
        self.last_index = index
        return logits, score

    @torch.inference_mode()
    def remember(self, index: int, logits: torch.Tensor, score: float) -> None:
        """Encode slice ``index``'s final (merged) mask logits into the memory bank.

        Masks given as prompts are binarised (SAM2's rule for prompted frames); tracked
        ones go in as probabilities. ``index`` must be the slice just run.
        """
        video = self.tracker.video
        mask = logits.to(self.tracker.model.dtype)[None, None]
        scores = torch.tensor([[score]], dtype=self.tracker.model.dtype, device=mask.device)
        video._batch_encode_memories(inference_session=self.session, frame_idx=index,
                                     objects_needing_memory_encoding=[0], high_res_masks_for_memory=[mask],
                                     object_score_logits_for_memory=[scores],
                                     is_mask_from_pts_per_obj=[self.from_prompt.get(index, False)])
        self._prune(index)

    def _prune(self, index: int) -> None:
        outputs = self.session.output_dict_per_obj[0]
        for kind in ("cond_frame_outputs", "non_cond_frame_outputs"):
            for frame, out in list(outputs[kind].items()):
                out.pop("high_res_masks", None)  # image_size^2 floats, only needed to encode memory
                if kind == "non_cond_frame_outputs" and abs(frame - index) > self.tracker.keep_frames:
                    del outputs[kind][frame]
        tracked = self.session.frames_tracked_per_obj[0]
        for frame in [f for f in tracked if abs(f - index) > self.tracker.keep_frames]:
            del tracked[frame]
        self.from_prompt = {f: v for f, v in self.from_prompt.items() if f == index}

    def fork(self, reverse: bool) -> TrackedObject:
        """A second object with this one's conditioning slice (its memory already encoded), to be
        propagated the other way: the key slice is not run or encoded twice."""
        t = self.tracker
        source = self.session
        session = Sam3TrackerVideoInferenceSession(
            video_height=source.video_height, video_width=source.video_width,
            inference_device=source.inference_device, inference_state_device=source.inference_state_device,
            video_storage_device=source.video_storage_device, dtype=source.dtype)
        session.processed_frames = source.processed_frames
        session.obj_id_to_idx(0)
        conditioning = source.output_dict_per_obj[0]["cond_frame_outputs"]
        session.output_dict_per_obj[0]["cond_frame_outputs"] = {f: dict(out) for f, out in conditioning.items()}
        return TrackedObject(t, session, reverse, self.name)

    def memory_frames(self) -> list[int]:
        """Slices whose encoded memory the bank holds now (for inspection and tests)."""
        outputs = self.session.output_dict_per_obj[0]
        return sorted(f for kind in ("cond_frame_outputs", "non_cond_frame_outputs")
                      for f, out in outputs[kind].items() if "maskmem_features" in out)

    def close(self) -> None:
        self.session.reset_inference_session()


def logit(p: float) -> float:
    """The mask-logit threshold equal to probability ``p``."""
    p = min(max(float(p), 1e-6), 1 - 1e-6)
    return float(np.log(p / (1 - p)))
