"""The ``--precision`` and ``--fast`` command-line options (``segment``, ``evaluate``, ``serve``).

Kept apart from :mod:`medsam3.model.precision` so building the argument parser does not
import torch; what the options do is documented there and in docs/speed.md.
"""

from __future__ import annotations

import argparse
import importlib.util

from medsam3.errors import ArgumentError

PRECISIONS = ("fp32", "bf16", "int8", "ov")
#: names accepted for each precision (``--precision``, ``precision=``)
ALIASES = {"fp32": "fp32", "float32": "fp32", "bf16": "bf16", "bfloat16": "bf16", "int8": "int8", "qint8": "int8",
           "ov": "ov", "openvino": "ov"}
DEFAULT_PRECISION = "fp32"
#: ``--fast``: the fastest measured precision of the device the model loads on, chosen at load
#: (:func:`medsam3.model.precision.fast_precision`), so that this module needs no torch.
FAST = "fast"
#: why ``ov`` is refused where OpenVINO is not installed
OPENVINO_MISSING = "precision ov needs OpenVINO, which is not installed: pip install 'medsam3[openvino]'"


def check_precision(precision) -> str:
    """``fp32`` / ``bf16`` / ``int8`` / ``ov`` for a name or alias (``None`` -> the default ``fp32``), or
    :data:`FAST` (resolved when the model loads)."""
    if precision is None:
        return DEFAULT_PRECISION
    if str(precision).lower() == FAST:
        return FAST
    name = ALIASES.get(str(precision).lower())
    if name is None:
        raise ArgumentError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    if name == "ov" and importlib.util.find_spec("openvino") is None:  # refused before a model loads
        raise ArgumentError(OPENVINO_MISSING)
    return name


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|int8`` and ``--fast`` (see :func:`resolve_precision`)."""
    parser.add_argument("--precision", default=None, metavar="{fp32,bf16,int8,ov}",
                        help="inference precision: fp32 (default), bf16 (autocast; fast on GPUs and CPUs with "
                             "AVX-512 BF16/AMX), int8 (dynamic quantisation of the linear layers, CPU only), "
                             "ov (the vision encoder in OpenVINO, converted once and cached; CPU only, needs "
                             "medsam3[openvino])")
    parser.add_argument("--fast", action="store_true",
                        help="the fastest measured setting for this device: bf16 where the hardware has it, "
                             "else int8 on a CPU (accuracy cost: docs/speed.md)")


def resolve_precision(args, device="auto") -> str:
    """The precision an ``argparse`` namespace from :func:`add_precision_arguments` asks for:
    ``--precision`` when given, else :data:`FAST` for ``--fast`` (the device's choice, made
    when the model loads on it), else fp32. ``device`` is kept for callers; the choice is the
    loaded model's device's."""
    if getattr(args, "precision", None) is not None:
        return check_precision(args.precision)
    if getattr(args, "fast", False):
        return FAST
    return DEFAULT_PRECISION
