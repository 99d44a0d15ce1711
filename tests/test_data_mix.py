"""The training mix (medsam3.data.mix, `data merge`) and `train --dry-run`."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers.data import make_busi, make_kvasir

from medsam3.cli import main
from medsam3.data import convert_dataset, read_manifest
from medsam3.data.loading import load_item
from medsam3.data.mix import MixSource, build_mix, mix_sampling_weights, parse_source, write_mix
from medsam3.data.registry import get_dataset, list_datasets
from medsam3.errors import ArgumentError, InputError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture()
def manifests(tmp_path):
    """Two per-dataset manifests as `data convert` writes them: BUSI (4 images) and Kvasir-SEG (3)."""
    busi = convert_dataset("folder2d", make_busi(tmp_path / "busi"), tmp_path / "busi.jsonl",
                           class_name="breast tumor", modality="US", progress=False)
    kvasir = convert_dataset("folder2d", make_kvasir(tmp_path / "kvasir", n=3), tmp_path / "kvasir.jsonl",
                             class_name="polyp", progress=False)
    return busi.path, kvasir.path


def test_merge_renames_to_paper_prompts_and_keeps_files_readable(manifests, tmp_path):
    busi, kvasir = manifests
    mix = build_mix([MixSource("busi", str(busi), 1.0), MixSource("kvasir-seg", str(kvasir), 3.0)])
    out = write_mix(mix, tmp_path / "out" / "mix.jsonl")
    merged = read_manifest(out)
    assert len(merged) == 7 and merged.datasets() == ["busi", "kvasir-seg"]
    names = {it.dataset: set(it.class_names) for it in merged}
    # the prompts of the paper's public run, as the registry records them
    assert names == {"busi": {"Breast Ultrasound Lesion"}, "kvasir-seg": {"Polyp"}}
    assert get_dataset("busi").paper_prompts == {"breast tumor": "Breast Ultrasound Lesion"}
    assert all(it.id.startswith(f"{it.dataset}/") for it in merged)
    # paths are rebased onto the common root: every label still loads
    first = next(it for it in merged if it.dataset == "kvasir-seg")
    assert load_item(merged, first).label.max() == 1
    shares = {p.dataset: p.share for p in mix.parts}
    assert shares == pytest.approx({"busi": 0.25, "kvasir-seg": 0.75})
    kept = build_mix([MixSource("busi", str(busi))], prompts="as-is")
    assert {n for it in kept.items for n in it.class_names} == {"breast tumor"}


def test_unregistered_names_keep_their_classes_and_size_weights_count_items(manifests):
    busi, kvasir = manifests
    mix = build_mix([MixSource("my-polyps", str(kvasir)), MixSource("busi", str(busi))])
    assert {p.dataset: p.weight for p in mix.parts} == {"my-polyps": 3.0, "busi": 4.0}
    assert {n for it in mix.items if it.dataset == "my-polyps" for n in it.class_names} == {"polyp"}
    assert any("my-polyps" in note and "not in the registry" in note for note in mix.notes)


def test_sampling_weights_give_each_dataset_its_share():
    datasets = ["a"] * 90 + ["b"] * 10
    weights = mix_sampling_weights(datasets, {"a": 1.0, "b": 3.0})
    draws = np.random.default_rng(0).choice(len(datasets), size=40000, p=weights)
    share_b = np.mean(np.array(datasets)[draws] == "b")
    assert share_b == pytest.approx(0.75, abs=0.01)  # 3 / (1 + 3), though b has 10 % of the items
    within_a = np.bincount(draws[draws < 90], minlength=90)
    assert within_a.min() > 0.5 * within_a.mean()  # items of a dataset drawn evenly
    # size weights: every item equally often
    uniform = mix_sampling_weights(datasets, {"a": 90, "b": 10})
    assert np.allclose(uniform, 1 / 100)
    with pytest.raises(ArgumentError, match="no mix weight for dataset"):
        mix_sampling_weights(datasets, {"a": 1.0})
    with pytest.raises(ArgumentError, match="no training items"):
        mix_sampling_weights(datasets, {"a": 1.0, "b": 1.0, "c": 2.0})


def test_training_dataset_draws_follow_the_mix(manifests, tmp_path):
    """The weights the trainer builds (dataset keys of PromptSegmentationDataset) respect the mix."""
    from medsam3.data import PromptSegmentationDataset

    busi, kvasir = manifests
    mix = build_mix([MixSource("busi", str(busi), 1.0), MixSource("kvasir-seg", str(kvasir), 4.0)])
    dataset = PromptSegmentationDataset(write_mix(mix, tmp_path / "mix.jsonl"), 64)
    keys = [k[0] for k in dataset.group_keys(("dataset",))]
    weights = mix_sampling_weights(keys, mix.weights)
    draws = np.random.default_rng(1).choice(len(keys), size=20000, p=weights)
    assert np.mean(np.array(keys)[draws] == "kvasir-seg") == pytest.approx(0.8, abs=0.015)


def test_bad_mixes_are_refused(manifests, tmp_path):
    busi, kvasir = manifests
    with pytest.raises(ArgumentError, match="given twice"):
        build_mix([MixSource("busi", str(busi)), MixSource("busi", str(kvasir))])
    with pytest.raises(ArgumentError, match="no 'test' items"):
        build_mix([MixSource("busi", str(busi))], split="test")
    # every missing manifest named at once, not only the first
    with pytest.raises(InputError, match=r"2 of the mix's 3 manifests do not exist: glas \(.*glas.jsonl\), "
                                         r"drive \(.*drive.jsonl\); make each with `medsam3 data prepare"):
        build_mix([MixSource("glas", str(tmp_path / "glas.jsonl")), MixSource("busi", str(busi)),
                   MixSource("drive", str(tmp_path / "drive.jsonl"))])
    with pytest.raises(ArgumentError, match="weight"):
        parse_source(f"busi={busi}@0")
    with pytest.raises(ArgumentError, match="NAME=MANIFEST"):
        parse_source(str(busi))
    assert parse_source(f"busi={busi}@2.5").weight == 2.5 and parse_source(f"busi={busi}").weight == "size"
    assert parse_source("busi=/data/a@b/busi.jsonl@size").manifest == "/data/a@b/busi.jsonl"


def test_data_merge_cli(manifests, tmp_path, capsys):
    busi, kvasir = manifests
    out = tmp_path / "merged.jsonl"
    assert main(["data", "merge", "-o", str(out), "--add", f"busi={busi}@1", "--add", f"kvasir-seg={kvasir}@3"]) == 0
    text = capsys.readouterr().out
    assert "'breast tumor' -> 'Breast Ultrasound Lesion' (paper prompt)" in text
    assert "75.00%" in text and f"wrote 7 items to {out}" in text and "kvasir-seg: {manifest:" in text
    assert len(read_manifest(out)) == 7
    bad = tmp_path / "bad.jsonl"
    assert main(["data", "merge", "-o", str(bad), "--add", f"busi={tmp_path / 'missing.jsonl'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("medsam3: error:") and "missing.jsonl" in err and err.count("\n") == 0
    assert not bad.exists()
    before = Path(busi).read_bytes()
    assert main(["data", "merge", "-o", str(busi), "--add", f"busi={busi}", "--add", f"kvasir-seg={kvasir}"]) == 2
    assert "is one of the manifests being merged" in capsys.readouterr().err
    assert Path(busi).read_bytes() == before  # an input is never overwritten


def _mix_config(tmp_path, busi, kvasir) -> Path:
    config = tmp_path / "run.yaml"
    config.write_text(json.dumps({
        "model": "random:tiny", "output_dir": str(tmp_path / "run"),
        "mix": {"prompts": "paper", "datasets": {"busi": {"manifest": str(busi), "weight": 1},
                                                 "kvasir-seg": {"manifest": str(kvasir), "weight": 3}}},
        "data": {"batch_size": 2}, "train": {"max_steps": 70}}), encoding="utf-8")
    return config


def test_train_dry_run_prints_mix_steps_and_memory(manifests, tmp_path, capsys):
    busi, kvasir = manifests
    config = _mix_config(tmp_path, busi, kvasir)
    assert main(["train", "--config", str(config), "--dry-run", "--processes", "2"]) == 0
    text = capsys.readouterr().out
    assert "mix: 2 dataset(s), 7 items (7 in 'train')" in text
    assert "'polyp' -> 'Polyp' (paper prompt)" in text and "75.00%" in text
    # 70 steps x batch 2 x 2 processes = 280 images = 40 epochs of 7 items
    assert "70 optimizer steps x batch 2 x 2 process(es) = 280 images = 40.00 epochs of 7 training items" in text
    assert "memory estimate per process" in text and "total (estimate)" in text and "GiB" in text
    assert not (tmp_path / "run").exists()  # a dry run writes nothing


def test_memory_estimate_of_the_paper_recipe():
    """SAM3's detector on the meta device: the paper's ~840M parameters, 16 bytes each to train."""
    from medsam3.model.configs import build_config
    from medsam3.train.config import load_config
    from medsam3.train.dryrun import estimate_memory

    cfg = load_config(CONFIGS / "train-paper-gpu.yaml")
    assert len(cfg.mix.datasets) == 32 and "mmdb" not in cfg.mix.datasets  # PCMMD in MMDB's place
    assert cfg.mix.datasets["pcmmd"] == {"manifest": "data/pcmmd.jsonl", "weight": "size"}
    assert set(cfg.mix.datasets) <= {d.name for d in list_datasets("train")}
    mem = estimate_memory(cfg, build_config("default"))
    assert mem.parameters == 840_376_374 and mem.trainable == mem.parameters
    assert mem.weights + mem.gradients + mem.optimizer == 16 * mem.parameters  # ~12.5 GiB
    # checkpointed ViT at 1008 px plus two prompt rows: a few GiB, well under an H100's 80
    assert 1 * 2**30 < mem.activations < 20 * 2**30
    cfg.train.activation_checkpointing = False
    assert estimate_memory(cfg, build_config("default")).activations > mem.activations


def test_registry_records_the_paper_prompts_and_what_is_ready():
    train = list_datasets("train")
    assert len(train) == 33
    without = [d.name for d in train if not d.paper_prompts]
    assert without == ["m2caiseg"]  # its run shows only 'Tissue', with no class table
    assert get_dataset("papila").paper_prompts == {"optic disc": "optic disc and cup",
                                                   "optic cup": "optic disc and cup"}
    assert "prompts" in get_dataset("cholecseg8k").uncertain and "liver" in get_dataset("cholecseg8k").doubts
    assert get_dataset("kvasir-seg").ready and get_dataset("papila").ready and get_dataset("nucmm-z").ready
    assert not get_dataset("mmdb").ready
    assert all(d.verified_from for d in list_datasets() if d.paper_prompts)


@pytest.mark.slow  # ~35 s on 2 busy cores: one real training step
def test_a_training_run_merges_its_mix_and_draws_by_its_weights(manifests, tmp_path):
    """mix: in a config: the run writes the merged manifest (paper prompts) to data.manifest and
    its sampler draws the datasets with the mix's shares (one step on a tiny model, CPU)."""
    from helpers.train import tiny_config

    from medsam3.model import create_random_model
    from medsam3.train.config import config_from_dict
    from medsam3.train.loop import Trainer

    busi, kvasir = manifests
    model = create_random_model("tiny", tmp_path / "tiny112", seed=0, image_size=112)
    cfg = tiny_config(model, None, tmp_path / "run", train={"max_steps": 1, "checkpoint_every": 0},
                      data={"val_samples": 0},
                      mix={"datasets": {"busi": {"manifest": str(busi), "weight": 1},
                                        "kvasir-seg": {"manifest": str(kvasir), "weight": 9}}})
    del cfg["data"]["manifest"]  # the mix is the data
    trainer = Trainer(config_from_dict(cfg))
    assert trainer.run().steps == 1
    merged = read_manifest(tmp_path / "run" / "mix.jsonl")
    assert {n for it in merged for n in it.class_names} == {"Breast Ultrasound Lesion", "Polyp"}
    keys = [k[0] for k in trainer.train_set.group_keys(("dataset",))]
    weights = np.asarray(trainer.sampler.weights, dtype=float)
    assert weights[[k == "kvasir-seg" for k in keys]].sum() == pytest.approx(0.9)


