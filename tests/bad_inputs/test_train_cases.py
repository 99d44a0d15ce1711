"""Bad inputs to ``medsam3 train``: the table (see :mod:`bad_inputs.harness`)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs.harness import Case, params


def _config(existing_run: bool = False):
    """A config whose manifest does not exist: found only after the model was set up."""
    def build(tmp, ctx):
        (tmp / "c.yaml").write_text(
            f"model: {ctx['model']}\noutput_dir: {tmp / 'run'}\nseed: 1\n"
            f"data:\n  manifest: {tmp / 'nope.jsonl'}\n  val_split: null\n  batch_size: 1\n  num_workers: 0\n"
            "train:\n  max_steps: 2\n  mixed_precision: \"no\"\n  activation_checkpointing: false\n"
            "logging:\n  tensorboard: false\n  progress: false\n")
        if existing_run:
            (tmp / "run").mkdir()
            (tmp / "run" / "notes.txt").write_text("mine")
        return {"config": str(tmp / "c.yaml")}
    return build


def _only_notes(ctx):
    assert sorted(p.name for p in Path(ctx["tmp"], "run").iterdir()) == ["notes.txt"]


CASES = [
    # a failed start leaves no run folder (no model copy, no checkpoints/, no train.log)
    Case("train-late-bad-manifest-new-folder", build=_config(), argv=("train", "-c", "{config}"),
         message=("nope.jsonl",), absent=("{tmp}/run",)),
    # in a folder that existed, only what this start created goes
    Case("train-late-bad-manifest-existing-folder", build=_config(existing_run=True),
         argv=("train", "-c", "{config}"), message=("nope.jsonl",), unchanged=("{tmp}/run/notes.txt",),
         check=_only_notes),
]


@pytest.mark.parametrize("case", params(CASES))
def test_train_bad_input(case, run):
    run(case)
