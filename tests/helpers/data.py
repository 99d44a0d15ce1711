"""Tiny datasets written in the exact layouts users have (imported by the data tests)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from PIL import Image as PILImage

LPS_DIRECTION = (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)


def write_volume(path: Path, array: np.ndarray, spacing=(0.8, 0.8, 2.5), origin=(10.0, -20.0, 5.0),
                 direction=LPS_DIRECTION) -> Path:
    """Write a [z, y, x] (or 4D [c, z, y, x]) array as NIfTI with the given geometry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if array.ndim == 4:  # a Decathlon multi-modal volume: 4th ITK axis = channel
        image = sitk.JoinSeries([sitk.GetImageFromArray(a) for a in array])
        image.SetSpacing(tuple(spacing) + (1.0,))
        image.SetOrigin(tuple(origin) + (0.0,))
        d = np.eye(4)
        d[:3, :3] = np.asarray(direction).reshape(3, 3)
        image.SetDirection(tuple(d.ravel()))
    else:
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def phantom(shape=(6, 24, 20), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A CT-like volume (HU) and labels: 1 = organ (slices 1-4), 2 = lesion (slices 2-3)."""
    rng = np.random.default_rng(seed)
    z, y, x = shape
    image = rng.normal(-900, 20, shape).astype(np.int16)
    label = np.zeros(shape, np.uint8)
    label[1:5, 4:16, 3:12] = 1
    label[2:4, 6:9, 5:8] = 2
    image[label == 1] = 60
    image[label == 2] = 120
    return image, label


def make_nnunet(root: Path, cases=("case_a", "case_b", "case_c"), channels=("CT", "T2"),
                labels=None, test_cases=("case_t",), seed=0) -> Path:
    """An nnU-Net v2 raw dataset: dataset.json, imagesTr/CASE_XXXX.nii.gz, labelsTr, imagesTs + labelsTs."""
    root.mkdir(parents=True, exist_ok=True)
    labels = labels or {"background": 0, "liver": 1, "liver tumor": 2, "whole liver": [1, 2]}
    for split, names in (("Tr", cases), ("Ts", test_cases)):
        for k, case in enumerate(names):
            image, label = phantom(seed=seed + k)
            for c in range(len(channels)):
                write_volume(root / f"images{split}" / f"{case}_{c:04d}.nii.gz", image + 10 * c)
            write_volume(root / f"labels{split}" / f"{case}.nii.gz", label)
    meta = {"channel_names": {str(i): n for i, n in enumerate(channels)}, "labels": labels,
            "numTraining": len(cases), "file_ending": ".nii.gz", "name": root.name}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def make_msd(root: Path, cases=("spleen_1", "spleen_2"), modalities=("CT",), four_d=False) -> Path:
    """A Decathlon task: dataset.json with a training list, macOS '._' files included."""
    root.mkdir(parents=True, exist_ok=True)
    training = []
    for k, case in enumerate(cases):
        image, label = phantom(seed=k)
        if four_d:
            image = np.stack([image + 10 * c for c in range(len(modalities))])
        write_volume(root / "imagesTr" / f"{case}.nii.gz", image)
        write_volume(root / "labelsTr" / f"{case}.nii.gz", label)
        (root / "imagesTr" / f"._{case}.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
        training.append({"image": f"./imagesTr/{case}.nii.gz", "label": f"./labelsTr/{case}.nii.gz"})
    meta = {"name": root.name, "tensorImageSize": "4D" if four_d else "3D",
            "modality": {str(i): m for i, m in enumerate(modalities)},
            "labels": {"0": "background", "1": "spleen", "2": "cancer"},
            "numTraining": len(cases), "training": training, "test": []}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def save_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.asarray(array)).save(path)
    return path


def save_jpeg(path: Path, array: np.ndarray, quality=75) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(np.asarray(array)).save(path, quality=quality)
    return path


def picture(seed=0, shape=(40, 48), rgb=True) -> tuple[np.ndarray, np.ndarray]:
    """An RGB picture with a bright ellipse and its binary mask (0/255)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 2 - seed) / (h / 4)) ** 2 + ((xx - w / 2) / (w / 5)) ** 2 <= 1
    image = rng.integers(20, 60, (h, w, 3) if rgb else (h, w)).astype(np.uint8)
    image[mask] = 200
    return image, (mask * 255).astype(np.uint8)


