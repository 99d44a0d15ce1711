"""Strict loading of a model directory's weights: every tensor present, expected, well shaped, finite.

A model directory (:mod:`medsam3.model.directory`) holds one ``model.safetensors`` with the
keys of :class:`transformers.Sam3VideoModel`: ``detector_model.*`` (the concept detector),
``tracker_model.*`` and ``tracker_neck.*`` (the interactive / video tracker). Every path that
loads weights from one (``MedSAM3.from_pretrained``, the tracker, the video tracker, training
and its resume, ``model export``, ``convert --nan-fallback``) goes through this module, so a
broken directory is refused the same way everywhere, before any model is built:

* the safetensors header must be readable (a truncated or corrupt file is an
  :class:`~medsam3.errors.InputError` naming it);
* its keys and shapes must be exactly those of the ``Sam3VideoModel`` that ``config.json``
  describes (:func:`check_weights`); the tracker's keys may be absent altogether (a
  detector-only directory: text prompts work, box/point prompts refuse), never in part;
* transformers' own loading report must be empty (it would otherwise random-initialise a
  missing tensor and only log it);
* every loaded tensor must be finite (:func:`check_finite`).

Nothing is ever loaded with ``strict=False`` semantics: the only keys allowed to differ are
the recomputed buffers of :data:`RECOMPUTED_BUFFERS` (and the tracker's, when all are absent).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable
from functools import lru_cache
from pathlib import Path

import torch

from medsam3.errors import InputError
from medsam3.model.configs import set_meta_vit_eps, with_meta_vit_eps
from medsam3.model.directory import WEIGHTS_NAME

DETECTOR_PREFIX = "detector_model."
TRACKER_PREFIXES = ("tracker_model.", "tracker_neck.")
SHOWN = 5  # keys listed in an error message (the count is always given)

# Buffers that transformers' SAM3 classes recompute from the config when a model is built and
# keep out of the state dict (non-persistent): the ViT's and the memory attention's RoPE
# frequency tables (``rotary_emb.inv_freq``, ``rotary_emb.original_inv_freq``) and the
# ``position_ids`` index ranges. A file may still carry them (saved by a tool that stores
# every buffer); they are ignored, never loaded. No state-dict key matches this pattern
# (tests/test_model.py checks both directions), so it cannot hide a missing weight.
RECOMPUTED_BUFFERS = re.compile(r"(^|\.)(rotary_emb\.(inv_freq|original_inv_freq)|position_ids)$")


def _weights_path(directory) -> Path:
    return Path(directory) / WEIGHTS_NAME


def _count(n: int, what: str) -> str:
    return f"{n} {what} tensor{'' if n == 1 else 's'}"


def _listed(keys: Iterable[str]) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:SHOWN])
    return shown + (f", ... ({len(keys) - SHOWN} more)" if len(keys) > SHOWN else "")


def _unreadable(path: Path, exc: Exception) -> InputError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return InputError(f"{path} is not a readable safetensors file (truncated or corrupt: {detail}); "
                      "copy, download or export the model directory again")


def read_header(path) -> dict[str, tuple[tuple[int, ...], str]]:
    """``key -> (shape, safetensors dtype)`` from a safetensors file's header, without reading
    any tensor. A truncated or corrupt file is an :class:`InputError` naming it."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: (tuple(f.get_slice(k).get_shape()), str(f.get_slice(k).get_dtype()))
                    for k in f.keys()}  # noqa: SIM118 - a safetensors handle, not a dict
    except (SafetensorError, OSError, ValueError) as exc:
        raise _unreadable(path, exc) from None


def load_config(directory):
    """The directory's :class:`transformers.Sam3VideoConfig`; an unreadable ``config.json`` is
    an :class:`InputError` naming it."""
    from transformers import Sam3VideoConfig

    try:
        return with_meta_vit_eps(Sam3VideoConfig.from_pretrained(directory))  # Meta's ViT LayerNorm eps
    except (OSError, ValueError, TypeError, KeyError) as exc:
        detail = " ".join(str(exc).split())
        raise InputError(f"{Path(directory) / 'config.json'} is not a usable SAM3 configuration: {detail}") from None


@lru_cache(maxsize=8)
def _expected(config_json: str) -> dict[str, tuple[tuple[int, ...], bool]]:
    from transformers import Sam3VideoConfig, Sam3VideoModel

    config = Sam3VideoConfig.from_dict(json.loads(config_json))
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        model = Sam3VideoModel(config)
    return {k: (tuple(t.shape), t.is_floating_point()) for k, t in model.state_dict().items()}


def expected_tensors(config) -> dict[str, tuple[tuple[int, ...], bool]]:
    """``key -> (shape, is floating point)`` of the state dict of the ``Sam3VideoModel`` that
    ``config`` describes (built on the meta device, cached per configuration)."""
    return _expected(config.to_json_string(use_diff=False))


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("F", "BF"))


