"""The training engine on real data (Colin27 brain, tiny model at 112 px, CPU): checkpoints are
model directories, a run killed with SIGKILL resumes to the same weights as a straight run,
non-finite losses and gradients are skipped and stop the run when they persist, LoRA and
freezing presets train only what they should."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from helpers.train import brain_manifest, tiny_config

from medsam3.errors import ArgumentError
from medsam3.train.config import config_from_dict
from medsam3.train.loop import Trainer, TrainingError, checkpoint_dirs, train


def _train_in_child(config: dict) -> None:
    import logging

    logging.getLogger("medsam3.train").handlers.clear()
    train(config_from_dict(config))


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return brain_manifest(tmp_path_factory.mktemp("brain"))


@pytest.fixture(scope="module")
def model112(tmp_path_factory):
    from medsam3.model import create_random_model

    return create_random_model("tiny", tmp_path_factory.mktemp("m") / "tiny112", seed=0, image_size=112)


def detector_weights(directory: Path) -> dict[str, torch.Tensor]:
    return {k: v for k, v in load_file(str(directory / "model.safetensors")).items() if k.startswith("detector_model.")}


def test_straight_vs_killed_and_resumed_run(model112, manifest, tmp_path):
    """6 steps straight == 3 steps, SIGKILL during step 4-6, resume to 6 (checkpoints every 3)."""
    sections = {"train": {"max_steps": 6, "checkpoint_every": 3, "validate_every": 3},
                "data": {"val_samples": 2, "box_prompt_probability": 0.5}}
    straight = train(config_from_dict(tiny_config(model112, manifest, tmp_path / "straight", **sections)))
    assert straight.steps == 6 and straight.skipped_steps == 0
    assert [v["step"] for v in straight.validation] == [3, 6]

    killed_dir = tmp_path / "killed"
    # a forked child (this process has torch and transformers imported already: no 15 s of imports)
    ctx = multiprocessing.get_context("fork")
    proc = ctx.Process(target=_train_in_child, args=(tiny_config(model112, manifest, killed_dir, **sections),))
    proc.start()
    marker = killed_dir / "checkpoints" / "step-0000003" / "trainer.json"
    deadline = time.time() + 120
    while not marker.is_file():
        if not proc.is_alive() or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the training process ended (exit code {proc.exitcode}) or stalled before its first "
                        "checkpoint")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert proc.exitcode == -signal.SIGKILL
    assert not (killed_dir / "final").exists(), "the run finished before it was killed: nothing was tested"
    assert [s for s, _ in checkpoint_dirs(killed_dir)] == [3]

    resumed = train(config_from_dict(tiny_config(model112, manifest, killed_dir, **sections)), resume=True)
    assert resumed.steps == 6
    assert [v["step"] for v in resumed.validation] == [3, 6]
    a, b = detector_weights(straight.final_model), detector_weights(resumed.final_model)
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-6, f"resumed weights differ from the straight run by {worst}"
    assert straight.rank_digests == resumed.rank_digests  # bit-identical on this machine

    # the killed run's rows past its checkpoint were dropped: one train/loss row per step
    rows = (killed_dir / "metrics.csv").read_text().splitlines()
    steps = [int(r.split(",")[0]) for r in rows[1:] if ",train/loss," in r]
    assert steps == [1, 2, 3, 4, 5, 6]

    # a checkpoint and the final model are complete model directories; trackers untouched
    from medsam3.model import MedSAM3

    source = load_file(str(model112 / "model.safetensors"))
    final = load_file(str(straight.final_model / "model.safetensors"))
    assert final.keys() == source.keys()
    assert all(torch.equal(final[k], source[k]) for k in source if not k.startswith("detector_model."))
    changed = [k for k in source if k.startswith("detector_model.") and not torch.equal(final[k], source[k])]
    assert len(changed) > 100
    loaded = MedSAM3.from_pretrained(straight.final_model, device="cpu")
    key = "detr_decoder.layers.0.mlp.fc1.weight"
    assert torch.equal(loaded.detector.state_dict()[key], final[f"detector_model.{key}"])
    ckpt = checkpoint_dirs(straight.output_dir)[-1][1]
    assert json.loads((ckpt / "trainer.json").read_text())["step"] == 6
    assert MedSAM3.from_pretrained(ckpt / "model", device="cpu").image_size == 112
    assert (straight.output_dir / "best" / "best.json").is_file()

    with pytest.raises(Exception, match="already holds checkpoints"):
        train(config_from_dict(tiny_config(model112, manifest, tmp_path / "straight", **sections)))


class NanGradient(torch.autograd.Function):
    """Adds 0 to the loss but sends NaN into the gradients."""

    @staticmethod
    def forward(ctx, x):
        return x.new_zeros(())

    @staticmethod
    def backward(ctx, grad):
        return grad.new_full((), float("nan"))


def poison(monkeypatch, nan_loss_calls=(), nan_grad_calls=(), always=False):
    from medsam3.train.losses import SetCriterion

    original = SetCriterion.__call__
    calls = {"n": 0}

    def patched(self, outputs, targets, num_boxes=None):
        result = original(self, outputs, targets, num_boxes)
        calls["n"] += 1
        if always or calls["n"] in nan_loss_calls:
            result.terms["class"] = result.terms["class"] * float("nan")
            result.total = result.total * float("nan")
        if calls["n"] in nan_grad_calls:
            result.total = result.total + NanGradient.apply(outputs["pred_logits"].sum())
        return result

    monkeypatch.setattr(SetCriterion, "__call__", patched)


def test_nonfinite_steps_are_skipped(model112, manifest, tmp_path, monkeypatch):
    poison(monkeypatch, nan_loss_calls={2}, nan_grad_calls={3})
    cfg = tiny_config(model112, manifest, tmp_path / "run", train={"max_steps": 4, "checkpoint_every": 0,
                                                                    "max_nonfinite_steps": 3})
    result = train(config_from_dict(cfg))
    assert result.steps == 4 and result.skipped_steps == 2
    assert all(torch.isfinite(v).all() for v in detector_weights(result.final_model).values())
    log = (tmp_path / "run" / "train.log").read_text()
    assert "step 2 skipped" in log and "non-finite terms ['class']" in log and "step 3 skipped" in log
    assert "train/skipped_step" in (tmp_path / "run" / "metrics.csv").read_text()


def test_persistent_nonfinite_loss_stops_the_run(model112, manifest, tmp_path, monkeypatch):
    poison(monkeypatch, always=True)
    cfg = tiny_config(model112, manifest, tmp_path / "run", train={"max_steps": 6, "checkpoint_every": 1,
                                                                    "max_nonfinite_steps": 2})
    with pytest.raises(TrainingError, match="not finite in 2 steps in a row"):
        train(config_from_dict(cfg))
    # the one checkpoint written (after step 1) holds the untouched, finite weights
    for _, ckpt in checkpoint_dirs(tmp_path / "run"):
        assert all(torch.isfinite(v).all() for v in detector_weights(ckpt / "model").values())


def test_no_checkpoint_of_nonfinite_weights(model112, manifest, tmp_path):
    trainer = Trainer(config_from_dict(tiny_config(model112, manifest, tmp_path / "run")))
    trainer._setup()
    with torch.no_grad():
        next(trainer.model.parameters())[0] = float("nan")
    with pytest.raises(TrainingError, match="refusing to write a checkpoint"):
        trainer.save_checkpoint(1)
    assert checkpoint_dirs(tmp_path / "run") == []
    assert not list((tmp_path / "run" / "checkpoints").iterdir())


def test_lora_trains_adapters_and_resumes(model112, manifest, tmp_path, monkeypatch):
    lora = {"r": 4, "alpha": 8, "target_modules": ["q_proj", "v_proj"], "train_modules": ["mask_decoder"]}
    sections = {"train": {"mode": "lora", "max_steps": 3, "checkpoint_every": 2}, "lora": lora}
    straight = train(config_from_dict(tiny_config(model112, manifest, tmp_path / "a", **sections)))
    source, final = detector_weights(model112), detector_weights(straight.final_model)
    assert final.keys() == source.keys()
    diff = {k for k in source if not torch.equal(source[k], final[k])}
    assert diff and all(k.endswith(("q_proj.weight", "v_proj.weight")) or k.startswith("detector_model.mask_decoder.")
                        for k in diff)
    assert any("q_proj" in k for k in diff) and any("mask_decoder" in k for k in diff)

    # crash right after the step-2 checkpoint, resume: the same merged weights
    original = Trainer.save_checkpoint

    def crash(self, step):
        original(self, step)
        raise KeyboardInterrupt("simulated crash")

    monkeypatch.setattr(Trainer, "save_checkpoint", crash)
    with pytest.raises(KeyboardInterrupt):
        train(config_from_dict(tiny_config(model112, manifest, tmp_path / "b", **sections)))
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    assert (checkpoint_dirs(tmp_path / "b")[-1][1] / "state" / "adapter.safetensors").is_file()
    resumed = train(config_from_dict(tiny_config(model112, manifest, tmp_path / "b", **sections)), resume=True)
    b = detector_weights(resumed.final_model)
    assert max(float((final[k] - b[k]).abs().max()) for k in final) <= 1e-6


def test_frozen_vision_backbone_stays_unchanged(model112, manifest, tmp_path):
    cfg = tiny_config(model112, manifest, tmp_path / "run",
                      train={"max_steps": 2, "checkpoint_every": 0, "freeze": ["vision"],
                             "activation_checkpointing": True})
    result = train(config_from_dict(cfg))
    source, final = detector_weights(model112), detector_weights(result.final_model)
    backbone = [k for k in source if k.startswith("detector_model.vision_encoder.backbone.")]
    assert backbone and all(torch.equal(source[k], final[k]) for k in backbone)
    assert not torch.equal(source["detector_model.detr_decoder.layers.0.mlp.fc1.weight"],
                           final["detector_model.detr_decoder.layers.0.mlp.fc1.weight"])


def test_resume_with_more_steps_follows_the_new_schedule(model112, manifest, tmp_path):
    short = tiny_config(model112, manifest, tmp_path / "run", train={"max_steps": 2, "checkpoint_every": 0},
                        optim={"warmup_steps": 0, "cooldown_steps": 2})
    first = detector_weights(train(config_from_dict(short)).final_model)
    longer = tiny_config(model112, manifest, tmp_path / "run", train={"max_steps": 3, "checkpoint_every": 0},
                         optim={"warmup_steps": 0, "cooldown_steps": 0})
    result = train(config_from_dict(longer), resume=True)
    assert result.steps == 3
    # the old schedule had reached lr 0 at its end (step 2); the new one still trains at step 3
    after = detector_weights(result.final_model)
    assert any(not torch.equal(first[k], after[k]) for k in first)


def test_a_context_run_records_its_input_and_passes_it_on(model112, manifest, tmp_path):
    """data.context_mm: the checkpoints say so in medsam3.json (inference reads it back), a run
    from such a model keeps it (tracker training too), 0 turns it off."""
    from medsam3.model.loader import read_model_info

    cfg = tiny_config(model112, manifest, tmp_path / "ctx", train={"max_steps": 1, "checkpoint_every": 0},
                      data={"context_mm": 3.0, "val_samples": 2})
    result = train(config_from_dict(cfg))
    assert read_model_info(result.final_model) == {"context_mm": 3.0}
    again = tiny_config(result.final_model, manifest, tmp_path / "again", train={"max_steps": 1, "checkpoint_every": 0},
                        data={"val_samples": 0})
    assert read_model_info(train(config_from_dict(again)).final_model)["context_mm"] == 3.0
    plain = tiny_config(result.final_model, manifest, tmp_path / "plain", train={"max_steps": 1, "checkpoint_every": 0},
                        data={"context_mm": 0, "val_samples": 0})
    assert "context_mm" not in read_model_info(train(config_from_dict(plain)).final_model)
    tracker = tiny_config(result.final_model, manifest, tmp_path / "trk",
                          train={"target": "tracker", "max_steps": 1, "checkpoint_every": 0},
                          data={"val_split": None}, tracker={"clip_length": 3})
    assert read_model_info(train(config_from_dict(tracker)).final_model)["context_mm"] == 3.0


def test_class_weights_are_checked_against_the_training_classes(model112, manifest, tmp_path):
    """data.class_weights: a run trains with them; a class no item labels stops the run before
    it trains (the manifest here labels "brain" only)."""
    cfg = tiny_config(model112, manifest, tmp_path / "ok", train={"max_steps": 1, "checkpoint_every": 0},
                      data={"class_weights": {"brain": 2}, "val_samples": 0})
    assert train(config_from_dict(cfg)).steps == 1
    bad = tiny_config(model112, manifest, tmp_path / "bad", train={"max_steps": 1, "checkpoint_every": 0},
                      data={"class_weights": {"hippocampus": 3}, "val_samples": 0})
    with pytest.raises(ArgumentError, match=r"class_weights names \['hippocampus'\], which no training item "
                                            r"labels; classes: brain"):
        train(config_from_dict(bad))
    assert checkpoint_dirs(tmp_path / "bad") == []


@pytest.fixture(scope="module")
def checkpointed_run(model112, manifest, tmp_path_factory):
    """A finished 2-step run with its checkpoints, copied by each resume case."""
    out = tmp_path_factory.mktemp("ckpt") / "run"
    cfg = tiny_config(model112, manifest, out, train={"max_steps": 2, "checkpoint_every": 1})
    train(config_from_dict(cfg))
    assert checkpoint_dirs(out)
    return out


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _bad_rng(path: Path) -> None:
    # loads, but is no RNG state: accelerate used to skip it with a log line, losing exactness
    torch.save({"random_state": 5, "numpy_random_seed": None, "torch_manual_seed": torch.zeros(3)}, path)


RESUME_CASES = {
    "truncated-weights": ("model/model.safetensors", _truncate, ("model.safetensors", "truncated or corrupt")),
    "optimizer-random-bytes": ("state/optimizer.bin", lambda p: p.write_bytes(os.urandom(2000)),
                               ("optimizer.bin", "not a saved training state")),
    "optimizer-other-object": ("state/optimizer.bin", lambda p: torch.save({"weights": torch.zeros(3)}, p),
                               ("optimizer.bin", "no optimizer state")),
    "trainer-json-malformed": ("trainer.json", lambda p: p.write_text('{"step": 1,'),
                               ("trainer.json", "not readable JSON")),
    "trainer-json-bad-step": ("trainer.json", lambda p: p.write_text('{"step": "one"}'), ("trainer.json", "'step'")),
    "rng-truncated": ("state/random_states_0.pkl", _truncate, ("random_states_0.pkl", "not a saved training state")),
    "rng-not-a-state": ("state/random_states_0.pkl", _bad_rng,
                        ("random_states_0.pkl", "random-number state", "cannot continue exactly")),
    "rng-missing": ("state/random_states_0.pkl", lambda p: p.unlink(), ("random_states_0.pkl", "missing")),
}


@pytest.mark.parametrize("name", list(RESUME_CASES))
def test_resume_refuses_a_damaged_checkpoint(name, checkpointed_run, tmp_path):
    """--resume from a damaged checkpoint: exit 2, one line naming the file, nothing written."""
    import io
    from contextlib import redirect_stderr

    from medsam3.cli import main

    relative, damage, fragments = RESUME_CASES[name]
    run_dir = tmp_path / "run"
    shutil.copytree(checkpointed_run, run_dir)
    shutil.rmtree(run_dir / "final")
    ckpt = checkpoint_dirs(run_dir)[-1][1]
    damage(ckpt / relative)
    before = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "train.log"}
    err = io.StringIO()
    with redirect_stderr(err):
        code = main(["train", "-c", str(run_dir / "config.yaml"), "-o", str(run_dir), "--resume"])
    text = err.getvalue()
    assert code == 2, text
    lines = [line for line in text.splitlines() if line.startswith("medsam3: error:")]
    assert len(lines) == 1 and "Traceback" not in text, text
    for fragment in fragments:
        assert fragment.lower() in lines[0].lower(), lines[0]
    assert not (run_dir / "final").exists()
    after = {p: p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != "train.log"}
    assert after == before  # the checkpoint, metrics and config are left as they were