def make_kvasir(root: Path, n=3) -> Path:
    """Kvasir-SEG: images/*.jpg and masks/*.jpg (JPEG-compressed masks), same names."""
    for k in range(n):
        image, mask = picture(k)
        save_jpeg(root / "images" / f"cju{k:04d}.jpg", image)
        save_jpeg(root / "masks" / f"cju{k:04d}.jpg", np.stack([mask] * 3, -1))
    return root


def make_busi(root: Path) -> Path:
    """BUSI: benign/ malignant/ normal/ with 'X (n).png' beside 'X (n)_mask.png' (+ '_mask_1.png')."""
    for folder, count in (("benign", 2), ("malignant", 1), ("normal", 1)):
        for k in range(1, count + 1):
            image, mask = picture(k, rgb=True)
            if folder == "normal":
                mask[:] = 0
            save_png(root / folder / f"{folder} ({k}).png", image)
            save_png(root / folder / f"{folder} ({k})_mask.png", mask)
    extra = np.zeros((40, 48), np.uint8)
    extra[2:6, 2:6] = 255  # a second lesion in its own mask file
    save_png(root / "benign" / "benign (1)_mask_1.png", extra)
    return root


def make_isic(root: Path, n=2) -> Path:
    """ISIC 2018 task 1: inputs and '_segmentation.png' ground truth in separate folders."""
    for k in range(n):
        image, mask = picture(k)
        save_jpeg(root / "ISIC2018_Task1-2_Training_Input" / f"ISIC_{k:07d}.jpg", image)
        save_png(root / "ISIC2018_Task1_Training_GroundTruth" / f"ISIC_{k:07d}_segmentation.png", mask)
    (root / "ISIC2018_Task1-2_Training_Input" / "LICENSE.txt").write_text("CC BY-NC")
    return root


def make_coco(root: Path) -> tuple[Path, dict]:
    """COCO: annotations/train.json (polygon, compressed and list RLE) + images/*.png."""
    from medsam3.data.layouts.coco import rle_encode

    h, w = 30, 40
    images, annotations = [], []
    blob = np.zeros((h, w), bool)
    blob[5:12, 20:31] = True
    blob[20:25, 2:6] = True
    for k in range(3):
        image, _ = picture(k, (h, w))
        save_png(root / "images" / f"img{k}.png", image)
        images.append({"id": k + 1, "file_name": f"img{k}.png", "width": w, "height": h})
    # polygon: the rectangle x 2..10, y 3..9 (pixel corners) covers pixels x 2..9, y 3..8
    annotations.append({"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 0,
                        "segmentation": [[2, 3, 10, 3, 10, 9, 2, 9]], "bbox": [2, 3, 8, 6], "area": 48})
    annotations.append({"id": 2, "image_id": 1, "category_id": 2, "iscrowd": 0,
                        "segmentation": rle_encode(blob, compressed=True), "bbox": [2, 5, 29, 20]})
    annotations.append({"id": 3, "image_id": 2, "category_id": 1, "iscrowd": 1,
                        "segmentation": rle_encode(blob, compressed=False), "bbox": [2, 5, 29, 20]})
    data = {"images": images, "annotations": annotations,
            "categories": [{"id": 1, "name": "stenosis"}, {"id": 2, "name": "coronary artery"}]}
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "train.json").write_text(json.dumps(data))
    return root, {"blob": blob}


def make_npz(root: Path) -> Path:
    """CVPR-2025 BiomedSegFM: <root>/CT/Dataset/CT_case.npz (semantic) and an instance-label file."""
    image, label = phantom()
    img8 = np.clip((image + 160) / 400 * 255, 0, 255).astype(np.uint8)
    prompts = {"1": "Liver in abdominal CT", "2": "Liver tumors in abdominal CT", "instance_label": 0}
    d = root / "CT" / "CT_AbdomenDemo"
    d.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(d / "CT_AbdomenDemo_case1.npz", imgs=img8, gts=label,
                        spacing=np.array([0.8, 0.8, 2.5]), text_prompts=np.array(prompts, dtype=object))
    inst = np.zeros(label.shape, np.uint8)
    inst[1:3, 2:5, 2:5] = 1
    inst[3:5, 10:14, 10:14] = 2
    d2 = root / "MR" / "MR_Lesions"
    d2.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(d2 / "MR_Lesions_case1.npz", imgs=img8, gts=inst, spacing=np.array([1.0, 1.0, 3.0]),
                        text_prompts=np.array({"1": "brain lesions in head MR", "instance_label": 1},
                                              dtype=object))
    return root
