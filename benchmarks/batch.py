"""Batch mode vs a shell loop of single-case runs, on 20 small real volumes.

The 20 volumes are 6-slice axial slabs cut (with their geometry) from real T1 MR scans
shipped by Debian packages: ITK's ``KmeansTest_T1UCharRaw.nii.gz`` (128 x 128 x 62) and
mricron's ``ch2bet.nii.gz`` and ``inia19-t1-brain.nii.gz``, written as NIfTI. Both modes
segment the same cases with the same arguments (``-p brain --mode slices --device cpu``):

* batch: one ``medsam3 segment -i FOLDER -o OUTDIR`` (the model is loaded once, the next
  case is read on a thread while the model works);
* loop: ``for f in FOLDER/*.nii.gz; do medsam3 segment -i $f -o OUT/...; done`` in bash
  (Python start, imports and the model load once per case).

Each mode runs in a fresh process tree; its wall time, CPU time (user + system over all its
processes) and peak resident memory (the largest ``ru_maxrss`` of any one process) are
measured by a wrapper process. One run each; on a shared machine CPU time is the steadier
measure. The model is a random-initialised ``tiny`` model (``medsam3 model create tiny``,
seed 0), so the numbers are about the pipeline around the model, not about SAM3's cost.

    python benchmarks/batch.py --output batch.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SOURCES = [
    "/usr/share/doc/insighttoolkit5-examples/examples/Data/KmeansTest_T1UCharRaw.nii.gz",
    "/usr/share/mricron/templates/ch2bet.nii.gz",
    "/usr/share/mricron/templates/inia19-t1-brain.nii.gz",
]


def make_cases(folder: Path, count: int = 20, slices: int = 6) -> list[Path]:
    """``count`` slabs of ``slices`` axial slices from the real scans, spread over each scan's middle."""
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    images = [sitk.ReadImage(p) for p in SOURCES]
    paths = []
    for i in range(count):
        image = images[i % len(images)]
        depth = image.GetSize()[2]
        k = i // len(images)
        per = -(-count // len(images))
        start = int(depth * 0.2 + (depth * 0.6 - slices) * k / max(per - 1, 1))
        slab = image[:, :, start:start + slices]  # SimpleITK slicing keeps spacing, origin, direction
        path = folder / f"case{i:02d}_{Path(SOURCES[i % len(images)]).name.split('.')[0]}_z{start}.nii.gz"
        sitk.WriteImage(slab, str(path))
        paths.append(path)
    return paths


def measure(command: list[str], env: dict) -> dict:
    """Run ``command`` in a wrapper process; its wall seconds, CPU seconds and peak RSS (MiB)."""
    out = subprocess.run([sys.executable, __file__, "--measure", json.dumps(command)], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _measure_child(command: list[str]) -> None:
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"seconds": round(seconds, 2), "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
                      "peak_rss_mb": round(usage.ru_maxrss / 1024, 1), "returncode": done.returncode,
                      "stderr_tail": done.stderr[-400:] if done.returncode else ""}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--output", default=None, help="JSON file to write (default: print only)")
    args = parser.parse_args()
    if args.measure:
        _measure_child(json.loads(args.measure))
        return

    import torch

    import medsam3
    from medsam3.model import create_random_model

    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    with tempfile.TemporaryDirectory(prefix="medsam3-batch-bench-") as tmp:
        tmp = Path(tmp)
        model = create_random_model("tiny", tmp / "tiny", seed=0)
        cases = make_cases(tmp / "cases", args.cases)
        common = ["-p", "brain", "--model", str(model), "--device", "cpu", "--mode", "slices"]
        cli = [sys.executable, "-m", "medsam3.cli", "segment"]
        batch = measure(cli + ["-i", str(tmp / "cases"), "-o", str(tmp / "batch")] + common, env)
        loop_script = ("set -e; for f in \"$1\"/*.nii.gz; do " + " ".join(f"'{c}'" for c in cli)
                       + " -i \"$f\" -o \"$2/$(basename \"$f\")\" " + " ".join(f"'{c}'" for c in common)
                       + " > /dev/null; done")
        loop = measure(["bash", "-c", loop_script, "loop", str(tmp / "cases"), str(tmp / "loop")], env)
        written = {"batch": len(list((tmp / "batch").glob("*.nii.gz"))),
                   "loop": len(list((tmp / "loop").glob("*.nii.gz")))}
        shapes = sorted({tuple(medsam3.read_image(p).shape) for p in cases})
    for row in (batch, loop):
        row["cases_per_minute"] = round(args.cases / row["seconds"] * 60, 2)
    report = {
        "benchmark": "batch mode vs shell loop of single-case runs",
        "cases": args.cases, "case_shapes_zyx": shapes, "sources": SOURCES,
        "model": "random-initialised tiny (medsam3 model create tiny, seed 0)",
        "arguments": common[:2] + common[4:],
        "batch": batch, "loop": loop, "outputs_written": written,
        "speedup_wall": round(loop["seconds"] / batch["seconds"], 2),
        "speedup_cpu": round(loop["cpu_seconds"] / batch["cpu_seconds"], 2),
        "machine": {"python": platform.python_version(), "platform": platform.platform(),
                    "processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                    "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
                    "load_average": os.getloadavg(), "medsam3": medsam3.__version__},
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()
