"""The 2D predictor: encode an image once, answer many prompts.

The segment-anything pattern: :meth:`ImagePredictor.set_image` runs the ViT backbone and
neck once and caches the features; :meth:`ImagePredictor.predict` answers any number of
text prompts (optionally with exemplar boxes) in batches through the DETR detector and
mask heads, and :meth:`ImagePredictor.predict_interactive` answers box / point prompts
through the SAM3 tracker, both without re-encoding. Text embeddings are cached per prompt,
so a volume's slices reuse them. Coordinates are pixels of the original image,
``x`` = column, ``y`` = row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from medsam3.errors import ArgumentError, InputError
from medsam3.model.geometry import PAD_BOX, PAD_BOX_LABEL, no_box_inputs
from medsam3.model.loader import MedSAM3
from medsam3.model.prompt_path import ImagePrompts
from medsam3.predict.decode import (
    confident_queries,
    decode_row,
    detector_row,
    mask_boxes,
    mask_components,
    query_scores,
    upsample_mask_logits,
)
from medsam3.predict.prompt_checks import check_box, check_point, check_point_labels
from medsam3.predict.concepts import ConceptGate
from medsam3.predict.results import PromptResult
from medsam3.preprocess import context_offset


#: how :meth:`ImagePredictor.detect` runs the prompt-conditioned modules (see :class:`ImagePredictor`)
PROMPT_PATHS = ("cached", "stock")


def check_finite_output(model: MedSAM3, prompt: str, tensors: Sequence[torch.Tensor], where: str = "") -> None:
    """Raise an :class:`InputError` naming ``prompt`` when any of the model's output ``tensors``
    holds NaN or Inf (one min/max pass each: cheap next to the forward pass that made them)."""
    from medsam3.model.weights import all_finite

    if all(all_finite(t) for t in tensors):
        return
    hint = (f"; it runs in {str(model.dtype).replace('torch.', '')}, which may overflow: try --dtype float32"
            if model.dtype != torch.float32 else "; its weights or this input make it overflow")
    raise InputError(f"model {model.source} gave NaN or infinite outputs for prompt {prompt!r}{where}{hint}")


@dataclass
class TextPrompt:
    """A concept prompt: a short noun phrase, optionally with exemplar boxes.

    ``exemplar_boxes`` are ``x0, y0, x1, y1`` pixel boxes of the original image showing
    examples (label 1) or counter-examples (label 0) of the concept.
    """

    text: str
    exemplar_boxes: list[Sequence[float]] = field(default_factory=list)
    exemplar_labels: list[int] = field(default_factory=list)


def as_text_prompt(p) -> TextPrompt:
    """A :class:`TextPrompt` from a string or a :class:`TextPrompt`."""
    if isinstance(p, TextPrompt):
        return p
    if isinstance(p, str):
        return TextPrompt(p)
    raise ArgumentError(f"a prompt must be a string or TextPrompt, got {type(p).__name__}")


def to_model_rgb(image: np.ndarray) -> np.ndarray:
    """A normalised ``(H, W)`` or ``(H, W, 3)`` image in [0, 1] as float32 ``(H, W, 3)``."""
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=-1)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ArgumentError(f"expected a (H, W) or (H, W, 3) image, got shape {image.shape}")
    return np.clip(image, 0.0, 1.0)


class ImagePredictor:
    """Prompt-driven segmentation of one 2D image at a time.

    Args:
        model: a loaded :class:`MedSAM3`.
        score_threshold: keep instances whose score sigmoid(class) x sigmoid(presence)
            exceeds this.
        presence_threshold: a prompt whose presence probability is below this is "absent".
        mask_threshold: probability above which a pixel belongs to an instance mask.
        batch_size: text prompts run through the detector together.

        gate_concepts: answer text prompts outside the model's ``medsam3.json`` concepts "absent"
            with a warning (default), instead of running them.
        prompt_path: ``"cached"`` (default) runs the prompt-conditioned modules through
            :class:`medsam3.model.prompt_path.ImagePrompts`, which does the image's prompt-independent
            work once and skips the mask head for prompts answered absent; ``"stock"`` calls
            transformers' ``Sam3Model.forward`` per batch (the same outputs up to float rounding;
            kept to measure against).

    Masks come from SAM3's instance queries (``pred_masks``, scored by ``pred_logits`` x
    presence; the semantic mask is their union) unless the model's ``medsam3.json`` says
    ``"masks": "semantic"`` (the demo model, whose instance queries are undertrained): then
    the semantic head's ``semantic_seg`` is the mask, scored by the presence alone, and its
    connected components are the instances.
    """

    def __init__(self, model: MedSAM3, score_threshold: float = 0.5, presence_threshold: float = 0.5,
                 mask_threshold: float = 0.5, batch_size: int = 8, gate_concepts: bool = True,
                 prompt_path: str = "cached"):
        from medsam3.predict.settings import PredictSettings

        settings = PredictSettings(threshold=score_threshold, presence_threshold=presence_threshold,
                                   mask_threshold=mask_threshold, batch_size=batch_size)  # checks the values
        self.model = model
        self.score_threshold = settings.threshold
        self.presence_threshold = settings.presence_threshold
        self.mask_threshold = settings.mask_threshold
        self.batch_size = settings.batch_size
        #: whether text prompts outside the model's concepts are answered absent (:mod:`medsam3.predict.concepts`);
        #: ``False`` asks the network any text (to measure what it says about concepts it never learnt)
        self.gate_concepts = bool(gate_concepts)
        if prompt_path not in PROMPT_PATHS:
            raise ArgumentError(f"unknown prompt path {prompt_path!r}; expected one of {', '.join(PROMPT_PATHS)}")
        self.prompt_path = prompt_path
        self._prompts: ImagePrompts | None = None
        self._text_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._features: Sam3VisionEncoderOutput | None = None
        self._pixel_values: torch.Tensor | None = None
        self._tracker_embeddings: list[torch.Tensor] | None = None
        self.original_size: tuple[int, int] | None = None
        info = model.info  # checked when the model was loaded (medsam3.model.info.ModelInfo)
        self.mask_source = info.masks
        #: 2.5D input: a volume's slices go in with their neighbours this many mm away (0: alone).
        self.context_mm = float(info.context_mm)

    @classmethod
    def from_settings(cls, model: MedSAM3, settings, gate_concepts: bool = True) -> ImagePredictor:
        """A predictor with a :class:`~medsam3.predict.settings.PredictSettings`' thresholds and batch size."""
        return cls(model, score_threshold=settings.threshold, presence_threshold=settings.presence_threshold,
                   mask_threshold=settings.mask_threshold, batch_size=settings.batch_size,
                   gate_concepts=gate_concepts)

    def context_offset(self, slice_spacing: float) -> int:
        """Slices between a volume's slice and each neighbour it is fed with (0: the slice alone,
        for a model without 2.5D input); ``slice_spacing`` in mm."""
        return context_offset(self.context_mm, slice_spacing)

    # ------------------------------------------------------------------ image
    def preprocess(self, image: np.ndarray) -> torch.Tensor:
        """``(1, 3, S, S)`` pixel values as transformers' ``Sam3ImageProcessor`` makes them (Meta's
        processor also rounds the resized image to uint8: at most one uint8 step apart, docs/parity.md)."""
        rgb = to_model_rgb(image)
        processed = self.model.processor.image_processor(images=rgb, do_rescale=False, return_tensors="pt")
        return processed["pixel_values"].to(self.model.device, self.model.dtype)

    @torch.inference_mode()
    def set_image(self, image: np.ndarray) -> None:
        """Encode a normalised image (``(H, W)`` grey or ``(H, W, 3)`` RGB, values in [0, 1])."""
        self.set_pixel_values(self.preprocess(image), np.asarray(image).shape[:2])

    @torch.inference_mode()
    def set_pixel_values(self, pixel_values: torch.Tensor, original_size: tuple[int, int],
                         features: Sam3VisionEncoderOutput | None = None) -> None:
        """Encode an already preprocessed ``(1, 3, S, S)`` pixel tensor of an image whose
        original ``(H, W)`` is ``original_size`` (e.g. another implementation's preprocessing).
        ``features``: its ViT output, computed already (a volume's slices encoded in one batch,
        :mod:`medsam3.predict.slice_feed`): used as it is, no ViT pass here."""
        self.original_size = (int(original_size[0]), int(original_size[1]))
        self._pixel_values = pixel_values.to(self.model.device, self.model.dtype)
        self._features = (features if features is not None
                          else self.model.detector.get_vision_features(pixel_values=self._pixel_values))
        self._tracker_embeddings = None
        self._prompts = None  # the prompt path's per-image cache

    @property
    def vision_hidden_state(self) -> torch.Tensor:
        """``(1, G*G, D)`` the ViT output of the current image (the tracker's features are made from it)."""
        self._require_image()
        return self._features.last_hidden_state

    def _require_image(self) -> None:
        if self._features is None:
            raise RuntimeError("call set_image() before predict()")

    # ------------------------------------------------------------------ text
    @torch.inference_mode()
    def text_embeddings(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(K, 32, D)`` projected text features and ``(K, 32)`` attention masks, cached per text."""
        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            tokens = self.model.processor.tokenizer(missing, padding="max_length", max_length=32,
                                                    truncation=True, return_tensors="pt")
            ids = tokens["input_ids"].to(self.model.device)
            mask = tokens["attention_mask"].to(self.model.device)
            feats = self.model.detector.get_text_features(input_ids=ids, attention_mask=mask).pooler_output
            for i, text in enumerate(missing):
                self._text_cache[text] = (feats[i], mask[i])
        return (torch.stack([self._text_cache[t][0] for t in texts]),
                torch.stack([self._text_cache[t][1] for t in texts]))

    def _normalised_boxes(self, boxes: Sequence[Sequence[float]]) -> torch.Tensor:
        """Pixel ``x0, y0, x1, y1`` boxes -> normalised ``cx, cy, w, h`` (SAM3's exemplar format)."""
        h, w = self.original_size
        out = []
        for box in boxes:
            x0, y0, x1, y1 = self.check_box(box)
            out.append([(x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h])
        return torch.tensor(out, dtype=torch.float32)

    def check_box(self, box: Sequence[float]) -> tuple[float, float, float, float]:
        """Validate a pixel box against the current image; returns it as floats."""
        return check_box(box, self.original_size)

    def check_point(self, point: Sequence[float]) -> tuple[float, float]:
        """Validate a pixel click against the current image; returns it as floats."""
        return check_point(point, self.original_size)

    def _expanded_features(self, n: int) -> Sam3VisionEncoderOutput:
        f = self._features
        grow = lambda t: t.expand(n, *t.shape[1:])  # noqa: E731 - a view, no copy
        return Sam3VisionEncoderOutput(
            last_hidden_state=grow(f.last_hidden_state),
            fpn_hidden_states=tuple(grow(t) for t in f.fpn_hidden_states),
            fpn_position_encoding=tuple(grow(t) for t in f.fpn_position_encoding),
        )

    @torch.inference_mode()
    def detect(self, prompts: Sequence[TextPrompt], skip_absent: bool = False):
        """Raw detector outputs for prompts on the current image, batched; yields per-batch outputs.

        ``skip_absent``: leave the masks of rows that keep no query under this predictor's
        thresholds at zero instead of computing them (their answer is "absent" either way); only
        with the cached prompt path. Callers that rescore rows themselves (volumes) leave it off."""
        self._require_image()
        for start in range(0, len(prompts), self.batch_size):
            batch = prompts[start:start + self.batch_size]
            feats, mask = self.text_embeddings([p.text for p in batch])
            # Text-only rows still go through the geometry encoder (one padding box): Meta's SAM3
            # always appends its encoded CLS token to the prompt; transformers skips it without boxes.
            kwargs = no_box_inputs(len(batch), self.model.device, self.model.dtype)
            n_boxes = max(len(p.exemplar_boxes) for p in batch)
            if n_boxes:
                boxes = torch.tensor(PAD_BOX).repeat(len(batch), n_boxes, 1)
                labels = torch.full((len(batch), n_boxes), PAD_BOX_LABEL, dtype=torch.long)
                for i, p in enumerate(batch):
                    if p.exemplar_boxes:
                        boxes[i, :len(p.exemplar_boxes)] = self._normalised_boxes(p.exemplar_boxes)
                        given = p.exemplar_labels or [1] * len(p.exemplar_boxes)
                        labels[i, :len(given)] = torch.tensor([int(v) for v in given])
                kwargs = {"input_boxes": boxes.to(self.model.device, self.model.dtype),
                          "input_boxes_labels": labels.to(self.model.device)}
            if self.prompt_path == "stock" or self.model.detector.training:
                out = self.model.detector(vision_embeds=self._expanded_features(len(batch)),
                                          text_embeds=_TextEmbeds(feats), attention_mask=mask, **kwargs)
            else:
                if self._prompts is None:
                    self._prompts = ImagePrompts(self.model.detector, self._features, self.model.precision)
                out = self._prompts(feats, mask, kwargs["input_boxes"], kwargs["input_boxes_labels"],
                                    mask_rows=self._rows_kept if skip_absent else None)
            masks = out.semantic_seg if self.mask_source == "semantic" else out.pred_masks
            for i, prompt in enumerate(batch):
                check_finite_output(self.model, prompt.text, (out.presence_logits[i], out.pred_logits[i], masks[i]))
            yield batch, out

    def predict(self, prompts: Sequence[str | TextPrompt]) -> list[PromptResult]:
        """Answer text prompts on the current image.

        Returns one :class:`PromptResult` per prompt, in order: every instance above the
        score threshold (masks, boxes, scores), their union as the semantic mask, and the
        presence score; "absent" with empty masks when the presence is below threshold, and
        (presence 0, with a warning) for a prompt outside the model's concepts
        (:mod:`medsam3.predict.concepts`).
        """
        prompts = [as_text_prompt(p) for p in prompts]
        if not prompts:
            raise ArgumentError("no prompts given")
        self._require_image()
        gate = ConceptGate.apply(self.model, prompts, self.gate_concepts)
        if gate.complete:
            return self._answer(prompts)
        # some prompts are outside the model's concepts, or run under the vocabulary's canonical text
        answered = self._answer(gate.model_prompts) if gate.run else []
        return gate.answers(answered, lambda text: PromptResult.absent(text, 0.0, self.original_size))

    def _answer(self, prompts: list[TextPrompt]) -> list[PromptResult]:
        """The detector's answers to ``prompts``, as they are (no gating)."""
        results: list[PromptResult | None] = [None] * len(prompts)
        # Prompts with exemplar boxes run apart from text-only ones: text-only batches then
        # carry one padding box per row instead of as many as the longest exemplar list.
        for with_boxes in (False, True):
            order = [i for i, p in enumerate(prompts) if bool(p.exemplar_boxes) == with_boxes]
            done = 0
            for batch, out in self.detect([prompts[i] for i in order], skip_absent=True):
                for j, prompt in enumerate(batch):
                    results[order[done + j]] = self._result_from_detector(prompt.text, out, j)
                done += len(batch)
        return results

    def row_outputs(self, out, i: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """``(presence, scores (Q,), mask logits (Q, h, w))`` of detector row ``i``: the instance
        queries' ``sigmoid(class) x presence``, or with ``masks: semantic`` one "query", the
        semantic head, scored by the presence (:mod:`medsam3.predict.decode`)."""
        row = self.detector_row(out, i)
        return row.presence, row.scores, row.logits

    def row_parts(self, out, i: int) -> tuple[float, torch.Tensor, torch.Tensor]:
        """``(presence, quality (Q,), mask logits (Q, h, w))`` of detector row ``i``: a query's
        score is ``quality x presence`` (quality: ``sigmoid(class)``; 1 for the semantic head),
        so a caller that decides presence otherwise (a volume's presence window) can rescore."""
        row = self.detector_row(out, i)
        return row.presence, row.quality, row.logits

    def _rows_kept(self, out) -> torch.Tensor:
        """``(B,)`` bool: the detector rows where some query passes the thresholds (the rule of
        :func:`~medsam3.predict.decode.decode_row`, from the scores alone)."""
        kept = []
        for i in range(out.presence_logits.shape[0]):
            presence = float(out.presence_logits[i].float().sigmoid().squeeze())
            quality = (torch.ones(1) if self.mask_source == "semantic" else out.pred_logits[i].float().sigmoid())
            scores = query_scores(quality, presence)
            kept.append(bool(confident_queries(scores, presence, self.score_threshold, self.presence_threshold).any()))
        return torch.tensor(kept)

    def detector_row(self, out, i: int):
        """Detector row ``i`` as a :class:`~medsam3.predict.decode.DetectorRow` of this model's mask source."""
        return detector_row(out, i, semantic=self.mask_source == "semantic")

    def _result_from_detector(self, text: str, out, i: int) -> PromptResult:
        row = self.detector_row(out, i)
        decoded = decode_row(row, self.original_size, self.score_threshold, self.presence_threshold,
                             self.mask_threshold)
        if not decoded.present:
            return PromptResult.absent(text, row.presence, self.original_size)
        masks, probs, scores = decoded.masks, decoded.probabilities, decoded.scores
        if self.mask_source == "semantic":
            masks, probs, scores, _ = mask_components(masks[0], probs[0], row.presence)
            boxes = mask_boxes(masks).to(scores.device)
        else:
            h, w = self.original_size
            boxes = out.pred_boxes[i, decoded.keep].float() * torch.tensor([w, h, w, h], device=scores.device)
        semantic = masks.any(0)
        if not semantic.any():
            return PromptResult.absent(text, row.presence, self.original_size)
        return PromptResult(
            prompt=text, present=True, presence_score=row.presence,
            scores=scores.cpu().numpy(), boxes=boxes.cpu().numpy(),
            masks=masks.cpu().numpy(), semantic=semantic.cpu().numpy(),
            probability=(probs.max(0).values * semantic).cpu().numpy().astype(np.float32),
        )

    def mask_probabilities(self, mask_logits: torch.Tensor) -> torch.Tensor:
        """``(N, h, w)`` low-resolution logits -> ``(N, H, W)`` probabilities on the original grid."""
        return upsample_mask_logits(mask_logits, self.original_size)

    # ------------------------------------------------------------ interactive
    @torch.inference_mode()
    def _tracker_image_embeddings(self) -> list[torch.Tensor]:
        """The tracker's image embeddings from the cached backbone output (no second ViT pass)."""
        if self._tracker_embeddings is None:
            tracker = self.model.tracker
            hidden = self._features.last_hidden_state
            grid = self._pixel_values.shape[-1] // tracker.config.vision_config.backbone_config.patch_size
            spatial = hidden.view(1, grid, grid, -1).permute(0, 3, 1, 2)
            fpn, _ = tracker.vision_encoder.neck(spatial)
            fpn = list(fpn)[: len(tracker.backbone_feature_sizes)]
            fpn[0] = tracker.mask_decoder.conv_s0(fpn[0])
            fpn[1] = tracker.mask_decoder.conv_s1(fpn[1])
            fpn[-1] = fpn[-1] + tracker.no_memory_embedding.view(1, -1, 1, 1)
            self._tracker_embeddings = fpn
        return self._tracker_embeddings

    @torch.inference_mode()
    def predict_interactive(self, box: Sequence[float] | None = None,
                            points: Sequence[Sequence[float]] | None = None,
                            point_labels: Sequence[int] | None = None, name: str | None = None) -> PromptResult:
        """Segment one object from a box and/or clicks (1 = positive, 0 = negative).

        A lone click is ambiguous: the tracker proposes three masks and the one with the
        highest predicted IoU is kept (SAM's convention); otherwise one mask is predicted.
        """
        self._require_image()
        if box is None and not points:
            raise ArgumentError("an interactive prompt needs a box or at least one point")
        tracker = self.model.tracker
        size = self.model.image_size
        h, w = self.original_size
        scale = torch.tensor([size / w, size / h])
        kwargs = {}
        if points:
            labels = check_point_labels(points, point_labels)
            pts = torch.tensor([self.check_point(p) for p in points], dtype=torch.float32) * scale
            kwargs["input_points"] = pts[None, None].to(self.model.device, self.model.dtype)
            kwargs["input_labels"] = torch.tensor(labels, dtype=torch.int32)[None, None].to(self.model.device)
        if box is not None:
            b = torch.tensor(self.check_box(box), dtype=torch.float32) * scale.repeat(2)
            kwargs["input_boxes"] = b[None, None].to(self.model.device, self.model.dtype)
        multimask = box is None and len(points) == 1
        out = tracker(image_embeddings=self._tracker_image_embeddings(), multimask_output=multimask, **kwargs)
        label = name or ("box" if box is not None else "points")
        check_finite_output(self.model, label, (out.iou_scores, out.object_score_logits, out.pred_masks))
        iou = out.iou_scores[0, 0].float()
        best = int(iou.argmax()) if multimask else 0
        presence = float(out.object_score_logits[0, 0].float().sigmoid().squeeze())
        probs = self.mask_probabilities(out.pred_masks[0, 0, best:best + 1])[0]
        semantic = probs > self.mask_threshold
        if presence < self.presence_threshold or not semantic.any():
            return PromptResult.absent(label, presence, self.original_size, kind="interactive")
        ys, xs = torch.nonzero(semantic, as_tuple=True)
        bbox = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], np.float32)
        return PromptResult(prompt=label, present=True, presence_score=presence,
                            scores=np.array([float(iou[best])], np.float32), boxes=bbox,
                            masks=semantic[None].cpu().numpy(), semantic=semantic.cpu().numpy(),
                            probability=(probs * semantic).cpu().numpy().astype(np.float32), kind="interactive")


class _TextEmbeds:
    """The minimal stand-in for ``get_text_features`` output that ``Sam3Model.forward`` reads."""

    def __init__(self, pooler_output: torch.Tensor):
        self.pooler_output = pooler_output
