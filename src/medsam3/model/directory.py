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
