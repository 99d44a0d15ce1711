"""Running a loaded model at another input resolution (``--size``), sharing its weights.

SAM3's weights do not depend on the input size: the ViT's absolute position embeddings
are *tiled* from the pretraining grid (336 px = 24 x 24 patches) to whatever grid the
input has, its rotary tables and the tracker's memory-attention rotary tables are
recomputed from the configuration, and the FPN, detector, prompt encoder and mask heads
are convolutional or size-agnostic. So a checkpoint runs at any size that is a positive
multiple of the 14-pixel patch (the public Medical SAM3 3D script uses 504 px). What the
checkpoint *allows* in quality is another matter: it was trained at 1008 px, and smaller
inputs trade accuracy for a roughly quadratic saving in time and memory.

:func:`with_input_size` builds the model's modules for the new size (configuration and
size-dependent buffers only) and points their parameters at the existing tensors, so no
weight is copied or re-read.
"""

from __future__ import annotations

import copy

import torch
from transformers import Sam3Model, Sam3TrackerModel
from transformers.initialization import no_init_weights

from medsam3.errors import ArgumentError
from medsam3.model.configs import PATCH_SIZE
from medsam3.model.directory import build_processor
from medsam3.model.loader import MedSAM3
from medsam3.model.precision import apply_precision, apply_precision_to


#: The largest input resolution accepted: 4x the published 1008 px. Activations grow with its
#: square (and attention with its fourth power), so a typo such as 100002 would otherwise ask
#: for hundreds of GB before failing.
MAX_INPUT_SIZE = 4032


def check_input_size(size: int) -> int:
    """``size`` as an int when it is a multiple of the patch size from 14 to :data:`MAX_INPUT_SIZE`.

    Raises:
        ArgumentError: anything else (not a number, not a multiple of 14, too large).
    """
    try:
        ok = not isinstance(size, bool) and int(size) == size
    except (TypeError, ValueError):
        ok = False
    if not ok or size < PATCH_SIZE or size % PATCH_SIZE:
        raise ArgumentError(f"input size {size!r} is not a positive multiple of the {PATCH_SIZE}-pixel patch "
                            f"(e.g. 504, 672, 1008)")
    if size > MAX_INPUT_SIZE:
        raise ArgumentError(f"input size {size} is larger than {MAX_INPUT_SIZE} pixels, the most medsam3 runs "
                            f"(4x the published 1008); use a multiple of {PATCH_SIZE} up to {MAX_INPUT_SIZE}")
    return int(size)


def _rebuilt(cls, config, source: torch.nn.Module, precision: str = "fp32") -> torch.nn.Module:
    with no_init_weights():
        module = cls(config)
    if precision == "int8":  # the source's Linear layers are quantised: load into quantised ones
        apply_precision_to(module, precision, source.device, torch.float32)
    missing, unexpected = module.load_state_dict(source.state_dict(), strict=False, assign=True)
    if missing or unexpected:  # a size-dependent persistent tensor: this checkpoint cannot change size
        raise ArgumentError(f"this model cannot run at another input size: {sorted(missing + unexpected)[:3]}")
    return module.to(source.device).eval()


def with_input_size(model: MedSAM3, size: int | None) -> MedSAM3:
    """``model`` running at ``size`` x ``size`` pixels; the same object when the size is unchanged.

    The new model's parameters are the original's tensors (no copy); only the configuration,
    the processor and the buffers that depend on the input grid are new.
    """
    if size is None or int(size) == model.image_size:
        return model
    size = check_input_size(size)
    config = copy.deepcopy(model.config)
    config.image_size = size  # detector and tracker (feature sizes and memory rotary grid included)
    grid = size // PATCH_SIZE
    config.detector_config.vision_config.backbone_feature_sizes = [[4 * grid] * 2, [2 * grid] * 2, [grid] * 2]
    config.low_res_mask_size = 4 * grid
    precision = getattr(model, "precision", "fp32")
    detector = _rebuilt(Sam3Model, config.detector_config, model.detector, precision)
    tracker = _rebuilt(Sam3TrackerModel, config.tracker_config, model.tracker, precision)
    tracker.vision_encoder.backbone = detector.vision_encoder.backbone  # one copy of the ViT
    resized = MedSAM3(detector, build_processor(size), config, f"{model.source}@{size}px", model.device,
                      model.dtype, directory=model.directory, tracker=tracker, info=model.info)
    apply_precision(resized, precision)  # bf16's autocast wrappers; int8 is already in place
    resized.fast = getattr(model, "fast", None)  # what --fast resolved to, if it did
    return resized
