"""The model a training run starts from: a model directory, a hub id, or ``random:NAME`` (created
once in ``OUTPUT/source_model`` by the main process while the others wait)."""

from __future__ import annotations

import logging
from pathlib import Path

from medsam3.errors import ArgumentError
from medsam3.model.configs import config_names
from medsam3.model.directory import create_random_model, is_model_directory
from medsam3.model.loader import RANDOM_PREFIX, model_directory

log = logging.getLogger("medsam3.train")


def resolve_source_model(spec: str, output_dir: Path, seed: int, is_main: bool, wait) -> Path:
    """A model directory for ``model:`` (directory, hub id, or ``random:NAME`` created once)."""
    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX):]
        if name not in config_names():
            raise ArgumentError(f"config: model {spec!r}: unknown configuration; known: {', '.join(config_names())}")
        target = output_dir / "source_model"
        if is_main and not is_model_directory(target):
            log.warning("model %s: RANDOM initial weights (for smoke tests and benchmarks)", spec)
            create_random_model(name, target, seed=seed)
        wait()
        return target
    return model_directory(spec)
