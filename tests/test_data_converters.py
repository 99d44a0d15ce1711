"""Every layout converter on tiny datasets written in that exact layout, and bad layouts refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers.data import (
    make_busi,
    make_coco,
    make_isic,
    make_kvasir,
    make_msd,
    make_nnunet,
    make_npz,
    phantom,
    picture,
    save_jpeg,
    save_png,
    write_volume,
)

from medsam3.data import convert_dataset, read_manifest
from medsam3.data.layouts.atlas import read_label_names
from medsam3.data.layouts.coco import polygons_to_mask, rle_decode, rle_encode
from medsam3.data.loading import load_item
from medsam3.errors import ArgumentError, InputError


def convert(layout, root, tmp_path, **kw):
    return convert_dataset(layout, root, tmp_path / "out.jsonl", progress=False, **kw)


# --- nnU-Net ------------------------------------------------------------------------------

def test_nnunet_v2_channels_regions_and_test_labels(tmp_path):
    root = make_nnunet(tmp_path / "Dataset001_Liver")
    m = convert("nnunet", root, tmp_path)
    ids = [it.id for it in m]
    assert ids[:2] == ["Dataset001_Liver/case_a/0", "Dataset001_Liver/case_a/1"]
    assert len(m) == 8  # 3 training + 1 labelled test case, 2 channels each
    first = m[0]
    assert first.image == "imagesTr/case_a_0000.nii.gz" and first.label == "labelsTr/case_a.nii.gz"
    assert first.labels == {"1": "liver", "2": "liver tumor"}
    assert first.regions == {"whole liver": [1, 2]}
    assert [it.modality for it in m[:2]] == ["CT", "MR"]  # channel names "CT", "T2"
    assert first.dim == 3 and first.shape == [6, 24, 20]
    np.testing.assert_allclose(first.spacing, [0.8, 0.8, 2.5])
    assert {it.split for it in m if it.case == "case_t"} == {"test"}
    # the manifest on disk reads back the same, and items load on their grid
    back = read_manifest(tmp_path / "out.jsonl")
    assert [it.to_json() for it in back] == [it.to_json() for it in m]
    loaded = load_item(back, back[0])
    _, label = phantom()
    # volumes load as the predictor's radiological axial stack (phantoms are LPS diag(-1, -1, 1))
    np.testing.assert_array_equal(loaded.label, label[:, ::-1, ::-1])
    assert loaded.image.dtype == np.float32 and 0 <= loaded.image.min() and loaded.image.max() <= 1
    assert back[0].targets() == [("liver", (1,)), ("liver tumor", (2,)), ("whole liver", (1, 2))]


def test_nnunet_v1_task_and_channel_selection_and_class_map(tmp_path):
    root = make_nnunet(tmp_path / "Task002_Heart", channels=("MRI",), labels={"0": "background", "1": "left atrium"},
                       test_cases=())
    meta = json.loads((root / "dataset.json").read_text())
    meta["modality"] = meta.pop("channel_names")
    del meta["file_ending"]
    meta["training"] = [{"image": "./imagesTr/case_a.nii.gz", "label": "./labelsTr/case_a.nii.gz"}]
    meta["numTraining"] = 3
    (root / "dataset.json").write_text(json.dumps(meta))
    m = convert("nnunet", root, tmp_path, class_map={"left atrium": "LA cavity"}, val_fraction=0.5, seed=1)
    assert len(m) == 3 and m[0].id == "Task002_Heart/case_a" and m[0].modality == "MR"
    assert m[0].labels == {"1": "LA cavity"}
    assert {it.split for it in m} <= {"train", "val"}
    # splits come from a hash of the case: the same seed gives the same split
    again = convert("nnunet", root, tmp_path, val_fraction=0.5, seed=1)
    assert [it.split for it in again] == [it.split for it in m]
    two = make_nnunet(tmp_path / "Dataset003_Two", test_cases=())
    assert [it.id for it in convert("nnunet", two, tmp_path, channels=[1])] == [
        "Dataset003_Two/case_a/1", "Dataset003_Two/case_b/1", "Dataset003_Two/case_c/1"]


def test_nnunet_2d_rgb_png(tmp_path):
    root = tmp_path / "Dataset120_Roads"
    for case in ("r1", "r2"):
        image, mask = picture(1)
        save_png(root / "imagesTr" / f"{case}_0000.png", image)
        save_png(root / "labelsTr" / f"{case}.png", (mask > 0).astype(np.uint8))
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1},
        "numTraining": 2, "file_ending": ".png"}))
    m = convert("nnunet", root, tmp_path)
    assert [it.id for it in m] == ["Dataset120_Roads/r1", "Dataset120_Roads/r2"]
    assert m[0].rgb and m[0].modality == "RGB" and m[0].dim == 2 and m[0].shape == [40, 48]
    assert load_item(m, m[0]).image.shape == (40, 48, 3)


@pytest.mark.parametrize("damage, message", [
    ("no_json", "no dataset.json"),
    ("missing_label", "no label for image case"),
    ("orphan_label", "have no image"),
    ("missing_channel", "declares 2"),
    ("num_training", "numTraining is 9"),
    ("spacing", "differ in spacing"),
    ("origin", "differ in origin"),
    ("shape", "differ in shape"),
    ("no_channel_suffix", "--layout msd"),
    ("wrong_ending", "do not end in .nii.gz"),
])
def test_nnunet_bad_layouts_are_refused(tmp_path, damage, message):
    root = make_nnunet(tmp_path / "Dataset004_Bad", test_cases=())
    tr, lab = root / "imagesTr", root / "labelsTr"
    image, label = phantom()
    if damage == "no_json":
        (root / "dataset.json").unlink()
    elif damage == "missing_label":
        (lab / "case_b.nii.gz").unlink()
    elif damage == "orphan_label":
        write_volume(lab / "case_z.nii.gz", label)
    elif damage == "missing_channel":
        (tr / "case_c_0001.nii.gz").unlink()
    elif damage == "num_training":
        meta = json.loads((root / "dataset.json").read_text())
        meta["numTraining"] = 9
        (root / "dataset.json").write_text(json.dumps(meta))
    elif damage == "spacing":
        write_volume(lab / "case_b.nii.gz", label, spacing=(0.8, 0.8, 3.0))
    elif damage == "origin":
        write_volume(lab / "case_b.nii.gz", label, origin=(12.0, -20.0, 5.0))
    elif damage == "shape":
        write_volume(lab / "case_b.nii.gz", label[:, :20])
    elif damage == "no_channel_suffix":
        shutil.move(tr / "case_a_0000.nii.gz", tr / "case_a.nii.gz")
    elif damage == "wrong_ending":
        write_volume(tr / "case_q_0000.nrrd", image)
    with pytest.raises(InputError, match=message) as info:
        convert("nnunet", root, tmp_path)
    assert str(root) in str(info.value) or "case" in str(info.value)
    assert not (tmp_path / "out.jsonl").exists()  # nothing half-written


def test_nnunet_geometry_check_can_be_relaxed_and_root_with_several_datasets(tmp_path):
    root = make_nnunet(tmp_path / "raw" / "Dataset005_X", test_cases=())
    _, label = phantom()
    write_volume(root / "labelsTr" / "case_a.nii.gz", label, origin=(11.0, -20.0, 5.0))
    assert len(convert("nnunet", root, tmp_path, check_geometry=False)) == 6
    make_nnunet(tmp_path / "raw" / "Dataset006_Y", test_cases=())
    with pytest.raises(InputError, match="several datasets.*Dataset005_X"):
        convert("nnunet", tmp_path / "raw", tmp_path)
    with pytest.raises(InputError, match="no such directory"):
        convert("nnunet", tmp_path / "nowhere", tmp_path)


# --- Decathlon ----------------------------------------------------------------------------

def test_msd_task_ignores_macos_forks(tmp_path):
    root = make_msd(tmp_path / "Task09_Spleen")
    m = convert("msd", root, tmp_path)
    assert [it.id for it in m] == ["Task09_Spleen/spleen_1", "Task09_Spleen/spleen_2"]
    assert m[0].labels == {"1": "spleen", "2": "cancer"} and m[0].modality == "CT"
    assert m[0].image == "imagesTr/spleen_1.nii.gz"
    np.testing.assert_array_equal(load_item(m, m[1]).label, phantom(seed=1)[1][:, ::-1, ::-1])


def test_msd_4d_task_gives_one_item_per_modality(tmp_path):
    root = make_msd(tmp_path / "Task01_BrainTumour", cases=("BRATS_001",),
                    modalities=("FLAIR", "T1w", "t1gd", "T2w"), four_d=True)
    m = convert("msd", root, tmp_path)
    assert [it.id for it in m] == [f"Task01_BrainTumour/BRATS_001/{c}" for c in range(4)]
    assert [it.channel for it in m] == [0, 1, 2, 3] and {it.modality for it in m} == {"MR"}
    assert [it.channel_name for it in m] == ["FLAIR", "T1w", "t1gd", "T2w"]
    assert m[0].shape == [6, 24, 20] and len({it.case for it in m}) == 1
    from medsam3.io import read_image
    import inspect

    if "channel" in inspect.signature(read_image).parameters:  # medsam3.io reads one channel
        assert load_item(m, m[2]).image.shape == (6, 24, 20)
    else:
        with pytest.raises(InputError, match="channel 2 of .*BRATS_001"):
            load_item(m, m[2])


def test_msd_bad_layouts(tmp_path):
    root = make_msd(tmp_path / "Task10_Colon")
    (root / "labelsTr" / "spleen_2.nii.gz").unlink()
    with pytest.raises(InputError, match="missing: labelsTr/spleen_2.nii.gz"):
        convert("msd", root, tmp_path)
    nn = make_nnunet(tmp_path / "Dataset007_NN", test_cases=())
    with pytest.raises(InputError, match="--layout nnunet"):
        convert("msd", nn, tmp_path)
    four = make_msd(tmp_path / "Task05_Prostate", modalities=("T2", "ADC", "DWI"), four_d=False)
    meta = json.loads((four / "dataset.json").read_text())
    write_volume(four / "imagesTr" / "spleen_1.nii.gz", np.stack([phantom()[0]] * 2))
    with pytest.raises(InputError, match="2 channel.*declares 3 modalities"):
        convert("msd", four, tmp_path)
    del meta


# --- 2D folders ---------------------------------------------------------------------------

def test_folder2d_kvasir_jpeg_masks(tmp_path):
    root = make_kvasir(tmp_path / "Kvasir-SEG")
    m = convert("folder2d", root, tmp_path, class_name="polyp", val_fraction=0.34)
    assert [it.id for it in m] == [f"Kvasir-SEG/cju{k:04d}" for k in range(3)]
    assert m[0].image == "images/cju0000.jpg" and m[0].label == "masks/cju0000.jpg"
    assert m[0].label_format == "mask" and m[0].labels == {"1": "polyp"} and m[0].modality == "RGB"
    loaded = load_item(m, m[0])
    _, mask = picture(0)
    # JPEG blurs the mask edges; thresholding at half the maximum recovers it nearly exactly
    assert np.mean(loaded.label.astype(bool) == (mask > 0)) > 0.98
    assert set(np.unique(loaded.label)) == {0, 1}


def test_folder2d_busi_masks_beside_images_with_extra_masks(tmp_path):
    root = make_busi(tmp_path / "Dataset_BUSI_with_GT")
    m = convert("folder2d", root, tmp_path, class_name="breast tumor", modality="US")
    by_id = {it.case: it for it in m}
    assert sorted(by_id) == ["benign/benign (1)", "benign/benign (2)", "malignant/malignant (1)", "normal/normal (1)"]
    first = by_id["benign/benign (1)"]
    assert first.label == ["benign/benign (1)_mask.png", "benign/benign (1)_mask_1.png"]
    label = load_item(m, first).label
    _, mask = picture(1)
    assert label[3, 3] == 1 and label.sum() == (mask > 0).sum() + 16  # OR of both masks
    assert load_item(m, by_id["normal/normal (1)"]).label.sum() == 0  # normal: class absent
    assert first.modality == "US"


def test_folder2d_isic_named_folders_and_suffix(tmp_path):
    root = make_isic(tmp_path / "isic")
    m = convert("folder2d", root, tmp_path, class_name="skin lesion",
                images_dir="ISIC2018_Task1-2_Training_Input", masks_dir="ISIC2018_Task1_Training_GroundTruth")
    assert [it.case for it in m] == ["ISIC_0000000", "ISIC_0000001"]
    assert m[1].label == "ISIC2018_Task1_Training_GroundTruth/ISIC_0000001_segmentation.png"
    # found by name too: "Input" and "GroundTruth" folders pair up
    assert [it.case for it in convert("folder2d", root, tmp_path, class_name="skin lesion")] == [
        "ISIC_0000000", "ISIC_0000001"]


def test_folder2d_label_maps_colours_and_splits_from_folders(tmp_path):
    root = tmp_path / "ps"
    for split in ("Train", "Test"):
        img = np.zeros((16, 16), np.uint8)
        lab = np.zeros((16, 16), np.uint8)
        lab[2:5, 2:5], lab[8:12, 8:12] = 1, 2
        save_png(root / split / "image_mha" / "00001.png", img + 50)
        save_png(root / split / "label_mha" / "00001.png", lab)
    m = convert("folder2d", root, tmp_path, images_dir="image_mha", masks_dir="label_mha",
                labels={"1": "pubic symphysis", "2": "fetal head"})
    assert [(it.case, it.split) for it in m] == [("Test/00001", "test"), ("Train/00001", "train")]
    assert m[0].label_format == "map" and m[0].rgb is False
    np.testing.assert_array_equal(np.unique(load_item(m, m[0]).label), [0, 1, 2])

    col = tmp_path / "bkai"
    image, mask = picture(2)
    rgb_mask = np.zeros(image.shape, np.uint8)
    rgb_mask[mask > 0] = (250, 5, 3)  # red-ish after compression: nearest colour wins
    rgb_mask[:4, :4] = (0, 255, 0)
    save_jpeg(col / "train" / "a.jpeg", image)
    save_jpeg(col / "train_gt" / "a.jpeg", rgb_mask, quality=95)
    m = convert("folder2d", col, tmp_path, images_dir="train", masks_dir="train_gt",
                colors={"neoplastic polyp": [255, 0, 0], "non-neoplastic polyp": [0, 255, 0]})
    assert m[0].labels == {"1": "neoplastic polyp", "2": "non-neoplastic polyp"}
    label = load_item(m, m[0]).label
    assert np.mean(label[mask > 0] == 1) > 0.97 and np.all(label[1:3, 1:3] == 2)


def test_folder2d_tn3k_style_named_pairs(tmp_path):
    root = tmp_path / "tn3k"
    for part in ("trainval", "test"):
        image, mask = picture(0, rgb=False)
        save_jpeg(root / f"{part}-image" / "0001.jpg", image)
        save_jpeg(root / f"{part}-mask" / "0001.jpg", mask)
    m = convert("folder2d", root, tmp_path, class_name="thyroid nodule")
    assert sorted((it.case, it.split) for it in m) == [("test-image/0001", "test"), ("trainval-image/0001", "train")]
    assert sorted(it.label for it in m) == ["test-mask/0001.jpg", "trainval-mask/0001.jpg"]


@pytest.mark.parametrize("damage, error, message", [
    ("no_class", ArgumentError, "carry no class name"),
    ("orphan_mask", InputError, "match no image"),
    ("no_mask", InputError, r"have no mask"),
    ("size", InputError, "differ in shape"),
    ("nothing", InputError, "no image/mask pairs"),
    ("bmp", InputError, "cannot read.*convert to PNG|convert them to PNG"),
    ("two_mask_dirs", InputError, "several mask folders"),
    ("ignore_without_colors", ArgumentError, "ignore_colors goes with colors"),
    ("bad_ignore_colour", ArgumentError, r"ignore_colors must be \[r, g, b\]"),
    ("case_pattern_without_group", ArgumentError, "needs a group naming the case"),
    ("case_pattern_not_matching", InputError, "cju0000.jpg: its name does not match case_pattern"),
])
def test_folder2d_bad_layouts(tmp_path, damage, error, message):
    root = make_kvasir(tmp_path / "k", n=2)
    kw = {"class_name": "polyp"}
    if damage == "no_class":
        kw = {}
    elif damage == "orphan_mask":
        save_png(root / "masks" / "zzz.png", picture(0)[1])
    elif damage == "no_mask":
        (root / "masks" / "cju0001.jpg").unlink()
    elif damage == "size":
        save_jpeg(root / "masks" / "cju0001.jpg", picture(0, shape=(30, 30))[1])
    elif damage == "nothing":
        shutil.rmtree(root)
        (root / "docs").mkdir(parents=True)
        (root / "docs" / "readme.txt").write_text("hi")
    elif damage == "bmp":
        shutil.rmtree(root)
        (root / "images").mkdir(parents=True)
        (root / "masks").mkdir()
        from PIL import Image as PILImage

        PILImage.fromarray(picture(0)[0]).save(root / "images" / "a.bmp")
        PILImage.fromarray(picture(0)[1]).save(root / "masks" / "a.bmp")
    elif damage == "ignore_without_colors":
        kw["ignore_colors"] = [170, 0, 85]
    elif damage == "bad_ignore_colour":
        kw = {"colors": {"polyp": [255, 255, 255]}, "ignore_colors": [170, 0]}
    elif damage == "case_pattern_without_group":
        kw["case_pattern"] = "^cju"
    elif damage == "case_pattern_not_matching":
        kw["case_pattern"] = "^([A-Z]{4})_"
    elif damage == "two_mask_dirs":
        shutil.copytree(root / "masks", root / "lung masks")
        shutil.move(root / "masks", root / "infection masks")
    with pytest.raises(error, match=message):
        convert("folder2d", root, tmp_path, **kw)
    if damage == "no_mask":  # the user can leave unpaired images out
        assert len(convert("folder2d", root, tmp_path, unpaired="skip", **kw)) == 1


# --- COCO ---------------------------------------------------------------------------------

def test_rle_round_trip_and_known_strings():
    rng = np.random.default_rng(3)
    for shape in ((7, 5), (30, 40), (1, 1)):
        mask = rng.random(shape) > 0.6
        for compressed in (True, False):
            rle = rle_encode(mask, compressed)
            assert rle["size"] == list(shape)
            np.testing.assert_array_equal(rle_decode(rle["counts"], *shape), mask)
    # column-major runs: 3 background, 2 foreground, 1 background (a 3x2 mask)
    m = rle_decode([3, 2, 1], 3, 2)
    np.testing.assert_array_equal(m, [[False, True], [False, True], [False, False]])
    assert rle_encode(m, compressed=False)["counts"] == [3, 2, 1]
    assert rle_encode(m)["counts"] == "321"  # pycocotools' string for these counts
    with pytest.raises(ValueError, match="add up to 5"):
        rle_decode([3, 2], 3, 2)


def test_polygon_rasterisation_covers_pixel_corners():
    mask = polygons_to_mask([[2, 3, 10, 3, 10, 9, 2, 9]], 30, 40)
    assert mask.sum() == 8 * 6 and mask[3:9, 2:10].all()


def test_coco_converter_and_masks(tmp_path):
    root, facts = make_coco(tmp_path / "arcade")
    m = convert("coco", root, tmp_path, modality="XR")
    assert [it.id for it in m] == ["arcade/train/1", "arcade/train/2", "arcade/train/3"]
    first = m[0]
    assert first.label == "annotations/train.json" and first.image == "images/img0.png"
    assert first.labels == {"1": "stenosis", "2": "coronary artery"} and first.modality == "XR"
    loaded = load_item(m, first)
    assert loaded.label[3:9, 2:10].all() and (loaded.label == 1).sum() == 48
    np.testing.assert_array_equal(loaded.label == 2, facts["blob"])
    assert set(np.unique(loaded.instances)) == {0, 1, 2}
    np.testing.assert_array_equal(load_item(m, m[1]).label == 1, facts["blob"])  # list RLE
    assert load_item(m, m[2]).label.sum() == 0  # no annotations: every class absent
    # the JSON file itself can be given
    assert len(convert("coco", root / "annotations" / "train.json", tmp_path)) == 3


@pytest.mark.parametrize("damage, message", [
    ("category", "category id 7"),
    ("image_id", "image id 99"),
    ("missing_file", "missing in"),
    ("size", "says 30 x 41"),
    ("rle_size", "RLE size"),
    ("no_segmentation", "no segmentation"),
    ("not_coco", "no COCO JSON"),
])
def test_coco_bad_files(tmp_path, damage, message):
    root, _ = make_coco(tmp_path / "c")
    path = root / "annotations" / "train.json"
    data = json.loads(path.read_text())
    if damage == "category":
        data["annotations"][0]["category_id"] = 7
    elif damage == "image_id":
        data["annotations"][0]["image_id"] = 99
    elif damage == "missing_file":
        (root / "images" / "img2.png").unlink()
    elif damage == "size":
        data["images"][2]["width"] = 41  # the image without annotations
    elif damage == "rle_size":
        data["annotations"][1]["segmentation"]["size"] = [31, 40]
    elif damage == "no_segmentation":
        del data["annotations"][0]["segmentation"]
    elif damage == "not_coco":
        data = {"images": []}
    path.write_text(json.dumps(data))
    with pytest.raises(InputError, match=message):
        convert("coco", root, tmp_path)


# --- CVPR-2025 npz ------------------------------------------------------------------------

def test_npz_semantic_and_instance_files(tmp_path):
    root = make_npz(tmp_path / "3D_train_npz")
    m = convert("npz", root, tmp_path)
    by_ds = {it.dataset: it for it in m}
    ct = by_ds["CT_AbdomenDemo"]
    assert ct.id == "CT_AbdomenDemo/CT_AbdomenDemo_case1" and ct.modality == "CT" and ct.dim == 3
    assert ct.labels == {"1": "liver", "2": "liver tumor"}  # sentences mapped onto the vocabulary
    assert ct.source["prompts"]["1"] == "Liver in abdominal CT"
    np.testing.assert_allclose(ct.spacing, [0.8, 0.8, 2.5])
    loaded = load_item(m, ct)
    np.testing.assert_array_equal(loaded.label, phantom()[1])
    img8 = np.load(root / "CT" / "CT_AbdomenDemo" / "CT_AbdomenDemo_case1.npz")["imgs"]
    np.testing.assert_allclose(loaded.image, img8 / 255.0, atol=1e-6)  # uint8: already windowed
    mr = by_ds["MR_Lesions"]
    assert mr.instance_class == "brain lesion" and mr.labels == {} and mr.modality == "MR"
    assert mr.targets() == [("brain lesion", None)]
    assert set(np.unique(load_item(m, mr).instances)) == {0, 1, 2}


def test_npz_bad_files(tmp_path):
    d = tmp_path / "npz"
    d.mkdir()
    np.savez(d / "a.npz", imgs=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match="no 'gts'"):
        convert("npz", d, tmp_path)
    np.savez(d / "a.npz", imgs=np.zeros((3, 4, 4), np.uint8), gts=np.zeros((3, 4, 5), np.uint8))
    with pytest.raises(InputError, match="gts has shape"):
        convert("npz", d, tmp_path)
    np.savez(d / "a.npz", imgs=np.zeros((3, 4, 4), np.uint8), gts=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InputError, match="no text_prompts"):
        convert("npz", d, tmp_path)
    assert convert("npz", d, tmp_path, labels={"1": "liver"})[0].labels == {"1": "liver"}
    (d / "a.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a valid .npz"):
        convert("npz", d, tmp_path)


# --- atlas names files and options --------------------------------------------------------

def test_label_names_files(tmp_path):
    p = tmp_path / "names.txt"
    p.write_text("0 Clear\n1 Precentral_L 2001\n2\tPrecentral_R 2002\n")
    assert read_label_names(p) == {"1": "Precentral_L", "2": "Precentral_R"}
    p.write_text('# ITK-SNAP Label Description File\n    0     0    0    0        0  0  0    "Clear Label"\n'
                 '    1   255    0    0        1  1  1    "Left kidney"\n')
    assert read_label_names(p) == {"1": "Left kidney"}
    p.write_text('{"3": "spleen"}')
    assert read_label_names(p) == {"3": "spleen"}
    p.write_text("liver 1\n")
    with pytest.raises(InputError, match="line 1"):
        read_label_names(p)


def test_unknown_layout_and_option(tmp_path):
    with pytest.raises(ArgumentError, match="unknown layout 'voc'"):
        convert("voc", tmp_path, tmp_path)
    root = make_kvasir(tmp_path / "k", n=1)
    with pytest.raises(ArgumentError, match="does not take option.*channels"):
        convert("folder2d", root, tmp_path, class_name="polyp", channels=[0])
    with pytest.raises(ArgumentError, match="modality"):
        convert("folder2d", root, tmp_path, class_name="polyp", modality="PHOTO")
