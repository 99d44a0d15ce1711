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
"""

from __future__ import annotations

import functools
import logging
import warnings

import torch
from torch import nn

from medsam3.errors import ArgumentError

log = logging.getLogger(__name__)

from medsam3.precision_options import DEFAULT_PRECISION, FAST, PRECISIONS, check_precision

__all__ = ["PRECISIONS", "DEFAULT_PRECISION", "check_precision", "apply_precision", "apply_precision_to",
           "native_bf16", "fast_precision", "precision_fields"]


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


def apply_precision(model, precision) -> object:
    """Switch a loaded :class:`medsam3.model.MedSAM3` to ``precision`` in place; returns it.

    Sets ``model.precision``; a tracker already built is converted too (a later one is
    converted when :attr:`MedSAM3.tracker` builds it, after it shares the detector's backbone).
    """
    precision = check_precision(precision)
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
