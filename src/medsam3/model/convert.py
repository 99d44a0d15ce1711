"""Converting Meta-format SAM3 checkpoints into medsam3 model directories, verified key by key.

Accepted inputs (detected, and said which in :meth:`ConversionReport.detection_line`):

* Meta's video checkpoint ``sam3.pt``: keys ``detector.*`` and ``tracker.*``;
* image-model checkpoints without the ``detector.`` prefix (Medical SAM3's
  ``checkpoint_2D.pt``), with or without the tracker under ``inst_interactive_predictor.model.``;
* trainer checkpoints ``{"model": state_dict, "optimizer": ..., ...}`` (also ``"state_dict"``):
  only the model entry is read; everything else is dropped with its reason, and since the file
  is memory-mapped, the optimizer state is never read from disk;
* any of these with DDP's ``module.`` prefix.

Verification (no ``strict=False`` anywhere): every tensor of the target transformers model
must be produced from the checkpoint with the expected shape, and every checkpoint tensor
must be either mapped or dropped for a listed reason (:data:`medsam3.model.keymap.META_ONLY`).
Anything else is an :class:`CheckpointMismatchError` that names the file and the offending keys.
Tensors holding NaN or Inf are an error too (the public Medical SAM3 run is known to have
corrupted part of its language backbone), unless a ``nan_fallback`` model supplies them.

The output is a model directory (:mod:`medsam3.model.directory`: config, ``model.safetensors``,
tokenizer, processor) plus ``conversion.json``, the report. Nothing is pickled. Downloading
and caching hub checkpoints is :mod:`medsam3.model.hub`; the key tables are
:mod:`medsam3.model.keymap`. What is left (~570 lines) is one pipeline -- load, detect the
layout, match keys against candidate configurations, convert with the NaN fallback, verify,
report -- whose steps share the private :class:`_Plan`.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open

from medsam3.errors import ArgumentError, InputError
from medsam3.io.outputs import OutputPlan
from medsam3.model import keymap as km
from medsam3.model.configs import build_config, config_names
from medsam3.model.directory import WEIGHTS_NAME, is_model_directory, save_model_directory
from medsam3.model.weights import check_weights

log = logging.getLogger(__name__)

KINDS = ("auto", "image", "video")
REPORT_NAME = "conversion.json"
CONTAINER_KEYS = ("model", "state_dict")
DDP_PREFIX = "module."
VIDEO_PREFIXES = ("detector.", "tracker.")
IMAGE_PREFIXES = ("backbone.", "transformer.", "geometry_encoder.", "segmentation_head.", "dot_prod_scoring.",
                  "inst_interactive_predictor.")
HF_PREFIXES = ("detector_model.", "tracker_model.", "tracker_neck.", "vision_encoder.", "text_encoder.",
               "detr_encoder.", "detr_decoder.")
TRAINER_REASONS = {
    "optimizer": "optimizer state (training only)",
    "optim": "optimizer state (training only)",
    "scheduler": "learning-rate scheduler state (training only)",
    "lr_scheduler": "learning-rate scheduler state (training only)",
    "scaler": "mixed-precision gradient-scaler state (training only)",
    "loss": "loss-module state (training only)",
}
LAYOUT_NAMES = {
    "video": "Meta video layout (sam3.pt: 'detector.' / 'tracker.' prefixes)",
    "image": "Meta image-model layout (no 'detector.' prefix; tracker under 'inst_interactive_predictor.model.')",
}

#: Hub repositories holding several original-format files: the one converted by default.
#: Medical SAM3: the 2D checkpoint is the model of the paper's headline results (text-prompted
#: 2D segmentation); ``ChongCong/Medical-SAM3:checkpoint_3D.pt`` selects the later 3D one.


class CheckpointMismatchError(InputError):
    """The checkpoint's tensors do not correspond one to one to the target model's."""

    def __init__(self, message: str, missing=(), unexpected=(), wrong_shape=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.wrong_shape = list(wrong_shape)


@dataclass
class Dropped:
    key: str
    reason: str
    tensors: int = 1
    values: int = 0
    buffer: bool = False


@dataclass
class ConversionReport:
    """What a conversion found and did. ``summary_line()`` / ``detection_line()`` for people,
    ``to_dict()`` for ``conversion.json``."""

    source: str
    container: str
    layout: str
    ddp_prefix: bool
    config_name: str
    has_tracker: bool
    kind: str
    mmap: bool
    mapped: dict[str, list[str]] = field(default_factory=dict)   # source key -> target keys
    dropped: list[Dropped] = field(default_factory=list)         # model tensors
    trainer_dropped: list[Dropped] = field(default_factory=list)  # top-level trainer entries
    missing: list[str] = field(default_factory=list)
    patched: dict[str, str] = field(default_factory=dict)        # target key -> fallback source
    source_tensors: int = 0
    source_parameters: int = 0
    source_buffers: int = 0
    target_tensors: int = 0
    target_parameters: int = 0
    dropped_parameters: int = 0
    cls_row_values: int = 0
    output: str | None = None
    seconds: float = 0.0

    def detection_line(self) -> str:
        parts = [self.container, LAYOUT_NAMES.get(self.layout, self.layout)]
        if self.ddp_prefix:
            parts.append("DDP 'module.' prefix stripped")
        parts.append("detector + tracker" if self.has_tracker and self.kind != "image"
                     else "detector only" + ("" if self.has_tracker else " (no tracker weights in the file)"))
        parts.append(f"configuration '{self.config_name}'")
        return f"{self.source}: " + "; ".join(parts)

    def summary_line(self) -> str:
        by_reason: dict[str, int] = {}
        for d in self.dropped:
            by_reason[_short_reason(d.reason)] = by_reason.get(_short_reason(d.reason), 0) + 1
        dropped = ", ".join(f"{n} {r}" for r, n in by_reason.items())
        trainer = ", ".join(f"'{d.key}' ({d.tensors} tensors)" if d.tensors else f"'{d.key}'"
                            for d in self.trainer_dropped)
        line = (f"{self.source_tensors} source tensors: {len(self.mapped)} mapped, {len(self.dropped)} dropped"
                f"{' (' + dropped + ')' if dropped else ''}, {len(self.missing)} missing -> "
                f"{self.target_tensors} target tensors; parameters: {self.source_parameters:,} source = "
                f"{self.target_parameters:,} target + {self.dropped_parameters:,} dropped"
                f"{f' (incl. {self.cls_row_values:,} pos_embed cls-row values)' if self.cls_row_values else ''}")
        if self.patched:
            line += f"; {len(self.patched)} non-finite tensors replaced from the fallback"
        if trainer:
            line += f"; trainer entries dropped{' (memory-mapped, never read)' if self.mmap else ''}: {trainer}"
        return line

    def to_dict(self) -> dict:
        out = asdict(self)
        out["mapped"] = len(self.mapped)
        out["detection"] = self.detection_line()
        out["summary"] = self.summary_line()
        return out


def _short_reason(reason: str) -> str:
    if reason.startswith("RoPE"):
        return "RoPE tables"
    if reason.startswith("point-prompt"):
        return "geometry-encoder point projections"
    if reason.startswith("tracker"):
        return "tracker tensors"
    return reason


# ---------------------------------------------------------------------------------------------
# Reading a checkpoint
# ---------------------------------------------------------------------------------------------

def load_checkpoint(path) -> tuple[object, bool]:
    """``torch.load`` with ``weights_only=True`` (no pickled code runs) and ``mmap=True`` (tensor
    data stays on disk until read). Legacy non-zip files cannot be memory-mapped and are read whole.
    Returns (object, memory_mapped)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"checkpoint {path} not found" if not path.exists() else f"{path} is not a file")
    mmap = zipfile.is_zipfile(path)
    if not mmap:
        with open(path, "rb") as f:
            head = f.read(2)
        if head[:1] != b"\x80":  # neither a zip archive nor a legacy torch.save pickle
            raise InputError(f"{path} is not a PyTorch checkpoint (neither torch.save's zip format nor its "
                             "legacy pickle format)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as exc:  # noqa: BLE001 - report every failure as a bad input file
        text = str(exc)
        m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if m:
            raise InputError(f"{path} holds pickled Python objects ({m.group(1)}) besides tensors; medsam3 only "
                             "reads weights-only checkpoints and never runs pickled code") from exc
        detail = next((line.strip() for line in text.splitlines() if "Unpickler error" in line),
                      text.splitlines()[0] if text else "")
        raise InputError(f"{path} is not a readable PyTorch checkpoint ({type(exc).__name__}: {detail[:200]})") from exc
    return obj, mmap


def _count_tensors(obj) -> tuple[int, int]:
    """(tensors, values) inside a nested container, from metadata only (nothing is read)."""
    if isinstance(obj, torch.Tensor):
        return 1, obj.numel()
    items = obj.values() if isinstance(obj, Mapping) else obj if isinstance(obj, (list, tuple)) else ()
    n = v = 0
    for item in items:
        a, b = _count_tensors(item)
        n, v = n + a, v + b
    return n, v


def _unwrap(obj, path) -> tuple[Mapping, str, list[Dropped]]:
    """The model state dict inside a checkpoint, a description, and the dropped trainer entries."""
    if not isinstance(obj, Mapping):
        raise InputError(f"{path} holds a {type(obj).__name__}, not a state dict or trainer checkpoint")
    for name in CONTAINER_KEYS:
        inner = obj.get(name)
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            if any(isinstance(v, torch.Tensor) for v in inner.values()):
                dropped = []
                for key, value in obj.items():
                    if key == name:
                        continue
                    n, v = _count_tensors(value)
                    reason = TRAINER_REASONS.get(str(key), "trainer bookkeeping (not model weights)")
                    dropped.append(Dropped(str(key), reason, n, v))
                others = ", ".join(d.key for d in dropped)
                return inner, f"trainer dict (weights under '{name}'{'; also ' + others if others else ''})", dropped
    if not obj or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputError(f"{path} is a dict without tensors (top-level keys: {sample_names(list(obj), 8)}); "
                         "expected a SAM3 state dict or a trainer checkpoint with a 'model' entry")
    return obj, "plain state dict", []


def sample_names(keys, n: int = 10) -> str:
    keys = [str(k) for k in keys]
    return ", ".join(keys[:n]) + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")


def _detect_layout(state: Mapping, path) -> tuple[dict[str, str], str, bool]:
    """Canonical (video-layout) key -> original key, the layout, and whether DDP's prefix was removed."""
    keys = [str(k) for k in state]
    ddp = bool(keys) and all(k.startswith(DDP_PREFIX) for k in keys)
    plain = [k[len(DDP_PREFIX):] for k in keys] if ddp else keys
    counts = {
        "video": sum(k.startswith(VIDEO_PREFIXES) for k in plain),
        "image": sum(k.startswith(IMAGE_PREFIXES) for k in plain),
        "transformers": sum(k.startswith(HF_PREFIXES) for k in plain),
    }
    layout = max(counts, key=counts.get)
    if counts[layout] == 0:
        raise InputError(f"{path}: no SAM3 weights recognised (keys such as {sample_names(keys, 5)})")
    if layout == "transformers":
        raise InputError(f"{path} already uses transformers' SAM3 names (e.g. {sample_names(keys, 3)}); "
                         "put such weights in a model directory (see medsam3.model.directory) instead of converting")
    canonical: dict[str, str] = {}
    for original, key in zip(keys, plain):
        if layout == "video" or key.startswith(IMAGE_PREFIXES):
            canonical[km.canonical_meta_key(key, layout)] = original
        else:  # a stray key: keep it under a name that cannot match, so it is reported as unexpected
            canonical["?" + key] = original
    return canonical, layout, ddp


# ---------------------------------------------------------------------------------------------
# Matching a checkpoint against a configuration
# ---------------------------------------------------------------------------------------------

@dataclass
class _Plan:
    path: str
    state: Mapping
    canonical: dict[str, str]
    layout: str
    ddp: bool
    container: str
    trainer_dropped: list[Dropped]
    mmap: bool
    config: object = None
    config_name: str = ""
    keymap: km.KeyMap | None = None
    groups: tuple[str, ...] = ()
    has_tracker: bool = False
    kind: str = "auto"
    dropped: list[Dropped] = field(default_factory=list)


def _source_shape(plan: _Plan, canonical_key: str):
    value = plan.state[plan.canonical[canonical_key]]
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _match(plan: _Plan, keymap: km.KeyMap, groups: tuple[str, ...]):
    """(missing, unexpected, wrong_shape, dropped) of the plan's checkpoint against a key map."""
    expected = keymap.meta_shapes(groups)
    missing = [k for k in expected if k not in plan.canonical]
    wrong, unexpected, dropped = [], [], []
    for key, original in plan.canonical.items():
        if key in expected:
            shape = _source_shape(plan, key)
            if shape != expected[key]:
                wrong.append((original, shape, expected[key]))
            continue
        reason = km.meta_only_reason(key)
        if reason is None and key in keymap.by_meta and keymap.by_meta[key].group not in groups:
            reason = "tracker tensor, not written (--kind image)"
        if reason is None:
            unexpected.append(original)
        else:
            value = plan.state[original]
            dropped.append(Dropped(original, reason, 1, value.numel() if isinstance(value, torch.Tensor) else 0,
                                   km.is_meta_buffer(key)))
    return missing, unexpected, wrong, dropped


def _candidate_configs(config):
    if config is None:
        return [(name, None) for name in config_names()]
    if isinstance(config, str):
        if config in config_names():
            return [(config, build_config(config))]
        path = Path(config).expanduser()
        if path.exists():
            from transformers import Sam3VideoConfig

            try:
                return [(str(path), Sam3VideoConfig.from_pretrained(path))]
            except Exception as exc:  # noqa: BLE001
                raise ArgumentError(f"cannot read a Sam3VideoConfig from {path}: {exc}") from exc
        raise ArgumentError(f"unknown configuration {config!r}; give one of {', '.join(config_names())} "
                            "or a config.json / model directory")
    return [(getattr(config, "_medsam3_name", "custom"), config)]


def _prepare(path, kind: str = "auto", config=None) -> _Plan:
    """Load, detect and verify a checkpoint against its configuration; raises on any mismatch."""
    if kind not in KINDS:
        raise ArgumentError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
    candidates = _candidate_configs(config)  # argument errors before reading a large file
    obj, mmap = load_checkpoint(path)
    state, container, trainer_dropped = _unwrap(obj, path)
    canonical, layout, ddp = _detect_layout(state, path)
    plan = _Plan(str(path), state, canonical, layout, ddp, container, trainer_dropped, mmap, kind=kind)
    return _replan(plan, kind, candidates)


def _mismatch_error(path, name, missing, unexpected, wrong, plan: _Plan) -> CheckpointMismatchError:
    def original(canonical_key):  # how the key would be spelled in this file
        key = canonical_key if plan.layout == "video" else km.image_layout_key(canonical_key)
        return (DDP_PREFIX + key) if plan.ddp else key

    missing_orig = [original(k) for k in missing]
    lines = [f"{path} does not match the SAM3 configuration '{name}' ({LAYOUT_NAMES[plan.layout]}):"]
    if missing:
        lines.append(f"  {len(missing)} missing: {sample_names(missing_orig, 20)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected: {sample_names(unexpected, 20)}")
    if wrong:
        shown = [f"{k} {tuple(s) if s else 'not a tensor'} (expected {tuple(e)})" for k, s, e in wrong]
        lines.append(f"  {len(wrong)} with a wrong shape: {sample_names(shown, 20)}")
    return CheckpointMismatchError("\n".join(lines), missing_orig, unexpected, [w[0] for w in wrong])


# ---------------------------------------------------------------------------------------------
# Conversion
# ---------------------------------------------------------------------------------------------

def _fallback_getter(nan_fallback, config):
    """A function target key -> tensor from a fallback model (directory or Meta checkpoint)."""
    path = Path(nan_fallback).expanduser()
    if is_model_directory(path):
        check_weights(path)  # strict: a fallback model directory is whole and well formed, or refused
        handle = safe_open(str(path / WEIGHTS_NAME), framework="pt")
        names = set(handle.keys())
        return lambda key: handle.get_tensor(key) if key in names else None, str(path)
    plan = _prepare(path, kind="auto", config=config)
    return lambda key: _target_tensor(plan, key), str(path)


def _target_tensor(plan: _Plan, hf_key: str):
    entry = plan.keymap.by_hf.get(hf_key)
    if entry is None or entry.group not in plan.groups:
        return None
    outs = km.to_hf(entry, [plan.state[plan.canonical[k]] for k in entry.meta_keys])
    return outs[entry.hf_keys.index(hf_key)]


def _non_finite(t: torch.Tensor) -> bool:
    if t.device.type == "meta" or not (t.is_floating_point() or t.is_complex()):
        return False
    return not bool(torch.isfinite(t).all())


def _convert(plan: _Plan, nan_fallback=None) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    keymap = plan.keymap
    report = ConversionReport(
        source=plan.path, container=plan.container, layout=plan.layout, ddp_prefix=plan.ddp,
        config_name=plan.config_name, has_tracker=plan.has_tracker, mmap=plan.mmap,
        kind="video" if km.TRACKER in plan.groups else "image",
        dropped=plan.dropped, trainer_dropped=plan.trainer_dropped)
    out: dict[str, torch.Tensor] = {}
    storages: set[int] = set()
    non_finite: list[str] = []  # target keys
    bad_sources: list[str] = []
    for entry in keymap.entries:
        if entry.group not in plan.groups:
            continue
        originals = [plan.canonical[k] for k in entry.meta_keys]
        sources = [plan.state[k] for k in originals]
        bad = [o for o, t in zip(originals, sources) if _non_finite(t)]
        bad_sources += bad
        for key, tensor, shape in zip(entry.hf_keys, km.to_hf(entry, sources), entry.hf_shapes):
            if tuple(tensor.shape) != shape:  # guarded by _match; a failure here is a bug
                raise AssertionError(f"{key}: produced {tuple(tensor.shape)}, expected {shape}")
            if tensor.device.type != "meta":
                ptr = tensor.untyped_storage().data_ptr()
                if ptr in storages:  # safetensors refuses tensors that share memory
                    tensor = tensor.clone()
                else:
                    storages.add(ptr)
            out[key] = tensor
            if bad:
                non_finite.append(key)
        for original in originals:
            report.mapped[original] = list(entry.hf_keys)
        if entry.op == km.DROP_CLS_ROW:
            report.cls_row_values += sources[0][:, :1, :].numel()
    if non_finite:
        if nan_fallback is None:
            raise InputError(
                f"{plan.path}: {len(bad_sources)} tensors hold NaN or Inf values ({sample_names(bad_sources, 10)}; "
                f"target {sample_names(non_finite, 6)}); such a model outputs NaN. Pass a fallback model for them "
                "(`medsam3 convert ... --nan-fallback DIR_OR_CHECKPOINT`, e.g. the vanilla SAM3 weights) if you "
                "accept mixing weights.")
        get, source = _fallback_getter(nan_fallback, plan.config)
        unresolved = []
        for key in non_finite:
            replacement = get(key)
            if replacement is None or tuple(replacement.shape) != tuple(out[key].shape) or _non_finite(replacement):
                unresolved.append(key)
            else:
                out[key] = replacement.to(out[key].dtype).clone()
                report.patched[key] = source
        if unresolved:
            raise InputError(f"{plan.path}: the fallback {source} has no usable (finite, same-shape) tensor for "
                             f"{sample_names(unresolved, 10)}")
        log.warning("replaced %d non-finite tensors from %s: %s", len(report.patched), source,
                    sample_names(list(report.patched), 5))

    # Totals. Meta's buffers (RoPE tables, the Gaussian PE matrix) are not parameters; neither
    # are transformers' two persistent positional-encoding buffers.
    report.source_tensors = len(plan.canonical)
    for canonical_key, original in plan.canonical.items():
        value = plan.state[original]
        n = value.numel() if isinstance(value, torch.Tensor) else 0
        if km.is_meta_buffer(canonical_key):
            report.source_buffers += n
        else:
            report.source_parameters += n
    report.target_tensors = len(out)
    report.target_parameters = sum(t.numel() for k, t in out.items() if k not in keymap.hf_buffers)
    report.dropped_parameters = report.cls_row_values + sum(d.values for d in plan.dropped if not d.buffer)
    if report.source_parameters != report.target_parameters + report.dropped_parameters:
        raise AssertionError(f"parameter totals do not add up: {report.source_parameters} != "
                             f"{report.target_parameters} + {report.dropped_parameters}")
    expected = set(keymap.target_shapes(plan.groups))
    report.missing = sorted(expected - set(out))
    if report.missing:  # impossible after _match; kept as the last line of defence
        raise CheckpointMismatchError(f"{plan.path}: target tensors not filled: {sample_names(report.missing, 20)}",
                                      missing=report.missing)
    return out, report


def convert_state_dict(state_dict: Mapping[str, torch.Tensor], kind: str = "auto", config=None,
                       source: str = "<state dict>") -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Convert an in-memory Meta state dict (any accepted layout; ``meta``-device tensors allowed,
    for checking key/shape manifests). Returns the ``Sam3VideoModel`` state dict and the report."""
    if kind not in KINDS:
        raise ArgumentError(f"unknown kind {kind!r}; accepted: {', '.join(KINDS)}")
    state, container, trainer_dropped = _unwrap(state_dict, source)
    canonical, layout, ddp = _detect_layout(state, source)
    plan = _Plan(source, state, canonical, layout, ddp, container, trainer_dropped, False, kind=kind)
    return _convert(_replan(plan, kind, _candidate_configs(config)))


def _replan(plan: _Plan, kind, candidates) -> _Plan:
    """Match a loaded checkpoint against the candidate configurations (first exact match wins)."""
    has_tracker = any(k.startswith("tracker.") or ".sam2_convs." in k for k in plan.canonical)
    if kind == "video" and not has_tracker:
        raise InputError(f"{plan.path} holds no tracker weights ('tracker.*' / 'inst_interactive_predictor.model.*'"
                         "); --kind video needs them, --kind image converts the detector alone")
    groups = (km.DETECTOR,) if kind == "image" or not has_tracker else (km.DETECTOR, km.TRACKER)
    best = None
    for name, cfg in candidates:
        cfg = cfg if cfg is not None else build_config(name)
        keymap = km.build_keymap(cfg)
        result = _match(plan, keymap, groups)
        errors = sum(len(r) for r in result[:3])
        if best is None or errors < best[0]:
            best = (errors, name, cfg, keymap, result)
        if errors == 0:
            break
    errors, name, cfg, keymap, (missing, unexpected, wrong, dropped) = best
    if errors:
        raise _mismatch_error(plan.path, name, missing, unexpected, wrong, plan)
    plan.config, plan.config_name, plan.keymap = cfg, name, keymap
    plan.groups, plan.has_tracker, plan.dropped = groups, has_tracker, dropped
    return plan


def read_converted(path, kind: str = "auto", config=None, nan_fallback=None
                   ) -> tuple[dict[str, torch.Tensor], ConversionReport]:
    """Load, verify and convert a checkpoint in memory: the ``Sam3VideoModel`` state dict (tensors
    may still be views of the memory-mapped file) and the report. Nothing is written."""
    plan = _prepare(path, kind=kind, config=config)
    state, report = _convert(plan, nan_fallback=nan_fallback)
    return state, report


def check_checkpoint(path, kind: str = "auto", config=None, nan_fallback=None) -> ConversionReport:
    """Everything :func:`convert_checkpoint` verifies, without writing anything."""
    return read_converted(path, kind=kind, config=config, nan_fallback=nan_fallback)[1]


def convert_checkpoint(path, out_dir, kind: str = "auto", config=None, nan_fallback=None,
                       info: dict | None = None) -> ConversionReport:
    """Convert a Meta-format SAM3 checkpoint into a verified model directory.

    Args:
        path: ``sam3.pt``, an image-model or trainer checkpoint (see the module docstring).
        out_dir: the model directory to write (config, ``model.safetensors``, tokenizer,
            processor, ``conversion.json``). An existing model directory there is replaced
            once the new one is complete; any other existing non-empty directory is refused.
        kind: ``auto`` (tracker written when the file has it), ``image`` (detector only) or
            ``video`` (detector and tracker; an error if the file has no tracker).
        config: a named configuration (:func:`medsam3.model.configs.config_names`), a
            :class:`~transformers.Sam3VideoConfig`, or a config.json / model directory path.
            Default: the named configuration whose tensor shapes the checkpoint matches
            exactly ('default' = the published full-size SAM3).
        nan_fallback: a model directory or Meta checkpoint supplying tensors that hold NaN/Inf
            in ``path``; without it such tensors are an error.
        info: written as the directory's ``medsam3.json`` (e.g. ``{"vocabulary":
            "medical-sam3"}``: the prompts the model was trained on, :mod:`medsam3.prompt_mapping`).

    Returns:
        The :class:`ConversionReport`; raises :class:`CheckpointMismatchError` (an
        :class:`~medsam3.errors.InputError`) listing the offending keys on any mismatch.
    """
    plan = OutputPlan()  # the output directory is replaced whole: it must not be or hold an input
    plan.add_input(path, "checkpoint")
    if nan_fallback is not None and os.path.exists(nan_fallback):
        plan.add_input(nan_fallback, "NaN fallback")
    if isinstance(config, (str, os.PathLike)) and os.path.exists(config):
        plan.add_input(config, "configuration")
    plan.add_directory(out_dir, "converted model directory")
    plan.check()
    start = time.monotonic()
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not is_model_directory(out_dir) and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise ArgumentError(f"output {out_dir} exists and is not a model directory; refusing to replace it")
    plan = _prepare(path, kind=kind, config=config)
    state, report = _convert(plan, nan_fallback=nan_fallback)
    config = plan.config
    del plan  # the loaded checkpoint object (optimizer entries included) is not needed any more
    report.output = str(out_dir)
    report.seconds = round(time.monotonic() - start, 2)
    extra = {REPORT_NAME: json.dumps(report.to_dict(), indent=1)}
    if info:
        extra["medsam3.json"] = json.dumps(info, indent=1)
    save_model_directory(state, config, out_dir, extra_files=extra)
    return report
