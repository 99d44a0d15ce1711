"""Converters that write readable labels (medsam3.data.layouts.derived), each on a small
replica of its dataset's own download layout: file names, nesting and label encoding."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage
from helpers.data import picture

from medsam3.data import convert_dataset
from medsam3.data.loading import load_item
from medsam3.data.registry import get_dataset, prepare_dataset
from medsam3.errors import ArgumentError, InputError


def _save(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    PILImage.fromarray(array).save(path, **kw)
    return path


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_pannuke_folds_of_npy_arrays(tmp_path):
    root = tmp_path / "PanNuke"
    rng = np.random.default_rng(0)
    expected = {}
    for fold, n in ((1, 2), (3, 1)):
        images = rng.uniform(0, 255, (n, 16, 20, 3))  # float64, as released
        masks = np.zeros((n, 16, 20, 6), dtype=np.float64)
        masks[..., 5] = 1  # background channel
        masks[:, 2:5, 3:7, 0] = 7  # a neoplastic nucleus, instance id 7
        masks[:, 9:12, 10:15, 4] = 3  # an epithelial one
        for arr, kind in ((images, "images"), (masks, "masks")):
            path = root / f"Fold {fold}" / kind / f"fold{fold}" / f"{kind}.npy"
            path.parent.mkdir(parents=True)
            np.save(path, arr)
        np.save(root / f"Fold {fold}" / "images" / f"fold{fold}" / "types.npy", np.array(["Breast"] * n))
        expected[fold] = images
    before = _tree(root)
    manifest = prepare_dataset("pannuke", root, tmp_path / "pannuke.jsonl", progress=False)
    assert [(it.case, it.split) for it in manifest] == [("fold1/00000", "train"), ("fold1/00001", "train"),
                                                        ("fold3/00000", "test")]
    item = manifest[0]
    assert item.label_format == "map" and item.labels["1"] == "neoplastic cell nucleus" \
        and item.labels["5"] == "epithelial cell nucleus" and item.rgb
    label = load_item(manifest, item).label
    assert set(np.unique(label)) == {0, 1, 5}
    assert (label[2:5, 3:7] == 1).all() and (label[9:12, 10:15] == 5).all() and label.sum() == 12 + 5 * 15
    written = PILImage.open(tmp_path / "pannuke-files" / "fold1" / "00000.png")
    assert np.array_equal(np.asarray(written), expected[1][0].astype(np.uint8))
    assert _tree(root) == before  # nothing written into the download


def test_drive_tif_images_with_gif_manual_masks(tmp_path):
    root = tmp_path / "DRIVE"
    image, mask = picture(0, shape=(30, 28))
    _save(root / "training" / "images" / "21_training.tif", image)
    _save(root / "training" / "1st_manual" / "21_manual1.gif", mask)
    _save(root / "training" / "mask" / "21_training_mask.gif", np.full((30, 28), 255, np.uint8))  # FOV
    _save(root / "test" / "images" / "01_test.tif", image)
    _save(root / "test" / "1st_manual" / "01_manual1.gif", mask)
    _save(root / "test" / "images" / "02_test.tif", image)  # no manual mask in this copy: left out
    manifest = prepare_dataset("drive", root, tmp_path / "drive.jsonl", progress=False)
    assert [(it.case, it.split) for it in manifest] == [("test/01", "test"), ("training/21", "train")]
    label = load_item(manifest, manifest[1]).label
    assert np.array_equal(label.astype(bool), mask > 0) and manifest[1].image == "training/images/21_training.tif"


def test_glas_bmp_images_with_instance_maps(tmp_path):
    root = tmp_path / "Warwick QU Dataset (Released 2016_07_08)"
    image, _ = picture(1, shape=(24, 32))
    anno = np.zeros((24, 32), np.uint8)
    anno[2:8, 2:10], anno[12:20, 15:30] = 1, 2  # two glands
    for name in ("train_1", "testA_1", "testB_2"):
        _save(root / f"{name}.bmp", image)
        _save(root / f"{name}_anno.bmp", anno)
    (root / "Grade.csv").write_text("name,grade\ntrain_1,benign\n")
    manifest = prepare_dataset("glas", root, tmp_path / "glas.jsonl", progress=False)
    by_case = {it.case: it for it in manifest}
    assert {k: v.split for k, v in by_case.items()} == {"train_1": "train", "testA_1": "test", "testB_2": "test"}
    item = by_case["train_1"]
    assert item.instance_class == "gland" and item.labels == {}
    loaded = load_item(manifest, item)
    assert np.array_equal(loaded.instances, anno)  # the instance ids as drawn
    assert sorted(np.bincount(loaded.instances.ravel())[1:].tolist()) == [48, 120]


def test_hc18_outlines_are_filled(tmp_path):
    root = tmp_path / "HC18" / "training_set"
    h, w = 40, 50
    yy, xx = np.mgrid[:h, :w]
    r = ((yy - 20) / 12.0) ** 2 + ((xx - 25) / 18.0) ** 2
    outline = ((r <= 1.0) & (r > 0.8)).astype(np.uint8) * 255  # a closed ellipse line
    _save(root / "000_HC.png", (np.random.default_rng(0).uniform(0, 255, (h, w))).astype(np.uint8))
    _save(root / "000_HC_Annotation.png", outline)
    manifest = prepare_dataset("hc18", root.parent, tmp_path / "hc18.jsonl", progress=False)
    label = load_item(manifest, manifest[0]).label
    assert label[20, 25] == 1 and label[0, 0] == 0  # the inside is the head
    assert label.sum() == int((r <= 1.0).sum())
    broken = outline.copy()
    broken[:, 25:] = 0  # half an ellipse: open
    _save(root / "001_HC.png", np.zeros((h, w), np.uint8))
    _save(root / "001_HC_Annotation.png", broken)
    with pytest.raises(InputError, match="001_HC_Annotation.png: the head outline is not closed"):
        prepare_dataset("hc18", root.parent, tmp_path / "again.jsonl", progress=False)


def test_btxrd_labelme_polygons(tmp_path):
    root = tmp_path / "BTXRD"
    image, _ = picture(2, shape=(20, 24))
    _save(root / "images" / "IMG000001.jpeg", image, quality=95)
    _save(root / "images" / "IMG000002.jpeg", image, quality=95)  # a normal radiograph: no JSON
    shapes = [{"label": "osteochondroma", "shape_type": "polygon",
               "points": [[2, 3], [10, 3], [10, 9], [2, 9]]},
              {"label": "osteochondroma", "shape_type": "rectangle", "points": [[0, 0], [20, 18]]}]
    (root / "Annotations").mkdir()
    (root / "Annotations" / "IMG000001.json").write_text(json.dumps(
        {"version": "5.0.1", "shapes": shapes, "imagePath": "IMG000001.jpeg", "imageHeight": 20,
         "imageWidth": 24}))
    # one of the 27 '.jpg' images, its JSON naming it; a second polygon (a lobulated tumour)
    _save(root / "images" / "IMG003740.jpg", image, quality=95)
    (root / "Annotations" / "IMG003740.json").write_text(json.dumps(
        {"version": "5.0.1", "flags": {}, "imagePath": "IMG003740.jpg", "imageHeight": 20, "imageWidth": 24,
         "shapes": [{"label": "osteosarcoma", "shape_type": "polygon", "group_id": None, "flags": {},
                     "points": [[1, 1], [5, 1], [5, 5], [1, 5]]},
                    {"label": "osteosarcoma", "shape_type": "polygon", "points": [[12, 10], [20, 10], [20, 16], [12, 16]]},
                    {"label": "osteosarcoma", "shape_type": "rectangle", "points": [[0, 0], [22, 18]]}]}))
    manifest = prepare_dataset("btxrd", root, tmp_path / "btxrd.jsonl", progress=False)
    assert [it.case for it in manifest] == ["IMG000001", "IMG003740"]
    label = load_item(manifest, manifest[0]).label
    assert label.sum() == 8 * 6 and label[3:9, 2:10].all()  # the polygon only, not the box
    assert manifest[0].labels == {"1": "bone tumor"}
    assert manifest[1].image == "images/IMG003740.jpg"
    label = load_item(manifest, manifest[1]).label
    assert label.sum() == 4 * 4 + 8 * 6 and label[1:5, 1:5].all() and label[10:16, 12:20].all()
    (root / "Annotations" / "IMG000003.json").write_text("{not json")
    with pytest.raises(InputError, match="IMG000003.json: not a LabelMe file"):
        prepare_dataset("btxrd", root, tmp_path / "b2.jsonl", progress=False)


def test_ph2_case_folders_of_bmp(tmp_path):
    base = tmp_path / "PH2Dataset" / "PH2 Dataset images"
    image, mask = picture(3, shape=(22, 26))
    for case in ("IMD002", "IMD003"):
        _save(base / case / f"{case}_Dermoscopic_Image" / f"{case}.bmp", image)
        _save(base / case / f"{case}_lesion" / f"{case}_lesion.bmp", mask)
        _save(base / case / f"{case}_roi" / f"{case}_R1_Label4.bmp", mask)  # colour ROIs: not labels
    manifest = prepare_dataset("ph2", tmp_path / "PH2Dataset", tmp_path / "ph2.jsonl", progress=False)
    assert [it.case for it in manifest] == ["IMD002", "IMD003"]
    assert np.array_equal(load_item(manifest, manifest[0]).label.astype(bool), mask > 0)


def test_stare_gzipped_ppm_first_observer(tmp_path):
    root = tmp_path / "STARE"
    image, mask = picture(4, shape=(18, 20))
    other = np.zeros_like(mask)

    def ppm_gz(path: Path, array: np.ndarray) -> None:
        buffer = io.BytesIO()
        PILImage.fromarray(array).save(buffer, format="PPM")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(gzip.compress(buffer.getvalue()))

    ppm_gz(root / "stare-images" / "im0001.ppm.gz", image)
    ppm_gz(root / "labels-ah" / "im0001.ah.ppm.gz", np.stack([mask] * 3, -1))
    ppm_gz(root / "labels-vk" / "im0001.vk.ppm.gz", np.stack([other] * 3, -1))
    manifest = prepare_dataset("stare", root, tmp_path / "stare.jsonl", progress=False)
    assert [it.case for it in manifest] == ["im0001"]
    assert np.array_equal(load_item(manifest, manifest[0]).label.astype(bool), mask > 0)  # Hoover's


def test_derived_layouts_need_a_place_to_write(tmp_path):
    with pytest.raises(ArgumentError, match="work_dir"):
        convert_dataset("drive", tmp_path, progress=False)
    with pytest.raises(ArgumentError, match="-o FILE.jsonl"):
        prepare_dataset("pannuke", tmp_path, None, progress=False)
    with pytest.raises(InputError, match="no images.npy"):
        convert_dataset("pannuke", tmp_path, work_dir=str(tmp_path / "w"), progress=False)
    assert get_dataset("pannuke").ready and get_dataset("drive").ready and get_dataset("btxrd").ready and get_dataset("ravir").ready and not get_dataset("fetoplac").ready


def test_cholecseg8k_watershed_codes(tmp_path):
    root = tmp_path / "CholecSeg8k"
    frame = root / "video01" / "video01_00080"
    image, _ = picture(5, shape=(20, 24))
    codes = np.full((20, 24), 50, np.uint8)  # background
    codes[2:8, 2:12] = 21  # liver
    codes[10:16, 4:20] = 31  # grasper
    codes[8, :] = 255  # a 1-pixel edge
    codes[19, :] = 0  # unannotated
    _save(frame / "frame_80_endo.png", image)
    _save(frame / "frame_80_endo_watershed_mask.png", np.stack([codes] * 3, -1))  # grey codes in RGB
    _save(frame / "frame_80_endo_mask.png", codes)  # the annotation mask: not read
    _save(frame / "frame_80_endo_color_mask.png", image)
    manifest = prepare_dataset("cholecseg8k", root, tmp_path / "c.jsonl", progress=False)
    (item,) = list(manifest)
    assert item.case == "video01" and item.id == "cholecseg8k/video01/video01_00080/frame_80"
    assert item.labels["21"] == "liver" and item.labels["31"] == "grasper" and "50" not in item.labels
    assert item.ignore_value == 255
    label = load_item(manifest, item).label
    assert (label[2:8, 2:12] == 21).all() and (label[10:16, 4:20] == 31).all()
    assert (label[8] == 255).all() and (label[19] == 255).all()  # edges and gaps are ignored
    codes[0, 0] = 77
    _save(frame / "frame_81_endo.png", image)
    _save(frame / "frame_81_endo_watershed_mask.png", np.stack([codes] * 3, -1))
    with pytest.raises(InputError, match=r"grey values \[77\] are not CholecSeg8k codes"):
        prepare_dataset("cholecseg8k", root, tmp_path / "c2.jsonl", progress=False)


def test_monuseg_aperio_xml_instances(tmp_path):
    root = tmp_path / "MoNuSeg"
    image, _ = picture(6, shape=(30, 40))
    name = "TCGA-18-5592-01Z-00-DX1"

    def xml(regions) -> str:
        body = "".join(f'<Region Id="{k}"><Vertices>' + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in r)
                       + "</Vertices></Region>" for k, r in enumerate(regions, 1))
        return f'<Annotations><Annotation Id="1"><Regions>{body}</Regions></Annotation></Annotations>'

    squares = [[(2, 3), (10, 3), (10, 9), (2, 9)], [(20, 10), (30, 10), (30, 20), (20, 20)]]
    _save(root / "MoNuSeg 2018 Training Data" / "Tissue Images" / f"{name}.tif", image)
    (root / "MoNuSeg 2018 Training Data" / "Annotations").mkdir(parents=True)
    (root / "MoNuSeg 2018 Training Data" / "Annotations" / f"{name}.xml").write_text(xml(squares))
    many = [[(x, y), (x + 1, y), (x + 1, y + 1), (x, y + 1)] for y in range(0, 30, 2) for x in range(0, 40, 2)]
    _save(root / "MoNuSegTestData" / "TCGA-2Z-A9J9-01A-01-TS1.tif", image)
    (root / "MoNuSegTestData" / "TCGA-2Z-A9J9-01A-01-TS1.xml").write_text(xml(many[:300]))
    manifest = prepare_dataset("monuseg", root, tmp_path / "m.jsonl", progress=False)
    by_case = {it.case: it for it in manifest}
    assert {k: v.split for k, v in by_case.items()} == {name: "train", "TCGA-2Z-A9J9-01A-01-TS1": "test"}
    train = load_item(manifest, by_case[name])
    assert sorted(np.bincount(train.instances.ravel())[1:].tolist()) == [48, 100]
    test = load_item(manifest, by_case["TCGA-2Z-A9J9-01A-01-TS1"])
    assert test.instances.max() == 300  # more than 255 nuclei: 16-bit instance ids survive


def test_urocell_one_item_per_class_mask(tmp_path):
    from helpers.data import write_volume

    root = tmp_path / "UroCell"
    rng = np.random.default_rng(0)
    spacing = (0.016, 0.016, 0.015)  # um-scale voxels as stored; any consistent geometry works
    for case in ("fib1-0-0-0", "fib1-1-0-3"):
        write_volume(root / "data" / f"{case}.nii.gz", rng.integers(0, 255, (6, 8, 10)).astype(np.uint8),
                     spacing=spacing)
    masks = {}
    for folder, k in (("mito", 1), ("lyso", 2), ("fv", 3)):
        m = np.zeros((6, 8, 10), np.uint8)
        m[k:k + 2, 1:4, 2:6] = 1
        masks[folder] = m
        write_volume(root / folder / "binary" / "fib1-0-0-0.nii.gz", m, spacing=spacing)
        write_volume(root / folder / "instance" / "fib1-0-0-0.nii.gz", m * 7, spacing=spacing)  # not read
    write_volume(root / "mito" / "fib1-1-0-3.nii.gz", masks["mito"], spacing=spacing)  # the older layout
    write_volume(root / "golgi" / "approximate" / "fib1-1-0-3.nii.gz", masks["fv"], spacing=spacing)
    manifest = prepare_dataset("urocell", root, tmp_path / "u.jsonl", progress=False)
    assert [it.id for it in manifest] == ["urocell/fib1-0-0-0/mito", "urocell/fib1-0-0-0/lyso",
                                          "urocell/fib1-0-0-0/fv", "urocell/fib1-1-0-3/mito"]
    assert {it.case for it in manifest} == {"fib1-0-0-0", "fib1-1-0-3"} and manifest[0].dim == 3
    lyso = load_item(manifest, manifest[1]).label
    assert manifest[1].labels == {"1": "endolysosome"} and int(lyso.sum()) == int(masks["lyso"].sum())
    write_volume(root / "lyso" / "binary" / "fib1-1-0-3.nii.gz", np.zeros((6, 8, 9), np.uint8), spacing=spacing)
    with pytest.raises(InputError, match="shape"):
        prepare_dataset("urocell", root, tmp_path / "u2.jsonl", progress=False)


def test_ravir_grey_value_masks(tmp_path):
    root = tmp_path / "RAVIR Dataset" / "train"
    image = np.random.default_rng(1).integers(0, 255, (24, 24)).astype(np.uint8)
    mask = np.zeros((24, 24), np.uint8)
    mask[2:6, :] = 128  # artery
    mask[10:13, :] = 255  # vein
    _save(root / "training_images" / "IR_Case_011.png", image)
    _save(root / "training_masks" / "IR_Case_011.png", mask)
    _save(tmp_path / "RAVIR Dataset" / "test" / "test_images" / "IR_Case_006.png", image)  # no masks
    manifest = prepare_dataset("ravir", tmp_path / "RAVIR Dataset", tmp_path / "r.jsonl", progress=False)
    (item,) = list(manifest)
    assert item.labels == {"128": "retinal artery", "255": "retinal vein"} and item.split == "train"
    assert item.image == "train/training_images/IR_Case_011.png"
    label = load_item(manifest, item).label
    assert (label[2:6] == 128).all() and (label[10:13] == 255).all() and (label[6:10] == 0).all()


def _mha(path: Path, array: np.ndarray, vector: bool = False) -> Path:
    import SimpleITK as sitk

    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(array, isVector=vector), str(path))
    return path


def test_psfh_three_plane_mha_frames_and_label_maps(tmp_path):
    root = tmp_path / "download"
    rng = np.random.default_rng(3)
    frames = {}
    for release, stem in (("Pubic Symphysis-Fetal Head Segmentation and Angle of Progression", "00001"),
                          ("PSFHS", "03001")):
        frame = rng.integers(0, 255, (20, 24)).astype(np.uint8)
        label = np.zeros((20, 24), np.uint8)
        label[2:6, 3:9] = 1  # pubic symphysis
        label[10:18, 8:20] = 2  # fetal head
        _mha(root / release / "image_mha" / f"{stem}.mha", np.stack([frame] * 3))  # DimSize 24 20 3
        _mha(root / release / "label_mha" / f"{stem}.mha", label)  # DimSize 24 20
        frames[stem] = (frame, label)
    # a hidden-test frame: image without label, left out
    _mha(root / "PSFHS" / "image_mha" / "09999.mha", np.zeros((3, 20, 24), np.uint8))
    before = _tree(root)
    manifest = prepare_dataset("ps-fh-aop-2023", root, tmp_path / "psfh.jsonl", progress=False)
    assert sorted(it.case for it in manifest) == ["PSFHS/03001",
                                                  "Pubic Symphysis-Fetal Head Segmentation and Angle of Progression/00001"]
    for item in manifest:
        frame, label = frames[item.case.rsplit("/", 1)[1]]
        loaded = load_item(manifest, item)
        assert item.labels == {"1": "pubic symphysis", "2": "fetal head"} and item.label_format == "map"
        assert item.shape == [20, 24] and not item.rgb and item.modality == "US"
        assert np.array_equal(np.asarray(PILImage.open(manifest.resolve(item.image))), frame)
        assert np.array_equal(loaded.label, label)
    assert _tree(root) == before  # nothing written into the download

    # three planes that differ are kept as RGB; stray label values are refused, naming the file
    odd = tmp_path / "odd"
    planes = rng.integers(0, 255, (3, 8, 10)).astype(np.uint8)
    _mha(odd / "image_mha" / "00002.mha", planes)
    _mha(odd / "label_mha" / "00002.mha", np.zeros((8, 10), np.uint8))
    (item,) = list(prepare_dataset("ps-fh-aop-2023", odd, tmp_path / "odd.jsonl", progress=False))
    assert item.rgb and np.array_equal(np.asarray(PILImage.open(odd.parent / "odd-files" / "00002.png")),
                                       np.moveaxis(planes, 0, -1))
    _mha(odd / "image_mha" / "00003.mha", planes)
    _mha(odd / "label_mha" / "00003.mha", np.full((8, 10), 7, np.uint8))
    with pytest.raises(InputError, match=r"00003.mha holds values \[7\]"):
        prepare_dataset("ps-fh-aop-2023", odd, tmp_path / "odd2.jsonl", progress=False)
    _mha(odd / "label_mha" / "00003.mha", np.zeros((9, 10), np.uint8))
    with pytest.raises(InputError, match="00003.mha is 10 x 9 but its image is 10 x 8"):
        prepare_dataset("ps-fh-aop-2023", odd, tmp_path / "odd3.jsonl", progress=False)
    (odd / "image_mha" / "00003.mha").unlink()
    with pytest.raises(InputError, match="label.*00003.*have no image"):
        prepare_dataset("ps-fh-aop-2023", odd, tmp_path / "odd4.jsonl", progress=False)
    assert not (tmp_path / "odd4-files").exists()  # a refused download leaves no empty work folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image_mha/ folder"):
        prepare_dataset("ps-fh-aop-2023", tmp_path / "empty", tmp_path / "odd5.jsonl", progress=False)


def test_papila_contour_text_files_of_two_experts(tmp_path):
    root = tmp_path / "PapilaDB-PAPILA-17f8fa7746adb20275b5b6a0d99dc9dfe3007e9f"
    image, _ = picture(7, shape=(30, 40))
    contours = root / "ExpertsSegmentations" / "Contours"
    contours.mkdir(parents=True)
    (root / "ClinicalData").mkdir()
    for stem in ("RET002OD", "RET002OS", "RET004OD"):
        _save(root / "FundusImages" / f"{stem}.jpg", image, quality=95)
        for expert, shift in ((1, 0), (2, 1)):
            disc = [(5 + shift, 5), (25 + shift, 5), (25 + shift, 25), (5 + shift, 25)]
            cup = [(10.0, 10.0), (18.5, 10.0), (18.5, 18.0), (10.0, 18.0)]
            (contours / f"{stem}_disc_exp{expert}.txt").write_text("".join(f"{x} {y}\n" for x, y in disc))
            name = f"{stem}_cup_e_exp2.txt" if (stem, expert) == ("RET004OD", 2) else f"{stem}_cup_exp{expert}.txt"
            (contours / name).write_text("".join(f"{x:.4f} {y:.4f}\n" for x, y in cup) + "\n")
    (root / "ExpertsSegmentations" / "ImagesWithContours").mkdir()
    _save(root / "ExpertsSegmentations" / "ImagesWithContours" / "Opht_cont_RET002OD.jpg", image)
    manifest = prepare_dataset("papila", tmp_path, tmp_path / "papila.jsonl", progress=False)
    assert [it.id for it in manifest] == ["papila/RET002OD", "papila/RET002OS", "papila/RET004OD"]
    assert manifest[0].case == manifest[1].case == "RET002" and manifest[0].split == manifest[1].split
    item = manifest[0]
    assert item.labels == {"1": "optic disc", "2": "optic cup"} and item.regions == {"optic disc": [1, 2]}
    assert dict(item.targets()) == {"optic disc": (1, 2), "optic cup": (2,)}
    label = load_item(manifest, item).label
    assert (label == 2).sum() == 9 * 8 and (label > 0).sum() == 20 * 20  # the cup inside the whole disc
    # the paper's one target: both classes renamed to one prompt keep the whole disc
    from medsam3.data.convert import apply_class_map

    apply_class_map([item], {"optic disc": "optic disc and cup", "optic cup": "optic disc and cup"})
    assert item.targets() == [("optic disc and cup", (1, 2))]
    # expert 2 (a near file name for one cup outline), its own label files
    other = convert_dataset("papila", tmp_path, work_dir=str(tmp_path / "e2"), expert=2, progress=False)
    assert len(other) == 3 and (tmp_path / "e2" / "RET004OD_exp2.png").exists()
    assert (load_item(other, other[0]).label == 1).sum() == 20 * 20 - 9 * 8
    with pytest.raises(ArgumentError, match="experts 1 and 2"):
        convert_dataset("papila", tmp_path, work_dir=str(tmp_path / "e3"), expert=3, progress=False)
    (contours / "RET004OD_cup_exp1.txt").write_text("10 10\n18 oops\n")
    with pytest.raises(InputError, match=r"RET004OD_cup_exp1.txt, line 2: expected 'x y'"):
        prepare_dataset("papila", tmp_path, tmp_path / "p2.jsonl", progress=False)
    (contours / "RET004OD_cup_exp1.txt").unlink()
    with pytest.raises(InputError, match="no RET004OD_cup_exp1.txt"):
        prepare_dataset("papila", tmp_path, tmp_path / "p3.jsonl", progress=False)


def test_pcmmd_labelme_crops_in_two_cell_folders(tmp_path):
    seg = tmp_path / "PCMMD Plasma Cells for Multiple Myeloma Diagnosis" / "data" / "segmentation"
    image, _ = picture(9, shape=(16, 18))
    square = [[2, 2], [10, 2], [10, 9], [2, 9]]
    for folder, label, points in (("plasma cells", "plasma_cell", square),
                                  ("non-plasma cells", "non_plasma_cell", [[4, 4], [14, 4], [14, 12], [4, 12]])):
        _save(seg / folder / "images" / "1692243677854.jpg", image, quality=95)  # the same name in both
        (seg / folder / "masks").mkdir(parents=True)
        (seg / folder / "masks" / "1692243677854.json").write_text(json.dumps(
            {"imageHeight": 16, "imageWidth": 18, "imagePath": "1692243677854.jpg",
             "shapes": [{"label": label, "points": points, "shape_type": "polygon"}]}))
    (tmp_path / "PCMMD Plasma Cells for Multiple Myeloma Diagnosis" / "data" / "detection" / "train" / "images").mkdir(
        parents=True)  # boxes only: not read
    manifest = prepare_dataset("pcmmd", tmp_path, tmp_path / "pcmmd.jsonl", progress=False)
    cases = [it.case for it in manifest]
    prefix = "PCMMD Plasma Cells for Multiple Myeloma Diagnosis/data/segmentation/"
    assert cases == [prefix + "non-plasma cells/1692243677854", prefix + "plasma cells/1692243677854"]
    plasma = load_item(manifest, manifest[1]).label
    other = load_item(manifest, manifest[0]).label
    assert manifest[0].labels == {"1": "cell"} and plasma.sum() == 8 * 7 and other.sum() == 10 * 8


def _h5(path: Path, array: np.ndarray, key: str = "main") -> Path:
    import h5py

    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.create_dataset(key, data=array, compression="gzip")
    return path


def test_nucmm_z_hdf5_blocks_written_as_nifti_instance_maps(tmp_path):
    """NucMM-Z as released: 'Zebrafish (NucMM-Z)/Image|Label/train|val/img_|seg_ZZZZ_YYYY_XXXX.h5',
    each block in the HDF5 dataset 'main', labels nucleus instance ids."""
    import SimpleITK as sitk

    root = tmp_path / "NucMM-Release"
    top = root / "Zebrafish (NucMM-Z)"
    rng = np.random.default_rng(5)
    blocks = {}
    for split, suffix in (("train", "0000_0576_0768"), ("train", "0064_0384_0832"), ("val", "0000_0640_0896")):
        volume = rng.integers(0, 255, (6, 10, 12)).astype(np.uint8)  # (z, y, x)
        seg = np.zeros((6, 10, 12), np.uint32)  # uint32 ids, as large volumes need
        seg[1:4, 2:6, 3:8] = 301  # one nucleus over three slices
        seg[2:6, 6:9, 0:4] = 70000  # an id beyond 16 bits
        _h5(top / "Image" / split / f"img_{suffix}.h5", volume)
        _h5(top / "Label" / split / f"seg_{suffix}.h5", seg)
        blocks[suffix] = (split, volume, seg)
    _h5(top / "Image" / "val" / "img_0128_0000_0000.h5", np.zeros((6, 10, 12), np.uint8))  # no label: left out
    mouse = root / "Mouse (NucMM-M)"  # the release's micro-CT sample beside it: not NucMM-Z, not read
    _h5(mouse / "Image" / "train" / "img_000_200_200.h5", np.zeros((4, 6, 6), np.uint8))
    _h5(mouse / "Label" / "train" / "seg_000_200_200.h5", np.zeros((4, 6, 6), np.uint16))
    before = _tree(root)
    manifest = prepare_dataset("nucmm-z", root, tmp_path / "nucmm.jsonl", progress=False)
    assert _tree(root) == before  # nothing written into the download
    assert sorted(it.id for it in manifest) == [
        "nucmm-z/Zebrafish (NucMM-Z)/train/0000_0576_0768", "nucmm-z/Zebrafish (NucMM-Z)/train/0064_0384_0832",
        "nucmm-z/Zebrafish (NucMM-Z)/val/0000_0640_0896"]
    for item in manifest:
        split, volume, seg = blocks[item.id.rsplit("/", 1)[1]]
        assert item.split == split and item.dim == 3 and item.shape == [6, 10, 12]
        assert item.instance_class == "cell nucleus" and item.labels == {} and item.label_format == "map"
        assert item.spacing == [1.0, 1.0, 1.0] and item.modality == "OTHER"
        assert item.label.endswith(".nii.gz") and (tmp_path / "nucmm-files").is_dir()
        # the written NIfTI holds the block voxel for voxel, in (z, y, x) order
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(manifest.resolve(item.image))), volume)
        loaded = load_item(manifest, item)
        assert loaded.instances.shape == (6, 10, 12)
        # the two nuclei are two instances, with their voxel counts; ids above 65535 survive
        assert sorted(np.unique(loaded.instances).tolist()) == [0, 301, 70000]
        assert {v: int((loaded.instances == v).sum()) for v in (301, 70000)} == {301: 3 * 4 * 5, 70000: 4 * 3 * 4}
        assert np.array_equal(loaded.instances, seg)
    assert get_dataset("nucmm-z").ready and get_dataset("nucmm-z").paper_prompts == {"cell nucleus": "cell nucleus"}

    # the voxel size when known (mm), written into the NIfTI headers too
    items = convert_dataset("nucmm", root, work_dir=tmp_path / "spaced", spacing=[0.0005, 0.0005, 0.0004],
                            progress=False)
    item = next(iter(items))
    assert item.spacing == [0.0005, 0.0005, 0.0004]
    assert np.allclose(sitk.ReadImage(items.resolve(item.label)).GetSpacing(), (0.0005, 0.0005, 0.0004))
    (only_mouse,) = convert_dataset("nucmm", root, work_dir=tmp_path / "mouse", sample="mouse", dataset="nucmm-m",
                                    progress=False)
    assert only_mouse.id == "nucmm-m/Mouse (NucMM-M)/train/000_200_200" and only_mouse.shape == [4, 6, 6]
    with pytest.raises(ArgumentError, match="spacing must be the voxel size"):
        convert_dataset("nucmm", root, work_dir=tmp_path / "bad", spacing=[1, 2], progress=False)


def test_nucmm_z_refuses_bad_blocks_naming_the_file(tmp_path):
    top = tmp_path / "Zebrafish (NucMM-Z)"
    _h5(top / "Image" / "train" / "img_0000_0000_0000.h5", np.zeros((4, 8, 8), np.uint8))
    _h5(top / "Label" / "train" / "seg_0000_0000_0000.h5", np.zeros((4, 8, 8), np.uint16), key="labels")
    with pytest.raises(InputError, match=r"seg_0000_0000_0000.h5 has no HDF5 dataset 'main' \(it holds labels\)"):
        convert_dataset("nucmm", tmp_path, work_dir=tmp_path / "out", progress=False)
    _h5(top / "Label" / "train" / "seg_0000_0000_0000.h5", np.zeros((4, 8, 9), np.uint16))
    with pytest.raises(InputError, match=r"seg_0000_0000_0000.h5 is 4 x 8 x 9 \(z, y, x\) but its image "
                                         r".*img_0000_0000_0000.h5 is 4 x 8 x 8"):
        convert_dataset("nucmm", tmp_path, work_dir=tmp_path / "out", progress=False)
    _h5(top / "Label" / "train" / "seg_0000_0000_0000.h5", np.zeros((8, 8), np.uint16))
    with pytest.raises(InputError, match=r"seg_0000_0000_0000.h5: 'main' is 2D"):
        convert_dataset("nucmm", tmp_path, work_dir=tmp_path / "out", progress=False)
    (top / "Label" / "train" / "seg_0000_0000_0000.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputError, match=r"cannot read .*seg_0000_0000_0000.h5: not an HDF5 file"):
        convert_dataset("nucmm", tmp_path, work_dir=tmp_path / "out", progress=False)
    _h5(top / "Label" / "train" / "seg_0000_0000_0000.h5", np.full((4, 8, 8), -1, np.int16))
    with pytest.raises(InputError, match="seg_0000_0000_0000.h5 holds negative values"):
        convert_dataset("nucmm", tmp_path, work_dir=tmp_path / "out", progress=False)
    _h5(top / "Label" / "train" / "seg_0000_0001_0000.h5", np.zeros((4, 8, 8), np.uint16))
    with pytest.raises(InputError, match=r"label\(s\) seg_0000_0001_0000.h5 have no img_<same>.h5 in "):
        convert_dataset("nucmm", tmp_path, work_dir=tmp_path / "out", progress=False)
    with pytest.raises(InputError, match="no Image/ folder beside a Label/ folder"):
        convert_dataset("nucmm", tmp_path / "Zebrafish (NucMM-Z)" / "Label", work_dir=tmp_path / "out",
                        progress=False)
    with pytest.raises(ArgumentError, match="give work_dir"):
        convert_dataset("nucmm", tmp_path, progress=False)


def test_intraretinal_cystoid_fluid_case_folders_with_outline_masks(tmp_path):
    from scipy.ndimage import binary_erosion

    root = tmp_path / "download"
    top = root / "2021-training-data-ZA" / "2021-training-data-ZA"
    regions = {}
    for k, case in enumerate(["ZA001", "ZA002", "ZB010"]):
        image, mask = picture(k, shape=(30, 36), rgb=False)
        _save(top / case / "images" / f"{case}_scan.jpeg", image, quality=95)
        filled = mask > 0
        outline = filled & ~binary_erosion(filled)  # the mask as a drawn outline: the converter fills it
        drawn = np.zeros((30, 36, 3), np.uint8)
        drawn[outline] = [255, 0, 0] if k == 2 else [250, 250, 250]  # channel 0 is what counts
        _save(top / case / "masks" / f"mask_{k}.jpg", drawn, quality=92)  # JPEG noise around the line
        regions[case] = filled
    before = _tree(root)
    manifest = prepare_dataset("intraretinal-cystoid-fluid", root, tmp_path / "icf.jsonl",
                               progress=False)
    items = list(manifest)
    assert [it.id for it in items] == ["intraretinal-cystoid-fluid/ZA001_ZA001_scan",
                                      "intraretinal-cystoid-fluid/ZA002_ZA002_scan",
                                      "intraretinal-cystoid-fluid/ZB010_ZB010_scan"]
    assert [it.case for it in items] == ["ZA001", "ZA002", "ZB010"]
    assert items[0].image == "2021-training-data-ZA/2021-training-data-ZA/ZA001/images/ZA001_scan.jpeg"
    for item in items:
        assert item.labels == {"1": "intraretinal cystoid fluid"} and item.modality == "OTHER"
        label = load_item(manifest, item).label > 0
        truth = regions[item.case]
        assert (label & truth).sum() / (label | truth).sum() > 0.9  # filled, not an outline
    assert _tree(root) == before  # nothing written into the download
    assert get_dataset("intraretinal-cystoid-fluid").ready

    # a second mask file, neither named as the image: refused, naming the folder
    _save(top / "ZA002" / "masks" / "other.png", np.zeros((30, 36), np.uint8))
    with pytest.raises(InputError, match="ZA002/masks: 2 files and none named ZA002_scan"):
        prepare_dataset("intraretinal-cystoid-fluid", root, tmp_path / "icf2.jsonl", progress=False)
    # ... unless one carries the image's name
    _save(top / "ZA002" / "masks" / "ZA002_scan.png", (regions["ZA002"] * 255).astype(np.uint8))
    prepare_dataset("intraretinal-cystoid-fluid", root, tmp_path / "icf3.jsonl", progress=False)
    (top / "ZB010" / "masks" / "mask_2.jpg").unlink()
    with pytest.raises(InputError, match="ZB010/masks is empty: no mask for .*ZB010_scan.jpeg"):
        prepare_dataset("intraretinal-cystoid-fluid", root, tmp_path / "icf5.jsonl", progress=False)
    (top / "ZB010" / "masks").rmdir()
    with pytest.raises(InputError, match="ZB010/images: no masks/ folder"):
        prepare_dataset("intraretinal-cystoid-fluid", root, tmp_path / "icf4.jsonl", progress=False)


def test_mucic_hdf5_stacks_colon_tissue_components_and_hl60_instances(tmp_path):
    """MUCIC zips as torch_em reads them: image-final_NNNN.h5 + image-labels_NNNN.h5, HDF5 'Image'
    (z, y, x); colon tissue labels a foreground mask, HL60 / granulocyte labels instance ids."""
    colon = tmp_path / "colon"
    rng = np.random.default_rng(3)
    mask = np.zeros((5, 12, 14), np.uint8)
    mask[0:3, 1:5, 1:5] = 255  # two cells, apart: two components
    mask[2:5, 7:11, 8:13] = 255
    for noise in ("ColonTissue_LowNoise_3D_HDF5", "ColonTissue_HighNoise_3D_HDF5"):
        _h5(colon / noise / "image-final_0001.hdf5", rng.integers(0, 4095, (5, 12, 14)).astype(np.uint16), key="Image")
        _h5(colon / noise / "image-labels_0001.hdf5", mask, key="Image")
    before = _tree(colon)
    manifest = prepare_dataset("mucic-colon-tissue", colon, tmp_path / "colon.jsonl", progress=False)
    assert _tree(colon) == before  # nothing written into the download
    assert sorted(it.id for it in manifest) == ["mucic-colon-tissue/ColonTissue_HighNoise_3D_HDF5/0001",
                                               "mucic-colon-tissue/ColonTissue_LowNoise_3D_HDF5/0001"]
    for item in manifest:
        assert item.dim == 3 and item.shape == [5, 12, 14] and item.instance_class == "cell"
        assert item.case == "0001"  # the two noise renderings of one phantom share a split
        instances = load_item(manifest, item).instances
        assert len(np.unique(instances)) == 3 and (instances > 0).sum() == (mask > 0).sum()
        assert len(np.unique(instances[0:3, 1:5, 1:5])) == 1 and len(np.unique(instances[2:5, 7:11, 8:13])) == 1
    split = prepare_dataset("mucic-colon-tissue", colon, tmp_path / "c2.jsonl", val_fraction=0.5, seed=1,
                            progress=False)
    assert len({it.split for it in split}) == 1

    hl60 = tmp_path / "hl60"
    ids = np.zeros((4, 10, 10), np.uint16)
    ids[0:2, 0:4, 0:4], ids[1:3, 3:7, 3:7] = 1, 2  # touching nuclei stay two instances
    _h5(hl60 / "HL60_LowNoise_C25" / "image-final_0007.h5", np.zeros((4, 10, 10), np.uint8), key="Image")
    _h5(hl60 / "HL60_LowNoise_C25" / "image-labels_0007.h5", ids, key="Image")
    _h5(hl60 / "Granulocytes_LowNoise" / "image-final_0002.h5", np.zeros((4, 10, 10), np.uint8), key="Image")
    _h5(hl60 / "Granulocytes_LowNoise" / "image-labels_0002.h5", ids * 3, key="Image")
    _h5(hl60 / "Granulocytes_LowNoise" / "image-final_0003.h5", np.zeros((4, 10, 10), np.uint8), key="Image")
    items = prepare_dataset("hl60-granulocytes", hl60, tmp_path / "hl60.jsonl", progress=False)
    assert sorted(it.id for it in items) == ["hl60-granulocytes/Granulocytes_LowNoise/0002",
                                            "hl60-granulocytes/HL60_LowNoise_C25/0007"]  # 0003: no labels
    for item in items:
        assert sorted(np.unique(load_item(items, item).instances).tolist()) in ([0, 1, 2], [0, 3, 6])
    assert get_dataset("mucic-colon-tissue").ready and get_dataset("hl60-granulocytes").ready

    # bad stacks are refused, naming the file
    _h5(hl60 / "HL60_LowNoise_C25" / "image-labels_0007.h5", ids, key="labels")
    with pytest.raises(InputError, match=r"image-labels_0007.h5 has no HDF5 dataset 'Image' \(it holds labels\)"):
        convert_dataset("mucic", hl60, work_dir=tmp_path / "o1", progress=False)
    _h5(hl60 / "HL60_LowNoise_C25" / "image-labels_0007.h5", ids[:, :, :9], key="Image")
    with pytest.raises(InputError, match=r"image-labels_0007.h5 is 4 x 10 x 9 \(z, y, x\) but its image"):
        convert_dataset("mucic", hl60, work_dir=tmp_path / "o2", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image-final_"):
        convert_dataset("mucic", tmp_path / "empty", work_dir=tmp_path / "o3", progress=False)
