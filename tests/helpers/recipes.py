"""The recipe scripts under ``recipes/`` (not part of the installed package), imported by path."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo"


def demo_script(name: str) -> ModuleType:
    """``recipes/demo/NAME.py`` as a module (loaded once per process)."""
    key = f"recipes_demo_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, DEMO / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]
