"""Where the time goes: per-module time, FLOPs and GFLOP/s of the SAM3 image pipeline.

One image (random pixels; the timing does not depend on the content) through the
encode-once predictor: ViT backbone and FPN neck once, then K text prompts through the text
encoder, geometry encoder (the CLS box token), DETR encoder, DETR decoder, scoring and mask
head. Each module's wall time comes from forward hooks, its FLOPs from
``torch.utils.flop_counter`` in a second pass (the CPU flash-attention kernel, which torch's
counter does not know, is counted here as 4·B·H·Lq·Lk·D), the busiest aten ops from
``torch.profiler``. The machine's matmul peak in fp32 and bf16 is measured in the same run,
so GFLOP/s can be read as a fraction of what this machine can do.

    python benchmarks/profile_model.py --model random:default --prompts 1 --precision fp32 -o profile.json

(Not ``profile.py``: in ``benchmarks/`` that name would shadow the standard library's
``profile``, which torch imports through cProfile, and break every script there.)

``--size`` runs the model at a smaller input (e.g. 504 px: ~4x less ViT work) when the full
1008 px is too slow on a loaded machine; the JSON says which size was used.
"""

from __future__ import annotations

import argparse
import os
import time
from collections import defaultdict

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

from bench_common import PROMPTS, emit, machine_info

#: the pipeline's parts: name -> (attribute path under the detector (Sam3Model), the name torch's
#: flop counter gives it: the class the predictor calls, then the path below it)
MODULES = {
    "vit": ("vision_encoder.backbone", "Sam3VisionModel.backbone"),
    "fpn_neck": ("vision_encoder.neck", "Sam3VisionModel.neck"),
    "text_encoder": ("text_encoder", "CLIPTextModelWithProjection"),
    "text_projection": ("text_projection", "Linear"),
    "geometry_encoder": ("geometry_encoder", "Sam3Model.geometry_encoder"),
    "detr_encoder": ("detr_encoder", "Sam3Model.detr_encoder"),
    "detr_decoder": ("detr_decoder", "Sam3Model.detr_decoder"),
    "scoring": ("dot_product_scoring", "Sam3Model.dot_product_scoring"),
    "mask_decoder": ("mask_decoder", "Sam3Model.mask_decoder"),
    "  pixel_decoder": ("mask_decoder.pixel_decoder", "Sam3Model.mask_decoder.pixel_decoder"),  # in mask_decoder
}
PER_IMAGE = ("vit", "fpn_neck")


def _register_cpu_attention() -> None:
    """FLOPs of CPU SDPA (not in torch's registry: attention would count as zero)."""
    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu

    @register_flop_formula(op)
    def _flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs):
        b, h, lq, d = query_shape
        lk = key_shape[-2]
        return 4 * b * h * lq * lk * d  # QK^T and AV, 2 FLOPs per multiply-add


def matmul_peak(dtype: torch.dtype, device: torch.device, seconds: float = 1.0) -> dict:
    """Best GFLOP/s of a square matmul; the side grows until one product takes >= 0.2 s (cap 4096)."""
    n = 256
    while True:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        one = time.perf_counter() - t0
        if one >= 0.2 or n >= 4096:
            break
        n *= 2
    best, spent = one, 0.0
    while spent < seconds:
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        dt = time.perf_counter() - t0
        best, spent = min(best, dt), spent + dt
    return {"n": n, "gflops": round(2 * n ** 3 / best / 1e9, 1)}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _module(root, path: str):
    for part in path.split("."):
        root = getattr(root, part)
    return root


class ModuleTimer:
    """Wall time per named module from forward pre/post hooks (calls of one module add up)."""

    def __init__(self, detector, device):
        self.seconds = defaultdict(float)
        self.calls = defaultdict(int)
        self.device = device
        self.handles = []
        for name, (path, _) in MODULES.items():
            module = _module(detector, path)
            self.handles.append(module.register_forward_pre_hook(self._start(name)))
            self.handles.append(module.register_forward_hook(self._stop(name)))
        self._t0 = {}

    def _start(self, name):
        def hook(module, args):
            _sync(self.device)
            self._t0[name] = time.perf_counter()
        return hook

    def _stop(self, name):
        def hook(module, args, out):
            _sync(self.device)
            self.seconds[name] += time.perf_counter() - self._t0.pop(name)
            self.calls[name] += 1
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()


def run_pipeline(model, image: np.ndarray, prompts: list[str], batch_size: int,
                 prompt_path: str = "stock") -> tuple[float, float]:
    """``(encode s, prompts s)`` of one image through the encode-once predictor."""
    from medsam3.predict import ImagePredictor

    predictor = ImagePredictor(model, score_threshold=0.0, presence_threshold=0.0, batch_size=batch_size,
                               prompt_path=prompt_path)
    t0 = time.perf_counter()
    predictor.set_image(image)
    _sync(model.device)
    t1 = time.perf_counter()
    predictor.predict(prompts)
    _sync(model.device)
    return t1 - t0, time.perf_counter() - t1


