"""Model directories: the one checkpoint format medsam3 reads and writes.

A model directory is what ``facebook/sam3`` holds on the Hugging Face hub: a
``Sam3VideoConfig`` ``config.json``, one ``model.safetensors`` with the
``detector_model.*`` / ``tracker_model.*`` / ``tracker_neck.*`` keys of
:class:`transformers.Sam3VideoModel`, the CLIP tokenizer files and the processor config.
``Sam3Model``, ``Sam3TrackerModel`` and the video classes all load from it.
Nothing in it is a pickle, and nothing in it needs the network to load.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import Sam3ImageProcessor, Sam3Processor, Sam3VideoConfig, Sam3VideoModel

from medsam3.model.configs import build_config
from medsam3.model.tokenizer import build_tokenizer

WEIGHTS_NAME = "model.safetensors"


def build_processor(image_size: int) -> Sam3Processor:
    """SAM3's processor at ``image_size`` px: resize (aspect not kept), scale to [-1, 1]."""
    image_processor = Sam3ImageProcessor(
        size={"height": image_size, "width": image_size},
        mask_size={"height": image_size // 14 * 4, "width": image_size // 14 * 4},
    )
    return Sam3Processor(image_processor=image_processor, tokenizer=build_tokenizer(), target_size=image_size)


def save_model_directory(state_dict: dict[str, torch.Tensor], config: Sam3VideoConfig, directory,
                         processor: Sam3Processor | None = None, extra_files: dict[str, str] | None = None) -> Path:
    """Write a complete model directory atomically (a temporary sibling renamed into place).

    Args:
        state_dict: ``Sam3VideoModel`` keys (``detector_model.*``, ``tracker_model.*``,
            ``tracker_neck.*``) to tensors.
        config: the matching :class:`Sam3VideoConfig`.
        directory: where the directory will be; an existing one is replaced only on success.
        processor: saved alongside; built for ``config.image_size`` when omitted.
        extra_files: more text files to write into the directory (name -> content), e.g. a
            conversion report.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        config.save_pretrained(tmp)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": "pt"})
        (processor or build_processor(config.image_size)).save_pretrained(tmp)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        tmp.chmod(0o755)  # mkdtemp makes it private; a model directory is meant to be shared
        for path in tmp.iterdir():
            if path.is_file():
                path.chmod(0o644)  # safetensors writes its file private too
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            directory.rename(old)
            tmp.rename(directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def create_random_model(name: str, directory, seed: int = 0, image_size: int | None = None) -> Path:
    """A randomly initialised model directory of a named size (for tests and benchmarks)."""
    config = build_config(name, image_size=image_size)
    torch.manual_seed(seed)
    model = Sam3VideoModel(config)
    return save_model_directory(model.state_dict(), config, directory)


def is_model_directory(path) -> bool:
    path = Path(path)
    return path.is_dir() and (path / "config.json").is_file() and (path / WEIGHTS_NAME).is_file()


def directory_has_tracker(directory) -> bool:
    """Whether a model directory holds tracker weights (``tracker_model.*``), read from the
    safetensors header only. A directory converted from a detector-only checkpoint (e.g. an
    image-model checkpoint saved without ``inst_interactive_predictor``) does not, and loading
    ``Sam3TrackerModel`` from it would leave the tracker randomly initialised."""
    from medsam3.model.weights import directory_has_tracker as has_tracker

    return has_tracker(directory)


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
    import json

    from medsam3.model.info import INFO_NAME, ModelInfo
    from medsam3.model.loader import model_directory
    from medsam3.model.weights import check_weights, load_config, read_tensors

    src = model_directory(source)
    config = load_config(src)
    check_weights(src, config)  # a broken model is refused, never passed on
    state = read_tensors(src, lambda key: True)
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        overflow = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
        if overflow:
            from medsam3.errors import ArgumentError

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


def manifest_concepts(manifest) -> list[str]:
    """The canonical concepts a training manifest labels (its classes through the prompt
    vocabulary, sides dropped), sorted."""
    from medsam3.data.manifest import read_manifest
    from medsam3.prompts import resolve_prompt

    m = read_manifest(manifest)
    names = set()
    for item in m:
        for name in item.class_names:
            resolved = resolve_prompt(name, warn=False, check_length=False)
            names.add(resolved.concept.name if resolved.concept is not None else resolved.prompt)
    return sorted(names)
