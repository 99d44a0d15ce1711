"""The cached prompt path (medsam3.model.prompt_path) against transformers' Sam3Model.forward:
the same outputs to float rounding for text-only and exemplar prompts, batches of any size,
rows skipped when absent; the predictor's answers the same through either path."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import Sam3Model
from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

from medsam3.model.configs import build_config
from medsam3.model.geometry import no_box_inputs
from medsam3.model.prompt_path import ImagePrompts, subpixel_kernels, upsample_conv3x3
from medsam3.predict import ImagePredictor, TextPrompt

FIELDS = ("presence_logits", "pred_logits", "pred_boxes", "pred_masks", "semantic_seg")


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    """Weights drawn at unit gain, so the outputs vary well above float rounding (the default
    initialisation's small weights make every prompt's presence about the same)."""
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 1 / math.sqrt(p[0].numel()))
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
    return model.eval()


@pytest.fixture(scope="module")
def detector():
    """A tiny random Sam3Model with two layers in every stack (layer 0 is cached, later ones are not)."""
    config = build_config("tiny").detector_config
    for sub in (config.detr_encoder_config, config.detr_decoder_config, config.geometry_encoder_config):
        sub.num_layers = 2
    return _lively(Sam3Model(config))


@pytest.fixture(scope="module")
def lively_model(tiny_model, detector):
    """A :class:`MedSAM3` around :func:`detector` (the tiny model's processor and settings)."""
    from medsam3.model import MedSAM3

    return MedSAM3(detector, tiny_model.processor, tiny_model.config, "test:lively", tiny_model.device,
                   tiny_model.dtype, has_tracker=False, info=tiny_model.info)


@pytest.fixture(scope="module")
def image(detector):
    size = detector.config.vision_config.backbone_config.image_size
    with torch.inference_mode():
        return detector.get_vision_features(pixel_values=torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1)))


def _text(detector, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 1000, (n, 32), generator=g)
    lengths = torch.randint(2, 12, (n,), generator=g)
    mask = (torch.arange(32)[None] < lengths[:, None]).long()
    with torch.inference_mode():
        return detector.get_text_features(input_ids=ids, attention_mask=mask).pooler_output, mask


def _stock(detector, image, text, mask, **boxes):
    n = text.shape[0]
    grow = lambda t: t.expand(n, *t.shape[1:])  # noqa: E731
    vision = Sam3VisionEncoderOutput(last_hidden_state=grow(image.last_hidden_state),
                                     fpn_hidden_states=tuple(map(grow, image.fpn_hidden_states)),
                                     fpn_position_encoding=tuple(map(grow, image.fpn_position_encoding)))
    with torch.inference_mode():
        return detector(vision_embeds=vision, text_embeds=SimpleNamespace(pooler_output=text), attention_mask=mask,
                        **boxes)


def _assert_same(got, ref, fields=FIELDS, rows=None):
    for name in fields:
        a, b = getattr(got, name), getattr(ref, name)
        if rows is not None:
            a, b = a[rows], b[rows]
        assert a.shape == b.shape, name
        scale = float(b.abs().max())
        assert scale > 1e-2, (name, scale)  # a real signal, not a collapsed output
        torch.testing.assert_close(a, b, rtol=0, atol=2e-5 * scale, msg=name)


def _exemplars(n: int, seed: int = 0):
    """``n`` rows of up to 3 exemplar boxes, positive and negative, padded as the predictor pads."""
    g = torch.Generator().manual_seed(seed)
    centre = 0.2 + 0.6 * torch.rand(n, 3, 2, generator=g)
    size = 0.05 + 0.3 * torch.rand(n, 3, 2, generator=g)
    boxes = torch.cat([centre, size], -1)
    labels = torch.tensor([[1, 0, 1], [1, -10, -10], [0, 1, -10], [1, 1, 1], [0, -10, -10]])[:n]
    boxes[labels == -10] = torch.tensor([0.5, 0.5, 1.0, 1.0])
    return {"input_boxes": boxes, "input_boxes_labels": labels}


