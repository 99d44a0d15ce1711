"""The ``--precision`` and ``--fast`` command-line options (``segment``, ``evaluate``, ``serve``).

Kept apart from :mod:`medsam3.model.precision` so building the argument parser does not
import torch; what the options do is documented there and in docs/speed.md.

A precision is passed around as one string: ``fp32``, ``bf16``, ``int8``, or for ``--fast``
``fast`` (the device's fastest precision and a smaller input size, both chosen when the model
loads: :func:`medsam3.model.precision.resolve_fast`) or ``fast:PRECISION`` (``--fast`` with an
explicit ``--precision``: that precision, ``--fast``'s input size).
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
#: ``--fast``: the fastest precision of the device the model loads on and a smaller input size,
#: chosen at load (:func:`medsam3.model.precision.resolve_fast`), so that this module needs no torch.
FAST = "fast"
#: why ``ov`` is refused where OpenVINO is not installed
OPENVINO_MISSING = "precision ov needs OpenVINO, which is not installed: pip install 'medsam3[openvino]'"


def check_precision(precision) -> str:
    """``fp32`` / ``bf16`` / ``int8`` / ``ov`` for a name or alias (``None`` -> the default ``fp32``), or
    :data:`FAST` / ``fast:PRECISION`` (resolved when the model loads; module docstring)."""
    if precision is None:
        return DEFAULT_PRECISION
    text = str(precision).lower()
    if text == FAST:
        return FAST
    fast = text.startswith(FAST + ":")
    name = ALIASES.get(text[len(FAST) + 1:] if fast else text)
    if name is None:
        raise ArgumentError(f"unknown precision {precision!r}; accepted: {', '.join(PRECISIONS)}")
    if name == "ov" and importlib.util.find_spec("openvino") is None:  # refused before a model loads
        raise ArgumentError(OPENVINO_MISSING)
    return f"{FAST}:{name}" if fast else name


def split_fast(precision) -> tuple[bool, str | None]:
    """``(fast, explicit)`` of a precision string: whether ``--fast`` asked for it, and the
    precision named explicitly (``None`` for plain ``fast``: the device's choice)."""
    name = check_precision(precision)
    if name == FAST:
        return True, None
    if name.startswith(FAST + ":"):
        return True, name[len(FAST) + 1:]
    return False, name


def add_precision_arguments(parser: argparse.ArgumentParser) -> None:
    """``--precision fp32|bf16|int8`` and ``--fast`` (see :func:`resolve_precision`)."""
    parser.add_argument("--precision", default=None, metavar="{fp32,bf16,int8,ov}",
                        help="inference precision: fp32 (default), bf16 (autocast; fast on GPUs and CPUs with "
                             "AVX-512 BF16/AMX), int8 (dynamic quantisation of the linear layers, CPU only), "
                             "ov (the vision encoder in OpenVINO, converted once and cached; CPU only, needs "
                             "medsam3[openvino])")
    parser.add_argument("--fast", action="store_true",
                        help="the fastest measured setting for this device: bf16 where the hardware has it, "
                             "else int8 on a CPU, and a smaller input size (a fixed fraction of the model's own); "
                             "an explicit --precision or --size wins. Speed and Dice cost: docs/speed.md")


def resolve_precision(args, device="auto") -> str:
    """The precision an ``argparse`` namespace from :func:`add_precision_arguments` asks for:
    :data:`FAST` for ``--fast`` (the device's choice, made when the model loads on it),
    ``fast:PRECISION`` for ``--fast`` with ``--precision`` (the explicit precision wins, the
    input size is still ``--fast``'s), the ``--precision`` given, else fp32. ``device`` is kept
    for callers; the choice is the loaded model's device's."""
    explicit = getattr(args, "precision", None)
    if getattr(args, "fast", False):
        return FAST if explicit is None else f"{FAST}:{check_precision(explicit)}"
    if explicit is not None:
        return check_precision(explicit)
    return DEFAULT_PRECISION
