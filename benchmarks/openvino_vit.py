"""The SAM3 vision encoder (ViT + FPN neck) in torch and in OpenVINO, fp32 / bf16 / int8, side by side.

One model's vision encoder (``detector.vision_encoder``, what ``get_vision_features`` runs once per
image) at one fixed input size, built in several back-ends and timed in one run, alternating
round by round (every variant once per round) so a shared machine's changing load hits them alike:

* ``torch-fp32``: the module as loaded (the baseline).
* ``torch-int8``: medsam3's ``--precision int8`` path (:func:`medsam3.model.precision.apply_precision_to`:
  ``torch.ao`` dynamic quantisation of every ``nn.Linear``) on a copy.
* ``torch-bf16``: ``torch.autocast('cpu', bfloat16)`` around the module, outputs cast back to fp32
  (what ``--precision bf16`` does); skipped without native bf16 unless ``--force-bf16``.
* ``ov-fp32``: ``openvino.convert_model(module, example_input=...)`` compiled for the CPU with
  ``INFERENCE_PRECISION_HINT=f32`` (OpenVINO's CPU plugin otherwise runs bf16 where the CPU has it).
* ``ov-auto``: the same model compiled with OpenVINO's default hint (bf16 on AVX-512 BF16 / AMX CPUs);
  the precision it chose is recorded.
* ``ov-int8`` / ``ov-int8-f32``: ``nncf.quantize`` (post-training static int8, ``ModelType.TRANSFORMER``)
  calibrated on ``--calibration`` real axial slices of the bundled Colin27 T1 (other slices than the one
  measured), compiled with the default hint / with f32 for what it leaves unquantised.
* ``ov-int8-weights``: ``nncf.compress_weights`` (int8 weight-only, activations in the default precision).

For each: best and median seconds of the rounds, speed-up vs ``torch-fp32`` (best over best), the
conversion time, and the error of every output (ViT ``last_hidden_state`` and each FPN level) on a
held-out slice as relative L2 (``|a - b| / |a|``) and max abs against ``torch-fp32``.
OpenVINO and nncf are optional: install them in a separate environment (docs/speed.md, "OpenVINO")::

    python benchmarks/openvino_vit.py --model random:default --size 336 --rounds 5 -o ov.json

A variant that fails to build (an op the converter does not know, say) is recorded with its error;
``--part backbone`` converts the ViT alone (no FPN neck).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

VARIANTS = ["torch-fp32", "torch-int8", "torch-bf16", "ov-fp32", "ov-auto", "ov-int8", "ov-int8-f32", "ov-int8-weights"]
CPU_FLAGS = ["avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
             "amx_tile", "amx_bf16", "amx_int8"]


class Encoder(nn.Module):
    """The vision encoder as a plain tensor function: pixels -> (ViT tokens, FPN level 0, 1, ...)."""

    def __init__(self, vision: nn.Module, part: str = "encoder"):
        super().__init__()
        self.vision, self.part = vision, part

    def forward(self, pixel_values: torch.Tensor):
        if self.part == "backbone":
            return (self.vision.backbone(pixel_values).last_hidden_state,)
        out = self.vision(pixel_values=pixel_values)
        return (out.last_hidden_state, *out.fpn_hidden_states)


def output_names(n: int, part: str) -> list[str]:
    return ["last_hidden_state"] + ([f"fpn_{i}" for i in range(n - 1)] if part == "encoder" else [])


def machine_info() -> dict:
    flags, model = set(), platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_flags": {f: f in flags for f in CPU_FLAGS},
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch_mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
            "quantized_engine": torch.backends.quantized.engine}


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "openvino", "nncf", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def colin_slices(predictor, count: int) -> tuple[list[torch.Tensor], torch.Tensor, list[int], int]:
    """``count`` calibration pixel tensors and one held-out test tensor from the bundled Colin27 T1."""
    import medsam3
    from medsam3.io import read_image
    from medsam3.predict.orientation import choose_orientation
    from medsam3.preprocess import normalize_intensity

    sample = Path(medsam3.__file__).parent / "data" / "samples" / "colin27_t1_2mm.nii.gz"
    image = read_image(sample)
    stack = choose_orientation(image.direction, "axial").stack(normalize_intensity(image))
    filled = [k for k in range(len(stack)) if stack[k].max() > stack[k].min()]
    test = filled[len(filled) // 2]
    picks = [k for k in (filled[int(i)] for i in np.linspace(len(filled) * 0.15, len(filled) * 0.85, count + 1))
             if k != test][:count]
    calib = [predictor.preprocess(np.asarray(stack[k], dtype=np.float32)) for k in picks]
    return calib, predictor.preprocess(np.asarray(stack[test], dtype=np.float32)), picks, test


def build_torch(name: str, encoder: Encoder):
    from medsam3.model.precision import apply_precision_to

    if name == "torch-fp32":
        module = encoder
    elif name == "torch-int8":
        module = Encoder(apply_precision_to(copy.deepcopy(encoder.vision), "int8", torch.device("cpu"), torch.float32),
                         encoder.part)
    elif name == "torch-bf16":
        def run_bf16(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                return [t.float() for t in encoder(x)]
        return run_bf16, {}
    else:
        raise ValueError(name)

    def run(x):
        with torch.inference_mode():
            return list(module(x))
    return run, {}


class OVBuilder:
    """Converts the encoder to OpenVINO once and derives the compiled variants from it."""

    def __init__(self, encoder: Encoder, example: torch.Tensor, calib: list[torch.Tensor], threads: int):
        self.encoder, self.example, self.calib, self.threads = encoder, example, calib, threads
        self._model, self.convert_s, self._int8 = None, None, None

    def model(self):
        import openvino as ov

        if self._model is None:
            t0 = time.perf_counter()
            with torch.no_grad():
                self._model = ov.convert_model(self.encoder, example_input=self.example)
            self.convert_s = time.perf_counter() - t0
        return self._model

    def int8(self):
        import nncf

        if self._int8 is None:
            t0 = time.perf_counter()
            data = nncf.Dataset([t.numpy() for t in self.calib])
            self._int8 = nncf.quantize(self.model(), data, subset_size=len(self.calib),
                                       model_type=nncf.ModelType.TRANSFORMER)
            self.int8_s = time.perf_counter() - t0
        return self._int8

    def build(self, name: str):
        import nncf
        import openvino as ov

        info: dict = {}
        hint = {"INFERENCE_NUM_THREADS": self.threads}
        if name in ("ov-fp32", "ov-int8-f32"):
            hint["INFERENCE_PRECISION_HINT"] = "f32"
        if name in ("ov-fp32", "ov-auto"):
            model = self.model()
        elif name in ("ov-int8", "ov-int8-f32"):
            model = self.int8()
            info["nncf_quantize_s"] = round(self.int8_s, 2)
        elif name == "ov-int8-weights":
            t0 = time.perf_counter()
            model = nncf.compress_weights(self.model().clone(), mode=nncf.CompressWeightsMode.INT8_ASYM)
            info["nncf_compress_weights_s"] = round(time.perf_counter() - t0, 2)
        else:
            raise ValueError(name)
        info["convert_model_s"] = round(self.convert_s, 2)
        t0 = time.perf_counter()
        compiled = ov.Core().compile_model(model, "CPU", hint)
        info["compile_s"] = round(time.perf_counter() - t0, 2)
        info["inference_precision"] = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        info["threads"] = int(compiled.get_property("INFERENCE_NUM_THREADS"))
        request = compiled.create_infer_request()

        def run(x):
            request.infer({0: x.numpy()})
            return [torch.from_numpy(np.array(request.get_output_tensor(i).data))
                    for i in range(len(compiled.outputs))]
        return run, info


def errors(ref: list[torch.Tensor], got: list[torch.Tensor], names: list[str]) -> dict:
    out = {}
    for name, a, b in zip(names, ref, got):
        a, b = a.float(), b.float().reshape(a.shape)
        out[name] = {"rel_l2": float((a - b).norm() / a.norm().clamp_min(1e-12)),
                     "max_abs": float((a - b).abs().max()), "ref_std": float(a.std())}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="random:default")
    ap.add_argument("--size", type=int, default=336, help="input size in px (a multiple of 14)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--calibration", type=int, default=8, help="Colin27 slices for nncf.quantize")
    ap.add_argument("--variants", nargs="+", default=VARIANTS, choices=VARIANTS)
    ap.add_argument("--part", default="encoder", choices=("encoder", "backbone"),
                    help="the whole vision encoder (ViT + FPN) or the ViT alone")
    ap.add_argument("--force-bf16", action="store_true", help="run torch-bf16 even without native bf16")
    ap.add_argument("-o", "--output", default=None)
    args = ap.parse_args()

    from medsam3.model import MedSAM3
    from medsam3.model.precision import native_bf16
    from medsam3.predict import ImagePredictor
    from medsam3.predict.input_size import with_input_size

    load_before = os.getloadavg()
    t0 = time.perf_counter()
    model = with_input_size(MedSAM3.from_pretrained(args.model, device="cpu"), args.size)
    predictor = ImagePredictor(model)
    calib, test, picks, test_slice = colin_slices(predictor, args.calibration)
    encoder = Encoder(model.detector.vision_encoder, args.part).eval()
    params = sum(p.numel() for p in encoder.parameters())
    del predictor, model  # keep the vision encoder only (the text encoder and heads are not measured)
    gc.collect()
    load_s = time.perf_counter() - t0
    print(json.dumps({"loaded_s": round(load_s, 1), "vision_params": params, "input": list(test.shape),
                      "calibration_slices": picks, "test_slice": test_slice}), flush=True)

    built, failed, info = {}, {}, {}
    variants = list(args.variants)
    if "torch-bf16" in variants and not native_bf16("cpu") and not args.force_bf16:
        variants.remove("torch-bf16")  # PyTorch's bf16 fallback is hundreds of times slower than fp32
        failed["torch-bf16"] = "skipped: no native bf16 on this CPU (--force-bf16 runs it)"
    ov_builder = OVBuilder(encoder, test, calib, torch.get_num_threads())
    for name in variants:
        t0 = time.perf_counter()
        try:
            built[name], info[name] = (build_torch(name, encoder) if name.startswith("torch")
                                       else ov_builder.build(name))
            info[name]["build_s"] = round(time.perf_counter() - t0, 2)
            first = time.perf_counter()
            built[name](calib[0])  # warm-up (OpenVINO's first inference allocates)
            info[name]["first_run_s"] = round(time.perf_counter() - first, 3)
        except Exception as exc:  # recorded, the other variants go on
            failed[name] = f"{type(exc).__name__}: {exc}"[:2000]
            traceback.print_exc()
        print(json.dumps({"built": name, **info.get(name, {}), "error": failed.get(name)}), flush=True)
        gc.collect()

    ref = built["torch-fp32"](test) if "torch-fp32" in built else None
    names = output_names(len(ref) if ref is not None else 1, args.part)
    times: dict[str, list[float]] = {n: [] for n in built}
    outputs = {}
    for r in range(args.rounds):
        for name, run in built.items():
            t = time.perf_counter()
            out = run(test)
            times[name].append(time.perf_counter() - t)
            outputs[name] = out
            print(json.dumps({"round": r, "variant": name, "s": round(times[name][-1], 3)}), flush=True)

    base = min(times["torch-fp32"]) if "torch-fp32" in times else None
    base_int8 = min(times["torch-int8"]) if "torch-int8" in times else None
    rows = []
    for name in built:
        row = {"variant": name, "best_s": round(min(times[name]), 3), "median_s": round(statistics.median(times[name]), 3),
               "rounds_s": [round(t, 3) for t in times[name]], **info[name]}
        if base:
            row["speedup_vs_torch_fp32"] = round(base / min(times[name]), 2)
        if base_int8:
            row["speedup_vs_torch_int8"] = round(base_int8 / min(times[name]), 2)
        if ref is not None and name != "torch-fp32":
            row["error_vs_torch_fp32"] = errors(ref, outputs[name], names)
        rows.append(row)
    result = {"benchmark": "openvino_vit", "model": args.model, "part": args.part, "input_size": args.size,
              "vision_params": params, "rounds": args.rounds, "calibration_slices": len(calib),
              "test_image": f"colin27_t1_2mm axial slice {test_slice}", "results": rows, "failed": failed,
              "machine": {**machine_info(), "load_average_before": [round(v, 2) for v in load_before],
                          "load_average_after": [round(v, 2) for v in os.getloadavg()]},
              "versions": versions()}
    print(json.dumps(result, indent=2), flush=True)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
