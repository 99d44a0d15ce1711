"""Loading SAM3-architecture models: :class:`MedSAM3`.

``MedSAM3.from_pretrained`` accepts

* a local model directory (see :mod:`medsam3.model.directory`);
* a Hugging Face hub id in transformers' format (``facebook/sam3``), downloaded once into
  the hub cache;
* ``demo``: the small model shipped inside the package (``medsam3/model/demo``), trained
  here on CPU on real brain MRI, head CT and nuclei images (see the README);
* ``random:NAME``: a randomly initialised model of a named configuration
  (:func:`medsam3.model.configs.config_names`), for tests and speed/memory benchmarks only.

A model directory may carry ``medsam3.json`` (:class:`medsam3.model.info.ModelInfo`): the
classes it was trained to segment (text prompts outside them are answered "absent" with a
warning instead of being guessed, :meth:`MedSAM3.knows`), its mask source, 2.5D context,
best volume mode and whether its tracker was trained.
"""

from __future__ import annotations

import logging
import os
from functools import cached_property
from pathlib import Path

import torch
from transformers import Sam3Model, Sam3Processor, Sam3TrackerModel, Sam3VideoConfig, Sam3VideoModel

from medsam3.errors import ArgumentError, InputError
from medsam3.model.configs import build_config, config_names
from medsam3.model.directory import build_processor, is_model_directory
from medsam3.model.precision import (apply_precision, apply_precision_to, fast_precision, resolve_fast,
                                     split_fast)
from medsam3.model.info import INFO_NAME, ModelInfo
from medsam3.model.weights import check_tracker_finite, check_weights, load_config, load_detector, load_tracker

log = logging.getLogger(__name__)

