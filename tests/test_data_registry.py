"""The dataset registry, `data prepare` on downloads laid out as their providers ship them,
and the `medsam3 data` command line."""

from __future__ import annotations

import argparse
import inspect
import json
import shutil

import numpy as np
import pytest
from helpers.data import make_busi, make_coco, make_isic, make_kvasir, make_nnunet, picture, save_jpeg, save_png

from medsam3.data import REGISTRY, get_dataset, list_datasets, prepare_dataset, read_manifest
from medsam3.data.cli import register
from medsam3.data.convert import _converters
from medsam3.errors import ArgumentError, InputError
from medsam3.prompts import resolve_prompt

PAPER_TRAINING = ["ARCADE", "BKAI-IGH NeoPolyp", "BTXRD", "BUS-UCLM", "BUSI", "Breast Cancer Segmentation",
                  "COVID-QU-Ex", "COph100", "CT2US for kidney", "Chest X-ray pneumothorax",
                  "Chest X-ray masks and labels", "CholecSeg8k", "DRIVE", "FetoPlac", "GlaS", "ISIC 2018",
                  "Intraretinal cystoid fluid", "Kvasir-SEG", "MMDB", "MUCIC colon tissue", "HL60 / granulocytes",
                  "MoNuSeg", "NucMM-Z", "PAPILA", "PCMMD", "PanNuke", "PolypGen", "RAVIR", "SegThy", "US nerve",
                  "UroCell", "m2caiSeg", "PS-FH-AOP 2023"]
PAPER_DICE = {"ps-fh-aop-2023": (65.7, 91.6), "drive": (24.8, 55.8), "coph100": (34.1, 63.1),
              "breast-cancer-segmentation": (16.3, 43.8), "intraretinal-cystoid-fluid": (62.0, 85.0),
              "m2caiseg": (67.7, 88.1), "fetoplac": (56.6, 77.0), "glas": (68.9, 88.2), "segthy": (57.3, 78.5),
              "papila": (86.2, 99.4), "tn3k": (4.2, 40.8), "hc18": (23.9, 92.6), "cvc-clinicdb": (0.0, 87.9),
              "etis-laribpolypdb": (0.0, 86.1), "ph2": (18.4, 92.7), "chase-db1": (17.9, 62.6),
              "stare": (18.6, 54.4)}


def test_registry_holds_the_papers_datasets():
    train, external = list_datasets("train"), list_datasets("external")
    assert len(train) == 33 and len(external) == 7
    assert len(REGISTRY) == len({d.name for d in REGISTRY.values()})
    for paper_name, entry in zip(PAPER_TRAINING, train):  # same order as the paper's list
        key = paper_name.lower().split()[0].split("/")[0].replace("-", "")
        assert key[:4] in (entry.name + entry.title).lower().replace("-", ""), (paper_name, entry.name)
    assert {d.name: d.paper_dice for d in REGISTRY.values() if d.paper_dice} == PAPER_DICE
    internal = [d.paper_dice for d in train if d.paper_dice]
    assert np.mean([v[1] for v in internal]) == pytest.approx(77.0, abs=0.1)  # the paper's average (rounded)
    assert np.mean([d.paper_dice[1] for d in external]) == pytest.approx(73.9, abs=0.1)


def test_registry_entries_are_usable():
    converters = _converters()
    for d in REGISTRY.values():
        assert d.role in ("train", "external", "extra") and d.dim in (2, 3)
        assert d.uncertain or (d.licence != "unknown" and d.source and d.citation), d.name
        assert set(d.uncertain) <= set(d.__dataclass_fields__), d.name
        if d.layout is None:
            assert d.notes, d.name  # says what to do first
            continue
        accepted = set(inspect.signature(converters[d.layout]).parameters)
        for options in d.conversions:
            assert set(options) - {"subdir", "id_suffix", "class_map"} <= accepted, d.name
        for name in d.classes:
            if not name[0].isdigit() and not name.startswith("~"):
                assert resolve_prompt(name, warn=False).known, (d.name, name)


