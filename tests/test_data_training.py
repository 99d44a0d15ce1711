"""Training samples: slices, presence, instances and boxes, augmentations, sampling, cache,
inspect and preview, on small datasets converted from their layouts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image as PILImage
from helpers.data import make_busi, make_coco, save_png, write_volume

from medsam3.data import (
    BalancedSampler,
    PromptSegmentationDataset,
    SampleCache,
    balanced_weights,
    class_weighted,
    build_cache,
    collate_samples,
    convert_dataset,
    inspect_manifest,
    preview_manifest,
    read_manifest,
)
from medsam3.data.augment import allowed_flips, noisy_box, resize_to_canvas
from medsam3.data.instances import boxes_xyxy, connected_instances, split_instances, xyxy_to_cxcywh
from medsam3.data.summary import format_summary
from medsam3.errors import ArgumentError, InputError

LIVER_SLICES = [2, 3, 4, 5]
KIDNEY_SLICES = [4, 5, 6]


@pytest.fixture(scope="module")
def volume_manifest(tmp_path_factory):
    """nnU-Net dataset of 2 CT cases (10 x 32 x 32): liver (two blobs on slice 3), left kidney, ignore."""
    root = tmp_path_factory.mktemp("vol") / "Dataset010_Abdomen"
    for case in ("c1", "c2"):
        image = np.full((10, 32, 32), -1000, np.int16)
        image[1:9, 2:30, 2:30] = 0  # body; slices 0 and 9 are air only
        label = np.zeros(image.shape, np.uint8)
        label[2:6, 4:12, 4:14] = 1
        label[3, 20:24, 20:26] = 1  # a second liver piece on slice 3
        label[4:7, 16:22, 24:28] = 2
        label[8, 0:4, 0:4] = 255  # unannotated corner
        image[label == 1], image[label == 2] = 60, 150
        write_volume(root / "imagesTr" / f"{case}_0000.nii.gz", image)
        write_volume(root / "labelsTr" / f"{case}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "Kidney_L": 2, "ignore": 255},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return convert_dataset("nnunet", root, root.parent / "abdomen.jsonl", progress=False)


@pytest.fixture(scope="module")
def busi_manifest(tmp_path_factory):
    root = make_busi(tmp_path_factory.mktemp("busi") / "BUSI")
    return convert_dataset("folder2d", root, root.parent / "busi.jsonl", class_name="breast tumor",
                           modality="US", progress=False)


def samples_of(ds, name, count=None):
    return [ds[i] for i, (item, k) in enumerate(ds.index) if ds.targets[item][k][0] == name][:count]


def test_sample_dict_of_a_volume(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 64, split="train", augment=False, absent_probability=0.0,
                                   box_prompt_probability=0.0)
    assert len(ds) == 4  # 2 items x (liver, Kidney_L)
    s = samples_of(ds, "liver")[0]
    assert set(s) == {"image", "prompt", "class_name", "present", "semantic_mask", "instance_masks", "instance_map",
                      "boxes", "box_prompt", "negative_prompts", "positive_rows", "loss_mask", "meta"}
    assert s["positive_rows"] == []  # none asked for
    assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
    assert -1.0 <= s["image"].min() and s["image"].max() <= 1.0
    assert s["prompt"] == "liver" and s["class_name"] == "liver" and s["present"] is True
    assert s["semantic_mask"].shape == (64, 64) and s["semantic_mask"].dtype == torch.bool
    assert s["meta"]["slice_index"] in LIVER_SLICES and s["meta"]["source_shape"] == (32, 32)
    assert s["box_prompt"] is None and s["loss_mask"].all()
    kidney = samples_of(ds, "Kidney_L")[0]
    assert kidney["prompt"] == "left kidney" and kidney["meta"]["slice_index"] in KIDNEY_SLICES


def test_instances_and_boxes_are_exact(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 64, augment=False, absent_probability=0.0,
                                   box_prompt_probability=0.0)
    for epoch in range(8):  # find slice 3 with its two pieces
        ds.set_epoch(epoch)
        liver = [s for s in samples_of(ds, "liver") if s["meta"]["slice_index"] == 3]
        if liver:
            break
    s = liver[0]
    assert s["instance_masks"].shape == (2, 64, 64)
    # the volume's direction is diag(-1, -1, 1) (x runs to the patient's right, y anterior):
    # the radiological axial slice flips rows and columns, x -> 32 - x, y -> 32 - y; then
    # 32 -> 64 px: pixel boxes double; cx, cy, w, h normalised by 64
    expected = torch.tensor([[12, 16, 24, 24], [36, 40, 56, 56]], dtype=torch.float32)
    torch.testing.assert_close(s["boxes"], xyxy_to_cxcywh(expected, 64))
    assert torch.equal(s["semantic_mask"], s["instance_masks"].any(0))
    assert s["instance_masks"].sum((1, 2)).tolist() == [12 * 8, 20 * 16]
    assert s["instance_map"].dtype == torch.int32 and s["instance_map"].max() == 2
    for k in range(2):
        assert torch.equal(s["instance_map"] == k + 1, s["instance_masks"][k])
    # only the largest object when fewer queries are allowed; or the compact map alone
    ds = PromptSegmentationDataset(volume_manifest, 64, augment=False, absent_probability=0.0,
                                   max_instances=1, instance_masks=False)
    ds.set_epoch(epoch)
    one = [t for t in samples_of(ds, "liver") if t["meta"]["slice_index"] == 3][0]
    assert one["instance_masks"] is None and one["meta"]["instances_truncated"]
    assert one["instance_map"].max() == 1 and one["boxes"].shape == (1, 4)
    assert torch.equal(one["instance_map"] == 1, s["instance_masks"][1])  # the larger piece


def test_absent_samples_come_from_slices_without_the_class(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 32, augment=False, absent_probability=1.0)
    for epoch in range(3):
        ds.set_epoch(epoch)
        for s in samples_of(ds, "liver"):
            z = s["meta"]["slice_index"]
            assert not s["present"] and z not in LIVER_SLICES and z not in (0, 9)  # in the body, not air
            assert s["instance_masks"].shape == (0, 32, 32) and s["boxes"].shape == (0, 4)
            assert s["box_prompt"] is None and not s["semantic_mask"].any()


def test_negative_prompts_and_ignore_label(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 32, augment=False, absent_probability=1.0)
    seen = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        for s in samples_of(ds, "Kidney_L"):
            z = s["meta"]["slice_index"]
            seen.add(z)
            liver_here = z in LIVER_SLICES
            assert ("liver" in s["negative_prompts"]) == (not liver_here)
            if z == 8:  # the ignored corner (array x, y < 4; flipped in the axial stack) has no truth
                assert not s["loss_mask"][28:, 28:].any() and s["loss_mask"][:28, :28].all()
    assert 8 in seen


def test_box_prompts_are_noisy_ground_truth_boxes(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 64, augment=False, absent_probability=0.0,
                                   box_prompt_probability=1.0)
    cap = 20 * 64 / 1008 / 64 + 1e-6  # 20 px at 1008, as a fraction of the canvas
    for epoch in range(4):
        ds.set_epoch(epoch)
        for s in ds:
            assert s["box_prompt"] is not None
            cx, cy, w, h = s["box_prompt"].tolist()
            corners = torch.tensor([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
            gt = torch.cat([s["boxes"][:, :2] - s["boxes"][:, 2:] / 2, s["boxes"][:, :2] + s["boxes"][:, 2:] / 2], 1)
            assert ((gt - corners).abs().max(dim=1).values <= cap).any()


def test_noisy_box_limits():
    rng = np.random.default_rng(0)
    for _ in range(50):
        box = noisy_box(torch.tensor([10.0, 10.0, 200.0, 300.0]), rng, limit=400, canvas=1008)
        assert (box - torch.tensor([10.0, 10.0, 200.0, 300.0])).abs().max() <= 20.0
        assert 0 <= box[0] < box[2] <= 400 and 0 <= box[1] < box[3] <= 400


def test_augmentation_scale_pad_and_determinism(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 112, augment=True, absent_probability=0.0, seed=3)
    a, b = ds[0], ds[0]
    assert torch.equal(a["image"], b["image"]) and a["meta"] == b["meta"]  # reproducible per index
    sides = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        s = ds[0]
        side = s["meta"]["side"]
        sides.add(side)
        assert round(112 * 480 / 1008) <= side <= 112
        assert s["loss_mask"][:side, :side].sum() > 0 and not s["loss_mask"][side:].any()
        assert torch.all(s["image"][:, side:, :] == -1.0)  # black padding after (x - 0.5) / 0.5
        assert not s["semantic_mask"][side:].any() and not s["semantic_mask"][:, side:].any()
        assert s["meta"]["flipped"] == (False, False)  # CT with left/right classes: never flipped
    assert len(sides) > 1


def test_flips_follow_the_labels(busi_manifest):
    assert allowed_flips(None, "CT", False) == (False, False)
    assert allowed_flips(None, "US", False) == (True, False)
    assert allowed_flips(None, "RGB", False) == (True, True)
    assert allowed_flips("both", "RGB", True) == (False, False)
    assert allowed_flips("vertical", "CT", False) == (False, True)
    ds = PromptSegmentationDataset(busi_manifest, 48, augment=True, absent_probability=0.0,
                                   intensity_jitter=0.0, min_scale=1.0)
    flipped = set()
    for epoch in range(12):
        ds.set_epoch(epoch)
        s = ds[0]  # benign (1): a bright ellipse plus a small lesion in the top-left corner
        flipped.add(s["meta"]["flipped"])
        pixels = (s["image"][0] + 1) / 2
        inside = pixels[s["semantic_mask"]]
        assert inside.mean() > 0.5 or s["semantic_mask"].sum() < 40  # the mask moved with the image
        corner = s["instance_masks"][s["instance_masks"].sum((1, 2)).argmin()]
        ys, xs = torch.nonzero(corner, as_tuple=True)
        assert (xs.float().mean() > 24) == s["meta"]["flipped"][0]
    assert flipped == {(False, False), (True, False)}  # ultrasound: horizontal flips only


def test_2d_absent_samples_and_prompt_variants(busi_manifest, volume_manifest):
    ds = PromptSegmentationDataset(busi_manifest, 32, augment=False)
    normal = [s for s in ds if s["meta"]["item_id"].endswith("normal (1)")]
    assert len(normal) == 1 and not normal[0]["present"]  # empty mask: absent by itself
    ds = PromptSegmentationDataset(volume_manifest, 32, augment=True, absent_probability=0.0,
                                   prompt_variation=1.0)
    prompts = set()
    for epoch in range(10):
        ds.set_epoch(epoch)
        prompts.update(s["prompt"] for s in samples_of(ds, "Kidney_L"))
    assert len(prompts) > 2 and prompts <= {"left kidney", "kidney, left", "kidney (left)", "left-sided kidney",
                                           "left renal parenchyma", "renal parenchyma, left",
                                           "renal parenchyma (left)", "left-sided renal parenchyma"}


def test_collate_and_dataloader(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 32, augment=True)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_samples,
                                         sampler=BalancedSampler(ds, num_samples=6, seed=1))
    batches = list(loader)
    assert len(batches) == 2
    b = batches[0]
    assert b["image"].shape == (3, 3, 32, 32) and b["semantic_mask"].shape == (3, 32, 32)
    assert b["present"].dtype == torch.bool and len(b["prompt"]) == 3 and len(b["boxes"]) == 3
    assert b["instance_map"].shape == (3, 32, 32)


def test_balanced_weights_and_sampler(volume_manifest, busi_manifest):
    w = balanced_weights([("CT", "a"), ("CT", "a"), ("CT", "b"), ("MR", "c")])
    np.testing.assert_allclose(w, [1 / 8, 1 / 8, 1 / 4, 1 / 2])
    # MR weighted 3: MR gets 3/4 of the draws, CT's 1/4 still split between its datasets
    w = balanced_weights([("CT", "a"), ("CT", "a"), ("CT", "b"), ("MR", "c")], {"MR": 3})
    np.testing.assert_allclose(w, [1 / 16, 1 / 16, 1 / 8, 3 / 4])
    ds = PromptSegmentationDataset(volume_manifest, 32)
    sampler = BalancedSampler(ds, num_samples=4000, by=("dataset",), seed=0)
    first = list(sampler)
    assert first == list(sampler)  # same epoch, same order
    sampler.set_epoch(1)
    assert first != list(sampler)
    assert len(first) == 4000 and set(first) == {0, 1, 2, 3}
    with pytest.raises(ArgumentError, match="without replacement"):
        BalancedSampler(ds, num_samples=10, replacement=False)


def test_class_weights_scale_a_class_share(volume_manifest):
    ds = PromptSegmentationDataset(volume_manifest, 32)
    classes = ds.index_classes()
    assert len(classes) == len(ds) and sorted(set(classes)) == ["Kidney_L", "liver"]
    assert [ds.targets[i][k][0] for i, k in ds.index] == classes
    w = class_weighted(classes, {"Kidney_L": 3})
    kidney = np.array([c == "Kidney_L" for c in classes])
    assert w.sum() == pytest.approx(1.0) and w[kidney].sum() == pytest.approx(0.75)  # 2 x 3 / (2 x 3 + 2)
    # on top of balanced weights: each item's share stays, its classes split it 3:1
    base = balanced_weights(ds.group_keys(("dataset", "case")))
    w = class_weighted(classes, {"Kidney_L": 3}, base)
    np.testing.assert_allclose(w[kidney], 3 * w[~kidney])
    np.testing.assert_allclose(w[kidney] + w[~kidney], base[kidney] + base[~kidney])
    with pytest.raises(ArgumentError, match=r"names \['spleen'\], which no training item labels; classes: "
                                            r"Kidney_L, liver"):
        class_weighted(classes, {"spleen": 2})
    with pytest.raises(ArgumentError, match="must be > 0"):
        class_weighted(classes, {"liver": 0})


def test_connected_instances_and_boxes():
    mask = np.zeros((6, 7), bool)
    mask[0:2, 0:2] = True
    mask[2, 2] = True  # touches the first block diagonally: same object (8-connectivity)
    mask[4:6, 5:7] = True
    labels = connected_instances(mask)
    assert labels.max() == 2 and labels[2, 2] == labels[0, 0]
    masks, truncated = split_instances(torch.from_numpy(labels), max_instances=1)
    assert truncated and masks.shape == (1, 6, 7) and masks[0, 0, 0]  # the larger one is kept
    boxes = boxes_xyxy(split_instances(torch.from_numpy(labels))[0])
    assert boxes.tolist() == [[0, 0, 3, 3], [5, 4, 7, 6]]
    assert connected_instances(np.zeros((3, 3), bool)).max() == 0
    image, (m,) = resize_to_canvas(np.ones((4, 4), np.float32), [np.eye(4, dtype=np.int32)], 8, 10)
    assert image.shape == (3, 10, 10) and image[:, :8, :8].min() == 1 and image[:, 8:].max() == 0
    assert m.dtype == torch.int32 and m[:8, :8].sum() == 16


def test_coco_instances_are_kept(tmp_path):
    root, facts = make_coco(tmp_path / "coco")
    m = convert_dataset("coco", root, tmp_path / "c.jsonl", progress=False)
    ds = PromptSegmentationDataset(m, 40, augment=False, absent_probability=0.0)
    s = [s for s in ds if s["meta"]["item_id"].endswith("/1") and s["class_name"] == "coronary artery"][0]
    assert s["present"] and s["instance_masks"].shape[0] == 1  # one annotation with two pieces: one object
    _, (expected,) = resize_to_canvas(np.zeros((30, 40)), [facts["blob"]], 40, 40)  # nearest: 30 x 40 -> 40 x 40
    assert torch.equal(s["semantic_mask"], expected)
    s = [s for s in ds if s["meta"]["item_id"].endswith("/1") and s["class_name"] == "stenosis"][0]
    assert s["prompt"] == "stenosis" and s["negative_prompts"] == []  # both classes are in image 1


# --- cache --------------------------------------------------------------------------------

def test_cache_gives_the_same_samples(volume_manifest, busi_manifest, tmp_path):
    cache_dir = build_cache(volume_manifest, tmp_path / "cache", progress=False, shard_size_mb=0.005)
    shards = sorted(p.name for p in cache_dir.glob("shard-*.bin"))
    assert shards == ["shard-00000.bin", "shard-00001.bin"]  # one 10 KB item per 5 KB shard
    cache = SampleCache(cache_dir)
    assert len(cache) == 2
    plain = PromptSegmentationDataset(volume_manifest, 32, augment=True, seed=5)
    cached = PromptSegmentationDataset(volume_manifest, 32, augment=True, seed=5, cache=cache_dir)
    for k in range(len(plain)):
        a, b = plain[k], cached[k]
        assert a["meta"] == b["meta"] and a["prompt"] == b["prompt"]
        assert torch.equal(a["semantic_mask"], b["semantic_mask"])
        assert (a["image"] - b["image"]).abs().max() <= 2 / 255 + 1e-6  # uint8 storage
    # 2D items with RGB pictures cache too
    build_cache(busi_manifest, tmp_path / "busi_cache", progress=False)
    assert len(PromptSegmentationDataset(busi_manifest, 32, cache=tmp_path / "busi_cache")[0]["prompt"]) > 0


def test_cache_is_checked_and_replaced_atomically(volume_manifest, tmp_path):
    cache_dir = build_cache(volume_manifest, tmp_path / "cache", progress=False, split="train")
    changed = read_manifest(volume_manifest.path)
    changed.items[0].labels = {"1": "hepar", "2": "Kidney_L"}
    with pytest.raises(InputError, match="stale"):
        PromptSegmentationDataset(changed, 32, cache=cache_dir)[0]
    build_cache(changed, cache_dir, progress=False)  # rebuilt over the old one
    with pytest.warns(UserWarning, match="'hepar' matches no concept"):
        sample = PromptSegmentationDataset(changed, 32, cache=cache_dir, absent_probability=0)[0]
    assert sample["prompt"] == "hepar" and sample["present"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary directories left
    other = tmp_path / "not_a_cache"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(ArgumentError, match="not a medsam3 cache"):
        build_cache(volume_manifest, other, progress=False)
    with pytest.raises(InputError, match="no index.json"):
        SampleCache(other)


# --- inspect and preview ------------------------------------------------------------------

def test_inspect_counts(volume_manifest, busi_manifest):
    summary = inspect_manifest(volume_manifest, scan=True, progress=False)
    assert summary["items"] == 2 and summary["by_split"] == {"train": 2} and summary["by_modality"] == {"CT": 2}
    liver = summary["classes"]["liver"]
    assert liver["prompt"] == "liver" and liver["known"] and liver["items"] == 2
    assert liver["items_present"] == 2 and liver["slices_present"] == 8
    assert liver["pixels"] == 2 * (4 * 8 * 10 + 4 * 6)
    assert summary["classes"]["Kidney_L"]["prompt"] == "left kidney"
    assert summary["sizes"]["3D"]["z"] == {"min": 10, "median": 10, "max": 10}
    text = format_summary(summary)
    assert "Dataset010_Abdomen" in text and "left kidney" in text
    busi = inspect_manifest(busi_manifest, scan=True, progress=False)
    assert busi["classes"]["breast tumor"]["items"] == 4 and busi["classes"]["breast tumor"]["items_present"] == 3


def test_cache_moves_with_its_data(volume_manifest, tmp_path):
    """The data and its cache copied to another directory (new absolute paths, new file times,
    as after rsync to a GPU machine) still read from the cache; a file edited there does not."""
    import shutil

    from medsam3.data.cache import item_fingerprint
    from medsam3.data.manifest import write_manifest

    cache_dir = build_cache(volume_manifest, tmp_path / "cache", progress=False, split="train")
    root = volume_manifest.root
    moved = tmp_path / "elsewhere"
    shutil.copytree(root, moved / root.name, copy_function=shutil.copy)  # bytes, not times
    shutil.copytree(cache_dir, moved / "cache", copy_function=shutil.copy)
    write_manifest(volume_manifest.items, moved / "abdomen.jsonl", root=moved / root.name)
    copied = read_manifest(moved / "abdomen.jsonl")
    cache, copied_cache = SampleCache(cache_dir), SampleCache(moved / "cache")
    item = copied.select(split="train").items[0]
    stored = copied_cache.index["items"][item.id]
    # the fast check (paths, sizes, times) alone would call it stale
    assert item_fingerprint(copied, item, copied_cache.window, copied_cache.image_dtype) != stored["fingerprint"]
    a, b = cache.load(volume_manifest, item), copied_cache.load(copied, item)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    s1 = PromptSegmentationDataset(volume_manifest, 32, seed=3, cache=cache_dir)[0]
    s2 = PromptSegmentationDataset(copied, 32, seed=3, cache=moved / "cache")[0]
    assert s1["prompt"] == s2["prompt"] and torch.equal(s1["image"], s2["image"])
    # an edit that keeps the file's size is caught, also after the item was verified once
    label = copied.resolve(item.label)
    data = bytearray(label.read_bytes())
    data[len(data) // 2] ^= 0xFF
    label.write_bytes(bytes(data))
    with pytest.raises(InputError, match=f"stale for {item.id!r}"):
        copied_cache.load(copied, item)
    with pytest.raises(InputError, match="stale"):
        SampleCache(moved / "cache").load(copied, item)


def test_preview_png(volume_manifest, busi_manifest, tmp_path):
    path = preview_manifest(volume_manifest, tmp_path / "grid.png", count=4, columns=2, progress=False)
    with PILImage.open(path) as png:
        assert png.format == "PNG" and png.size[0] == 630  # 2 tiles of 3 in + margins, 100 dpi
    path = preview_manifest(busi_manifest, tmp_path / "busi.png", count=3, seed=None, progress=False)
    assert path.stat().st_size > 1000
    with pytest.raises(ArgumentError, match=".png"):
        preview_manifest(busi_manifest, tmp_path / "grid.jpg", progress=False)


def test_dataset_arguments_are_checked(volume_manifest):
    with pytest.raises(ArgumentError, match="no labelled items in split 'val'"):
        PromptSegmentationDataset(volume_manifest, 32, split="val")
    with pytest.raises(ArgumentError, match="absent_probability"):
        PromptSegmentationDataset(volume_manifest, 32, absent_probability=2)
    with pytest.raises(IndexError):
        PromptSegmentationDataset(volume_manifest, 32)[99]


def test_unlabelled_pictures_are_left_out(tmp_path):
    root = tmp_path / "pics"
    save_png(root / "images" / "a.png", np.zeros((8, 8), np.uint8))
    save_png(root / "masks" / "a.png", np.eye(8, dtype=np.uint8))
    m = convert_dataset("folder2d", root, None, class_name="cell", progress=False)
    m.items[0].label = None
    with pytest.raises(ArgumentError, match="no labelled items"):
        PromptSegmentationDataset(m, 32)


def test_positive_prompts_add_rows_for_other_classes_present(volume_manifest):
    from medsam3.train.batch import RowCollator
    from medsam3.model.tokenizer import build_tokenizer

    ds = PromptSegmentationDataset(volume_manifest, 32, augment=False, absent_probability=0.0,
                                   box_prompt_probability=0.0, max_positive_prompts=2, max_negative_prompts=0)
    for epoch in range(10):
        ds.set_epoch(epoch)
        for s in samples_of(ds, "liver"):
            z = s["meta"]["slice_index"]
            others = [r["class_name"] for r in s["positive_rows"]]
            assert others == (["left kidney"] if z in KIDNEY_SLICES else []) or others == (
                ["Kidney_L"] if z in KIDNEY_SLICES else [])
            for row in s["positive_rows"]:
                assert row["semantic_mask"].any() and torch.equal(row["semantic_mask"], row["instance_masks"].any(0))
                assert not (row["semantic_mask"] & s["semantic_mask"]).any()  # liver and kidney do not overlap
            if others:
                batch = RowCollator(build_tokenizer(), negative_prompts=0)([s])
                assert batch.prompts == ["liver", "left kidney"] and [t.present for t in batch.targets] == [True, True]
                assert torch.equal(batch.targets[1].semantic, s["positive_rows"][0]["semantic_mask"])
                return
    pytest.fail("no liver sample on a kidney slice was drawn")


def _one_mr_volume(root, image, label, class_name):
    """A one-case nnU-Net MR dataset (1 mm voxels) labelling ``class_name`` as 1, as a manifest."""
    write_volume(root / "imagesTr" / "c1_0000.nii.gz", image, spacing=(1.0, 1.0, 1.0))
    write_volume(root / "labelsTr" / "c1.nii.gz", label, spacing=(1.0, 1.0, 1.0))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, class_name: 1}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    return convert_dataset("nnunet", root, root.parent / f"{root.name}.jsonl", progress=False)


def test_small_slice_bias_draws_a_structures_small_ends_more_often(tmp_path):
    """A class 2 px wide on slice 1 and 36 x 36 on slices 2-6: uniformly slice 1 comes up 1/6 of
    the time; with weights 1 / sqrt(area) 0.707 / (0.707 + 5 / 36) = 84 %."""
    image = np.zeros((8, 40, 40), np.int16)
    image[1:7, 2:38, 2:38] = 100
    label = np.zeros(image.shape, np.uint8)
    label[1, 10, 10:12] = 1
    label[2:7, 2:38, 2:38] = 1
    manifest = _one_mr_volume(tmp_path / "Dataset011_Ends", image, label, "brain")

    def share_of_slice_1(bias):
        ds = PromptSegmentationDataset(manifest, 32, augment=False, absent_probability=0.0, small_slice_bias=bias)
        drawn = []
        for epoch in range(400):
            ds.set_epoch(epoch)
            s = ds[0]
            assert s["present"] and s["semantic_mask"].any()
            drawn.append(s["meta"]["slice_index"])
        assert set(drawn) <= {1, 2, 3, 4, 5, 6}
        return np.mean(np.asarray(drawn) == 1)

    assert abs(share_of_slice_1(0.0) - 1 / 6) < 0.06
    assert abs(share_of_slice_1(1.0) - 0.836) < 0.06
    assert abs(share_of_slice_1(0.5) - (0.836 + 1 / 6) / 2) < 0.07
    with pytest.raises(ArgumentError, match="small_slice_bias"):
        PromptSegmentationDataset(manifest, 32, small_slice_bias=1.5)


def test_near_absent_bias_draws_absent_slices_next_to_the_structure(tmp_path):
    """A class on slices 18-21 of 40 (1 mm), head on slices 1-38: absent slices come uniformly from
    the 34 others (6 of them within 3 mm: 18 %), with near_absent_bias 1 only from those 6."""
    image = np.zeros((40, 24, 24), np.int16)
    image[1:39, 2:22, 2:22] = 100
    label = np.zeros(image.shape, np.uint8)
    label[18:22, 8:14, 8:14] = 1
    manifest = _one_mr_volume(tmp_path / "Dataset012_Near", image, label, "hippocampus")
    near = {15, 16, 17, 22, 23, 24}

    def share_near(bias):
        ds = PromptSegmentationDataset(manifest, 32, augment=False, absent_probability=1.0,
                                       near_absent_bias=bias, near_absent_mm=3)
        drawn = []
        for epoch in range(300):
            ds.set_epoch(epoch)
            s = ds[0]
            assert not s["present"] and not s["semantic_mask"].any()
            drawn.append(s["meta"]["slice_index"])
        assert set(drawn) <= set(range(1, 18)) | set(range(22, 39))
        if bias == 1.0:
            assert set(drawn) == near  # 3 mm of 1 mm slices: 3 on each side, no more
        return np.mean([d in near for d in drawn])

    assert abs(share_near(0.0) - 6 / 34) < 0.07
    assert share_near(1.0) == 1.0
    assert abs(share_near(0.5) - (1 + 6 / 34) / 2) < 0.08
    with pytest.raises(ArgumentError, match="near_absent_bias"):
        PromptSegmentationDataset(manifest, 32, near_absent_bias=2)
    with pytest.raises(ArgumentError, match="near_absent_mm"):
        PromptSegmentationDataset(manifest, 32, near_absent_mm=0)


def test_context_mm_feeds_a_slice_with_its_neighbours(tmp_path):
    """2.5D samples: slice z with slices z -/+ round(context_mm / spacing) on red / blue (the
    ends repeat), both orders drawn with augmentation; 2D images stay grey."""
    from medsam3.io import read_image
    from medsam3.preprocess import normalize_intensity

    root = tmp_path / "Dataset012_Context"
    image = (np.arange(1, 9, dtype=np.int16) * 10)[:, None, None] * np.ones((8, 24, 24), np.int16)
    label = np.zeros(image.shape, np.uint8)
    label[:, 6:18, 6:18] = 1
    write_volume(root / "imagesTr" / "c1_0000.nii.gz", image)  # slices 2.5 mm apart
    write_volume(root / "labelsTr" / "c1.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MR"}, "labels": {"background": 0, "brain": 1}, "numTraining": 1,
        "file_ending": ".nii.gz"}))
    manifest = convert_dataset("nnunet", root, tmp_path / "context.jsonl", progress=False)
    levels = normalize_intensity(read_image(root / "imagesTr" / "c1_0000.nii.gz"), "MR")[:, 0, 0]

    ds = PromptSegmentationDataset(manifest, 32, augment=False, absent_probability=0.0, context_mm=5.0)
    seen = set()
    for epoch in range(30):
        ds.set_epoch(epoch)
        s = ds[0]
        z = s["meta"]["slice_index"]
        seen.add(z)
        channels = (s["image"][:, 4, 4] * 0.5 + 0.5).numpy()  # undo (x - 0.5) / 0.5
        expected = levels[[max(z - 2, 0), z, min(z + 2, 7)]]
        np.testing.assert_allclose(channels, expected, atol=1e-5)
    assert len(seen) > 3
    orders = set()
    augmented = PromptSegmentationDataset(manifest, 32, augment=True, absent_probability=0.0, context_mm=5.0,
                                          intensity_jitter=0.0, min_scale=1.0)
    for epoch in range(30):
        augmented.set_epoch(epoch)
        s = augmented[0]
        z = s["meta"]["slice_index"]
        if 2 <= z <= 5:  # both neighbours inside the stack
            red, blue = (s["image"][[0, 2], 4, 4] * 0.5 + 0.5).numpy()
            orders.add("up" if red < blue else "down")
    assert orders == {"up", "down"}
    with pytest.raises(ArgumentError, match="context_mm"):
        PromptSegmentationDataset(manifest, 32, context_mm=-1)
