"""Broken model directories: the table (see :mod:`bad_inputs.harness`).

Each row copies the tiny model directory, breaks its ``model.safetensors`` (a tensor deleted,
added, reshaped, made NaN, the file truncated) and passes it to an entry point that loads
weights: ``segment`` (text and box prompts, CLI and API), ``model info``, ``model export``,
``evaluate`` and the web app. None may load it: one error line naming the directory (or the
file, or the tensor), exit 2, nothing written.
"""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from bad_inputs.harness import Case, params

DETR_KEY = "detector_model.detr_decoder.layers.0.mlp.fc1.weight"
TRACKER_KEY = "tracker_model.mask_decoder.iou_prediction_head.proj_out.weight"
NECK_KEY = "tracker_neck.fpn_layers.0.proj1.weight"


def _png(tmp):
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    PILImage.fromarray(rng.integers(0, 255, (64, 80), dtype=np.uint8)).save(tmp / "in.png")
    return str(tmp / "in.png")


def _edited(edit):
    """A build: the tiny model copied to ``{broken}``, its tensors passed through ``edit(state)``."""

    def build(tmp, ctx):
        from safetensors.torch import load_file, save_file

        target = tmp / "broken"
        shutil.copytree(ctx["model"], target)
        state = load_file(str(target / "model.safetensors"))
        edit(state)
        save_file(state, str(target / "model.safetensors"), metadata={"format": "pt"})
        return {"broken": str(target), "png": _png(tmp)}

    return build


def _truncated(tmp, ctx):
    target = tmp / "broken"
    shutil.copytree(ctx["model"], target)
    path = target / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # a download or copy cut off half way
    return {"broken": str(target), "png": _png(tmp)}


def _set(key, value):
    return lambda state: state.__setitem__(key, value(state[key]))


def _nan(t):
    t = t.clone()
    t.view(-1)[3] = float("nan")
    return t


def _overflowing(state):
    # finite weights that overflow float32 in the presence head (+inf + -inf: NaN, which the
    # head's clamp keeps): the weights load, the output is not finite
    head = "detector_model.detr_decoder.presence_head."
    state[head + "layer2.bias"] = torch.full_like(state[head + "layer2.bias"], 1e30)
    signs = torch.ones_like(state[head + "layer3.weight"])
    signs.view(-1)[1::2] = -1
    state[head + "layer3.weight"] = signs * 1e30


def _detector_only(state):
    for key in [k for k in state if k.startswith(("tracker_model.", "tracker_neck."))]:
        del state[key]


def _segment(*extra):
    return ("segment", "-i", "{png}", "-o", "{tmp}/out.png", "-p", "brain", "--model", "{broken}",
            "--device", "cpu", *extra)


OUT = ("{tmp}/out.png", "{tmp}/out.json")


def _api_segment(ctx, **kwargs):
    import medsam3

    return medsam3.segment(ctx["png"], ctx["tmp"] + "/out.png", prompts=["brain"], model=ctx["broken"],
                           device="cpu", progress=False, **kwargs)


def _evaluate_inputs(tmp, ctx):
    """The broken model plus a one-image manifest to evaluate it on."""
    from PIL import Image as PILImage

    from medsam3.data import convert_dataset, write_manifest

    out = _edited(lambda s: s.pop(DETR_KEY))(tmp, ctx)
    (tmp / "data" / "test" / "images").mkdir(parents=True)
    (tmp / "data" / "test" / "masks").mkdir(parents=True)
    PILImage.open(out["png"]).save(tmp / "data" / "test" / "images" / "a.png")
    mask = np.zeros((64, 80), np.uint8)
    mask[20:40, 20:50] = 1
    PILImage.fromarray(mask).save(tmp / "data" / "test" / "masks" / "a.png")
    items = convert_dataset("folder2d", tmp / "data", dataset="d", modality="MR", labels={"1": "brain"},
                            progress=False).items
    write_manifest(items, tmp / "data" / "manifest.jsonl", tmp / "data")
    return {**out, "manifest": str(tmp / "data" / "manifest.jsonl")}


def _web_app(ctx):
    from medsam3.app.ui import AppSettings, build_app

    return build_app(AppSettings(model=ctx["broken"], device="cpu"))


