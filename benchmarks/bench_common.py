"""What every benchmark's JSON says about the machine it ran on, and how it is written.

Imported by the scripts beside it (``python benchmarks/NAME.py`` puts this folder first on
``sys.path``). Not ``common.py`` or ``machine.py``: a module here must not shadow a name the
standard library or torch imports.
"""

from __future__ import annotations

import json
import os
import platform

#: the text prompts the image benchmarks ask, the first K of them for K prompts
PROMPTS = ["liver", "spleen", "left kidney", "right kidney", "pancreas", "aorta", "stomach", "gallbladder",
           "brain", "lung", "heart", "bladder", "prostate", "colon", "duodenum", "esophagus"]


def cpu_name() -> str:
    """The CPU's model name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def machine_info(load_before, **extra) -> dict:
    """The machine, versions and load: ``load_before`` is :func:`os.getloadavg` at the start;
    ``extra`` items (e.g. ``native_bf16``) are added as given."""
    import torch
    import transformers

    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "transformers": transformers.__version__,
            "quantized_engine": torch.backends.quantized.engine, **extra,
            "load_average_before": [round(v, 2) for v in load_before],
            "load_average_after": [round(v, 2) for v in os.getloadavg()]}


def naive(model, image, prompts: list[str], threshold: float) -> list:
    """The naive transformers loop: per prompt, ``processor(images, text)`` then the whole
    ``Sam3Model`` forward (ViT included); the union of each prompt's masks above ``threshold``."""
    import numpy as np
    import torch

    from medsam3.model.geometry import no_box_inputs

    rgb = np.repeat(image[..., None], 3, -1)
    unions = []
    for text in prompts:
        inputs = model.processor(images=rgb, text=text, do_rescale=False, return_tensors="pt").to(model.device)
        with torch.inference_mode():  # as Meta's SAM3 runs a text prompt: with the geometry CLS token
            out = model.detector(**inputs, **no_box_inputs(1, model.device, model.dtype))
        # Meta's post-processing: score = sigmoid(class) x sigmoid(presence); logits resized to
        # the image, then sigmoid > 0.5. The predictor additionally reports "absent" below the presence
        # threshold, which is set to 0 here.
        scores = out.pred_logits[0].sigmoid() * out.presence_logits[0].sigmoid()
        logits = torch.nn.functional.interpolate(out.pred_masks[:, scores > threshold].float(), size=image.shape,
                                                 mode="bilinear", align_corners=False)[0]
        unions.append((logits.sigmoid() > 0.5).any(0).cpu().numpy() if len(logits) else np.zeros(image.shape, bool))
    return unions


def emit(result: dict, output: str | None) -> None:
    """Print ``result`` as JSON, and write it to ``output`` too when given."""
    print(json.dumps(result, indent=2), flush=True)
    if output:
        with open(output, "w") as f:
            json.dump(result, f, indent=2)
