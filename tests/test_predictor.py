"""The 2D predictor: encode once, many prompts, union of instances, absent answers."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from medsam3.errors import ArgumentError
from medsam3.model.geometry import no_box_inputs
from medsam3.predict import ImagePredictor, PromptResult, TextPrompt, combine_label_map
from medsam3.predict.decode import upsample_mask_logits


@pytest.fixture()
def ct_slice():
    """A real CT slice (pydicom's CT_small.dcm), soft-tissue window, in [0, 1]."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return np.clip((hu - (40 - 200)) / 400, 0, 1).astype(np.float32)


def test_set_image_encodes_once_for_any_number_of_prompts(tiny_model, ct_slice, monkeypatch):
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0, batch_size=3)
    calls = []
    original = tiny_model.detector.vision_encoder.forward
    monkeypatch.setattr(tiny_model.detector.vision_encoder, "forward",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    predictor.set_image(ct_slice)
    results = predictor.predict(["liver", "spleen", "left kidney", "aorta", "brain"])
    results += predictor.predict(["liver"])
    assert len(calls) == 1
    assert [r.prompt for r in results] == ["liver", "spleen", "left kidney", "aorta", "brain", "liver"]
    assert all(r.semantic.shape == ct_slice.shape for r in results)


def test_batched_prompts_equal_one_at_a_time(tiny_model, ct_slice):
    batched = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0, batch_size=8)
    single = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0, batch_size=1)
    prompts = ["liver", "spleen", "cell nucleus", "fetal head"]
    batched.set_image(ct_slice)
    single.set_image(ct_slice)
    for a, b in zip(batched.predict(prompts), single.predict(prompts)):
        assert a.presence_score == pytest.approx(b.presence_score, abs=1e-5)
        np.testing.assert_allclose(a.scores, b.scores, atol=1e-5)
        np.testing.assert_allclose(a.probability, b.probability, atol=1e-4)


def test_predictor_matches_metas_pipeline(tiny_model, ct_slice):
    """Same outputs as transformers' processor + model run the way Meta's SAM3 runs a text prompt
    (the geometry encoder's CLS token joins the prompt) and Meta's post-processing (logits
    resized to the image, then sigmoid > 0.5; score = sigmoid(class) x sigmoid(presence))."""
    rgb = np.repeat(ct_slice[..., None], 3, -1)
    inputs = tiny_model.processor(images=rgb, text="liver", do_rescale=False, return_tensors="pt")
    with torch.no_grad():
        out = tiny_model.detector(**inputs, **no_box_inputs(1))
    scores = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
    keep = scores > 0.0
    logits = torch.nn.functional.interpolate(out.pred_masks[:, keep], size=ct_slice.shape, mode="bilinear",
                                             align_corners=False)[0]
    h, w = ct_slice.shape
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0, batch_size=1)
    predictor.set_image(ct_slice)
    (ours,) = predictor.predict(["liver"])
    masks = (logits.sigmoid() > 0.5).numpy()  # Meta's rule (a logit within 3e-8 of 0 gives 0.5)
    np.testing.assert_array_equal(ours.masks, masks)
    np.testing.assert_allclose(ours.scores, scores[keep].numpy(), rtol=1e-6)
    np.testing.assert_allclose(ours.boxes, (out.pred_boxes[0, keep] * torch.tensor([w, h, w, h])).numpy(), rtol=1e-5)
    np.testing.assert_array_equal(ours.semantic, masks.any(0))


@pytest.mark.parametrize("prompt_path", ["cached", "stock"])
def test_text_prompts_carry_the_geometry_cls_token_as_in_metas_sam3(tiny_model, ct_slice, monkeypatch, prompt_path):
    """Meta's SAM3 appends the geometry encoder's CLS token to every prompt, boxes or not;
    transformers' Sam3Model leaves it out without boxes. The predictor passes one padding box,
    which must be inert (its coordinates change nothing) while the CLS token changes the output."""
    import medsam3.model.geometry as geometry

    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0, prompt_path=prompt_path)
    predictor.set_image(ct_slice)
    seen = []  # the prompt mask the query scoring sees (both prompt paths call it)
    hook = tiny_model.detector.dot_product_scoring.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs["text_mask"].sum(1)), with_kwargs=True)
    try:
        (_, out), = list(predictor.detect([TextPrompt("liver")]))
    finally:
        hook.remove()
    feats, mask = predictor.text_embeddings(["liver"])
    assert seen[0].tolist() == [int(mask.sum()) + 1]  # the text tokens and the CLS token
    monkeypatch.setattr(geometry, "PAD_BOX", (0.2, 0.7, 0.1, 0.3))
    predictor.set_image(ct_slice)  # a fresh per-image cache of the cached path
    (_, moved), = list(predictor.detect([TextPrompt("liver")]))
    for name in ("pred_logits", "presence_logits", "pred_boxes", "pred_masks", "semantic_seg"):
        torch.testing.assert_close(getattr(moved, name), getattr(out, name), rtol=0, atol=1e-6)
    with torch.no_grad():  # without the CLS token (transformers' default) the answer differs
        plain = tiny_model.detector(vision_embeds=predictor._features, text_embeds=SimpleNamespace(pooler_output=feats),
                                    attention_mask=mask)
    assert (plain.pred_logits - out.pred_logits).abs().max() > 1e-3