def test_get_dataset_and_unpreparable_sets(tmp_path):
    assert get_dataset("Kvasir_SEG").name == "kvasir-seg"
    with pytest.raises(ArgumentError, match="did you mean kvasir-seg"):
        get_dataset("kvasir")
    with pytest.raises(ArgumentError, match="unknown dataset 'imagenet'"):
        get_dataset("imagenet")
    with pytest.raises(ArgumentError, match="MMDB cannot be read as downloaded: Not identified"):
        prepare_dataset("mmdb", tmp_path)
    with pytest.raises(ArgumentError, match="--root"):
        prepare_dataset("kvasir-seg", None)


def test_prepare_kvasir_isic_busi(tmp_path):
    kvasir = make_kvasir(tmp_path / "kvasir-seg" / "Kvasir-SEG")
    m = prepare_dataset("kvasir-seg", kvasir, tmp_path / "kvasir.jsonl", progress=False)
    assert len(m) == 3 and m[0].dataset == "kvasir-seg" and m[0].labels == {"1": "polyp"}
    isic = make_isic(tmp_path / "isic")
    m = prepare_dataset("isic-2018", isic, tmp_path / "isic.jsonl", val_fraction=0.5, progress=False)
    assert [it.case for it in m] == ["ISIC_0000000", "ISIC_0000001"] and m[0].modality == "RGB"
    busi = make_busi(tmp_path / "Dataset_BUSI_with_GT")
    m = prepare_dataset("busi", busi, tmp_path / "busi.jsonl", progress=False)
    assert len(m) == 4 and {it.modality for it in m} == {"US"}
    assert read_manifest(tmp_path / "busi.jsonl")[0].labels == {"1": "breast tumor"}


def test_prepare_covid_qu_ex_two_conversions(tmp_path):
    root = tmp_path / "COVID-QU-Ex"
    for part, masks in (("Lung Segmentation Data", ["lung masks"]),
                        ("Infection Segmentation Data", ["infection masks", "lung masks"])):
        for split in ("Train", "Val"):
            image, mask = picture(1, rgb=False)
            base = root / part / part / split / "COVID-19"
            save_png(base / "images" / "covid_1.png", image)
            for name in masks:
                save_png(base / name / "covid_1.png", mask)
    m = prepare_dataset("covid-qu-ex", root, tmp_path / "covid.jsonl", progress=False)
    ids = sorted(it.id for it in m)
    # lungs from the lung set, infections from the infection set (its lung masks repeat the lung set)
    assert ids == ["covid-qu-ex/Infection Segmentation Data/Train/COVID-19/covid_1/infection",
                   "covid-qu-ex/Infection Segmentation Data/Val/COVID-19/covid_1/infection",
                   "covid-qu-ex/Lung Segmentation Data/Train/COVID-19/covid_1/lungs",
                   "covid-qu-ex/Lung Segmentation Data/Val/COVID-19/covid_1/lungs"]
    infection = [it for it in m if it.id.endswith("/infection")]
    assert {it.labels["1"] for it in infection} == {"covid-19 infection"}
    assert {it.split for it in m} == {"train", "val"}
    assert infection[0].image.startswith("Infection Segmentation Data/")  # relative to the download
    from medsam3.data.loading import load_item

    assert load_item(m, infection[0]).label.sum() > 0


def test_prepare_arcade_coco_with_class_map(tmp_path):
    root = tmp_path / "arcade"
    for task in ("syntax", "stenosis"):
        make_coco(root / task / "train")
    m = prepare_dataset("arcade", root, tmp_path / "arcade.jsonl", progress=False)
    assert len(m) == 6
    assert {it.labels["1"] for it in m if it.id.endswith("/syntax")} == {"coronary artery"}
    assert {tuple(it.labels.values()) for it in m if it.id.endswith("/stenosis")} == {("stenosis", "stenosis")}
    assert m[0].image.startswith("syntax/train/images/")