def check_weights(directory, config=None) -> bool:
    """Check ``model.safetensors``' header against ``config.json`` before anything is loaded.

    Every tensor the ``Sam3VideoModel`` of the config has must be in the file with its
    shape (floating point where the model's is), and nothing else may be (except
    :data:`RECOMPUTED_BUFFERS`). The tracker's tensors (``tracker_model.*``, ``tracker_neck.*``)
    are all present or all absent.

    Returns:
        whether the directory holds tracker weights.

    Raises:
        InputError: naming the directory, counting the missing, unexpected and wrongly
            shaped tensors and listing the first of each.
    """
    directory = Path(directory)
    header = read_header(_weights_path(directory))
    expected = expected_tensors(config if config is not None else load_config(directory))
    has_tracker = any(k.startswith(TRACKER_PREFIXES) for k in header)
    if not has_tracker:
        expected = {k: v for k, v in expected.items() if not k.startswith(TRACKER_PREFIXES)}
    missing = [k for k in expected if k not in header]
    unexpected = [k for k in header if k not in expected and not RECOMPUTED_BUFFERS.search(k)]
    wrong = [f"{k} {list(header[k][0])} {header[k][1]} (expected {list(shape)}"
             f"{'' if is_float == _is_float(header[k][1]) else ', floating point' if is_float else ', integer'})"
             for k, (shape, is_float) in expected.items()
             if k in header and (header[k][0] != shape or _is_float(header[k][1]) != is_float)]
    if missing or unexpected or wrong:
        parts = [f"{_count(len(missing), 'missing')} ({_listed(missing)})" if missing else "",
                 f"{_count(len(unexpected), 'unexpected')} ({_listed(unexpected)})" if unexpected else "",
                 f"{_count(len(wrong), 'wrongly shaped or typed')} ({_listed(wrong)})" if wrong else ""]
        tracker = ""
        if has_tracker and missing and all(k.startswith(TRACKER_PREFIXES) for k in missing):
            tracker = " (the tracker's tensors must be all present, or all absent for a detector-only model)"
        raise InputError(f"model directory {directory}: {_weights_path(directory).name} does not match its "
                         f"config.json: {'; '.join(p for p in parts if p)}{tracker}; nothing was loaded "
                         "(a model is never loaded with tensors missing or left over)")
    return has_tracker


def refuse_loading_report(info: dict, directory, what: str) -> None:
    """Raise unless transformers' ``output_loading_info`` report is empty: it random-initialises
    missing tensors and drops unexpected ones with only a log line."""
    missing = list(info.get("missing_keys") or ())
    unexpected = [k for k in info.get("unexpected_keys") or () if not RECOMPUTED_BUFFERS.search(k)]
    mismatched = [str(m[0]) if isinstance(m, tuple) else str(m) for m in info.get("mismatched_keys") or ()]
    errors = [str(e) for e in info.get("error_msgs") or ()]
    if missing or unexpected or mismatched or errors:
        parts = [f"{_count(len(missing), 'missing')} ({_listed(missing)})" if missing else "",
                 f"{_count(len(unexpected), 'unexpected')} ({_listed(unexpected)})" if unexpected else "",
                 f"{_count(len(mismatched), 'wrongly shaped')} ({_listed(mismatched)})" if mismatched else "",
                 f"errors: {' '.join(' '.join(errors).split())[:300]}" if errors else ""]
        raise InputError(f"model directory {directory}: the {what} weights do not load exactly: "
                         f"{'; '.join(p for p in parts if p)}")


