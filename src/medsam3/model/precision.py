"""Inference precision of a loaded model: ``fp32``, ``bf16`` or ``int8``.

* ``fp32``: the weights' own precision, no change (the default).
* ``bf16``: weights stay as loaded; every top-level part of the detector and tracker runs
  under ``torch.autocast(device, bfloat16)`` (matmuls and convolutions in bf16, reductions in
  fp32) and hands its outputs back in the weights' dtype, so code around the model never
  sees a mixed dtype. Fast on GPUs and on CPUs with native bf16 (AVX-512 BF16, AMX); on a CPU
  without it PyTorch falls back to a slow path (measured ~400x slower than fp32 on an AVX2
  EPYC, docs/speed.md), so a warning is logged.
* ``int8``: dynamic quantisation of every ``nn.Linear`` (``torch.ao.quantization.quantize_dynamic``:
  int8 weights per tensor, activations quantised per batch at run time). CPU only; the
  convolutions (patch embedding, FPN, pixel decoder) stay fp32.
* ``ov``: the detector's vision encoder (ViT + FPN neck) runs as a compiled OpenVINO model in
  OpenVINO's default CPU precision (bf16 on AVX-512 BF16 / AMX CPUs, else f32); everything else
  stays fp32 torch (:mod:`medsam3.model.openvino_backend`). CPU only; needs ``openvino``.

:func:`apply_precision` is called once at load (``MedSAM3.from_pretrained(..., precision=)``);
the tracker, loaded on first use, gets the same treatment (:func:`apply_precision_to`).

``--fast`` (precision ``fast`` or ``fast:PRECISION``, :mod:`medsam3.precision_options`) is
decided in one place, :func:`resolve_fast`: the device's fastest precision
(:func:`fast_precision`) unless one is given, and the input size :func:`fast_input_size` of
the model's own, unless ``--size`` is given. ``from_pretrained`` applies the precision and
keeps the choice as ``model.fast``; :func:`medsam3.segmentation.load_model` (the loader of
``segment``, ``evaluate``, ``serve`` and batches) runs the model at its size, and the sidecar
records it (``"fast"``: precision, size, why).
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import asdict, dataclass

import torch
from torch import nn

from medsam3.errors import ArgumentError

log = logging.getLogger(__name__)

from medsam3.precision_options import DEFAULT_PRECISION, PRECISIONS, check_precision, split_fast

__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "check_precision", "apply_precision", "apply_precision_to",
           "native_bf16", "fast_precision", "precision_fields", "FastSetting", "resolve_fast", "fast_input_size",
           "split_fast", "FAST_SIZE_FACTOR", "FAST_MIN_SIZE"]

#: ``--fast``'s input size as a fraction of the model's own (336 -> 280 px on the demo model,
#: 1008 -> 840 on the published one): of 336, 280 and 252 px, the smallest whose mean Dice on the
#: demo model's held-out items stayed within 1 point of fp32 at 336 px, in bf16 (+1.7 points) and
#: int8 (+1.4; 252 px: -4.5; the hippocampus loses 6-16 points at 280), ~2.5x faster
#: (``benchmarks/fast.py``; docs/speed.md). Chosen on those items, so for this choice they are a
#: validation set. The published model's Dice at this size is not measured (no real weights here).
FAST_SIZE_FACTOR = 5 / 6
#: ``--fast`` never shrinks a model's input below this many pixels (nor a model already smaller)
FAST_MIN_SIZE = 224
_PATCH = 14  # the ViT's patch: input sizes are multiples of it (medsam3.model.configs.PATCH_SIZE)


def fast_input_size(native: int) -> int:
    """``--fast``'s input size for a model whose own is ``native`` px: :data:`FAST_SIZE_FACTOR`
    of it, rounded to a multiple of 14, never below :data:`FAST_MIN_SIZE` nor above ``native``."""
    scaled = max(_PATCH, round(native * FAST_SIZE_FACTOR / _PATCH) * _PATCH)
    return int(min(native, max(scaled, min(FAST_MIN_SIZE, native))))


@dataclass(frozen=True)
class FastSetting:
    """What ``--fast`` resolved to for one model on one device, and why (recorded in sidecars)."""

    precision: str
    size: int
    native_size: int
    precision_reason: str
    size_reason: str

    def to_json(self) -> dict:
        return asdict(self)


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` runs bf16 matmuls natively (CUDA; CPUs with AVX-512 BF16 or AMX)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def fast_precision(device: torch.device | str) -> str:
    """What ``--fast`` picks: bf16 where the hardware has it, else int8 on a CPU (fp32 elsewhere)."""
    device = torch.device(device)
    if native_bf16(device):
        return "bf16"
    return "int8" if device.type == "cpu" else "fp32"


def resolve_fast(device: torch.device | str, native_size: int, precision: str | None = None,
                 size: int | None = None) -> FastSetting:
    """``--fast`` for a model of input size ``native_size`` on ``device``; an explicit
    ``precision`` (``--fast --precision X``) or ``size`` (``--fast --size N``) wins."""
    device = torch.device(device)
    if precision is not None:
        precision, precision_reason = check_precision(precision), "given explicitly (--precision)"
    else:
        precision = fast_precision(device)
        precision_reason = {
            "bf16": ("this CPU has native bf16 (AVX-512 BF16 / AMX)" if device.type == "cpu"
                     else f"{device.type} runs bf16 natively"),
            "int8": "a CPU without native bf16 (AVX-512 BF16 / AMX): int8 dynamic quantisation is its fastest",
            "fp32": f"no faster precision measured on {device.type} without native bf16"}[precision]
    if size is not None:
        return FastSetting(precision, int(size), int(native_size), precision_reason, "given explicitly (--size)")
    fast = fast_input_size(native_size)
    if fast == native_size:
        reason = (f"the model's own: {FAST_SIZE_FACTOR:.3f} x {native_size} px would be below "
                  f"{FAST_MIN_SIZE} px" if FAST_SIZE_FACTOR < 1 else "the model's own")
    else:
        reason = (f"{FAST_SIZE_FACTOR:.3f} x the model's {native_size} px, a multiple of 14: the smallest "
                  "factor tried whose mean Dice stayed within 1 point of fp32 on the demo model's validation items "
                  "(benchmarks/fast.py, docs/speed.md)")
    return FastSetting(precision, fast, int(native_size), precision_reason, reason)


def apply_precision(model, precision) -> object:
    """Switch a loaded :class:`medsam3.model.MedSAM3` to ``precision`` in place; returns it.

    Sets ``model.precision``; a tracker already built is converted too (a later one is
    converted when :attr:`MedSAM3.tracker` builds it, after it shares the detector's backbone).
    """
    precision = check_precision(precision)
    if split_fast(precision)[0]:
        raise ArgumentError(f"precision {precision!r} is resolved when the model loads "
                            "(MedSAM3.from_pretrained), not applied to a loaded model")
    if precision == "int8" and model.device.type != "cpu":
        raise ArgumentError(f"precision int8 runs on the CPU only (device {model.device}); on a GPU use bf16")
    if precision == "int8" and model.dtype != torch.float32:
        raise ArgumentError(f"precision int8 quantises float32 weights; got dtype "
                            f"{str(model.dtype).replace('torch.', '')}: leave --dtype at float32")
    if precision == "ov":
        if model.device.type != "cpu":
            raise ArgumentError(f"precision ov runs the vision encoder on OpenVINO's CPU device only (device "
                                f"{model.device}); on a GPU use bf16")
        if model.dtype != torch.float32:
            raise ArgumentError(f"precision ov converts float32 weights; got dtype "
                                f"{str(model.dtype).replace('torch.', '')}: leave --dtype at float32")
        from medsam3.model.openvino_backend import require_openvino

        require_openvino()  # a clear message before anything is converted
    if precision == "bf16" and not native_bf16(model.device):
        log.warning("precision bf16 on %s without native bf16 support: expect it to be much slower than fp32 "
                    "(use int8 on this CPU)", model.device)
    model.precision = precision
    apply_precision_to(model.detector, precision, model.device, model.dtype)
    if "tracker" in vars(model):  # already built (a cached property)
        apply_precision_to(model.tracker, precision, model.device, model.dtype)
    return model


def apply_precision_to(module: nn.Module, precision: str, device: torch.device, dtype: torch.dtype) -> nn.Module:
    """Convert one detector or tracker module in place (idempotent)."""
    if getattr(module, "_medsam3_precision", "fp32") == precision:
        return module
    if getattr(module, "_medsam3_precision", "fp32") != "fp32":
        raise ArgumentError(f"model already converted to {module._medsam3_precision}; load it again for {precision}")
    if precision == "int8":
        with warnings.catch_warnings():  # torch.ao's deprecation notices: the API still works in this torch
            warnings.simplefilter("ignore")
            torch.ao.quantization.quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8, inplace=True)
    elif precision == "ov":  # the detector's vision encoder; the tracker reads the detector's ViT output
        from transformers import Sam3Model

        from medsam3.model.openvino_backend import use_openvino

        if isinstance(module, Sam3Model):
            use_openvino(module.vision_encoder)
    elif precision == "bf16":
        for child in module.children():
            child.forward = _autocast_forward(child.forward, torch.device(device).type, dtype)
    module._medsam3_precision = precision
    return module


def precision_fields(model) -> dict:
    """What a prediction's sidecar records about the precision: ``{"precision": ...}``, plus
    ``"openvino"`` (its version and the inference precision it ran) for ``ov``."""
    precision = getattr(model, "precision", "fp32")
    fields = {"precision": precision}
    if precision == "ov":
        from medsam3.model.openvino_backend import openvino_encoder

        backend = openvino_encoder(model.detector.vision_encoder)
        if backend is not None:
            fields["openvino"] = backend.describe()
    return fields


def _autocast_forward(forward, device_type: str, dtype: torch.dtype):
    @functools.wraps(forward)
    def run(*args, **kwargs):
        with torch.autocast(device_type, dtype=torch.bfloat16):
            out = forward(*args, **kwargs)
        return _cast_floats(out, dtype)

    return run


def _cast_floats(obj, dtype: torch.dtype):
    """``obj`` with every floating tensor inside (tensors, tuples, lists, ``ModelOutput``s) cast to ``dtype``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(dtype) if obj.is_floating_point() and obj.dtype != dtype else obj
    if isinstance(obj, (tuple, list)) and not hasattr(obj, "keys"):
        items = [_cast_floats(v, dtype) for v in obj]
        return type(obj)(items) if not hasattr(obj, "_fields") else type(obj)(*items)
    if hasattr(obj, "keys") and hasattr(obj, "__setitem__"):  # transformers' ModelOutput, dict
        for key in list(obj.keys()):
            obj[key] = _cast_floats(obj[key], dtype)
        return obj
    return obj