def flop_counts(model, image, prompts, batch_size, prompt_path: str = "stock") -> dict[str, float]:
    """FLOPs per entry of :data:`MODULES` (one pass under FlopCounterMode)."""
    _register_cpu_attention()
    with FlopCounterMode(display=False) as counter:
        run_pipeline(model, image, prompts, batch_size, prompt_path)
    counts = counter.get_flop_counts()
    out = {name: float(sum(counts.get(key, {}).values())) for name, (_, key) in MODULES.items()}
    out["total"] = float(sum(counts.get("Global", {}).values()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:default")
    ap.add_argument("--size", type=int, default=None, help="model input size in px (default: the model's own)")
    ap.add_argument("--prompts", type=int, default=1, help="text prompts on the image")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "int8"))
    ap.add_argument("--device", default="auto")
    ap.add_argument("--skip-flops", action="store_true", help="no FLOP-counting pass (one pass less)")
    ap.add_argument("--prompt-path", default="stock", choices=("stock", "cached"),
                    help="the predictor's prompt path: 'stock' (Sam3Model.forward, default: each module below is "
                         "called whole, so its hooks see it) or 'cached' (medsam3.model.prompt_path, which calls "
                         "the modules' layers directly: only the totals are meaningful; benchmarks/prompts.py "
                         "counts its FLOPs)")
    ap.add_argument("--top-ops", type=int, default=15, help="busiest aten ops listed from torch.profiler")
    ap.add_argument("-o", "--output", default=None, help="write the JSON here too")
    args = ap.parse_args()

    from medsam3.model import MedSAM3
    from medsam3.model.precision import apply_precision, native_bf16
    from medsam3.predict.input_size import with_input_size

    load = os.getloadavg()
    model = MedSAM3.from_pretrained(args.model, device=args.device)
    model = with_input_size(model, args.size)
    device = model.device
    peaks = {"fp32": matmul_peak(torch.float32, device)}
    # without native bf16 a 256-px product already takes seconds: measured, but briefly
    peaks["bf16"] = matmul_peak(torch.bfloat16, device, seconds=1.0 if native_bf16(device) else 0.0)
    image = np.random.default_rng(0).random((512, 512)).astype(np.float32)
    prompts = (PROMPTS * (args.prompts // len(PROMPTS) + 1))[:args.prompts]

    flops = None
    if not args.skip_flops:  # fp32 arithmetic is the same count whatever the precision
        flops = flop_counts(model, image, prompts, args.batch_size, args.prompt_path)
    apply_precision(model, args.precision)

    timer = ModuleTimer(model.detector, device)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                + ([torch.profiler.ProfilerActivity.CUDA] if device.type == "cuda" else [])) as prof:
        encode_s, prompts_s = run_pipeline(model, image, prompts, args.batch_size, args.prompt_path)
    timer.remove()
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    ops = [{"op": e.key, "calls": e.count, "self_s": round(getattr(e, sort) / 1e6, 3)}
           for e in sorted(prof.key_averages(), key=lambda e: -getattr(e, sort))[:args.top_ops]]

    peak = peaks["bf16" if args.precision == "bf16" else "fp32"]["gflops"]
    rows = []
    for name in MODULES:
        row = {"module": name.strip(), "calls": timer.calls[name], "seconds": round(timer.seconds[name], 3)}
        if flops is not None:
            g = flops[name] / 1e9
            row["gflop"] = round(g, 1)
            row["gflops"] = round(g / timer.seconds[name], 1) if timer.seconds[name] else None
            row["of_peak"] = round(row["gflops"] / peak, 3) if row["gflops"] else None
        rows.append(row)
    image_s = sum(timer.seconds[n] for n in PER_IMAGE)
    prompt_s = sum(timer.seconds[n] for n in MODULES if n not in PER_IMAGE and not n.startswith(" "))
    summary = {"encode_s": round(encode_s, 3), "prompts_s": round(prompts_s, 3),
               "per_prompt_s": round(prompts_s / len(prompts), 3),
               "per_prompt_of_encode": round(prompts_s / len(prompts) / encode_s, 4),
               "modules_image_s": round(image_s, 3), "modules_prompt_s": round(prompt_s, 3)}
    if flops is not None:
        per_image = sum(flops[n] for n in PER_IMAGE) / 1e9
        per_prompt = sum(flops[n] for n in MODULES if n not in PER_IMAGE and not n.startswith(" ")) / 1e9 / len(prompts)
        summary.update({"total_gflop": round(flops["total"] / 1e9, 1), "image_gflop": round(per_image, 1),
                        "per_prompt_gflop": round(per_prompt, 1),
                        "per_prompt_flop_of_encode": round(per_prompt / per_image, 4),
                        # speed-up over the naive loop at 16 prompts if time followed FLOPs
                        "flop_bound_speedup_16": round(16 * (per_image + per_prompt) / (per_image + 16 * per_prompt), 2)})
    result = {"benchmark": "profile", "model": args.model, "input_size": model.image_size,
              "precision": args.precision, "prompts": len(prompts), "prompt_path": args.prompt_path,
              "device": str(device), "summary": summary,
              "modules": rows, "matmul_peak": peaks, "top_ops": ops, "machine": machine_info(load)}
    emit(result, args.output)


if __name__ == "__main__":
    main()