def test_masks_resize_logits_before_the_sigmoid_as_meta_does():
    """Between a logit of -8 and one of 2 Meta's mask ends where the resized logit crosses 0;
    resizing probabilities instead would move the edge by about a quarter of the interval."""
    logits = torch.tensor([[[-8.0, 2.0]]])
    probs = upsample_mask_logits(logits, (1, 40))
    reference = torch.nn.functional.interpolate(logits[None], size=(1, 40), mode="bilinear",
                                                align_corners=False)[0]
    torch.testing.assert_close(probs, reference.sigmoid())
    probability_first = torch.nn.functional.interpolate(logits[None].sigmoid(), size=(1, 40), mode="bilinear",
                                                        align_corners=False)[0]
    assert ((probs > 0.5) != (probability_first > 0.5)).sum() >= 4  # the rule matters


def _fake_output(presence_logit, logits, masks_logits):
    """Detector output for one prompt with hand-made instance logits."""
    q = len(logits)
    return SimpleNamespace(
        presence_logits=torch.tensor([[presence_logit]]),
        pred_logits=torch.tensor([logits], dtype=torch.float32),
        pred_masks=torch.stack(masks_logits)[None],
        pred_boxes=torch.tensor([[[0.0, 0.0, 0.5, 0.5]] * q]),
    )


def _predictor_on(tiny_model, shape):
    p = ImagePredictor(tiny_model, score_threshold=0.5, presence_threshold=0.5)
    p.original_size = shape
    return p


def test_semantic_mask_is_the_union_of_all_instances_not_the_top1(tiny_model):
    big = torch.full((8, 8), -10.0)
    big[0:4, 0:4] = 10.0
    small = torch.full((8, 8), -10.0)
    small[6:8, 6:8] = 10.0
    noise = torch.full((8, 8), 10.0)  # a low-scoring query covering everything
    out = _fake_output(5.0, [4.0, 3.0, -6.0], [big, small, noise])
    result = _predictor_on(tiny_model, (8, 8))._result_from_detector("nucleus", out, 0)
    assert result.present and result.num_instances == 2
    expected = np.zeros((8, 8), bool)
    expected[0:4, 0:4] = expected[6:8, 6:8] = True
    np.testing.assert_array_equal(result.semantic, expected)
    assert result.semantic.sum() == 20 > result.masks[0].sum()
    np.testing.assert_allclose(result.boxes[0], [0, 0, 4, 4])  # normalised boxes -> input pixels
    np.testing.assert_allclose(result.scores, torch.sigmoid(torch.tensor([4.0, 3.0])) * torch.sigmoid(torch.tensor(5.0)),
                               rtol=1e-6)


def test_low_presence_means_absent_with_an_empty_mask(tiny_model):
    full = torch.full((8, 8), 10.0)
    out = _fake_output(-3.0, [9.0], [full])  # confident instance, but the concept is not present
    result = _predictor_on(tiny_model, (8, 8))._result_from_detector("liver", out, 0)
    assert not result.present and result.num_instances == 0 and not result.semantic.any()
    assert result.presence_score == pytest.approx(float(torch.sigmoid(torch.tensor(-3.0))))


def test_absent_reported_by_threshold_on_a_real_slice(tiny_model, ct_slice):
    predictor = ImagePredictor(tiny_model, presence_threshold=0.99)
    predictor.set_image(ct_slice)
    (r,) = predictor.predict(["liver"])
    assert not r.present and r.semantic.sum() == 0 and 0.0 < r.presence_score < 0.99


def test_combine_label_map_resolves_overlap_by_probability():
    shape = (4, 4)
    a = PromptResult("a", True, 0.9, np.ones(1), np.zeros((1, 4)), np.ones((1, *shape), bool),
                     np.ones(shape, bool), np.full(shape, 0.6, np.float32))
    prob_b = np.zeros(shape, np.float32)
    prob_b[:2] = 0.9
    b = PromptResult("b", True, 0.9, np.ones(1), np.zeros((1, 4)), (prob_b > 0)[None], prob_b > 0, prob_b)
    c = PromptResult.absent("c", 0.1, shape)
    labels = combine_label_map([a, b, c])
    assert labels[:2].tolist() == [[2] * 4] * 2 and labels[2:].tolist() == [[1] * 4] * 2


def _result(name: str, mask: np.ndarray, probability: float) -> PromptResult:
    return PromptResult(name, True, 0.9, np.ones(1), np.zeros((1, 4)), mask[None], mask,
                        np.where(mask, probability, 0).astype(np.float32))


