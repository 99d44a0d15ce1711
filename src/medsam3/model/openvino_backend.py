"""The SAM3 vision encoder run by OpenVINO (``--precision ov``); everything else stays in torch.

``detector.vision_encoder`` (the ViT and its FPN neck: what ``get_vision_features`` runs once
per image, most of an image's compute) is converted with ``openvino.convert_model`` at the
input size it is first called with, saved as OpenVINO IR in a cache directory, compiled for
OpenVINO's CPU device with its default inference precision (bf16 on CPUs with AVX-512 BF16 /
AMX, f32 on others) and put in place of the encoder's ``forward``. It returns the same
:class:`~transformers.models.sam3.modeling_sam3.Sam3VisionEncoderOutput` (ViT tokens, FPN levels
and their sine position encodings, the latter computed in torch: they do not depend on the image),
so the detector, the interactive tracker and volume propagation (which all read the detector's
cached ViT output, never running a vision encoder of their own) work unchanged.

Cache: ``$MEDSAM3_OPENVINO_CACHE_DIR``, else ``$XDG_CACHE_HOME/medsam3/openvino``
(``~/.cache/medsam3/openvino``). One entry per encoder weights (a SHA-256 of its tensors), input
size, architecture and OpenVINO / torch / transformers versions; written in a temporary directory
and renamed into place, so an interrupted conversion leaves nothing that is later read. An entry
found incomplete (a file missing or of the wrong size) is deleted and rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from medsam3.errors import ArgumentError
from medsam3.precision_options import OPENVINO_MISSING

log = logging.getLogger(__name__)

__all__ = ["CACHE_ENV", "OpenVINOVisionEncoder", "default_cache_dir", "openvino_encoder", "require_openvino",
           "use_openvino"]

#: environment variable naming the IR cache directory
CACHE_ENV = "MEDSAM3_OPENVINO_CACHE_DIR"
#: bumped when what an entry holds changes (its outputs, its files)
FORMAT = 1
XML, BIN, META = "encoder.xml", "encoder.bin", "medsam3-openvino.json"
#: leftover temporary directories older than this are removed (a conversion takes minutes, not a day)
STALE_TMP_S = 24 * 3600


def require_openvino():
    """The ``openvino`` module, or an :class:`ArgumentError` saying how to install it."""
    try:
        import openvino
    except ImportError:
        raise ArgumentError(OPENVINO_MISSING) from None
    return openvino


def default_cache_dir() -> Path:
    """``$MEDSAM3_OPENVINO_CACHE_DIR``, else ``$XDG_CACHE_HOME/medsam3/openvino`` (``~/.cache/medsam3/openvino``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "medsam3" / "openvino"


class _Traced(nn.Module):
    """The vision encoder as a tensor function for the converter: pixels -> (ViT tokens, FPN levels...)."""

    def __init__(self, vision: nn.Module):
        super().__init__()
        self.vision = vision

    def forward(self, pixel_values: torch.Tensor):
        out = type(self.vision).forward(self.vision, pixel_values=pixel_values)  # the torch forward, not ours
        return (out.last_hidden_state, *out.fpn_hidden_states)


def weights_digest(module: nn.Module) -> str:
    """SHA-256 of a module's tensors (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    return h.hexdigest()


class OpenVINOVisionEncoder:
    """Stands in for ``vision_encoder.forward`` (see the module docstring).

    Args:
        vision: the ``Sam3VisionModel`` (fp32, on the CPU) it replaces; its torch weights stay
            (the cache key is their hash; the position encodings are its neck's).
        cache_dir: where IR entries live (default :func:`default_cache_dir`).
        inference_precision: OpenVINO's ``INFERENCE_PRECISION_HINT`` (``"f32"``, ``"bf16"``);
            ``None``: the device's default.
        threads: ``INFERENCE_NUM_THREADS`` (default: torch's thread count).

    One model is compiled per input size, on first use. The IR has batch 1: a batch of images
    is run one image at a time.
    """

    def __init__(self, vision: nn.Module, cache_dir: str | os.PathLike | None = None,
                 inference_precision: str | None = None, threads: int | None = None):
        self.ov = require_openvino()
        self.vision = vision
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
        self.hint = inference_precision
        self.threads = threads
        self._digest: str | None = None
        self._compiled: dict[tuple[int, int], object] = {}
        #: the precision OpenVINO compiled for (``"bf16"``, ``"f32"``), known after the first image
        self.inference_precision: str | None = None
        #: conversions this object made (0 when every size came from the cache)
        self.conversions = 0
        #: where each compiled size's IR was read from
        self.entries: dict[tuple[int, int], Path] = {}

    # ------------------------------------------------------------------ cache
    def entry(self, size: tuple[int, int]) -> Path:
        """The cache directory of this encoder at ``size`` (height, width)."""
        if self._digest is None:
            self._digest = weights_digest(self.vision)
        import transformers

        key = {"format": FORMAT, "weights": self._digest, "size": list(size),
               "config": self.vision.config.to_json_string(use_diff=False),
               "openvino": self.ov.get_version(), "torch": torch.__version__,
               "transformers": transformers.__version__}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:24]
        return self.cache_dir / f"vision-{size[0]}x{size[1]}-{digest}"

    @staticmethod
    def complete(entry: Path) -> bool:
        """Whether ``entry`` holds a whole IR (every file present, at the size its record says)."""
        try:
            meta = json.loads((entry / META).read_text())
            return meta.get("format") == FORMAT and all(
                (entry / name).stat().st_size == meta["bytes"][name] for name in (XML, BIN))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return False

    def ir(self, size: tuple[int, int]) -> Path:
        """The IR's ``.xml`` for ``size``, converted and cached first when no complete entry exists."""
        entry = self.entry(size)
        if self.complete(entry):
            return entry / XML
        if entry.exists():
            log.warning("OpenVINO cache entry %s is incomplete: converting again", entry)
            shutil.rmtree(entry, ignore_errors=True)
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        self._remove_stale_tmp()
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{entry.name}-", dir=self.cache_dir))
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide a shared cache's entries from other users
        try:
            t0 = time.perf_counter()
            log.warning("converting the vision encoder to OpenVINO at %dx%d px (once per model and size; "
                        "minutes for a full-size model) into %s", size[0], size[1], entry)
            with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on Python-side shape arithmetic
                example = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0))
                model = self.ov.convert_model(_Traced(self.vision).eval(), example_input=example)
            self.ov.save_model(model, str(tmp / XML), compress_to_fp16=False)  # the weights stay f32
            del model
            meta = {"format": FORMAT, "size": list(size), "openvino": self.ov.get_version(),
                    "convert_s": round(time.perf_counter() - t0, 2),
                    "bytes": {name: (tmp / name).stat().st_size for name in (XML, BIN)}}
            (tmp / META).write_text(json.dumps(meta, indent=2))  # last: its presence marks a whole entry
            try:
                os.rename(tmp, entry)
            except OSError:  # another process published the same entry meanwhile
                if not self.complete(entry):
                    raise
                shutil.rmtree(tmp, ignore_errors=True)
            self.conversions += 1
            log.info("converted in %.1f s", meta["convert_s"])
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return entry / XML

    def _remove_stale_tmp(self) -> None:
        now = time.time()
        for path in self.cache_dir.glob(".tmp-*"):
            try:
                if now - path.stat().st_mtime > STALE_TMP_S:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass

    # ------------------------------------------------------------------ run
    def compiled(self, size: tuple[int, int]):
        """The compiled model for ``size`` (read from the cache, converted first if needed)."""
        if size not in self._compiled:
            config = {"INFERENCE_NUM_THREADS": int(self.threads or torch.get_num_threads())}
            if self.hint:
                config["INFERENCE_PRECISION_HINT"] = self.hint
            xml = self.ir(size)
            compiled = self.ov.Core().compile_model(str(xml), "CPU", config)
            self.inference_precision = compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
            self.entries[size] = xml.parent
            self._compiled[size] = compiled
        return self._compiled[size]

    def __call__(self, pixel_values: torch.Tensor | None = None, **kwargs):
        from transformers.models.sam3.modeling_sam3 import Sam3VisionEncoderOutput

        if pixel_values is None:
            raise ValueError("You have to specify pixel_values")
        if kwargs.get("output_hidden_states") or kwargs.get("output_attentions"):
            raise ArgumentError("precision ov returns the vision encoder's last hidden state and FPN levels only "
                                "(no per-layer hidden states or attentions): use fp32")
        if pixel_values.device.type != "cpu":
            raise ArgumentError(f"precision ov runs on the CPU; pixels are on {pixel_values.device}")
        dtype = pixel_values.dtype
        pixels = pixel_values.detach().float().contiguous()
        compiled = self.compiled((int(pixels.shape[-2]), int(pixels.shape[-1])))
        request = compiled.create_infer_request()
        per_image = []
        for i in range(pixels.shape[0]):  # the IR has batch 1
            request.infer({0: pixels[i:i + 1].numpy()})
            per_image.append([torch.from_numpy(np.array(request.get_output_tensor(k).data, copy=True))
                              for k in range(len(compiled.outputs))])
        outputs = [torch.cat(parts).to(dtype) for parts in zip(*per_image)]
        fpn = tuple(outputs[1:])
        position = self.vision.neck.position_encoding
        encodings = tuple(position(f.shape, f.device, f.dtype) for f in fpn)
        return Sam3VisionEncoderOutput(last_hidden_state=outputs[0], fpn_hidden_states=fpn,
                                       fpn_position_encoding=encodings)

    def describe(self) -> dict:
        """What the sidecar records: OpenVINO's version and the inference precision it ran."""
        return {"version": self.ov.get_version(), "inference_precision": self.inference_precision}


def use_openvino(vision: nn.Module, **options) -> OpenVINOVisionEncoder:
    """Make ``vision`` (a ``Sam3VisionModel``) run through OpenVINO (idempotent); returns the backend."""
    backend = openvino_encoder(vision)
    if backend is None:
        backend = OpenVINOVisionEncoder(vision, **options)
        vision.forward = backend  # nn.Module.__call__ runs the instance's forward
    return backend


def openvino_encoder(vision: nn.Module) -> OpenVINOVisionEncoder | None:
    """The OpenVINO backend installed on ``vision``, or ``None``."""
    forward = vars(vision).get("forward")
    return forward if isinstance(forward, OpenVINOVisionEncoder) else None