CASES = [
    # --- the header check: keys and shapes against config.json, before anything is built
    Case("model-tensor-deleted", build=_edited(lambda s: s.pop(DETR_KEY)), argv=_segment(),
         message=("broken", "1 missing tensor", DETR_KEY), absent=OUT),
    Case("model-tensor-extra", build=_edited(lambda s: s.__setitem__("detector_model.extra.weight", torch.zeros(4))),
         argv=_segment(), message=("broken", "1 unexpected tensor", "detector_model.extra.weight"), absent=OUT),
    Case("model-tensor-extra-tracker-prefix",  # transformers itself ignores tracker_* keys when loading Sam3Model
         build=_edited(lambda s: s.__setitem__("tracker_model.extra.weight", torch.zeros(4))),
         argv=_segment(), message=("1 unexpected tensor", "tracker_model.extra.weight"), absent=OUT),
    Case("model-tensor-reshaped", build=_edited(_set(DETR_KEY, lambda t: t.reshape(-1, 2).clone())),
         argv=_segment(), message=("broken", "1 wrongly shaped", DETR_KEY, "expected"), absent=OUT),
    Case("model-tensor-integer", build=_edited(_set(DETR_KEY, lambda t: t.to(torch.int32))),
         argv=_segment(), message=(DETR_KEY, "floating point"), absent=OUT),
    Case("model-many-tensors-deleted",
         build=_edited(lambda s: [s.pop(k) for k in [k for k in s if ".detr_decoder.layers.0." in k]]),
         argv=_segment(), message=("missing tensors", "more)"), absent=OUT),
    Case("model-safetensors-truncated", build=_truncated, argv=_segment(),
         message=("model.safetensors", "truncated or corrupt"), absent=OUT),
    Case("model-tensor-nan", build=_edited(_set(DETR_KEY, _nan)), argv=_segment(),
         message=("model.safetensors", "NaN", DETR_KEY), absent=OUT),
    Case("model-tensor-inf", build=_edited(_set(DETR_KEY, lambda t: torch.full_like(t, float("inf")))),
         argv=_segment(), message=("NaN or infinite", DETR_KEY), absent=OUT),
    # --- the tracker: all or nothing, and strict when it is loaded for a box prompt
    Case("model-tracker-tensor-deleted-box", build=_edited(lambda s: s.pop(TRACKER_KEY)),
         argv=_segment("--box", "10", "10", "40", "40"),
         message=("1 missing tensor", TRACKER_KEY, "all present, or all absent"), absent=OUT),
    Case("model-tracker-neck-deleted-text", build=_edited(lambda s: s.pop(NECK_KEY)), argv=_segment(),
         message=("1 missing tensor", NECK_KEY), absent=OUT),
    Case("model-tracker-tensor-nan", build=_edited(_set(TRACKER_KEY, _nan)), argv=_segment(),
         message=("NaN", TRACKER_KEY), absent=OUT),
    Case("model-detector-only-box", build=_edited(_detector_only), argv=_segment("--box", "10", "10", "40", "40"),
         message=("no tracker weights",), absent=OUT),
    Case("model-detector-only-text", build=_edited(_detector_only), argv=_segment(), exit_code=0,
         check=lambda ctx: __import__("pathlib").Path(ctx["tmp"], "out.png").is_file()),
    # --- the Python API
    Case("api-model-tensor-nan", build=_edited(_set(DETR_KEY, _nan)), call=_api_segment,
         message=("NaN", DETR_KEY), absent=OUT),
    Case("api-model-tensor-deleted", build=_edited(lambda s: s.pop(DETR_KEY)), call=_api_segment,
         message=("1 missing tensor", DETR_KEY), absent=OUT),
    Case("api-model-output-not-finite", build=_edited(_overflowing), call=_api_segment,
         message=("NaN or infinite outputs", "'brain'"), absent=OUT),
    # --- the other entry points that load a model
    Case("model-info-tensor-deleted", build=_edited(lambda s: s.pop(DETR_KEY)),
         argv=("model", "info", "{broken}"), message=("1 missing tensor", DETR_KEY)),
    Case("model-export-tensor-deleted", build=_edited(lambda s: s.pop(DETR_KEY)),
         argv=("model", "export", "{broken}", "-o", "{tmp}/exported"),
         message=("1 missing tensor",), absent=("{tmp}/exported",)),
    Case("model-export-tensor-nan", build=_edited(_set(DETR_KEY, _nan)),
         argv=("model", "export", "{broken}", "-o", "{tmp}/exported"),
         message=("NaN", DETR_KEY), absent=("{tmp}/exported",)),
    Case("evaluate-model-tensor-deleted", build=_evaluate_inputs,
         argv=("evaluate", "-m", "{broken}", "--manifest", "{manifest}", "-o", "{tmp}/eval", "--device", "cpu",
               "--no-progress", "--no-plots"),
         message=("1 missing tensor", DETR_KEY)),
    Case("web-app-model-tensor-deleted", build=_edited(lambda s: s.pop(DETR_KEY)), call=_web_app,
         message=("1 missing tensor", DETR_KEY), marks=(pytest.mark.filterwarnings("ignore"),)),
]


@pytest.mark.parametrize("case", params(CASES))
def test_model_bad_input(case, run):
    run(case)