def test_combine_label_map_keeps_nested_structures_visible():
    brain = np.zeros((3, 12, 12), bool)
    brain[:, 1:11, 1:11] = True
    caudate = np.zeros_like(brain)
    caudate[1, 4:7, 4:6] = True          # inside the brain, less probable than it
    thalamus = np.zeros_like(brain)
    thalamus[1, 4:7, 5:8] = True         # beside the caudate (sibling overlap): probability decides
    nucleus = np.zeros_like(brain)
    nucleus[1, 5, 6] = True              # inside the thalamus inside the brain: innermost wins
    labels = combine_label_map([_result("brain", brain, 0.95), _result("caudate", caudate, 0.6),
                                _result("thalamus", thalamus, 0.7), _result("nucleus", nucleus, 0.5)])
    assert labels[1, 4:7, 4].tolist() == [2, 2, 2]      # caudate only: nested in brain
    assert labels[1, 4:7, 5].tolist() == [3, 3, 3]      # caudate x thalamus: thalamus more probable
    assert labels[1, 4:7, 7].tolist() == [3, 3, 3]
    assert labels[1, 5, 6] == 4
    assert (labels[0] == 1).sum() == 100 and (labels == 0).sum() == 3 * 144 - 300
    # a partial overlap is not nesting: the more probable prompt keeps the shared pixels
    half_out = np.zeros_like(brain)
    half_out[1, 0:4, 0:4] = True
    labels = combine_label_map([_result("brain", brain, 0.95), _result("skin", half_out, 0.6)])
    assert labels[1, 1:4, 1:4].tolist() == [[1] * 3] * 3 and labels[1, 0, 0] == 2


def test_exemplar_boxes_change_the_answer(tiny_model, ct_slice):
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0)
    predictor.set_image(ct_slice)
    plain, with_box, mixed = predictor.predict([
        TextPrompt("liver"), TextPrompt("liver", [[10, 10, 60, 50]], [1]),
        TextPrompt("liver", [[10, 10, 60, 50], [70, 70, 120, 120]], [1, 0])])
    assert not np.allclose(plain.scores, with_box.scores)
    assert not np.allclose(with_box.scores, mixed.scores)
    with pytest.raises(ArgumentError, match="not inside the image"):
        predictor.predict([TextPrompt("liver", [[10, 10, 600, 50]])])


def test_interactive_box_and_points_use_cached_features(tiny_model, ct_slice):
    predictor = ImagePredictor(tiny_model, presence_threshold=0.0, mask_threshold=0.5)
    predictor.set_image(ct_slice)
    tracker = tiny_model.tracker
    box = [20.0, 30.0, 90.0, 100.0]
    scale = tiny_model.image_size / 128
    with torch.no_grad():
        direct = tracker(pixel_values=predictor._pixel_values,
                         input_boxes=torch.tensor([[[v * scale for v in box]]]), multimask_output=False)
        cached = tracker(image_embeddings=predictor._tracker_image_embeddings(),
                         input_boxes=torch.tensor([[[v * scale for v in box]]]), multimask_output=False)
    torch.testing.assert_close(cached.pred_masks, direct.pred_masks)
    r = predictor.predict_interactive(box=box)
    assert r.kind == "interactive" and r.prompt == "box" and r.semantic.shape == ct_slice.shape
    p = predictor.predict_interactive(points=[[50, 60], [10, 10]], point_labels=[1, 0])
    assert p.prompt == "points" and p.semantic.shape == ct_slice.shape
    with pytest.raises(ArgumentError, match="outside the image"):
        predictor.predict_interactive(points=[[500, 60]])
    with pytest.raises(ArgumentError, match="needs a box or at least one point"):
        predictor.predict_interactive()


def test_predict_before_set_image_and_bad_arguments(tiny_model):
    with pytest.raises(RuntimeError, match="set_image"):
        ImagePredictor(tiny_model).predict(["liver"])
    with pytest.raises(ArgumentError, match="outside"):
        ImagePredictor(tiny_model, score_threshold=1.5)
    p = ImagePredictor(tiny_model)
    p.set_image(np.zeros((32, 32), np.float32))
    with pytest.raises(ArgumentError, match="no prompts"):
        p.predict([])


def test_text_only_prompts_answer_the_same_next_to_exemplar_prompts(tiny_model, ct_slice):
    predictor = ImagePredictor(tiny_model, score_threshold=0.0, presence_threshold=0.0, batch_size=8)
    predictor.set_image(ct_slice)
    (alone,) = predictor.predict(["liver"])
    mixed = predictor.predict([TextPrompt("spleen", [[10, 10, 60, 50]]), "liver", TextPrompt("liver", [[5, 5, 30, 30]])])
    assert [r.prompt for r in mixed] == ["spleen", "liver", "liver"]
    np.testing.assert_allclose(mixed[1].probability, alone.probability, atol=1e-5)
    np.testing.assert_allclose(mixed[1].scores, alone.scores, atol=1e-6)
