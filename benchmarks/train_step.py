"""Training-step speed and peak memory: named SAM3 configs, with and without activation checkpointing.

One training step is what ``medsam3 train`` does per batch: the vision backbone once per
image, the detector on the prompt rows (each image's text prompt plus one absent-class
prompt, half of the images also with a box prompt), SAM3's losses
(:class:`medsam3.train.losses.SetCriterion`, paper weights), backward, gradient clipping
and an AdamW step over the paper's parameter groups. Inputs are random images with a
blob-shaped target (speed and memory do not depend on the content).

    python benchmarks/train_step.py                         # tiny and small on this device
    python benchmarks/train_step.py --configs tiny --steps 10 --batch-size 2
    python benchmarks/train_step.py --full-size             # default SAM3, 1008 px, one step

Each measurement runs in its own process, so that the peak memory is its own: on a GPU the
peak of ``torch.cuda.max_memory_allocated``; on the CPU the process's peak resident set
(``ru_maxrss``) and its growth over the resident set after the model was built.
``--full-size`` runs one step of the published configuration (840M-parameter detector) at
1008 px with activation checkpointing; ``--no-optimizer`` leaves out the AdamW step (whose
two moment buffers add 8 bytes per trainable parameter, reported as ``adamw_state_mb``) for
machines without the memory for it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

import torch


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def synthetic_samples(batch_size: int, size: int, seed: int = 0) -> list[dict]:
    """Dataset-shaped samples (see medsam3.data.PromptSegmentationDataset) with an elliptic target."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    out = []
    for i in range(batch_size):
        cy, cx = size * (0.4 + 0.2 * torch.rand(1, generator=g).item()), size * 0.5
        mask = ((yy - cy) / (0.25 * size)) ** 2 + ((xx - cx) / (0.2 * size)) ** 2 <= 1
        ys, xs = torch.nonzero(mask, as_tuple=True)
        x0, y0, x1, y1 = xs.min().item(), ys.min().item(), xs.max().item() + 1, ys.max().item() + 1
        box = torch.tensor([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dtype=torch.float32) / size
        out.append({"image": torch.rand(3, size, size, generator=g) * 2 - 1, "prompt": "brain", "present": True,
                    "semantic_mask": mask, "instance_masks": mask[None], "boxes": box[None],
                    "box_prompt": box if i % 2 == 0 else None, "negative_prompts": ["liver"],
                    "loss_mask": torch.ones(size, size, dtype=torch.bool)})
    return out


def measure(name: str, checkpointing: bool, batch_size: int, steps: int, warmup: int, device: str,
            optimizer_step: bool = True, image_size: int | None = None) -> dict:
    from transformers import Sam3Model

    from medsam3.model.configs import build_config
    from medsam3.model.tokenizer import build_tokenizer
    from medsam3.train.batch import RowCollator
    from medsam3.train.losses import SetCriterion
    from medsam3.train.model import DetectorForTraining, enable_activation_checkpointing
    from medsam3.train.optim import build_optimizer

    torch.manual_seed(0)
    dev = torch.device(device)
    config = build_config(name, image_size=image_size)
    detector = Sam3Model(config).to(dev)
    size = int(config.detector_config.vision_config.backbone_config.image_size)
    if checkpointing:
        enable_activation_checkpointing(detector)
    model = DetectorForTraining(detector).train()
    params = sum(p.numel() for p in detector.parameters())
    optimizer, _ = build_optimizer(model, {"decoder": 3e-4, "geometry": 1e-4, "vision": 5e-5, "text": 5e-5},
                                   {"vision": 0.85, "text": 0.85}, 0.05)
    criterion = SetCriterion()
    batch = RowCollator(build_tokenizer(), negative_prompts=1)(synthetic_samples(batch_size, size)).to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast(
        "cpu", enabled=False)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    base_rss = rss_mb()
    times = []
    for step in range(warmup + steps):
        tic = time.perf_counter()
        with autocast:
            outputs = model(**batch.model_inputs())
        loss = criterion(outputs, batch.targets).total
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.1)
        if optimizer_step:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - tic)
    per_step = sum(times) / len(times)
    result = {"config": name, "image_size": size, "detector_parameters": params, "batch_size": batch_size,
              "prompt_rows": len(batch.targets), "activation_checkpointing": checkpointing, "device": str(dev),
              "precision": "bf16 autocast" if dev.type == "cuda" else "fp32", "optimizer_step": optimizer_step,
              "timed_steps": len(times), "seconds_per_step": round(per_step, 3),
              "samples_per_s": round(batch_size / per_step, 3), "loss": round(float(loss), 3),
              "adamw_state_mb": round(8 * params / 2 ** 20, 1)}
    if dev.type == "cuda":
        result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
    else:
        result["peak_rss_mb"] = round(peak_rss_mb(), 1)
        result["rss_after_model_mb"] = round(base_rss, 1)
        result["peak_step_growth_mb"] = round(peak_rss_mb() - base_rss, 1)
    return result


def machine() -> dict:
    info = {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": [round(x, 2) for x in os.getloadavg()]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_child(args: argparse.Namespace, name: str, checkpointing: bool, steps: int, warmup: int,
              batch_size: int, optimizer_step: bool) -> dict:
    cmd = [sys.executable, __file__, "--one", name, "--device", args.device, "--steps", str(steps),
           "--warmup", str(warmup), "--batch-size", str(batch_size)]
    if checkpointing:
        cmd.append("--checkpointing-on")
    if not optimizer_step:
        cmd.append("--no-optimizer")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"config": name, "activation_checkpointing": checkpointing, "error": proc.stderr.strip()[-2000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", nargs="+", default=["tiny", "small"], help="named configs (medsam3 model create)")
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--batch-size", type=int, default=2, help="images per step (each with 2 prompt rows)")
    ap.add_argument("--checkpointing", choices=("both", "on", "off"), default="both")
    ap.add_argument("--full-size", action="store_true",
                    help="only the default SAM3 config at 1008 px: one step, batch 1, checkpointing on")
    ap.add_argument("--no-optimizer", action="store_true", help="leave out the AdamW step (see the docstring)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing-on", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(args.one, args.checkpointing_on, args.batch_size, args.steps, args.warmup,
                                 args.device, not args.no_optimizer)), flush=True)
        return
    results = []
    if args.full_size:
        results.append(run_child(args, "default", True, 1, 0, 1, not args.no_optimizer))
        print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    else:
        modes = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
        for name in args.configs:
            for checkpointing in modes:
                results.append(run_child(args, name, checkpointing, args.steps, args.warmup, args.batch_size,
                                         not args.no_optimizer))
                print(json.dumps(results[-1]), file=sys.stderr, flush=True)
    print(json.dumps({"benchmark": "train_step", "machine": machine(), "results": results}, indent=2))


if __name__ == "__main__":
    main()
