"""Two processes on the CPU (torchrun, gloo): DDP keeps every rank's weights identical."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from helpers.train import brain_manifest, tiny_config

from medsam3.train.loop import weights_digest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_hold_identical_weights(tmp_path):
    from medsam3.model import create_random_model

    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.fail("torchrun (part of torch) is not on PATH")
    model = create_random_model("tiny", tmp_path / "tiny112", seed=0, image_size=112)
    manifest = brain_manifest(tmp_path / "brain")
    out = tmp_path / "ddp"
    config = tiny_config(model, manifest, out, data={"batch_size": 1, "val_samples": 2},
                         train={"max_steps": 3, "checkpoint_every": 0})
    (tmp_path / "ddp.yaml").write_text(yaml.safe_dump(config))
    env = {**os.environ, "PYTHONPATH": str(REPO / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([torchrun, "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                           "--master_port", str(free_port()), "-m", "medsam3.train.cli",
                           "--config", str(tmp_path / "ddp.yaml")],
                          env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    summary = json.loads((out / "final" / "training.json").read_text())
    assert summary["num_processes"] == 2 and summary["steps"] == 3
    digests = summary["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]
    # the saved model is what the ranks hold, and it did train
    saved = {k[len("detector_model."):]: v for k, v in load_file(str(out / "final" / "model.safetensors")).items()
             if k.startswith("detector_model.")}
    assert weights_digest(saved) == digests[0]
    source = load_file(str(model / "model.safetensors"))
    assert not torch.equal(saved["detr_decoder.layers.0.mlp.fc1.weight"],
                           source["detector_model.detr_decoder.layers.0.mlp.fc1.weight"])
    # both ranks wrote their RNG state into the (atomic) checkpoint
    state = out / "checkpoints" / "step-0000003" / "state"
    assert (state / "random_states_0.pkl").is_file() and (state / "random_states_1.pkl").is_file()
