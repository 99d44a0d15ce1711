"""Tracker training (``train.target: tracker``) on a synthetic moving sphere: gradients reach
the memory modules, a short run makes box-prompted propagation through the volume far
better than the untrained tracker, and a run killed with SIGKILL resumes to the same weights."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from helpers.train import tiny_config

import medsam3
from medsam3.data.manifest import ManifestItem, write_manifest
from medsam3.image import Image
from medsam3.io import write_image
from medsam3.train.config import config_from_dict
from medsam3.train.loop import checkpoint_dirs, train

SHAPE = (28, 64, 64)  # z, y, x; 2 mm slices, 2 mm pixels
LEARNING_STEPS = 120
# propagation Dice must rise by at least this much over the untrained tracker, to at least
# MIN_AFTER (measured here: 0.14 -> 0.97 after 120 steps, about a minute on 1 core)
MIN_GAIN, MIN_AFTER = 0.5, 0.85


def sphere_volume(seed: int, shift=(1.1, 0.7)) -> tuple[np.ndarray, np.ndarray]:
    """A bright ball on noise whose centre moves in-plane from slice to slice (a "moving
    sphere": its cross-sections shift and grow, then shrink and end)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]]
    cy, cx = 18 + shift[0] * z, 20 + shift[1] * z
    ball = ((y - cy) ** 2 + (x - cx) ** 2 + ((z - 14) * 1.6) ** 2) < 15 ** 2
    image = rng.normal(200, 40, SHAPE) + 400 * ball
    return image.astype(np.float32), ball.astype(np.uint8)


@pytest.fixture(scope="module")
def spheres(tmp_path_factory):
    root = tmp_path_factory.mktemp("spheres")
    items = []
    for k, (split, shift) in enumerate((("train", (1.1, 0.7)), ("train", (-0.8, 1.0)), ("train", (0.5, -1.2)),
                                         ("test", (0.9, 0.9)))):
        image, label = sphere_volume(k, shift)
        if k == 2:
            image, label = image[:, :, ::-1].copy(), label[:, :, ::-1].copy()
        for name, array in (("img", image), ("lab", label)):
            write_image(Image(array, (2.0, 2.0, 2.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel())),
                        root / f"{split}{k}_{name}.nii.gz")
        items.append(ManifestItem(id=f"sphere/{k}", dataset="spheres", split=split, image=f"{split}{k}_img.nii.gz",
                                  label=f"{split}{k}_lab.nii.gz", label_format="map", labels={"1": "tumor"},
                                  modality="MR", dim=3, shape=list(SHAPE), spacing=[2.0, 2.0, 2.0]))
    return write_manifest(items, root / "spheres.jsonl", root), root


@pytest.fixture(scope="module")
def model112(tmp_path_factory):
    from medsam3.model import create_random_model

    return create_random_model("tiny", tmp_path_factory.mktemp("m") / "tiny112", seed=0, image_size=112)


def tracker_config(model, manifest, out, **sections) -> dict:
    config = tiny_config(model, manifest, out, train={"target": "tracker", "max_steps": 4, "checkpoint_every": 2},
                         data={"val_split": None, "batch_size": 2}, tracker={"clip_length": 4},
                         optim={"lr": {"tracker": 1e-3}, "warmup_steps": 5, "cooldown_steps": 0})
    for key, value in sections.items():
        config.setdefault(key, {}).update(value)
    return config


def tracker_weights(directory) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(directory / "model.safetensors")).items()
            if k.startswith(("tracker_model.", "tracker_neck."))}


def propagation_dice(model_dir, root) -> float:
    """Box on the test sphere's middle slice, propagated both ways by the tracker: volume Dice."""
    image_path = root / "test3_img.nii.gz"
    _, truth = sphere_volume(3, (0.9, 0.9))
    k = 14
    ys, xs = np.nonzero(truth[k])
    seg = medsam3.segment(image_path, None, box=[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], slice_index=k,
                          mode="propagate", model=str(model_dir), device="cpu", progress=False)
    pred = seg.labels.array > 0
    return float(2 * (pred & (truth > 0)).sum() / (pred.sum() + truth.sum()))