def test_docs_registry_table_is_current():
    """docs/datasets.md carries the registry table as registry_table() writes it."""
    from medsam3.data.registry import registry_table

    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text(encoding="utf-8")
    assert registry_table() in doc


def test_dry_run_of_a_plain_manifest_and_a_lora_run(manifests, tmp_path):
    from medsam3.model.configs import build_config
    from medsam3.train.config import config_from_dict
    from medsam3.train.dryrun import dry_run, estimate_memory

    busi, _ = manifests
    cfg = config_from_dict({"model": "random:tiny", "output_dir": str(tmp_path / "run"),
                            "data": {"manifest": str(busi)}, "train": {"max_steps": 8}})
    text = dry_run(cfg, processes=1)
    assert f"data: {busi}: 1 dataset(s), 4 items in 'train'; sampling: balanced by modality, then dataset" in text
    assert "8 optimizer steps x batch 1 x 1 process(es) = 8 images = 2.00 epochs of 4 training items" in text
    assert "configuration random:tiny" in text
    full = estimate_memory(cfg, build_config("tiny"))
    cfg.train.mode = "lora"
    lora = estimate_memory(cfg, build_config("tiny"))
    assert lora.parameters == full.parameters and 0 < lora.trainable < full.trainable
    assert lora.optimizer == 8 * lora.trainable and lora.weights == full.weights