@pytest.mark.parametrize("n", [1, 2, 5])
def test_text_prompts_equal_the_stock_forward(detector, image, n):
    text, mask = _text(detector, n)
    boxes = no_box_inputs(n)
    ref = _stock(detector, image, text, mask, **boxes)
    path = ImagePrompts(detector, image)
    _assert_same(path(text, mask, boxes["input_boxes"], boxes["input_boxes_labels"]), ref)
    # again on the same image: everything prompt-independent now comes from the cache
    assert {"encoder0", "decoder0", "geometry"} <= set(path._cache)
    _assert_same(path(text, mask, boxes["input_boxes"], boxes["input_boxes_labels"]), ref)


@pytest.mark.parametrize("n", [1, 3, 5])
def test_exemplar_boxes_equal_the_stock_forward(detector, image, n):
    """Positive and negative exemplars, with padding boxes in the shorter rows."""
    text, mask = _text(detector, n, seed=2)
    boxes = _exemplars(n)
    ref = _stock(detector, image, text, mask, **boxes)
    _assert_same(ImagePrompts(detector, image)(text, mask, **boxes), ref)


def test_without_boxes_or_text_mask_equal_the_stock_forward(detector, image):
    """transformers' own text-only call (no geometry tokens at all), and no text mask."""
    text, mask = _text(detector, 3, seed=3)
    _assert_same(ImagePrompts(detector, image)(text, mask), _stock(detector, image, text, mask))
    _assert_same(ImagePrompts(detector, image)(text, None), _stock(detector, image, text, None))


def test_batches_of_mixed_sizes_share_one_cache(detector, image):
    """A single prompt (plain pixel-decoder convolutions), then a batch (cached skip convolutions
    and four 2x2 convolutions), then a single prompt again (now from the cache)."""
    path = ImagePrompts(detector, image)
    for n, seed in ((1, 4), (4, 5), (1, 6), (2, 7)):
        text, mask = _text(detector, n, seed)
        boxes = no_box_inputs(n)
        _assert_same(path(text, mask, boxes["input_boxes"], boxes["input_boxes_labels"]),
                     _stock(detector, image, text, mask, **boxes))
        assert ("skips" in path._cache) == (n > 1 or seed > 5)


def test_masks_only_for_the_rows_asked(detector, image):
    text, mask = _text(detector, 4, seed=8)
    boxes = no_box_inputs(4)
    ref = _stock(detector, image, text, mask, **boxes)
    seen = []

    def rows(out):
        seen.append(out.pred_masks)
        _assert_same(out, ref, fields=("presence_logits", "pred_logits", "pred_boxes"))
        return torch.tensor([True, False, True, False])

    got = ImagePrompts(detector, image)(text, mask, boxes["input_boxes"], boxes["input_boxes_labels"], mask_rows=rows)
    assert seen == [None]  # asked before any mask was made
    _assert_same(got, ref, rows=[0, 2])
    assert not got.pred_masks[[1, 3]].any() and not got.semantic_seg[[1, 3]].any()


@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (2, 4, 6, 6), (1, 2, 1, 1)])
def test_upsample_then_3x3_conv_is_four_2x2_convs(shape):
    """The identity the pixel decoder uses, borders included, in float64 (exact up to rounding)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    weight = torch.randn(5, shape[1], 3, 3, generator=g, dtype=torch.float64)
    expected = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), weight, padding=1)
    torch.testing.assert_close(upsample_conv3x3(x, subpixel_kernels(weight)), expected, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------ the predictor
IMAGE = np.random.default_rng(3).random((90, 110)).astype(np.float32)
PROMPTS = [TextPrompt("liver"), TextPrompt("spleen"), TextPrompt("left kidney"),
           TextPrompt("aorta", [(10, 20, 50, 60), (60, 5, 100, 40)], [1, 0]), TextPrompt("brain"),
           TextPrompt("lung", [(30, 30, 70, 80)])]


def _answers(model, path, mask_source="instance", **thresholds):
    predictor = ImagePredictor(model, batch_size=2, gate_concepts=False, prompt_path=path, **thresholds)
    predictor.mask_source = mask_source
    predictor.set_image(IMAGE)
    return predictor.predict(PROMPTS)


def _presence_midpoint(model) -> float:
    """A presence threshold half-way between two of the prompts' presences: some present, some absent."""
    presences = sorted(r.presence_score for r in _answers(model, "stock", score_threshold=0.0, presence_threshold=0.0))
    assert presences[-1] - presences[0] > 0.05
    gaps = np.diff(presences)
    i = int(np.argmax(gaps[1:-1])) + 1 if len(gaps) > 2 else int(np.argmax(gaps))
    return (presences[i] + presences[i + 1]) / 2