def test_gradients_reach_the_memory_modules(model112, spheres):
    from medsam3.train.tracker import ClipDataset, TrackerConfig, TrackerLossWeights, build_tracker_for_training, \
        collate_clips

    manifest, _ = spheres
    module = build_tracker_for_training(model112, TrackerLossWeights())
    data = ClipDataset(manifest, 112, TrackerConfig(clip_length=4, mask_prompt_probability=0.0))
    clip = data[0]
    assert clip["frames"].shape == (4, 3, 112, 112) and clip["masks"][0].any()
    module.train()
    losses = module(collate_clips([clip, data[1]]))
    losses.total.backward()
    assert set(losses.terms) == {"mask_focal", "mask_dice", "iou", "object_score"}

    def grad_sum(prefix):
        return sum(float(p.grad.abs().sum()) for n, p in module.named_parameters()
                   if n.startswith(prefix) and p.grad is not None)

    for prefix in ("video.memory_attention", "video.memory_encoder", "video.mask_decoder", "video.prompt_encoder",
                   "neck"):
        assert grad_sum(prefix) > 0, prefix
    assert all(p.grad is None for p in module.backbone.parameters())  # the detector's ViT stays frozen


def test_prompt_sampling_covers_masks_boxes_and_clicks():
    from medsam3.train.tracker import TrackerConfig, sample_prompt

    mask = torch.zeros(64, 64, dtype=torch.bool)
    mask[20:40, 10:30] = True
    kinds = {}
    rng = np.random.default_rng(0)
    for _ in range(200):
        prompt = sample_prompt(mask, rng, TrackerConfig())
        kind = next(iter(prompt))
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind == "box":
            x0, y0, x1, y1 = prompt["box"]
            assert abs(x0 - 10) <= 2 and abs(y0 - 20) <= 2 and abs(x1 - 30) <= 2 and abs(y1 - 40) <= 2
        elif kind == "points":
            for (x, y), label in zip(prompt["points"], prompt["labels"]):
                assert bool(mask[int(y), int(x)]) == (label == 1)
    assert set(kinds) == {"mask", "box", "points"} and kinds["mask"] < kinds["box"]


@pytest.mark.slow
def test_tracker_training_improves_propagation(model112, spheres, tmp_path):
    manifest, root = spheres
    before = propagation_dice(model112, root)
    config = tracker_config(model112, manifest, tmp_path / "run",
                            train={"max_steps": LEARNING_STEPS, "checkpoint_every": 0, "log_every": 20})
    result = train(config_from_dict(config))
    after = propagation_dice(result.final_model, root)
    assert after >= before + MIN_GAIN and after >= MIN_AFTER, (before, after)
    # only the tracker changed; the detector is the source's
    source, final = load_file(str(model112 / "model.safetensors")), load_file(str(result.final_model / "model.safetensors"))
    assert all(torch.equal(final[k], source[k]) for k in source if k.startswith("detector_model."))
    assert any(not torch.equal(final[k], source[k]) for k in source if k.startswith("tracker_model.memory_attention"))


def _train_in_child(config: dict) -> None:
    import logging

    logging.getLogger("medsam3.train").handlers.clear()
    train(config_from_dict(config))


def test_killed_tracker_run_resumes_to_the_same_weights(model112, spheres, tmp_path):
    manifest, _ = spheres
    straight = train(config_from_dict(tracker_config(model112, manifest, tmp_path / "straight")))
    killed_dir = tmp_path / "killed"
    proc = multiprocessing.get_context("fork").Process(
        target=_train_in_child, args=(tracker_config(model112, manifest, killed_dir),))
    proc.start()
    marker = killed_dir / "checkpoints" / "step-0000002" / "trainer.json"
    deadline = time.time() + 180
    while not marker.is_file():
        if not proc.is_alive() or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the tracker run ended (exit code {proc.exitcode}) or stalled before its first checkpoint")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert not (killed_dir / "final").exists(), "the run finished before it was killed: nothing was tested"
    resumed = train(config_from_dict(tracker_config(model112, manifest, killed_dir)), resume=True)
    assert resumed.steps == 4 and [s for s, _ in checkpoint_dirs(killed_dir)][-1] == 4
    a, b = tracker_weights(straight.final_model), tracker_weights(resumed.final_model)
    assert a.keys() == b.keys() and len(a) > 100
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed tracker weights differ from the straight run by {worst}"