RANDOM_PREFIX = "random:"
DEMO_NAME = "demo"
DEMO_DIRECTORY = Path(__file__).resolve().parent / "demo"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    name = str(device if device is not None else "auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu" or name.startswith("cuda") or name == "mps":
        if name.startswith("cuda") and not torch.cuda.is_available():
            raise ArgumentError(f"device {name!r} asked for, but no CUDA GPU is available; use --device cpu or auto")
        if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ArgumentError("device 'mps' asked for, but Apple's MPS backend is not available; use cpu or auto")
        return torch.device(name)
    raise ArgumentError(f"unknown device {name!r}; accepted: auto, cpu, cuda, cuda:N, mps")


def resolve_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if str(dtype) in DTYPES:
        return DTYPES[str(dtype)]
    raise ArgumentError(f"unknown dtype {dtype!r}; accepted: {', '.join(DTYPES)}")


def model_directory(name_or_dir: str | os.PathLike) -> Path:
    """The local model directory for a directory path or a hub id (downloaded, and converted
    when the hub holds original-format checkpoints, once; cached after that)."""
    name = str(name_or_dir)
    path = Path(name).expanduser()
    if is_model_directory(path):
        return path
    if name == DEMO_NAME:
        if not is_model_directory(DEMO_DIRECTORY):
            raise InputError(f"the bundled demo model is missing from {DEMO_DIRECTORY} (a source checkout before "
                             "`medsam3 model export` wrote it?); reinstall medsam3")
        return DEMO_DIRECTORY
    if path.exists():
        raise InputError(f"{path} is not a model directory (needs config.json and model.safetensors)")
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        from medsam3.model.hub import download_model  # hub and conversion code (and medsam3.io) load only for hub ids

        return download_model(name)
    raise InputError(f"model {name!r} not found: give a model directory, a hub id such as facebook/sam3, "
                     f"or random:NAME ({', '.join(config_names())})")


class MedSAM3:
    """A SAM3-architecture model ready for inference: the concept detector, the
    interactive tracker (loaded on first use) and the processor.

    Attributes:
        detector: :class:`transformers.Sam3Model` (text and exemplar-box prompts).
        processor: :class:`transformers.Sam3Processor` (tokenizer + image preprocessing).
        config: the full :class:`transformers.Sam3VideoConfig`.
        source: what the model was loaded from (hub id, directory or ``random:NAME``).
        device, dtype: where and in which precision the weights live.
    """

    def __init__(self, detector: Sam3Model, processor: Sam3Processor, config: Sam3VideoConfig, source: str,
                 device: torch.device, dtype: torch.dtype, directory: Path | None = None,
                 tracker: Sam3TrackerModel | None = None, has_tracker: bool | None = None,
                 info: ModelInfo | dict | None = None):
        self.detector = detector.eval()
        self.processor = processor
        self.config = config
        self.source = source
        self.device = device
        self.dtype = dtype
        self.directory = directory
        self._tracker = tracker
        # whether the weights hold the tracker (checked at load; a detector-only directory has none)
        self.has_tracker = tracker is not None if has_tracker is None else bool(has_tracker)
        self.info = ModelInfo.read(directory) if info is None else info
        #: inference precision, fp32 / bf16 / int8 (set by :func:`medsam3.model.precision.apply_precision`)
        self.precision = "fp32"
        #: what ``--fast`` resolved to (:class:`medsam3.model.precision.FastSetting`), or ``None``
        self.fast = None

    @property
    def info(self) -> ModelInfo:
        """The model's ``medsam3.json`` (:class:`~medsam3.model.info.ModelInfo`)."""
        return self._info

    @info.setter
    def info(self, value: ModelInfo | dict) -> None:
        self._info = ModelInfo.from_json(value, f"model {self.source}: {INFO_NAME}")

    @property
    def concepts(self) -> list[str] | None:
        """The classes the model was trained to segment (``medsam3.json``), or ``None``: any text."""
        return list(self.info.concepts) if self.info.concepts else None

    @property
    def tracker_trained(self) -> bool:
        """False when ``medsam3.json`` says the tracker weights were never trained (the demo
        model before tracker fine-tuning): box/point prompts and propagation then refuse."""
        return self.info.tracker_trained

    def knows(self, text: str) -> bool:
        """Whether a text prompt names a concept of :attr:`concepts` (always true without a list)."""
        return self.info.knows(text)

    @property
    def image_size(self) -> int:
        """The model's square input size in pixels."""
        return int(self.config.detector_config.vision_config.backbone_config.image_size)

    @classmethod
    def from_pretrained(cls, name_or_dir: str | os.PathLike, device: str = "auto", dtype=None,
                        precision=None) -> MedSAM3:
        """Load a model from a directory, a hub id, or ``random:NAME`` (see the module docstring).

        ``precision``: ``fp32`` (default), ``bf16`` or ``int8`` inference (:mod:`medsam3.model.precision`);
        ``fast`` / ``fast:PRECISION``: ``--fast``'s (:func:`~medsam3.model.precision.resolve_fast`),
        kept as :attr:`fast`; its input size is applied by :func:`medsam3.segmentation.load_model`.

        A directory's weights are loaded strictly (:mod:`medsam3.model.weights`): a tensor
        missing, left over, wrongly shaped or not finite, or a corrupt ``model.safetensors``, is
        an :class:`InputError` naming the directory; nothing is random-initialised.
        """
        device_ = resolve_device(device)
        dtype_ = resolve_dtype(dtype)
        fast, precision = split_fast(precision)  # a bad name is refused before anything is loaded
        if fast:  # --fast: the fastest precision on this device, unless one was given
            model = cls.from_pretrained(name_or_dir, device, dtype, precision or fast_precision(device_))
            model.fast = resolve_fast(device_, model.image_size, precision)
            return model
        name = str(name_or_dir)
        if name.startswith(RANDOM_PREFIX):
            size = name[len(RANDOM_PREFIX):]
            if size not in config_names():
                raise ArgumentError(f"unknown configuration in {name!r}; known: {', '.join(config_names())}")
            log.warning("model %s has RANDOM weights: its masks are meaningless (tests and benchmarks only)", name)
            config = build_config(size)
            torch.manual_seed(0)
            video = Sam3VideoModel(config)
            detector, tracker = video.detector_model, _tracker_from_video(video)
            del video
            return apply_precision(cls(detector.to(device_, dtype_), build_processor(config.image_size), config,
                                       name, device_, dtype_, tracker=tracker.to(device_, dtype_)), precision)
        directory = model_directory(name)
        config = load_config(directory)
        has_tracker = check_weights(directory, config)  # the header, before anything is built
        info = ModelInfo.read(directory)  # a bad medsam3.json is refused before the weights are read
        detector = load_detector(directory, dtype_, config, checked=True).to(device_)
        if has_tracker:
            check_tracker_finite(directory)  # the tracker loads on first use; a NaN in it is refused now
        processor = Sam3Processor.from_pretrained(directory)
        return apply_precision(cls(detector, processor, config, name, device_, dtype_, directory=directory,
                                   has_tracker=has_tracker, info=info), precision)

    def require_tracker(self) -> None:
        """Raise unless the model has tracker weights (box/point prompts, tracker propagation)."""
        if not self.has_tracker:
            raise InputError(f"model {self.source} has no tracker weights (a detector-only checkpoint): "
                             "box and point prompts need a model with the SAM3 tracker")

    @cached_property
    def tracker(self) -> Sam3TrackerModel:
        """The interactive (box / point) model; its ViT backbone is the detector's (shared weights)."""
        if not self.tracker_trained:
            raise InputError(f"model {self.source} has an untrained tracker (medsam3.json: tracker_trained false): "
                             "box and point prompts and tracker propagation need a trained one; use text prompts "
                             "(volumes: --mode slices)")
        if self._tracker is None:
            self.require_tracker()
            self._tracker = load_tracker(self.directory, self.dtype, self.config, checked=True).to(self.device)
        tracker = self._tracker.eval()
        # Both load the same detector_model.vision_encoder.backbone tensors: keep one copy.
        tracker.vision_encoder.backbone = self.detector.vision_encoder.backbone
        return apply_precision_to(tracker, self.precision, self.device, self.dtype)


def read_model_info(directory) -> dict:
    """``medsam3.json`` of a model directory as a checked JSON object (``{}`` when there is none);
    see :class:`medsam3.model.info.ModelInfo`."""
    return ModelInfo.read(directory).to_json()


def _tracker_from_video(video: Sam3VideoModel) -> Sam3TrackerModel:
    """A Sam3TrackerModel holding the tracker weights of an in-memory Sam3VideoModel."""
    tracker = Sam3TrackerModel(video.config.tracker_config)
    state = {}
    for key in tracker.state_dict():
        if key.startswith("vision_encoder.backbone."):
            state[key] = video.detector_model.state_dict()[key]
        elif key.startswith("vision_encoder.neck."):
            state[key] = video.tracker_neck.state_dict()[key[len("vision_encoder.neck."):]]
        else:
            state[key] = video.tracker_model.state_dict()[key]
    tracker.load_state_dict(state, strict=True)
    return tracker