def test_prepare_bus_uclm_rgb_masks_named_like_the_images(tmp_path):
    base = tmp_path / "BUS-UCLM Breast ultrasound lesion segmentation dataset" / "BUS-UCLM"
    image, mask = picture(4, rgb=True)
    for name, colour in (("ANFO_005", (0, 255, 0)), ("COPE_012", (255, 0, 0)), ("ALWI_001", None)):
        rgb = np.zeros(image.shape, np.uint8)
        if colour:
            rgb[mask > 0] = colour
        save_png(base / "images" / f"{name}.png", image)
        save_png(base / "masks" / f"{name}.png", rgb)  # same name, no suffix
    save_png(base / "images" / "ANFO_006.png", image)  # a second image of patient ANFO
    save_png(base / "masks" / "ANFO_006.png", np.zeros(image.shape, np.uint8))
    m = prepare_dataset("bus-uclm", tmp_path, tmp_path / "uclm.jsonl", val_fraction=0.5, progress=False)
    from medsam3.data.loading import load_item

    base_name = "BUS-UCLM Breast ultrasound lesion segmentation dataset/BUS-UCLM"
    assert [it.id.rsplit("/", 1)[1] for it in m] == ["ALWI_001", "ANFO_005", "ANFO_006", "COPE_012"]
    assert [it.case for it in m] == [f"{base_name}/{p}" for p in ("ALWI", "ANFO", "ANFO", "COPE")]
    assert m[1].split == m[2].split  # one patient, one split
    items = [it for it in m if it.id.rsplit("/", 1)[1] != "ANFO_006"]
    assert m[0].label_format == "color" and m[0].labels == {"1": "breast tumor"} and m[0].modality == "US"
    labels = [load_item(m, it).label for it in items]
    assert labels[0].sum() == 0  # a normal image: black mask, lesion absent
    for label in labels[1:]:  # benign green and malignant red are both the lesion
        assert np.array_equal(label > 0, mask > 0) and set(np.unique(label)) == {0, 1}


def test_prepare_siim_png_release_split_from_file_names(tmp_path):
    base = tmp_path / "siim-acr-pneumothorax"
    image, mask = picture(5, rgb=False)
    for name, positive in (("0_train_0_", False), ("1_train_1_", True), ("2_test_1_", True)):
        save_png(base / "png_images" / f"{name}.png", image)
        save_png(base / "png_masks" / f"{name}.png", mask if positive else np.zeros_like(mask))
    (base / "stage_1_train_images.csv").write_text("new_filename,ImageId,has_pneumo\n0_train_0_.png,x,0\n")
    m = prepare_dataset("chest-xray-pneumothorax", tmp_path, tmp_path / "ptx.jsonl", progress=False)
    from medsam3.data.loading import load_item

    assert [(it.case.rsplit("/", 1)[1], it.split) for it in m] == [
        ("0_train_0_", "train"), ("1_train_1_", "train"), ("2_test_1_", "test")]
    assert m[0].image == "siim-acr-pneumothorax/png_images/0_train_0_.png"
    assert load_item(m, m[0]).label.sum() == 0 and np.array_equal(load_item(m, m[2]).label > 0, mask > 0)


def test_prepare_ct2us_nested_kaggle_folders(tmp_path):
    image, mask = picture(6, rgb=True)
    for name in ("case1_012", "case2_100"):
        save_png(tmp_path / "slice" / "slice" / f"{name}.png", image)
        save_png(tmp_path / "mask" / "mask" / f"{name}.png", (mask > 0).astype(np.uint8))  # 0/1
    m = prepare_dataset("ct2us-kidney", tmp_path, tmp_path / "ct2us.jsonl", progress=False)
    from medsam3.data.loading import load_item

    assert [it.case for it in m] == ["slice/case1_012", "slice/case2_100"] and m[0].labels == {"1": "kidney"}
    assert m[0].image == "slice/slice/case1_012.png" and m[0].modality == "US"
    assert np.array_equal(load_item(m, m[1]).label > 0, mask > 0)
    (tmp_path / "mask" / "mask" / "case2_100.png").unlink()
    with pytest.raises(InputError, match="case2_100.*have no mask"):
        prepare_dataset("ct2us-kidney", tmp_path, tmp_path / "again.jsonl", progress=False)