def test_tracker_lora_trains_adapters_and_resumes(model112, spheres, tmp_path):
    """``train.mode: lora`` with the tracker target: peft adapters on the video tracker's
    attention layers plus its mask decoder train, the neck and the detector stay as they were,
    the final model holds the merged weights, and resuming from the middle checkpoint gives the
    uninterrupted run's weights."""
    import shutil

    manifest, _ = spheres
    config = tracker_config(model112, manifest, tmp_path / "lora", train={"mode": "lora"},
                            lora={"r": 4, "alpha": 8.0}, tracker={"neck_from_detector": True})
    straight = train(config_from_dict(config))
    source = load_file(str(model112 / "model.safetensors"))
    final = load_file(str(straight.final_model / "model.safetensors"))
    assert set(final) == set(source)  # merged: no adapter tensors in the model directory
    changed = {k for k in source if not torch.equal(final[k], source[k])}
    assert any(k.startswith("tracker_model.memory_attention.") for k in changed)  # adapters merged in
    assert any(k.startswith("tracker_model.mask_decoder.") for k in changed)      # train_modules: fully trained
    assert not any(k.startswith(("detector_model.", "tracker_model.memory_encoder.")) for k in changed)
    # the neck is the detector's (neck_from_detector), frozen under LoRA
    for k in (k for k in source if k.startswith("tracker_neck.")):
        assert torch.equal(final[k], source["detector_model.vision_encoder.neck." + k[len("tracker_neck."):]]), k
    adapters = load_file(str(tmp_path / "lora" / "checkpoints" / "step-0000002" / "state" / "adapter.safetensors"))
    assert any(".lora_A." in k for k in adapters) and any(k.startswith("mask_decoder.") for k in adapters)

    # resume from step 2 in a copy of the run: the same final weights
    copy = tmp_path / "lora-resumed"
    shutil.copytree(tmp_path / "lora", copy)
    shutil.rmtree(copy / "final")
    shutil.rmtree(copy / "checkpoints" / "step-0000004")
    config["output_dir"] = str(copy)
    resumed = train(config_from_dict(config), resume=True)
    assert resumed.steps == 4
    a, b = tracker_weights(straight.final_model), tracker_weights(resumed.final_model)
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed LoRA tracker weights differ from the straight run by {worst}"


def test_clips_of_a_2_5d_model_carry_the_neighbour_slices(spheres):
    """context_mm 4 at 2 mm slices: a frame is (z - 2, z, z + 2) on red, green, blue, so the
    neighbour towards the clip's third frame equals that frame's green channel exactly (one flip
    and one intensity change per clip); with augmentation both neighbour orders are drawn."""
    from medsam3.train.tracker import ClipDataset, TrackerConfig

    manifest, _ = spheres
    config = TrackerConfig(clip_length=4, mask_prompt_probability=0.0)
    plain = ClipDataset(manifest, 112, config, augment=False)
    assert plain[0]["frames"].shape == (4, 3, 112, 112)

    def swapped(clip) -> bool:
        frames, order = clip["frames"], clip["meta"]["slices"]
        assert frames.shape == (4, 3, 112, 112)
        toward = 2 if order[2] == order[0] + 2 else 0  # the channel that holds slice order[2]
        if torch.equal(frames[0, toward], frames[2, 1]):
            return False
        assert torch.equal(frames[0, 2 - toward], frames[2, 1])
        return True

    stacked = ClipDataset(manifest, 112, config, augment=False, context_mm=4.0)
    for index in range(len(stacked)):
        clip = stacked[index]
        assert not swapped(clip)
        torch.testing.assert_close(clip["frames"][:, 1], plain[index]["frames"][:, 1])
    augmented = ClipDataset(manifest, 112, config, augment=True, context_mm=4.0)
    orders = []
    for epoch in range(8):
        augmented.set_epoch(epoch)
        orders += [swapped(augmented[index]) for index in range(len(augmented))]
    assert set(orders) == {False, True}
