"""Exporting a model directory for distribution (``medsam3 model export``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Sam3Processor

from medsam3.errors import ArgumentError
from medsam3.model.directory import save_model_directory
from medsam3.model.info import INFO_NAME, ModelInfo
from medsam3.model.loader import model_directory
from medsam3.model.weights import check_weights, load_config, read_tensors


def export_model(source, output, *, half: bool = True, concepts: list[str] | None = None,
                 info: dict | None = None, files: dict[str, str] | None = None) -> Path:
    """A model directory for distribution: weights (optionally float16), config, processor,
    and ``medsam3.json`` with ``concepts`` (the classes it was trained to segment, canonical
    names) and whatever ``info`` adds (provenance, ``tracker_trained``, licences).

    Args:
        source: a model directory (e.g. a training run's ``final``) or hub id.
        output: the directory to write (atomically; an existing one is replaced).
        half: store floating-point tensors as float16 (they load back as float32).
        files: more text files for the directory (name -> content), e.g. a model card.
    """
    src = model_directory(source)
    config = load_config(src)
    check_weights(src, config)  # a broken model is refused, never passed on
    state = read_tensors(src, lambda key: True)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        overflow = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
        if overflow:
            raise ArgumentError(f"{len(overflow)} tensors of {src} exceed the float16 range "
                                f"({', '.join(overflow[:5])}): export the model in float32 (--float32)")
    meta = {**ModelInfo.read(src).to_json(), **(info or {})}
    if concepts is not None:
        meta["concepts"] = list(concepts)
    meta["weights_dtype"] = "float16" if half else "float32"
    ModelInfo.from_json(meta, f"{output}/{INFO_NAME}")  # what is written must load back
    extra = {INFO_NAME: json.dumps(meta, indent=2) + "\n", **(files or {})}
    return save_model_directory(state, config, output, processor=Sam3Processor.from_pretrained(src),
                                extra_files=extra)
