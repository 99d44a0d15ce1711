"""Training SAM3's tracker on clips of consecutive slices (``train.target: tracker``).

transformers' :class:`~transformers.Sam3TrackerVideoModel` runs its ``forward`` under
``torch.inference_mode``; here the same forward runs with gradients (the undecorated
function), over a :class:`~transformers.Sam3TrackerVideoInferenceSession` that holds the
clip's memory bank, so training exercises exactly the code that propagation runs at
inference (:mod:`medsam3.predict.propagation`): the tracker neck and mask decoder
projections on the detector ViT's output, the memory attention over the encoded masks of
earlier slices and the object pointers, the mask decoder, the memory encoder.

The recipe (Meta published no tracker training configuration for SAM3; this follows the
SAM2 paper's description, scaled to one object per clip):

* **Clips**: ``clip_length`` (default 8) consecutive axial slices of a 3D item, in either
  direction (the order is reversed with probability 1/2), starting on a slice that holds
  the class. The class's mask on each slice is the object (a bilateral structure is one
  object with two parts). Clips run past the structure's end when it is shorter than the
  clip: those slices teach the tracker that a structure ends.
* **Prompt** on the first slice, drawn from the ground truth: the mask itself
  (``mask_prompt_probability``), a box with noise (``box_prompt_probability``; each side
  moved by up to 10 % of the box size, at most 20 px), or 1-3 positive clicks inside the
  mask plus, half of the time, one negative click outside it within its box margin.
* **Propagation**: the other slices get no prompt; each is predicted from the memory of
  the slices before it, and its own predicted mask is encoded into memory, with gradients
  through the whole clip (back-propagation through time, as SAM2 trains).
* **Losses per slice** (weights in :class:`TrackerLossWeights`, SAM2's): sigmoid focal
  (20) and Dice (1) on the low-resolution mask logits where the object is present (the mask
  decoder's logits before the object-score gate, which at inference replaces the mask by
  "no object" where the score is negative: gated, a wrong score would silence the mask
  loss on that slice, which stalls a tracker trained from random weights), the
  IoU prediction's L1 distance to the real IoU of the thresholded mask (1), and binary
  cross-entropy of the object score against presence on every slice (1), averaged over the
  clip's slices.
* **Warm start** (``neck_from_detector``): a tracker trained from random weights may start
  its FPN neck from the trained detector's neck, which reads the same ViT output.
* **What trains**: the tracker (prompt encoder, mask decoder, memory attention, memory
  encoder, object pointer projections, temporal encodings) and its FPN neck; the ViT is
  the detector's and stays frozen (the detector is trained by ``train.target: detector``:
  the two schedules are separate runs, the tracker run starting from the detector run's
  model directory). Dropout stays off (the modules run in eval mode, as at inference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from medsam3.errors import ArgumentError
from medsam3.train.losses import LossOutput, dice_loss, sigmoid_focal


@dataclass
class TrackerLossWeights:
    mask_focal: float = 20.0
    mask_dice: float = 1.0
    iou: float = 1.0
    object_score: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0


@dataclass
class TrackerConfig:
    """``tracker:`` section of the training configuration (used with ``train.target: tracker``)."""

    clip_length: int = 8
    mask_prompt_probability: float = 0.2
    box_prompt_probability: float = 0.4
    reverse_probability: float = 0.5
    neck_from_detector: bool = False
    loss: TrackerLossWeights = field(default_factory=TrackerLossWeights)

    def validate(self) -> None:
        if self.clip_length < 2:
            raise ArgumentError(f"config: tracker.clip_length must be at least 2, got {self.clip_length}")
        for name in ("mask_prompt_probability", "box_prompt_probability", "reverse_probability"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ArgumentError(f"config: tracker.{name} must be in [0, 1], got {p}")
        if self.mask_prompt_probability + self.box_prompt_probability > 1.0:
            raise ArgumentError("config: tracker.mask_prompt_probability + box_prompt_probability must be <= 1 "
                                "(the rest are click prompts)")


# ---------------------------------------------------------------------- data
class ClipDataset(torch.utils.data.Dataset):
    """Clips of consecutive axial slices with one object's masks (see the module docstring).

    With ``context_mm`` (a 2.5D model, see :func:`medsam3.preprocess.context_planes`) every
    frame is its slice with the neighbours that far away on the red and blue channels, as the
    detector was trained and as inference feeds it; the two swap places in half the clips.

    A sample is a dict: ``frames`` ``(T, 3, S, S)`` normalised like the detector's inputs,
    ``masks`` ``(T, S, S)`` bool, ``prompt`` (``{"mask": (S, S)}``, ``{"box": [x0, y0, x1, y1]}``
    or ``{"points": [[x, y], ...], "labels": [1, ...]}`` in input pixels), ``meta``.
    """

    def __init__(self, manifest, image_size: int, config: TrackerConfig, *, split: str = "train", datasets=None,
                 cache=None, window=None, augment: bool = True, seed: int = 0, context_mm: float = 0.0):
        from medsam3.data.dataset import PromptSegmentationDataset

        # the slice source: the detector dataset's loading, cache and per-class slice index
        self.source = PromptSegmentationDataset(manifest, image_size, split=split, datasets=datasets, cache=cache,
                                                window=window, augment=False, seed=seed, context_mm=context_mm)
        self.config = config
        self.image_size = int(image_size)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.index = [(i, k) for i, k in self.source.index if self.source.items[i].dim == 3]
        if not self.index:
            raise ArgumentError("tracker training needs 3D items (volumes) in the manifest's "
                                f"{split!r} split; found only 2D images")

    def __len__(self) -> int:
        return len(self.index)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from medsam3.data.augment import allowed_flips, jitter_intensity, resize_to_canvas
        from medsam3.data.cache import to_unit_float
        from medsam3.data.dataset import PIXEL_MEAN, PIXEL_STD
        from medsam3.data.loading import target_mask
        from medsam3.preprocess import context_planes

        rng = np.random.default_rng([self.seed, self.epoch, index, 7])
        i, k = self.index[index]
        item = self.source.items[i]
        name, values = self.source.targets[i][k]
        loaded = self.source.load_item(i)
        present = self.source.presence(i)[0].get(name, np.zeros(0, np.int64))
        depth, length = loaded.image.shape[0], self.config.clip_length
        reverse = bool(rng.random() < self.config.reverse_probability)
        start = int(rng.choice(present)) if len(present) else depth // 2
        # slices start, start -+ 1, ...; a clip near the volume's edge turns round
        step = -1 if reverse else 1
        if not 0 <= start + step * (length - 1) < depth:
            step = -step
        order = [start + step * t for t in range(length)]
        if not all(0 <= z < depth for z in order):
            raise ArgumentError(f"{item.id} has {depth} axial slices, fewer than tracker.clip_length {length}")
        flip = (False, False)
        if self.augment:
            h_ok, v_ok = allowed_flips(item.flips, item.modality, self.source.lateral[item.dataset])
            flip = (h_ok and rng.random() < 0.5, v_ok and rng.random() < 0.5)
        offset = self.source.context_offset(i)
        swap = bool(offset) and self.augment and rng.random() < 0.5
        frames, masks = [], []
        size = self.image_size
        for z in order:
            image = to_unit_float(context_planes(loaded.image, z, offset, swap))
            mask = target_mask(np.asarray(loaded.label[z]), values)
            if flip[0]:
                image, mask = image[:, ::-1], mask[:, ::-1]
            if flip[1]:
                image, mask = image[::-1], mask[::-1]
            frames.append(image)
            masks.append(mask)
        if self.augment:  # one intensity change for the whole clip
            jitter_seed = int(rng.integers(2**31))
            frames = [jitter_intensity(f, np.random.default_rng(jitter_seed), 0.5) for f in frames]
        pixels, resized = [], []
        for image, mask in zip(frames, masks):
            p, (m,) = resize_to_canvas(image, [mask], size, size)
            pixels.append((p - PIXEL_MEAN) / PIXEL_STD)
            resized.append(m.bool())
        masks_t = torch.stack(resized)
        return {"frames": torch.stack(pixels), "masks": masks_t, "prompt": sample_prompt(masks_t[0], rng, self.config),
                "meta": {"item_id": item.id, "class_name": name, "slices": order}}


def sample_prompt(mask: torch.Tensor, rng: np.random.Generator, config: TrackerConfig) -> dict[str, Any]:
    """A prompt for the first slice drawn from its ground-truth mask (see the module docstring)."""
    from scipy import ndimage

    m = mask.numpy()
    if not m.any():  # cannot happen for clips started on a slice holding the class; be safe
        return {"mask": mask.clone()}
    u = rng.random()
    if u < config.mask_prompt_probability:
        return {"mask": mask.clone()}
    ys, xs = np.nonzero(m)
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    if u < config.mask_prompt_probability + config.box_prompt_probability:
        w, h = x1 - x0, y1 - y0
        noise = rng.uniform(-0.1, 0.1, 4) * np.array([w, h, w, h])
        noise = np.clip(noise, -20, 20)
        box = np.array([x0, y0, x1, y1], dtype=np.float64) + noise
        side = m.shape[0]
        box = np.clip(box, 0, side)
        if box[2] - box[0] < 1 or box[3] - box[1] < 1:
            box = np.array([x0, y0, x1, y1], dtype=np.float64)
        return {"box": box.tolist()}
    inside = ndimage.distance_transform_edt(m)
    n = int(rng.integers(1, 4))
    weights = inside[ys, xs] ** 2
    picks = rng.choice(len(xs), size=n, replace=True, p=weights / weights.sum())
    points = [[float(xs[j]) + 0.5, float(ys[j]) + 0.5] for j in picks]
    labels = [1] * n
    if rng.random() < 0.5:
        margin = max(4, int(0.2 * max(x1 - x0, y1 - y0)))
        by0, bx0 = max(0, y0 - margin), max(0, x0 - margin)
        outside = np.argwhere(~m[by0:y1 + margin, bx0:x1 + margin])
        if len(outside):
            y, x = outside[int(rng.integers(len(outside)))]
            points.append([float(x + bx0) + 0.5, float(y + by0) + 0.5])
            labels.append(0)
    return {"points": points, "labels": labels}


@dataclass
class ClipBatch:
    """A list of clips (each its own memory bank)."""

    clips: list[dict[str, Any]]

    @property
    def images(self) -> int:
        return sum(int(c["frames"].shape[0]) for c in self.clips)

    def to(self, device, non_blocking: bool = False) -> ClipBatch:
        moved = []
        for c in self.clips:
            prompt = dict(c["prompt"])
            if "mask" in prompt:
                prompt["mask"] = prompt["mask"].to(device, non_blocking=non_blocking)
            moved.append({**c, "frames": c["frames"].to(device, non_blocking=non_blocking),
                          "masks": c["masks"].to(device, non_blocking=non_blocking), "prompt": prompt})
        return ClipBatch(moved)


def collate_clips(samples) -> ClipBatch:
    return ClipBatch(list(samples))


# ---------------------------------------------------------------------- model
class TrackerForTraining(nn.Module):
    """The frozen detector ViT, the trainable tracker neck and video tracker, and the loss.

    ``forward(batch)`` returns a :class:`~medsam3.train.losses.LossOutput` averaged over the
    batch's clips. ``neck`` and ``video`` keep their names in the model directory
    (``tracker_neck.*``, ``tracker_model.*``).
    """

    def __init__(self, backbone: nn.Module, neck: nn.Module, video: nn.Module, weights: TrackerLossWeights):
        super().__init__()
        self.backbone = backbone
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.neck = neck
        self.video = video
        self.weights = weights
        self._decoded: list[tuple[torch.Tensor, torch.Tensor]] = []
        video.mask_decoder.register_forward_hook(
            lambda module, args, out: self._decoded.append((out[0], out[1])))  # masks before the object gate

    def train(self, mode: bool = True):  # dropout stays off, as at inference (see the module docstring)
        super().train(mode)
        for module in (self.backbone, self.neck, self.video):
            module.eval()
        return self

    def trained_state(self) -> dict[str, torch.Tensor]:
        """The tensors this run trains, under their model-directory names."""
        state = {f"tracker_neck.{k}": v for k, v in self.neck.state_dict().items()}
        state.update({f"tracker_model.{k}": v for k, v in self.video.state_dict().items()})
        return state

    def features(self, frames: torch.Tensor) -> tuple[list[list[torch.Tensor]], list[torch.Tensor]]:
        """Per frame, the three FPN levels flattened ``(H*W, 1, C)``; and their position encodings."""
        with torch.no_grad():
            hidden = self.backbone(frames).last_hidden_state
        grid = round(hidden.shape[1] ** 0.5)
        spatial = hidden.view(hidden.shape[0], grid, grid, -1).permute(0, 3, 1, 2)
        fpn, positions = self.neck(spatial)
        maps = list(fpn[:-1])
        maps[0] = self.video.mask_decoder.conv_s0(maps[0])
        maps[1] = self.video.mask_decoder.conv_s1(maps[1])
        per_frame = [[m[t:t + 1].flatten(2).permute(2, 0, 1) for m in maps] for t in range(frames.shape[0])]
        pos = [p[:1].flatten(2).permute(2, 0, 1) for p in positions[:-1]]
        return per_frame, pos

    def forward(self, batch: ClipBatch) -> LossOutput:
        totals: dict[str, torch.Tensor] = {}
        for clip in batch.clips:
            for k, v in self.clip_losses(clip).items():
                totals[k] = totals.get(k, 0.0) + v / len(batch.clips)
        w = self.weights
        total = (w.mask_focal * totals["mask_focal"] + w.mask_dice * totals["mask_dice"] + w.iou * totals["iou"]
                 + w.object_score * totals["object_score"])
        return LossOutput(total, {k: v.detach() for k, v in totals.items()})

    def run_clip(self, clip: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
        """Prompt the first frame, propagate through the others; per frame the mask logits
        ``(h, w)``, the object score logit and the predicted IoU (with gradients)."""
        from transformers import Sam3TrackerVideoInferenceSession, Sam3TrackerVideoModel

        forward = Sam3TrackerVideoModel.forward.__wrapped__  # the forward without inference_mode
        frames = clip["frames"]
        device, dtype = frames.device, frames.dtype
        per_frame, pos = self.features(frames)
        size = frames.shape[-1]
        session = Sam3TrackerVideoInferenceSession(video_height=size, video_width=size, inference_device=device,
                                                   inference_state_device=device, video_storage_device=device,
                                                   dtype=dtype)
        session.processed_frames = dict.fromkeys(range(frames.shape[0]))
        obj_idx = session.obj_id_to_idx(0)
        prompt = clip["prompt"]
        if "mask" in prompt:
            session.add_mask_inputs(obj_idx, 0, prompt["mask"].to(dtype)[None, None])
        else:
            coords, labels = [], []
            if "box" in prompt:
                b = prompt["box"]
                coords += [[b[0], b[1]], [b[2], b[3]]]
                labels += [2, 3]
            for point, label in zip(prompt.get("points", []), prompt.get("labels", [])):
                coords.append(list(point))
                labels.append(int(label))
            session.add_point_inputs(obj_idx, 0, {
                "point_coords": torch.tensor(coords, dtype=dtype, device=device)[None, None],
                "point_labels": torch.tensor(labels, dtype=torch.int32, device=device)[None, None]})
        session.obj_with_new_inputs = [0]
        outputs = []
        for t in range(frames.shape[0]):
            session.cache.cache_vision_features(t, {"vision_feats": per_frame[t], "vision_pos_embeds": pos})
            self._decoded.clear()
            out = forward(self.video, inference_session=session, frame_idx=t, reverse=False, run_mem_encoder=True)
            logits = out.pred_masks.reshape(out.pred_masks.shape[-2:])
            iou = None
            if self._decoded:  # the mask decoder ran (not a mask prompt copied to the output)
                masks, ious = self._decoded[-1]
                best = int(ious.reshape(-1).argmax())  # the mask the forward picked (multimask: highest IoU)
                logits = masks.reshape(-1, *masks.shape[-2:])[best]
                iou = ious.reshape(-1)[best]
            outputs.append({"logits": logits, "score": out.object_score_logits.reshape(-1)[0], "iou": iou,
                            "from_mask": "mask" in prompt and t == 0})
        session.reset_inference_session()
        return outputs

    def clip_losses(self, clip: dict[str, Any]) -> dict[str, torch.Tensor]:
        w = self.weights
        outputs = self.run_clip(clip)
        focal, dice, iou, score = [], [], [], []
        for out, gt in zip(outputs, clip["masks"]):
            logits = out["logits"].float()
            target = F.interpolate(gt[None, None].float(), size=logits.shape, mode="area")[0, 0]
            target = (target >= 0.5).float()
            present = bool(gt.any())
            score.append(F.binary_cross_entropy_with_logits(out["score"].float(),
                                                            torch.tensor(float(present), device=logits.device)))
            if not present or out["from_mask"]:  # a mask prompt is copied to the output: nothing to learn
                continue
            focal.append(sigmoid_focal(logits, target, w.focal_alpha, w.focal_gamma).mean())
            dice.append(dice_loss(logits[None], target[None])[0])
            if out["iou"] is not None:
                pred = (logits > 0).float()
                inter = (pred * target).sum()
                union = ((pred + target) > 0).float().sum().clamp(min=1.0)
                iou.append((out["iou"].float() - (inter / union).detach()).abs())
        zero = outputs[0]["logits"].sum() * 0.0
        mean = lambda xs: torch.stack(xs).mean() if xs else zero
        return {"mask_focal": mean(focal), "mask_dice": mean(dice), "iou": mean(iou), "object_score": mean(score)}


def build_tracker_for_training(directory, weights: TrackerLossWeights, neck_from_detector: bool = False
                               ) -> TrackerForTraining:
    """The training module from a model directory: the detector ViT (frozen), the tracker
    neck and the video tracker with the directory's weights. ``neck_from_detector`` starts
    the tracker's FPN neck from the detector's (same architecture, same ViT input): a warm
    start for a tracker whose weights are still random."""
    from transformers import Sam3TrackerVideoModel
    from transformers.models.sam3.modeling_sam3 import Sam3VisionNeck

    from medsam3.errors import InputError
    from medsam3.model.weights import check_weights, load_config, load_detector, load_prefixed, load_strict

    config = load_config(directory)
    if not check_weights(directory, config):
        raise InputError(f"model directory {directory} has no tracker weights (a detector-only checkpoint): "
                         "tracker training needs a model with the SAM3 tracker")
    detector = load_detector(directory, torch.float32, config, checked=True)
    backbone = detector.vision_encoder.backbone
    neck = Sam3VisionNeck(config.detector_config.vision_config)
    load_strict(neck, load_prefixed(directory, "tracker_neck."), "tracker neck", directory, prefix="tracker_neck.")
    if neck_from_detector:
        neck.load_state_dict(detector.vision_encoder.neck.state_dict())
    video = Sam3TrackerVideoModel(config.tracker_config, remove_vision_encoder=True)
    load_strict(video, load_prefixed(directory, "tracker_model."), "video tracker", directory,
                prefix="tracker_model.")
    return TrackerForTraining(backbone, neck, video.float(), weights)
