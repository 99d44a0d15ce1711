"""Bad inputs to ``medsam3 data``: the table (see :mod:`bad_inputs.harness`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bad_inputs.harness import Case, params


class _CreatesMarker:
    """Unpickling this runs ``open(marker, "w")``: proof that a pickle ran code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _arrays():
    rng = np.random.default_rng(0)
    return {"imgs": rng.integers(0, 255, (4, 16, 16), dtype=np.uint8),
            "gts": (rng.random((4, 16, 16)) > 0.7).astype(np.uint8)}


def _npz(**fields):
    """``npz/CT_case.npz`` with imgs, gts and ``fields`` (callables get the case folder)."""
    def build(tmp, ctx):
        (tmp / "npz").mkdir()
        values = {k: (v(tmp) if callable(v) else v) for k, v in fields.items()}
        np.savez(tmp / "npz" / "CT_case.npz", **_arrays(), **values)
        return {"npz": str(tmp / "npz"), "file": str(tmp / "npz" / "CT_case.npz")}
    return build


def _evil_prompts(tmp):
    return np.array(_CreatesMarker(tmp / "MARKER"), dtype=object)


def _evil_in_dict(tmp):
    return np.array({"1": "liver", "instance_label": _CreatesMarker(tmp / "MARKER")}, dtype=object)


def _manifest_labels(ctx):
    lines = Path(ctx["tmp"], "m.jsonl").read_text().splitlines()
    return json.loads(lines[1])["labels"]


def _mucic_wrong_key(tmp, ctx):
    import h5py

    (tmp / "d").mkdir()
    with h5py.File(tmp / "d" / "image-final_0001.h5", "w") as f:
        f["Image"] = np.zeros((3, 4, 4), np.uint8)
    with h5py.File(tmp / "d" / "image-labels_0001.h5", "w") as f:
        f["labels"] = np.zeros((3, 4, 4), np.uint8)
    return {"dir": str(tmp / "d"), "file": str(tmp / "d" / "image-labels_0001.h5")}


def _cystoid_two_masks(tmp, ctx):
    from PIL import Image

    case = tmp / "d" / "ZA001"
    for folder, name in (("images", "scan.jpeg"), ("masks", "a.png"), ("masks", "b.png")):
        (case / folder).mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(case / folder / name)
    return {"dir": str(tmp / "d"), "file": str(case / "masks" / "a.png")}


def _convert(*args):
    return ("data", "convert", "--layout", "npz", "-i", "{npz}", "-o", "{tmp}/m.jsonl", "-q", *args)


CASES = [
    # a pickled text_prompts is read without running code: a crafted object is refused
    Case("npz-prompts-pickle-runs-code", build=_npz(text_prompts=_evil_prompts), argv=_convert(),
         message=("CT_case.npz", "text_prompts", "open", "--labels"),
         absent=("{tmp}/MARKER", "{tmp}/m.jsonl"), unchanged=("{file}",)),
    Case("npz-prompts-pickle-code-inside-dict", build=_npz(text_prompts=_evil_in_dict), argv=_convert(),
         message=("CT_case.npz", "does not unpickle"), absent=("{tmp}/MARKER", "{tmp}/m.jsonl")),
    Case("npz-prompts-pickle-with-labels-still-refused", build=_npz(text_prompts=_evil_prompts),
         argv=_convert("--labels", '{{"1": "liver"}}'),
         message=("text_prompts",), absent=("{tmp}/MARKER", "{tmp}/m.jsonl")),
    Case("npz-spacing-object-array", build=_npz(spacing=lambda tmp: np.array([_CreatesMarker(tmp / "MARKER")],
                                                                          dtype=object),
                                              text_prompts=np.array({"1": "liver"}, dtype=object)),
         argv=_convert(), message=("spacing", "CT_case.npz"), absent=("{tmp}/MARKER", "{tmp}/m.jsonl")),
    # the challenge's own files (a pickled plain dict) and a JSON string still convert
    Case("npz-prompts-plain-pickled-dict", build=_npz(text_prompts=np.array(
            {"1": "Liver in abdominal CT", "instance_label": 0}, dtype=object)),
         argv=_convert(), exit_code=0,
         check=lambda ctx: _manifest_labels(ctx) == {"1": "liver"} or pytest.fail(_manifest_labels(ctx))),
    Case("npz-prompts-json-string", build=_npz(text_prompts=np.array(json.dumps({"1": "spleen"}))),
         argv=_convert(), exit_code=0,
         check=lambda ctx: _manifest_labels(ctx) == {"1": "spleen"} or pytest.fail(_manifest_labels(ctx))),
    # a mix with missing manifests: every missing one named in one message, nothing written
    Case("merge-missing-manifests", argv=("data", "merge", "--add", "glas={tmp}/glas.jsonl",
                                          "--add", "drive={tmp}/drive.jsonl", "-o", "{tmp}/mix.jsonl"),
         message=("2 of the mix's 2 manifests do not exist", "glas.jsonl", "drive.jsonl", "data prepare"),
         absent=("{tmp}/mix.jsonl",)),
    # the HDF5 and OCT converters refuse a bad download before anything is written
    Case("mucic-label-without-image-key", build=_mucic_wrong_key,
         argv=("data", "convert", "--layout", "mucic", "-i", "{dir}", "-o", "{tmp}/m.jsonl", "-O", "work_dir={tmp}/w"),
         message=("image-labels_0001.h5", "no HDF5 dataset 'Image'"), absent=("{tmp}/m.jsonl", "{tmp}/w"),
         unchanged=("{file}",)),
    Case("cystoid-two-unnamed-masks", build=_cystoid_two_masks,
         argv=("data", "convert", "--layout", "cystoid", "-i", "{dir}", "-o", "{tmp}/m.jsonl", "-O", "work_dir={tmp}/w"),
         message=("masks: 2 files and none named scan",), absent=("{tmp}/m.jsonl", "{tmp}/w"), unchanged=("{file}",)),
    Case("npz-prompts-not-a-dict", build=_npz(text_prompts=np.array([1, 2, 3])), argv=_convert(),
         message=("CT_case.npz", "text_prompts must be a dict"), absent=("{tmp}/m.jsonl",)),
]


@pytest.mark.parametrize("case", params(CASES))
def test_data_bad_input(case, run):
    run(case)