def all_finite(t: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN or Inf. Its minimum and maximum (one pass, no temporary,
    NaN propagating) are finite exactly when every value is: ~20x faster than
    ``isfinite(t).all()`` on CPU, and no sum that large finite values could overflow."""
    if not (t.is_floating_point() or t.is_complex()) or t.device.type == "meta" or t.numel() == 0:
        return True
    if t.is_complex():
        return bool(torch.isfinite(t).all())
    low, high = torch.aminmax(t)
    return bool(torch.isfinite(low)) and bool(torch.isfinite(high))


def _non_finite(t: torch.Tensor) -> bool:
    return not all_finite(t)


def check_finite(tensors: Iterable[tuple[str, torch.Tensor]], path, dtype: torch.dtype | None = None) -> None:
    """Raise an :class:`InputError` naming the tensors (file keys) of ``tensors`` that hold NaN
    or infinite values, and the file. With ``dtype`` (what they were loaded as), a tensor
    that is finite in the file but overflows that type is reported as such."""
    bad = [key for key, t in tensors if _non_finite(t)]
    if not bad:
        return
    overflow = []
    if dtype is not None and dtype != torch.float32:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            overflow = [k for k in bad if not _non_finite(f.get_tensor(k))]
    if overflow:
        raise InputError(f"{path}: {_count(len(overflow), 'finite')} overflow{'s' if len(overflow) == 1 else ''} "
                         f"{str(dtype).replace('torch.', '')} when loaded ({_listed(overflow)}); load the model "
                         "in float32 (--dtype float32)")
    raise InputError(f"{path}: {len(bad)} tensor{'' if len(bad) == 1 else 's'} with NaN or infinite values "
                     f"({_listed(bad)}); such a model outputs NaN: convert or export it again "
                     "(medsam3 convert --nan-fallback replaces them)")


def load_detector(directory, dtype: torch.dtype = torch.float32, config=None, checked: bool = False):
    """:class:`transformers.Sam3Model` with exactly the directory's ``detector_model.*`` tensors
    (on the CPU). ``checked``: :func:`check_weights` was already run on this directory."""
    from transformers import Sam3Model

    directory = Path(directory)
    if not checked:
        check_weights(directory, config)
    model, info = _from_pretrained(Sam3Model, directory, dtype)
    refuse_loading_report(info, directory, "detector")
    set_meta_vit_eps(model.vision_encoder.backbone)  # Meta's 1e-5, whatever config.json says
    check_finite(((DETECTOR_PREFIX + k, t) for k, t in model.state_dict().items()), _weights_path(directory),
                 dtype)
    return model


def check_tracker_finite(directory) -> None:
    """Read the tracker's own tensors (``tracker_model.*``, ``tracker_neck.*``: a few percent of
    the weights) and refuse a NaN or Inf one now, although the tracker itself loads lazily."""
    read_tensors(directory, lambda key: key.startswith(TRACKER_PREFIXES))


def _tracker_file_key(key: str) -> str | None:
    """The file key of a :class:`transformers.Sam3TrackerModel` key (transformers' own renaming
    for the sam3_tracker classes); ``None`` for the ViT backbone (the detector's tensors)."""
    if key.startswith("vision_encoder.backbone."):
        return None
    if key.startswith("vision_encoder.neck."):
        return "tracker_neck." + key[len("vision_encoder.neck."):]
    return "tracker_model." + key


def load_tracker(directory, dtype: torch.dtype = torch.float32, config=None, checked: bool = False):
    """:class:`transformers.Sam3TrackerModel` with exactly the directory's tracker tensors (its
    ViT backbone is read too: callers share the detector's). A directory without tracker
    tensors is an :class:`InputError`."""
    from transformers import Sam3TrackerModel

    directory = Path(directory)
    has_tracker = check_weights(directory, config) if not checked else directory_has_tracker(directory)
    if not has_tracker:
        raise InputError(f"model directory {directory} has no tracker weights (a detector-only checkpoint): "
                         "box and point prompts need a model with the SAM3 tracker")
    model, info = _from_pretrained(Sam3TrackerModel, directory, dtype)
    refuse_loading_report(info, directory, "tracker")
    set_meta_vit_eps(model.vision_encoder.backbone)
    pairs = ((_tracker_file_key(k), t) for k, t in model.state_dict().items())
    check_finite(((k, t) for k, t in pairs if k is not None), _weights_path(directory), dtype)
    return model


def _from_pretrained(cls, directory: Path, dtype: torch.dtype):
    from safetensors import SafetensorError

    try:
        return cls.from_pretrained(directory, dtype=dtype, output_loading_info=True)
    except SafetensorError as exc:  # the header was fine, the data was not
        raise _unreadable(_weights_path(directory), exc) from None


def directory_has_tracker(directory) -> bool:
    """Whether a model directory's weights hold the tracker (``tracker_*`` keys), from the header."""
    return any(k.startswith(TRACKER_PREFIXES) for k in read_header(_weights_path(directory)))


def read_tensors(directory, select: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The directory's tensors whose file key passes ``select``, each checked finite. A corrupt
    file is an :class:`InputError` naming it."""
    from safetensors import SafetensorError, safe_open

    path = _weights_path(directory)
    state = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                if select(key):
                    state[key] = f.get_tensor(key)
    except (SafetensorError, OSError) as exc:
        raise _unreadable(path, exc) from None
    check_finite(state.items(), path)
    return state


def load_prefixed(directory, prefix: str) -> dict[str, torch.Tensor]:
    """The directory's tensors whose key starts with ``prefix`` (prefix removed), as
    :func:`read_tensors` reads them."""
    state = read_tensors(directory, lambda key: key.startswith(prefix))
    return {k[len(prefix):]: t for k, t in state.items()}


def load_strict(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, source,
                prefix: str = "") -> None:
    """``module.load_state_dict(state)`` when ``state`` has exactly the module's keys and shapes
    (recomputed buffers aside); otherwise an :class:`InputError` naming ``source`` (file keys
    are shown with ``prefix``)."""
    own = module.state_dict()
    missing = [prefix + k for k in own if k not in state]
    unexpected = [prefix + k for k in state if k not in own and not RECOMPUTED_BUFFERS.search(k)]
    wrong = [f"{prefix}{k} {list(t.shape)} (expected {list(own[k].shape)})"
             for k, t in state.items() if k in own and tuple(t.shape) != tuple(own[k].shape)]
    if missing or unexpected or wrong:
        parts = [f"{_count(len(missing), 'missing')} ({_listed(missing)})" if missing else "",
                 f"{_count(len(unexpected), 'unexpected')} ({_listed(unexpected)})" if unexpected else "",
                 f"{_count(len(wrong), 'wrongly shaped')} ({_listed(wrong)})" if wrong else ""]
        raise InputError(f"{source}: the {what} weights do not match the model configuration: "
                         f"{'; '.join(p for p in parts if p)}")
    module.load_state_dict({k: v for k, v in state.items() if k in own}, strict=True)

