"""Fixtures of the bad-input table."""

from __future__ import annotations

import pytest


@pytest.fixture
def run(tiny_model_dir, tmp_path):
    """``run(case)``: :func:`harness.run_case` in a fresh folder with the tiny model."""
    from bad_inputs.harness import run_case

    def _run(case):
        folder = tmp_path / "case"
        folder.mkdir()
        return run_case(case, folder, tiny_model_dir)

    return _run