@pytest.mark.parametrize("mask_source", ["instance", "semantic"])
def test_predictor_answers_equal_through_either_path(lively_model, mask_source):
    """Every PromptResult the same (masks identical, scores to rounding), with some prompts
    absent, so the cached path skips their mask head."""
    threshold = _presence_midpoint(lively_model)
    # a low score threshold: mostly the presence decides which prompts are answered
    settings = dict(score_threshold=0.05, presence_threshold=threshold, mask_threshold=0.5)
    head = lively_model.detector.mask_decoder.prompt_cross_attn
    rows = []
    hook = head.register_forward_hook(lambda m, args, kwargs, out: rows.append(kwargs["query"].shape[0]),
                                      with_kwargs=True)
    try:
        cached = _answers(lively_model, "cached", mask_source, **settings)
    finally:
        hook.remove()
    stock = _answers(lively_model, "stock", mask_source, **settings)
    present = sum(r.present for r in stock)
    assert 0 < present < len(PROMPTS)
    assert sum(rows) == present  # the mask head ran for the present prompts only
    for a, b in zip(cached, stock):
        assert (a.prompt, a.present) == (b.prompt, b.present)
        assert a.presence_score == pytest.approx(b.presence_score, abs=1e-6)
        np.testing.assert_array_equal(a.semantic, b.semantic)
        np.testing.assert_array_equal(a.masks, b.masks)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-3)
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-5)


def test_cache_follows_the_image(tiny_model):
    """A second image gets its own prompt-independent parts (the cache is dropped in set_image)."""
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0)
    stock = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0, prompt_path="stock")
    other = np.random.default_rng(9).random((70, 60)).astype(np.float32)
    predictor.set_image(IMAGE)
    predictor.predict(["liver", "spleen"])
    for p in (predictor, stock):
        p.set_image(other)
    (_, a), = list(predictor.detect([TextPrompt("liver"), TextPrompt("spleen")]))
    (_, b), = list(stock.detect([TextPrompt("liver"), TextPrompt("spleen")]))
    for name in FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precision", ["int8", "bf16"])
def test_reduced_precision_runs_the_cached_path(tiny_model_dir, precision):
    """int8 (quantised Linear modules) and bf16 (autocast) give the stock path's outputs to the
    rounding of that precision, in the weights' dtype."""
    from medsam3.model import MedSAM3

    model = MedSAM3.from_pretrained(tiny_model_dir, device="cpu", precision=precision)
    outs = {}
    for path in ("cached", "stock"):
        predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0, prompt_path=path)
        predictor.set_image(IMAGE)
        (_, outs[path]), = list(predictor.detect([TextPrompt("liver"), TextPrompt("spleen")]))
    for name in FIELDS:
        a, b = getattr(outs["cached"], name), getattr(outs["stock"], name)
        assert a.dtype == torch.float32
        relative = float((a - b).norm() / b.norm())
        assert relative < (1e-5 if precision == "int8" else 0.03), (name, relative)


def test_unknown_prompt_path_is_refused(tiny_model):
    from medsam3.errors import ArgumentError

    with pytest.raises(ArgumentError, match="unknown prompt path 'fast'"):
        ImagePredictor(tiny_model, prompt_path="fast")