def test_prepare_m2caiseg_colour_table_unknown_ignored(tmp_path):
    from medsam3.data.loading import load_item
    from medsam3.data.registry import M2CAISEG_COLOURS

    base = tmp_path / "m2caiSeg dataset"
    image, mask = picture(8, rgb=True)
    gt = np.zeros(image.shape, np.uint8)  # black: out of frame
    gt[mask > 0] = M2CAISEG_COLOURS["liver"]
    gt[:3, :5] = M2CAISEG_COLOURS["grasper"]
    gt[-3:, :5] = (170, 0, 85)  # 'unknown'
    gt[-3:, -5:] = M2CAISEG_COLOURS["abdominal wall"]  # 'upper wall'
    for part, names in (("train", ["1"]), ("trainval", ["1", "2"]), ("test", ["9"])):
        for name in names:
            save_jpeg(base / part / "images" / f"{name}.jpg", image)
            save_png(base / part / "groundtruth" / (f"{name}_gt.png" if part == "test" else f"{name}.png"), gt)
    m = prepare_dataset("m2caiseg", tmp_path, tmp_path / "m2cai.jsonl", progress=False)
    assert [(it.case.rsplit("/", 2)[-2:], it.split) for it in m] == [
        (["trainval", "1"], "train"), (["trainval", "2"], "train"), (["test", "9"], "test")]  # train/ skipped
    item = m[2]
    assert item.label_format == "color" and item.ignore_value == 255 and len(item.labels) == 17
    names = {v: k for k, v in item.labels.items()}
    label = load_item(m, item).label
    assert (label[:3, :5] == int(names["grasper"])).all() and (label[-3:, :5] == 255).all()
    assert (label[-3:, -5:] == int(names["abdominal wall"])).all() and label[0, -1] == 0
    inside = (mask > 0).copy()
    inside[:3, :5] = inside[-3:, :] = False
    assert (label[inside] == int(names["liver"])).all()


def test_prepare_segthy_ultrasound_sweeps(tmp_path):
    from helpers.data import write_volume

    from medsam3.data.loading import load_item

    base = tmp_path / "US_data" / "US_volunteer_dataset" / "ground_truth_data"
    label = np.zeros((6, 10, 12), np.uint8)
    label[1:5, 2:6, 2:6] = 1  # thyroid
    label[1:5, 7:9, 1:3], label[1:5, 7:9, 9:11] = 2, 4  # carotid arteries, both sides
    label[1:5, 1:2, 8:10], label[1:5, 1:2, 10:12] = 3, 5  # jugular veins
    volume = np.random.default_rng(0).integers(0, 200, label.shape).astype(np.uint8)
    for sweep in ("005_P1_1_left", "005_P2_1_right", "014_P3_1_left"):
        write_volume(base / "US" / f"{sweep}_US.nii", volume, spacing=(0.12, 0.12, 0.12))
        write_volume(base / "US_thyroid_label" / f"{sweep}.nii", label, spacing=(0.12, 0.12, 0.12))
    m = prepare_dataset("segthy", tmp_path, tmp_path / "segthy.jsonl", val_fraction=0.5, progress=False)
    assert [it.id for it in m] == ["segthy/005_P1_1_left", "segthy/005_P2_1_right", "segthy/014_P3_1_left"]
    assert m[0].case == m[1].case == "005" and m[0].split == m[1].split and m[0].dim == 3
    assert m[0].shape == [6, 10, 12] and m[0].modality == "US"
    assert dict(m[0].targets()) == {"thyroid gland": (1,), "carotid artery": (2, 4), "jugular vein": (3, 5)}
    assert m[0].image == "US_data/US_volunteer_dataset/ground_truth_data/US/005_P1_1_left_US.nii"
    loaded = load_item(m, m[2]).label
    assert int((loaded == 1).sum()) == 4 * 4 * 4
    write_volume(base / "US_thyroid_label" / "020_P2_1_left.nii", label)
    with pytest.raises(InputError, match="020_P2_1_left.*have no volume"):
        prepare_dataset("segthy", tmp_path, tmp_path / "s2.jsonl", progress=False)


