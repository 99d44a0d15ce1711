"""One settings object per run: :class:`PredictSettings` (with its :class:`VolumeSettings`).

Validated once, when made, and passed whole from the command line (:func:`add_arguments`,
:func:`from_args`: one argument group for ``segment``, ``evaluate`` and ``serve``), the
Python API (:func:`medsam3.segment`), evaluation (:func:`medsam3.evaluate.evaluate_model`)
and the web app (:class:`medsam3.app.AppSettings`).

    from medsam3.predict.settings import PredictSettings, VolumeSettings
    settings = PredictSettings(presence_threshold=0.3, volume=VolumeSettings(mode="slices"))
    medsam3.segment("ct.nii.gz", "seg.nii.gz", ["liver"], settings=settings)
"""

from __future__ import annotations

import argparse
import dataclasses
import numbers
from dataclasses import dataclass, field
from typing import Any

from medsam3.errors import ArgumentError
from medsam3.model.info import VOLUME_MODES, check_presence_window, check_volume_mode

__all__ = ["PredictSettings", "VolumeSettings", "VOLUME_MODES", "add_arguments", "from_args",
           "check_presence_window"]


def _check_fraction(name: str, value) -> float:
    """``value`` as a float in [0, 1], else an ArgumentError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0.0 <= float(value) <= 1.0:
        raise ArgumentError(f"{name} {value!r} is outside [0, 1]: give a number from 0 to 1")
    return float(value)


def _check_whole(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ArgumentError(f"{name} {value!r} must be a whole number >= {low}")
    return int(value)


#: Ways of fusing the probabilities of clips that overlap on a slice.
CLIP_FUSIONS = ("mean", "max")
#: The official scheme: 4-slice clips, no overlap.
DEFAULT_CLIP_LENGTH = 4


def check_clip_options(length, overlap, fusion) -> tuple[int, int, str]:
    """``(length, overlap, fusion)`` if valid, else :class:`ArgumentError` naming the value."""
    if isinstance(length, bool) or not isinstance(length, numbers.Integral) or length < 1:
        raise ArgumentError(f"the clip length must be a whole number of slices >= 1, got {length!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, numbers.Integral) or not 0 <= overlap < length:
        raise ArgumentError(f"the clip overlap must be a whole number of slices from 0 to the clip length - 1 "
                            f"({length - 1}), got {overlap!r}")
    if fusion not in CLIP_FUSIONS:
        raise ArgumentError(f"unknown clip fusion {fusion!r}; accepted: {', '.join(CLIP_FUSIONS)}")
    return int(length), int(overlap), str(fusion)


@dataclass(frozen=True)
class VolumeSettings:
    """How a 3D volume is segmented (:mod:`medsam3.predict.volume`); ignored for 2D images,
    where :meth:`check_for_2d` refuses the options that only volumes take.

    Attributes:
        mode: ``merged`` (detection + tracker propagation, merged), ``propagate`` (tracker
            masks from detected key slices) or ``slices`` (detection only); ``None``: the
            model's own (``medsam3.json`` ``volume_mode``), else ``merged``.
        axis: ``axial``, ``coronal`` or ``sagittal`` slices in the image's physical
            orientation; ``None``: the plane closest to the acquisition plane.
        skip_empty: skip empty background slices (:class:`medsam3.predict.volume.EmptySliceRule`).
        backward_slices: how far (slices) a track is propagated back from its key slice.
        max_unsupported, iou_threshold, key_score: the merge rule (:class:`medsam3.predict.merge.MergeRule`).
        presence_window: mode ``slices``: an odd number of slices whose median presence decides
            each slice's answer; ``None``: the model's own (1 without one).
        size: the model's input resolution in pixels (a multiple of 14 up to 4032); ``None``:
            the checkpoint's own.
        instances: also make an instance map (one id per object, kept across slices).
        clip_length, clip_overlap, clip_fusion: mode ``clips`` (Medical SAM3's official 3D
            scheme, :mod:`medsam3.predict.clips`): slices per clip, slices shared by neighbouring
            clips, ``mean``/``max`` fusion of overlapping clips' probabilities.
        encode_batch: slices per ViT call (:mod:`medsam3.predict.slice_feed`); ``None``: 1 on a
            CPU, on CUDA as many as the free memory allows. The answers do not depend on it.
        read_ahead: prepare slices (empty test, resize, normalisation) on a thread ahead of the model.
    """

    mode: str | None = None
    axis: str | None = None
    skip_empty: bool = True
    backward_slices: int = 8
    max_unsupported: int = 2
    iou_threshold: float = 0.3
    key_score: float = 0.5
    presence_window: int | None = None
    size: int | None = None
    instances: bool = False
    clip_length: int = 4
    clip_overlap: int = 0
    clip_fusion: str = "mean"
    encode_batch: int | None = None
    read_ahead: bool = True

    def __post_init__(self):
        check_clip_options(self.clip_length, self.clip_overlap, self.clip_fusion)
        if self.encode_batch is not None:
            if (isinstance(self.encode_batch, bool) or not isinstance(self.encode_batch, numbers.Integral)
                    or self.encode_batch < 1):
                raise ArgumentError(f"encode batch {self.encode_batch!r} must be a whole number of slices >= 1")
            object.__setattr__(self, "encode_batch", int(self.encode_batch))
        if self.mode is not None:
            check_volume_mode(self.mode)
        if self.axis is not None:
            from medsam3.orientation import AXES

            if str(self.axis).lower() not in AXES:
                raise ArgumentError(f"unknown slicing axis {self.axis!r}; accepted: {', '.join(AXES)}")
            object.__setattr__(self, "axis", str(self.axis).lower())
        object.__setattr__(self, "backward_slices", _check_whole("backward slices", self.backward_slices, 0))
        object.__setattr__(self, "max_unsupported", _check_whole("max unsupported slices", self.max_unsupported, 0))
        for name in ("iou_threshold", "key_score"):
            if isinstance(getattr(self, name), bool) or not isinstance(getattr(self, name), numbers.Real):
                raise ArgumentError(f"{name.replace('_', ' ')} {getattr(self, name)!r} must be a number")
        _ = self.merge_rule  # the merge rule checks its own values
        if self.presence_window is not None:
            object.__setattr__(self, "presence_window", check_presence_window(self.presence_window))
        if self.size is not None:
            from medsam3.predict.input_size import check_input_size

            object.__setattr__(self, "size", check_input_size(self.size))
        for name in ("skip_empty", "instances", "read_ahead"):
            if not isinstance(getattr(self, name), bool):
                raise ArgumentError(f"{name} must be True or False, got {getattr(self, name)!r}")

    @property
    def merge_rule(self):
        """The :class:`~medsam3.predict.merge.MergeRule` of these settings."""
        from medsam3.predict.merge import MergeRule

        return MergeRule(iou_threshold=self.iou_threshold, max_unsupported=self.max_unsupported,
                         key_score=self.key_score)

    def check_for_2d(self, where: str) -> None:
        """Refuse, for the 2D image ``where``, the options only volumes take (``mode`` and the
        merge rule are quietly unused: they have defaults a user rarely sets for one image)."""
        if self.axis is not None:
            raise ArgumentError(f"--axis {self.axis} given, but {where} is a 2D image")
        for name, flag in (("size", "--size"), ("presence_window", "--presence-window")):
            if getattr(self, name) is not None:
                raise ArgumentError(f"{flag} is for volumes, but {where} is a 2D image")
        if self.instances:
            raise ArgumentError(f"--instances is for volumes, but {where} is a 2D image")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class PredictSettings:
    """Everything about a prediction except the input, the prompts and the model.

    Attributes:
        threshold: instance score threshold (``sigmoid(class) x sigmoid(presence)``).
        presence_threshold: below this presence probability a prompt is answered "absent".
        mask_threshold: pixel probability threshold of masks.
        batch_size: text prompts run through the detector together (>= 1).
        volume: :class:`VolumeSettings` for 3D inputs.
    """

    threshold: float = 0.5
    presence_threshold: float = 0.5
    mask_threshold: float = 0.5
    batch_size: int = 8
    volume: VolumeSettings = field(default_factory=VolumeSettings)

    def __post_init__(self):
        for name, label in (("threshold", "score threshold"), ("presence_threshold", "presence threshold"),
                            ("mask_threshold", "mask threshold")):
            object.__setattr__(self, name, _check_fraction(label, getattr(self, name)))
        object.__setattr__(self, "batch_size", _check_whole("batch size", self.batch_size, 1))
        if not isinstance(self.volume, VolumeSettings):
            raise ArgumentError(f"volume settings must be a VolumeSettings, got {type(self.volume).__name__}")

    @classmethod
    def build(cls, base: PredictSettings | None = None, **options) -> PredictSettings:
        """``base`` (default settings when ``None``) with the ``options`` that are not ``None``
        replaced; options name fields of this class or of :class:`VolumeSettings`."""
        base = base or cls()
        own = {f.name for f in dataclasses.fields(cls)} - {"volume"}
        volume_fields = {f.name for f in dataclasses.fields(VolumeSettings)}
        unknown = set(options) - own - volume_fields
        if unknown:
            raise ArgumentError(f"unknown setting(s) {', '.join(sorted(unknown))}")
        top = {k: v for k, v in options.items() if k in own and v is not None}
        volume = {k: v for k, v in options.items() if k in volume_fields and v is not None}
        if volume:
            top["volume"] = dataclasses.replace(base.volume, **volume)
        return dataclasses.replace(base, **top) if top else base

    @property
    def thresholds(self) -> dict[str, float]:
        """The three thresholds as the sidecar records them."""
        return {"score": self.threshold, "presence": self.presence_threshold, "mask": self.mask_threshold}

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- command line

#: The command-line flags of each setting (``dest`` is the field's name, but ``volume_instances``
#: for ``instances``: ``evaluate`` has its own ``--no-instances``, for scoring).
_DESTS = {"instances": "volume_instances"}
_FLAGS = {"threshold": "--threshold", "presence_threshold": "--presence-threshold",
          "mask_threshold": "--mask-threshold", "batch_size": "--batch-size", "mode": "--mode", "axis": "--axis",
          "instances": "--instances", "skip_empty": "--keep-empty", "backward_slices": "--backward-slices",
          "max_unsupported": "--max-unsupported", "iou_threshold": "--iou-threshold",
          "presence_window": "--presence-window", "size": "--size", "key_score": "--key-score",
          "clip_length": "--clip-length", "clip_overlap": "--clip-overlap", "clip_fusion": "--clip-fusion",
          "encode_batch": "--encode-batch"}


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *, mode_flag: str = "--mode",
                  volumes: argparse._ArgumentGroup | None = None, exclude: tuple[str, ...] = (),
                  threshold_help: str = "", show_defaults: bool = False) -> None:
    """Add the prediction settings' options: thresholds and batch size to ``parser``, the
    volume options to ``volumes`` (default ``parser``). ``mode_flag`` names the volume-mode
    option (``evaluate`` calls it ``--volume-mode``, beside its ``--prompt-mode``); ``exclude``
    leaves options out; ``threshold_help`` is added to the thresholds' help (``serve``: they
    are the UI's starting values); ``show_defaults`` writes the defaults into the help (for a
    parser without :class:`argparse.ArgumentDefaultsHelpFormatter`). Read them back with
    :func:`from_args`."""
    d = PredictSettings()
    v = volumes if volumes is not None else parser
    options = {
        "threshold": lambda: parser.add_argument(
            "--threshold", type=float, default=d.threshold, help=f"instance score threshold{threshold_help}"),
        "presence_threshold": lambda: parser.add_argument(
            "--presence-threshold", type=float, default=d.presence_threshold,
            help=f"below this presence probability a prompt is reported absent{threshold_help}"),
        "mask_threshold": lambda: parser.add_argument(
            "--mask-threshold", type=float, default=d.mask_threshold,
            help=f"pixel probability threshold{threshold_help}"),
        "batch_size": lambda: parser.add_argument(
            "--batch-size", type=int, default=d.batch_size, help="text prompts run together through the detector"),
        "mode": lambda: v.add_argument(
            mode_flag, dest="mode", choices=VOLUME_MODES, default=None,
            help="volumes: merged: detection + tracker propagation, merged; propagate: tracker masks from detected "
                 "key slices; slices: detection on each slice only; clips: Medical SAM3's official scheme (independent "
                 "short clips through the tracker, fused per pixel by probability). Default: the model's own (medsam3.json "
                 "volume_mode), else merged"),
        "axis": lambda: v.add_argument(
            "--axis", choices=("axial", "coronal", "sagittal"), default=None,
            help="slice volumes in this physical plane (not array order); default: the plane closest to the "
                 "acquisition plane"),
        "instances": lambda: v.add_argument(
            "--instances", dest="volume_instances", action="store_true",
            help="also write an instance map (one id per object, the same on every slice) as "
                 "OUTPUT_instances.EXT with its own sidecar"),
        "skip_empty": lambda: v.add_argument(
            "--keep-empty", dest="skip_empty", action="store_false",
            help="run the model on empty background slices too (by default a slice is skipped when fewer "
                 "than 0.1%% of its pixels are 0.05 above its minimum, in normalised intensity)"),
        "backward_slices": lambda: v.add_argument(
            "--backward-slices", type=int, default=VolumeSettings.backward_slices, metavar="N",
            help="propagate each track back this many slices from the slice it was first detected on"),
        "max_unsupported": lambda: v.add_argument(
            "--max-unsupported", type=int, default=VolumeSettings.max_unsupported, metavar="N",
            help="merge rule: a tracked mask may go N slices without a detection agreeing; "
                 "N+1 such slices in a row are drift and removed"),
        "iou_threshold": lambda: v.add_argument(
            "--iou-threshold", type=float, default=VolumeSettings.iou_threshold,
            help="merge rule: IoU at which a tracked mask and a detection are the same object"),
        "presence_window": lambda: v.add_argument(
            "--presence-window", type=int, default=None, metavar="N",
            help="volume mode slices: a structure's present / absent answer on a slice is the median of the "
                 "presence on the N slices centred on it (odd; 3: no structure on one slice alone, no "
                 "one-slice gap); default: the model's own (medsam3.json), else 1"),
        "size": lambda: v.add_argument(
            "--size", type=int, default=None, metavar="PX",
            help="volumes: the model's input resolution (a multiple of 14 up to 4032, e.g. 504 for ~4x less "
                 "compute than 1008); default: the checkpoint's own"),
        "clip_length": lambda: v.add_argument(
            "--clip-length", type=int, default=VolumeSettings.clip_length, metavar="N",
            help="volume mode clips: slices per clip (Medical SAM3's official scheme: 4)"),
        "clip_overlap": lambda: v.add_argument(
            "--clip-overlap", type=int, default=VolumeSettings.clip_overlap, metavar="N",
            help="volume mode clips: slices shared by neighbouring clips (official: 0), 0..N-1"),
        "clip_fusion": lambda: v.add_argument(
            "--clip-fusion", choices=("mean", "max"), default=VolumeSettings.clip_fusion,
            help="volume mode clips: how overlapping clips' probabilities are fused on a shared slice"),
        "encode_batch": lambda: v.add_argument(
            "--encode-batch", type=int, default=None, metavar="N",
            help="volumes: slices encoded together in one ViT call (same answers; more memory). Default: 1 on a "
                 "CPU, on a GPU as many as its free memory allows"),
        "key_score": lambda: v.add_argument(
            "--key-score", type=float, default=VolumeSettings.key_score,
            help="merge rule: a detection this confident that no track explains starts a new track"),
    }
    for name, add in options.items():
        if name not in exclude:
            action = add()
            if show_defaults and action.default is not None and not isinstance(action.default, bool):
                action.help += " (default %(default)s)"


def from_args(args: argparse.Namespace) -> PredictSettings:
    """The :class:`PredictSettings` of parsed arguments (options left out by
    :func:`add_arguments` keep their defaults); errors name the command-line flag."""
    values = {name: getattr(args, _DESTS.get(name, name)) for name in _FLAGS if hasattr(args, _DESTS.get(name, name))}
    try:
        return PredictSettings.build(**values)
    except ArgumentError as exc:
        raise ArgumentError(_with_flags(str(exc))) from None


def _with_flags(message: str) -> str:
    """A settings error in the command line's words (``score threshold`` -> ``--threshold``)."""
    words = {"score threshold": "--threshold", "presence threshold": "--presence-threshold",
             "mask threshold": "--mask-threshold", "batch size": "--batch-size",
             "backward slices": "--backward-slices", "max unsupported slices": "--max-unsupported",
             "IoU threshold": "--iou-threshold", "iou threshold": "--iou-threshold", "key score": "--key-score",
             "encode batch": "--encode-batch"}
    for word, flag in words.items():
        if message.startswith(word + " "):
            return flag + message[len(word):]
    return message
