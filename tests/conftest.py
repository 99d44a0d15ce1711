"""Shared fixtures: a tiny random-initialised SAM3 model directory, built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    from medsam3.model import create_random_model  # torch + transformers: only when a test needs a model

    return create_random_model("tiny", tmp_path_factory.mktemp("models") / "tiny", seed=0)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from medsam3.model import MedSAM3

    return MedSAM3.from_pretrained(tiny_model_dir, device="cpu")