# --- the command line ---------------------------------------------------------------------

def run(*argv) -> int:
    parser = argparse.ArgumentParser(prog="medsam3")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", *map(str, argv)])
    return args.func(args)


def test_cli_convert_inspect_preview_cache(tmp_path, capsys):
    root = make_nnunet(tmp_path / "Dataset011_Cli", test_cases=())
    out = tmp_path / "m.jsonl"
    assert run("convert", "--layout", "nnunet", "-i", root, "-o", out, "--channels", "0",
               "--class-map", '{"liver tumor": "liver lesion"}', "--val-fraction", "0.3", "-q") == 0
    assert "wrote 3 items" in capsys.readouterr().out
    assert read_manifest(out)[0].labels == {"1": "liver", "2": "liver lesion"}
    assert run("inspect", out, "--json", "-q") == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["items"] == 3 and summary["classes"]["liver lesion"]["prompt"] == "liver tumor"
    assert run("inspect", out, "--scan", "-q") == 0
    assert "liver" in capsys.readouterr().out
    assert run("preview", out, "-o", tmp_path / "grid.png", "--count", "2", "-q") == 0
    assert (tmp_path / "grid.png").stat().st_size > 1000
    assert run("cache", out, "-o", tmp_path / "cache", "-q") == 0
    assert "cached 3 items in 1 shard(s)" in capsys.readouterr().out
    kv = make_kvasir(tmp_path / "kv", n=2)
    assert run("convert", "--layout", "folder2d", "-i", kv, "-o", tmp_path / "kv.jsonl", "--class-name", "polyp",
               "--modality", "rgb", "-q") == 0
    assert read_manifest(tmp_path / "kv.jsonl")[0].modality == "RGB"


def test_cli_list_and_prepare(tmp_path, capsys, monkeypatch):
    assert run("list") == 0
    text = capsys.readouterr().out
    assert "Training sets of the paper (33)" in text and "External (unseen) test sets of the paper (7)" in text
    assert "kvasir-seg" in text and "\n  ? arcade" in text and "\n    isic-2018" in text
    assert run("list", "--role", "external", "-v") == 0
    text = capsys.readouterr().out
    assert "hc18" in text and "licence:" in text and "SAM3 23.9 -> Medical SAM3 92.6" in text
    assert run("list", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == len(REGISTRY)
    kv = make_kvasir(tmp_path / "kv", n=2)
    monkeypatch.chdir(tmp_path)
    assert run("prepare", "kvasir-seg", "--root", kv, "-q") == 0
    assert "wrote 2 items of Kvasir-SEG to kvasir-seg.jsonl" in capsys.readouterr().out
    assert len(read_manifest(tmp_path / "kvasir-seg.jsonl")) == 2


def test_cli_errors_name_the_value(tmp_path):
    with pytest.raises(ArgumentError, match="--labels 'liver' is not JSON"):
        run("convert", "--layout", "folder2d", "-i", tmp_path, "-o", tmp_path / "m.jsonl", "--labels", "liver")
    with pytest.raises(ArgumentError, match="-O 'image' must be KEY=VALUE"):
        run("convert", "--layout", "atlas", "-i", tmp_path, "-o", tmp_path / "m.jsonl", "-O", "image")
    with pytest.raises(InputError, match="no such directory"):
        run("convert", "--layout", "nnunet", "-i", tmp_path / "none", "-o", tmp_path / "m.jsonl")
    with pytest.raises(InputError, match="cannot read manifest"):
        run("inspect", tmp_path / "none.jsonl")
    with pytest.raises(ArgumentError, match="--channels 'a' must be numbers"):
        run("convert", "--layout", "nnunet", "-i", tmp_path, "-o", tmp_path / "m.jsonl", "--channels", "a")
    shutil.rmtree(tmp_path)
