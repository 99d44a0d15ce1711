"""Training checkpoints on disk: finding them, their trainer state, restoring the optimizer,
scheduler and random-number states for an exact resume, and the weights a run leaves untouched.

Layout: ``OUTPUT/checkpoints/step-N/{model/, state/, trainer.json}`` (see :mod:`medsam3.train.loop`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from medsam3.errors import InputError
from medsam3.model.weights import read_tensors

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dirs(output_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints ``(step, path)`` of a run, oldest first."""
    root = Path(output_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "trainer.json").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def find_checkpoint(output_dir: str | os.PathLike, resume: bool | str | os.PathLike) -> Path | None:
    """The checkpoint to resume from: ``True`` = the newest of the run (``None`` when there is
    none yet), a path = that checkpoint."""
    if resume is False or resume is None:
        return None
    if resume is True or str(resume) in ("latest", "auto", ""):
        found = checkpoint_dirs(output_dir)
        return found[-1][1] if found else None
    path = Path(resume)
    if not (path / "trainer.json").is_file():
        raise InputError(f"cannot resume from {path}: not a complete checkpoint (no trainer.json); "
                         f"checkpoints are OUTPUT/{CHECKPOINTS}/step-N")
    return path


def weights_digest(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the tensors of a state dict (sorted names, raw bytes)."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().to("cpu").contiguous()
        h.update(key.encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def source_tensors(source_dir: Path, skip=()) -> dict[str, torch.Tensor]:
    """The source model directory's tensors except those in ``skip`` (the parts a run does
    not train are written back unchanged; only they are read, strictly)."""
    skip = set(skip)
    return read_tensors(source_dir, lambda key: key not in skip)


def read_trainer_state(checkpoint: Path) -> dict:
    """A checkpoint's ``trainer.json``, checked: ``step`` and ``skipped_steps`` whole numbers
    >= 0, ``best_score`` a number, ``validation`` a list of records. Anything else is an
    :class:`InputError` naming the file (a resume must continue exactly or not at all)."""
    path = Path(checkpoint) / "trainer.json"
    again = "resume from an earlier checkpoint (--resume OUTPUT/checkpoints/step-N) or start a new run"
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise InputError(f"cannot resume: {path} is not readable JSON ({exc}); {again}") from None
    if not isinstance(state, dict):
        raise InputError(f"cannot resume: {path} holds {type(state).__name__}, not the trainer state object; {again}")

    def whole(key, low):
        v = state.get(key, low)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise InputError(f"cannot resume: {path}: {key!r} must be a whole number >= {low}, got {v!r}; {again}")
        return v

    whole("step", 0)
    whole("skipped_steps", 0)
    whole("num_processes", 1)
    best = state.get("best_score", -1.0)
    if isinstance(best, bool) or not isinstance(best, (int, float)) or math.isnan(best):
        raise InputError(f"cannot resume: {path}: 'best_score' must be a number, got {best!r}; {again}")
    history = state.get("validation", [])
    if not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise InputError(f"cannot resume: {path}: 'validation' must be a list of records; {again}")
    return state


def restore_training_state(acc, checkpoint: Path) -> None:
    """``accelerate``'s ``load_state`` of ``checkpoint/state``, refusing what it would skip or
    crash on: every file it reads is loaded (weights-only) and checked first, and the random
    number generators are restored here, so a corrupted RNG state is an error instead of a
    silently inexact resume."""
    from accelerate.utils import OPTIMIZER_NAME, RNG_STATE_NAME, SCALER_NAME, SCHEDULER_NAME, load

    state_dir = Path(checkpoint) / "state"
    again = "resume from an earlier checkpoint (--resume OUTPUT/checkpoints/step-N) or start a new run"
    rng_name = f"{RNG_STATE_NAME}_{acc.process_index}.pkl"
    loaded = {}
    names = [f"{OPTIMIZER_NAME}.bin", f"{SCHEDULER_NAME}.bin", rng_name]
    if getattr(acc, "scaler", None) is not None:  # float16 mixed precision
        names.append(SCALER_NAME)
    for name in names:
        path = state_dir / name
        if not path.is_file():
            raise InputError(f"cannot resume from {checkpoint}: {path} is missing; {again}")
        try:
            loaded[name] = load(path, map_location="cpu")
        except Exception as exc:  # noqa: BLE001 - torch.load of a damaged file raises many kinds
            detail = " ".join(str(exc).split())[:200]
            raise InputError(f"cannot resume from {checkpoint}: {path} is not a saved training state "
                             f"({type(exc).__name__}: {detail}); {again}") from None
    optimizer = loaded[f"{OPTIMIZER_NAME}.bin"]
    if not (isinstance(optimizer, dict) and isinstance(optimizer.get("param_groups"), list)
            and isinstance(optimizer.get("state"), dict)):
        raise InputError(f"cannot resume from {checkpoint}: {state_dir / (OPTIMIZER_NAME + '.bin')} holds no "
                         f"optimizer state; {again}")
    if not isinstance(loaded[f"{SCHEDULER_NAME}.bin"], dict):
        raise InputError(f"cannot resume from {checkpoint}: {state_dir / (SCHEDULER_NAME + '.bin')} holds no "
                         f"learning-rate scheduler state; {again}")
    rng = loaded[rng_name]
    try:
        random.setstate(rng["random_state"])
        np.random.set_state(rng["numpy_random_seed"])
        torch.set_rng_state(rng["torch_manual_seed"])
        if torch.cuda.is_available() and acc.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["torch_cuda_manual_seed"])
    except (TypeError, KeyError, ValueError, RuntimeError, IndexError) as exc:
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"cannot resume from {checkpoint}: {state_dir / rng_name} is not a usable random-number "
                         f"state ({type(exc).__name__}: {detail}); without it the run cannot continue exactly; "
                         f"{again}") from None

    def skip_model(models, input_dir):  # weights come from checkpoint/model (or adapters), not state/
        models.clear()

    handle = acc.register_load_state_pre_hook(skip_model)
    try:
        acc.load_state(str(state_dir))
    except (ValueError, KeyError, TypeError, RuntimeError, IndexError) as exc:  # e.g. other parameter groups
        detail = " ".join(str(exc).split())[:200]
        raise InputError(f"cannot resume from {checkpoint}: its optimizer or scheduler state does not fit this run "
                         f"({type(exc).__name__}: {detail}); {again}") from None
    finally:
        handle.remove()
